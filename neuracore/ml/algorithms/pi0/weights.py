"""Load pi0/pi0.5 weights from local safetensors in the openpi/LeRobot layout or the HF PaliGemma layout.

The `pi0` layout is openpi's PyTorch `PI0Pytorch` (`paligemma_with_expert.*`, optionally under LeRobot's
`model.`), for pi0 (`state_proj`, `action_time_mlp_*`) and for pi0.5 (`time_mlp_*`, the expert norms'
adaRMS `dense`): which keys are expected follows from the model's own parameters.

Strict: every checkpoint key maps to exactly one parameter (apart from a short, named list of keys
pi0 does not use), every expected parameter is present, shapes agree. Everything is checked before
any tensor is copied, so a failed load leaves no half-loaded model, and every failure is one
`CheckpointError` line naming the file and the key.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from torch import nn

from neuracore.ml.core.errors import CheckpointError, one_line

logger = logging.getLogger(__name__)

Layout = Literal["auto", "pi0", "paligemma"]

_PI0 = "paligemma_with_expert."
# (checkpoint prefix, module prefix), longest first. Old LeRobot/transformers-4 names and the newer
# `paligemma.model.*` names (openpi's PyTorch port, LeRobot >= 0.4) are both accepted.
_PI0_RULES = [
    (_PI0 + "paligemma.model.vision_tower.", "backbone.vision."),
    (_PI0 + "paligemma.model.multi_modal_projector.linear.", "backbone.projector."),
    (_PI0 + "paligemma.model.language_model.", "backbone.vlm."),
    (_PI0 + "paligemma.vision_tower.", "backbone.vision."),
    (_PI0 + "paligemma.multi_modal_projector.linear.", "backbone.projector."),
    (_PI0 + "paligemma.language_model.model.", "backbone.vlm."),
    (_PI0 + "gemma_expert.model.", "backbone.expert."),
    ("state_proj.", "state_proj."),
    ("action_in_proj.", "action_in_proj."),
    ("action_out_proj.", "action_out_proj."),
    ("action_time_mlp_in.", "action_time_mlp_in."),
    ("action_time_mlp_out.", "action_time_mlp_out."),
    ("time_mlp_in.", "time_mlp_in."),
    ("time_mlp_out.", "time_mlp_out."),
]
# Keys pi0 never uses: Gemma LM heads (tied to the embeddings; pi0 predicts actions, not tokens).
_PI0_IGNORED = {
    _PI0 + "paligemma.lm_head.weight",
    _PI0 + "paligemma.language_model.lm_head.weight",
    _PI0 + "gemma_expert.lm_head.weight",
}
# PaliGemma's LM head is tied to its token embeddings, and safetensors' `save_model` keeps one name of a
# tied pair: openpi's converted pi05 checkpoints hold only the head (openpi issue #669). It then stands in.
_TIED_HEADS = (
    _PI0 + "paligemma.lm_head.weight",
    _PI0 + "paligemma.language_model.lm_head.weight",
    "lm_head.weight",
    "language_model.lm_head.weight",
)
_EMBED = "backbone.embed_tokens.weight"
# LeRobot stores its dataset statistics next to the weights; ours come from the training dataset.
_PI0_IGNORED_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")

_PALIGEMMA_RULES = [
    ("model.vision_tower.", "backbone.vision."),
    ("model.multi_modal_projector.linear.", "backbone.projector."),
    ("model.language_model.", "backbone.vlm."),
    ("vision_tower.", "backbone.vision."),
    ("multi_modal_projector.linear.", "backbone.projector."),
    ("language_model.model.", "backbone.vlm."),
]
_PALIGEMMA_IGNORED = {"lm_head.weight", "language_model.lm_head.weight"}
# What the PaliGemma layout provides; the expert and the action projections start from random.
_PALIGEMMA_TARGETS = ("backbone.vision.", "backbone.projector.", "backbone.embed_tokens.", "backbone.vlm_norm.")
# Buffers of our model that never come from a checkpoint (dataset statistics).
_OWN_ONLY = ("input_norms.", "output_norms.")


_LAYER = re.compile(r"^backbone\.(vlm|expert)\.layers\.(\d+)\.(.+)$")
_RENAMES = {
    "backbone.vlm.embed_tokens.": "backbone.embed_tokens.",
    "backbone.vlm.norm.": "backbone.vlm_norm.",
    "backbone.expert.norm.": "backbone.expert_norm.",  # `.weight` (pi0) or `.dense.weight/bias` (pi0.5)
}


def _canonical(key: str) -> str:
    """Checkpoint-side names (`backbone.vlm.layers.3.mlp...`) → our module names (`backbone.layers.3.vlm.mlp...`).

    Also drops SigLIP's `vision_model.` level, present or not depending on the transformers version.
    """
    key = key.replace("backbone.vision.vision_model.", "backbone.vision.")
    for old, new in _RENAMES.items():
        if key.startswith(old):
            return new + key[len(old) :]
    match = _LAYER.match(key)
    if match:
        return f"backbone.layers.{match.group(2)}.{match.group(1)}.{match.group(3)}"
    return key


def _is_paligemma_part(key: str) -> bool:
    """Parameters the PaliGemma layout provides (vision tower, projector, language model)."""
    return key.startswith(_PALIGEMMA_TARGETS) or bool(re.match(r"^backbone\.layers\.\d+\.vlm\.", key))


def checkpoint_files(path: str) -> list[Path]:
    """The safetensors file(s) at `path`: a file, or a folder with model.safetensors or an index."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        if (p / "model.safetensors").is_file():
            return [p / "model.safetensors"]
        index = p / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index}: not a safetensors index ({one_line(exc)})") from None
            files = [p / name for name in sorted(set(weight_map.values()))]
            for f in files:
                if not f.is_file():
                    raise CheckpointError(f"{f}: listed in {index.name} but absent")
            return files
        raise CheckpointError(f"{p}: no model.safetensors or model.safetensors.index.json in this folder")
    raise CheckpointError(f"{p}: pretrained checkpoint not found (algorithm.pretrained_path)")


def _read_shapes(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...]]]:
    shapes: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                    shapes[key] = (f, tuple(handle.get_slice(key).get_shape()))
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - unreadable or corrupt file
            raise CheckpointError(f"{f}: not a readable safetensors file ({one_line(exc)})") from None
    return shapes


def detect_layout(keys: list[str], file: Path) -> Literal["pi0", "paligemma"]:
    """pi0 checkpoints name `paligemma_with_expert`; PaliGemma ones start at the vision tower / LM."""
    if any(_PI0 in k for k in keys):
        return "pi0"
    if any(k.startswith(p) for k in keys for p, _ in _PALIGEMMA_RULES):
        return "paligemma"
    raise CheckpointError(f"{file}: neither the pi0 (paligemma_with_expert.*) nor the PaliGemma layout")


def _map_key(key: str, layout: str) -> str | None:
    """Module key for a checkpoint key, None for keys pi0 ignores; raises on anything unknown."""
    if layout == "pi0":
        if key.startswith(_PI0_IGNORED_PREFIXES):
            return None
        bare = key.removeprefix("model.")
        if bare in _PI0_IGNORED:
            return None
        rules = _PI0_RULES
    else:
        bare = key
        if bare in _PALIGEMMA_IGNORED:
            return None
        rules = _PALIGEMMA_RULES
    for prefix, target in rules:
        if bare.startswith(prefix):
            return _canonical(target + bare[len(prefix) :])
    return ""


def _tied_head(shapes: dict[str, tuple[Path, tuple[int, ...]]]) -> str | None:
    """The checkpoint's PaliGemma LM-head key, if any (with or without LeRobot's `model.`)."""
    return next((k for k in sorted(shapes) if k.removeprefix("model.") in _TIED_HEADS), None)


def load_pretrained(model: nn.Module, path: str, layout: Layout = "auto") -> str:
    """Copy the checkpoint at `path` into `model` (a `Pi0` or `Pi05`); returns the layout that was read."""
    name = getattr(model, "algorithm_name", "") or "pi0"
    files = checkpoint_files(path)
    shapes = _read_shapes(files)
    first = files[0]
    found = detect_layout(list(shapes), first) if layout == "auto" else layout
    own = {_canonical(k): (k, t) for k, t in model.state_dict(keep_vars=True).items() if not k.startswith(_OWN_ONLY)}
    if found == "paligemma":
        own = {k: v for k, v in own.items() if _is_paligemma_part(k)}
    plan: dict[str, tuple[Path, str]] = {}
    for key, (file, shape) in sorted(shapes.items()):
        target = _map_key(key, found)
        if target is None:
            continue
        if target == "" or target not in own:
            raise CheckpointError(f"{file}: unexpected key {key!r} (not part of {name} in the {found} layout)")
        if target in plan:
            raise CheckpointError(f"{file}: keys {plan[target][1]!r} and {key!r} both map to {target!r}")
        expected = tuple(own[target][1].shape)
        if shape != expected:
            raise CheckpointError(
                f"{file}: {key!r} has shape {list(shape)} but {name}'s {own[target][0]} is {list(expected)} "
                "(do the algorithm sizes match the checkpoint?)"
            )
        plan[target] = (file, key)
    head = _tied_head(shapes)
    if _EMBED in own and _EMBED not in plan and head is not None and shapes[head][1] == tuple(own[_EMBED][1].shape):
        plan[_EMBED] = (shapes[head][0], head)
    missing = sorted(set(own) - set(plan))
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise CheckpointError(
            f"{first}: missing key(s) for {name} in the {found} layout: {', '.join(missing[:3])}{more}"
        )
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for target, (file, key) in plan.items():
        by_file.setdefault(file, []).append((target, key))
    with torch.no_grad():
        for file, pairs in by_file.items():
            with safe_open(str(file), framework="pt") as handle:
                for target, key in pairs:
                    tensor = own[target][1]
                    tensor.copy_(handle.get_tensor(key).to(dtype=tensor.dtype, device=tensor.device))
    logger.info("%s: loaded %d tensors from %s (%s layout)", name, len(plan), path, found)
    return found

"""Exports of LoRA runs: merged weights (the default) or the adapters alone, tied to their base by sha256.

- `lora.export=merged`: `model.safetensors` holds `W + (alpha/r) B A` under the plain module names, so
  the folder is an ordinary export (`Policy.from_pretrained`, no peft needed to run it); config.json
  records the LoRA settings under `lora` (`"merged": true`), for information.
- `lora.export=adapter`: `adapter.safetensors` holds only what trained (adapters and the `trainable`
  modules) plus the buffers (normalisation statistics come from the data, not the base); config.json's
  `lora.base` names the base weight files with their sha256 and a fingerprint of every frozen
  parameter. Loading rebuilds the model from those files (the run's `algorithm.pretrained_path`),
  checks both, injects the adapters, loads them strictly and merges them for inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from neuracore.ml.core.errors import CheckpointError, ConfigError, one_line
from neuracore.ml.core.model import NeuracoreModel
from neuracore.ml.export.model_folder import (
    CONFIG_FILE,
    export_model,
    rebuild_model,
    safetensors_bytes,
    verified_weights,
)
from neuracore.ml.trainers.peft import (
    LoraSettings,
    apply_lora,
    frozen_fingerprint,
    is_adapter,
    merged_state_dict,
    trained_names,
)
from neuracore.ml.utils.hashing import sha256_file

ADAPTER_FILE = "adapter.safetensors"


def check_adapter_export(model: NeuracoreModel, settings: LoraSettings) -> None:
    """At start: `lora.export=adapter` needs base weights read from files (else there is nothing to refer to)."""
    if settings.export == "adapter" and not model.base_weight_files():
        raise ConfigError(
            f"lora.export=adapter: {model.algorithm_name} starts from weights that no file holds (no "
            "algorithm.pretrained_path), so an adapter could not name its base; use lora.export=merged"
        )


def _plain_parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if not is_adapter(name))


def _buffer_names(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, _ in model.named_buffers() if name in state}


def export_lora(model: NeuracoreModel, out_dir: Path, settings: LoraSettings, state: dict[str, torch.Tensor],
                **info: Any) -> Path:
    """Write the export of a LoRA-trained `model` from its full `state` (see the module docstring).

    `info` is `export_model`'s `training=` and `dataset=`.
    """
    record = settings.record()
    if settings.export == "merged":
        return export_model(model, out_dir, state_dict=merged_state_dict(state, settings),
                            extra={"lora": {**record, "merged": True},
                                   "num_parameters": _plain_parameter_count(model)}, **info)
    check_adapter_export(model, settings)
    keep = trained_names(model) | _buffer_names(model, state)
    tensors = {k: v.detach().cpu().clone() for k, v in state.items() if k in keep}
    base = {
        "files": {str(Path(f).resolve()): sha256_file(Path(f)) for f in model.base_weight_files()},
        "frozen_sha256": frozen_fingerprint(state, model),
    }
    return export_model(model, out_dir, state_dict=tensors, weights_file=ADAPTER_FILE,
                        extra={"lora": {**record, "merged": False, "base": base},
                               "num_parameters": _plain_parameter_count(model)}, **info)


def _base_record(config: dict[str, Any], where: Path) -> dict[str, Any]:
    base = config["lora"].get("base")
    ok = (isinstance(base, dict) and isinstance(base.get("files"), dict) and isinstance(base.get("frozen_sha256"), str)
          and all(isinstance(k, str) and isinstance(v, str) for k, v in base["files"].items()))
    if not ok:
        raise CheckpointError(f"{where}: lora.base must name the base files (path -> sha256) and frozen_sha256")
    return base


def load_adapter_folder(folder: Path, config: dict[str, Any],
                        cls: type[NeuracoreModel]) -> tuple[NeuracoreModel, dict[str, Any]]:
    """Base from its recorded files (sha256-checked) + the export's adapters, merged for inference."""
    where = folder / CONFIG_FILE
    try:
        settings = LoraSettings.from_record(config["lora"], str(where))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    base = _base_record(config, where)
    weights = verified_weights(folder, config, ADAPTER_FILE)
    safetensors_bytes(weights)  # a forged header is refused before anything is allocated
    for path, expected in sorted(base["files"].items()):
        file = Path(path)
        if not file.is_file():
            raise CheckpointError(f"{file}: base weights of the adapter export {folder} are missing (put the base "
                                  "checkpoint back there, or export with lora.export=merged)")
        if sha256_file(file) != expected:
            raise CheckpointError(f"{file}: sha256 differs from the base the adapter in {folder} was trained on")
    model = rebuild_model(folder, config, cls, pretrained=True)
    apply_lora(model, settings)
    try:
        tensors = safetensors.torch.load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - unreadable or corrupt file
        raise CheckpointError(f"{weights}: cannot load adapters ({one_line(exc)})") from None
    own = model.state_dict()
    expected_keys = trained_names(model) | _buffer_names(model, own)
    missing, unexpected = sorted(expected_keys - set(tensors)), sorted(set(tensors) - expected_keys)
    wrong = sorted(k for k in set(tensors) & expected_keys if tuple(tensors[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        raise CheckpointError(f"{weights}: adapters do not match {cls.algorithm_name} with this lora record "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]})")
    model.load_state_dict(tensors, strict=False)
    if frozen_fingerprint(model.state_dict(), model) != base["frozen_sha256"]:
        raise CheckpointError(f"{folder}: the rebuilt base weights differ from those the adapter was trained on "
                              "(a part of the base was randomly initialised, or the base files changed); use a "
                              "merged export")
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.merge()
    model.eval()
    return model, config

"""pi0.5 weight loading: tiny test-made checkpoints in openpi's PyTorch pi05 layout and LeRobot's pi05 layout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from neuracore.ml.core.errors import CheckpointError
from tests.ml.algorithms.pi0_helpers import demo_batch, make_tokenizer
from tests.ml.algorithms.test_pi05 import pi05_data, tiny_pi05

OPENPI = "paligemma_with_expert."  # openpi's PI0Pytorch(pi05=True) state dict, saved by safetensors' save_model
LEROBOT = "model.paligemma_with_expert."  # LeRobot's PI05Policy wraps PI05Pytorch as `model`
# Published names (openpi src/openpi/models_pytorch/{pi0_pytorch,gemma_pytorch}.py and
# examples/convert_jax_model_to_pytorch.py; LeRobot src/lerobot/policies/pi05/modeling_pi05.py, pi_gemma.py).
PUBLISHED = [
    "paligemma_with_expert.gemma_expert.model.layers.0.input_layernorm.dense.weight",
    "paligemma_with_expert.gemma_expert.model.layers.0.input_layernorm.dense.bias",
    "paligemma_with_expert.gemma_expert.model.layers.1.post_attention_layernorm.dense.weight",
    "paligemma_with_expert.gemma_expert.model.norm.dense.weight",
    "paligemma_with_expert.gemma_expert.model.norm.dense.bias",
    "paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj.weight",
    "paligemma_with_expert.paligemma.model.language_model.layers.0.mlp.gate_proj.weight",
    "paligemma_with_expert.paligemma.model.vision_tower.vision_model.embeddings.patch_embedding.weight",
    "paligemma_with_expert.paligemma.model.multi_modal_projector.linear.weight",
    "time_mlp_in.weight", "time_mlp_in.bias", "time_mlp_out.weight", "time_mlp_out.bias",
    "action_in_proj.weight", "action_out_proj.weight",
]


def their_name(key: str, prefix: str) -> str:
    """Our module key → openpi's name (under `prefix`); the PaliGemma embedding is written by the caller."""
    extra = prefix[: -len(OPENPI)]
    layer = re.match(r"^backbone\.layers\.(\d+)\.(vlm|expert)\.(.+)$", key)
    stream = {"vlm": "paligemma.model.language_model.", "expert": "gemma_expert.model."}
    if layer:
        return f"{prefix}{stream[layer.group(2)]}layers.{layer.group(1)}.{layer.group(3)}"
    for ours, theirs in (("backbone.vision.", "paligemma.model.vision_tower.vision_model."),
                         ("backbone.projector.", "paligemma.model.multi_modal_projector.linear."),
                         ("backbone.vlm_norm.", "paligemma.model.language_model.norm."),
                         ("backbone.expert_norm.", "gemma_expert.model.norm.")):
        if key.startswith(ours):
            return prefix + theirs + key[len(ours) :]
    return extra + key


def checkpoint(model, prefix: str, embed: bool) -> dict[str, torch.Tensor]:
    """A state dict as openpi/LeRobot publish it; `embed=False` keeps only the tied LM head (openpi issue #669)."""
    out = {their_name(k, prefix): v.clone().contiguous() for k, v in model.state_dict().items()
           if not k.startswith(("input_norms.", "output_norms.", "backbone.embed_tokens."))}
    table = model.backbone.embed_tokens.weight.detach().clone()
    out[prefix + "paligemma.lm_head.weight"] = table
    if embed:
        out[prefix + "paligemma.model.language_model.embed_tokens.weight"] = table.clone()
    return out


@pytest.fixture(scope="module")
def data(demo_home: Path):
    return pi05_data(demo_home)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tokenizer(tmp_path_factory.mktemp("tok") / "paligemma_tokenizer"))


@pytest.mark.parametrize("prefix, embed", [(OPENPI, False), (LEROBOT, True)], ids=["openpi", "lerobot"])
def test_published_layouts_load_strictly_and_exactly(data, tokenizer, tmp_path: Path, prefix: str, embed: bool):
    source = tiny_pi05(data, seed=1).eval()
    with torch.no_grad():  # non-zero adaRMS weights, so a wrong mapping would show in the predictions
        for name, p in source.named_parameters():
            if ".dense." in name:
                p.normal_(std=0.05)
    tensors = checkpoint(source, prefix, embed)
    extra = prefix[: -len(OPENPI)]
    for name in PUBLISHED:
        assert extra + name in tensors, name
    assert not any("state_proj" in k or "action_time_mlp" in k for k in tensors)
    assert not any(re.search(r"gemma_expert\..*norm\.weight$", k) for k in tensors)  # adaRMS: dense only
    if prefix == LEROBOT:  # LeRobot stores its dataset statistics next to the weights
        tensors["normalize_inputs.buffer_observation_state.mean"] = torch.zeros(3)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    loaded = tiny_pi05(data, seed=2, pretrained_path=str(tmp_path), tokenizer_path=tokenizer).eval()
    src = source.state_dict()
    for k, v in loaded.state_dict().items():
        if not k.startswith(("input_norms", "output_norms")):
            assert torch.equal(v, src[k]), k
    reference = tiny_pi05(data, seed=1, tokenizer_path=tokenizer).eval()
    reference.load_state_dict(source.state_dict())
    batch = demo_batch(data)
    torch.testing.assert_close(loaded.predict(batch)["JOINT_TARGET_POSITIONS"],
                               reference.predict(batch)["JOINT_TARGET_POSITIONS"], rtol=0, atol=0)


def _error(data, path: Path, tokenizer: str) -> str:
    with pytest.raises(CheckpointError) as info:
        tiny_pi05(data, pretrained_path=str(path), tokenizer_path=tokenizer)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_or_unexpected_keys_are_one_line_errors_naming_the_key(data, tokenizer, tmp_path: Path):
    good = checkpoint(tiny_pi05(data), OPENPI, embed=False)
    file = tmp_path / "model.safetensors"

    missing = dict(good)
    del missing["paligemma_with_expert.gemma_expert.model.layers.1.input_layernorm.dense.weight"]
    save_file(missing, str(file))
    assert _error(data, file, tokenizer) == (
        f"{file}: missing key(s) for pi05 in the pi0 layout: backbone.layers.1.expert.input_layernorm.dense.weight"
    )

    # A pi0 checkpoint is not a pi0.5 one: its state projection (and its fixed expert norms) are refused.
    pi0_keys = dict(good, **{"state_proj.weight": torch.zeros(32, 32)})
    save_file(pi0_keys, str(file))
    assert _error(data, file, tokenizer) == (
        f"{file}: unexpected key 'state_proj.weight' (not part of pi05 in the pi0 layout)"
    )
    norm = dict(good, **{"paligemma_with_expert.gemma_expert.model.norm.weight": torch.zeros(32)})
    save_file(norm, str(file))
    assert "unexpected key 'paligemma_with_expert.gemma_expert.model.norm.weight'" in _error(data, file, tokenizer)

    shape = dict(good, **{"time_mlp_in.weight": torch.zeros(32, 16)})
    save_file(shape, str(file))
    assert _error(data, file, tokenizer).startswith(
        f"{file}: 'time_mlp_in.weight' has shape [32, 16] but pi05's time_mlp_in.weight is [32, 32]"
    )

    no_embedding = {k: v for k, v in good.items() if "lm_head" not in k}
    save_file(no_embedding, str(file))
    assert _error(data, file, tokenizer) == (
        f"{file}: missing key(s) for pi05 in the pi0 layout: backbone.embed_tokens.weight"
    )

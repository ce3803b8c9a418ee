"""pi0 weight loading: test-made checkpoints in the openpi/LeRobot pi0 layouts and the HF PaliGemma layout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from neuracore.ml.algorithms.pi0 import Pi0
from neuracore.ml.algorithms.pi0.backbone import Pi0Sizes, gemma_config, vision_config
from neuracore.ml.core.errors import CheckpointError, ConfigError
from tests.ml.algorithms.pi0_helpers import (
    TINY,
    demo_batch,
    demo_data,
    make_tokenizer,
    tiny_pi0,
)

_OLD = {  # LeRobot (transformers 4) names
    "vision": "model.paligemma_with_expert.paligemma.vision_tower.vision_model.",
    "projector": "model.paligemma_with_expert.paligemma.multi_modal_projector.linear.",
    "vlm": "model.paligemma_with_expert.paligemma.language_model.model.",
    "expert": "model.paligemma_with_expert.gemma_expert.model.",
}
_NEW = {  # openpi's PyTorch port / LeRobot >= 0.4 names
    "vision": "paligemma_with_expert.paligemma.model.vision_tower.",
    "projector": "paligemma_with_expert.paligemma.model.multi_modal_projector.linear.",
    "vlm": "paligemma_with_expert.paligemma.model.language_model.",
    "expert": "paligemma_with_expert.gemma_expert.model.",
}


def _their_name(key: str, names: dict[str, str], extra: str) -> str:
    """Our module key → the checkpoint layout's key."""
    layer = re.match(r"^backbone\.layers\.(\d+)\.(vlm|expert)\.(.+)$", key)
    if layer:
        return f"{names[layer.group(2)]}layers.{layer.group(1)}.{layer.group(3)}"
    fixed = {"backbone.embed_tokens.weight": names["vlm"] + "embed_tokens.weight",
             "backbone.vlm_norm.weight": names["vlm"] + "norm.weight",
             "backbone.expert_norm.weight": names["expert"] + "norm.weight"}
    if key in fixed:
        return fixed[key]
    for part in ("vision", "projector"):
        if key.startswith(f"backbone.{part}."):
            return names[part] + key[len(f"backbone.{part}.") :]
    return extra + key


@pytest.fixture(scope="module")
def data(demo_home: Path):
    return demo_data(demo_home)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_tokenizer(tmp_path_factory.mktemp("tok") / "paligemma_tokenizer"))


def _pi0_checkpoint(model: Pi0, names: dict[str, str], extra_prefix: str) -> dict[str, torch.Tensor]:
    return {
        _their_name(key, names, extra_prefix): value.clone().contiguous()
        for key, value in model.state_dict().items()
        if not key.startswith(("input_norms.", "output_norms."))
    }


@pytest.mark.parametrize(
    "names, extra, lm_head",
    [
        (_OLD, "model.", "model.paligemma_with_expert.paligemma.language_model.lm_head.weight"),
        (_NEW, "", "paligemma_with_expert.paligemma.lm_head.weight"),
    ],
    ids=["lerobot", "openpi"],
)
def test_pi0_layout_round_trips_exactly(data, tokenizer, tmp_path: Path, names, extra, lm_head):
    source = tiny_pi0(data, seed=1).eval()
    tensors = _pi0_checkpoint(source, names, extra)
    # Keys pi0 ignores by name: the tied LM head and LeRobot's stored dataset statistics.
    tensors[lm_head] = source.backbone.embed_tokens.weight.detach().clone()
    tensors["normalize_inputs.buffer_observation_state.mean"] = torch.zeros(3)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    loaded = tiny_pi0(data, seed=2, pretrained_path=str(tmp_path), tokenizer_path=tokenizer).eval()
    ours = {k: v for k, v in loaded.state_dict().items() if not k.startswith(("input_norms", "output_norms"))}
    src = source.state_dict()
    assert all(torch.equal(v, src[k]) for k, v in ours.items())
    fresh = tiny_pi0(data, seed=2, tokenizer_path=tokenizer).eval()
    batch = demo_batch(data)
    a = loaded.predict(batch)["JOINT_TARGET_POSITIONS"]
    assert not torch.allclose(a, fresh.predict(batch)["JOINT_TARGET_POSITIONS"])  # weights really changed
    source_tok = tiny_pi0(data, seed=1, tokenizer_path=tokenizer).eval()
    source_tok.load_state_dict(source.state_dict())
    torch.testing.assert_close(a, source_tok.predict(batch)["JOINT_TARGET_POSITIONS"], rtol=0, atol=0)


def test_paligemma_layout_loads_the_vlm_and_leaves_the_expert_random(data, tokenizer, tmp_path: Path):
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    sizes = Pi0Sizes(**{k: v for k, v in TINY.items() if k != "max_token_len"})
    text = gemma_config(sizes, sizes.vlm_width, sizes.vlm_mlp_dim, sizes.vocab_size)
    config = PaliGemmaConfig(vision_config=vision_config(sizes).to_dict(), text_config=text.to_dict(),
                             projection_dim=sizes.vlm_width)
    torch.manual_seed(3)
    hf = PaliGemmaForConditionalGeneration(config)
    hf.save_pretrained(str(tmp_path / "paligemma"))
    (tmp_path / "paligemma" / "config.json").unlink()  # only the weights are read
    loaded = tiny_pi0(data, seed=4, pretrained_path=str(tmp_path / "paligemma"), tokenizer_path=tokenizer)
    fresh = tiny_pi0(data, seed=4)
    hf_vision = dict(hf.model.vision_tower.named_parameters())
    for name, p in loaded.backbone.vision.named_parameters():
        assert torch.equal(p, hf_vision[name]), name
    assert torch.equal(loaded.backbone.projector.weight, hf.model.multi_modal_projector.linear.weight)
    lm = hf.model.language_model
    assert torch.equal(loaded.backbone.embed_tokens.weight, lm.embed_tokens.weight)
    assert torch.equal(loaded.backbone.vlm_norm.weight, lm.norm.weight)
    for ours, theirs in zip(loaded.backbone.layers, lm.layers):
        hf_layer = dict(theirs.named_parameters())
        for name, p in ours.vlm.named_parameters():
            assert torch.equal(p, hf_layer[name]), name
    fresh_layers = list(fresh.backbone.layers)
    for i, ours in enumerate(loaded.backbone.layers):
        for (name, p), q in zip(ours.expert.named_parameters(), fresh_layers[i].expert.parameters()):
            assert torch.equal(p, q), name  # the expert keeps its (seeded) random initialisation
    assert torch.equal(loaded.state_proj.weight, fresh.state_proj.weight)


def _error(data, path: str, tokenizer: str) -> str:
    with pytest.raises(CheckpointError) as info:
        tiny_pi0(data, pretrained_path=path, tokenizer_path=tokenizer)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_strict_errors_name_the_file_and_key(data, tokenizer, tmp_path: Path):
    good = _pi0_checkpoint(tiny_pi0(data), _OLD, "model.")
    file = tmp_path / "ck.safetensors"

    missing = dict(good)
    del missing["model.state_proj.weight"]
    save_file(missing, str(file))
    assert _error(data, str(file), tokenizer).startswith(f"{file}: missing key(s) for pi0 in the pi0 layout: state_proj.weight")

    unexpected = dict(good, **{"model.paligemma_with_expert.gemma_expert.model.extra.weight": torch.zeros(2)})
    save_file(unexpected, str(file))
    msg = _error(data, str(file), tokenizer)
    assert msg == f"{file}: unexpected key 'model.paligemma_with_expert.gemma_expert.model.extra.weight' (not part of pi0 in the pi0 layout)"

    shape = dict(good, **{"model.action_out_proj.weight": torch.zeros(32, 7)})
    save_file(shape, str(file))
    msg = _error(data, str(file), tokenizer)
    assert msg.startswith(f"{file}: 'model.action_out_proj.weight' has shape [32, 7] but pi0's action_out_proj.weight is [32, 32]")

    assert _error(data, str(tmp_path / "absent"), tokenizer) == (
        f"{tmp_path / 'absent'}: pretrained checkpoint not found (algorithm.pretrained_path)"
    )
    (tmp_path / "empty").mkdir()
    assert "no model.safetensors or model.safetensors.index.json" in _error(data, str(tmp_path / "empty"), tokenizer)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    assert _error(data, str(junk), tokenizer).startswith(f"{junk}: not a readable safetensors file")
    save_file({"foo.weight": torch.zeros(1)}, str(file))
    assert _error(data, str(file), tokenizer) == f"{file}: neither the pi0 (paligemma_with_expert.*) nor the PaliGemma layout"


def test_sharded_index_and_rebuild_without_the_checkpoint(data, tokenizer, tmp_path: Path):
    import json

    good = _pi0_checkpoint(tiny_pi0(data, seed=7), _NEW, "")
    names = sorted(good)
    half = len(names) // 2
    save_file({k: good[k] for k in names[:half]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({k: good[k] for k in names[half:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(names)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = tiny_pi0(data, pretrained_path=str(tmp_path), tokenizer_path=tokenizer)
    assert torch.equal(loaded.action_out_proj.weight, good["action_out_proj.weight"])
    # Rebuilding an export never reads the checkpoint again (it may be gone by then).
    assert Pi0.rebuild_overrides == {"pretrained_path": None}
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    assert "listed in model.safetensors.index.json but absent" in _error(data, str(tmp_path), tokenizer)
    with pytest.raises(ConfigError, match="algorithm.tokenizer_path: needed with algorithm.pretrained_path"):
        tiny_pi0(data, pretrained_path=str(tmp_path))

"""LoRA (trainers/peft.py, export/adapter.py): targets, what trains, merged and adapter-only exports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from neuracore.ml.core.errors import CheckpointError, ConfigError
from neuracore.ml.export.adapter import ADAPTER_FILE, export_lora
from neuracore.ml.export.model_folder import load_model_folder
from neuracore.ml.trainers.peft import (
    LoraSettings,
    apply_lora,
    check_resumable,
    is_adapter,
    merged_state_dict,
    resolve_lora,
)
from tests.ml.algorithms.pi0_helpers import demo_batch, make_tokenizer
from tests.ml.algorithms.test_pi05 import pi05_data, tiny_pi05
from tests.ml.algorithms.test_pi05_weights import OPENPI, checkpoint


def options(**kw) -> SimpleNamespace:
    base = {"rank": 4, "alpha": None, "dropout": 0.0, "target_modules": "auto", "trainable": "auto", "export": "merged"}
    return SimpleNamespace(**{**base, **kw})


@pytest.fixture(scope="module")
def data(demo_home: Path):
    return pi05_data(demo_home)


def _randomise_adapters(model: torch.nn.Module, seed: int = 3) -> None:
    """lora_B starts at zero (the adapted model equals the base); give it values so merging matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if is_adapter(name):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def test_pi05_defaults_adapt_the_language_model_and_expert_only(data):
    model = tiny_pi05(data)
    settings = resolve_lora(options(), model)
    names = set(settings.target_modules)
    assert "backbone.layers.0.vlm.self_attn.q_proj" in names and "backbone.layers.1.expert.mlp.down_proj" in names
    # the last VLM layer's o_proj/MLP are frozen by pi0 (unused): no adapter there, so DDP sees no unused one
    assert "backbone.layers.1.vlm.mlp.up_proj" not in names and "backbone.layers.1.vlm.self_attn.q_proj" not in names
    assert "backbone.layers.1.vlm.self_attn.k_proj" in names  # the expert attends to the last prefix keys
    assert not any("vision" in n or "projector" in n or ".dense" in n for n in names)
    assert len(names) == 2 * 7 + 7 + 2  # layer 0: vlm+expert 7 each; layer 1: expert 7, vlm k/v
    assert settings.alpha == 4.0 and settings.scaling == 1.0
    expert_only = resolve_lora(options(), tiny_pi05(data, train_expert_only=True))
    assert set(expert_only.target_modules) == {n for n in names if ".expert." in n}


def test_only_adapters_and_heads_train_and_the_start_equals_the_base(data):
    model = tiny_pi05(data, seed=1)
    batch = model.prepare_batch(demo_batch(data))
    torch.manual_seed(0)
    before = model.training_step(batch)["loss"]
    apply_lora(model, resolve_lora(options(), model))
    torch.manual_seed(0)
    after = model.training_step(batch)["loss"]
    assert torch.equal(before, after)  # lora_B = 0: the adapted model starts exactly at the base
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    heads = {n for n in trained if not is_adapter(n)}
    assert heads == {f"{m}.{p}" for m in ("action_in_proj", "time_mlp_in", "time_mlp_out", "action_out_proj")
                     for p in ("weight", "bias")}
    assert all(is_adapter(n) for n in trained - heads) and len(trained - heads) == 2 * 23
    optimizer_params = {id(p) for group in model.configure_optimizers()[0].param_groups for p in group["params"]}
    assert optimizer_params == {id(p) for n, p in model.named_parameters() if n in trained}


def test_merged_and_adapter_exports_predict_what_the_adapted_model_predicts(data, tmp_path: Path):
    source = tiny_pi05(data, seed=2).eval()
    tokenizer = str(make_tokenizer(tmp_path / "tok"))
    base = tmp_path / "base"
    base.mkdir()
    save_file(checkpoint(source, OPENPI, embed=False), str(base / "model.safetensors"))
    model = tiny_pi05(data, seed=5, pretrained_path=str(base), tokenizer_path=tokenizer).eval()
    merged_settings = resolve_lora(options(), model)
    apply_lora(model, merged_settings)
    _randomise_adapters(model)
    for settings_export in ("merged", "adapter"):
        settings = dataclasses.replace(merged_settings, export=settings_export)
        batch = model.prepare_batch(demo_batch(data))
        expected = model.predict(batch)
        out = export_lora(model, tmp_path / settings_export, settings, model.state_dict())
        loaded, config = load_model_folder(out)
        assert config["lora"]["merged"] is (settings_export == "merged")
        assert not any(is_adapter(n) or "base_layer" in n for n in loaded.state_dict()) or settings_export == "adapter"
        got = loaded.predict(loaded.prepare_batch(demo_batch(data)))
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5)
    assert (tmp_path / "adapter" / ADAPTER_FILE).is_file() and not (tmp_path / "adapter" / "model.safetensors").exists()
    stored = json.loads((tmp_path / "adapter" / "config.json").read_text())["lora"]["base"]
    assert next(iter(stored["files"].values())) and len(stored["frozen_sha256"]) == 64
    # The adapter file holds what trained (and buffers), not the 3B-to-be base
    from safetensors import safe_open

    with safe_open(str(tmp_path / "adapter" / ADAPTER_FILE), framework="pt") as f:
        names = set(f.keys())
    assert not any("base_layer" in n or "vision" in n for n in names)
    # A changed base is refused in one line naming the file
    tensors = checkpoint(source, OPENPI, embed=False)
    key = next(k for k in tensors if "vision" in k)
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(base / "model.safetensors"))
    with pytest.raises(CheckpointError, match="sha256 differs from the base"):
        load_model_folder(tmp_path / "adapter")
    (base / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="base weights of the adapter export .* are missing"):
        load_model_folder(tmp_path / "adapter")


def test_merge_is_w_plus_scaled_ba(data):
    model = tiny_pi05(data)
    settings = resolve_lora(options(rank=2, alpha=6.0), model)
    apply_lora(model, settings)
    _randomise_adapters(model)
    state = model.state_dict()
    merged = merged_state_dict(state, settings)
    name = "backbone.layers.0.expert.self_attn.q_proj"
    a, b = state[f"{name}.lora_A.default.weight"], state[f"{name}.lora_B.default.weight"]
    torch.testing.assert_close(merged[f"{name}.weight"], state[f"{name}.base_layer.weight"] + 3.0 * b @ a)
    assert set(merged) == set(tiny_pi05(data).state_dict())


def test_bad_lora_settings_are_one_line_errors(data):
    model = tiny_pi05(data)
    with pytest.raises(ConfigError, match=r"lora.target_modules=\['nothing_here'\]: matches no trainable linear"):
        resolve_lora(options(target_modules=["nothing_here"]), model)
    with pytest.raises(ConfigError, match="lora.trainable: '\\(' is not a valid regular expression"):
        resolve_lora(options(trainable=["("]), model)
    from neuracore.ml.export.adapter import check_adapter_export

    with pytest.raises(ConfigError, match="lora.export=adapter: pi05 starts from weights that no file holds"):
        check_adapter_export(model, resolve_lora(options(export="adapter"), model))


def test_resume_needs_the_same_lora(data):
    record = resolve_lora(options(), tiny_pi05(data)).record()
    check_resumable(record, dict(record), "ckpt")
    with pytest.raises(ValueError, match="lora.rank=8 but the checkpoint has 4"):
        check_resumable(record, {**record, "rank": 8}, "ckpt")
    with pytest.raises(ValueError, match="trained with LoRA adapters"):
        check_resumable(record, None, "ckpt")
    with pytest.raises(ValueError, match="trained with no LoRA"):
        check_resumable(None, record, "ckpt")
    with pytest.raises(ValueError, match="malformed lora record"):
        LoraSettings.from_record({"rank": "x"}, "cfg")


def test_every_linear_layer_by_default_and_none_inside_multihead_attention(demo_home: Path):
    from tests.ml.algorithms.test_registered_algorithms import Setup

    model = Setup("act", demo_home).model()
    names = resolve_lora(options(), model).target_modules
    assert names and not any(n.endswith("out_proj") and ".attn." in f".{n}." for n in names)
    mha = {f"{n}.out_proj" for n, m in model.named_modules() if isinstance(m, torch.nn.MultiheadAttention)}
    assert mha and not mha & set(names)
    assert "action_head" in names
    # a module trained fully gets no adapter, and trains
    settings = resolve_lora(options(trainable=["action_head"]), model)
    assert "action_head" not in settings.target_modules
    apply_lora(model, settings)
    trained = {n for n, p in model.named_parameters() if p.requires_grad and not is_adapter(n)}
    assert trained == {"action_head.weight", "action_head.bias"}


@pytest.mark.parametrize("node, message", [
    ({"rank": -1}, "lora.rank=-1: must be >= 0"),
    ({"rank": 4, "alpha": 0}, "lora.alpha=0.0: must be > 0"),
    ({"rank": 4, "dropout": 1.0}, "lora.dropout=1.0: must be in [0, 1)"),
    ({"rank": 4, "target_modules": "q_proj"}, "lora.target_modules='q_proj': expected auto or a list"),
    ({"rank": 4, "export": "zip"}, "lora.export='zip': valid: merged, adapter"),
    ({"rnak": 4}, "lora.rnak: unknown key (did you mean rank?)"),
])
def test_lora_keys_have_ranges(node, message):
    from neuracore.ml.config.schema import _lora_options

    with pytest.raises(ConfigError) as err:
        _lora_options(node)
    assert message in str(err.value)

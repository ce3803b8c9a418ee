"""pi0.5: adaRMS time conditioning, the state in the prompt (openpi's format), quantile default, configs, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from neuracore.ml.algorithms.pi0.backbone import AdaRMSNorm, PaliGemmaWithExpert, Pi0Sizes
from neuracore.ml.algorithms.pi0.tokenizer import ByteTokenizer
from neuracore.ml.algorithms.pi05 import Pi05
from neuracore.ml.algorithms.pi05.prompt import state_bins
from neuracore.ml.config.schema import AlgorithmChoice, TrainConfig
from neuracore.ml.core import batch as keys
from neuracore.ml.core import build_model, registered_algorithms
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.trainers.data import DataBundle, build_data
from tests.ml.algorithms.pi0_helpers import HORIZON, TINY, demo_batch

CONFIG_DIR = Path(__file__).resolve().parents[3] / "neuracore" / "ml" / "config" / "algorithm"
TINY05 = {**TINY, "max_token_len": 96}
ACTIONS = "JOINT_TARGET_POSITIONS"


def pi05_data(demo_home: Path, input_data_types: list[str] | None = None) -> DataBundle:
    """Windows of the session's demo dataset for pi0.5 (horizon 4)."""
    config = TrainConfig(algorithm=AlgorithmChoice("pi05", Pi05, {}), dataset_name="demo",
                         input_data_types=input_data_types, output_prediction_horizon=HORIZON, validation_split=0.2)
    return build_data(config, open_dataset("demo", root=demo_home / "datasets"))


def tiny_pi05(data: DataBundle, seed: int = 0, **overrides) -> Pi05:
    """A randomly initialised tiny pi0.5 for the demo spec."""
    torch.manual_seed(seed)
    return build_model(Pi05, data.model_init, {**TINY05, **overrides})


@pytest.fixture(scope="module")
def data(demo_home: Path) -> DataBundle:
    return pi05_data(demo_home)


def test_registered_and_the_loss_falls_on_fixed_demo_windows(data):
    assert registered_algorithms()["pi05"] is Pi05
    model = tiny_pi05(data, lr=1e-3, warmup_steps=0).train()
    batch = demo_batch(data, 8)
    opt = model.configure_optimizers()[0]
    torch.manual_seed(0)
    losses = []
    for _ in range(60):
        loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10]), losses


def test_predict_shapes_and_fixed_noise(data):
    model = tiny_pi05(data).eval()
    batch = demo_batch(data)
    out = model.predict(batch)
    assert set(out) == {ACTIONS}
    assert out[ACTIONS].shape == (4, HORIZON, 3) and out[ACTIONS].dtype == torch.float32
    assert torch.isfinite(out[ACTIONS]).all()
    torch.testing.assert_close(model.predict(batch)[ACTIONS], out[ACTIONS], rtol=0, atol=0)


def test_adarms_conditions_the_expert_on_time_and_no_pi0_time_mlp_exists(data):
    model = tiny_pi05(data).eval()
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith(("state_proj.", "action_time_mlp_in.", "action_time_mlp_out.")) for n in names)
    assert {"time_mlp_in.weight", "time_mlp_out.weight", "action_in_proj.weight", "action_out_proj.weight"} <= names
    norms = [layer.expert.input_layernorm for layer in model.backbone.layers]
    norms += [layer.expert.post_attention_layernorm for layer in model.backbone.layers]
    norms.append(model.backbone.expert_norm)
    w = TINY["expert_width"]
    assert all(isinstance(n, AdaRMSNorm) and n.dense.weight.shape == (3 * w, w) for n in norms)
    assert not any(isinstance(layer.vlm.input_layernorm, AdaRMSNorm) for layer in model.backbone.layers)
    # openpi's initialisation has zero adaRMS weights; give them values, as training (or a checkpoint) does.
    with torch.no_grad():
        for n in norms:
            n.dense.weight.normal_(std=0.05)
    batch = model.prepare_batch(demo_batch(data))
    with torch.no_grad():
        prefix, pad = model._prefix(batch)
        x = torch.randn(4, HORIZON, 32)
        a = model._velocity(prefix, pad, x, torch.full((4,), 0.2))
        b = model._velocity(prefix, pad, x, torch.full((4,), 0.8))
        cond_a, cond_b = model.time_condition(torch.tensor([0.2])), model.time_condition(torch.tensor([0.8]))
    assert not torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(cond_a, cond_b)
    # The time enters only through the norms: with every adaRMS weight zero, t changes nothing.
    with torch.no_grad():
        for n in norms:
            n.dense.weight.zero_()
        torch.testing.assert_close(model._velocity(prefix, pad, x, torch.full((4,), 0.2)),
                                   model._velocity(prefix, pad, x, torch.full((4,), 0.8)))


def _openpi_prompt(task: str, state: np.ndarray) -> str:
    """openpi's `PaligemmaTokenizer.tokenize` string for pi05 (written out here independently)."""
    cleaned = task.strip().replace("_", " ").replace("\n", " ")
    bins = np.digitize(state, bins=np.linspace(-1, 1, 256 + 1)[:-1]) - 1
    return f"Task: {cleaned}, State: {' '.join(map(str, bins))};\nAction: "


def test_state_appears_only_through_the_prompt_in_openpis_format(data):
    model = tiny_pi05(data).eval()
    batch = demo_batch(data)
    ids, mask = model.prompt_tokens(model.prepare_batch(batch))
    assert ids.shape == mask.shape == (4, 96)
    state = torch.cat([model.input_norms[dt.value].normalize(batch[keys.INPUTS][dt.value][:, -1])
                       for dt in model.state_types], -1).numpy()
    byte = ByteTokenizer()
    for i in range(4):
        expected = [byte.bos_id, *byte.encode([_openpi_prompt(batch[keys.LANGUAGE][i], state[i])])[0]]
        assert ids[i][mask[i]].tolist() == expected
    # Changing the state changes the prompt tokens, hence the actions; nothing else reads the state.
    moved = dict(batch, inputs=dict(batch[keys.INPUTS]))
    moved[keys.INPUTS]["JOINT_POSITIONS"] = batch[keys.INPUTS]["JOINT_POSITIONS"] + 0.3
    ids2, _ = model.prompt_tokens(model.prepare_batch(moved))
    assert not torch.equal(ids, ids2)
    assert not torch.allclose(model.predict(moved)[ACTIONS], model.predict(batch)[ACTIONS])


def test_masked_padding_between_prompt_pieces_changes_nothing():
    """Positions are cumsum(mask) - 1 and pads are never attended: pads between pieces are invisible."""
    torch.manual_seed(0)
    sizes = Pi0Sizes(**{k: v for k, v in TINY.items() if k != "max_token_len"})
    backbone = PaliGemmaWithExpert(sizes, adaptive_expert=True).eval()
    from neuracore.ml.algorithms.pi0.model import joint_forward

    ids = torch.randint(3, 250, (1, 10))
    gapped = torch.cat([ids[:, :4], torch.zeros(1, 3, dtype=torch.long), ids[:, 4:]], 1)
    gapped_pad = torch.tensor([[True] * 4 + [False] * 3 + [True] * 6])
    suffix = torch.randn(1, 3, TINY["expert_width"])
    blocks = torch.tensor([[True, False, False]])
    cond = torch.randn(1, TINY["expert_width"])
    with torch.no_grad():
        a = joint_forward(backbone, backbone.embed_language(ids), torch.ones(1, 10, dtype=torch.bool), suffix, blocks,
                          cond)
        b = joint_forward(backbone, backbone.embed_language(gapped), gapped_pad, suffix, blocks, cond)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bins_are_openpis_digitize():
    x = torch.cat([torch.linspace(-1.2, 1.2, 10001), torch.tensor([-1.0, 1.0, 0.0, -1 + 1 / 128, 1 - 1e-7])])
    expected = np.clip(np.digitize(x.numpy(), bins=np.linspace(-1, 1, 257)[:-1]) - 1, 0, 255)
    assert state_bins(x).tolist() == expected.tolist()


def test_prompt_budget_is_checked(data):
    with pytest.raises(ConfigError, match=r"algorithm.max_token_len=20: too small for 3 state values"):
        tiny_pi05(data, max_token_len=20)


def test_quantile_normalisation_is_the_default_and_is_exported(data, tmp_path: Path):
    from neuracore.ml.export import export_model, load_model_folder

    assert Pi05.hyperparameter_defaults()["normalization"] == "quantile"
    model = tiny_pi05(data).eval()
    norm = model.input_norms["JOINT_POSITIONS"]
    stats = data.model_init.inputs[next(dt for dt in data.model_init.inputs if dt.value == "JOINT_POSITIONS")].stats
    q01, q99 = torch.tensor(stats["q01"]), torch.tensor(stats["q99"])
    assert norm.mode == "quantile" and model.output_norms[ACTIONS].mode == "quantile"
    torch.testing.assert_close(norm.center, (q01 + q99) / 2)
    big = norm.normalize(torch.full((1, 3), 1e6))
    assert big.max() == 1.0  # clipped to [-1, 1], as the 256 bins assume
    folder = export_model(model, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["algorithm"]["name"] == "pi05"
    assert config["algorithm"]["hyperparameters"]["normalization"] == "quantile"
    loaded, _ = load_model_folder(folder)
    assert loaded.input_norms["JOINT_POSITIONS"].mode == "quantile"
    batch = demo_batch(data)
    torch.testing.assert_close(loaded.eval().predict(batch)[ACTIONS], model.predict(batch)[ACTIONS], rtol=0, atol=0)
    assert tiny_pi05(data, normalization="mean_std").input_norms["JOINT_POSITIONS"].mode == "mean_std"


def test_yaml_configs_match_the_constructor():
    full = yaml.safe_load((CONFIG_DIR / "pi05.yaml").read_text())
    defaults = Pi05.hyperparameter_defaults()
    algo = {k: v for k, v in full["algorithm"].items() if k != "_target_"}
    assert full["algorithm"]["_target_"] == "neuracore.ml.algorithms.pi05.Pi05"
    assert algo.keys() == defaults.keys()
    assert {k: (float(v) if isinstance(defaults[k], float) else v) for k, v in algo.items()} == defaults
    assert full["output_prediction_horizon"] == 50
    assert (defaults["max_token_len"], defaults["normalization"], defaults["num_inference_steps"]) == (200, "quantile", 10)
    tiny = yaml.safe_load((CONFIG_DIR / "pi05_tiny.yaml").read_text())
    assert tiny["defaults"] == ["pi05", "_self_"] and set(tiny["algorithm"]) <= set(defaults)


def _meta_pi05() -> Pi05:
    from tests.ml.algorithms.test_pi0 import _meta_pi0

    return Pi05(_meta_pi0().model_init_description)  # pi0's full-size spec: 14-dim state, one camera


def test_full_size_parameter_count():
    with torch.device("meta"):
        model = _meta_pi05()
    total = sum(p.numel() for p in model.parameters())
    # pi0 (3.3-3.5B) without state_proj / action-time MLP, plus 37 adaRMS dense layers of 1024 → 3 × 1024.
    adarms = sum(p.numel() for m in model.modules() if isinstance(m, AdaRMSNorm) for p in m.parameters())
    assert adarms == 37 * (1024 * 3072 + 3072)
    assert 3.3e9 < total < 3.7e9, total


TINY_CLI = ["algorithm=pi05_tiny", "dataset_name=demo", "batch_size=4", "num_workers=0", "training.log_images=false",
            "logging_frequency=1", "checkpoint_frequency=2"]


def test_pi05_tiny_trains_through_the_cli_exports_and_predicts(home: Path):
    from tests.conftest import run_cli

    result = run_cli(TINY_CLI + ["max_steps=3", "training_name=pi05run"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    run = home / "training" / "runs" / "pi05run"
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["algorithm"]["name"] == "pi05" and config["training"]["steps"] == 3
    assert config["algorithm"]["hyperparameters"]["normalization"] == "quantile"

    from neuracore.ml import Policy
    from neuracore.ml.sim.pick_place import PickPlaceEnv

    policy = Policy.from_pretrained(run / "model")
    obs = PickPlaceEnv(7).observe()
    out = policy.predict({"JOINT_POSITIONS": obs.joint_positions, "RGB_IMAGES": obs.image[None],
                          "LANGUAGE": obs.language})[ACTIONS]
    assert out.shape == (10, 3) and np.isfinite(out).all()

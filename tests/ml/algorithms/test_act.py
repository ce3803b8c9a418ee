"""ACT: published size, yaml/constructor agreement, masking of padding and missing items, ensembling, compile."""

from __future__ import annotations

import argparse
import ast
import math
from pathlib import Path

import pytest
import torch
import yaml

from neuracore.ml.algorithms.act import ACT, TemporalEnsembler
from neuracore.ml.benchmarks.training import model_init, synthetic_batch
from neuracore.ml.core import DataType, build_model
from neuracore.ml.core import batch as keys
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.model_init import ModelInitDescription

REPO = Path(__file__).resolve().parents[3]
TINY = {"hidden_dim": 32, "nheads": 2, "dim_feedforward": 64, "num_encoder_layers": 1, "num_vae_encoder_layers": 1,
        "latent_dim": 4, "dropout": 0.0}


def spec(cameras: int = 1, image: int = 32, state: int = 3, action: int = 3, horizon: int = 6) -> ModelInitDescription:
    return model_init(argparse.Namespace(cameras=cameras, image_size=image, state_dim=state, action_dim=action,
                                         horizon=horizon))


def tiny(mid: ModelInitDescription, **extra) -> ACT:
    torch.manual_seed(0)
    return build_model(ACT, mid, {**TINY, **extra})


def test_default_size_matches_lerobot_act():
    # One 224x224 camera, 14-dim state and action, chunk 100: LeRobot's ACT has 51.6M parameters.
    model = build_model(ACT, spec(image=224, state=14, action=14, horizon=100), {})
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 51.6e6) / 51.6e6 < 0.01, n
    assert len(model.encoder.layers) == 4 and len(model.decoder.layers) == 1 and len(model.vae_encoder.layers) == 4
    assert model.decoder.layers[0].ffn[0].out_features == 3200 and model.latent_dim == 32 and model.kl_weight == 10


def test_yaml_lists_every_constructor_argument_with_its_default():
    config = yaml.safe_load((REPO / "neuracore/ml/config/algorithm/act.yaml").read_text())["algorithm"]
    assert config.pop("_target_") == "neuracore.ml.algorithms.act.ACT"
    defaults = ACT.hyperparameter_defaults()
    assert set(config) == set(defaults)
    for key, value in config.items():
        assert value == defaults[key] or float(value) == defaults[key], key


def test_unsupported_output_is_a_one_line_error_naming_what_is_supported():
    mid = spec()
    mid.outputs = {DataType.RGB_IMAGES: mid.inputs[DataType.RGB_IMAGES]}
    with pytest.raises(ConfigError, match=r"output_data_types: act does not support RGB_IMAGES; it supports .*JOINT_TARGET_POSITIONS") as err:
        build_model(ACT, mid, TINY)
    assert "\n" not in str(err.value)


def test_training_loss_is_l1_plus_weighted_kl_and_ignores_padding_and_missing_items():
    mid = spec()
    model = tiny(mid, kl_weight=7.0).train()
    batch = synthetic_batch(mid, 4, 1, torch.device("cpu"))
    torch.manual_seed(1)
    losses = model(batch)
    assert set(losses) == {"l1_joint_target_positions", "kl", "loss"}
    torch.testing.assert_close(losses["loss"], losses["l1_joint_target_positions"] + 7.0 * losses["kl"])
    assert losses["kl"] > 0
    # Padded steps (is_pad) and items a robot lacks (mask 0) change nothing, not even through the CVAE encoder.
    changed = {**batch, keys.OUTPUTS: {k: v.clone() for k, v in batch[keys.OUTPUTS].items()},
               keys.OUTPUT_MASKS: {k: v.clone() for k, v in batch[keys.OUTPUT_MASKS].items()}}
    out = changed[keys.OUTPUTS][DataType.JOINT_TARGET_POSITIONS.value]
    out[batch[keys.IS_PAD]] = 1e3
    torch.manual_seed(1)
    torch.testing.assert_close(model(changed)["loss"], losses["loss"])
    changed[keys.OUTPUT_MASKS][DataType.JOINT_TARGET_POSITIONS.value][:, 1] = 0
    torch.manual_seed(1)
    masked = model(changed)["loss"]
    out[:, :, 1] = -1e3
    torch.manual_seed(1)
    torch.testing.assert_close(model(changed)["loss"], masked)


def test_validation_uses_the_prior_latent_and_reports_l1_only():
    mid = spec()
    model = tiny(mid).eval()
    batch = synthetic_batch(mid, 3, 1, torch.device("cpu"))
    losses = model(batch)
    assert set(losses) == {"l1_joint_target_positions", "loss"}
    pred = model.predict(batch)[DataType.JOINT_TARGET_POSITIONS.value]
    target = batch[keys.OUTPUTS][DataType.JOINT_TARGET_POSITIONS.value]
    valid = ~batch[keys.IS_PAD]
    torch.testing.assert_close(losses["loss"], (pred - target).abs()[valid].mean(), rtol=1e-4, atol=1e-5)


def test_two_cameras_and_a_missing_camera_is_ignored():
    mid = spec(cameras=2)
    model = tiny(mid).eval()
    assert len(model.backbones) == 2  # one ResNet per camera
    batch = synthetic_batch(mid, 2, 1, torch.device("cpu"))
    batch[keys.INPUT_MASKS][DataType.RGB_IMAGES.value][:, 1] = 0
    a = model.predict(batch)[DataType.JOINT_TARGET_POSITIONS.value]
    batch[keys.INPUTS][DataType.RGB_IMAGES.value][:, :, 1] = 255 - batch[keys.INPUTS][DataType.RGB_IMAGES.value][:, :, 1]
    b = model.predict(batch)[DataType.JOINT_TARGET_POSITIONS.value]
    assert a.shape == (2, 6, 3)
    torch.testing.assert_close(a, b)


def test_every_joint_like_input_and_action_like_output_is_usable():
    args = argparse.Namespace(cameras=0, image_size=32, state_dim=2, action_dim=2, horizon=4)
    mid = model_init(args)
    base = mid.inputs[DataType.JOINT_POSITIONS]
    for dt in (DataType.JOINT_VELOCITIES, DataType.JOINT_TORQUES, DataType.PARALLEL_GRIPPER_OPEN_AMOUNTS,
               DataType.END_EFFECTOR_POSES):
        mid.inputs[dt] = type(base)(dt, ["a"], [dt.item_width], {})
    out = mid.outputs[DataType.JOINT_TARGET_POSITIONS]
    for dt in (DataType.JOINT_POSITIONS, DataType.PARALLEL_GRIPPER_TARGET_OPEN_AMOUNTS, DataType.END_EFFECTOR_POSES):
        mid.outputs[dt] = type(out)(dt, ["a"], [dt.item_width], {})
    model = tiny(mid).eval()
    batch = synthetic_batch(mid, 2, 1, torch.device("cpu"))
    pred = model.predict(batch)
    assert {k: tuple(v.shape) for k, v in pred.items()} == {
        "JOINT_TARGET_POSITIONS": (2, 4, 2), "JOINT_POSITIONS": (2, 4, 1),
        "PARALLEL_GRIPPER_TARGET_OPEN_AMOUNTS": (2, 4, 1), "END_EFFECTOR_POSES": (2, 4, 7)}
    assert math.isfinite(float(model.train()(batch)["loss"].detach()))


def test_optimizer_groups_give_the_backbone_its_own_learning_rate():
    model = tiny(spec(), lr=5e-4, lr_backbone=2e-5)
    (opt,) = model.configure_optimizers()
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == [2e-5, 5e-4]
    backbone = {id(p) for p in model.backbones.parameters()}
    group = next(g for g in opt.param_groups if g["lr"] == 2e-5)
    assert {id(p) for p in group["params"]} == backbone


def test_temporal_ensembler_weights_predictions_exponentially():
    ens = TemporalEnsembler(coeff=0.5, horizon=3)
    first = ens.update(torch.tensor([[1.0], [2.0], [3.0]]))
    assert first.tolist() == [1.0]
    second = ens.update(torch.tensor([[10.0], [20.0], [30.0]]))
    # Step 1 was predicted as 2.0 (older, weight 1) and 10.0 (newer, weight e^-0.5).
    w = math.exp(-0.5)
    assert second.item() == pytest.approx((2.0 + w * 10.0) / (1 + w))
    third = ens.update(torch.tensor([[100.0], [0.0], [0.0]]))
    assert third.item() == pytest.approx((3.0 + w * 20.0 + w * w * 100.0) / (1 + w + w * w))
    assert TemporalEnsembler.weights(0.0, 4) == [0.25] * 4
    ens.reset()
    assert ens.update(torch.tensor([[5.0], [6.0], [7.0]])).tolist() == [5.0]


@pytest.mark.slow
def test_compile_true_trains_two_steps_through_the_cli(home: Path):
    from tests.conftest import run_cli

    args = ["algorithm=act", "dataset_name=demo", "batch_size=4", "output_prediction_horizon=5", "num_workers=0",
            "training.log_images=false", "max_steps=2", "compile=true", "device=cpu", "training_name=compiled",
            *(f"algorithm.{k}={v}" for k, v in TINY.items())]
    result = run_cli(args, home, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run = home / "training" / "runs" / "compiled"
    assert (run / "model" / "model.safetensors").is_file()
    # The whole step (forward, backward, clip, AdamW) was compiled as one graph, without breaks.
    report = [line for line in (run / "train.log").read_text().splitlines() if "torch.compile: " in line]
    assert len(report) == 1, report
    found = ast.literal_eval(report[0].split("torch.compile: ", 1)[1])
    assert found["whole_step"] is True and found["graphs"] == 1 and found["graph_breaks"] == 0, found
    # The export is plain (no `_orig_mod.` prefixes) and loads into an uncompiled model.
    from neuracore.ml import Policy

    policy = Policy.from_pretrained(run / "model")
    assert not any(k.startswith("_orig_mod") for k in policy.model.state_dict())

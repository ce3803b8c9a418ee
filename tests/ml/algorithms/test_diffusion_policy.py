"""Diffusion Policy: seed defaults and size, any horizon, EMA swap, crops on the device, masking, schedulers."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import yaml

from neuracore.ml.algorithms.diffusion_policy import DiffusionPolicy
from neuracore.ml.benchmarks.training import model_init, synthetic_batch
from neuracore.ml.core import DataType, build_model
from neuracore.ml.core import batch as keys
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.model_init import ModelInitDescription

REPO = Path(__file__).resolve().parents[3]
TINY = {"unet_down_dims": [16, 32, 64], "unet_diffusion_step_embed_dim": 16, "unet_n_groups": 4,
        "spatial_softmax_num_keypoints": 4, "hidden_dim": 8, "num_train_timesteps": 10, "num_inference_steps": 4,
        "use_pretrained_weights": False, "lr_scheduler_num_warmup_steps": 0}
CPU = torch.device("cpu")


def spec(cameras: int = 1, image: int = 32, state: int = 3, action: int = 3, horizon: int = 8) -> ModelInitDescription:
    return model_init(argparse.Namespace(cameras=cameras, image_size=image, state_dim=state, action_dim=action,
                                         horizon=horizon))


def tiny(mid: ModelInitDescription, **extra) -> DiffusionPolicy:
    torch.manual_seed(0)
    return build_model(DiffusionPolicy, mid, {**TINY, **extra})


def test_seed_defaults_and_size():
    # One 224x224 camera, 14-dim state/action, horizon 100: ResNet18 trunk (11.2M) + spatial softmax head
    # + U-Net [256, 512, 1024] (65.2M with a 284-dim FiLM condition: 2 steps x (14 + 64) + 128).
    model = build_model(DiffusionPolicy, spec(image=224, state=14, action=14, horizon=100),
                        {"use_pretrained_weights": False})
    n = sum(p.numel() for p in model.parameters())
    assert 75e6 < n < 78e6, n
    assert model.observation_history == 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # GroupNorm when not pretrained
    sched = model.noise_scheduler.config
    assert (sched.num_train_timesteps, sched.beta_schedule, sched.clip_sample, sched.clip_sample_range,
            sched.prediction_type) == (100, "squaredcos_cap_v2", True, 1.0, "epsilon")
    assert type(model.noise_scheduler).__name__ == "DDPMScheduler"


def test_yaml_lists_every_constructor_argument_with_its_default():
    config = yaml.safe_load((REPO / "neuracore/ml/config/algorithm/diffusion_policy.yaml").read_text())["algorithm"]
    assert config.pop("_target_") == "neuracore.ml.algorithms.diffusion_policy.DiffusionPolicy"
    defaults = DiffusionPolicy.hyperparameter_defaults()
    assert set(config) == set(defaults)
    for key, value in config.items():
        assert value == defaults[key] or float(value) == defaults[key], key
    assert [float(config[k]) for k in ("lr", "lr_backbone", "weight_decay")] == [1e-4, 1e-4, 2e-6]
    assert config["optimizer_betas"] == [0.95, 0.999]


@pytest.mark.parametrize("horizon", [1, 7, 13])
def test_any_horizon_trains_and_predicts(horizon: int):
    mid = spec(horizon=horizon)
    model = tiny(mid)
    batch = synthetic_batch(mid, 2, 2, CPU)
    loss = model.train()(batch)["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    pred = model.eval().predict(batch)[DataType.JOINT_TARGET_POSITIONS.value]
    assert pred.shape == (2, horizon, 3) and torch.isfinite(pred).all()
    # min-max normalisation with clipping: predictions stay in the data range [-1, 1] of the spec.
    assert pred.abs().max() <= 1.0 + 1e-5


@pytest.mark.parametrize("overrides", [{"prediction_type": "sample"}, {"noise_scheduler_type": "DDIM"},
                                       {"unet_use_film_scale_modulation": False, "normalization_type": "mean_std"}])
def test_scheduler_and_prediction_variants(overrides: dict):
    mid = spec()
    model = tiny(mid, **overrides)
    batch = synthetic_batch(mid, 2, 2, CPU)
    assert torch.isfinite(model.train()(batch)["loss"])
    assert model.eval().predict(batch)[DataType.JOINT_TARGET_POSITIONS.value].shape == (2, 8, 3)
    if "noise_scheduler_type" in overrides:
        assert type(model.noise_scheduler).__name__ == "DDIMScheduler"


def test_both_observation_steps_condition_the_prediction():
    mid = spec()
    model = tiny(mid).eval()
    batch = synthetic_batch(mid, 2, 2, CPU)
    a = model.predict(batch)[DataType.JOINT_TARGET_POSITIONS.value]
    batch[keys.INPUTS][DataType.JOINT_POSITIONS.value][:, 0] += 1.0  # the older frame only
    b = model.predict(batch)[DataType.JOINT_TARGET_POSITIONS.value]
    assert not torch.allclose(a, b)


def test_loss_ignores_padded_steps_and_missing_items():
    mid = spec()
    model = tiny(mid).train()
    batch = synthetic_batch(mid, 3, 2, CPU)
    torch.manual_seed(3)
    reference = model(batch)["loss"]
    target = batch[keys.OUTPUTS][DataType.JOINT_TARGET_POSITIONS.value]
    target[batch[keys.IS_PAD]] = 0.7  # padded steps: nothing changes
    torch.manual_seed(3)
    torch.testing.assert_close(model(batch)["loss"], reference)
    batch[keys.OUTPUT_MASKS][DataType.JOINT_TARGET_POSITIONS.value][:, 2] = 0
    torch.manual_seed(3)
    masked = model(batch)["loss"]
    target[:, :, 2] = -0.3
    torch.manual_seed(3)
    torch.testing.assert_close(model(batch)["loss"], masked)
    assert not torch.equal(reference, masked)


def test_random_crop_in_training_centre_crop_in_eval():
    mid = spec(image=40)
    model = tiny(mid, crop_ratio=0.8)
    conv = model.image_encoders[0].trunk[0]
    seen: list[torch.Tensor] = []
    handle = conv.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    batch = synthetic_batch(mid, 4, 2, CPU)
    try:
        model.train()(batch)
        model.train()(batch)
        model.eval().predict(batch)
    finally:
        handle.remove()
    assert [tuple(s.shape[-2:]) for s in seen] == [(32, 32), (32, 32), (32, 32)]
    assert not torch.equal(seen[0], seen[1])  # crops differ between steps
    images = batch[keys.INPUTS][DataType.RGB_IMAGES.value][:, :, 0].reshape(-1, 3, 40, 40).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[2] * std + mean, images[:, :, 4:36, 4:36], rtol=0, atol=1e-5)


def test_ema_is_on_by_default_with_the_papers_schedule():
    assert tiny(spec()).ema_defaults() == {"decay": 0.9999, "power": 0.75}
    assert tiny(spec(), use_ema=False).ema_defaults() is None


def test_bad_values_are_one_line_errors():
    mid = spec()
    with pytest.raises(ConfigError, match=r"algorithm.crop_ratio=1.5"):
        tiny(mid, crop_ratio=1.5)
    with pytest.raises(ConfigError, match=r"algorithm.num_inference_steps=50: must be in 1..num_train_timesteps"):
        tiny(mid, num_inference_steps=50)
    with pytest.raises(ConfigError, match=r"algorithm.unet_down_dims=\[10, 20\]"):
        tiny(mid, unet_down_dims=[10, 20])
    mid.inputs[DataType.DEPTH_IMAGES] = mid.inputs[DataType.RGB_IMAGES]
    with pytest.raises(ConfigError, match=r"input_data_types: diffusion_policy does not support DEPTH_IMAGES; it supports"):
        tiny(mid)


def test_learning_rate_schedule_warms_up_then_decays():
    model = tiny(spec(), lr_scheduler_num_warmup_steps=10, lr=1e-3, lr_backbone=1e-4)
    opts = model.configure_optimizers()
    (sched,) = model.configure_schedulers(opts, 100)
    lrs = []
    for _ in range(100):
        lrs.append(opts[0].param_groups[0]["lr"])
        opts[0].step()
        sched.step()
    assert lrs[0] == 0 and lrs[10] == pytest.approx(1e-3) and lrs[-1] < 1e-5
    assert sorted(g["initial_lr"] for g in opts[0].param_groups) == [1e-4, 1e-3]


def test_rebuild_for_inference_keeps_the_trained_normalisation_layers(monkeypatch: pytest.MonkeyPatch):
    # A pretrained trunk keeps BatchNorm; the export's rebuild skips the download (use_pretrained_weights
    # false) but must build the same layers, so the resolved use_group_norm travels with the export.
    from neuracore.ml.algorithms.common import backbones

    monkeypatch.setattr(backbones, "_load_imagenet_state", lambda url, name: backbones.torchvision.models.get_model(
        name, weights=None).state_dict())
    mid = spec()
    trained = tiny(mid, use_pretrained_weights=True)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trained.modules())
    assert trained.hyperparameters["use_group_norm"] is False
    rebuilt = build_model(DiffusionPolicy, mid, {**trained.hyperparameters, **DiffusionPolicy.rebuild_overrides})
    assert rebuilt.load_state_dict(trained.state_dict(), strict=True)


def test_two_cameras_and_a_missing_camera_is_ignored():
    mid = spec(cameras=2)
    model = tiny(mid).eval()
    assert len(model.image_encoders) == 2  # one ResNet + spatial softmax per camera
    batch = synthetic_batch(mid, 2, 2, CPU)
    batch[keys.INPUT_MASKS][DataType.RGB_IMAGES.value][:, 1] = 0
    a = model.predict(batch)[DataType.JOINT_TARGET_POSITIONS.value]
    images = batch[keys.INPUTS][DataType.RGB_IMAGES.value]
    images[:, :, 1] = 255 - images[:, :, 1]
    b = model.predict(batch)[DataType.JOINT_TARGET_POSITIONS.value]
    torch.testing.assert_close(a, b)


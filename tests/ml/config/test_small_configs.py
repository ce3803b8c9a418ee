"""The CPU-sized configurations of the README's demo-task results compose, validate and build at their sizes."""

from __future__ import annotations

import argparse

import pytest

from neuracore.ml.benchmarks.training import model_init
from neuracore.ml.config.preflight import compose_config
from neuracore.ml.config.schema import validate_config
from neuracore.ml.core import build_model
from neuracore.ml.train import CONFIG_DIR

# The demo task's spec: one 64x64 camera, shoulder/elbow/gripper in and out.
DEMO = argparse.Namespace(cameras=1, image_size=64, state_dim=3, action_dim=3, horizon=20)


@pytest.mark.parametrize(("name", "base", "expected", "parameters"), [
    ("act_small", "act", {"hidden_dim": 128, "nheads": 4, "dim_feedforward": 512, "num_encoder_layers": 2,
                          "num_vae_encoder_layers": 2, "num_decoder_layers": 1, "lr": 3e-4, "lr_backbone": 3e-4},
     12_317_443),
    ("diffusion_policy_small", "diffusion_policy",
     {"unet_down_dims": [64, 128, 256], "use_pretrained_weights": False, "lr": 3e-4, "lr_backbone": 3e-4,
      "lr_scheduler_num_warmup_steps": 100, "noise_scheduler_type": "DDIM", "num_inference_steps": 10,
      "prediction_type": "sample"},
     16_093_987),
])
def test_small_config_composes_over_its_base_and_builds_at_its_size(home, name, base, expected, parameters):
    config = validate_config(compose_config([f"algorithm={name}", "dataset_name=demo"], CONFIG_DIR))
    reference = validate_config(compose_config([f"algorithm={base}", "dataset_name=demo"], CONFIG_DIR))
    assert config.algorithm.cls is reference.algorithm.cls
    assert config.output_prediction_horizon == 20
    hyper = config.algorithm.hyperparameters
    for key, value in expected.items():
        assert hyper[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    # Everything not set by the small config is the base algorithm's value.
    changed = {key for key in hyper if hyper[key] != reference.algorithm.hyperparameters[key]}
    assert changed <= set(expected)
    model = build_model(config.algorithm.cls, model_init(DEMO), hyper)
    assert sum(p.numel() for p in model.parameters()) == parameters


@pytest.mark.parametrize("name", ["act_small", "diffusion_policy_small"])
def test_small_config_keys_can_still_be_overridden(home, name):
    config = validate_config(compose_config([f"algorithm={name}", "dataset_name=demo", "algorithm.lr=1e-3",
                                             "output_prediction_horizon=10"], CONFIG_DIR))
    assert config.algorithm.hyperparameters["lr"] == pytest.approx(1e-3)
    assert config.output_prediction_horizon == 10

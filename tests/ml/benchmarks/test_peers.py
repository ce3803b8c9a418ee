"""LeRobot's ACT and Diffusion Policy as benchmark peers: built at our shapes, timed, and actually trained."""

from __future__ import annotations

import argparse
import contextlib
import math

import pytest
import torch

from neuracore.ml.benchmarks import peers
from neuracore.ml.core.errors import ConfigError

REASON = peers.peers_available()
needs_lerobot = pytest.mark.skipif(REASON is not None, reason=f"LeRobot peers unavailable: {REASON}")

CPU = torch.device("cpu")
# Small U-Net / transformer so a step takes well under a second on two cores; the shapes stay ours.
TINY = {"diffusion_policy": {"down_dims": (32, 64), "diffusion_step_embed_dim": 32},
        "act": {"dim_model": 32, "n_heads": 2, "dim_feedforward": 64, "n_encoder_layers": 1,
                "n_vae_encoder_layers": 1}}


def tiny_args(**changes: int) -> argparse.Namespace:
    values = {"batch_size": 2, "image_size": 64, "cameras": 1, "state_dim": 14, "action_dim": 14, "horizon": 10,
              "steps": 1, "warmup": 1}
    return argparse.Namespace(**{**values, **changes})


def test_availability_is_none_or_a_one_line_reason():
    assert REASON is None or (REASON and "\n" not in REASON and "install" in REASON)


@needs_lerobot
def test_lerobot_act_at_default_size_is_timed_with_its_52m_parameters():
    result = peers.measure_peer("act", tiny_args(), CPU, None)
    assert math.isfinite(result["samples_per_s"]) and result["samples_per_s"] > 0
    assert result["samples_per_s"] == pytest.approx(2 / (result["step_ms"] / 1000))
    # LeRobot's default ACT is 51.61M at chunk 100; a chunk of 10 drops 90 learned query embeddings of 512.
    assert result["params_m"] == pytest.approx(51.61 - 90 * 512 / 1e6, abs=0.01)
    assert result["horizon"] == 10 and result["peak_gib"] > 0


@needs_lerobot
def test_lerobot_diffusion_falls_back_to_its_own_horizon_when_ours_does_not_fit_the_unet():
    result = peers.measure_peer("diffusion_policy", tiny_args(), CPU, None, overrides=TINY["diffusion_policy"])
    assert math.isfinite(result["samples_per_s"]) and result["samples_per_s"] > 0
    assert result["horizon"] == 16  # 10 is not a multiple of 2 ** len(down_dims); LeRobot's default is
    assert peers.measure_peer("diffusion_policy", tiny_args(horizon=8, image_size=32, warmup=0), CPU, None,
                              overrides=TINY["diffusion_policy"])["horizon"] == 8


@needs_lerobot
@pytest.mark.parametrize("name", peers.PEERS)
def test_a_step_normalises_our_batch_and_changes_the_parameters(name: str):
    torch.manual_seed(0)
    policy, make_batch = peers.build_peer(name, tiny_args(), CPU, TINY[name])
    batch = make_batch()
    assert batch["observation.images.cam0"].dtype == torch.float32
    assert batch["observation.images.cam0"].min() < -1.5  # ImageNet-normalised, not [0, 1]
    assert batch["action_is_pad"].any() and not batch["action_is_pad"].all()
    optimizer = peers.make_optimizer(policy)
    before = [p.detach().clone() for p in policy.parameters()]
    assert peers.grad_clip_norm(policy) == 10.0  # LeRobot's presets
    loss = peers.training_step(policy, optimizer, make_batch, contextlib.nullcontext(), peers.grad_clip_norm(policy))
    assert torch.isfinite(loss)
    changed = sum(not torch.equal(b, p) for b, p in zip(before, policy.parameters(), strict=True))
    assert changed > len(before) // 2


def test_an_unknown_peer_or_config_field_is_named():
    with pytest.raises(ConfigError, match=r"peer 'vqbet': unknown; valid: act, diffusion_policy"):
        peers.build_peer("vqbet", tiny_args(), CPU)
    if REASON is None:
        with pytest.raises(ConfigError, match=r"act peer: unknown LeRobot ACTConfig field\(s\) dim_modle"):
            peers.build_peer("act", tiny_args(), CPU, {"dim_modle": 8})
        with pytest.raises(ConfigError, match=r"diffusion_policy peer: cameras=0; .* needs at least one camera"):
            peers.build_peer("diffusion_policy", tiny_args(cameras=0), CPU)

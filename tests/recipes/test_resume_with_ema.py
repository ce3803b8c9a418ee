"""Exact resume of Diffusion Policy: the EMA of the weights is part of every checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from tests.conftest import fault_env, run_cli

TINY_DP = [
    "algorithm=diffusion_policy", "dataset_name=demo", "batch_size=4", "output_prediction_horizon=8",
    "num_workers=0", "training.log_images=false", "algorithm.unet_down_dims=[16,32,64]",
    "algorithm.unet_diffusion_step_embed_dim=16", "algorithm.unet_n_groups=4",
    "algorithm.spatial_softmax_num_keypoints=4", "algorithm.hidden_dim=8", "algorithm.num_train_timesteps=10",
    "algorithm.num_inference_steps=4", "algorithm.use_pretrained_weights=false",
    "algorithm.lr_scheduler_num_warmup_steps=2", "max_steps=8", "checkpoint_frequency=3",
    "validation_split=0.25", "logging_frequency=2",
]


def _run(home: Path, name: str) -> Path:
    return home / "training" / "runs" / name


@pytest.mark.slow
def test_sigkill_then_resume_restores_the_ema_exactly(home: Path) -> None:
    straight = run_cli(TINY_DP + ["training_name=straight"], home)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = run_cli(TINY_DP + ["training_name=killed"], home, env=fault_env(kill_after_step=5))
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    ckpt = _run(home, "killed") / "checkpoints" / "checkpoint_3"
    with safe_open(str(ckpt / "algorithm_state.safetensors"), framework="np") as f:
        assert json.loads(f.metadata()["ema"])["optimization_step"] == 3
        names = set(f.keys())
    weights = load_file(str(ckpt / "model.safetensors"))
    # One shadow per parameter (every `.weight` / `.bias`), none for buffers such as normaliser statistics.
    shadows = {n.removeprefix("ema.") for n in names}
    assert shadows <= set(weights)
    assert {k for k in weights if k.endswith((".weight", ".bias"))} <= shadows
    assert not any(".center" in k or ".scale" in k for k in shadows)

    resumed = run_cli(TINY_DP + ["training_name=killed", "resume_checkpoint_path=auto"], home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The exported weights are the EMA weights: identical only if the EMA was restored exactly.
    a = load_file(str(_run(home, "straight") / "model" / "model.safetensors"))
    b = load_file(str(_run(home, "killed") / "model" / "model.safetensors"))
    assert set(a) == set(b)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"exported (EMA) weights differ after resume: {different[:5]}"
    final = _run(home, "killed") / "checkpoints" / "checkpoint_8"
    with safe_open(str(final / "algorithm_state.safetensors"), framework="np") as f:
        assert json.loads(f.metadata()["ema"])["optimization_step"] == 8


@pytest.mark.slow
def test_resume_without_the_ema_file_fails_loudly(home: Path) -> None:
    first = run_cli(TINY_DP + ["training_name=noema", "max_steps=3"], home)
    assert first.returncode == 0, first.stderr[-3000:]
    (_run(home, "noema") / "checkpoints" / "checkpoint_3" / "algorithm_state.safetensors").unlink()
    again = run_cli(TINY_DP + ["training_name=noema", "max_steps=6", "resume_checkpoint_path=auto"], home)
    assert again.returncode == 2, again.stderr[-3000:]
    lines = [line for line in again.stderr.splitlines() if line.startswith("neuracore: error:")]
    assert len(lines) == 1 and "algorithm_state.safetensors is missing" in lines[0], lines  # per manifest.json
    assert not (_run(home, "noema") / "checkpoints" / "checkpoint_6").exists()


@pytest.mark.slow
def test_any_algorithm_trains_with_an_ema_and_a_resume_must_keep_it(home: Path) -> None:
    from tests.conftest import FAST

    base = FAST + ["max_steps=3", "checkpoint_frequency=3", "training_name=cnnema"]
    first = run_cli(base + ["ema.decay=0.9"], home)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "EMA of the weights: decay 0.9, power 0.75" in first.stderr
    ckpt = _run(home, "cnnema") / "checkpoints" / "checkpoint_3"
    with safe_open(str(ckpt / "algorithm_state.safetensors"), framework="np") as f:
        assert json.loads(f.metadata()["ema"])["optimization_step"] == 3
        shadows = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    exported = load_file(str(_run(home, "cnnema") / "model" / "model.safetensors"))
    # the export holds the EMA weights
    assert all(np.array_equal(exported[k.removeprefix("ema.")], v) for k, v in shadows.items())
    again = run_cli(FAST + ["max_steps=6", "training_name=cnnema", "resume_checkpoint_path=auto"], home)
    assert again.returncode == 2
    lines = again.stderr.strip().splitlines()
    assert "the checkpoint has an EMA of the weights, but this run keeps none" in lines[-1], lines[-3:]

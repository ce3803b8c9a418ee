"""compile=true end to end with inductor: one whole-step graph, kill -9 + resume bit-identical, EMA included."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import fault_env, run_cli

# Diffusion Policy: random timesteps and noise, a cosine LR schedule with warm-up and an EMA, all of
# which must live inside the compiled step and survive a resume exactly.
DP_TINY = ["algorithm=diffusion_policy", "algorithm.unet_down_dims=[16,32]", "algorithm.unet_diffusion_step_embed_dim=16",
           "algorithm.unet_n_groups=4", "algorithm.spatial_softmax_num_keypoints=8", "algorithm.hidden_dim=16",
           "algorithm.num_train_timesteps=20", "algorithm.num_inference_steps=5", "algorithm.crop_ratio=1.0",
           "algorithm.lr_scheduler_num_warmup_steps=2", "algorithm.use_pretrained_weights=false"]


def _args(name: str) -> list[str]:
    return [*DP_TINY, "dataset_name=demo", "batch_size=4", "output_prediction_horizon=8", "num_workers=0",
            "training.log_images=false", "compile=true", "device=cpu", "max_steps=6", "checkpoint_frequency=3",
            "logging_frequency=2", "validation_split=0.25", f"training_name={name}"]


def _report(run: Path) -> dict:
    lines = [line for line in (run / "train.log").read_text().splitlines() if "torch.compile: " in line]
    assert len(lines) == 1, lines
    return ast.literal_eval(lines[0].split("torch.compile: ", 1)[1])


@pytest.mark.slow
def test_compiled_step_resumes_bit_identically(home: Path) -> None:
    runs = home / "training" / "runs"
    straight = run_cli(_args("straight"), home, timeout=1500)
    assert straight.returncode == 0, straight.stderr[-3000:]
    report = _report(runs / "straight")
    assert report["whole_step"] is True and report["graph_breaks"] == 0 and report["graphs"] >= 1, report
    assert "training step: one compiled program" in (runs / "straight" / "train.log").read_text()

    killed = run_cli(_args("killed"), home, timeout=1500, env=fault_env(kill_after_step=4))
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    resumed = run_cli(_args("killed") + ["resume_checkpoint_path=auto"], home, timeout=1500)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 3" in resumed.stderr
    for folder in ("model", "checkpoints/checkpoint_6"):
        name = "model.safetensors"
        a, b = load_file(str(runs / "straight" / folder / name)), load_file(str(runs / "killed" / folder / name))
        assert set(a) == set(b)
        different = [k for k in a if not np.array_equal(a[k], b[k])]
        assert not different, f"{folder}: weights differ after resume: {different[:5]}"
    ema = [load_file(str(runs / r / "checkpoints" / "checkpoint_6" / "algorithm_state.safetensors"))
           for r in ("straight", "killed")]
    assert set(ema[0]) == set(ema[1]) and all(np.array_equal(ema[0][k], ema[1][k]) for k in ema[0])

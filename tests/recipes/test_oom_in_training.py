"""Out of memory inside a training step: one line, a checkpoint where one is consistent, and never a hang."""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_group

FIXTURE = Path(__file__).with_name("oom_algorithm")  # a CNNMLP that raises CUDA's OOM error at a chosen step
ARGS = ["--config-dir", str(FIXTURE), "algorithm=oom_cnnmlp", "dataset_name=demo", "batch_size=4", "num_workers=0",
        "max_steps=6", "checkpoint_frequency=2", "output_prediction_horizon=5", "training.log_images=false"]


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "NEURACORE_HOME": str(home), "PYTHONPATH": str(FIXTURE), "OMP_NUM_THREADS": "1"}


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("neuracore: error:")]


@pytest.mark.slow
def test_oom_in_a_step_checkpoints_the_last_step_and_resumes(home: Path) -> None:
    cmd = [sys.executable, "-m", "neuracore.ml.train", *ARGS, "training_name=one"]
    result = run_group(cmd, _env(home), timeout=300)
    assert result.returncode == 3, result.stderr[-3000:]
    (line,) = _errors(result.stderr)
    ckpts = home / "training" / "runs" / "one" / "checkpoints"
    assert "out of memory in a training step (batch_size=4) at step 2" in line
    assert f"checkpoint saved at {ckpts / 'checkpoint_2'}" in line and "resume_checkpoint_path=auto" in line
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint_2"]
    resumed = run_group(cmd + ["resume_checkpoint_path=auto", "algorithm.oom_at_step=0"], _env(home), timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (ckpts / "checkpoint_6").is_dir() and (ckpts.parent / "model" / "model.safetensors").is_file()


def test_oom_on_one_ddp_rank_stops_the_run_at_once(home: Path) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(port),
           str(REPO / "recipes" / "train.py"), *ARGS, "algorithm.oom_rank=1", "training_name=two"]
    started = time.monotonic()
    # Before the fix rank 1 tried a collective checkpoint while rank 0 waited in the all-reduce: a hang.
    result = run_group(cmd, _env(home), timeout=240)
    assert time.monotonic() - started < 200
    assert result.returncode != 0
    lines = [line for line in _errors(result.stderr) if "out of memory" in line]
    assert len(lines) == 1, result.stderr[-3000:]
    ckpts = home / "training" / "runs" / "two" / "checkpoints"
    assert re.search(r"on rank 1 of 2 \(batch_size=4\) after step 2; no checkpoint now", lines[0]), lines[0]
    assert f"the newest checkpoint is {ckpts / 'checkpoint_2'}" in lines[0]
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint_2"]

"""Runs that must stop: a diverging loss (exit 4, nothing exported) and a preempted job (exit 75, exact resume)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import FAST, REPO, run_cli


def _runs(home: Path) -> Path:
    return home / "training" / "runs"


def test_a_diverging_run_stops_with_one_line_and_exports_nothing(home: Path) -> None:
    result = run_cli(FAST + ["algorithm.lr=1e30", "training.max_grad_norm=null", "max_steps=20", "checkpoint_frequency=1",
                             "logging_frequency=1", "training_name=diverged"], home)
    assert result.returncode == 4, (result.returncode, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("neuracore: error: training loss is not finite at step "), last
    assert "without saving or exporting these weights; the last finite checkpoint is" in last
    run = _runs(home) / "diverged"
    assert not (run / "model").exists() and not (run / "best_model").exists()
    newest = max((run / "checkpoints").glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    weights = load_file(str(newest / "model.safetensors"))
    assert all(np.isfinite(v).all() for v in weights.values())  # the kept checkpoint is a finite one


def _args(name: str) -> list[str]:
    # 29 full batches of 8 per epoch on the test demo: 32 steps cross an epoch boundary after the resume
    return [a for a in FAST if not a.startswith("batch_size=")] + [
        "batch_size=8", f"max_steps={STEPS}", "checkpoint_frequency=1000", "validation_split=0.25",
        "logging_frequency=5", f"training_name={name}"]


STEPS = 32


@pytest.mark.slow
def test_sigterm_checkpoints_at_the_next_step_and_resume_is_exact(home: Path) -> None:
    straight = run_cli(_args("straight"), home)
    assert straight.returncode == 0, straight.stderr[-3000:]

    env = {**os.environ, "NEURACORE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "neuracore.ml.train", *_args("pre")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = _runs(home) / "pre" / "tensorboard"
    deadline = time.monotonic() + 300
    while not (events.is_dir() and any(events.rglob("events.*"))) and time.monotonic() < deadline:
        time.sleep(0.2)  # wait until training has started (the tracker is opened just before the loop)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, (proc.returncode, err[-2000:])
    last = err.strip().splitlines()[-1]
    assert last.startswith("neuracore: error: stopped by SIGTERM at step ") and "resume_checkpoint_path=auto" in last
    step = int(last.split("at step ")[1].split(";")[0])
    assert 0 < step < STEPS - 3  # stopped in the first epoch, so the resumed run crosses the boundary
    assert (_runs(home) / "pre" / "checkpoints" / f"checkpoint_{step}" / "trainer_state.json").is_file()

    resumed = run_cli(_args("pre") + ["resume_checkpoint_path=auto"], home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {step}" in resumed.stderr
    a, b = load_file(str(_runs(home) / "straight" / "model" / "model.safetensors")), \
        load_file(str(_runs(home) / "pre" / "model" / "model.safetensors"))
    assert not [k for k in a if not np.array_equal(a[k], b[k])]

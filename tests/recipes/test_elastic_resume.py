"""Elastic resume: a checkpoint written by N processes continues on M != N (and with another per-device
batch at the same global batch), keeping the global batch, the data order and position (the samples
of the epoch after the checkpoint are exactly the ones an uninterrupted run would see next), the
step count and the schedulers; the log says what changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from neuracore.ml.trainers.data import EpochSampler
from tests.conftest import FAST, fault_env, run_cli, run_group
from tests.recipes.test_train_end_to_end import _free_port

pytestmark = pytest.mark.slow

STEPS, CHECKPOINT_AT = 10, 4
ARGS = FAST + [f"max_steps={STEPS}", f"checkpoint_frequency={CHECKPOINT_AT}", "logging_frequency=2",
               "training_name=elastic"]


def _launch(home: Path, args: list[str], env: dict[str, str]):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port()),
           "recipes/train.py", *args]
    return run_group(cmd, {**os.environ, "NEURACORE_HOME": str(home), "OMP_NUM_THREADS": "1", **env}, timeout=600)


def _run_dir(home: Path) -> Path:
    return home / "training" / "runs" / "elastic"


def _training_windows(run: Path) -> int:
    return int(re.search(r"(\d+) training windows", (run / "train.log").read_text()).group(1))


def _seen(folder: Path, rank: int, windows: int) -> list[int]:
    """Indexes of training windows read by `rank`, in order (validation windows have another length)."""
    lines = (folder / f"samples-{rank}.txt").read_text().split("\n")
    return [int(i) for n, i in (line.split() for line in lines if line) if int(n) == windows]


def _final_state(run: Path) -> tuple[dict, dict]:
    ckpt = run / "checkpoints" / f"checkpoint_{STEPS}"
    optimizer = torch.load(ckpt / "optimizer.bin", weights_only=True)
    return json.loads((ckpt / "trainer_state.json").read_text()), optimizer


def _adam_steps(optimizer: dict) -> set[int]:
    return {int(v["step"]) for v in optimizer["state"].values()}


def test_two_processes_resume_on_one_with_a_larger_per_device_batch(home: Path, tmp_path: Path) -> None:
    killed = _launch(home, ARGS, fault_env(kill_after_step=CHECKPOINT_AT))
    assert killed.returncode != 0
    run = _run_dir(home)
    assert (run / "checkpoints" / f"checkpoint_{CHECKPOINT_AT}").is_dir(), killed.stderr[-3000:]

    record = tmp_path / "seen"
    record.mkdir()
    resumed = run_cli(ARGS + ["resume_checkpoint_path=auto", "batch_size=8"], home,
                      env=fault_env(record_samples=record))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    log = (run / "train.log").read_text()
    assert ("written by 2 processes x batch 4 x 1 accumulation, continuing on 1 x 8 x 1 (global batch 8 kept; "
            f"{CHECKPOINT_AT * 8} samples into epoch 0 kept") in log
    # The samples after the checkpoint are the epoch permutation's next ones, in order: none twice, none skipped.
    windows = _training_windows(run)
    order = list(EpochSampler(windows, seed=42))
    start, remaining = CHECKPOINT_AT * 8, (STEPS - CHECKPOINT_AT) * 8
    assert _seen(record, 0, windows)[:remaining] == order[start:start + remaining]
    state, optimizer = _final_state(run)
    assert (state["step"], state["world_size"], state["batch_size"]) == (STEPS, 1, 8)
    assert state["samples_seen"] == STEPS * 8
    assert _adam_steps(optimizer) == {STEPS}  # the optimizer state continued from the checkpoint's


def test_one_process_resumes_on_two_splitting_the_global_batch(home: Path, tmp_path: Path) -> None:
    killed = run_cli(ARGS, home, env=fault_env(kill_after_step=CHECKPOINT_AT))
    assert killed.returncode != 0
    run = _run_dir(home)
    record = tmp_path / "seen"
    record.mkdir()
    resumed = _launch(home, ARGS + ["resume_checkpoint_path=auto"], fault_env(record_samples=record))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert ("written by 1 processes x batch 4 x 1 accumulation, continuing on 2 x 2 x 1 (global batch 4 kept"
            in (run / "train.log").read_text())
    windows = _training_windows(run)
    order = list(EpochSampler(windows, seed=42))
    start, steps = CHECKPOINT_AT * 4, STEPS - CHECKPOINT_AT
    # Global step k takes order[start + 4k : start + 4k + 4]: its first half on rank 0, its second on rank 1.
    for rank in (0, 1):
        expected = [i for k in range(steps) for i in order[start + 4 * k + 2 * rank: start + 4 * k + 2 * rank + 2]]
        assert _seen(record, rank, windows)[: 2 * steps] == expected, rank
    state, optimizer = _final_state(run)
    assert (state["step"], state["world_size"], state["batch_size"]) == (STEPS, 2, 2)
    assert state["samples_seen"] == STEPS * 4 and _adam_steps(optimizer) == {STEPS}


def test_a_different_global_batch_or_seed_is_refused(home: Path) -> None:
    killed = run_cli(ARGS, home, env=fault_env(kill_after_step=CHECKPOINT_AT))
    assert killed.returncode != 0
    other_batch = run_cli(ARGS + ["resume_checkpoint_path=auto", "effective_batch_size=16"], home)
    assert other_batch.returncode == 2
    assert "effective_batch_size=16: " in other_batch.stderr and "resume with effective_batch_size=4" in other_batch.stderr
    other_seed = run_cli(ARGS + ["resume_checkpoint_path=auto", "seed=7"], home)
    assert other_seed.returncode == 2 and "trained with seed=42, this run has 7" in other_seed.stderr

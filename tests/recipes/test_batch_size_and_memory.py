"""batch_size=auto through the real CLI (CPU, 2 gloo ranks), and the memory monitor stopping a run."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST, fault_env, run_cli, run_group
from tests.recipes.test_train_end_to_end import _free_port

AUTO = [a for a in FAST if not a.startswith("batch_size=")] + ["batch_size=auto"]


def _runs(home: Path) -> Path:
    return home / "training" / "runs"


def test_auto_batch_size_on_cpu_is_probed_recorded_and_reused_on_resume(home: Path) -> None:
    args = AUTO + ["max_steps=2", "training_name=auto", "autotune.cpu_time_budget_s=30",
                   "autotune.cpu_max_step_seconds=30", "autotune.max_batch_size=16"]
    result = run_cli(args, home)
    assert result.returncode == 0, result.stderr[-3000:]
    probes = re.findall(r"batch_size=auto probe: (\d+) samples -> (\w[\w ]*)", result.stderr)
    assert probes and probes[0][0] == "8"
    chosen = int(re.search(r"batch_size=auto: chose (\d+) per device", result.stderr).group(1))
    assert chosen in (8, 16)
    run = _runs(home) / "auto"
    resolved = yaml.safe_load((run / "resolved_config.yaml").read_text())
    assert resolved["batch_size"] == chosen
    state = json.loads((run / "checkpoints" / "checkpoint_2" / "trainer_state.json").read_text())
    assert state["batch_size"] == chosen and state["samples_seen"] == 2 * chosen

    resumed = run_cli(args[:-1] + ["max_steps=3", "resume_checkpoint_path=auto"], home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "probe" not in resumed.stderr
    assert f"batch size {chosen} x 1 accumulation from the checkpoint" in resumed.stderr


def test_effective_batch_size_sets_accumulation(home: Path) -> None:
    result = run_cli(FAST + ["max_steps=2", "training_name=eff", "effective_batch_size=8"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "effective_batch_size=8: 4 per device x 1 processes x 2 accumulation steps" in result.stderr
    state = json.loads((_runs(home) / "eff" / "checkpoints" / "checkpoint_2" / "trainer_state.json").read_text())
    assert (state["batch_size"], state["gradient_accumulation_steps"], state["samples_seen"]) == (4, 2, 16)


@pytest.mark.slow
def test_ddp_ranks_agree_when_only_one_rank_runs_out_of_memory(home: Path) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {**os.environ, "NEURACORE_HOME": str(home), "OMP_NUM_THREADS": "1",
           **fault_env(oom_above="1:20")}  # only rank 1 "runs out of memory" above 20 samples
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port()),
           "recipes/train.py", *AUTO, "max_steps=1", "autotune.strategy=memory", "training_name=agree"]
    result = run_group(cmd, env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "out of memory on another rank" in result.stderr  # rank 0 learned of rank 1's failure
    run = _runs(home) / "agree"
    assert yaml.safe_load((run / "resolved_config.yaml").read_text())["batch_size"] == 20
    state = json.loads((run / "checkpoints" / "checkpoint_1" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["batch_size"] == 20
    assert state["samples_seen"] == 2 * 20  # both ranks ran batches of 20


@pytest.mark.slow
def test_memory_monitor_stops_with_a_checkpoint_and_a_clear_message(home: Path) -> None:
    args = FAST + ["max_steps=10", "training_name=mem", "memory_monitor.check_interval=2",
                   "memory_monitor.host_fraction=0.0001"]
    result = run_cli(args, home)
    assert result.returncode == 3, result.stderr[-3000:]
    lines = [l for l in result.stderr.splitlines() if l.startswith("neuracore: error:")]
    assert len(lines) == 1
    message = lines[0]
    assert "memory_monitor.host_fraction=0.0001" in message and "at step 2" in message
    assert "smaller batch_size" in message and "resume_checkpoint_path=auto" in message
    assert (_runs(home) / "mem" / "checkpoints" / "checkpoint_2" / "trainer_state.json").is_file()
    assert not (_runs(home) / "mem" / "model").exists()
    # Raising the limit, the run resumes from that checkpoint and finishes.
    resumed = run_cli(args[:-1] + ["resume_checkpoint_path=auto"], home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 2" in resumed.stderr

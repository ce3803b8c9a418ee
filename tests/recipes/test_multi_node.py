"""Two "nodes" on one machine over loopback: one run folder, checkpoints, SIGKILL, exact resume.

Each node is its own `accelerate launch --config_file accelerate_configs/multi_node.yaml` (the shipped
config, with the per-node values on the command line as on a real cluster): `--num_machines 2
--machine_rank 0|1 --main_process_ip 127.0.0.1`, one CPU process per node (gloo). Both nodes see
the same NEURACORE_HOME, as nodes on a shared filesystem do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import FAST, REPO, fault_env

CONFIG = REPO / "accelerate_configs" / "multi_node.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_command(rank: int, port: int, args: list[str]) -> list[str]:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    return [accelerate, "launch", "--config_file", str(CONFIG), "--num_machines", "2", "--machine_rank", str(rank),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--num_processes", "2",
            "--mixed_precision", "no", "recipes/train.py", *args]


def run_two_nodes(args: list[str], home: Path, env: dict[str, str] | None = None,
                  timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Start node 0 and node 1 at once (each in its own process group) and wait for both."""
    full_env = {**os.environ, "NEURACORE_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                **(env or {})}
    port = _free_port()
    procs = [subprocess.Popen(_node_command(rank, port, args), cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True) for rank in (0, 1)]
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"two-node run timed out after {timeout} s") from None
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    return results


def _args(name: str) -> list[str]:
    return FAST + ["max_steps=8", "checkpoint_frequency=3", "keep_last_n_checkpoints=2", "validation_split=0.25",
                   "logging_frequency=2", f"training_name={name}"]


def _ok(results: list[subprocess.CompletedProcess]) -> None:
    for rank, result in enumerate(results):
        assert result.returncode == 0, f"node {rank} exited {result.returncode}:\n{result.stdout[-4000:]}"


@pytest.mark.slow
def test_two_nodes_train_one_run_are_killed_and_resume_bit_identically(home: Path) -> None:
    runs = home / "training" / "runs"
    straight = run_two_nodes(_args("straight"), home)
    _ok(straight)
    assert sorted(p.name for p in runs.iterdir()) == ["straight"], "both nodes must write one run folder"
    log = (runs / "straight" / "train.log").read_text()
    assert "world_size=2" in log.splitlines()[0] and "distributed=MULTI_CPU" in log.splitlines()[0]
    state = json.loads((runs / "straight" / "checkpoints" / "checkpoint_8" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["samples_seen"] == 8 * 4 * 2

    killed = run_two_nodes(_args("killed"), home, env=fault_env(kill_after_step=5))
    assert all(r.returncode != 0 for r in killed), [r.returncode for r in killed]
    run = runs / "killed"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint_3"]
    assert not (run / "model").exists()

    resumed = run_two_nodes(_args("killed") + ["resume_checkpoint_path=auto"], home)
    _ok(resumed)
    assert "resumed from" in resumed[0].stdout and "at step 3" in resumed[0].stdout
    a = load_file(str(runs / "straight" / "model" / "model.safetensors"))
    b = load_file(str(run / "model" / "model.safetensors"))
    assert set(a) == set(b)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"weights differ after a two-node resume: {different[:5]}"

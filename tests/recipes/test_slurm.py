"""SLURM without SLURM: the shipped launcher config, submitit's local executor, and the sbatch template.

The sbatch template runs here as it would on a cluster, with `srun` and `scontrol` replaced by small
shell stand-ins (`srun` starts one task per "node" on this machine and forwards signals to them;
`scontrol requeue` is recorded), and the test sends the SIGUSR1 that SLURM sends before the time limit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FAST, REPO, run_cli, run_group

TEMPLATE = REPO / "tools" / "slurm" / "train.sbatch"
NODE = REPO / "tools" / "slurm" / "node.sh"
SWEEP = [a for a in FAST if not a.startswith("batch_size=")] + ["batch_size=8", "validation_split=0.25"]


def _runs(home: Path) -> Path:
    return home / "training" / "runs"


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_slurm_launcher_config_composes_with_the_documented_fields(home: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    result = run_cli(["hydra/launcher=slurm", *FAST, "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                      "hydra.launcher.timeout_min=30", "--cfg", "hydra", "--package", "hydra.launcher", "--resolve"],
                     home, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    import yaml

    launcher = yaml.safe_load(result.stdout)  # "# @package hydra.launcher": the node itself
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 4 and launcher["timeout_min"] == 30
    for key in ("nodes", "cpus_per_task", "mem_gb", "signal_delay_s", "max_num_timeout", "tasks_per_node"):
        assert launcher[key] is not None, key
    assert launcher["additional_parameters"] == {"signal": "USR1@120", "requeue": True}

    # The sbatch file submitit would submit for it (a stand-in `srun` lets submitit build it here).
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "srun", "#!/bin/sh\nexit 0\n")
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    try:
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "sub",
                                         slurm_max_num_timeout=launcher["max_num_timeout"])
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in launcher.items()
                                      if k not in ("_target_", "submitit_folder", "max_num_timeout")})
        text = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    finally:
        os.environ["PATH"] = os.environ["PATH"].split(os.pathsep, 1)[1]
    for flag in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --time=30", "#SBATCH --requeue",
                 "#SBATCH --signal=USR1@120", "#SBATCH --mem=64GB", "#SBATCH --cpus-per-task=8"):
        assert flag in text, (flag, text)
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text and "-lt 3 ]" in text
    assert 'export NEURACORE_RESUME=auto' in text
    check = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True, check=False)
    assert check.returncode == 0, check.stderr


def test_a_launcher_without_multirun_is_one_line(home: Path) -> None:
    result = run_cli(["hydra/launcher=slurm", *FAST, "max_steps=1"], home, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("neuracore: error: hydra/launcher=slurm: a launcher runs "
                                                              "sweeps; add --multirun")


def test_sbatch_template_is_bash_with_signal_requeue_and_auto_resume() -> None:
    for script in (TEMPLATE, NODE):
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert check.returncode == 0, (script, check.stderr)
    text = TEMPLATE.read_text()
    for piece in ("#SBATCH --signal=B:USR1@120", "#SBATCH --requeue", "scontrol show hostnames",
                  'scontrol requeue "$SLURM_JOB_ID"', "resume_checkpoint_path=auto", "training_name",
                  "SLURM_RESTART_COUNT", "srun --ntasks-per-node=1", "NCCL_"):
        assert piece in text, piece
    node = NODE.read_text()
    assert "--machine_rank" in node and "SLURM_NODEID" in node and "accelerate launch" in node
    assert "exit 75" in node


@pytest.mark.slow
def test_submitit_local_sweep_then_the_same_overrides_continue_each_run(home: Path) -> None:
    """Two jobs through submitit's local executor; a requeued job (same overrides) continues its run."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = ["--multirun", "hydra/launcher=submitit_local", *SWEEP, "algorithm.lr=1e-4,5e-4",
             "training_name=sweep_${hydra:job.num}", "resume_checkpoint_path=${oc.env:NEURACORE_RESUME,null}",
             "hydra.launcher.timeout_min=10"]
    env = {"OMP_NUM_THREADS": "1"}
    first = run_cli(sweep + ["max_steps=2"], home, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = _runs(home)
    assert sorted(p.name for p in runs.iterdir()) == ["sweep_0", "sweep_1"]
    for job, lr in ((0, 1e-4), (1, 5e-4)):
        config = json.loads((runs / f"sweep_{job}" / "model" / "config.json").read_text())
        assert config["algorithm"]["hyperparameters"]["lr"] == lr
        assert config["training"]["steps"] == 2
    assert list((home / "training" / "sweeps").glob("*/.submitit/*/*_result.pkl"))  # submitit ran the jobs

    # What a requeued job does: the same overrides, NEURACORE_RESUME=auto (set by the launcher's setup).
    again = run_cli(sweep + ["max_steps=3"], home, env={**env, "NEURACORE_RESUME": "auto"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in runs.iterdir()) == ["sweep_0", "sweep_1"]
    for job in (0, 1):
        state = json.loads((runs / f"sweep_{job}" / "checkpoints" / "checkpoint_3" / "trainer_state.json").read_text())
        assert state["step"] == 3
        assert "resumed from" in (runs / f"sweep_{job}" / "train.log").read_text()


# --------------------------------------------------------------------------- the sbatch template on fake SLURM

FAKE_SRUN = r"""#!/usr/bin/env bash
# srun stand-in: one task per node on this machine (SLURM_NODEID set), signals forwarded to the tasks.
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_NODEID=$node SLURM_PROCID=$node "${@:2}" &   # "$1" is --ntasks-per-node=1
    pids+=($!)
done
forward() { kill "-$1" "${pids[@]}" 2>/dev/null; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
rc=0
for pid in "${pids[@]}"; do
    while true; do
        wait "$pid"; code=$?
        kill -0 "$pid" 2>/dev/null || break
    done
    [ "$code" -gt "$rc" ] && rc=$code
done
exit $rc
"""

FAKE_SCONTROL = r"""#!/usr/bin/env bash
case "$1 $2" in
    "show hostnames") echo 127.0.0.1 ;;
    requeue*) echo "requeue $2" >> "$FAKE_SLURM_LOG" ;;
esac
"""


def _fake_slurm(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir = tmp_path / "slurm_bin"
    bin_dir.mkdir()
    # srun's extra flags are dropped: the stand-in keeps only the command
    _executable(bin_dir / "srun", FAKE_SRUN.replace('"${@:2}"', '"${@:3}"'))
    _executable(bin_dir / "scontrol", FAKE_SCONTROL)
    return bin_dir, tmp_path / "slurm.log"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sbatch_template_usr1_checkpoints_requeues_and_the_requeued_job_continues(home: Path, tmp_path: Path) -> None:
    bin_dir, log = _fake_slurm(tmp_path)
    steps = 40
    args = [a for a in FAST if not a.startswith("batch_size=")] + [
        "batch_size=4", f"max_steps={steps}", "checkpoint_frequency=1000", "validation_split=0.25",
        "logging_frequency=5", "mixed_precision=no", "training_name=slurm_run"]
    env = {**os.environ, "NEURACORE_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]", "GPUS_PER_NODE": "1",
           "MASTER_PORT": str(_free_port()), "FAKE_SLURM_LOG": str(log),
           "NEURACORE_SLURM_DIR": str(REPO / "tools" / "slurm")}
    run = _runs(home) / "slurm_run"

    proc = subprocess.Popen(["bash", str(TEMPLATE), *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (run / "tensorboard").is_dir() or not any((run / "tensorboard").rglob("events.*")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"training never started (exit {proc.poll()}):\n{proc.communicate()[0][-4000:]}")
            time.sleep(0.2)
        time.sleep(1)
        proc.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@120` sends to the batch script
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, out[-4000:]
    assert "requeueing job 4242" in out, out[-4000:]
    assert log.read_text().split() == ["requeue", "4242"]
    stopped = [json.loads(p.read_text())["step"] for p in run.glob("checkpoints/checkpoint_*/trainer_state.json")]
    assert len(stopped) == 1 and 0 < stopped[0] < steps, (stopped, out[-3000:])
    assert not (run / "model").exists()

    # The requeued job: the same script and arguments; it finds the checkpoint and resumes.
    again = run_group(["bash", str(TEMPLATE), *args], {**env, "SLURM_RESTART_COUNT": "1"}, timeout=600)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert "resume_checkpoint_path=auto" in out and f"at step {stopped[0]}" in out
    state = json.loads((run / "checkpoints" / f"checkpoint_{steps}" / "trainer_state.json").read_text())
    assert state["step"] == steps and state["world_size"] == 2
    assert (run / "model" / "model.safetensors").is_file()
    assert log.read_text().split() == ["requeue", "4242"]  # no second requeue

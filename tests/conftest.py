"""Shared fixtures: an isolated NEURACORE_HOME with a small demo dataset, and a CLI runner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL_DEMO_EPISODES = 12

# Small, fast settings for end-to-end runs (tiny MLP head; ResNet18 on 64x64 images).
FAST = [
    "algorithm=cnnmlp",
    "dataset_name=demo",
    "batch_size=4",
    "output_prediction_horizon=5",
    "num_workers=0",
    "algorithm.hidden_dim=32",
    "algorithm.cnn_output_dim=32",
    "algorithm.num_layers=1",
    "training.log_images=false",
]


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A NEURACORE_HOME holding a 12-episode `demo` dataset (made once per session)."""
    from neuracore.ml.datasets.demo import DEMO_NAME, demo_episodes, demo_layout
    from neuracore.ml.datasets.materialize import materialize
    from neuracore.ml.sim import pick_place

    home = tmp_path_factory.mktemp("neuracore_home")
    materialize(DEMO_NAME, demo_episodes(SMALL_DEMO_EPISODES), demo_layout(), pick_place.FREQUENCY_HZ,
                root=home / "datasets")
    return home


@pytest.fixture()
def home(demo_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh NEURACORE_HOME per test that shares the session's demo dataset (symlinked)."""
    h = tmp_path / "home"
    (h / "datasets").mkdir(parents=True)
    (h / "datasets" / "demo").symlink_to(demo_home / "datasets" / "demo")
    monkeypatch.setenv("NEURACORE_HOME", str(h))
    return h


def run_group(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group; on timeout kill the whole group (launchers leave children)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {' '.join(cmd)}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def fault_env(kill_after_step: int | None = None, oom_above: str | None = None,
              record_samples: Path | None = None) -> dict[str, str]:
    """Environment that arms tests/fault_injection/sitecustomize.py in a child process (every rank).

    `kill_after_step=N`: SIGKILL once step N is complete; `oom_above="RANK:SIZE"`: batch-size probes
    above SIZE fail on that rank as if out of memory; `record_samples=DIR`: the windows each rank
    reads are listed in `DIR/samples-<rank>.txt`.
    """
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests" / "fault_injection"),
                                                       os.environ.get("PYTHONPATH")]))}
    if kill_after_step is not None:
        env["NEURACORE_TEST_KILL_AFTER_STEP"] = str(kill_after_step)
    if oom_above is not None:
        env["NEURACORE_TEST_OOM_ABOVE"] = oom_above
    if record_samples is not None:
        env["NEURACORE_TEST_RECORD_SAMPLES"] = str(record_samples)
    return env


def run_cli(args: list[str], home: Path, timeout: float = 600, env: dict[str, str] | None = None,
            module: str = "neuracore.ml.train") -> subprocess.CompletedProcess:
    """Run `python -m <module> *args` with NEURACORE_HOME=home; returns the completed process."""
    full_env = {**os.environ, "NEURACORE_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", module, *args] if module else [sys.executable, *args]
    return run_group(cmd, full_env, timeout)


def edit_config(folder: Path, edit) -> None:
    """Apply `edit(config)` to `<folder>/config.json` in place (tests that damage an export)."""
    import json

    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))

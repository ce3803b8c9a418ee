"""`tools/dataset.py`: import/list/info/show/verify/delete, and training on imported datasets."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FAST, REPO, run_cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ml" / "datasets"))
from lerobot_writer import JOINTS, write_lerobot
from test_import_episodes import write_episode
from test_import_hdf5 import write_act, write_robomimic


def _tool(args: list[str], home: Path):
    return run_cli(["tools/dataset.py", *args], home, module="", timeout=300)


def _load_tool():
    spec = importlib.util.spec_from_file_location("dataset_tool", REPO / "tools" / "dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _load_tool()


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run the CLI in this process (the `home` fixture has set NEURACORE_HOME); fast for many calls."""
    code = TOOL.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_round_trip(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = write_lerobot(tmp_path / "lr", [6, 9], video=True)
    result = _tool(["import", "lerobot", str(tmp_path / "lr"), "--name", "lr", "--workers", "2"], home)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "imported 'lr': 2 episodes, 15 frames" in result.stdout and "frames/s" in result.stdout
    assert "100%" not in result.stderr  # the progress bar is drawn on a terminal only, not into logs

    assert _run(["list"], capsys)[1].split() == ["demo", "lr"]

    info = json.loads(_run(["info", "lr", "--json"], capsys)[1])
    assert (info["episodes"], info["frames"], info["frequency"]) == (2, 15, 10.0)
    assert info["robots"]["so100"]["data_types"]["JOINT_POSITIONS"] == JOINTS
    assert info["robots"]["so100"]["data_types"]["RGB_IMAGES"] == ["top", "wrist"]
    assert info["size_bytes"] > 15 * 2 * 32 * 40 * 3
    mean = info["statistics"]["JOINT_POSITIONS"]["elbow"]["mean"][0]
    assert mean == pytest.approx(float(np.concatenate(src.state)[:, 1].mean()), abs=1e-5)
    text = _run(["info", "lr"], capsys)[1]
    assert "lr: 2 episodes, 15 frames at 10 Hz" in text and "JOINT_POSITIONS (4): shoulder, elbow, wrist, gripper" in text

    shown = json.loads(_run(["show", "lr", "--episode", "1", "--frame", "8", "--json"], capsys)[1])
    assert [shown["values"]["JOINT_POSITIONS"][j] for j in JOINTS] == src.state[1][8].tolist()
    assert shown["values"]["RGB_IMAGES"]["top"]["shape"] == [32, 40, 3]
    text = _run(["show", "lr", "--episode", "1", "--frame", "8"], capsys)[1]
    assert "RGB_IMAGES:" in text and "top: image [32, 40, 3] uint8 mean" in text

    assert _run(["verify", "lr"], capsys)[1].startswith("lr: ok (2 episodes, 15 frames")
    assert _run(["show", "lr", "--episode", "5"], capsys) == (
        2, "", "dataset: error: --episode 5: dataset 'lr' has episodes 0..1\n")

    # a changed Arrow file fails verification, naming the fingerprint
    arrow = next((home / "datasets" / "lr" / "data").glob("*.arrow"))
    data = bytearray(arrow.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the pixel data: the file still parses
    arrow.write_bytes(bytes(data))
    code, _, err = _run(["verify", "lr"], capsys)
    assert code == 2 and "fingerprint mismatch" in err

    assert _run(["delete", "lr"], capsys)[0] == 0
    assert _run(["list"], capsys)[1].split() == ["demo"]
    code, _, err = _run(["delete", "lr"], capsys)
    assert code == 2 and "dataset 'lr': not found" in err
    assert (home / "datasets" / "demo" / "spec.json").is_file()  # a linked dataset is untouched by others


def test_cli_import_errors_are_one_line(home: Path, tmp_path: Path) -> None:
    write_act(tmp_path / "act", lengths=[4, 5])
    (tmp_path / "act" / "episode_1.hdf5").write_bytes(b"not hdf5 at all")
    result = _tool(["import", "hdf5", str(tmp_path / "act"), "--name", "a"], home)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dataset: error: episode 1 (episode_1.hdf5): ") and "unreadable HDF5 file" in last
    assert not (home / "datasets" / "a").exists()

def test_cli_skip_and_existing(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_act(tmp_path / "act", lengths=[4, 5])
    (tmp_path / "act" / "episode_1.hdf5").write_bytes(b"not hdf5 at all")
    code, out, _ = _run(["import", "hdf5", str(tmp_path / "act"), "--name", "a", "--skip-bad-episodes"], capsys)
    assert code == 0 and "imported 'a': 1 episodes, 4 frames" in out
    assert "skipped: episode 1 (episode_1.hdf5)" in out
    code, _, err = _run(["import", "hdf5", str(tmp_path / "act"), "--name", "a"], capsys)
    assert code == 2 and "'a' already exists" in err


def _make(kind: str, tmp_path: Path) -> tuple[str, list[str]]:
    if kind == "lerobot":
        write_lerobot(tmp_path / "src", [12, 10, 11], video=False)
        return str(tmp_path / "src"), []
    if kind == "act":
        write_act(tmp_path / "src", lengths=[12, 10, 11], cams=("top",))
        return str(tmp_path / "src"), []
    if kind == "robomimic":
        write_robomimic(tmp_path / "rm.hdf5", lengths=(12, 10, 11))
        return str(tmp_path / "rm.hdf5"), []
    ts = np.arange(0.0, 1.2, 0.05)
    for e in range(3):
        write_episode(tmp_path / "src" / f"ep{e}", "arm", {
            "q": ("JOINT_POSITIONS", ["a", "b"], ts, np.random.default_rng(e).normal(size=(len(ts), 2))),
            "t": ("JOINT_TARGET_POSITIONS", ["a", "b"], ts[::2], np.zeros((len(ts[::2]), 2))),
            "cam": ("RGB_IMAGES", ["cam"], ts, np.full((len(ts), 16, 16, 3), 9 * e, np.uint8)),
        })
    return str(tmp_path / "src"), ["--frequency", "10"]


@pytest.mark.parametrize("kind", [
    "act",
    pytest.param("lerobot", marks=pytest.mark.slow),  # ~30 s each on a shared 2-core machine
    pytest.param("robomimic", marks=pytest.mark.slow),
    pytest.param("episodes", marks=pytest.mark.slow),
])
@pytest.mark.slow
def test_train_on_imported_dataset(home: Path, tmp_path: Path, kind: str) -> None:
    path, extra = _make(kind, tmp_path)
    importer = "hdf5" if kind in ("act", "robomimic") else kind
    assert _tool(["import", importer, path, "--name", "imp", *extra], home).returncode == 0
    args = [a for a in FAST if not a.startswith("dataset_name=")]
    result = run_cli(args + ["dataset_name=imp", "max_steps=2", "training_name=imp"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = json.loads((home / "training" / "runs" / "imp" / "model" / "config.json").read_text())
    assert "imp" in json.dumps(exported)
    assert (home / "training" / "runs" / "imp" / "model" / "model.safetensors").is_file()


@pytest.mark.slow
def test_dataset_push_pull_and_train_by_repo_name(home):
    """A dataset pushed to storage trains by `dataset_name=org/name@tag` on another 'machine'."""
    import subprocess
    import sys

    from tests.conftest import FAST, REPO, run_cli

    env = {**__import__("os").environ, "NEURACORE_HOME": str(home)}
    push = subprocess.run([sys.executable, "tools/dataset.py", "push", "demo", "--repo", "team/cubes",
                           "--revision", "v1"], cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert push.returncode == 0, push.stderr
    assert "pushed 'demo' to team/cubes@" in push.stdout
    args = [a for a in FAST if not a.startswith("dataset_name=")]
    result = run_cli(args + ["dataset_name=team/cubes@v1", "max_steps=2", "training_name=frompull"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pulled from storage as" in result.stderr
    local = home / "datasets" / "team.cubes.v1" / "spec.json"
    assert local.is_file()
    import json

    original = json.loads((home / "datasets" / "demo" / "spec.json").read_text())
    assert json.loads(local.read_text())["fingerprint"] == original["fingerprint"]
    pull = subprocess.run([sys.executable, "tools/dataset.py", "pull", "team/cubes@v1", "--name", "copy"], cwd=REPO,
                          env=env, capture_output=True, text=True, check=False)
    assert pull.returncode == 0 and "dataset_name=copy" in pull.stdout

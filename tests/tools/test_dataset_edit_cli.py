"""`tools/dataset.py merge|split|filter|stats`: output, one-line errors, and a kill that leaves nothing half-written."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from neuracore.ml.datasets.format import open_dataset
from tests.conftest import REPO
from tests.ml.datasets.tools.edit_data import make_dataset


def _load_tool():
    spec = importlib.util.spec_from_file_location("dataset_tool_edit", REPO / "tools" / "dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _load_tool()


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """The CLI's `main` in this process (the `home` fixture has set NEURACORE_HOME)."""
    code = TOOL.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def datasets(home: Path) -> Path:
    root = home / "datasets"
    make_dataset(root, "a", robot="arm", lengths=(4, 5, 6, 7), languages=["pick red", "pick blue", "push", None])
    make_dataset(root, "b", robot="bot", lengths=(3, 8), joints=("b", "c"), seed=1)
    return root


def test_edit_tools_cli(datasets: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run(["merge", "a", "b", "--name", "ab"], capsys)
    assert code == 0, err
    assert out.startswith("merged 'a', 'b' into 'ab': 6 episodes, 33 frames, robots arm, bot, at ")

    code, out, err = _run(["split", "ab", "--fraction", "0.5", "--seed", "1", "--name", "s1", "--rest-name", "s2"],
                          capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "split 'ab' (6 episodes) by --fraction 0.5 --seed 1:"
    assert lines[1].startswith("  's1': 3 episodes (") and lines[2].startswith("  's2': 3 episodes (")
    code, out, _ = _run(["split", "ab", "--episodes", "0-1,4", "--name", "e"], capsys)
    assert code == 0 and "'e': 3 episodes (0-1,4), 12 frames" in out

    code, out, err = _run(["filter", "ab", "--name", "f", "--drop-episodes", "1", "--min-length", "0.35s",
                           "--robot", "arm,bot", "--language", "^pick|^task"], capsys)
    assert code == 0, err
    assert out.splitlines() == [
        f"kept 2 of 6 episodes (12 of 33 frames) of 'ab' as 'f' at {datasets / 'f'}",
        "dropped 4 episodes:",
        "  episode 1: --drop-episodes",
        "  episode 2: instruction 'push' does not match --language",
        "  episode 3: no instruction",
        "  episode 4: 0.3 s < --min-length 0.35 seconds",
    ]
    assert [(e.robot, e.length) for e in open_dataset("f").spec.episodes] == [("arm", 4), ("bot", 8)]

    code, out, _ = _run(["stats", "f"], capsys)
    assert code == 0
    assert out.startswith("statistics of 'f', recomputed from 12 frames (q01/q99 exact up to 20000 rows")
    assert "  JOINT_POSITIONS:\n    a: mean [" in out and " q01 [" in out and " q99 [" in out
    assert out.rstrip().endswith("same as stored in spec.json")
    stats = json.loads(_run(["stats", "f", "--json"], capsys)[1])
    assert set(stats["statistics"]["JOINT_POSITIONS"]) == {"a", "b", "c"} and stats["differences"] == []

    spec_file = datasets / "f" / "spec.json"
    spec = json.loads(spec_file.read_text())
    spec["statistics"]["JOINT_POSITIONS"]["a"]["std"] = [9.0]
    spec_file.write_text(json.dumps(spec))
    out = _run(["stats", "f"], capsys)[1]
    assert "differences from spec.json (1 items):\n  JOINT_POSITIONS a: max |difference| std " in out
    assert out.rstrip().endswith("pass --write to store them in spec.json")
    out = _run(["stats", "f", "--write"], capsys)[1]
    assert "wrote the new statistics to" in out and "fingerprint unchanged" in out
    assert _run(["stats", "f"], capsys)[1].rstrip().endswith("same as stored in spec.json")
    assert _run(["verify", "f"], capsys)[0] == 0
    assert _run(["list"], capsys)[1].split() == ["a", "ab", "b", "demo", "e", "f", "s1", "s2"]


@pytest.mark.parametrize("args,message", [
    (["merge", "a", "--name", "x"], "merge: give at least two datasets to merge, got 1"),
    (["merge", "a", "nope", "--name", "x"], "dataset_name='nope': no dataset under"),
    (["merge", "a", "b", "--name", "a"], "--name 'a' is also an input"),
    (["merge", "a", "b", "--name", "b", "--overwrite"], "--name 'b' is also an input"),
    (["merge", "a", "b", "--name", "../x"], "--name='../x': invalid name"),
    (["merge", "a", "a", "--name", "x"], "merge: dataset 'a' is given twice"),
    (["split", "a", "--episodes", "3-1", "--name", "x"], "--episodes '3-1': range 3-1 runs backwards"),
    (["split", "a", "--episodes", "0,9", "--name", "x"], ("--episodes '0,9': episode 9 does not exist; the dataset "
                                                         "has episodes 0..3")),
    (["split", "a", "--fraction", "2", "--name", "x"], "--fraction 2.0: must be a number between 0 and 1"),
    (["split", "a", "--episodes", "0-3", "--name", "x", "--rest-name", "y"], "--rest-name 'y' would be empty"),
    (["split", "a", "--episodes", "0", "--name", "b"], "dataset 'b' already exists at"),
    (["filter", "a", "--name", "x"], "filter: give at least one of --drop-episodes"),
    (["filter", "a", "--name", "x", "--min-length", "1m"], ("--min-length '1m': give a number of frames (e.g. 50) "
                                                           "or of seconds ending in s (e.g. 2.5s)")),
    (["filter", "a", "--name", "x", "--max-length", "3"], "filter: no episode of 'a' is left (4 dropped"),
    (["filter", "a", "--name", "x", "--robot", "bot"], "--robot 'bot': not a robot of dataset 'a'; robots: arm"),
    (["filter", "a", "--name", "x", "--language", "[x"], "--language '[x': not a valid regular expression"),
    (["stats", "nope"], "dataset_name='nope': no dataset under"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else None)
def test_edit_tools_errors_are_one_line(datasets: Path, capsys: pytest.CaptureFixture, args: list[str],
                                        message: str) -> None:
    before = sorted(p.name for p in datasets.iterdir())
    code, out, err = _run(args, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("dataset: error: "), err
    assert message in err, err
    assert sorted(p.name for p in datasets.iterdir()) == before  # nothing written, nothing left behind


_KILLED_MERGE = """
import os, signal, sys
sys.argv = ["dataset.py", "merge", "b", "a", "--name", "ab", "--overwrite"]
from neuracore.ml.datasets.tools import _write
def killed(*args, **kwargs):  # SIGKILL once the rows and statistics are staged, before spec.json and the rename
    os.kill(os.getpid(), signal.SIGKILL)
_write.fingerprint_files = killed
sys.path.insert(0, "tools")
import dataset
dataset.main(sys.argv[1:])
"""


def test_a_killed_merge_leaves_the_old_dataset_and_its_staging_is_swept(datasets: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    assert _run(["merge", "a", "b", "--name", "ab"], capsys)[0] == 0
    before = open_dataset("ab").spec.fingerprint
    proc = subprocess.run([sys.executable, "-c", _KILLED_MERGE], check=False, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "NEURACORE_HOME": str(datasets.parent)}, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    staging = [p.name for p in datasets.iterdir() if p.name.startswith(".ab.tmp-")]
    assert len(staging) == 1  # the killed process's staging folder: hidden, never under the name
    assert open_dataset("ab").spec.fingerprint == before  # the old dataset is whole and unchanged
    assert _run(["list"], capsys)[1].split() == ["a", "ab", "b", "demo"]  # listing sweeps the dead staging
    assert not [p for p in datasets.iterdir() if p.name.startswith(".")]
    assert _run(["merge", "b", "a", "--name", "ab", "--overwrite"], capsys)[0] == 0
    assert [e.robot for e in open_dataset("ab").spec.episodes] == ["bot", "bot", "arm", "arm", "arm", "arm"]

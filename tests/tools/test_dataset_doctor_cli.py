"""`tools/dataset.py doctor`: the report, --json, exit status 0 with findings, one-line errors with status 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.ml.datasets.tools.test_doctor import build, clean, walk


def _load_tool():
    spec = importlib.util.spec_from_file_location("dataset_tool_doctor", REPO / "tools" / "dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _load_tool()


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = TOOL.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def datasets(home: Path) -> Path:
    root = home / "datasets"
    states = clean()
    build(root, "ok", states)
    actions = [*states, walk(8, 9)]
    sick = [q.copy() for q in actions]
    sick[1][12, 0] = 30.0  # an outlier of joint a's state
    sick[2][:25] = sick[2][24]  # still for the first 2.4 s
    build(root, "sick", sick, actions)
    return root


def test_report_groups_findings_with_a_fix_each(datasets: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run(["doctor", "sick"], capsys)
    assert code == 0 and err == ""  # findings are no failure
    lines = out.splitlines()
    assert lines[0] == "doctor 'sick': 5 episodes, 168 frames at 10 Hz, robots arm"
    assert [line for line in lines if not line.startswith("  ")] == [
        lines[0], "outliers (1):", "idle at the start of episodes (1):", "episode lengths (1):",
        "summary: 2 warnings, 1 info"]
    assert lines[2].startswith("  [warning] arm JOINT_POSITIONS a: 1 frame in 1 episode more than 3x the q01..q99 span")
    assert lines[3] == ("    fix: inspect them (python tools/dataset.py show sick --episode 1 --frame 12), then drop "
                        "the episodes: python tools/dataset.py filter sick --name sick_clean --drop-episodes 1")
    assert lines[5].startswith("  [info] arm JOINT_POSITIONS: still at the start for more than 2 s in 1 episode")
    assert lines[8] == "  [warning] arm: 1 episode under 25% of the median 40 frames (4.0 s): episode (frames) 4 (8)"
    assert len(lines) == 11

    code, out, _ = _run(["doctor", "sick", "--idle-seconds", "3", "--outlier-margin", "100"], capsys)
    assert code == 0 and out.splitlines()[1:] == [
        "episode lengths (1):", *out.splitlines()[2:4], "summary: 1 warning, 0 info"]


def test_json_is_one_list_of_findings(datasets: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = _run(["doctor", "sick", "--json"], capsys)
    assert code == 0
    findings = json.loads(out)
    assert [(f["check"], f["severity"], f["robot"], f["data_type"], f["item"], f["episodes"]) for f in findings] == [
        ("outliers", "warning", "arm", "JOINT_POSITIONS", "a", [1]),
        ("idle_start", "info", "arm", "JOINT_POSITIONS", None, [2]),
        ("episode_length", "warning", "arm", None, None, [4]),
    ]
    assert all(isinstance(f["detail"], str) and isinstance(f["suggestion"], str) for f in findings)
    code, out, _ = _run(["doctor", "ok", "--json"], capsys)
    assert code == 0 and json.loads(out) == []
    code, out, _ = _run(["doctor", "ok"], capsys)
    assert out.splitlines()[-1].startswith("summary: no findings")


@pytest.mark.parametrize(("args", "message"), [
    (["doctor", "nope"], "dataset: error: dataset_name='nope': no dataset under "),
    (["doctor", "ok", "--idle-seconds", "0"], "dataset: error: --idle-seconds '0': must be a positive number, e.g. 2"),
    (["doctor", "ok", "--idle-seconds", "two"], "dataset: error: --idle-seconds 'two': must be a positive number"),
    (["doctor", "ok", "--outlier-margin", "-3"], "dataset: error: --outlier-margin '-3': must be a positive number"),
    (["doctor", "ok", "--outlier-margin", "inf"], "dataset: error: --outlier-margin 'inf': must be a positive number"),
    (["doctor", "../ok"], "dataset: error: dataset_name="),
])
def test_bad_input_is_one_line_and_status_2(datasets: Path, capsys: pytest.CaptureFixture, args: list[str],
                                            message: str) -> None:
    code, out, err = _run(args, capsys)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(message), err


def test_it_only_reads(datasets: Path, capsys: pytest.CaptureFixture) -> None:
    before = sorted((p.relative_to(datasets), p.stat().st_mtime_ns, p.stat().st_size) for p in datasets.rglob("*"))
    for name in ("ok", "sick"):
        assert _run(["doctor", name], capsys)[0] == 0 and _run(["doctor", name, "--json"], capsys)[0] == 0
    assert sorted((p.relative_to(datasets), p.stat().st_mtime_ns, p.stat().st_size)
                  for p in datasets.rglob("*")) == before

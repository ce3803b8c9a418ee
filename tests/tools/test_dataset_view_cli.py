"""`tools/dataset.py view`: the one line it prints, default output names, one-line errors that write nothing."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import av
import pytest
from PIL import Image

from tests.conftest import REPO
from tests.ml.datasets.tools.edit_data import make_dataset


def _load_tool():
    spec = importlib.util.spec_from_file_location("dataset_tool_view", REPO / "tools" / "dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _load_tool()


def _run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = TOOL.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture()
def workdir(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    make_dataset(home / "datasets", "d", lengths=(4, 6), cams={"top": (24, 32)}, encoding="jpeg")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_view_writes_a_video_and_a_sheet(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _run(["view", "d", "--episode", "1"], capsys)
    assert code == 0, err
    path = workdir / "d_episode1.mp4"
    size = path.stat().st_size
    assert out == f"wrote {path}: episode 1, 6 frames (640x536, 10 fps, libx264), {size} bytes\n"
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6

    code, out, err = _run(["view", "d", "--episode", "0", "--out", "e0.gif", "--fps", "4", "--max-frames", "2",
                           "--items", "JOINT_POSITIONS"], capsys)
    assert code == 0, err
    assert out.startswith(f"wrote {workdir / 'e0.gif'}: episode 0, 2 frames (640x") and ", 4 fps, gif), " in out

    code, out, err = _run(["view", "d", "--sheet", "--frames-per-episode", "3"], capsys)
    assert code == 0, err
    path = workdir / "d_sheet.png"
    assert out.startswith(f"wrote {path}: contact sheet of 2 of 2 episodes x 3 frames (6 frames, ")
    assert out.endswith(f"), {path.stat().st_size} bytes\n")
    assert Image.open(path).format == "PNG"
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as a plain write would leave it, not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("args,message", [
    (["view", "d", "--episode", "5"], "--episode 5: dataset 'd' has episodes 0..1"),
    (["view", "nope", "--sheet"], "dataset_name='nope': no dataset under"),
    (["view", "d", "--episode", "0", "--items", "JOINT_VELOCITIES"], "--items 'JOINT_VELOCITIES': not a vector"),
    (["view", "d", "--episode", "0", "--fps", "-1"], "--fps -1.0: must be a number"),
    (["view", "d", "--sheet", "--fps", "5"], "--fps is for videos (--episode N), not --sheet"),
    (["view", "d", "--episode", "0", "--max-episodes", "5"], "--max-episodes is for --sheet, not videos"),
    (["view", "d", "--sheet", "--camera", "wrist"], "--camera 'wrist': dataset 'd' has cameras top"),
    (["view", "d", "--episode", "0", "--out", "old.mp4"], "old.mp4 already exists; pass --overwrite to replace it"),
], ids=lambda v: "_".join(v) if isinstance(v, list) else None)
def test_view_errors_are_one_line(workdir: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    (workdir / "old.mp4").write_bytes(b"old")
    code, out, err = _run(args, capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("dataset: error: ") and message in err, err
    assert sorted(p.name for p in workdir.iterdir()) == ["old.mp4"] and (workdir / "old.mp4").read_bytes() == b"old"

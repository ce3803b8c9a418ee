"""Hostile and unlucky input to `tools/dataset.py`: importers, opening and verifying datasets, faults.

Every case runs the real CLI (`tools/dataset.py main`, in this process; two cases in a
subprocess) and checks what the project promises for bad input:

- a non-zero exit (2) and exactly one line on stderr, `dataset: error: ...`, naming the episode,
  key, file or value, and no traceback;
- nothing left behind under `$NEURACORE_HOME/datasets` (no dataset, no temp folder), and an
  existing dataset of the same name untouched when an `--overwrite` import fails;
- nothing read from outside the source: the files a hostile source points at exist and would
  import, and an audit hook records every file Python opens or lists during the run.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lerobot_writer import write_lerobot
from test_import_episodes import write_episode
from test_import_hdf5 import write_act

REPO = Path(__file__).resolve().parents[3]


def _load_tool() -> Any:
    spec = importlib.util.spec_from_file_location("dataset_tool_hostile", REPO / "tools" / "dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _load_tool()

# --- what the process opens while the CLI runs (Python-level opens and folder listings) -------------

_OPENED: list[str] | None = None
_HOOKED = False
_EVENTS = {"open", "os.listdir", "os.scandir"}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is None or event not in _EVENTS or not args:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, (str, os.PathLike)):
        _OPENED.append(os.path.abspath(os.fspath(path)))


# --- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty NEURACORE_HOME (no demo dataset: nothing here may generate one)."""
    h = tmp_path / "home"
    (h / "datasets").mkdir(parents=True)
    monkeypatch.setenv("NEURACORE_HOME", str(h))
    return h


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A folder next to the sources holding valid data a hostile source may point at."""
    out = tmp_path / "outside"
    ts = np.arange(0.0, 1.0, 0.1)
    write_episode(out / "ep", "arm", {"q": ("JOINT_POSITIONS", ["j0", "j1"], ts, np.ones((10, 2)))})
    np.savez(out / "q.npz", timestamps=ts, values=np.ones((10, 2)))
    write_act(out / "act", lengths=[4], cams=())
    write_lerobot(out / "lr", [3], video=False)
    return out


def cli(args: list[str], capsys: pytest.CaptureFixture, watch: Path | None = None) -> tuple[int, str, str]:
    """Run `tools/dataset.py` in this process; with `watch`, assert nothing under it was opened or listed."""
    global _OPENED, _HOOKED
    if watch is not None and not _HOOKED:
        sys.addaudithook(_audit)  # cannot be removed: it does nothing while _OPENED is None
        _HOOKED = True
    capsys.readouterr()  # only what this command prints
    _OPENED = [] if watch is not None else None
    try:
        code = TOOL.main(args)
    finally:
        opened, _OPENED = _OPENED, None
    out = capsys.readouterr()
    if watch is not None:
        inside = [p for p in opened if Path(p) == watch or Path(watch) in Path(p).parents]
        assert not inside, f"read from outside the source: {inside}"
    return code, out.out, out.err


def assert_one_line(code: int, err: str, *names: str, status: int = 2) -> str:
    """Exit `status`, stderr one `dataset: error:` line naming every one of `names`, no traceback."""
    assert code == status, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("dataset: error: "), lines[0]
    for name in names:
        assert name in lines[0], f"{name!r} not named in {lines[0]!r}"
    return lines[0]


def assert_nothing_left(home: Path, keep: tuple[str, ...] = ()) -> None:
    """Only the datasets in `keep` under $NEURACORE_HOME/datasets: no half dataset, no temp folder."""
    root = home / "datasets"
    assert sorted(p.name for p in root.iterdir()) == sorted(keep)


def refused_import(capsys: pytest.CaptureFixture, home: Path, args: list[str], *names: str,
                   watch: Path | None = None) -> str:
    """An import that must fail with one line naming `names`, leaving nothing."""
    code, out, err = cli(["import", *args, "--name", "x"], capsys, watch)
    line = assert_one_line(code, err, *names)
    assert "imported" not in out
    assert_nothing_left(home)
    return line


def episodes_source(root: Path, n: int = 3, width: int = 2) -> Path:
    """`n` small episodes of a 2-joint arm at 10 Hz."""
    ts = np.arange(0.0, 1.0, 0.1)
    for e in range(n):
        values = np.random.default_rng(e).normal(size=(len(ts), width))
        write_episode(root / f"ep_{e}", "arm", {"q": ("JOINT_POSITIONS", ["j0", "j1"], ts, values)})
    return root


def edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    out = edit(data)
    path.write_text(json.dumps(data if out is None else out))


def test_the_watch_sees_reads(home, outside, capsys) -> None:
    """The audit hook works: importing the `outside` folder itself is seen reading it."""
    with pytest.raises(AssertionError, match="read from outside the source"):
        cli(["import", "episodes", str(outside), "--frequency", "10", "--name", "x"], capsys, watch=outside)


# --- episodes importer -----------------------------------------------------------------------------


def _set_stream_name(src: Path, name: str) -> None:
    def edit(meta: dict) -> None:
        meta["streams"] = {name: meta["streams"]["q"]}

    edit_json(src / "ep_1" / "episode.json", edit)


def test_episodes_stream_name_with_dotdot(home, tmp_path, outside, capsys) -> None:
    src = episodes_source(tmp_path / "src")
    _set_stream_name(src, "../../outside/q")  # src/ep_1/../../outside/q.npz exists and is valid
    refused_import(capsys, home, ["episodes", str(src), "--frequency", "10"], "ep_1", "../../outside/q",
                   "leaves the source folder", watch=outside)


def test_episodes_stream_name_absolute(home, tmp_path, outside, capsys) -> None:
    src = episodes_source(tmp_path / "src")
    _set_stream_name(src, str(outside / "q"))
    refused_import(capsys, home, ["episodes", str(src), "--frequency", "10"], "ep_1", str(outside / "q"),
                   "leaves the source folder", watch=outside)


def test_episodes_stream_file_symlinked_outside(home, tmp_path, outside, capsys) -> None:
    src = episodes_source(tmp_path / "src")
    (src / "ep_2" / "q.npz").unlink()
    (src / "ep_2" / "q.npz").symlink_to(outside / "q.npz")
    refused_import(capsys, home, ["episodes", str(src), "--frequency", "10"], "ep_2", "'q'", "symlink",
                   "outside the source folder", watch=outside)


def test_episodes_episode_folder_symlinked_outside(home, tmp_path, outside, capsys) -> None:
    src = episodes_source(tmp_path / "src", n=2)
    (src / "ep_9").symlink_to(outside / "ep")
    refused_import(capsys, home, ["episodes", str(src), "--frequency", "10"], "ep_9", "outside the source folder",
                   watch=outside)


def test_episodes_episode_json_symlinked_outside(home, tmp_path, outside, capsys) -> None:
    src = episodes_source(tmp_path / "src", n=2)
    (src / "ep_1" / "episode.json").unlink()
    (src / "ep_1" / "episode.json").symlink_to(outside / "ep" / "episode.json")
    refused_import(capsys, home, ["episodes", str(src), "--frequency", "10"], "ep_1", "episode.json",
                   "outside the source folder", watch=outside)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_episodes_non_finite_value_refused(home, tmp_path, bad, capsys) -> None:
    src = episodes_source(tmp_path / "src")
    with np.load(src / "ep_1" / "q.npz") as z:
        ts, values = z["timestamps"], z["values"].copy()
    values[6, 1] = bad
    np.savez(src / "ep_1" / "q.npz", timestamps=ts, values=values)
    refused_import(capsys, home, ["episodes", str(src), "--frequency", "10"], "episode 1 (ep_1)", "frame 6",
                   "'j1'", "NaN or Inf")


def test_episodes_nan_skipped_and_listed(home, tmp_path, capsys) -> None:
    src = episodes_source(tmp_path / "src")
    with np.load(src / "ep_1" / "q.npz") as z:
        ts, values = z["timestamps"], z["values"].copy()
    values[3, 0] = np.nan
    np.savez(src / "ep_1" / "q.npz", timestamps=ts, values=values)
    code, out, err = cli(["import", "episodes", str(src), "--frequency", "10", "--name", "x", "--skip-bad-episodes"],
                         capsys)
    assert code == 0, err
    assert "imported 'x': 2 episodes, 20 frames" in out
    assert "skipped: episode 1 (ep_1) frame 3: JOINT_POSITIONS item 'j0' is NaN or Inf" in out
    assert_nothing_left(home, keep=("x",))
    code, out, err = cli(["verify", "x"], capsys)
    assert code == 0 and out.startswith("x: ok (2 episodes, 20 frames"), err


def test_episodes_wrong_width(home, tmp_path, capsys) -> None:
    src = episodes_source(tmp_path / "src")
    ts = np.arange(0.0, 1.0, 0.1)
    np.savez(src / "ep_2" / "q.npz", timestamps=ts, values=np.zeros((10, 3)))
    refused_import(capsys, home, ["episodes", str(src), "--frequency", "10"], "episode 2 (ep_2)", "'q'",
                   "3 values per frame, expected 2")


def test_episodes_huge_declared_array(home, tmp_path, capsys) -> None:
    """An npz header declaring [10**12, 14] float64 is refused from its header, before any allocation."""
    src = episodes_source(tmp_path / "src", n=2)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**12, 14)})
    ts = io.BytesIO()
    np.lib.format.write_array(ts, np.arange(0.0, 1.0, 0.1))
    with zipfile.ZipFile(src / "ep_1" / "q.npz", "w") as z:
        z.writestr("timestamps.npy", ts.getvalue())
        z.writestr("values.npy", header.getvalue())
    refused_import(capsys, home, ["episodes", str(src), "--frequency", "10"], "episode 1 (ep_1)", "'values'",
                   "[1000000000000, 14]", "refused")


def _pickled() -> np.ndarray:
    values = np.empty(10, dtype=object)  # object arrays are stored as pickles
    values[:] = [[0.0, 0.0]] * 10
    return values


@pytest.mark.parametrize("timestamps,values,named", [
    (np.arange(0.0, 1.0, 0.1), _pickled(), "q.npz"),
    (np.arange(0.0, 1.0, 0.1), np.float64(3.0), "values are a scalar"),
    (np.array(["0.1"] * 10), np.zeros((10, 2)), "timestamps hold <U3 values, not numbers"),
    (np.arange(0.0, 1.0, 0.1), np.array([["a", "b"]] * 10), "holds <U1 values, not numbers"),
    (np.arange(0.0, 1.0, 0.1), np.zeros((7, 2)), "10 timestamps but 7 values"),
], ids=["pickle", "scalar-values", "string-timestamps", "string-values", "length-mismatch"])
def test_episodes_malformed_stream_file(home, tmp_path, timestamps, values, named, capsys) -> None:
    src = episodes_source(tmp_path / "src", n=2)
    np.savez(src / "ep_1" / "q.npz", timestamps=timestamps, values=values)
    refused_import(capsys, home, ["episodes", str(src), "--frequency", "10"], "ep_1", named)


@pytest.mark.parametrize("text,named", [
    ("{not json", "Expecting property name"),
    ("[" * 100_000, "RecursionError"),
    ('["robot", "streams"]', "expected a JSON object, got list"),
    ('{"robot": "arm"}', "'streams'"),
    ('{"robot": "arm", "streams": ["q"]}', "'streams' must be a non-empty mapping"),
    ('{"robot": "arm", "streams": {"q": ["JOINT_POSITIONS"]}}', "stream 'q' must be a mapping"),
    ('{"robot": "arm", "streams": {"q": {"data_type": "JOINT_POSITIONS"}}}', "'items'"),
    ('{"robot": "arm", "streams": {"q": {"data_type": 7, "items": ["j0", "j1"]}}}', "unknown data type 7"),
    ('{"robot": "arm", "streams": {"q": {"data_type": "JOINT_POSITIONS", "items": "j0"}}}', "'items' must be"),
    ('{"robot": ["arm"], "streams": {"q": {"data_type": "JOINT_POSITIONS", "items": ["j0", "j1"]}}}',
     "'robot' must be a string"),
], ids=["invalid-json", "nested-too-deep", "list", "no-streams", "streams-list", "stream-list", "no-items", "data-type-int",
        "items-string", "robot-list"])
def test_episodes_malformed_episode_json(home, tmp_path, text, named, capsys) -> None:
    src = episodes_source(tmp_path / "src")
    (src / "ep_1" / "episode.json").write_text(text)
    refused_import(capsys, home, ["episodes", str(src), "--frequency", "10"], "ep_1", "episode.json", named)


# --- lerobot importer ------------------------------------------------------------------------------


def lerobot_source(tmp_path: Path, lengths: tuple[int, ...] = (4, 3), video: bool = False) -> Path:
    src = tmp_path / "lr"
    write_lerobot(src, list(lengths), video=video)
    return src


@pytest.mark.parametrize("fps,named", [
    (None, "'fps' is missing"), ("nan", "'fps' must be a positive number, got 'nan'"),
    (float("nan"), "got nan"), (-30, "got -30"), (0, "got 0"), (True, "got True"), ("30", "got '30'"),
], ids=["missing", "string-nan", "nan", "negative", "zero", "bool", "string"])
def test_lerobot_bad_fps(home, tmp_path, fps, named, capsys) -> None:
    src = lerobot_source(tmp_path)

    def edit(info: dict) -> None:
        info.pop("fps")
        if fps is not None:
            info["fps"] = fps

    edit_json(src / "meta" / "info.json", edit)
    refused_import(capsys, home, ["lerobot", str(src)], "info.json", named)


@pytest.mark.parametrize("key,template", [
    ("data_path", "../outside/lr/data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"),
    ("data_path", "{abs}/lr/data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"),
    ("data_path", "data/{chunk_index.__class__}.parquet"),
    ("video_path", "../outside/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"),
    ("video_path", "{abs}/{video_key}/file-{file_index:03d}.mp4"),
], ids=["data-dotdot", "data-absolute", "data-attribute", "video-dotdot", "video-absolute"])
def test_lerobot_path_template_outside(home, tmp_path, outside, key, template, capsys) -> None:
    src = lerobot_source(tmp_path)
    template = template.replace("{abs}", str(outside))
    edit_json(src / "meta" / "info.json", lambda info: info.__setitem__(key, template))
    refused_import(capsys, home, ["lerobot", str(src)], key, "refused" if "__class__" not in template
                   else "not allowed", watch=outside)


def test_lerobot_data_file_symlinked_outside(home, tmp_path, outside, capsys) -> None:
    src = lerobot_source(tmp_path, lengths=(3,))
    data = src / "data" / "chunk-000" / "file-000.parquet"
    data.unlink()
    data.symlink_to(outside / "lr" / "data" / "chunk-000" / "file-000.parquet")
    refused_import(capsys, home, ["lerobot", str(src)], "episode 0", "file-000.parquet", "outside the source folder",
                   watch=outside)


def test_lerobot_info_json_symlinked_outside(home, tmp_path, outside, capsys) -> None:
    src = lerobot_source(tmp_path, lengths=(3,))
    (src / "meta" / "info.json").unlink()
    (src / "meta" / "info.json").symlink_to(outside / "lr" / "meta" / "info.json")
    refused_import(capsys, home, ["lerobot", str(src)], "meta/info.json", "outside the source folder", watch=outside)


@pytest.mark.parametrize("text,named", [
    ("{\"fps\": 10,", "not a LeRobot dataset"),
    ("[" * 100_000, "RecursionError"),
    (b"\xff\xfe{}", "UnicodeDecodeError"),
    ("[1, 2, 3]", "expected a JSON object, got list"),
    ('{"fps": 10, "codebase_version": "v3.0", "features": ["observation.state"]}', "'features' must map"),
    ('{"fps": 10, "codebase_version": 3, "features": {}}', "'codebase_version' must be a string"),
    ('{"fps": 10, "codebase_version": "v3.0", "features": {"observation.state": {"dtype": "float32", "shape": "four"}}}',
     "declared shape 'four'"),
    ('{"fps": 10, "codebase_version": "v3.0", "features": {"observation.state": {"dtype": "float32", "shape": [4], '
     + '"names": "abcd"}}}', "'names' must be a list"),
], ids=["invalid-json", "nested-too-deep", "not-utf8", "list", "features-list", "version-int", "shape-string",
        "names-string"])
def test_lerobot_malformed_info_json(home, tmp_path, text, named, capsys) -> None:
    src = lerobot_source(tmp_path)
    info = src / "meta" / "info.json"
    info.write_bytes(text) if isinstance(text, bytes) else info.write_text(text)
    refused_import(capsys, home, ["lerobot", str(src)], "info.json", named)


def _rewrite_parquet(path: Path, edit: Callable[[list[dict]], None]) -> None:
    rows = pq.read_table(path).to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _png_header(width: int, height: int) -> bytes:
    """A PNG declaring `width` x `height` RGB pixels that holds almost none (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width,height,named", [
    (30000, 30000, "DecompressionBombError"), (6000, 4000, "frame 1 is 4000x6000 pixels, expected 32x40"),
], ids=["decompression-bomb", "larger-than-declared"])
def test_lerobot_image_larger_than_declared(home, tmp_path, width, height, named, capsys) -> None:
    """Frames are checked against info.json's shape from their header, before any pixel is decoded."""
    src = lerobot_source(tmp_path)
    path = src / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(path)
    key = "observation.images.top"
    cells = table.column(key).to_pylist()
    cells[1] = {"bytes": _png_header(width, height), "path": None}
    table = table.set_column(table.schema.get_field_index(key), key, pa.array(cells, table.schema.field(key).type))
    pq.write_table(table, path)
    refused_import(capsys, home, ["lerobot", str(src)], "episode 0", f"image {key!r}", named)


def test_lerobot_video_larger_than_declared(home, tmp_path, capsys) -> None:
    import av

    src = lerobot_source(tmp_path, lengths=(3, 2), video=True)
    path = src / "videos" / "observation.images.wrist" / "chunk-000" / "file-000.mp4"
    with av.open(str(path), "w") as container:  # 5 frames of 96x128 where info.json declares 32x40
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((96, 128, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    refused_import(capsys, home, ["lerobot", str(src)], "episode 0", "file-000.mp4", "96x128 frames, expected 32x40")


def test_lerobot_nan_in_parquet_column(home, tmp_path, capsys) -> None:
    src = lerobot_source(tmp_path, lengths=(4, 3, 5))
    _rewrite_parquet(src / "data" / "chunk-000" / "file-000.parquet",
                     lambda rows: rows[5]["observation.state"].__setitem__(0, float("nan")))  # episode 1 frame 1
    refused_import(capsys, home, ["lerobot", str(src)], "episode 1", "frame 1", "'observation.state'", "NaN or Inf")
    code, out, err = cli(["import", "lerobot", str(src), "--name", "x", "--skip-bad-episodes"], capsys)
    assert code == 0, err
    assert "imported 'x': 2 episodes, 9 frames" in out and "skipped: episode 1" in out
    assert_nothing_left(home, keep=("x",))


@pytest.mark.parametrize("column,value,named", [
    ("episode_index", -1, "'episode_index' must be a non-negative integer, got -1"),
    ("data/file_index", "0", "'data/file_index' must be a non-negative integer, got '0'"),
    ("tasks", [3], "'tasks' must be a list of strings"),
    ("length", 2.5, "'length' must be a non-negative integer, got 2.5"),
], ids=["negative-index", "string-index", "tasks-ints", "float-length"])
def test_lerobot_malformed_episode_rows(home, tmp_path, column, value, named, capsys) -> None:
    src = lerobot_source(tmp_path)
    meta = src / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(meta)
    column_values = table.column(column).to_pylist()
    column_values[1] = value
    if type(value) is not int:  # one Arrow type per column: every row gets a value of the hostile type
        column_values = [value] * len(column_values)
    table = table.set_column(table.schema.get_field_index(column), column, pa.array(column_values))
    pq.write_table(table, meta)
    refused_import(capsys, home, ["lerobot", str(src)], "meta/episodes", named)


# --- hdf5 importer ---------------------------------------------------------------------------------


def act_source(tmp_path: Path, lengths: tuple[int, ...] = (4, 5, 3)) -> Path:
    write_act(tmp_path / "act", lengths=list(lengths), cams=("top",))
    return tmp_path / "act"


def _replace_key(file: Path, key: str, make: Callable[[h5py.File, str], None]) -> None:
    with h5py.File(file, "a") as f:
        del f[key]
        make(f, key)


def test_hdf5_external_link(home, tmp_path, outside, capsys) -> None:
    src = act_source(tmp_path)
    _replace_key(src / "episode_1.hdf5", "observations/qpos",
                 lambda f, k: f.__setitem__(k, h5py.ExternalLink(str(outside / "act" / "episode_0.hdf5"),
                                                                 "/observations/qpos")))
    refused_import(capsys, home, ["hdf5", str(src)], "episode_1.hdf5", "'observations/qpos'", "external link",
                   watch=outside)


def test_hdf5_virtual_dataset(home, tmp_path, outside, capsys) -> None:
    src = act_source(tmp_path)

    def make(f: h5py.File, key: str) -> None:
        layout = h5py.VirtualLayout(shape=(5, 14), dtype="f4")
        layout[:4] = h5py.VirtualSource(str(outside / "act" / "episode_0.hdf5"), "observations/qpos", shape=(4, 14))
        f.create_virtual_dataset(key, layout, fillvalue=0)

    _replace_key(src / "episode_1.hdf5", "observations/qpos", make)
    refused_import(capsys, home, ["hdf5", str(src)], "episode_1.hdf5", "'observations/qpos'", "virtual dataset",
                   watch=outside)


def test_hdf5_external_storage(home, tmp_path, outside, capsys) -> None:
    src = act_source(tmp_path)
    raw = outside / "qpos.bin"
    raw.write_bytes(np.zeros((5, 14), "<f4").tobytes())
    _replace_key(src / "episode_1.hdf5", "observations/qpos",
                 lambda f, k: f.create_dataset(k, shape=(5, 14), dtype="<f4", external=[(str(raw), 0, 5 * 14 * 4)]))
    refused_import(capsys, home, ["hdf5", str(src)], "episode_1.hdf5", "'observations/qpos'", "external files",
                   str(raw), watch=outside)


@pytest.mark.parametrize("target,named", [
    ("/observations/qpos", "more than 32 soft links"), ("/nowhere/qpos", "is missing"),
], ids=["loop", "dangling"])
def test_hdf5_soft_link_loop_or_dangling(home, tmp_path, target, named, capsys) -> None:
    src = act_source(tmp_path)
    _replace_key(src / "episode_1.hdf5", "observations/qpos", lambda f, k: f.__setitem__(k, h5py.SoftLink(target)))
    refused_import(capsys, home, ["hdf5", str(src)], "episode_1.hdf5", "'observations/qpos'", named)


def test_hdf5_episode_file_symlinked_outside(home, tmp_path, outside, capsys) -> None:
    src = act_source(tmp_path)
    (src / "episode_2.hdf5").unlink()
    (src / "episode_2.hdf5").symlink_to(outside / "act" / "episode_0.hdf5")
    refused_import(capsys, home, ["hdf5", str(src)], "episode_2.hdf5", "outside the source folder", watch=outside)


def test_hdf5_scalar_where_array_expected(home, tmp_path, capsys) -> None:
    src = act_source(tmp_path)
    _replace_key(src / "episode_1.hdf5", "observations/qpos", lambda f, k: f.__setitem__(k, 3.0))
    refused_import(capsys, home, ["hdf5", str(src)], "episode 1 (episode_1.hdf5)", "'observations/qpos'",
                   "is a scalar")


def test_hdf5_huge_declared_shape(home, tmp_path, capsys) -> None:
    """A dataset declaring (10**12, 14) float32 (56 TB, nothing stored) is refused from its metadata."""
    src = act_source(tmp_path)
    _replace_key(src / "episode_0.hdf5", "observations/qpos",
                 lambda f, k: f.create_dataset(k, shape=(10**12, 14), dtype="f4", chunks=(1024, 14)))
    refused_import(capsys, home, ["hdf5", str(src)], "episode_0.hdf5", "'observations/qpos'", "[1000000000000, 14]",
                   "refused")


def test_hdf5_huge_declared_shape_in_later_episode(home, tmp_path, capsys) -> None:
    src = act_source(tmp_path)
    _replace_key(src / "episode_2.hdf5", "action",
                 lambda f, k: f.create_dataset(k, shape=(10**12, 14), dtype="f8", chunks=(1024, 14)))
    refused_import(capsys, home, ["hdf5", str(src)], "episode 2 (episode_2.hdf5)", "'action'", "refused")


def test_hdf5_string_values(home, tmp_path, capsys) -> None:
    src = act_source(tmp_path)
    _replace_key(src / "episode_1.hdf5", "action",
                 lambda f, k: f.create_dataset(k, data=np.array([b"a"] * 5)))
    refused_import(capsys, home, ["hdf5", str(src)], "episode 1 (episode_1.hdf5)", "'action'", "not numbers")


def test_hdf5_nan_values_refused_and_skipped(home, tmp_path, capsys) -> None:
    src = act_source(tmp_path)
    with h5py.File(src / "episode_1.hdf5", "a") as f:
        f["observations/qpos"][2, 7] = np.nan
    refused_import(capsys, home, ["hdf5", str(src)], "episode 1 (episode_1.hdf5)", "frame 2", "'joint_7'",
                   "NaN or Inf")
    code, out, err = cli(["import", "hdf5", str(src), "--name", "x", "--skip-bad-episodes"], capsys)
    assert code == 0, err
    assert "imported 'x': 2 episodes, 7 frames" in out and "skipped: episode 1 (episode_1.hdf5)" in out


def test_hdf5_value_too_large_for_float32(home, tmp_path, capsys) -> None:
    src = act_source(tmp_path)
    with h5py.File(src / "episode_0.hdf5", "a") as f:
        f["action"][1, 0] = 1e300  # float64 in the file: Inf once stored as float32
    refused_import(capsys, home, ["hdf5", str(src)], "episode 0", "frame 1", "too large for float32")


# --- opening and verifying datasets ----------------------------------------------------------------


@pytest.fixture()
def made(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> Path:
    """A small imported dataset `d` (3 episodes of 4, 5 and 3 frames); returns its folder."""
    code, _, err = cli(["import", "hdf5", str(act_source(tmp_path)), "--name", "d"], capsys)
    assert code == 0, err
    return home / "datasets" / "d"


def _refused_everywhere(capsys: pytest.CaptureFixture, home: Path, *names: str) -> None:
    """`info`, `verify` and `show` of `d` all refuse with the same kind of one line; nothing changes."""
    before = sorted(p.name for p in (home / "datasets").iterdir())
    for command in (["info", "d"], ["verify", "d"], ["show", "d", "--episode", "0", "--frame", "0"]):
        code, out, err = cli(command, capsys)
        assert out == ""
        assert_one_line(code, err, *names)
    assert sorted(p.name for p in (home / "datasets").iterdir()) == before


@pytest.mark.parametrize("text,named", [
    ("{\"name\": \"d\",", "Expecting"),
    ("[" * 100_000, "RecursionError"),
    ("[]", "expected a JSON object, got list"),
    ('{"name": "d"}', "'frequency' is missing"),
], ids=["invalid-json", "nested-too-deep", "list", "missing-keys"])
def test_spec_json_unreadable(made, home, text, named, capsys) -> None:
    (made / "spec.json").write_text(text)
    _refused_everywhere(capsys, home, "spec.json", named)


def test_spec_json_larger_than_a_metadata_file_may_be(made, home, monkeypatch, capsys) -> None:
    from neuracore.ml.datasets import format as dataset_format

    monkeypatch.setattr(dataset_format, "MAX_JSON_BYTES", 1000)  # instead of writing 256 MB
    _refused_everywhere(capsys, home, "spec.json", "more than the 1000 a metadata file may hold")


@pytest.mark.parametrize("edit,named", [
    (lambda s: s.__setitem__("episodes", {"0": s["episodes"][0]}), "'episodes' must be a list"),
    (lambda s: s.__setitem__("frequency", "fast"), "'frequency' must be a positive number"),
    (lambda s: s.__setitem__("robots", ["robot"]), "'robots' must be a non-empty object"),
    (lambda s: s["columns"]["JOINT_POSITIONS"].__setitem__("item_shape", [-1]), "item_shape"),
    (lambda s: s["episodes"][0].__setitem__("length", "4"), "episodes[0]: start and length must be integers"),
    (lambda s: s["episodes"][1].__setitem__("robot", "ghost"), "robot 'ghost'"),
    (lambda s: s["robots"]["robot"]["JOINT_POSITIONS"].append("ghost"), "items ['ghost'] have no values"),
    (lambda s: s["robots"]["robot"]["RGB_IMAGES"].append("side"), "['side'] have no column"),
    (lambda s: s["statistics"]["JOINT_POSITIONS"]["joint_0"].__setitem__("mean", []), "must be non-empty lists"),
], ids=["episodes-mapping", "frequency-string", "robots-list", "negative-shape", "length-string", "unknown-robot",
        "item-without-column-values", "camera-without-column", "empty-statistics"])
def test_spec_json_wrong_types(made, home, edit, named, capsys) -> None:
    edit_json(made / "spec.json", edit)
    _refused_everywhere(capsys, home, "spec.json", named)


@pytest.mark.parametrize("stat,value", [("mean", float("nan")), ("std", float("inf")), ("q99", float("-inf"))])
def test_spec_json_non_finite_statistics(made, home, stat, value, capsys) -> None:
    edit_json(made / "spec.json", lambda s: s["statistics"]["JOINT_POSITIONS"]["joint_3"].__setitem__(stat, [value]))
    _refused_everywhere(capsys, home, "spec.json", "JOINT_POSITIONS", "'joint_3'", stat, "re-import")


@pytest.mark.parametrize("episodes,named", [
    ([(0, 4), (3, 5), (8, 3)], "episodes[1] starts at row 3, inside the previous episode"),
    ([(0, 4), (5, 5), (10, 3)], "episodes[1] starts at row 5, but the previous episode ends at row 4"),
    ([(-1, 4), (3, 5), (8, 3)], "episodes[0] starts at row -1"),
    ([(1, 4), (5, 5), (10, 3)], "episodes[0] starts at row 1"),
    ([(0, 4), (4, 5), (9, 30)], "table has 12 rows but spec.json lists 39 frames"),
    ([(0, 4), (4, 0), (4, 8)], "episodes[1]: length 0"),
    ([(0, 4), (4, -5), (-1, 13)], "episodes[1]: length -5"),
], ids=["overlap", "gap", "negative", "not-from-row-0", "past-table-end", "empty", "negative-length"])
def test_spec_json_bad_episode_ranges(made, home, episodes, named, capsys) -> None:
    def edit(spec: dict) -> None:
        for ep, (start, length) in zip(spec["episodes"], episodes, strict=True):
            ep["start"], ep["length"] = start, length

    edit_json(made / "spec.json", edit)
    _refused_everywhere(capsys, home, named)


def test_verify_episode_ranges_against_table(made, home, capsys) -> None:
    """Contiguous ranges that disagree with the table's episode/frame columns: `verify` names the row."""
    def edit(spec: dict) -> None:
        spec["episodes"][0]["length"], spec["episodes"][1]["start"], spec["episodes"][1]["length"] = 5, 5, 4

    edit_json(made / "spec.json", edit)
    code, _, err = cli(["verify", "d"], capsys)
    assert_one_line(code, err, "dataset 'd'", "row 4", "episode 0 frame 4", "table says episode 1 frame 0")


def test_verify_nan_written_into_table(made, home, capsys) -> None:
    """A NaN that reached the Arrow file (written there by another tool) is found by verify."""
    import datasets as hf

    from neuracore.ml.datasets.format import fingerprint_files

    data = made / "data"
    table = hf.load_from_disk(str(data)).data.table
    col = table.column("JOINT_POSITIONS").combine_chunks()
    flat = col.flatten().to_numpy().copy()
    flat[5 * 14 + 3] = np.nan  # row 5: episode 1 frame 1
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), 14)
    table = table.set_column(table.schema.get_field_index("JOINT_POSITIONS"), table.schema.field("JOINT_POSITIONS"),
                             fixed)
    hf.Dataset(table).save_to_disk(str(made / "data2"))
    import shutil

    shutil.rmtree(data)
    (made / "data2").rename(data)
    edit_json(made / "spec.json", lambda s: s.__setitem__("fingerprint", fingerprint_files(data)))
    code, _, err = cli(["verify", "d"], capsys)
    assert_one_line(code, err, "JOINT_POSITIONS", "NaN or Inf", "episode 1 frame 1")


# --- faults: an import failing or killed midway ----------------------------------------------------


def _materialize_module() -> Any:
    import importlib

    return importlib.import_module("neuracore.ml.datasets.materialize")


def _fail_after_first_episode(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    materialize = _materialize_module()
    calls = {"n": 0}
    original = materialize.ArrowWriter.write_table

    def write_table(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise exc
        return original(self, *args, **kwargs)

    monkeypatch.setattr(materialize.ArrowWriter, "write_table", write_table)


def test_disk_full_midway_leaves_nothing(home, tmp_path, monkeypatch, capsys) -> None:
    src = act_source(tmp_path)
    _fail_after_first_episode(monkeypatch, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "staging.arrow"))
    refused_import(capsys, home, ["hdf5", str(src)], "staging.arrow", "No space left on device")


def test_interrupt_midway_leaves_nothing(home, tmp_path, monkeypatch, capsys) -> None:
    src = act_source(tmp_path)
    _fail_after_first_episode(monkeypatch, KeyboardInterrupt())
    code, _, err = cli(["import", "hdf5", str(src), "--name", "x"], capsys)
    assert (code, err) == (130, "dataset: interrupted\n")
    assert_nothing_left(home)


def test_internal_bug_midway_leaves_nothing_and_keeps_its_traceback(home, tmp_path, monkeypatch, capsys) -> None:
    src = act_source(tmp_path)
    _fail_after_first_episode(monkeypatch, RuntimeError("a bug"))
    code, _, err = cli(["import", "hdf5", str(src), "--name", "x"], capsys)
    assert code == 70 and "Traceback" in err and "RuntimeError: a bug" in err and "internal error" in err
    assert_nothing_left(home)


def test_worker_process_killed_midway(home, tmp_path, monkeypatch, capsys) -> None:
    """A worker of `--workers 2` killed (as by the out-of-memory killer) while reading an episode."""
    import importlib

    episodes = importlib.import_module("neuracore.ml.datasets.importers.episodes")
    original = episodes._load_stream

    def load_stream(path: Path, where: str):
        if where.startswith("ep_1"):
            os.kill(os.getpid(), signal.SIGKILL)  # runs in the forked worker
        return original(path, where)

    monkeypatch.setattr(episodes, "_load_stream", load_stream)
    src = episodes_source(tmp_path / "src", n=4)
    refused_import(capsys, home, ["episodes", str(src), "--frequency", "10", "--workers", "2", "--skip-bad-episodes"],
                   "ep_1", "worker process", "died", "nothing was written")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_overwrite_keeps_old_dataset_bad_source(made, home, tmp_path, capsys) -> None:
    before = _snapshot(made)
    src = episodes_source(tmp_path / "src")
    (src / "ep_1" / "episode.json").write_text("[]")
    code, _, err = cli(["import", "episodes", str(src), "--frequency", "10", "--name", "d", "--overwrite"], capsys)
    assert_one_line(code, err, "ep_1", "episode.json")
    assert _snapshot(made) == before
    assert_nothing_left(home, keep=("d",))
    assert cli(["verify", "d"], capsys)[0] == 0


def test_failed_overwrite_midway_keeps_old_dataset(made, home, tmp_path, monkeypatch, capsys) -> None:
    before = _snapshot(made)
    src = episodes_source(tmp_path / "src")
    _fail_after_first_episode(monkeypatch, OSError(errno.EIO, os.strerror(errno.EIO), "staging.arrow"))
    code, _, err = cli(["import", "episodes", str(src), "--frequency", "10", "--name", "d", "--overwrite"], capsys)
    assert_one_line(code, err, "Input/output error")
    assert _snapshot(made) == before
    assert_nothing_left(home, keep=("d",))


def test_failed_final_rename_keeps_old_dataset(made, home, tmp_path, monkeypatch, capsys) -> None:
    materialize = _materialize_module()
    before = _snapshot(made)

    def replace_dir(new: Path, final: Path) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(final))

    monkeypatch.setattr(materialize, "replace_dir", replace_dir)
    src = episodes_source(tmp_path / "src")
    code, _, err = cli(["import", "episodes", str(src), "--frequency", "10", "--name", "d", "--overwrite"], capsys)
    assert_one_line(code, err, str(made), "Permission denied")
    assert _snapshot(made) == before
    assert_nothing_left(home, keep=("d",))


_KILL_AFTER_FIRST_EPISODE = """
import os, signal, sys
sys.path.insert(0, {repo!r})
import importlib
materialize = importlib.import_module("neuracore.ml.datasets.materialize")
original, calls = materialize.ArrowWriter.write_table, []
def write_table(self, *a, **k):
    calls.append(1)
    if len(calls) > 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, *a, **k)
materialize.ArrowWriter.write_table = write_table
sys.argv = ["tools/dataset.py", *sys.argv[1:]]
import runpy
runpy.run_path({tool!r}, run_name="__main__")
"""


def _subprocess(args: list[str], home: Path, script: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NEURACORE_HOME": str(home), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-c", script, *args] if script else [sys.executable, str(REPO / "tools" / "dataset.py"), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_killed_midway_leaves_no_dataset_and_is_cleaned_up(made, home, tmp_path, capsys) -> None:
    """SIGKILL during an --overwrite import: the old dataset stays whole, the leftover goes at the next run."""
    before = _snapshot(made)
    src = episodes_source(tmp_path / "src")
    script = _KILL_AFTER_FIRST_EPISODE.format(repo=str(REPO), tool=str(REPO / "tools" / "dataset.py"))
    result = _subprocess(["import", "episodes", str(src), "--frequency", "10", "--name", "d", "--overwrite"], home,
                         script)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    result = _subprocess(["import", "episodes", str(src), "--frequency", "10", "--name", "k"], home, script)
    assert result.returncode == -signal.SIGKILL
    assert _snapshot(made) == before
    code, out, _ = cli(["list"], capsys)
    assert code == 0 and out.split() == ["d"]
    assert_nothing_left(home, keep=("d",))  # the killed imports' temp folders are swept by the next run


def test_subprocess_error_is_one_line(home, tmp_path) -> None:
    """The real command line, as a user runs it: one line on stderr, exit 2, nothing left."""
    src = lerobot_source(tmp_path)
    edit_json(src / "meta" / "info.json", lambda info: info.__setitem__("fps", "nan"))
    result = _subprocess(["import", "lerobot", str(src), "--name", "x"], home)
    assert_one_line(result.returncode, result.stderr, "info.json", "'fps'")
    assert_nothing_left(home)


def test_datasets_folder_is_a_file(home, tmp_path, capsys) -> None:
    import shutil

    shutil.rmtree(home / "datasets")
    (home / "datasets").write_text("not a folder")
    code, _, err = cli(["import", "hdf5", str(act_source(tmp_path)), "--name", "x"], capsys)
    assert_one_line(code, err, str(home / "datasets"), "a file where the datasets folder should be")
    assert (home / "datasets").read_text() == "not a folder"


# --- names that would leave the datasets folder ----------------------------------------------------


@pytest.mark.parametrize("command", [
    ["delete", "../x"], ["delete", "/tmp/x"], ["info", "../../etc"], ["verify", ".hidden"],
    ["pull", "team/cubes@v1", "--name", "../x"], ["pull", "team/cubes", "--name", "a/b"],
    ["import", "hdf5", "/nonexistent-source", "--name", "../x"],
], ids=["delete-dotdot", "delete-absolute", "info-dotdot", "verify-hidden", "pull-dotdot", "pull-slash",
        "import-dotdot"])
def test_names_leaving_the_datasets_folder(home, tmp_path, command, capsys) -> None:
    victim = home / "x"
    victim.mkdir()
    (victim / "spec.json").write_text("{}")
    code, _, err = cli(command, capsys)
    assert_one_line(code, err, "invalid name", repr(command[command.index("--name") + 1] if "--name" in command
                                                    else command[1]))
    assert (victim / "spec.json").is_file()
    assert_nothing_left(home)

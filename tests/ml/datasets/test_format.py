"""Materialising episodes to Arrow + spec.json, opening them, statistics and error paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError, DatasetError, NeuracoreError
from neuracore.ml.datasets.format import (
    DATA_DIR,
    FORMAT_VERSION,
    SPEC_FILE,
    ColumnSpec,
    DatasetSpec,
    available_datasets,
    column_name,
    dataset_path,
    fingerprint_files,
    open_dataset,
    read_spec,
)
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, materialize
from neuracore.ml.datasets.statistics import RunningStats

JP = DataType.JOINT_POSITIONS
JT = DataType.JOINT_TARGET_POSITIONS
EE = DataType.END_EFFECTOR_POSES
RGB = DataType.RGB_IMAGES
DEPTH = DataType.DEPTH_IMAGES
LENGTHS = (5, 7, 3)
IMG = (4, 5, 3)  # H, W, C


def _layout() -> DatasetLayout:
    return DatasetLayout(
        robots={"arm": {JP: ["j1", "j2"], JT: ["j1", "j2"], EE: ["ee"], RGB: ["cam"], DEPTH: ["d"],
                        DataType.LANGUAGE: ["instruction"]}},
        item_shapes={RGB: {"cam": list(IMG)}, DEPTH: {"d": [4, 5, 1]}},
    )


def _episodes(lengths=LENGTHS, seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for e, n in enumerate(lengths):
        out.append(Episode(
            robot="arm",
            data={
                JP: {"j1": rng.normal(size=n), "j2": rng.uniform(-3, 3, size=n)},
                JT: {"j1": rng.normal(size=n), "j2": 100.0 + np.arange(n, dtype=np.float64)},
                EE: {"ee": rng.normal(size=(n, 7))},
                RGB: {"cam": rng.integers(0, 256, size=(n, *IMG), dtype=np.uint8)},
                DEPTH: {"d": rng.uniform(0, 2, size=(n, 4, 5, 1)).astype(np.float32)},
            },
            language=f"task {e}",
        ))
    return out


def _concat(episodes: list[Episode], dt: DataType, item: str) -> np.ndarray:
    return np.concatenate([np.asarray(ep.data[dt][item]) for ep in episodes])


@pytest.fixture()
def made(tmp_path: Path):
    episodes = _episodes()
    path = materialize("small", iter(episodes), _layout(), 15.0, root=tmp_path, source={"kind": "test"})
    return path, episodes


def _column(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, -1)


# --- round trip ---------------------------------------------------------------------------------


def test_materialize_layout_on_disk(made, tmp_path: Path) -> None:
    path, _ = made
    assert path == tmp_path / "small" == dataset_path("small", tmp_path)
    assert (path / SPEC_FILE).is_file()
    assert list((path / DATA_DIR).glob("*.arrow"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]  # no temp folders left behind
    assert available_datasets(tmp_path) == ["small"]
    raw = json.loads((path / SPEC_FILE).read_text())
    assert raw["num_frames"] == sum(LENGTHS)
    assert raw["format_version"] == FORMAT_VERSION


def test_open_rows_episodes_and_spec(made, tmp_path: Path) -> None:
    path, _ = made
    ds = open_dataset("small", root=tmp_path)
    assert ds.name == "small" and ds.path == path
    spec = ds.spec
    assert ds.table.num_rows == spec.num_frames == sum(LENGTHS)
    assert spec.frequency == 15.0
    assert spec.source == {"kind": "test"}
    assert [(e.robot, e.start, e.length, e.language) for e in spec.episodes] == [
        ("arm", 0, 5, "task 0"), ("arm", 5, 7, "task 1"), ("arm", 12, 3, "task 2")]
    assert spec.robots == {"arm": {"JOINT_POSITIONS": ["j1", "j2"], "JOINT_TARGET_POSITIONS": ["j1", "j2"],
                                   "END_EFFECTOR_POSES": ["ee"], "RGB_IMAGES": ["cam"], "DEPTH_IMAGES": ["d"],
                                   "LANGUAGE": ["instruction"]}}
    assert spec.columns == {
        "JOINT_POSITIONS": ColumnSpec("JOINT_POSITIONS", ["j1", "j2"], [1], "float32"),
        "JOINT_TARGET_POSITIONS": ColumnSpec("JOINT_TARGET_POSITIONS", ["j1", "j2"], [1], "float32"),
        "END_EFFECTOR_POSES": ColumnSpec("END_EFFECTOR_POSES", ["ee"], [7], "float32"),
        "RGB_IMAGES.cam": ColumnSpec("RGB_IMAGES", ["cam"], [4, 5, 3], "uint8"),
        "DEPTH_IMAGES.d": ColumnSpec("DEPTH_IMAGES", ["d"], [4, 5, 1], "float32"),
    }
    assert spec.columns["JOINT_POSITIONS"].row_width == 2
    assert spec.columns["END_EFFECTOR_POSES"].row_width == 7
    assert spec.columns["RGB_IMAGES.cam"].row_width == 60
    assert column_name(RGB, "cam") == "RGB_IMAGES.cam" and column_name(JP, "ignored") == "JOINT_POSITIONS"
    assert set(ds.table.column_names) == {"episode_index", "frame_index", *spec.columns}


def test_table_values_equal_source(made, tmp_path: Path) -> None:
    _, episodes = made
    table = open_dataset("small", root=tmp_path).table
    assert table.column("episode_index").to_pylist() == [0] * 5 + [1] * 7 + [2] * 3
    assert table.column("frame_index").to_pylist() == list(range(5)) + list(range(7)) + list(range(3))
    jp = _column(table, "JOINT_POSITIONS")
    assert jp.dtype == np.float32
    np.testing.assert_array_equal(jp[:, 0], _concat(episodes, JP, "j1").astype(np.float32))
    np.testing.assert_array_equal(jp[:, 1], _concat(episodes, JP, "j2").astype(np.float32))
    np.testing.assert_array_equal(_column(table, "END_EFFECTOR_POSES"),
                                  _concat(episodes, EE, "ee").astype(np.float32))
    rgb = _column(table, "RGB_IMAGES.cam")
    assert table.schema.field("RGB_IMAGES.cam").type.value_type == pa.uint8()
    np.testing.assert_array_equal(rgb.reshape(-1, *IMG), _concat(episodes, RGB, "cam"))
    np.testing.assert_array_equal(_column(table, "DEPTH_IMAGES.d").reshape(-1, 4, 5, 1),
                                  _concat(episodes, DEPTH, "d"))


def test_vector_statistics_match_numpy(made, tmp_path: Path) -> None:
    _, episodes = made
    stats = open_dataset("small", root=tmp_path).spec.statistics
    assert set(stats) == {"JOINT_POSITIONS", "JOINT_TARGET_POSITIONS", "END_EFFECTOR_POSES", "RGB_IMAGES",
                          "DEPTH_IMAGES"}
    for dt, item in [(JP, "j1"), (JP, "j2"), (JT, "j1"), (JT, "j2"), (EE, "ee")]:
        data = _concat(episodes, dt, item).astype(np.float32).astype(np.float64).reshape(sum(LENGTHS), -1)
        s = stats[dt.value][item]
        assert set(s) == {"mean", "std", "min", "max", "q01", "q99"}
        assert len(s["mean"]) == dt.item_width
        np.testing.assert_allclose(s["mean"], data.mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(s["std"], data.std(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(s["min"], data.min(0))
        np.testing.assert_array_equal(s["max"], data.max(0))
        np.testing.assert_allclose(s["q01"], np.quantile(data, 0.01, axis=0), rtol=1e-9)
        np.testing.assert_allclose(s["q99"], np.quantile(data, 0.99, axis=0), rtol=1e-9)
    ramp = stats["JOINT_TARGET_POSITIONS"]["j2"]
    assert ramp["min"] == [100.0] and ramp["max"] == [106.0]


def test_image_statistics_per_channel_in_unit_range(made, tmp_path: Path) -> None:
    _, episodes = made
    s = open_dataset("small", root=tmp_path).spec.statistics["RGB_IMAGES"]["cam"]
    assert all(len(v) == 3 for v in s.values())
    # materialize subsamples frames (every 5th) and pixels (every 7th); reproduce it
    sample = np.concatenate([
        (ep.data[RGB]["cam"][::5].astype(np.float32) / 255.0).reshape(-1, 3)[::7] for ep in episodes])
    np.testing.assert_allclose(s["mean"], sample.mean(0), rtol=1e-5)
    np.testing.assert_allclose(s["min"], sample.min(0), rtol=1e-6)
    np.testing.assert_allclose(s["max"], sample.max(0), rtol=1e-6)
    assert 0.0 <= min(s["min"]) and max(s["max"]) <= 1.0
    d = open_dataset("small", root=tmp_path).spec.statistics["DEPTH_IMAGES"]["d"]
    assert len(d["mean"]) == 1 and 0.0 <= d["min"][0] <= d["max"][0] <= 2.0


def test_fingerprint_stable_and_content_addressed(made, tmp_path: Path) -> None:
    path, episodes = made
    spec = open_dataset("small", root=tmp_path).spec
    assert len(spec.fingerprint) == 64
    assert spec.fingerprint == fingerprint_files(path / DATA_DIR)
    assert fingerprint_files(path / DATA_DIR) == fingerprint_files(path / DATA_DIR)
    same = materialize("same", iter(episodes), _layout(), 15.0, root=tmp_path)
    assert read_spec(same).fingerprint == spec.fingerprint
    other = materialize("other", iter(_episodes(seed=1)), _layout(), 15.0, root=tmp_path)
    assert read_spec(other).fingerprint != spec.fingerprint
    assert available_datasets(tmp_path) == ["other", "same", "small"]


def test_spec_json_round_trip(made, tmp_path: Path) -> None:
    spec = read_spec(made[0])
    again = DatasetSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert again == spec


def test_existing_dataset_needs_overwrite(made, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="'small' already exists"):
        materialize("small", iter(_episodes((2,))), _layout(), 15.0, root=tmp_path)
    assert open_dataset("small", root=tmp_path).table.num_rows == sum(LENGTHS)
    materialize("small", iter(_episodes((2, 2))), _layout(), 15.0, root=tmp_path, overwrite=True)
    ds = open_dataset("small", root=tmp_path)
    assert ds.table.num_rows == 4 and len(ds.spec.episodes) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]


# --- atomicity and validation -----------------------------------------------------------------


def _assert_nothing_written(root: Path, name: str) -> None:
    assert not (root / name).exists()
    leftovers = [p.name for p in root.iterdir()] if root.exists() else []
    assert leftovers == [], leftovers
    assert name not in available_datasets(root)


def test_generator_raising_midway_leaves_nothing(tmp_path: Path) -> None:
    def broken():
        episodes = _episodes()
        yield episodes[0]
        yield episodes[1]
        raise RuntimeError("source went away")

    with pytest.raises(RuntimeError, match="source went away"):
        materialize("broken", broken(), _layout(), 15.0, root=tmp_path)
    _assert_nothing_written(tmp_path, "broken")


def test_keyboard_interrupt_midway_leaves_nothing(tmp_path: Path) -> None:
    def interrupted():
        yield _episodes()[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        materialize("ki", interrupted(), _layout(), 15.0, root=tmp_path)
    _assert_nothing_written(tmp_path, "ki")


def test_failed_overwrite_keeps_old_dataset(made, tmp_path: Path) -> None:
    def broken():
        yield _episodes((2,))[0]
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        materialize("small", broken(), _layout(), 15.0, root=tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small"]
    assert open_dataset("small", root=tmp_path).table.num_rows == sum(LENGTHS)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_value_names_episode_frame_and_item(tmp_path: Path, bad: float) -> None:
    episodes = _episodes()
    episodes[1].data[JP]["j2"][4] = bad
    with pytest.raises(DatasetError) as info:
        materialize("nan", iter(episodes), _layout(), 15.0, root=tmp_path)
    assert str(info.value) == "episode 1 frame 4: JOINT_POSITIONS item 'j2' is NaN or Inf"
    _assert_nothing_written(tmp_path, "nan")


def test_nan_in_pose_and_depth_image(tmp_path: Path) -> None:
    episodes = _episodes()
    episodes[2].data[EE]["ee"][1, 5] = np.nan
    with pytest.raises(DatasetError, match=r"^episode 2 frame 1: END_EFFECTOR_POSES item 'ee' is NaN or Inf$"):
        materialize("nan", iter(episodes), _layout(), 15.0, root=tmp_path)
    episodes = _episodes()
    episodes[0].data[DEPTH]["d"][3, 2, 2, 0] = np.nan
    with pytest.raises(DatasetError, match=r"^episode 0 frame 3: DEPTH_IMAGES item 'd' is NaN or Inf$"):
        materialize("nan", iter(episodes), _layout(), 15.0, root=tmp_path)
    _assert_nothing_written(tmp_path, "nan")


def test_wrong_length_item(tmp_path: Path) -> None:
    episodes = _episodes()
    episodes[1].data[JT]["j1"] = episodes[1].data[JT]["j1"][:-2]
    with pytest.raises(DatasetError) as info:
        materialize("short", iter(episodes), _layout(), 15.0, root=tmp_path)
    assert str(info.value) == "episode 1: JOINT_TARGET_POSITIONS item 'j1' has 5 frames, expected 7"
    _assert_nothing_written(tmp_path, "short")


def test_wrong_item_width(tmp_path: Path) -> None:
    episodes = _episodes()
    episodes[0].data[EE]["ee"] = episodes[0].data[EE]["ee"][:, :6]
    with pytest.raises(DatasetError, match=r"episode 0: END_EFFECTOR_POSES item 'ee' has shape \[6\] per frame, "
                                           r"expected \[7\]"):
        materialize("wide", iter(episodes), _layout(), 15.0, root=tmp_path)
    episodes = _episodes()
    episodes[0].data[RGB]["cam"] = np.zeros((5, 4, 4, 3), np.uint8)
    with pytest.raises(DatasetError, match=r"RGB_IMAGES item 'cam' has shape \[4, 4, 3\] per frame, "
                                           r"expected \[4, 5, 3\]"):
        materialize("wide", iter(episodes), _layout(), 15.0, root=tmp_path)
    _assert_nothing_written(tmp_path, "wide")


def test_empty_episode(tmp_path: Path) -> None:
    episodes = _episodes()
    episodes.insert(1, Episode("arm", {}))
    with pytest.raises(DatasetError, match=r"^episode 1: empty episode \(0 frames\)$"):
        materialize("empty", iter(episodes), _layout(), 15.0, root=tmp_path)
    episodes = _episodes()
    episodes[0] = Episode("arm", {k: {i: np.asarray(v)[:0] for i, v in d.items()} for k, d in episodes[0].data.items()})
    with pytest.raises(DatasetError, match="episode 0: empty episode"):
        materialize("empty", iter(episodes), _layout(), 15.0, root=tmp_path)
    _assert_nothing_written(tmp_path, "empty")


def test_no_episodes(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset 'none': no episodes to write"):
        materialize("none", iter([]), _layout(), 15.0, root=tmp_path)
    _assert_nothing_written(tmp_path, "none")


def test_unknown_robot_and_missing_item(tmp_path: Path) -> None:
    episodes = _episodes()
    episodes[0].robot = "ghost"
    with pytest.raises(DatasetError, match=r"^episode 0: robot 'ghost' not in layout \(arm\)$"):
        materialize("bad", iter(episodes), _layout(), 15.0, root=tmp_path)
    episodes = _episodes()
    del episodes[2].data[JP]["j1"]
    with pytest.raises(DatasetError, match=r"^episode 2: JOINT_POSITIONS item 'j1' of robot 'arm' is missing$"):
        materialize("bad", iter(episodes), _layout(), 15.0, root=tmp_path)
    _assert_nothing_written(tmp_path, "bad")


def test_layout_without_camera_shape(tmp_path: Path) -> None:
    layout = DatasetLayout(robots={"arm": {JP: ["j1"], RGB: ["cam"]}})
    with pytest.raises(DatasetError, match="layout: no shape declared for RGB_IMAGES item 'cam'"):
        materialize("noshape", iter([]), layout, 10.0, root=tmp_path)
    assert not (tmp_path / "noshape").exists()


# --- opening errors ---------------------------------------------------------------------------


def test_missing_dataset_lists_available(made, tmp_path: Path) -> None:
    materialize("zeta", iter(_episodes((2,))), _layout(), 15.0, root=tmp_path)
    (tmp_path / "half_written").mkdir()  # no spec.json: not a dataset
    (tmp_path / ".hidden").mkdir()
    with pytest.raises(DatasetError) as info:
        open_dataset("nope", root=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"dataset_name='nope': no dataset under {tmp_path}; available: small, zeta")
    assert "half_written" not in msg and ".hidden" not in msg


def test_missing_dataset_in_empty_root(tmp_path: Path) -> None:
    root = tmp_path / "does_not_exist"
    assert available_datasets(root) == []
    with pytest.raises(DatasetError, match="dataset_name=.x.: no dataset under .*; available: none"):
        open_dataset("x", root=root)


def test_missing_demo_with_explicit_root_is_not_generated(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset_name='demo'"):
        open_dataset("demo", root=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["garbage", "truncated"])
def test_corrupt_arrow_file_names_path(made, tmp_path: Path, mode: str) -> None:
    path, _ = made
    (arrow,) = (path / DATA_DIR).glob("*.arrow")
    size = arrow.stat().st_size
    if mode == "garbage":
        arrow.write_bytes(bytes(range(256)) * (size // 256) + b"\xff" * (size % 256))
    else:
        arrow.write_bytes(arrow.read_bytes()[: size // 3])
    with pytest.raises(DatasetError) as info:
        open_dataset("small", root=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path / DATA_DIR}: corrupt Arrow dataset (")
    assert info.value.__cause__ is None


def test_deleted_arrow_file(made, tmp_path: Path) -> None:
    path, _ = made
    for f in (path / DATA_DIR).glob("*.arrow"):
        f.unlink()
    with pytest.raises(DatasetError, match="corrupt Arrow dataset"):
        open_dataset("small", root=tmp_path)


@pytest.mark.parametrize("content", ["{not json", "{}", '{"name": "small"}', "[1, 2]"])
def test_unreadable_spec_names_file(made, tmp_path: Path, content: str) -> None:
    path, _ = made
    (path / SPEC_FILE).write_text(content)
    with pytest.raises(DatasetError) as info:
        open_dataset("small", root=tmp_path)
    msg = str(info.value)
    assert msg.startswith(f"{path / SPEC_FILE}: unreadable dataset spec (")
    assert "\n" not in msg


def test_newer_format_version_rejected(made, tmp_path: Path) -> None:
    path, _ = made
    raw = json.loads((path / SPEC_FILE).read_text())
    raw["format_version"] = FORMAT_VERSION + 1
    (path / SPEC_FILE).write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match=f"format_version {FORMAT_VERSION + 1} is newer .* upgrade neuracore"):
        open_dataset("small", root=tmp_path)


def test_spec_table_mismatch(made, tmp_path: Path) -> None:
    path, _ = made
    raw = json.loads((path / SPEC_FILE).read_text())
    raw["episodes"][-1]["length"] += 1  # the first one would overlap the next: refused by read_spec
    (path / SPEC_FILE).write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match="table has 15 rows but spec.json lists 16 frames"):
        open_dataset("small", root=tmp_path)
    raw["episodes"][-1]["length"] -= 1
    raw["columns"]["CUSTOM_1D"] = {"data_type": "CUSTOM_1D", "items": ["x"], "item_shape": [1], "dtype": "float32"}
    (path / SPEC_FILE).write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match=r"columns \['CUSTOM_1D'\] of spec.json are missing"):
        open_dataset("small", root=tmp_path)


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", ".hidden", "-dash", "a\\b", "x" * 129, "a b"])
def test_invalid_names_rejected(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    with pytest.raises(ConfigError) as info:
        materialize(name, iter(_episodes((2,))), _layout(), 10.0, root=root)
    assert "invalid name" in str(info.value) and repr(name) in str(info.value)
    assert isinstance(info.value, NeuracoreError)
    with pytest.raises(ConfigError, match="dataset_name=.*invalid name"):
        open_dataset(name, root=root)
    assert not root.exists() or list(root.iterdir()) == []
    assert not (tmp_path / "x").exists()


def test_default_root_is_neuracore_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURACORE_HOME", str(tmp_path / "nc"))
    path = materialize("homed", iter(_episodes((3,))), _layout(), 10.0)
    assert path == tmp_path / "nc" / "datasets" / "homed"
    assert open_dataset("homed").table.num_rows == 3
    assert available_datasets() == ["homed"]


# --- multi-robot ------------------------------------------------------------------------------


def _multi_layout() -> DatasetLayout:
    return DatasetLayout(
        robots={
            "alpha": {JP: ["shoulder", "elbow", "gripper"], RGB: ["top"]},
            "beta": {JP: ["elbow", "wrist"], RGB: ["wrist_cam"]},
        },
        item_shapes={RGB: {"top": [2, 3, 3], "wrist_cam": [2, 3, 3]}},
    )


def _multi_episodes() -> list[Episode]:
    rng = np.random.default_rng(7)
    a = Episode("alpha", {JP: {n: rng.normal(size=4) for n in ("shoulder", "elbow", "gripper")},
                          RGB: {"top": rng.integers(1, 256, (4, 2, 3, 3), dtype=np.uint8)}})
    b = Episode("beta", {JP: {n: 10 + rng.normal(size=3) for n in ("elbow", "wrist")},
                         RGB: {"wrist_cam": rng.integers(1, 256, (3, 2, 3, 3), dtype=np.uint8)}})
    return [a, b, a]


def test_multi_robot_round_trip(tmp_path: Path) -> None:
    episodes = _multi_episodes()
    materialize("multi", iter(episodes), _multi_layout(), 10.0, root=tmp_path)
    ds = open_dataset("multi", root=tmp_path)
    spec = ds.spec
    assert spec.robots == {"alpha": {"JOINT_POSITIONS": ["shoulder", "elbow", "gripper"], "RGB_IMAGES": ["top"]},
                           "beta": {"JOINT_POSITIONS": ["elbow", "wrist"], "RGB_IMAGES": ["wrist_cam"]}}
    # shared item names share one slot of the single vector column
    assert spec.columns["JOINT_POSITIONS"].items == ["shoulder", "elbow", "gripper", "wrist"]
    assert set(spec.columns) == {"JOINT_POSITIONS", "RGB_IMAGES.top", "RGB_IMAGES.wrist_cam"}
    assert [(e.robot, e.start, e.length) for e in spec.episodes] == [("alpha", 0, 4), ("beta", 4, 3), ("alpha", 7, 4)]
    jp = _column(ds.table, "JOINT_POSITIONS")
    a, b = episodes[0], episodes[1]
    for rows, ep in ((slice(0, 4), a), (slice(7, 11), a)):
        for j, n in enumerate(("shoulder", "elbow", "gripper")):
            np.testing.assert_array_equal(jp[rows, j], ep.data[JP][n].astype(np.float32))
        np.testing.assert_array_equal(jp[rows, 3], 0.0)  # alpha has no wrist: zero-filled
    np.testing.assert_array_equal(jp[4:7, 1], b.data[JP]["elbow"].astype(np.float32))
    np.testing.assert_array_equal(jp[4:7, 3], b.data[JP]["wrist"].astype(np.float32))
    np.testing.assert_array_equal(jp[4:7, [0, 2]], 0.0)
    top = _column(ds.table, "RGB_IMAGES.top").reshape(-1, 2, 3, 3)
    wrist = _column(ds.table, "RGB_IMAGES.wrist_cam").reshape(-1, 2, 3, 3)
    np.testing.assert_array_equal(top[0:4], a.data[RGB]["top"])
    assert not top[4:7].any() and not wrist[0:4].any() and not wrist[7:].any()
    np.testing.assert_array_equal(wrist[4:7], b.data[RGB]["wrist_cam"])


def test_multi_robot_statistics_only_count_robots_with_the_item(tmp_path: Path) -> None:
    episodes = _multi_episodes()
    materialize("multi", iter(episodes), _multi_layout(), 10.0, root=tmp_path)
    stats = open_dataset("multi", root=tmp_path).spec.statistics["JOINT_POSITIONS"]
    a, b = episodes[0], episodes[1]
    elbow = np.concatenate([a.data[JP]["elbow"], b.data[JP]["elbow"], a.data[JP]["elbow"]]).astype(np.float32)
    np.testing.assert_allclose(stats["elbow"]["mean"], [elbow.astype(np.float64).mean()], rtol=1e-9)
    wrist = b.data[JP]["wrist"].astype(np.float32).astype(np.float64)
    assert stats["wrist"]["min"] == [wrist.min()] and stats["wrist"]["max"] == [wrist.max()]  # no zero padding
    shoulder = a.data[JP]["shoulder"].astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(stats["shoulder"]["std"], [shoulder.std()], rtol=1e-6)
    rgb = open_dataset("multi", root=tmp_path).spec.statistics["RGB_IMAGES"]
    assert set(rgb) == {"top", "wrist_cam"}
    assert min(rgb["wrist_cam"]["min"]) > 0  # padded zero frames of alpha episodes are excluded


# --- RunningStats -----------------------------------------------------------------------------


def test_running_stats_empty_and_incremental() -> None:
    empty = RunningStats(2).result()
    assert empty == {k: [0.0, 0.0] for k in ("mean", "std", "min", "max", "q01", "q99")}
    rng = np.random.default_rng(3)
    data = rng.normal(size=(300, 2))
    rs = RunningStats(2)
    for chunk in np.array_split(data, 7):
        rs.update(chunk)
    r = rs.result()
    assert rs.count == 300
    np.testing.assert_allclose(r["mean"], data.mean(0))
    np.testing.assert_allclose(r["std"], data.std(0), rtol=1e-9)
    np.testing.assert_allclose(r["q01"], np.quantile(data, 0.01, axis=0))
    np.testing.assert_allclose(r["q99"], np.quantile(data, 0.99, axis=0))


def test_running_stats_update_with_no_rows_is_a_no_op() -> None:
    rs = RunningStats(2)
    rs.update(np.ones((3, 2)))
    rs.update(np.zeros((0, 2)))
    assert rs.count == 3
    assert rs.result()["mean"] == [1.0, 1.0]


def test_running_stats_does_not_modify_caller_arrays() -> None:
    rs = RunningStats(1)
    first = np.zeros((20_000, 1))
    rs.update(first)
    rs.update(np.ones((20_000, 1)))
    assert first.sum() == 0.0


def test_running_stats_reservoir_bounded_quantiles_close() -> None:
    rng = np.random.default_rng(4)
    rs = RunningStats(1)
    data = rng.uniform(0, 1, size=(60_000, 1))
    for chunk in np.array_split(data, 30):
        rs.update(chunk.copy())  # copies: see test_running_stats_does_not_modify_caller_arrays
    r = rs.result()
    assert sum(len(b) for b in rs._reservoir) <= 22_000
    assert r["min"][0] == data.min() and r["max"][0] == data.max()
    assert r["q01"][0] == pytest.approx(0.01, abs=0.01)
    assert r["q99"][0] == pytest.approx(0.99, abs=0.01)


# --- the demo dataset -------------------------------------------------------------------------


def test_demo_dataset(demo_home: Path) -> None:
    ds = open_dataset("demo", root=demo_home / "datasets")
    spec = ds.spec
    assert len(spec.episodes) == 12
    assert {e.robot for e in spec.episodes} == {"planar_arm"}
    assert all(e.language for e in spec.episodes)
    assert ds.table.num_rows == sum(e.length for e in spec.episodes)
    assert spec.robots["planar_arm"]["JOINT_POSITIONS"] == ["shoulder", "elbow", "gripper"]
    col = spec.columns["RGB_IMAGES.top"]
    assert col.dtype == "uint8" and col.item_shape == [64, 64, 3]
    assert ds.table.schema.field("RGB_IMAGES.top").type.value_type == pa.uint8()
    first = ds.table.column("RGB_IMAGES.top").slice(0, 1).combine_chunks().flatten().to_numpy()
    assert first.dtype == np.uint8 and first.size == 64 * 64 * 3 and first.any()
    assert len(np.unique(first)) > 2  # an actual render, not a blank frame
    s = spec.statistics["RGB_IMAGES"]["top"]
    assert 0 < min(s["mean"]) and max(s["max"]) <= 1.0
    assert spec.fingerprint == fingerprint_files(ds.path / DATA_DIR)


def test_demo_opened_from_neuracore_home(home: Path) -> None:
    ds = open_dataset("demo")
    assert ds.path == home / "datasets" / "demo"
    assert len(ds.spec.episodes) == 12  # the fixture's dataset, not a freshly generated 100-episode one


def test_float_rgb_images_are_rejected_not_silently_cast(tmp_path: Path) -> None:
    layout = DatasetLayout(robots={"r": {DataType.RGB_IMAGES: ["c"]}},
                           item_shapes={DataType.RGB_IMAGES: {"c": [2, 2, 3]}})
    episode = Episode("r", {DataType.RGB_IMAGES: {"c": np.random.rand(3, 2, 2, 3).astype("float32")}})
    with pytest.raises(DatasetError, match=r"episode 0: RGB_IMAGES item 'c' has dtype float32, expected uint8"):
        materialize("floaty", iter([episode]), layout, 10, root=tmp_path)
    assert not (tmp_path / "floaty").exists()

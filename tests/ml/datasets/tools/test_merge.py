"""`merge_datasets`: robots and columns unioned, frames copied as stored, statistics recomputed, refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.api import verify_dataset
from neuracore.ml.datasets.format import decode_images, open_dataset
from neuracore.ml.datasets.tools import merge_datasets
from neuracore.ml.datasets.tools.stats import compute_statistics
from tests.ml.datasets.tools.edit_data import leftovers, make_dataset, vector

JP = DataType.JOINT_POSITIONS


def test_merge_unions_robots_items_and_cameras(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    a = make_dataset(root, "a", robot="arm", lengths=(4, 5), joints=("x", "y"), cams={"top": (6, 8)})
    b = make_dataset(root, "b", robot="bot", lengths=(3,), joints=("y", "z"), cams={"top": (6, 8), "wrist": (4, 4)},
                     seed=1)
    result = merge_datasets(["a", "b"], "ab", root=root)
    assert (result["episodes"], result["frames"], result["robots"]) == (3, 12, ["arm", "bot"])

    ds = open_dataset("ab", root)
    spec = ds.spec
    assert spec.robots["arm"]["JOINT_POSITIONS"] == ["x", "y"] and spec.robots["bot"]["JOINT_POSITIONS"] == ["y", "z"]
    assert list(spec.columns) == ["JOINT_POSITIONS", "JOINT_TARGET_POSITIONS", "RGB_IMAGES.top", "RGB_IMAGES.wrist"]
    assert [(e.robot, e.start, e.length, e.language) for e in spec.episodes] == [
        ("arm", 0, 4, "task 0"), ("arm", 4, 5, "task 1"), ("bot", 9, 3, "task 0")]
    items, values = vector(root, "ab")
    assert items == ["x", "y", "z"]
    for e, ep in enumerate(a):  # a's z is zero (masked out by arm's item list); its x, y as written
        rows = values[spec.episodes[e].start:spec.episodes[e].start + spec.episodes[e].length]
        np.testing.assert_array_equal(rows[:, :2], np.stack([ep.data[JP]["x"], ep.data[JP]["y"]], 1))
        assert not rows[:, 2].any()
    rows = values[9:12]
    assert not rows[:, 0].any()
    np.testing.assert_array_equal(rows[:, 1:], np.stack([b[0].data[JP]["y"], b[0].data[JP]["z"]], 1))
    assert ds.table.column("episode_index").to_pylist() == [0] * 4 + [1] * 5 + [2] * 3
    assert ds.table.column("frame_index").to_pylist() == [*range(4), *range(5), *range(3)]
    wrist = ds.table.column("RGB_IMAGES.wrist").combine_chunks().flatten().to_numpy().reshape(12, 4, 4, 3)
    assert not wrist[:9].any()  # arm has no wrist camera: zero frames, as an import fills them
    np.testing.assert_array_equal(wrist[9:], b[0].data[DataType.RGB_IMAGES]["wrist"])

    # statistics: recomputed over both inputs' frames (y from 12 frames, x from a's 9 only)
    y = values[:, 1]
    stats = spec.statistics["JOINT_POSITIONS"]
    assert stats["y"]["mean"][0] == pytest.approx(float(y.astype(np.float64).mean()), rel=1e-9)
    assert stats["x"]["max"][0] == pytest.approx(float(values[:9, 0].max()))
    assert stats["z"]["min"][0] == pytest.approx(float(values[9:, 2].min()))
    assert stats == compute_statistics(ds.table, spec)["JOINT_POSITIONS"]
    assert set(spec.statistics["RGB_IMAGES"]) == {"top", "wrist"}

    # provenance and a fingerprint of its own
    source = json.loads((root / "ab" / "spec.json").read_text())["source"]
    assert source["kind"] == "merge"
    assert [(i["name"], i["first_episode"], i["episodes"]) for i in source["inputs"]] == [("a", 0, 2), ("b", 2, 1)]
    assert source["inputs"][0]["fingerprint"] == open_dataset("a", root).spec.fingerprint
    assert spec.fingerprint not in (open_dataset("a", root).spec.fingerprint, open_dataset("b", root).spec.fingerprint)
    assert verify_dataset("ab", root)["ok"]
    assert leftovers(root) == []


def test_merge_of_jpeg_datasets_copies_the_encoded_bytes(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "a", lengths=(3, 2), encoding="jpeg", cams={"top": (8, 8)})
    make_dataset(root, "b", robot="bot", lengths=(4,), encoding="jpeg", cams={"top": (8, 8), "side": (8, 8)}, seed=2)
    merge_datasets(["a", "b"], "ab", root=root)
    ab, a, b = (open_dataset(n, root) for n in ("ab", "a", "b"))
    assert ab.spec.columns["RGB_IMAGES.top"].encoding == "jpeg"
    top = ab.table.column("RGB_IMAGES.top").to_pylist()
    assert top == a.table.column("RGB_IMAGES.top").to_pylist() + b.table.column("RGB_IMAGES.top").to_pylist()
    side = ab.table.column("RGB_IMAGES.side").to_pylist()
    assert side[5:] == b.table.column("RGB_IMAGES.side").to_pylist()
    assert not decode_images(side[:5], [8, 8, 3], "side").any()  # a has no side camera: black frames
    assert verify_dataset("ab", root)["ok"]


@pytest.fixture()
def two(tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    make_dataset(root, "a", lengths=(3,))
    make_dataset(root, "b", lengths=(2,), seed=1)
    return root


@pytest.mark.parametrize("make_other,expected", [
    ({"frequency": 30.0}, ["'a' is at 10 Hz but 'c' at 30 Hz", "--frequency 10"]),
    ({"cams": {"top": (4, 8)}}, ["column RGB_IMAGES.top is 6x8x3 uint8 raw in 'a' but 4x8x3 uint8 raw in 'c'"]),
    ({"encoding": "png"}, ["column RGB_IMAGES.top is 6x8x3 uint8 raw in 'a' but 6x8x3 uint8 png in 'c'"]),
    ({"joints": ("a", "q")}, ["robot 'arm' has JOINT_POSITIONS ['a', 'b'] in 'a' but ['a', 'q'] in 'c'"]),
], ids=["frequency", "image_shape", "encoding", "robot_items"])
def test_merge_refuses_inputs_that_do_not_fit(two: Path, make_other: dict, expected: list[str]) -> None:
    make_dataset(two, "c", lengths=(2,), **make_other)
    with pytest.raises(DatasetError) as err:
        merge_datasets(["a", "c"], "ac", root=two)
    for text in expected:
        assert text in str(err.value)
    assert "\n" not in str(err.value)
    assert not (two / "ac").exists() and leftovers(two) == []


def test_merge_bad_names_and_existing_output(two: Path) -> None:
    cases = [
        (["a"], "x", ConfigError, "at least two datasets"),
        (["a", "a"], "x", DatasetError, "dataset 'a' is given twice"),
        (["a", "b"], "a", DatasetError, "--name 'a' is also an input"),
        (["a", "nope"], "x", DatasetError, "'nope'"),
        (["a", "../b"], "x", ConfigError, "invalid name"),
        (["a", "b"], "../x", ConfigError, "invalid name"),
    ]
    for names, out, kind, text in cases:
        with pytest.raises(kind) as err:
            merge_datasets(names, out, root=two)
        assert text in str(err.value), str(err.value)
    assert sorted(p.name for p in two.iterdir()) == ["a", "b"]

    merge_datasets(["a", "b"], "ab", root=two)
    first = open_dataset("ab", two).spec.fingerprint
    with pytest.raises(DatasetError, match="'ab' already exists .* pass --overwrite"):
        merge_datasets(["b", "a"], "ab", root=two)
    assert open_dataset("ab", two).spec.fingerprint == first
    merge_datasets(["b", "a"], "ab", root=two, overwrite=True)  # replaced: b's episode first now
    replaced = open_dataset("ab", two)
    assert replaced.spec.fingerprint != first and [e.length for e in replaced.spec.episodes] == [2, 3]
    assert leftovers(two) == []


def test_a_failed_merge_leaves_nothing_and_a_killed_ones_staging_is_swept(two: Path, monkeypatch) -> None:
    from neuracore.ml.datasets.tools import _write

    prefix = _write.staging_prefix("ab")  # .ab.tmp-<host>-<pid>-
    dead = two / (prefix[:-len(f"{os.getpid()}-")] + "999999999-abc")  # a staging folder whose process is gone
    dead.mkdir()
    (dead / "staging.arrow").write_bytes(b"half")

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_write, "fingerprint_files", boom)
    with pytest.raises(OSError, match="No space left"):
        merge_datasets(["a", "b"], "ab", root=two)
    assert sorted(p.name for p in two.iterdir()) == ["a", "b"]  # no output, no staging: the dead one swept too

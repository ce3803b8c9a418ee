"""Importer helpers: bounded in-flight episodes, --map parsing, duplicate items, timestamps."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.importers.common import (
    Field,
    build_layout,
    check_timestamps,
    load_mapping,
)
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, EpisodeSource, _prepared


def _episode(i: int) -> Episode:
    return Episode("arm", {DataType.JOINT_POSITIONS: {"j": np.full(3, float(i), np.float32)}})


def _bad(i: int) -> Episode:
    raise DatasetError(f"ep{i}.bin: unreadable")


@pytest.mark.parametrize("workers", [0, 2])
def test_loaded_keeps_order_bounds_prefetch_and_returns_errors(workers: int) -> None:
    pulled = []

    def sources():
        for i in range(8):
            pulled.append(i)
            load = functools.partial(_bad if i == 3 else _episode, i)
            yield EpisodeSource(f"ep{i}.bin", load)

    layout = DatasetLayout(robots={"arm": {DataType.JOINT_POSITIONS: ["j"]}})
    seen = []
    for label, rows in _prepared(sources(), workers, layout, layout.columns()):
        # never more than 2 * workers episodes read ahead of the one being written
        assert len(pulled) - len(seen) <= max(2 * workers, 1)
        seen.append((label, rows if isinstance(rows, DatasetError) else float(rows.arrays["JOINT_POSITIONS"][0, 0])))
    assert [s[0] for s in seen] == [f"ep{i}.bin" for i in range(8)]
    assert [s[1] for s in seen if not isinstance(s[1], DatasetError)] == [0, 1, 2, 4, 5, 6, 7]
    assert str(seen[3][1]) == "ep3.bin: unreadable"


def test_load_mapping(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("observation.state: joint_positions\nnext.done: null\n")
    assert load_mapping(path) == {"observation.state": DataType.JOINT_POSITIONS, "next.done": None}
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"--map .*map.yaml: expected a mapping \{source_key: DATA_TYPE or null\}"):
        load_mapping(path)
    with pytest.raises(ConfigError, match=r"--map .*nope.yaml: unreadable YAML"):
        load_mapping(tmp_path / "nope.yaml")


def test_two_keys_giving_the_same_item_is_an_error() -> None:
    fields = [Field("a", DataType.JOINT_POSITIONS, ["j0", "j1"]), Field("b", DataType.JOINT_POSITIONS, ["j1"])]
    with pytest.raises(ConfigError, match="b and a both give JOINT_POSITIONS item 'j1'; map one of them elsewhere"):
        build_layout("arm", fields, language=False)


def test_check_timestamps() -> None:
    np.testing.assert_array_equal(check_timestamps(np.array([0.0, 0.5, 1.0], np.float32), "x"), [0.0, 0.5, 1.0])
    with pytest.raises(DatasetError, match=r"^x frame 1: timestamp is NaN or Inf$"):
        check_timestamps(np.array([0.0, np.nan]), "x")
    with pytest.raises(DatasetError, match=r"^x frame 2: timestamps not increasing \(0.500000 then 0.400000\)$"):
        check_timestamps(np.array([0.0, 0.5, 0.4]), "x")

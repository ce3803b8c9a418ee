"""`split_dataset`: by episode ranges or a seeded fraction; deterministic, byte-exact, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.datasets.tools import merge_datasets, parse_episodes, split_dataset
from neuracore.ml.datasets.tools.split import fraction_split
from tests.ml.datasets.tools.edit_data import leftovers, make_dataset, vector

LENGTHS = (3, 4, 5, 6, 7, 8, 3, 4, 5, 6)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=LENGTHS, encoding="png")
    return root


@pytest.mark.parametrize("text,expected", [("0-2,5", [0, 1, 2, 5]), ("7", [7]), (" 3 - 4 , 1 ", [1, 3, 4]),
                                           ("2,2,1-3", [1, 2, 3]), ("0-9", list(range(10)))])
def test_parse_episodes(text: str, expected: list[int]) -> None:
    assert parse_episodes(text, 10) == expected


@pytest.mark.parametrize("text,message", [
    ("", "give episode indices and inclusive ranges, e.g. 0-9,20"),
    ("1,,2", "'' is not an index or a range"),
    ("a-3", "'a-3' is not an index or a range"),
    ("-1", "'-1' is not an index"),
    ("3-", "'3-' is not an index"),
    ("1.5", "'1.5' is not an index"),
    ("5-3", "range 5-3 runs backwards; write 3-5"),
    ("8-10", "episode 10 does not exist; the dataset has episodes 0..9"),
])
def test_parse_episodes_refusals(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_episodes(text, 10)
    assert message in str(err.value) and str(err.value).startswith(f"--episodes {text!r}")


def test_split_by_episodes_copies_rows_and_renumbers(root: Path) -> None:
    result = split_dataset("d", "head", episodes="0-1,8", rest_name="tail", root=root)
    assert [(o["name"], o["episodes"], o["frames"]) for o in result["outputs"]] == [
        ("head", [0, 1, 8], 12), ("tail", [2, 3, 4, 5, 6, 7, 9], 39)]
    src, head = open_dataset("d", root), open_dataset("head", root)
    assert [(e.start, e.length, e.language) for e in head.spec.episodes] == [(0, 3, "task 0"), (3, 4, "task 1"),
                                                                           (7, 5, "task 8")]
    assert head.table.column("episode_index").to_pylist() == [0] * 3 + [1] * 4 + [2] * 5
    _, values = vector(root, "d")
    _, head_values = vector(root, "head")
    rows = np.r_[0:7, src.spec.episodes[8].start:src.spec.episodes[8].start + 5]
    np.testing.assert_array_equal(head_values, values[rows])
    assert head.table.column("RGB_IMAGES.top").to_pylist() == src.table.column("RGB_IMAGES.top").take(rows).to_pylist()
    assert head.spec.columns == src.spec.columns and head.spec.robots == src.spec.robots
    source = json.loads((root / "tail" / "spec.json").read_text())["source"]
    assert (source["kind"], source["part"], source["selection"]) == ("split", "rest", {"episodes": "0-1,8"})
    assert source["input"]["fingerprint"] == src.spec.fingerprint

    # merged back in the original order: byte for byte the input (same fingerprint, same statistics)
    split_dataset("d", "first", episodes="0-4", rest_name="second", root=root)
    merge_datasets(["first", "second"], "whole", root=root)
    whole = open_dataset("whole", root)
    assert whole.spec.fingerprint == src.spec.fingerprint
    assert whole.spec.statistics == src.spec.statistics
    assert leftovers(root) == []


def test_fraction_split_is_deterministic_per_seed(root: Path) -> None:
    a = split_dataset("d", "train", fraction=0.8, seed=3, rest_name="val", root=root)
    chosen, rest = (o["episodes"] for o in a["outputs"])
    assert len(chosen) == 8 and len(rest) == 2 and sorted(chosen + rest) == list(range(10))
    assert (chosen, rest) == fraction_split(10, 0.8, 3)
    prints = [open_dataset(n, root).spec.fingerprint for n in ("train", "val")]
    again = split_dataset("d", "train", fraction=0.8, seed=3, rest_name="val", root=root, overwrite=True)
    assert [o["episodes"] for o in again["outputs"]] == [chosen, rest]
    assert [open_dataset(n, root).spec.fingerprint for n in ("train", "val")] == prints
    others = {tuple(fraction_split(10, 0.8, s)[1]) for s in range(6)}
    assert len(others) > 1  # the seed matters
    assert fraction_split(10, 0.25, 0)[0].__len__() == 3  # floor(2.5 + 0.5): halves round up
    assert json.loads((root / "val" / "spec.json").read_text())["source"]["selection"] == {"fraction": 0.8, "seed": 3}


def test_split_refusals_write_nothing(root: Path) -> None:
    make_dataset(root, "one", lengths=(4,))
    cases = [
        ({"name": "d", "out": "x"}, ConfigError, "exactly one of --episodes"),
        ({"name": "d", "out": "x", "episodes": "1", "fraction": 0.5}, ConfigError, "exactly one of --episodes"),
        ({"name": "d", "out": "x", "fraction": 1.0}, ConfigError, "--fraction 1.0: must be a number between 0 and 1"),
        ({"name": "d", "out": "x", "fraction": 0.0}, ConfigError, "--fraction 0.0"),
        ({"name": "d", "out": "x", "fraction": 0.5, "seed": -1}, ConfigError, "--seed -1"),
        ({"name": "one", "out": "x", "fraction": 0.4}, DatasetError, "--fraction 0.4 of 1 episodes selects none"),
        ({"name": "d", "out": "x", "episodes": "0-9", "rest_name": "y"}, DatasetError, "--rest-name 'y' would be empty"),
        ({"name": "d", "out": "x", "episodes": "1", "rest_name": "x"}, ConfigError, "--rest-name 'x' is the same as --name"),
        ({"name": "d", "out": "d", "episodes": "1"}, DatasetError, "--name 'd' is also an input"),
        ({"name": "d", "out": "x", "episodes": "1", "rest_name": "d"}, DatasetError, "--rest-name 'd' is also an input"),
        ({"name": "d", "out": "x", "episodes": "1", "rest_name": "one"}, DatasetError, "'one' already exists"),
        ({"name": "d", "out": "x", "episodes": "12"}, ConfigError, "episode 12 does not exist"),
        ({"name": "nope", "out": "x", "episodes": "1"}, DatasetError, "'nope'"),
    ]
    for kwargs, kind, text in cases:
        name, out = kwargs.pop("name"), kwargs.pop("out")
        with pytest.raises(kind) as err:
            split_dataset(name, out, root=root, **kwargs)
        assert text in str(err.value), str(err.value)
    assert sorted(p.name for p in root.iterdir()) == ["d", "one"]  # not even the first output of a pair

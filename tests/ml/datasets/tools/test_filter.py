"""`filter_dataset`: drop by index, length (frames or seconds), robot and instruction; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.api import verify_dataset
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.datasets.tools import filter_dataset, merge_datasets
from neuracore.ml.datasets.tools.filter import parse_length
from tests.ml.datasets.tools.edit_data import leftovers, make_dataset, vector

LANGUAGES = ["pick the red cube", "pick the blue cube", None, "push the red cube", "Pick the red cube"]


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(10, 20, 30, 40, 50), languages=LANGUAGES, frequency=10.0, encoding="jpeg")
    return root


def _kept(result: dict) -> list[int]:
    return result["kept"]


def test_parse_length() -> None:
    assert parse_length("50", "--min-length") == (50.0, "frames")
    assert parse_length(50, "--min-length") == (50.0, "frames")
    assert parse_length("2.5s", "--min-length") == (2.5, "seconds")
    assert parse_length(" 3 s", "--min-length") == (3.0, "seconds")
    for bad in ("2.5", "x", "-3", "3m", "", "s"):
        with pytest.raises(ConfigError, match=r"give a number of frames \(e.g. 50\) or of seconds ending in s"):
            parse_length(bad, "--max-length")


def test_filter_by_index_and_length(root: Path) -> None:
    result = filter_dataset("d", "f", drop_episodes="0", min_length="15", max_length="4s", root=root)
    assert _kept(result) == [1, 2, 3]
    assert result["dropped"] == [
        {"episode": 0, "reasons": ["--drop-episodes", "10 frames < --min-length 15 frames"]},
        {"episode": 4, "reasons": ["5 s > --max-length 4 seconds"]},
    ]
    assert (result["frames"], result["input_frames"]) == (90, 150)
    src, out = open_dataset("d", root), open_dataset("f", root)
    assert [e.length for e in out.spec.episodes] == [20, 30, 40]
    assert [e.language for e in out.spec.episodes] == LANGUAGES[1:4]
    rows = np.arange(10, 100)  # episodes 1..3 of the input
    np.testing.assert_array_equal(vector(root, "f")[1], vector(root, "d")[1][rows])
    assert out.table.column("RGB_IMAGES.top").to_pylist() == src.table.column("RGB_IMAGES.top").take(rows).to_pylist()
    source = json.loads((root / "f" / "spec.json").read_text())["source"]
    assert source["kind"] == "filter" and source["episodes"] == [1, 2, 3]
    assert source["criteria"] == {"drop_episodes": "0", "min_length": "15", "max_length": "4s"}
    assert verify_dataset("f", root)["ok"]
    # inclusive bounds
    assert _kept(filter_dataset("d", "g", min_length="2s", max_length=40, root=root)) == [1, 2, 3]


def test_filter_by_language(root: Path) -> None:
    assert _kept(filter_dataset("d", "red", language="red", root=root)) == [0, 3, 4]
    assert _kept(filter_dataset("d", "pick", language="^pick", root=root)) == [0, 1]  # case-sensitive
    assert _kept(filter_dataset("d", "pick_i", language="(?i)^pick", root=root)) == [0, 1, 4]
    result = filter_dataset("d", "not_push", exclude_language="push", root=root)
    assert _kept(result) == [0, 1, 2, 4]  # an episode without an instruction is not excluded
    assert result["dropped"] == [{"episode": 3, "reasons": ["instruction 'push the red cube' matches --exclude-language"]}]
    result = filter_dataset("d", "any", language=".", root=root)
    assert {"episode": 2, "reasons": ["no instruction"]} in result["dropped"]


def test_filter_by_robot_cuts_robots_and_columns(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "a", robot="arm", lengths=(4, 5), joints=("x", "y"), cams={"top": (6, 8)})
    make_dataset(root, "b", robot="bot", lengths=(3,), joints=("y", "z"), cams={"wrist": (4, 4)}, seed=1)
    merge_datasets(["a", "b"], "ab", root=root)
    result = filter_dataset("ab", "only_bot", robots=["bot"], root=root)
    assert _kept(result) == [2]
    assert result["dropped"] == [{"episode": 0, "reasons": ["robot 'arm' not in --robot"]},
                                 {"episode": 1, "reasons": ["robot 'arm' not in --robot"]}]
    out = open_dataset("only_bot", root)
    assert list(out.spec.robots) == ["bot"]
    assert list(out.spec.columns) == ["JOINT_POSITIONS", "JOINT_TARGET_POSITIONS", "RGB_IMAGES.wrist"]
    items, values = vector(root, "only_bot")
    assert items == ["y", "z"]
    np.testing.assert_array_equal(values, vector(root, "b")[1])
    assert out.table.column("RGB_IMAGES.wrist").to_pylist() == open_dataset("b", root).table.column(
        "RGB_IMAGES.wrist").to_pylist()
    assert out.spec.statistics == open_dataset("b", root).spec.statistics
    assert verify_dataset("only_bot", root)["ok"]
    assert _kept(filter_dataset("ab", "both", robots=["bot", "arm"], root=root)) == [0, 1, 2]


def test_filter_refusals_write_nothing(root: Path) -> None:
    cases = [
        ({}, ConfigError, "give at least one of --drop-episodes"),
        ({"min_length": "100"}, DatasetError, ("no episode of 'd' is left (5 dropped; episode 0: 10 frames < "
                                               "--min-length 100 frames); loosen the criteria")),
        ({"drop_episodes": "0-4"}, DatasetError, "no episode of 'd' is left"),
        ({"min_length": "3s", "max_length": "20"}, ConfigError, "--min-length 3s is longer than --max-length 20"),
        ({"min_length": "2.5"}, ConfigError, "--min-length '2.5': give a number of frames"),
        ({"drop_episodes": "7"}, ConfigError, "--drop-episodes '7': episode 7 does not exist"),
        ({"robots": ["nobot"]}, ConfigError, "--robot 'nobot': not a robot of dataset 'd'; robots: arm"),
        ({"robots": []}, ConfigError, "--robot ''"),
        ({"language": "("}, ConfigError, "--language '(': not a valid regular expression"),
        ({"exclude_language": "[a"}, ConfigError, "--exclude-language '[a': not a valid regular expression"),
        ({"drop_episodes": "0", "out": "d"}, DatasetError, "--name 'd' is also an input"),
        ({"drop_episodes": "0", "name": "nope"}, DatasetError, "'nope'"),
    ]
    for kwargs, kind, text in cases:
        name, out = kwargs.pop("name", "d"), kwargs.pop("out", "x")
        with pytest.raises(kind) as err:
            filter_dataset(name, out, root=root, **kwargs)
        assert text in str(err.value), str(err.value)
    assert sorted(p.name for p in root.iterdir()) == ["d"]
    assert leftovers(root) == []

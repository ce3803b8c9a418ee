"""`dataset_statistics` / `compute_statistics`: the import's statistics recomputed, compared and rewritten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuracore.ml.core.errors import DatasetError
from neuracore.ml.datasets.api import verify_dataset
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.datasets.tools import dataset_statistics
from neuracore.ml.datasets.tools.stats import differences
from tests.ml.datasets.tools.edit_data import make_dataset, vector


@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_recomputed_statistics_are_the_imports_exactly(tmp_path: Path, encoding: str) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(7, 12, 9), encoding=encoding, cams={"top": (6, 8), "side": (4, 4)})
    result = dataset_statistics("d", root=root)
    assert result["differences"] == [] and result["written"] is False
    assert result["statistics"] == open_dataset("d", root).spec.statistics
    assert set(result["statistics"]) == {"JOINT_POSITIONS", "JOINT_TARGET_POSITIONS", "RGB_IMAGES"}
    assert set(result["statistics"]["RGB_IMAGES"]) == {"top", "side"}


def test_statistics_match_numpy(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(30, 50, 40), cams={})
    items, values = vector(root, "d")
    stats = dataset_statistics("d", root=root)["statistics"]["JOINT_POSITIONS"]
    for j, item in enumerate(items):  # 120 rows: far below the reservoir, so quantiles are exact
        v = values[:, j].astype(np.float64)
        s = stats[item]
        assert s["mean"][0] == pytest.approx(v.mean(), rel=1e-12)
        assert s["std"][0] == pytest.approx(v.std(), rel=1e-9)
        assert (s["min"][0], s["max"][0]) == (v.min(), v.max())
        assert s["q01"][0] == pytest.approx(np.quantile(v, 0.01), rel=1e-12)
        assert s["q99"][0] == pytest.approx(np.quantile(v, 0.99), rel=1e-12)


def test_jpeg_image_statistics_describe_the_stored_pixels(tmp_path: Path) -> None:
    # An import takes image statistics before encoding; recomputed ones are of the decoded JPEG pixels
    # (what training sees): close to the import's, vectors identical.
    root = tmp_path / "datasets"
    make_dataset(root, "j", lengths=(10, 10), encoding="jpeg", cams={"top": (16, 16)})
    result = dataset_statistics("j", root=root)
    assert [(d["data_type"], d["item"], d["change"]) for d in result["differences"]] in (
        [], [("RGB_IMAGES", "top", "changed")])
    stored = open_dataset("j", root).spec.statistics
    assert result["statistics"]["JOINT_POSITIONS"] == stored["JOINT_POSITIONS"]
    np.testing.assert_allclose(result["statistics"]["RGB_IMAGES"]["top"]["mean"], stored["RGB_IMAGES"]["top"]["mean"],
                               atol=0.02)


def test_write_replaces_statistics_and_keeps_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(5, 6))
    spec_file = root / "d" / "spec.json"
    original = json.loads(spec_file.read_text())
    tampered = json.loads(spec_file.read_text())
    tampered["statistics"]["JOINT_POSITIONS"]["a"]["mean"] = [123.0]
    tampered["statistics"]["JOINT_POSITIONS"]["a"]["q99"] = [-5.0]
    del tampered["statistics"]["JOINT_TARGET_POSITIONS"]["b"]
    tampered["statistics"]["JOINT_TARGET_POSITIONS"]["gone"] = tampered["statistics"]["JOINT_TARGET_POSITIONS"]["a"]
    spec_file.write_text(json.dumps(tampered))

    shown = dataset_statistics("d", root=root)
    assert shown["written"] is False and json.loads(spec_file.read_text()) == tampered
    diff = {(d["data_type"], d["item"]): d for d in shown["differences"]}
    assert set(diff) == {("JOINT_POSITIONS", "a"), ("JOINT_TARGET_POSITIONS", "b"), ("JOINT_TARGET_POSITIONS", "gone")}
    assert set(diff["JOINT_POSITIONS", "a"]["max_abs_difference"]) == {"mean", "q99"}
    mean = original["statistics"]["JOINT_POSITIONS"]["a"]["mean"][0]
    assert diff["JOINT_POSITIONS", "a"]["max_abs_difference"]["mean"] == pytest.approx(abs(123.0 - mean))
    assert diff["JOINT_TARGET_POSITIONS", "b"]["change"] == "added"
    assert diff["JOINT_TARGET_POSITIONS", "gone"]["change"] == "removed"

    written = dataset_statistics("d", write=True, root=root)
    assert written["written"] is True
    after = json.loads(spec_file.read_text())
    assert after["statistics"] == original["statistics"]
    assert after["fingerprint"] == original["fingerprint"]  # it covers the Arrow files, not the statistics
    assert after["source"]["statistics"] == {"recomputed_by": "tools/dataset.py stats --write", "changed_items": 3}
    assert {k: v for k, v in after.items() if k not in ("statistics", "source")} == {
        k: v for k, v in original.items() if k not in ("statistics", "source")}
    assert [p.name for p in (root / "d").iterdir() if p.name.startswith(".")] == []  # no temp file left
    assert verify_dataset("d", root)["ok"]

    before = spec_file.stat().st_mtime_ns
    assert dataset_statistics("d", write=True, root=root)["written"] is False  # nothing to change: left alone
    assert spec_file.stat().st_mtime_ns == before


def test_differences_of_mismatched_lengths() -> None:
    stored = {"X": {"i": {"mean": [0.0, 0.0], "std": [1.0, 1.0], "min": [0.0, 0.0], "max": [0.0, 0.0],
                          "q01": [0.0, 0.0], "q99": [0.0, 0.0]}}}
    fresh = {"X": {"i": {k: [0.0] for k in ("mean", "std", "min", "max", "q01", "q99")}}}
    (d,) = differences(stored, fresh)
    assert d["max_abs_difference"]["mean"] == float("inf")


def test_stats_of_an_unknown_or_corrupt_dataset(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(3,))
    with pytest.raises(DatasetError, match="'nope'.*available: d"):
        dataset_statistics("nope", root=root)
    (root / "d" / "spec.json").write_text("{")
    with pytest.raises(DatasetError, match="spec.json: unreadable dataset spec"):
        dataset_statistics("d", root=root, write=True)


def test_beyond_the_reservoir_quantiles_are_the_imports_and_close_to_exact(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "big", lengths=(6000,) * 5, cams={})  # 30,000 rows per item > the 20,000-row reservoir
    result = dataset_statistics("big", root=root)
    assert result["differences"] == []  # the same streaming sample as the import, row for row
    items, values = vector(root, "big")
    for j, item in enumerate(items):
        s = result["statistics"]["JOINT_POSITIONS"][item]
        exact = np.quantile(values[:, j].astype(np.float64), [0.01, 0.99])
        assert s["q01"][0] == pytest.approx(exact[0], abs=0.05) and s["q99"][0] == pytest.approx(exact[1], abs=0.05)
        assert s["mean"][0] == pytest.approx(values[:, j].astype(np.float64).mean(), rel=1e-9)

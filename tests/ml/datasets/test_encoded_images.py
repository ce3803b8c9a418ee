"""RGB images stored as PNG/JPEG bytes: same windows as raw (PNG exactly), smaller on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.datasets import api
from neuracore.ml.datasets.data_spec import resolve_features
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, materialize
from neuracore.ml.datasets.windows import WindowDataset

H, W = 24, 32


def _episodes() -> list[Episode]:
    y, x = np.mgrid[0:H, 0:W]
    out = []
    for e, n in enumerate([6, 9]):
        frames = np.stack([np.stack([(x * 8 + t * 5) % 256, (y * 10 + e * 40) % 256, np.full_like(x, 90)], -1)
                           for t in range(n)]).astype(np.uint8)
        q = np.arange(n, dtype=np.float32) + 100 * e
        out.append(Episode("arm", {DataType.JOINT_POSITIONS: {"j": q}, DataType.JOINT_TARGET_POSITIONS: {"j": q + 1},
                                   DataType.RGB_IMAGES: {"cam": frames, "side": frames[:, ::-1].copy()}}))
    return out


def _layout(encoding: str) -> DatasetLayout:
    return DatasetLayout(
        robots={"arm": {DataType.JOINT_POSITIONS: ["j"], DataType.JOINT_TARGET_POSITIONS: ["j"],
                        DataType.RGB_IMAGES: ["cam", "side"]}},
        item_shapes={DataType.RGB_IMAGES: {"cam": [H, W, 3], "side": [H, W, 3]}},
        image_encoding=encoding,
    )


def _windows(root: Path, name: str) -> WindowDataset:
    ds = open_dataset(name, root)
    inputs = resolve_features(ds.spec, ["RGB_IMAGES", "JOINT_POSITIONS"], None, "input_data_types")
    outputs = resolve_features(ds.spec, ["JOINT_TARGET_POSITIONS"], None, "output_data_types")
    return WindowDataset(ds, inputs, outputs, [0, 1], history=2, horizon=3)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("enc")
    for enc in ("raw", "png", "jpeg"):
        materialize(enc, _episodes(), _layout(enc), 10.0, root=root)
    return root


def test_png_windows_equal_raw_and_jpeg_close(made: Path) -> None:
    raw, png, jpeg = (_windows(made, n) for n in ("raw", "png", "jpeg"))
    for i in (0, 5, 7, 14):
        a, b, c = raw[i]["inputs"]["RGB_IMAGES"], png[i]["inputs"]["RGB_IMAGES"], jpeg[i]["inputs"]["RGB_IMAGES"]
        assert a.shape == b.shape == c.shape == (2, 2, 3, H, W) and b.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
        assert np.abs(a.astype(int) - c.astype(int)).mean() < 4
        np.testing.assert_array_equal(raw[i]["outputs"]["JOINT_TARGET_POSITIONS"], png[i]["outputs"]["JOINT_TARGET_POSITIONS"])


def test_encoded_spec_show_verify_and_size(made: Path) -> None:
    spec = open_dataset("png", made).spec
    assert spec.columns["RGB_IMAGES.cam"].encoding == "png"
    assert spec.statistics == open_dataset("raw", made).spec.statistics  # computed before encoding
    assert api.show_frame("png", 1, 4, made)["values"]["RGB_IMAGES"] == api.show_frame("raw", 1, 4, made)["values"]["RGB_IMAGES"]
    assert api.verify_dataset("jpeg", made)["frames"] == 15
    assert api.dataset_info("png", made)["image_encoding"] == ["png"]
    assert api.dataset_info("png", made)["size_bytes"] < api.dataset_info("raw", made)["size_bytes"]


def test_unknown_encoding(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="image_encoding='webp'; valid: raw, png, jpeg"):
        materialize("x", _episodes(), _layout("webp"), 10.0, root=tmp_path)

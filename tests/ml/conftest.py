"""Fixtures for tests/ml: a tiny two-robot dataset stored as JPEG, PNG and raw images, and its windows.

Episodes (robot, length): ("arm", 5), ("mono", 4), ("arm", 6), rows 0-4, 5-8, 9-14 of the table.
"arm" has cameras top and side and an instruction "task <episode>"; "mono" has only top (its side
column is zero-filled and masked) and no instruction. Images are `IMAGE_HW` = 16x24 RGB.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from neuracore.ml.core.data_types import DataType
from neuracore.ml.datasets.data_spec import resolve_features
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, materialize
from neuracore.ml.datasets.windows import WindowDataset

IMAGE_HW = (16, 24)
EPISODES = [("arm", 5), ("mono", 4), ("arm", 6)]
_RGB, _JP, _JT = DataType.RGB_IMAGES, DataType.JOINT_POSITIONS, DataType.JOINT_TARGET_POSITIONS


def _frames(ep: int, n: int, cam: str) -> np.ndarray:
    """Distinct frames: a gradient that moves with t, plus noise (so JPEG is visibly lossy)."""
    h, w = IMAGE_HW
    y, x = np.mgrid[0:h, 0:w]
    noise = np.random.default_rng(10 * ep + len(cam)).integers(0, 40, (n, h, w, 3))
    base = np.stack([np.stack([(x * 9 + t * 17) % 256, (y * 13 + ep * 50) % 256, np.full_like(x, 60 + len(cam))], -1)
                     for t in range(n)])
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _episode(ep: int, robot: str, n: int) -> Episode:
    cams = ["top", "side"] if robot == "arm" else ["top"]
    q = np.arange(n, dtype=np.float32) + 100 * ep
    return Episode(robot, {_JP: {"j": q}, _JT: {"j": q + 0.5}, _RGB: {c: _frames(ep, n, c) for c in cams}},
                   language=f"task {ep}" if robot == "arm" else None)


@pytest.fixture(scope="session")
def image_datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A datasets root holding the dataset once per image encoding, named "jpeg", "png" and "raw"."""
    root = tmp_path_factory.mktemp("image_datasets")
    h, w = IMAGE_HW
    robots = {"arm": {_JP: ["j"], _JT: ["j"], _RGB: ["top", "side"], DataType.LANGUAGE: ["instruction"]},
              "mono": {_JP: ["j"], _JT: ["j"], _RGB: ["top"]}}
    for enc in ("jpeg", "png", "raw"):
        layout = DatasetLayout(robots=robots, item_shapes={_RGB: {"top": [h, w, 3], "side": [h, w, 3]}},
                               image_encoding=enc)
        materialize(enc, (_episode(i, r, n) for i, (r, n) in enumerate(EPISODES)), layout, 10.0, root=root)
    return root


@pytest.fixture()
def image_windows(image_datasets: Path) -> Callable[..., WindowDataset]:
    """`make(encoding, encoded_images, history=2)`: windows over every episode (images, joints, language in)."""

    def make(encoding: str, encoded_images: bool, history: int = 2) -> WindowDataset:
        ds = open_dataset(encoding, image_datasets)
        inputs = resolve_features(ds.spec, ["RGB_IMAGES", "JOINT_POSITIONS", "LANGUAGE"], None, "input_data_types")
        outputs = resolve_features(ds.spec, ["JOINT_TARGET_POSITIONS"], None, "output_data_types")
        return WindowDataset(ds, inputs, outputs, range(len(EPISODES)), history=history, horizon=3,
                             default_language="default task", encoded_images=encoded_images)

    return make


def _assert_same(a: Any, b: Any) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device)
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


@pytest.fixture()
def assert_same() -> Callable[[Any, Any], None]:
    """Asserts two (nested) batches are equal: same keys, types, dtypes, shapes, devices and values."""
    return _assert_same

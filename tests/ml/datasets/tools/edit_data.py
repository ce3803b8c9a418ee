"""Tiny datasets for the merge/split/filter/stats tests, written through the real `materialize`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from neuracore.ml.core.data_types import DataType
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, materialize


def make_episodes(robot: str, lengths: list[int], joints: list[str], cams: dict[str, tuple[int, int]],
                  languages: list[str | None] | None = None, seed: int = 0) -> list[Episode]:
    """Random but seeded episodes: JOINT_POSITIONS/JOINT_TARGET_POSITIONS per joint, uint8 frames per camera."""
    rng = np.random.default_rng(seed)
    episodes = []
    for e, n in enumerate(lengths):
        q = rng.normal(size=(n, len(joints))).astype(np.float32)
        data = {
            DataType.JOINT_POSITIONS: {j: q[:, k] for k, j in enumerate(joints)},
            DataType.JOINT_TARGET_POSITIONS: {j: q[:, k] + 1 for k, j in enumerate(joints)},
        }
        if cams:
            data[DataType.RGB_IMAGES] = {c: rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
                                         for c, (h, w) in cams.items()}
        language = languages[e] if languages is not None else f"task {e}"
        episodes.append(Episode(robot=robot, data=data, language=language))
    return episodes


def make_dataset(root: Path, name: str, *, robot: str = "arm", lengths: tuple[int, ...] = (5, 6, 7),
                 joints: tuple[str, ...] = ("a", "b"), cams: dict[str, tuple[int, int]] | None = None,
                 encoding: str = "raw", frequency: float = 10.0, languages: list[str | None] | None = None,
                 seed: int = 0) -> list[Episode]:
    """Materialise a dataset under `root` (the datasets folder); returns its episodes (the values written)."""
    cams = {"top": (6, 8)} if cams is None else cams
    episodes = make_episodes(robot, list(lengths), list(joints), cams, languages, seed)
    types: dict[DataType, list[str]] = {DataType.JOINT_POSITIONS: list(joints),
                                        DataType.JOINT_TARGET_POSITIONS: list(joints),
                                        DataType.LANGUAGE: ["instruction"]}
    if cams:
        types[DataType.RGB_IMAGES] = list(cams)
    layout = DatasetLayout(robots={robot: types},
                           item_shapes={DataType.RGB_IMAGES: {c: [h, w, 3] for c, (h, w) in cams.items()}},
                           image_encoding=encoding)
    materialize(name, episodes, layout, frequency, root=root)
    return episodes


def vector(root: Path, name: str, data_type: str = "JOINT_POSITIONS") -> tuple[list[str], np.ndarray]:
    """(items, `[frames, items]` values) of a dataset's vector column."""
    ds = open_dataset(name, root)
    col = ds.spec.columns[data_type]
    values = ds.table.column(data_type).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return col.items, values.reshape(ds.table.num_rows, -1)


def leftovers(root: Path) -> list[str]:
    """Hidden entries (staging folders, asides) left in a datasets folder."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))

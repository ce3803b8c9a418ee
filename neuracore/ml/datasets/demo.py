"""The embedded `demo` dataset: scripted-expert episodes of the pick-and-place task.

Generated deterministically on first use (a few seconds) and cached like any other dataset,
so `dataset_name=demo` works offline on a fresh install.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from neuracore.ml.core.data_types import DataType
from neuracore.ml.datasets.format import SPEC_FILE, dataset_path
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, materialize
from neuracore.ml.sim import pick_place

logger = logging.getLogger(__name__)

DEMO_NAME = "demo"
DEMO_ROBOT = "planar_arm"
DEMO_EPISODES = 100
DEMO_SEED = 0  # episode i uses env seed DEMO_SEED + i; evaluation uses seeds from 100_000


def demo_layout() -> DatasetLayout:
    """Robots, items and image shape of the demo dataset."""
    size = pick_place.IMAGE_SIZE
    return DatasetLayout(
        robots={
            DEMO_ROBOT: {
                DataType.JOINT_POSITIONS: list(pick_place.JOINT_NAMES),
                DataType.JOINT_TARGET_POSITIONS: list(pick_place.JOINT_NAMES),
                DataType.RGB_IMAGES: [pick_place.CAMERA_NAME],
                DataType.LANGUAGE: ["instruction"],
            }
        },
        item_shapes={DataType.RGB_IMAGES: {pick_place.CAMERA_NAME: [size, size, 3]}},
    )


def demo_episodes(num_episodes: int = DEMO_EPISODES, seed: int = DEMO_SEED) -> Iterator[Episode]:
    """Expert episodes as `Episode`s (all successful)."""
    for i in range(num_episodes):
        observations, actions, _ = pick_place.record_expert_episode(seed + i)
        q = np.stack([o.joint_positions for o in observations])
        a = np.stack(actions)
        images = np.stack([o.image for o in observations])
        yield Episode(
            robot=DEMO_ROBOT,
            data={
                DataType.JOINT_POSITIONS: {n: q[:, j] for j, n in enumerate(pick_place.JOINT_NAMES)},
                DataType.JOINT_TARGET_POSITIONS: {n: a[:, j] for j, n in enumerate(pick_place.JOINT_NAMES)},
                DataType.RGB_IMAGES: {pick_place.CAMERA_NAME: images},
            },
            language=observations[0].language,
        )


def ensure_demo_dataset(root: Path | None = None, num_episodes: int = DEMO_EPISODES) -> Path:
    """Generate the demo dataset under `root` (default datasets root) unless it exists."""
    path = dataset_path(DEMO_NAME, root)
    if (path / SPEC_FILE).is_file():
        return path
    logger.info("generating the demo dataset (%d scripted episodes) at %s", num_episodes, path)
    try:
        return materialize(
            DEMO_NAME,
            demo_episodes(num_episodes),
            demo_layout(),
            pick_place.FREQUENCY_HZ,
            root=root,
            source={"kind": "demo", "task": "pick_place", "episodes": num_episodes, "seed": DEMO_SEED},
        )
    except FileExistsError:  # another rank/process finished first
        return path

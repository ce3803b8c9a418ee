"""A large recording generated on the fly and imported compactly: `tools/benchmark.py data large`.

    python tools/benchmark.py data large                                   # 100k frames, 3 cameras 480x640
    python tools/benchmark.py data large --frames-total 20000 --import-workers 2

The recording stands for a real one (3 cameras at 480x640, 14 joints, 50 Hz, 200-frame episodes)
without ever existing on disk at its raw size (100k frames would be 276 GB): each episode is made
inside the import worker that resizes and encodes it, exactly as an importer's lazily read episode
is. Frames are smooth gradients that drift over time plus fixed-pattern sensor noise, which compress
about like camera images. The import is the real pipeline (`materialize` with `--image-size` area
resizing and JPEG encoding in the workers); reported: import frames/s, the frames/s of generating
alone (the part of the import time that a real importer spends decoding its source instead), bytes
per frame on disk, and then the loader numbers of `tools/benchmark.py data` on the imported dataset.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from neuracore.ml.core.data_types import DataType

LARGE = "large"
JOINTS = [f"joint_{i}" for i in range(14)]
FREQUENCY_HZ = 50.0
EPISODE_FRAMES = 200
ROBOT = "bimanual"


def camera_names(cameras: int) -> list[str]:
    """`cam_0 .. cam_{n-1}`."""
    return [f"cam_{i}" for i in range(cameras)]


@functools.cache
def _texture(hw: tuple[int, int], camera: int) -> np.ndarray:
    """The camera's base picture: a gradient with fixed-pattern noise (int16, wider than the frame for drift)."""
    h, w = hw
    rng = np.random.default_rng(camera)
    y, x = np.mgrid[0:h, 0 : w + EPISODE_FRAMES]
    base = np.stack([x * 255 // (w + EPISODE_FRAMES), y * 255 // h, (x + y) % 256], -1).astype(np.int16)
    return base + rng.integers(0, 12, base.shape, dtype=np.int16)


def make_episode(index: int, cameras: int, hw: tuple[int, int], frames: int = EPISODE_FRAMES) -> Any:
    """Episode `index` of the large recording (deterministic per index)."""
    from neuracore.ml.datasets.materialize import Episode

    rng = np.random.default_rng(10_000 + index)
    q = np.cumsum(rng.normal(0, 0.01, (frames, len(JOINTS))), 0).astype(np.float32)
    images = {}
    h, w = hw
    for c, name in enumerate(camera_names(cameras)):
        tex = _texture(hw, c)
        shift = int(rng.integers(0, 64))
        video = np.empty((frames, h, w, 3), np.uint8)
        for t in range(frames):  # the scene drifts one pixel per frame, brightness changes slowly
            video[t] = np.clip(tex[:, t : t + w] + shift + (t % 32), 0, 255)
        images[name] = video
    return Episode(
        robot=ROBOT,
        data={
            DataType.JOINT_POSITIONS: {n: q[:, j] for j, n in enumerate(JOINTS)},
            DataType.JOINT_TARGET_POSITIONS: {n: np.roll(q[:, j], -3) for j, n in enumerate(JOINTS)},
            DataType.RGB_IMAGES: images,
        },
        language="transfer the cube",
    )


def _episode_frames() -> int:
    return EPISODE_FRAMES


def generate_seconds(cameras: int, hw: tuple[int, int], episodes: int = 2) -> float:
    """Seconds per frame of generating alone (one process), measured on a couple of episodes."""
    make_episode(0, cameras, hw)  # the textures
    start = time.perf_counter()
    for i in range(episodes):
        make_episode(i, cameras, hw)
    return (time.perf_counter() - start) / (episodes * EPISODE_FRAMES)


def import_large(name: str, root: Path | None, frames_total: int, cameras: int, source_hw: tuple[int, int],
                 image_size: tuple[int, int], encoding: str, jpeg_quality: int | None, workers: int) -> dict[str, Any]:
    """Generate and import the recording as dataset `name`; returns frames, seconds, frames/s, bytes/frame."""
    from neuracore.ml.datasets.format import dataset_path
    from neuracore.ml.datasets.images import ImageProcessing
    from neuracore.ml.datasets.materialize import DatasetLayout, EpisodeSource, materialize

    episodes = max(1, frames_total // EPISODE_FRAMES)
    names = camera_names(cameras)
    layout = DatasetLayout(
        robots={ROBOT: {DataType.JOINT_POSITIONS: JOINTS, DataType.JOINT_TARGET_POSITIONS: JOINTS,
                        DataType.RGB_IMAGES: names, DataType.LANGUAGE: ["instruction"]}},
        item_shapes={DataType.RGB_IMAGES: {c: [*image_size, 3] for c in names}},
        image_encoding=encoding,
        images=ImageProcessing(sizes={f"{DataType.RGB_IMAGES.value}.{c}": image_size for c in names},
                               jpeg_quality=jpeg_quality),
    )
    sources = [EpisodeSource(f"generated episode {i}", functools.partial(make_episode, i, cameras, source_hw),
                             _episode_frames) for i in range(episodes)]
    start = time.perf_counter()
    path = materialize(name, sources, layout, FREQUENCY_HZ, root=root, workers=workers,
                       source={"generated": "tools/benchmark.py data large"})
    seconds = time.perf_counter() - start
    frames = episodes * EPISODE_FRAMES
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return {"frames": frames, "episodes": episodes, "seconds": seconds, "frames_per_second": frames / seconds,
            "bytes": size, "bytes_per_frame": size / frames, "path": str(dataset_path(name, root)),
            "raw_source_bytes_per_frame": cameras * source_hw[0] * source_hw[1] * 3, "pid": os.getpid()}


__all__ = ["LARGE", "generate_seconds", "import_large", "make_episode"]

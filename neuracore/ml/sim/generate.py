"""Scripted ALOHA demonstrations written straight into our dataset format (`tools/dataset.py generate`).

Episode i uses seed `seed + i` (objects placed as gym-aloha places them for that seed), so a
dataset is deterministic per seed and any number of `workers` gives the same episodes. Seeds
must stay below `EVAL_SEED_OFFSET` (100 000), where evaluation starts, so evaluation episodes
never repeat a training episode. By default only successful demonstrations are written (the
failed seeds are listed in `spec.json` under `source.skipped_episodes`); `keep_failed` keeps them.
"""

from __future__ import annotations

import functools
import re
import time
from pathlib import Path
from typing import Any

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, EpisodeSource
from neuracore.ml.sim.envs import EVAL_SEED_OFFSET, require

GENERATORS = {"aloha_transfer_cube": "transfer_cube", "aloha_insertion": "insertion"}


def aloha_layout(render_hw: tuple[int, int]) -> DatasetLayout:
    """Robots, items and (rendered) image shape of a scripted ALOHA dataset."""
    from neuracore.ml.sim import aloha

    return DatasetLayout(
        robots={aloha.ROBOT: {
            DataType.JOINT_POSITIONS: list(aloha.JOINT_NAMES),
            DataType.JOINT_TARGET_POSITIONS: list(aloha.JOINT_NAMES),
            DataType.RGB_IMAGES: [aloha.CAMERA],
            DataType.LANGUAGE: ["instruction"],
        }},
        item_shapes={DataType.RGB_IMAGES: {aloha.CAMERA: [int(render_hw[0]), int(render_hw[1]), 3]}},
    )


def load_scripted_episode(task: str, seed: int, render_hw: tuple[int, int], keep_failed: bool) -> Episode:
    """One scripted episode as an `Episode` (runs in an import worker); a failed one raises unless kept."""
    from neuracore.ml.sim import aloha

    ep = aloha.scripted_episode(task, seed, render_hw)
    if not ep["success"] and not keep_failed:
        raise DatasetError(f"seed {seed}: the replayed scripted demonstration failed (max reward "
                           f"{ep['max_reward']:g} of {aloha.MAX_REWARD}; expert {ep['expert_max_reward']:g})")
    q, a = ep["joint_positions"], ep["actions"]
    return Episode(
        robot=aloha.ROBOT,
        data={
            DataType.JOINT_POSITIONS: {n: q[:, j] for j, n in enumerate(aloha.JOINT_NAMES)},
            DataType.JOINT_TARGET_POSITIONS: {n: a[:, j] for j, n in enumerate(aloha.JOINT_NAMES)},
            DataType.RGB_IMAGES: {aloha.CAMERA: ep["images"]},
        },
        language=aloha.LANGUAGE[task],
    )


def _render_hw(value: str | tuple[int, int]) -> tuple[int, int]:
    """`--render-size HxW` as (H, W), 1..4096 each, or a one-line error."""
    text = "x".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or not (0 < int(m[1]) <= 4096 and 0 < int(m[2]) <= 4096):
        raise ConfigError(f"--render-size {value!r}: give one HxW from 1x1 to 4096x4096 (e.g. 480x640)")
    return int(m[1]), int(m[2])


def generate_dataset(
    env: str,
    name: str,
    episodes: int,
    *,
    seed: int = 0,
    workers: int = 0,
    render_size: str | tuple[int, int] = (480, 640),
    image_size: str | None = None,
    resize_mode: str = "letterbox",
    image_encoding: str = "raw",
    jpeg_quality: int | str | None = None,
    keep_failed: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    root: Path | None = None,
) -> dict[str, Any]:
    """Generate `episodes` scripted demonstrations of `env` as dataset `name`; atomic. Returns a summary."""
    from neuracore.ml.datasets.format import IMAGE_ENCODINGS, dataset_path
    from neuracore.ml.datasets.images import check_jpeg_quality, check_resize_mode, parse_image_size, plan_resize
    from neuracore.ml.datasets.materialize import materialize

    if env not in GENERATORS:
        raise ConfigError(f"generate {env!r}: no scripted demonstrations for this env; valid: {', '.join(GENERATORS)}")
    for key, value, low in (("--episodes", episodes, 1), ("--seed", seed, 0), ("--workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{key} {value!r}: must be an integer >= {low}")
    if seed + episodes > EVAL_SEED_OFFSET:
        raise ConfigError(f"--seed {seed} --episodes {episodes}: seeds must stay below {EVAL_SEED_OFFSET} "
                          "(evaluation episodes use seeds from there)")
    final = dataset_path(name, root)  # a bad name is refused before anything runs
    if final.exists() and not overwrite:
        raise DatasetError(f"dataset {name!r} already exists at {final}; delete it or pass --overwrite")
    if image_encoding not in IMAGE_ENCODINGS:
        raise ConfigError(f"--image-encoding {image_encoding!r}: valid: {', '.join(IMAGE_ENCODINGS)}")
    render_hw = _render_hw(render_size)
    sizes = parse_image_size(image_size)
    quality = check_jpeg_quality(jpeg_quality, image_encoding)
    check_resize_mode(resize_mode)
    require("gym_aloha", env)
    from neuracore.ml.sim import aloha

    task = GENERATORS[env]
    layout = aloha_layout(render_hw)
    layout.image_encoding = image_encoding
    layout.images, source_shapes = plan_resize(layout.item_shapes, sizes, resize_mode, quality)
    import mujoco

    source: dict[str, Any] = {
        "kind": "scripted", "env": env, "seeds": [seed, seed + episodes - 1], "render_size": list(render_hw),
        "weld_torquescale": aloha.WELD_TORQUESCALE, "mujoco": mujoco.__version__, "keep_failed": keep_failed,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if sizes or image_encoding == "jpeg":
        source["images"] = layout.images.describe(source_shapes)
    sources = [EpisodeSource(f"seed {s}", functools.partial(load_scripted_episode, task, s, render_hw, keep_failed))
               for s in range(seed, seed + episodes)]
    started = time.perf_counter()
    path = materialize(name, sources, layout, aloha.FREQUENCY_HZ, root=root, overwrite=overwrite, source=source,
                       skip_bad_episodes=not keep_failed, workers=workers, progress=progress, total=episodes,
                       start_method="spawn")  # MuJoCo's EGL context does not survive a fork (the child hangs)
    import json

    from neuracore.ml.datasets.format import SPEC_FILE

    skipped = json.loads((path / SPEC_FILE).read_text())["source"].get("skipped_episodes", [])
    return {"path": path, "episodes": episodes - len(skipped), "attempted": episodes,
            "failed": [s["label"] for s in skipped], "seconds": time.perf_counter() - started}

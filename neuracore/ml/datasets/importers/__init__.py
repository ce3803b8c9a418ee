"""Importers: other tools' formats → episodes → `materialize` (one module per source kind).

Each module exposes `plan(path, options) -> ImportPlan`: it reads only metadata (and the first
episode's shapes) and returns lazily read `EpisodeSource`s, so a dataset larger than memory
imports episode by episode, optionally in several processes.
"""

from __future__ import annotations

import importlib
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuracore.ml.core.errors import ConfigError, DatasetError, one_line
from neuracore.ml.datasets.format import IMAGE_ENCODINGS, dataset_path
from neuracore.ml.datasets.images import check_jpeg_quality, check_resize_mode, parse_image_size, plan_resize
from neuracore.ml.datasets.importers.common import (
    ImportOptions,
    ImportPlan,
    load_mapping,
)
from neuracore.ml.datasets.materialize import Episode, _episode_rows, materialize

logger = logging.getLogger(__name__)

SAMPLE_FRAMES = 8  # frames per camera encoded to estimate the size of PNG/JPEG frames
DISK_MARGIN = 0.10  # free space needed beyond the estimate: 10 % ...
DISK_MARGIN_BYTES = 100 << 20  # ... plus 100 MB (metadata, file system slack)

IMPORTERS = {
    "lerobot": "neuracore.ml.datasets.importers.lerobot",
    "hdf5": "neuracore.ml.datasets.importers.hdf5",
    "episodes": "neuracore.ml.datasets.importers.episodes",
}


def plan_import(kind: str, path: str | Path, options: ImportOptions) -> ImportPlan:
    """What importing `path` as `kind` would write (layout, episodes), reading metadata only."""
    if kind not in IMPORTERS:
        raise ConfigError(f"import kind {kind!r} unknown; valid: {', '.join(IMPORTERS)}")
    return importlib.import_module(IMPORTERS[kind]).plan(Path(path).expanduser(), options)


@dataclass
class SizeEstimate:
    """The estimated size on disk of an import, and how it was found."""

    bytes: int
    frames: int
    encoding: str
    exact: bool  # raw frames and every episode's frame count known from metadata
    how: str  # how the frame count and the encoded frame sizes were found

    def describe(self) -> str:
        """One line for the user."""
        approx = "" if self.exact else "about "
        per = self.bytes / max(self.frames, 1)
        return (f"estimated size on disk: {approx}{_human(self.bytes)} ({self.frames} frames x {_human(per)} per "
                f"frame, {self.encoding}; {self.how})")


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def _sample(episode: Episode, frames: int) -> Episode:
    """`frames` frames spread evenly over `episode` (all streams alike)."""
    idx = np.unique(np.linspace(0, episode.length - 1, min(frames, episode.length)).round().astype(int))
    data = {dt: {k: np.asarray(v)[idx] for k, v in items.items()} for dt, items in episode.data.items()}
    return Episode(episode.robot, data, episode.language)


def estimate_size(plan: ImportPlan) -> SizeEstimate | None:
    """Bytes the import of `plan` will write (None: unknown, e.g. no episode can be read).

    Raw columns are exact: their row widths times the frame count, which importers read from
    metadata (`EpisodeSource.frames`). PNG/JPEG frames are sized by reading the first readable
    episode and resizing and encoding `SAMPLE_FRAMES` frames of each camera, as the import will;
    when no frame count is known, that episode's length stands for every episode's.
    """
    columns = plan.layout.columns()
    counts: list[int | None] = []
    for source in plan.sources:
        try:
            counts.append(int(source.frames()) if source.frames is not None else None)
        except Exception:  # noqa: BLE001 - a bad episode: reported (or skipped) by the import itself
            counts.append(None)
    encoded = [name for name, col in columns.items() if col.encoding != "raw"]
    sample = None  # (length of the sampled episode, its rows)
    if encoded or not any(c is not None for c in counts):
        for index, source in enumerate(plan.sources[:3]):
            try:
                episode = source.load()
                rows = _episode_rows(_sample(episode, SAMPLE_FRAMES), index, plan.layout, columns, source.label)
            except Exception as exc:  # noqa: BLE001 - as above: the import says what is wrong with it
                logger.debug("size estimate: episode %d not sampled (%s)", index, one_line(exc))
                continue
            sample = (episode.length, rows)
            del episode
            break
    known = [c for c in counts if c is not None]
    if not known and sample is not None:  # no metadata: the sampled episode's length for every episode
        known = [sample[0]]
    if not known:
        return None
    frames = round(sum(known) + (len(counts) - len(known)) * (sum(known) / len(known)))
    per_frame = 8.0  # episode_index and frame_index (int32)
    for name, col in columns.items():
        if col.encoding == "raw":
            per_frame += col.row_width * np.dtype(col.dtype).itemsize
        elif sample is not None:
            per_frame += float(np.mean([len(b) for b in sample[1].arrays[name]])) + 4  # + the int32 offset
        else:  # no frame could be read: at most about the raw size
            per_frame += col.row_width + 4
    exact = not encoded and len(known) == len(counts)
    how = ("frame counts from metadata" if len(known) == len(counts) else
           f"frame counts of {len(known)} of {len(counts)} episodes from metadata, the rest extrapolated")
    if encoded:
        how += (f"; {', '.join(sorted({columns[n].encoding for n in encoded}))} size from {SAMPLE_FRAMES} encoded "
                "frames per camera" if sample is not None else "; encoded size bounded by the raw size")
    return SizeEstimate(round(frames * per_frame), frames, plan.layout.image_encoding, exact, how)


def _free_bytes(folder: Path) -> tuple[int, Path]:
    """Free bytes on the disk that holds `folder` (its nearest existing ancestor, if not made yet)."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free, probe


def check_disk_space(name: str, estimate: SizeEstimate, folder: Path) -> None:
    """Refuse (one line, before anything is written) an import the disk holding `folder` cannot take.

    Needed: the estimate plus `DISK_MARGIN` of it plus `DISK_MARGIN_BYTES`.
    """
    need = int(estimate.bytes * (1 + DISK_MARGIN)) + DISK_MARGIN_BYTES
    try:
        free, probe = _free_bytes(folder)
    except OSError as exc:
        logger.warning("free disk space of %s unknown (%s); importing anyway", folder, one_line(exc))
        return
    if free < need:
        raise DatasetError(
            f"dataset {name!r}: not enough disk space: the import needs about {_human(estimate.bytes)} "
            f"({estimate.frames} frames, {estimate.encoding}), {_human(need)} with the margin, but {probe} has "
            f"{_human(free)} free; nothing was written; free space, store smaller frames (e.g. --image-size "
            "224x224 --image-encoding jpeg) or set NEURACORE_HOME to a larger disk")


def import_dataset(
    kind: str,
    path: str | Path,
    name: str,
    *,
    frequency: float | None = None,
    mapping: str | Path | Mapping[str, Any] | None = None,
    robot: str | None = None,
    language: str | None = None,
    max_delay_s: float | None = None,
    skip_bad_episodes: bool = False,
    image_encoding: str = "raw",
    image_size: str | Mapping[str, Any] | tuple[int, int] | None = None,
    resize_mode: str = "letterbox",
    jpeg_quality: int | str | None = None,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    root: Path | None = None,
    on_estimate: Callable[[str], None] | None = None,
) -> Path:
    """Import `path` (a `kind` source) as dataset `name`; atomic, returns the dataset folder.

    `mapping` is a `--map` YAML file or dict `{source_key: DATA_TYPE or null}`; `image_encoding`
    stores RGB frames as "raw" uint8 (fastest to read) or "png"/"jpeg" bytes (smaller on disk).
    `image_size` ("HxW" for every camera, or "cam=HxW,...") resizes camera frames on import
    (area interpolation, aspect ratio kept by `resize_mode` "letterbox" or "crop"; see
    `datasets.images`); `jpeg_quality` (1-100) applies to "jpeg". Before anything is written the
    size on disk is estimated, passed to `on_estimate` (default: logged) and checked against the
    free space of the datasets folder (`check_disk_space`).
    """
    for key, value, zero_ok in (("--frequency", frequency, False), ("--max-delay-s", max_delay_s, True)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)
                                      and (value > 0 or (zero_ok and value == 0))):
            raise ConfigError(f"{key} {value!r}: must be a {'non-negative' if zero_ok else 'positive'} finite number")
    # The name first: a bad or taken name is refused before the source is read.
    final = dataset_path(name, root)
    if final.exists() and not overwrite:
        raise DatasetError(f"dataset {name!r} already exists at {final}; delete it or pass overwrite")
    if image_encoding not in IMAGE_ENCODINGS:
        raise ConfigError(f"--image-encoding {image_encoding!r}: valid: {', '.join(IMAGE_ENCODINGS)}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"--workers {workers!r}: must be a non-negative integer")
    # Options before the source is read: a typo costs nothing.
    sizes = parse_image_size(image_size)
    check_resize_mode(resize_mode)
    quality = check_jpeg_quality(jpeg_quality, image_encoding)
    options = ImportOptions(frequency, load_mapping(mapping), robot, language, max_delay_s)
    plan = plan_import(kind, path, options)
    plan.layout.image_encoding = image_encoding
    plan.layout.images, source_shapes = plan_resize(plan.layout.item_shapes, sizes, resize_mode, quality)
    source = {**plan.source, "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if sizes or image_encoding == "jpeg":
        source["images"] = plan.layout.images.describe(source_shapes)
    estimate = estimate_size(plan)
    if estimate is not None:
        source["estimated_bytes"] = estimate.bytes
        (on_estimate or logger.info)(estimate.describe())
        check_disk_space(name, estimate, final.parent)
    return materialize(
        name, plan.sources, plan.layout, plan.frequency, root=root, overwrite=overwrite, source=source,
        skip_bad_episodes=skip_bad_episodes, workers=workers, progress=progress, total=len(plan.sources),
    )


__all__ = ["IMPORTERS", "ImportOptions", "ImportPlan", "SizeEstimate", "check_disk_space", "estimate_size",
           "import_dataset", "plan_import"]

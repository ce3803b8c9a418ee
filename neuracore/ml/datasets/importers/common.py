"""Shared pieces of the importers: key → DataType mapping, fields, timestamps and resampling.

Also the guards every importer reads through: `confine` (no file outside the source folder is
opened) and `check_declared_shape` (no array larger than memory is allocated on a file's word).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError, DatasetError, one_line
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, EpisodeSource

LANGUAGE_ITEM = "instruction"
MAX_VECTOR_WIDTH = 1 << 16  # values per frame of one vector key; more is a malformed declaration


def check_relative(*parts: str | PurePosixPath, where: str) -> PurePosixPath:
    """`parts` as one relative path that cannot climb out of its folder, or a one-line error.

    Refused whatever the file system holds: an absolute path, a `..` component, a NUL byte.
    (`confine` adds the check of where symlinks lead.)
    """
    text = "/".join(str(p) for p in parts)
    rel = PurePosixPath(*parts) if parts else PurePosixPath(".")
    if "\0" in text or rel.is_absolute() or ".." in rel.parts:
        raise DatasetError(f"{where}: path {text!r} leaves the source folder (absolute or '..'); refused")
    return rel


def confine(root: Path, *parts: str | PurePosixPath, where: str) -> Path:
    """`root/<parts>` resolved, or a one-line error if it leaves the source folder `root`.

    Refused: an absolute path, a `..` component, or a path whose symlinks resolve outside `root`
    (checked before the file is opened). The resolved path is returned, so what is opened is what
    was checked.
    """
    rel = check_relative(*parts, where=where)
    text = "/".join(str(p) for p in parts)
    base = Path(root).resolve()
    try:
        target = (base / rel).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise DatasetError(f"{where}: {text!r} cannot be resolved ({one_line(exc)}); refused") from None
    if target != base and base not in target.parents:
        raise DatasetError(f"{where}: {text!r} is a symlink to {target}, outside the source folder {base}; refused")
    return target


def check_confined(root: Path, path: Path, where: str) -> Path:
    """A path found by listing `root` (glob, iterdir), resolved and checked like `confine`."""
    return confine(root, PurePosixPath(Path(path).relative_to(root).as_posix()), where=where)


def max_array_bytes() -> int:
    """The largest array an importer allocates for one key of one episode: half the machine's memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        total = 16 << 30
    return max(total // 2, 1 << 30)


def check_declared_shape(shape: Any, itemsize: int, where: str) -> list[int]:
    """An array shape declared by a source file as ints; refused (one line) if malformed or too large.

    Checked before anything is allocated: a file claiming `[10**12, 14]` would otherwise end in a
    MemoryError or the out-of-memory killer.
    """
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise DatasetError(f"{where}: declared shape {shape!r} is not a list of non-negative integers")
    need = math.prod(shape) * max(int(itemsize), 1)
    limit = max_array_bytes()
    if need > limit:
        raise DatasetError(f"{where}: declared shape {list(shape)} needs {need / 1e9:.3g} GB, more than "
                           f"{limit / 1e9:.3g} GB (half this machine's memory); refused")
    return [int(d) for d in shape]


@dataclass
class ImportOptions:
    """What the user can set for any importer (`tools/dataset.py import ... --help`)."""

    frequency: float | None = None  # output rate in Hz; default: the source's own rate
    mapping: dict[str, DataType | None] = field(default_factory=dict)  # source key -> DataType (None: ignore)
    robot: str | None = None  # robot name; default: the source's robot type, else "robot"
    language: str | None = None  # instruction for episodes whose source has none
    max_delay_s: float | None = None  # episodes importer: longest previous-sample hold


@dataclass
class Field:
    """A source key mapped to a DataType: a vector's item names, or one camera."""

    key: str
    data_type: DataType
    items: list[str]  # vector: one name per item; image: [camera]
    shape: list[int] = field(default_factory=list)  # image: [H, W, C]

    @property
    def width(self) -> int:
        """Values per frame of this key (vectors)."""
        return len(self.items) * self.data_type.item_width


@dataclass
class ImportPlan:
    """What an importer found: the layout, lazily read episodes and the source description."""

    layout: DatasetLayout
    sources: list[EpisodeSource]
    frequency: float
    source: dict[str, Any]


def load_mapping(value: str | Path | Mapping[str, Any] | None) -> dict[str, DataType | None]:
    """A `--map` YAML file (or mapping) `{source_key: DATA_TYPE or null}` as parsed DataTypes."""
    if value is None:
        return {}
    if isinstance(value, (str, Path)):
        import yaml

        try:
            data = yaml.safe_load(Path(value).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"--map {value}: unreadable YAML ({one_line(exc)})") from None
        where = f"--map {value}"
    else:
        data, where = value, "--map"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping {{source_key: DATA_TYPE or null}}, got {data!r}")
    return {str(k): None if v is None else DataType.parse(v, f"{where}: {k}") for k, v in data.items()}


def check_mapping_keys(mapping: Mapping[str, Any], available: list[str], where: str) -> None:
    """Every `--map` key must exist in the source."""
    unknown = [k for k in mapping if k not in available]
    if unknown:
        raise ConfigError(f"--map: {', '.join(map(repr, unknown))} not in {where}; available: {', '.join(available)}")


def build_layout(robot: str, fields: list[Field], language: bool) -> DatasetLayout:
    """One robot's layout from its fields; two keys giving the same item name is an error."""
    robots: dict[DataType, list[str]] = {}
    owner: dict[tuple[DataType, str], str] = {}
    shapes: dict[DataType, dict[str, list[int]]] = {}
    for f in fields:
        for item in f.items:
            if (f.data_type, item) in owner:
                raise ConfigError(
                    f"{f.key} and {owner[(f.data_type, item)]} both give {f.data_type.value} item {item!r}; "
                    "map one of them elsewhere with --map"
                )
            owner[(f.data_type, item)] = f.key
            robots.setdefault(f.data_type, []).append(item)
        if f.data_type.modality != Modality.VECTOR:
            shapes.setdefault(f.data_type, {})[f.items[0]] = list(f.shape)
    if language:
        robots[DataType.LANGUAGE] = [LANGUAGE_ITEM]
    ordered = {dt: robots[dt] for dt in DataType if dt in robots}  # stable DataType order in info/show
    return DatasetLayout(robots={robot: ordered}, item_shapes=shapes)


def episode_from_arrays(
    robot: str, fields: list[Field], arrays: Mapping[str, np.ndarray], language: str | None, where: str
) -> Episode:
    """Split each key's `[T, D]` array into named items (images stay `[T, H, W, C]`).

    A missing key, a vector of the wrong width or frame counts that differ are one-line errors.
    """
    data: dict[DataType, dict[str, np.ndarray]] = {}
    length: int | None = None
    for f in fields:
        if f.key not in arrays:
            raise DatasetError(f"{where}: {f.data_type.value} {f.key!r} is missing (has: {', '.join(arrays)})")
        values = np.asarray(arrays[f.key])
        if values.ndim == 0:
            raise DatasetError(f"{where}: {f.key!r} is a scalar, expected an array with one row per frame")
        if values.dtype.kind not in "biuf":
            raise DatasetError(f"{where}: {f.key!r} holds {values.dtype} values, not numbers")
        if len(values) == 0:
            raise DatasetError(f"{where}: empty episode (0 frames)")
        if length is None:
            length = len(values)
        elif len(values) != length:
            raise DatasetError(f"{where}: {f.key!r} has {len(values)} frames, other keys have {length}")
        per_type = data.setdefault(f.data_type, {})
        if f.data_type.modality == Modality.VECTOR:
            values = values.reshape(len(values), -1)
            if values.shape[1] != f.width:
                raise DatasetError(
                    f"{where}: {f.key!r} has {values.shape[1]} values per frame, expected {f.width} "
                    f"({', '.join(f.items)})"
                )
            bad = ~np.isfinite(values)
            if bad.any():
                frame, col = np.argwhere(bad)[0]
                raise DatasetError(f"{where} frame {frame}: {f.key!r} value {f.items[col // f.data_type.item_width]!r} "
                                   "is NaN or Inf")
            w = f.data_type.item_width
            for j, item in enumerate(f.items):
                per_type[item] = values[:, j * w:(j + 1) * w] if w > 1 else values[:, j]
        else:
            if list(values.shape[1:]) != list(f.shape):
                raise DatasetError(f"{where}: camera {f.key!r} has frames of shape {list(values.shape[1:])}, "
                                   f"expected {f.shape} (as in the first episode)")
            per_type[f.items[0]] = values
    return Episode(robot=robot, data=data, language=language)


def check_timestamps(timestamps: np.ndarray, where: str) -> np.ndarray:
    """Timestamps as float64, finite and strictly increasing, or an error naming the frame."""
    raw = np.asarray(timestamps)
    if raw.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: timestamps hold {raw.dtype} values, not numbers (seconds)")
    ts = raw.astype(np.float64).reshape(-1)
    if not np.isfinite(ts).all():
        raise DatasetError(f"{where} frame {int(np.argwhere(~np.isfinite(ts))[0][0])}: timestamp is NaN or Inf")
    steps = np.diff(ts)
    if (steps <= 0).any():
        frame = int(np.argwhere(steps <= 0)[0][0]) + 1
        raise DatasetError(
            f"{where} frame {frame}: timestamps not increasing ({ts[frame - 1]:.6f} then {ts[frame]:.6f})"
        )
    return ts


def synchronize(
    streams: Mapping[str, tuple[np.ndarray, np.ndarray]], frequency: float, max_delay_s: float, where: str
) -> dict[str, np.ndarray]:
    """Resample streams `{name: (timestamps, values)}` onto one grid at `frequency` Hz.

    Each grid time takes the latest sample at or before it (previous-sample hold) if that sample
    is at most `max_delay_s` old. The grid starts at the latest first sample of any stream and
    frames where a stream has no fresh sample are trimmed from both ends; a gap inside the
    episode is an error naming the stream and time.
    """
    if not streams:
        raise DatasetError(f"{where}: no streams")
    stamps = {name: check_timestamps(ts, f"{where} stream {name!r}") for name, (ts, _) in streams.items()}
    for name, ts in stamps.items():
        values = np.asarray(streams[name][1])
        if values.ndim == 0:
            raise DatasetError(f"{where}: stream {name!r} values are a scalar, expected one row per timestamp")
        if len(ts) == 0:
            raise DatasetError(f"{where}: stream {name!r} is empty")
        if len(ts) != len(values):
            raise DatasetError(f"{where}: stream {name!r} has {len(ts)} timestamps but {len(values)} values")
    t0 = max(ts[0] for ts in stamps.values())
    t1 = max(ts[-1] for ts in stamps.values())
    step = 1.0 / frequency
    # Round so that a grid time equal to a sample time is not lost to floating-point error.
    grid = t0 + np.arange(int(np.floor((t1 - t0) / step + 1e-9)) + 1) * step
    valid = np.ones(len(grid), bool)
    picks: dict[str, np.ndarray] = {}
    for name, ts in stamps.items():
        idx = np.searchsorted(ts, grid + 1e-9, side="right") - 1
        fresh = (idx >= 0) & (grid - ts[np.maximum(idx, 0)] <= max_delay_s + 1e-9)
        valid &= fresh
        picks[name] = np.maximum(idx, 0)
    if not valid.any():
        raise DatasetError(f"{where}: no time where every stream has a sample within max_delay_s={max_delay_s}")
    first = int(np.argmax(valid))
    last = len(valid) - int(np.argmax(valid[::-1]))
    if not valid[first:last].all():
        gap = first + int(np.argmin(valid[first:last]))
        stale = [name for name, ts in stamps.items() if grid[gap] - ts[picks[name][gap]] > max_delay_s + 1e-9]
        raise DatasetError(
            f"{where}: stream {stale[0]!r} has no sample within max_delay_s={max_delay_s} at t={grid[gap]:.3f}s "
            f"(frame {gap - first} of the resampled episode)"
        )
    return {name: np.asarray(streams[name][1])[picks[name][first:last]] for name in streams}


def default_robot(options: ImportOptions, found: str | None) -> str:
    """The robot name: `--robot`, else the source's, else "robot"."""
    return options.robot or found or "robot"

"""`episodes` importer: a folder of your own recordings, streams at any rate, one folder per episode.

Layout (episodes in folder-name order; `npz` files are read with `allow_pickle=False`)::

    my_recordings/
      ep_000/
        episode.json   {"robot": "arm_a", "language": "pick up the cube",
                        "streams": {"joints": {"data_type": "JOINT_POSITIONS", "items": ["j0", "j1"]},
                                    "target": {"data_type": "JOINT_TARGET_POSITIONS", "items": ["j0", "j1"]},
                                    "wrist":  {"data_type": "RGB_IMAGES", "items": ["wrist"]}}}
        joints.npz     timestamps [N] (seconds, increasing), values [N, len(items) * width]
        target.npz     timestamps [M], values [M, 2]
        wrist.npz      timestamps [K], values [K, H, W, 3] uint8 (depth: [K, H, W, 1] float)
      ep_001/ ...

Every stream is resampled to `--frequency` Hz by previous-sample hold: a frame takes a stream's
latest sample at or before its time if that sample is at most `--max-delay-s` old (default
2 / frequency). Episodes start when every stream has started and are trimmed at the end where
a stream stops; a longer gap inside an episode is an error (or a skipped episode). Different
episodes may name different robots with different items (one dataset, several robots).
"""

from __future__ import annotations

import functools
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError, DatasetError, one_line
from neuracore.ml.datasets.format import read_json
from neuracore.ml.datasets.importers.common import (
    LANGUAGE_ITEM,
    ImportOptions,
    ImportPlan,
    check_confined,
    check_declared_shape,
    confine,
    synchronize,
)
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, EpisodeSource

EPISODE_FILE = "episode.json"


def _read_meta(root: Path, folder: Path) -> dict[str, Any]:
    """`episode.json` of `folder`, checked: strings where names go, streams inside the source folder."""
    path = confine(root, folder.name, EPISODE_FILE, where=f"{folder.name}: {EPISODE_FILE}")
    meta = read_json(path, "unreadable episode description")
    try:
        if not isinstance(meta, dict):
            raise TypeError(f"expected a JSON object, got {type(meta).__name__}")
        streams = meta["streams"]
        if not isinstance(streams, dict) or not streams:
            raise ValueError("'streams' must be a non-empty mapping")
        for key in ("robot", "language"):
            if meta.get(key) is not None and not isinstance(meta[key], str):
                raise ValueError(f"{key!r} must be a string, got {meta[key]!r}")
        for name, s in streams.items():
            if not isinstance(s, dict):
                raise TypeError(f"stream {name!r} must be a mapping with 'data_type' and 'items'")
            DataType.parse(s["data_type"], f"{path}: stream {name!r}")
            items = s["items"]
            if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
                raise ValueError(f"stream {name!r}: 'items' must be a non-empty list of names")
            if len(set(items)) != len(items):
                raise ValueError(f"stream {name!r}: 'items' names an item twice")
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: unreadable episode description ({one_line(exc)})") from None
    for name in streams:  # the stream files must lie inside the source folder (no '../', no '/abs')
        confine(root, folder.name, f"{name}.npz", where=f"{folder.name}: stream {name!r}")
    return meta


def _header(path: Path, member: str) -> tuple[list[int], np.dtype]:
    """Shape and dtype of one array in an npz, read from its header without reading the array."""
    try:
        with zipfile.ZipFile(path) as z, z.open(f"{member}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: unreadable stream file (needs 'timestamps' and 'values': {exc})") from None
    return list(shape), dtype


def _values_shape(path: Path) -> list[int]:
    """Shape of `values` in an npz without reading the array."""
    return _header(path, "values")[0]


def _load_stream(path: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    for member in ("timestamps", "values"):  # declared sizes checked before np.load allocates them
        shape, dtype = _header(path, member)
        check_declared_shape(shape, dtype.itemsize, f"{where} {member!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["timestamps"], z["values"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: unreadable stream file (needs 'timestamps' and 'values': {exc})") from None


def _load(root: str, folder: str, meta: dict[str, Any], frequency: float, max_delay_s: float,
          language: str | None) -> Episode:
    """Read, check and resample one episode folder (`meta`: its checked episode.json); runs in a worker."""
    where = folder
    streams = {}
    for name in meta["streams"]:
        file = confine(Path(root), folder, f"{name}.npz", where=f"{where}: stream {name!r}")
        streams[name] = _load_stream(file, f"{where}: stream {name!r}")
    synced = synchronize(streams, frequency, max_delay_s, where)
    data: dict[DataType, dict[str, np.ndarray]] = {}
    for name, s in meta["streams"].items():
        dt = DataType.parse(s["data_type"])
        values = synced[name]
        if dt.modality == Modality.VECTOR:
            values = values.reshape(len(values), -1)
            width = len(s["items"]) * dt.item_width
            if values.shape[1] != width:
                raise DatasetError(f"{where}: stream {name!r} has {values.shape[1]} values per frame, expected "
                                   f"{width} ({', '.join(s['items'])})")
            w = dt.item_width
            for j, item in enumerate(s["items"]):
                data.setdefault(dt, {})[item] = values[:, j * w:(j + 1) * w] if w > 1 else values[:, j]
        else:
            data.setdefault(dt, {})[s["items"][0]] = values
    return Episode(robot=str(meta.get("robot", "robot")), data=data, language=meta.get("language") or language)


def _frames(root: str, folder: str, meta: dict[str, Any], frequency: float, max_delay_s: float) -> int:
    """Frames the episode will have once resampled, from its streams' timestamps alone (not their values)."""
    streams = {}
    for name in meta["streams"]:
        file = confine(Path(root), folder, f"{name}.npz", where=f"{folder}: stream {name!r}")
        shape, dtype = _header(file, "timestamps")
        check_declared_shape(shape, dtype.itemsize, f"{folder}: stream {name!r} 'timestamps'")
        try:
            with np.load(file, allow_pickle=False) as z:
                ts = z["timestamps"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"{file}: unreadable stream file ({exc})") from None
        streams[name] = (ts, ts)
    return len(next(iter(synchronize(streams, frequency, max_delay_s, folder).values())))


def plan(path: Path, options: ImportOptions) -> ImportPlan:
    """Scan every `episode.json` (small) to declare robots, items and image shapes up front."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder of episode folders")
    if options.mapping:
        raise ConfigError("--map: the episodes importer takes data types from each episode.json")
    if not options.frequency:
        raise ConfigError("--frequency: required for the episodes importer (the rate to resample every stream to)")
    try:
        folders = sorted(p for p in root.iterdir() if (p / EPISODE_FILE).is_file())
    except OSError as exc:
        raise DatasetError(f"{root}: cannot list the folder ({one_line(exc)})") from None
    if not folders:
        raise DatasetError(f"{root}: no <episode>/{EPISODE_FILE} folders")
    for folder in folders:  # a symlinked episode folder must not lead out of the source folder
        check_confined(root, folder, where=folder.name)
    robots: dict[str, dict[DataType, list[str]]] = {}
    shapes: dict[DataType, dict[str, list[int]]] = {}
    has_language = options.language is not None
    metas = [_read_meta(root, folder) for folder in folders]
    for folder, meta in zip(folders, metas, strict=True):
        robot = robots.setdefault(str(meta.get("robot", "robot")), {})
        has_language |= bool(meta.get("language"))
        for name, s in meta["streams"].items():
            dt = DataType.parse(s["data_type"])
            if dt.modality == Modality.LANGUAGE:
                raise DatasetError(f"{folder / EPISODE_FILE}: stream {name!r}: give language as \"language\"")
            items = robot.setdefault(dt, [])
            items.extend(i for i in s["items"] if i not in items)
            if dt.modality != Modality.VECTOR and s["items"][0] not in shapes.get(dt, {}):
                file = confine(root, folder.name, f"{name}.npz", where=f"{folder.name}: stream {name!r}")
                shape = _values_shape(file)
                if len(shape) != 4:
                    raise DatasetError(f"{folder.name}: stream {name!r} values have shape {shape}, expected "
                                       "[frames, H, W, C] for images")
                shapes.setdefault(dt, {})[s["items"][0]] = shape[1:]
    if has_language:
        for robot in robots.values():
            robot[DataType.LANGUAGE] = [LANGUAGE_ITEM]
    robots = {r: {dt: d[dt] for dt in DataType if dt in d} for r, d in robots.items()}
    layout = DatasetLayout(robots=robots, item_shapes=shapes)
    max_delay = options.max_delay_s if options.max_delay_s is not None else 2.0 / options.frequency
    sources = [EpisodeSource(f.name, functools.partial(_load, str(root), f.name, m, options.frequency, max_delay,
                                                       options.language),
                             functools.partial(_frames, str(root), f.name, m, options.frequency, max_delay))
               for f, m in zip(folders, metas, strict=True)]
    return ImportPlan(layout, sources, options.frequency, {"kind": "episodes", "path": str(root.resolve()),
                                                           "max_delay_s": max_delay})

"""LeRobot v3.0 importer: `meta/info.json`, `meta/episodes/`, `meta/tasks.parquet`, `data/`, `videos/`.

Default mapping (override with `--map`): `observation.state` → JOINT_POSITIONS, `action` →
JOINT_TARGET_POSITIONS, `observation.velocity` → JOINT_VELOCITIES, `observation.effort` →
JOINT_TORQUES, `observation.environment_state` → CUSTOM_1D, every `image`/`video` feature →
RGB_IMAGES (camera = the key without `observation.images.`); episode tasks → LANGUAGE. Item
names are the features' `names`. Other keys (rewards, done flags) are left out unless mapped.
Images stored in parquet are decoded with Pillow, mp4 videos with PyAV, in the worker processes.
"""

from __future__ import annotations

import functools
import itertools
import math
import string
from pathlib import Path
from typing import Any

import numpy as np

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.format import decode_images, read_json
from neuracore.ml.datasets.importers.common import (
    MAX_VECTOR_WIDTH,
    Field,
    ImportOptions,
    ImportPlan,
    build_layout,
    check_confined,
    check_declared_shape,
    check_mapping_keys,
    check_relative,
    check_timestamps,
    confine,
    default_robot,
    episode_from_arrays,
)
from neuracore.ml.datasets.materialize import Episode, EpisodeSource

_DEFAULTS = {
    "observation.state": DataType.JOINT_POSITIONS,
    "action": DataType.JOINT_TARGET_POSITIONS,
    "observation.velocity": DataType.JOINT_VELOCITIES,
    "observation.effort": DataType.JOINT_TORQUES,
    "observation.environment_state": DataType.CUSTOM_1D,
}
_RESERVED = {"timestamp", "frame_index", "episode_index", "index", "task_index"}
_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


def _read_parquet(path: Path, **kwargs: Any) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, **kwargs)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(f"{path}: unreadable parquet file (truncated or corrupt: {exc})") from None


_TEMPLATE_FIELDS = {"data_path": {"chunk_index", "file_index"},
                    "video_path": {"video_key", "chunk_index", "file_index"}}


def _check_template(key: str, template: Any, info_file: Path, video_keys: list[str]) -> str:
    """`data_path`/`video_path` of info.json: plain `{field}` or `{field:03d}` placeholders only.

    Attribute or index access (`{chunk_index.__class__}`) and unknown fields are refused, and so is
    a template that leads out of the source folder whatever its fields (`../x/{file_index}`, an
    absolute path) before any episode is read; every filled-in path is checked again by `confine`
    (symlinks included) when its episode is read.
    """
    if not isinstance(template, str) or not template:
        raise DatasetError(f"{info_file}: {key} must be a path template string, got {template!r}")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DatasetError(f"{info_file}: {key} {template!r}: malformed template ({exc})") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in _TEMPLATE_FIELDS[key] or conversion or (spec and not spec.rstrip("d").isdigit()):
            raise DatasetError(f"{info_file}: {key} {template!r}: placeholder {{{name}{':' + spec if spec else ''}}} "
                               f"not allowed; valid: {', '.join(sorted(_TEMPLATE_FIELDS[key]))} (optionally :03d)")
    for video_key in video_keys or ["key"]:
        try:
            sample = template.format(chunk_index=0, file_index=0, video_key=video_key)
        except (ValueError, TypeError) as exc:  # e.g. {video_key:03d}
            raise DatasetError(f"{info_file}: {key} {template!r}: malformed template ({exc})") from None
        check_relative(sample, where=f"{info_file}: {key}")
    return template


def _check_info(info: Any, info_file: Path) -> float:
    """The parts of info.json the importer relies on, checked up front; returns `fps`."""
    if not isinstance(info, dict):
        raise DatasetError(f"{info_file}: expected a JSON object, got {type(info).__name__}")
    fps = info.get("fps")
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not math.isfinite(fps) or fps <= 0:
        raise DatasetError(f"{info_file}: 'fps' must be a positive number, got {fps!r}" if "fps" in info
                           else f"{info_file}: 'fps' is missing")
    features = info.get("features", {})
    if not isinstance(features, dict) or not all(isinstance(f, dict) for f in features.values()):
        raise DatasetError(f"{info_file}: 'features' must map each key to an object with 'dtype' and 'shape'")
    for key in ("robot_type", "codebase_version"):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise DatasetError(f"{info_file}: {key!r} must be a string, got {info[key]!r}")
    return float(fps)


def _names(key: str, feature: dict[str, Any], width: int) -> list[str]:
    names = feature.get("names")
    if isinstance(names, dict):  # {"motors": [...]} in older writers
        names = next((v for v in names.values() if isinstance(v, list)), None)
    if names is None:
        return [f"{key}_{i}" for i in range(width)]
    if not isinstance(names, list):
        raise DatasetError(f"meta/info.json: feature {key!r}: 'names' must be a list, got {names!r}")
    names = [str(n) for n in names]
    if len(names) != width:
        raise DatasetError(f"meta/info.json: feature {key!r} has shape [{width}] but {len(names)} names")
    return names


def _image_shape(key: str, feature: dict[str, Any]) -> list[int]:
    shape = check_declared_shape(feature.get("shape"), 1, f"meta/info.json: image feature {key!r}")
    names = feature.get("names") or []
    names = [str(n).lower() for n in names] if isinstance(names, list) else []
    if len(shape) == 3 and names and names[0].startswith("channel"):
        shape = [shape[1], shape[2], shape[0]]  # stored [C, H, W]; we keep [H, W, C]
    if len(shape) != 3 or min(shape) == 0:
        raise DatasetError(f"meta/info.json: image feature {key!r} has shape {shape}, expected [H, W, C]")
    return shape


def _fields(info: dict[str, Any], options: ImportOptions) -> tuple[list[Field], dict[str, str]]:
    """Mapped fields and, per image key, how it is stored ('image' in parquet or 'video')."""
    features: dict[str, Any] = info.get("features", {})
    check_mapping_keys(options.mapping, sorted(features), "meta/info.json features")
    storage: dict[str, str] = {}
    fields: list[Field] = []
    for key, feature in features.items():
        if key in _RESERVED:
            continue
        kind = feature.get("dtype")
        default = DataType.RGB_IMAGES if kind in ("image", "video") else _DEFAULTS.get(key)
        dt = options.mapping.get(key, default)
        if dt is None:
            continue
        if kind in ("image", "video"):
            if dt.modality != Modality.IMAGE:
                raise ConfigError(f"--map: {key!r} holds images; map it to RGB_IMAGES or DEPTH_IMAGES, not {dt.value}")
            camera = key.removeprefix("observation.images.").removeprefix("observation.")
            fields.append(Field(key, dt, [camera], _image_shape(key, feature)))
            storage[key] = kind
        else:
            if dt.modality != Modality.VECTOR:
                raise ConfigError(f"--map: {key!r} holds vectors; {dt.value} needs images")
            shape = check_declared_shape(feature.get("shape") or [1], 4, f"meta/info.json: feature {key!r}")
            width = math.prod(shape)
            if not 0 < width <= MAX_VECTOR_WIDTH:
                raise DatasetError(f"meta/info.json: feature {key!r} declares {width} values per frame; "
                                   f"expected 1..{MAX_VECTOR_WIDTH}")
            if width % dt.item_width:
                raise ConfigError(f"--map: {key!r} has {width} values, not a multiple of {dt.item_width} for {dt.value}")
            names = _names(key, feature, width)
            fields.append(Field(key, dt, names[:: dt.item_width] if dt.item_width > 1 else names))
    return fields, storage


def _image_bytes(column: list[Any], key: str, where: str) -> list[bytes]:
    """The encoded frames of an image column (cells `{"bytes": ..., "path": ...}`); a path is never followed."""
    frames = []
    for i, cell in enumerate(column):
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise DatasetError(f"{where} frame {i}: image {key!r} has no bytes")
        frames.append(bytes(data))
    return frames


def _decode_video(path: Path, start: float, timestamps: np.ndarray, fps: float, shape: list[int],
                  where: str) -> np.ndarray:
    """Frames of `path` at `start + timestamps` (within half a frame), decoded with PyAV.

    The stream's frame size is checked against the feature's `shape` before anything is decoded.
    """
    import av

    tol = 0.5 / fps
    wanted = start + timestamps
    out: list[np.ndarray | None] = [None] * len(wanted)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video or container.streams.video[0].time_base is None:
                raise DatasetError(f"{where}: {path} holds no video stream")
            stream = container.streams.video[0]
            size = (stream.codec_context.height, stream.codec_context.width)
            if size != (shape[0], shape[1]):
                raise DatasetError(f"{where}: video {path} has {size[0]}x{size[1]} frames, expected "
                                   f"{shape[0]}x{shape[1]} (meta/info.json)")
            stream.thread_type = "AUTO"
            container.seek(int(max(start - tol, 0) / stream.time_base), stream=stream, backward=True)
            for frame in container.decode(stream):
                t = frame.time
                if t is None or t < wanted[0] - tol:
                    continue
                if t > wanted[-1] + tol:
                    break
                j = int(np.argmin(np.abs(wanted - t)))
                if abs(wanted[j] - t) <= tol and out[j] is None:
                    out[j] = frame.to_ndarray(format="rgb24")
    except (OSError, av.error.FFmpegError) as exc:
        raise DatasetError(f"{where}: video {path} cannot be decoded ({exc})") from None
    missing = [i for i, f in enumerate(out) if f is None]
    if missing:
        raise DatasetError(f"{where} frame {missing[0]}: no frame in video {path} at t={wanted[missing[0]]:.3f}s "
                           f"({len(missing)} of {len(wanted)} frames missing)")
    return np.stack(out)  # type: ignore[arg-type]


def _load(root: str, meta: dict[str, Any], robot: str, fields: list[Field], storage: dict[str, str],
          fps: float, data_path: str, video_path: str, language: str | None) -> Episode:
    """Read one episode's rows (and decode its images/videos); runs in a worker process."""
    base = Path(root)
    e = int(meta["episode_index"])
    relative = data_path.format(chunk_index=int(meta["data/chunk_index"]), file_index=int(meta["data/file_index"]))
    where = f"episode {e} ({relative})"
    file = confine(base, relative, where=f"{where}: data_path")
    keys = [f.key for f in fields if storage.get(f.key) != "video"]
    table = _read_parquet(file, columns=sorted({*keys, "timestamp", "episode_index"}),
                          filters=[("episode_index", "==", e)])
    if table.num_rows == 0:
        raise DatasetError(f"{where}: no rows with episode_index {e}")
    expected = meta.get("length")
    if expected is not None and int(expected) != table.num_rows:
        raise DatasetError(f"{where}: {table.num_rows} rows but meta/episodes lists length {expected}")
    timestamps = check_timestamps(table.column("timestamp").to_numpy(), where)
    arrays: dict[str, np.ndarray] = {}
    for f in fields:
        kind = storage.get(f.key)
        if kind == "video":
            if meta.get(f"videos/{f.key}/chunk_index") is None or meta.get(f"videos/{f.key}/file_index") is None:
                raise DatasetError(f"{where}: camera {f.key!r} has no video listed in meta/episodes")
            chunk, index = int(meta[f"videos/{f.key}/chunk_index"]), int(meta[f"videos/{f.key}/file_index"])
            video = confine(base, video_path.format(video_key=f.key, chunk_index=chunk, file_index=index),
                            where=f"{where}: camera {f.key!r} video_path")
            start = float(meta.get(f"videos/{f.key}/from_timestamp") or 0.0)
            arrays[f.key] = _decode_video(video, start, timestamps - timestamps[0], fps, f.shape, where)
        elif kind == "image":
            frames = _image_bytes(table.column(f.key).to_pylist(), f.key, where)
            arrays[f.key] = decode_images(frames, f.shape, f"{where}: image {f.key!r}")  # sizes checked first
        else:
            col = table.column(f.key).combine_chunks()
            if not _numeric(col.type):
                raise DatasetError(f"{where}: {f.key!r} has type {col.type}, expected numbers or lists of numbers")
            if hasattr(col, "flatten"):  # list column: every row must hold the feature's width
                import pyarrow.compute as pc

                sizes = pc.list_value_length(col).to_numpy(zero_copy_only=False)
                if (sizes != f.width).any():
                    frame = int(np.argmax(sizes != f.width))
                    raise DatasetError(f"{where} frame {frame}: {f.key!r} has {sizes[frame]} values, expected "
                                       f"{f.width} ({', '.join(f.items)})")
                values = col.flatten().to_numpy(zero_copy_only=False)
            else:
                values = col.to_numpy(zero_copy_only=False)
            arrays[f.key] = values.reshape(table.num_rows, -1).astype(np.float32)
    return episode_from_arrays(robot, fields, arrays, language, where)


def _numeric(typ: Any) -> bool:
    """An Arrow type of numbers, or of (fixed-size) lists of numbers."""
    import pyarrow as pa

    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        typ = typ.value_type
    return pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)


def _tasks(root: Path) -> dict[int, str]:
    path = confine(root, "meta/tasks.parquet", where="meta/tasks.parquet")
    if not path.is_file():
        return {}
    table = _read_parquet(path)
    text = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
    if text is None or "task_index" not in table.column_names:
        return {}
    return {i: t for i, t in zip(table.column("task_index").to_pylist(), table.column(text).to_pylist(), strict=True)
            if isinstance(t, str)}


def _check_episode_row(row: dict[str, Any], storage: dict[str, str], where: str) -> None:
    """One row of meta/episodes: integer indices, string tasks (a one-line error naming the row)."""
    def integer(key: str, required: bool) -> None:
        value = row.get(key)
        if value is None and not required:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DatasetError(f"{where}: {key!r} must be a non-negative integer, got {value!r}")

    for key in ("episode_index", "data/chunk_index", "data/file_index"):
        integer(key, True)
    integer("length", False)
    for key in storage:
        integer(f"videos/{key}/chunk_index", False)
        integer(f"videos/{key}/file_index", False)
        start = row.get(f"videos/{key}/from_timestamp")
        if start is not None and not (isinstance(start, (int, float)) and math.isfinite(start) and start >= 0):
            raise DatasetError(f"{where}: 'videos/{key}/from_timestamp' must be a non-negative number, got {start!r}")
    tasks = row.get("tasks")
    if tasks is not None and not (isinstance(tasks, list) and all(isinstance(t, str) for t in tasks)):
        raise DatasetError(f"{where}: 'tasks' must be a list of strings, got {tasks!r}")


def plan(path: Path, options: ImportOptions) -> ImportPlan:
    """Read `meta/` of a LeRobot v3.0 dataset folder."""
    import pyarrow as pa

    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a LeRobot dataset folder")
    info_file = confine(root, "meta/info.json", where=f"{root}: meta/info.json")
    info = read_json(info_file, "not a LeRobot dataset")
    fps = _check_info(info, info_file)
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise DatasetError(f"{info_file}: codebase_version {version!r}; only LeRobot v3.x datasets are supported "
                           "(convert older ones with LeRobot's convert_dataset_v21_to_v30)")
    if options.frequency and abs(options.frequency - fps) > 1e-6:
        raise ConfigError(f"--frequency {options.frequency:g}: a LeRobot dataset keeps its own rate ({fps:g} Hz)")
    fields, storage = _fields(info, options)
    if not fields:
        raise DatasetError(f"{info_file}: no features to import (use --map)")
    videos = [k for k, kind in storage.items() if kind == "video"]
    data_path = _check_template("data_path", info.get("data_path") or _DATA_PATH, info_file, [])
    video_path = _check_template("video_path", info.get("video_path") or _VIDEO_PATH, info_file, videos)
    meta_files = [check_confined(root, f, where=str(f.relative_to(root)))
                  for f in sorted((root / "meta" / "episodes").rglob("*.parquet"))]
    if not meta_files:
        raise DatasetError(f"{root / 'meta' / 'episodes'}: no episode metadata parquet files")
    wanted = {"episode_index", "tasks", "length", "data/chunk_index", "data/file_index"}
    for key in storage:
        wanted |= {f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")}
    tables = []
    for f in meta_files:
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(f).names
        except (OSError, pa.ArrowException) as exc:
            raise DatasetError(f"{f}: unreadable parquet file (truncated or corrupt: {exc})") from None
        tables.append(_read_parquet(f, columns=[c for c in names if c in wanted]).to_pylist())
    rows = [row for t in tables for row in t]
    for row in rows:
        _check_episode_row(row, storage, f"meta/episodes: episode_index {row.get('episode_index')!r}")
    episodes = sorted(rows, key=lambda r: int(r["episode_index"]))
    indices = [int(r["episode_index"]) for r in episodes]
    if len(set(indices)) != len(indices):
        dup = next(i for i, j in itertools.pairwise(indices) if i == j)
        raise DatasetError(f"meta/episodes: episode_index {dup} is listed twice")
    tasks = _tasks(root)
    robot = default_robot(options, info.get("robot_type"))
    sources = []
    any_language = options.language is not None
    for meta in episodes:
        ep_tasks = meta.get("tasks") or []
        language = "; ".join(ep_tasks) if ep_tasks else (tasks.get(0) if len(tasks) == 1 else None)
        language = language or options.language
        any_language |= language is not None
        load = functools.partial(_load, str(root), meta, robot, fields, storage, fps, data_path, video_path, language)
        length = meta.get("length")
        frames = functools.partial(int, length) if isinstance(length, int) and length > 0 else None
        sources.append(EpisodeSource(f"episode_index {int(meta['episode_index'])}", load, frames))
    layout = build_layout(robot, fields, any_language)
    return ImportPlan(layout, sources, fps, {"kind": "lerobot", "path": str(root.resolve()),
                                             "codebase_version": version, "robot_type": info.get("robot_type")})

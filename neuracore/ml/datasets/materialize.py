"""Episodes → one Arrow table (`save_to_disk`) + spec.json, written atomically."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.format import (
    DATA_DIR,
    IMAGE_ENCODINGS,
    SPEC_FILE,
    ColumnSpec,
    DatasetSpec,
    EpisodeSpec,
    column_name,
    dataset_path,
    encode_image,
    fingerprint_files,
    staging_prefix,
    sweep_abandoned,
)
from neuracore.ml.datasets.images import ImageProcessing, resize_frames
from neuracore.ml.datasets.statistics import RunningStats
from neuracore.ml.utils.atomic import replace_dir

logger = logging.getLogger(__name__)

# Every n-th frame of every episode feeds image statistics (images are large; stats converge fast).
_IMAGE_STATS_STRIDE = 5


@dataclass
class Episode:
    """One synchronised episode: `data[DataType][item]` is `[T]`, `[T, width]` or `[T, H, W, C]`."""

    robot: str
    data: dict[DataType, dict[str, np.ndarray]]
    language: str | None = None

    @property
    def length(self) -> int:
        """Frames in the episode (all streams have the same length)."""
        for items in self.data.values():
            for values in items.values():
                return len(values)
        return 0


@dataclass
class EpisodeSource:
    """An episode read lazily by `load()`: in a worker process when importing with several processes.

    `label` names where the episode comes from (file, folder) in errors and in the skipped list;
    `load` must be picklable (a module-level function or a `functools.partial` of one). `frames`,
    where an importer can tell from metadata alone, returns the episode's frame count (for the
    size estimate before an import; it may raise on a bad episode, which `load` then reports).
    """

    label: str
    load: Callable[[], Episode]
    frames: Callable[[], int] | None = None


@dataclass
class DatasetLayout:
    """What a dataset will hold, declared before writing: robots' items and image shapes."""

    robots: dict[str, dict[DataType, list[str]]]
    item_shapes: dict[DataType, dict[str, list[int]]] = field(default_factory=dict)  # images: [H, W, C]
    language_key: str = "instruction"
    image_encoding: str = "raw"  # RGB images: "raw" uint8, or "png"/"jpeg" bytes (decoded in loader workers)
    # Resize targets per camera column (`item_shapes` then holds the resized shapes) and JPEG quality.
    images: ImageProcessing = field(default_factory=ImageProcessing)

    def columns(self) -> dict[str, ColumnSpec]:
        """Arrow columns: union of items across robots for vectors, one column per camera otherwise."""
        if self.image_encoding not in IMAGE_ENCODINGS:
            raise ConfigError(f"image_encoding={self.image_encoding!r}; valid: {', '.join(IMAGE_ENCODINGS)}")
        vectors: dict[DataType, list[str]] = {}
        cameras: dict[DataType, list[str]] = {}
        for per_type in self.robots.values():
            for dt, items in per_type.items():
                target = vectors if dt.modality == Modality.VECTOR else cameras
                if dt.modality == Modality.LANGUAGE:
                    continue
                seen = target.setdefault(dt, [])
                seen.extend(i for i in items if i not in seen)
        out: dict[str, ColumnSpec] = {}
        for dt in DataType:
            if dt in vectors:
                out[column_name(dt)] = ColumnSpec(dt.value, vectors[dt], [dt.item_width], "float32")
            for cam in cameras.get(dt, []):
                shape = self.item_shapes.get(dt, {}).get(cam)
                if shape is None:
                    raise DatasetError(f"layout: no shape declared for {dt.value} item {cam!r}")
                dtype = "uint8" if dt == DataType.RGB_IMAGES else "float32"
                encoding = self.image_encoding if dt == DataType.RGB_IMAGES else "raw"
                out[column_name(dt, cam)] = ColumnSpec(dt.value, [cam], list(shape), dtype, encoding)
        return out


def _features(columns: dict[str, ColumnSpec]) -> Any:
    import datasets as hf

    feats = {
        "episode_index": hf.Value("int32"),
        "frame_index": hf.Value("int32"),
    }
    for name, col in columns.items():
        if col.encoding == "raw":
            feats[name] = hf.List(hf.Value(col.dtype), length=col.row_width)
        else:
            feats[name] = hf.Value("binary")
    return hf.Features(feats)


@dataclass
class _Rows:
    """One episode validated, resized and encoded: its column arrays and the rows its statistics take."""

    robot: str
    language: str | None
    arrays: dict[str, np.ndarray]
    stats: list[tuple[str, int, np.ndarray]]


def _episode_rows(
    episode: Episode, index: int, layout: DatasetLayout, columns: dict[str, ColumnSpec], label: str,
) -> _Rows:
    """Validate one episode, resize and encode its frames, and lay it out as column arrays `[T, row_width]`.

    Runs where the episode was read (a worker process with `workers` > 0). The statistics' rows
    are returned, not added: the parent adds them once the whole episode is valid, in episode
    order, so a skipped episode leaves none and any number of workers gives the same result.
    """
    where = f"episode {index}" + (f" ({label})" if label else "")
    if episode.robot not in layout.robots:
        raise DatasetError(f"{where}: robot {episode.robot!r} not in layout ({', '.join(layout.robots)})")
    length = episode.length
    if length == 0:
        raise DatasetError(f"{where}: empty episode (0 frames)")
    robot_items = layout.robots[episode.robot]
    pending_stats: list[tuple[str, int, np.ndarray]] = []
    out: dict[str, np.ndarray] = {
        "episode_index": np.zeros(length, np.int32),  # set by the parent: skipped episodes leave no gap
        "frame_index": np.arange(length, dtype=np.int32),
    }
    for name, col in columns.items():
        dt = DataType(col.data_type)
        have = robot_items.get(dt, [])
        given = episode.data.get(dt, {})
        width = int(np.prod(col.item_shape))
        vector = dt.modality == Modality.VECTOR
        # Image/point-cloud columns hold one camera: its frames are used as they are (no copy)
        # unless the robot lacks the camera, when the column is zero-filled.
        block = np.zeros((length, len(col.items), width), col.dtype) if vector or col.items[0] not in have else None
        for j, item in enumerate(col.items):
            if item not in have:
                continue  # another robot's item: zero-filled, masked out by the data spec
            if item not in given:
                raise DatasetError(f"{where}: {dt.value} item {item!r} of robot {episode.robot!r} is missing")
            values = np.asarray(given[item])
            if values.shape[0] != length:
                raise DatasetError(
                    f"{where}: {dt.value} item {item!r} has {values.shape[0]} frames, expected {length}"
                )
            if col.dtype == "uint8" and values.dtype != np.uint8:
                raise DatasetError(
                    f"{where}: {dt.value} item {item!r} has dtype {values.dtype}, expected uint8 "
                    "(0-255); convert float [0, 1] images with (x * 255).round().astype('uint8')"
                )
            if values.dtype.kind not in "biuf":
                raise DatasetError(f"{where}: {dt.value} item {item!r} holds {values.dtype} values, not numbers")
            target = layout.images.sizes.get(name)
            if target is not None and values.ndim == 4 and values.shape[-1] == col.item_shape[-1]:
                values = resize_frames(values, target, layout.images.mode)
            values = values.reshape(length, -1)
            if values.shape[1] != width:
                raise DatasetError(
                    f"{where}: {dt.value} item {item!r} has shape {list(np.asarray(given[item]).shape[1:])}"
                    f" per frame, expected {col.item_shape}"
                )
            # Every importer's frames pass here: checked as given and as stored (float32), so a float64
            # value too large for float32 is refused too, not written as Inf.
            for stored in (False, True):
                if stored:
                    with np.errstate(over="ignore", invalid="ignore"):
                        values = values.astype(col.dtype, copy=False)
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    frame = int(np.argwhere(~np.isfinite(values))[0][0])
                    problem = f"is too large for {col.dtype}" if stored else "is NaN or Inf"
                    raise DatasetError(f"{where} frame {frame}: {dt.value} item {item!r} {problem}")
            if block is None:
                block = np.ascontiguousarray(values, dtype=col.dtype)[:, None]
            else:
                block[:, j] = values
        assert block is not None
        if col.encoding == "raw":
            out[name] = block.reshape(length, -1)
        else:
            frames = block.reshape(length, *col.item_shape)
            quality = layout.images.jpeg_quality
            out[name] = np.array([encode_image(f, col.encoding, quality) for f in frames], dtype=object)
        if dt.modality == Modality.VECTOR:
            present = [j for j, item in enumerate(col.items) if item in have]
            for j in present:
                pending_stats.append((f"{name}/{col.items[j]}", width, block[:, j]))
        elif dt.modality == Modality.IMAGE and col.items[0] in have:
            channels = col.item_shape[-1]
            # Subsample frames and pixels before converting: statistics converge long before that.
            sub = block[::_IMAGE_STATS_STRIDE, 0].reshape(-1, channels)[::7].astype(np.float32)
            if col.dtype == "uint8":
                sub /= 255.0
            pending_stats.append((name, channels, sub))
    return _Rows(episode.robot, episode.language, out, pending_stats)


def _to_table(arrays: dict[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    """Column arrays `[T]`/`[T, width]` → an Arrow table with fixed-size-list columns."""
    columns = []
    for field_ in schema:
        values = arrays[field_.name]
        if values.dtype == object:  # encoded frames
            columns.append(pa.array(list(values), type=pa.binary()))
        elif values.ndim == 1:
            columns.append(pa.array(values, type=field_.type))
        else:
            flat = pa.array(values.reshape(-1), type=field_.type.value_type)
            columns.append(pa.FixedSizeListArray.from_arrays(flat, values.shape[1]))
    return pa.Table.from_arrays(columns, schema=schema)


_SHARD = "data-00000-of-00001.arrow"


def _to_saved_dataset(staging: Path, data_dir: Path) -> None:
    """Turn the staged Arrow file into a `save_to_disk` folder without copying the rows again.

    `save_to_disk` of an empty selection writes the folder's metadata (state.json,
    dataset_info.json) for one shard named `_SHARD`; the staged file becomes that shard. When a
    `datasets` version lays the folder out differently, the rows are copied by `save_to_disk`.
    """
    import datasets as hf

    staged = hf.Dataset.from_file(str(staging))
    scratch = data_dir.parent / "scratch"
    staged.select([]).save_to_disk(str(scratch))
    state = json.loads((scratch / "state.json").read_text())
    if state.get("_data_files") == [{"filename": _SHARD}]:
        data_dir.mkdir()
        for meta in ("state.json", "dataset_info.json"):
            os.replace(scratch / meta, data_dir / meta)
        del staged
        os.replace(staging, data_dir / _SHARD)
    else:
        staged.save_to_disk(str(data_dir))
        del staged
        staging.unlink()
    shutil.rmtree(scratch)


def _with_episode(message: str, index: int, label: str) -> str:
    """Prefix a reader's error with the episode's position, so every message names the episode."""
    if message.startswith("episode "):
        return message
    if label and message.startswith(label):
        return f"episode {index} ({label}){message[len(label):]}"
    return f"episode {index}" + (f" ({label})" if label else "") + f": {message}"


@contextlib.contextmanager
def _progress(name: str, total: int | None, enabled: bool) -> Iterator[Any]:
    """The import's progress bar: on a terminal only (a log gets the summary line instead), and erased
    when the import fails, so that a failure is exactly one line on stderr."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="episode", desc=f"import {name}", file=sys.stderr,
               disable=True if not enabled else None)  # None: shown on a terminal only
    try:
        yield bar
    except BaseException:
        bar.leave = False
        raise
    finally:
        bar.close()


def _read_rows(item: Episode | EpisodeSource, index: int, layout: DatasetLayout,
               columns: dict[str, ColumnSpec]) -> _Rows:
    """Read (if lazy), check, resize and encode one episode: the job of an import worker."""
    episode = item if isinstance(item, Episode) else item.load()
    return _episode_rows(episode, index, layout, columns, "" if isinstance(item, Episode) else item.label)


def _prepared(
    episodes: Iterable[Episode | EpisodeSource], workers: int, layout: DatasetLayout, columns: dict[str, ColumnSpec],
    start_method: str | None = None,
) -> Iterator[tuple[str, _Rows | BaseException]]:
    """(label, the episode's rows or the error reading/checking it), in input order.

    With `workers` > 0 each lazily read episode is read, resized and encoded in a worker process
    (the parent only writes rows and adds statistics); an `Episode` already in memory is
    prepared here. At most `2 * workers` episodes are in flight, so memory stays bounded by a
    few episodes.
    """
    if workers <= 0:
        for index, item in enumerate(episodes):
            label = "" if isinstance(item, Episode) else item.label
            try:
                yield label, _read_rows(item, index, layout, columns)
            except DatasetError as exc:
                yield label, exc
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # fork where available: workers start at once and need no importable __main__; loaders open
    # their own files, so nothing open in the parent is shared.
    # (`start_method="spawn"` for sources whose reading must not inherit the parent's state, e.g. a
    # renderer's GL context, which a forked child deadlocks on.)
    method = start_method or ("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        pending: deque[tuple[str, int, Any]] = deque()

        def drain_one() -> tuple[str, _Rows | BaseException]:
            label, index, job = pending.popleft()
            try:
                if isinstance(job, Episode):
                    return label, _read_rows(job, index, layout, columns)
                return label, job.result()
            except DatasetError as exc:
                return label, exc
            except BrokenProcessPool:  # a worker killed (the OOM killer, a signal): not skippable, the pool is gone
                raise DatasetError(f"{label}: the worker process reading this episode died (killed, e.g. by the "
                                   "out-of-memory killer); nothing was written; import with fewer --workers") from None

        try:
            for index, item in enumerate(episodes):
                if isinstance(item, Episode):
                    pending.append(("", index, item))
                else:
                    pending.append((item.label, index, pool.submit(_read_rows, item, index, layout, columns)))
                while len(pending) >= 2 * workers:
                    yield drain_one()
            while pending:
                yield drain_one()
        except BaseException:
            for _, _, job in pending:
                if not isinstance(job, Episode):
                    job.cancel()
            raise


def materialize(
    name: str,
    episodes: Iterable[Episode | EpisodeSource],
    layout: DatasetLayout,
    frequency: float,
    *,
    root: Path | None = None,
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
    skip_bad_episodes: bool = False,
    workers: int = 0,
    progress: bool = False,
    total: int | None = None,
    start_method: str | None = None,
) -> Path:
    """Write `episodes` as dataset `name`; atomic: on any failure nothing appears under the name.

    `episodes` holds `Episode`s or lazily read `EpisodeSource`s (read by `workers` processes when
    > 0). With `skip_bad_episodes` an episode that fails to read or validate is left out and
    listed in `spec.source["skipped_episodes"]`; otherwise its error (naming the episode, and
    the file and frame where known) aborts the import. `progress` shows a progress bar on a terminal.
    """
    import datasets as hf

    if not (isinstance(frequency, (int, float)) and np.isfinite(frequency) and frequency > 0):
        raise DatasetError(f"dataset {name!r}: frequency {frequency!r} Hz; must be a positive finite number")
    final = dataset_path(name, root)  # also finishes a replace of this name killed halfway
    if final.exists() and not overwrite:
        raise DatasetError(f"dataset {name!r} already exists at {final}; delete it or pass overwrite")
    if os.path.lexists(final.parent) and not final.parent.is_dir():
        raise DatasetError(f"{final.parent}: a file where the datasets folder should be; move it away or set "
                           "NEURACORE_HOME elsewhere")
    final.parent.mkdir(parents=True, exist_ok=True)
    columns = layout.columns()
    stats: dict[str, RunningStats] = {}
    episode_specs: list[EpisodeSpec] = []
    skipped: list[dict[str, Any]] = []

    sweep_abandoned(final.parent)  # what imports killed earlier left behind
    tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(name), dir=final.parent))
    tmp.chmod(0o755)
    try:
        features = _features(columns)
        schema = features.arrow_schema
        staging = tmp / "staging.arrow"
        start = 0
        # Episode by episode straight into one Arrow file: memory is bounded by a few episodes.
        with ArrowWriter(features=features, path=str(staging)) as writer, _progress(name, total, progress) as bar:
            for index, (label, rows) in enumerate(_prepared(episodes, workers, layout, columns, start_method)):
                bar.update(1)
                try:
                    if isinstance(rows, BaseException):
                        raise DatasetError(_with_episode(str(rows), index, label)) from None
                except DatasetError as exc:
                    if not skip_bad_episodes:
                        raise
                    logger.warning("skipping episode %d: %s", index, exc)
                    skipped.append({"index": index, "label": label, "error": str(exc)})
                    continue
                arrays = rows.arrays
                arrays["episode_index"][:] = len(episode_specs)
                for key, dim, values in rows.stats:
                    stats.setdefault(key, RunningStats(dim)).update(values)
                length = len(arrays["episode_index"])
                writer.write_table(_to_table(arrays, schema))
                episode_specs.append(EpisodeSpec(rows.robot, start, length, rows.language))
                start += length
                bar.set_postfix(frames=start, refresh=False)
            writer.finalize()
        if not episode_specs:
            detail = f" ({len(skipped)} skipped; first: {skipped[0]['error']})" if skipped else ""
            raise DatasetError(f"dataset {name!r}: no episodes to write{detail}")
        hf.disable_progress_bars()
        _to_saved_dataset(staging, tmp / DATA_DIR)
        statistics: dict[str, dict[str, dict[str, list[float]]]] = {}
        for key, running in stats.items():
            col, _, item = key.partition("/")
            spec_col = columns[col]
            result = running.result()
            if not all(np.isfinite(v).all() for v in result.values()):
                raise DatasetError(f"dataset {name!r}: statistics of {spec_col.data_type} item "
                                   f"{item or spec_col.items[0]!r} are not finite (values too large)")
            statistics.setdefault(spec_col.data_type, {})[item or spec_col.items[0]] = result
        source = dict(source or {})
        if skip_bad_episodes:
            source["skipped_episodes"] = skipped
        spec = DatasetSpec(
            name=name,
            frequency=float(frequency),
            robots={r: {dt.value: list(items) for dt, items in d.items()} for r, d in layout.robots.items()},
            columns=columns,
            episodes=episode_specs,
            statistics=statistics,
            fingerprint=fingerprint_files(tmp / DATA_DIR),
            source=source,
        )
        (tmp / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=1))
        # On overwrite the old dataset stays under the name until the new one takes its place.
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        hf.enable_progress_bars()
    logger.info("materialised dataset %r: %d episodes, %d frames at %s", name, len(episode_specs),
                sum(e.length for e in episode_specs), final)
    return final

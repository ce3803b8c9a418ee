"""Episodes → one Arrow table (`save_to_disk`) + spec.json, written atomically."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import DatasetError
from neuracore.ml.datasets.format import (
    DATA_DIR,
    SPEC_FILE,
    ColumnSpec,
    DatasetSpec,
    EpisodeSpec,
    column_name,
    dataset_path,
    fingerprint_files,
)
from neuracore.ml.datasets.statistics import RunningStats

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
class DatasetLayout:
    """What a dataset will hold, declared before writing: robots' items and image shapes."""

    robots: dict[str, dict[DataType, list[str]]]
    item_shapes: dict[DataType, dict[str, list[int]]] = field(default_factory=dict)  # images: [H, W, C]
    language_key: str = "instruction"

    def columns(self) -> dict[str, ColumnSpec]:
        """Arrow columns: union of items across robots for vectors, one column per camera otherwise."""
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
                out[column_name(dt, cam)] = ColumnSpec(dt.value, [cam], list(shape), dtype)
        return out


def _features(columns: dict[str, ColumnSpec]) -> Any:
    import datasets as hf

    feats = {
        "episode_index": hf.Value("int32"),
        "frame_index": hf.Value("int32"),
    }
    for name, col in columns.items():
        feats[name] = hf.List(hf.Value(col.dtype), length=col.row_width)
    return hf.Features(feats)


def _episode_rows(
    episode: Episode, index: int, layout: DatasetLayout, columns: dict[str, ColumnSpec],
    stats: dict[str, RunningStats],
) -> dict[str, np.ndarray]:
    """Validate one episode and lay it out as column arrays `[T, row_width]`."""
    if episode.robot not in layout.robots:
        raise DatasetError(f"episode {index}: robot {episode.robot!r} not in layout ({', '.join(layout.robots)})")
    length = episode.length
    if length == 0:
        raise DatasetError(f"episode {index}: empty episode (0 frames)")
    robot_items = layout.robots[episode.robot]
    out: dict[str, np.ndarray] = {
        "episode_index": np.full(length, index, np.int32),
        "frame_index": np.arange(length, dtype=np.int32),
    }
    for name, col in columns.items():
        dt = DataType(col.data_type)
        have = robot_items.get(dt, [])
        given = episode.data.get(dt, {})
        width = int(np.prod(col.item_shape))
        block = np.zeros((length, len(col.items) if dt.modality == Modality.VECTOR else 1, width), col.dtype)
        for j, item in enumerate(col.items):
            if item not in have:
                continue  # another robot's item: zero-filled, masked out by the data spec
            if item not in given:
                raise DatasetError(f"episode {index}: {dt.value} item {item!r} of robot {episode.robot!r} is missing")
            values = np.asarray(given[item])
            if values.shape[0] != length:
                raise DatasetError(
                    f"episode {index}: {dt.value} item {item!r} has {values.shape[0]} frames, expected {length}"
                )
            if col.dtype == "uint8" and values.dtype != np.uint8:
                raise DatasetError(
                    f"episode {index}: {dt.value} item {item!r} has dtype {values.dtype}, expected uint8 "
                    "(0-255); convert float [0, 1] images with (x * 255).round().astype('uint8')"
                )
            values = values.reshape(length, -1)
            if values.shape[1] != width:
                raise DatasetError(
                    f"episode {index}: {dt.value} item {item!r} has shape {list(np.asarray(given[item]).shape[1:])}"
                    f" per frame, expected {col.item_shape}"
                )
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                frame = int(np.argwhere(~np.isfinite(values))[0][0])
                raise DatasetError(f"episode {index} frame {frame}: {dt.value} item {item!r} is NaN or Inf")
            block[:, j if dt.modality == Modality.VECTOR else 0] = values
        flat = block.reshape(length, -1)
        out[name] = flat
        if dt.modality == Modality.VECTOR:
            present = [j for j, item in enumerate(col.items) if item in have]
            for j in present:
                stats.setdefault(f"{name}/{col.items[j]}", RunningStats(width)).update(block[:, j])
        elif dt.modality == Modality.IMAGE and col.items[0] in have:
            sub = block[::_IMAGE_STATS_STRIDE, 0].reshape(-1, *col.item_shape).astype(np.float32)
            if col.dtype == "uint8":
                sub /= 255.0
            channels = col.item_shape[-1]
            stats.setdefault(name, RunningStats(channels)).update(sub.reshape(-1, channels)[::7])
    return out


def _to_table(arrays: dict[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    """Column arrays `[T]`/`[T, width]` → an Arrow table with fixed-size-list columns."""
    columns = []
    for field_ in schema:
        values = arrays[field_.name]
        if values.ndim == 1:
            columns.append(pa.array(values, type=field_.type))
        else:
            flat = pa.array(values.reshape(-1), type=field_.type.value_type)
            columns.append(pa.FixedSizeListArray.from_arrays(flat, values.shape[1]))
    return pa.Table.from_arrays(columns, schema=schema)


def materialize(
    name: str,
    episodes: Iterable[Episode],
    layout: DatasetLayout,
    frequency: float,
    *,
    root: Path | None = None,
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write `episodes` as dataset `name`; atomic: on any failure nothing appears under the name."""
    import datasets as hf

    final = dataset_path(name, root)
    if final.exists() and not overwrite:
        raise DatasetError(f"dataset {name!r} already exists at {final}; delete it or pass overwrite")
    final.parent.mkdir(parents=True, exist_ok=True)
    columns = layout.columns()
    stats: dict[str, RunningStats] = {}
    episode_specs: list[EpisodeSpec] = []

    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=final.parent))
    tmp.chmod(0o755)
    try:
        features = _features(columns)
        schema = features.arrow_schema
        staging = tmp / "staging.arrow"
        start = 0
        # Episode by episode straight into one Arrow file: memory is bounded by one episode.
        with ArrowWriter(features=features, path=str(staging)) as writer:
            for index, episode in enumerate(episodes):
                arrays = _episode_rows(episode, index, layout, columns, stats)
                length = len(arrays["episode_index"])
                writer.write_table(_to_table(arrays, schema))
                episode_specs.append(EpisodeSpec(episode.robot, start, length, episode.language))
                start += length
            writer.finalize()
        if not episode_specs:
            raise DatasetError(f"dataset {name!r}: no episodes to write")
        hf.disable_progress_bars()
        staged = hf.Dataset.from_file(str(staging))
        staged.save_to_disk(str(tmp / DATA_DIR))
        del staged
        staging.unlink()
        statistics: dict[str, dict[str, dict[str, list[float]]]] = {}
        for key, running in stats.items():
            col, _, item = key.partition("/")
            spec_col = columns[col]
            statistics.setdefault(spec_col.data_type, {})[item or spec_col.items[0]] = running.result()
        spec = DatasetSpec(
            name=name,
            frequency=float(frequency),
            robots={r: {dt.value: list(items) for dt, items in d.items()} for r, d in layout.robots.items()},
            columns=columns,
            episodes=episode_specs,
            statistics=statistics,
            fingerprint=fingerprint_files(tmp / DATA_DIR),
            source=source or {},
        )
        (tmp / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        hf.enable_progress_bars()
    logger.info("materialised dataset %r: %d episodes, %d frames at %s", name, len(episode_specs),
                sum(e.length for e in episode_specs), final)
    return final

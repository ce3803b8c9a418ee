"""`stats`: recompute a dataset's statistics (mean, std, min, max, q01, q99) from its Arrow table.

The statistics are those an import computes (`materialize` + `statistics.RunningStats`), over the
same rows in the same order, so an unchanged dataset recomputes to exactly its stored values:

- vectors: every frame of every episode whose robot has the item, per item (`[width]` values);
- images: every 5th frame of each episode, every 7th pixel of those, per channel, uint8 scaled
  to [0, 1] (encoded frames are decoded for this; nothing is re-encoded);
- mean/std/min/max are exact over those rows; q01/q99 are exact while an item has at most
  `RunningStats`' reservoir of 20,000 rows (plus the last episode that filled it) and otherwise
  come from that bounded, roughly uniform reservoir sample (a streaming approximation).

`--write` replaces `spec.json` atomically. The dataset's fingerprint covers the Arrow files only
(`format.fingerprint_files`), not the statistics, so it is unchanged by a rewrite of statistics;
the rewrite is recorded in `spec.source["statistics"]`.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import DatasetError
from neuracore.ml.datasets.format import SPEC_FILE, ColumnSpec, DatasetSpec, decode_images, open_dataset
from neuracore.ml.datasets.materialize import _IMAGE_STATS_STRIDE
from neuracore.ml.datasets.statistics import _RESERVOIR, RunningStats
from neuracore.ml.utils.atomic import write_text_atomic

STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")
_DECODE_THREADS = 4  # threads decoding sampled JPEG/PNG frames for image statistics
PIXEL_STRIDE = 7  # every 7th pixel of the sampled frames, as `materialize` takes them
QUANTILE_NOTE = (f"q01/q99 exact up to {_RESERVOIR} rows per item, else from a {_RESERVOIR}-row reservoir sample; "
                 f"images: every {_IMAGE_STATS_STRIDE}th frame, every {PIXEL_STRIDE}th pixel")

Statistics = dict[str, dict[str, dict[str, list[float]]]]


class _Rows:
    """Rows of a fixed-size-list column as numpy, gathered chunk by chunk from zero-copy views.

    `ChunkedArray.take` would first concatenate every chunk of the (memory-mapped) column.
    """

    def __init__(self, column: pa.ChunkedArray, width: int) -> None:
        self._views = [c.flatten().to_numpy(zero_copy_only=False).reshape(len(c), width) for c in column.chunks]
        self._ends = np.cumsum([len(c) for c in column.chunks])

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """`[len(rows), width]` values (the column's dtype) of the ascending table rows `rows`."""
        chunk = np.searchsorted(self._ends, rows, side="right")
        parts = []
        for c in np.unique(chunk):
            local = rows[chunk == c] - (self._ends[c] - len(self._views[c]))
            parts.append(self._views[c][local])
        return np.concatenate(parts) if len(parts) != 1 else parts[0]


def _encoded_rows(column: pa.ChunkedArray, rows: np.ndarray) -> list[bytes]:
    """Encoded frames (bytes) of the ascending table rows `rows`, taken per chunk."""
    ends = np.cumsum([len(c) for c in column.chunks])
    chunk = np.searchsorted(ends, rows, side="right")
    out: list[bytes] = []
    for c in np.unique(chunk):
        local = rows[chunk == c] - (ends[c] - len(column.chunks[c]))
        out.extend(column.chunks[c].take(pa.array(local)).to_pylist())
    return out


def _sampled_frames(table: pa.Table, spec: DatasetSpec, name: str, col: ColumnSpec) -> Iterator[np.ndarray]:
    """Every `_IMAGE_STATS_STRIDE`-th frame of each episode that has the camera, one episode at a time, in order.

    Encoded frames are decoded by a few threads (Pillow decodes without the GIL), at most
    `2 * threads` episodes ahead, so memory stays bounded by a few episodes' sampled frames.
    """
    dt = DataType(col.data_type)
    episodes = [(i, ep) for i, ep in enumerate(spec.episodes) if col.items[0] in spec.robots[ep.robot].get(dt.value, [])]
    rows = [ep.start + np.arange(0, ep.length, _IMAGE_STATS_STRIDE) for _, ep in episodes]
    if col.encoding == "raw":
        read = _Rows(table.column(name), int(np.prod(col.item_shape)))
        for r in rows:
            yield read(r)
        return
    column = table.column(name)

    def decode(job: int) -> np.ndarray:
        where = f"dataset {spec.name!r} column {name!r} episode {episodes[job][0]}"
        return decode_images(_encoded_rows(column, rows[job]), col.item_shape, where)

    threads = max(1, min(_DECODE_THREADS, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[np.ndarray]] = deque()
        for job in range(len(episodes)):
            pending.append(pool.submit(decode, job))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def compute_statistics(table: pa.Table, spec: DatasetSpec) -> Statistics:
    """Statistics of every stored item, `{DataType: {item: {mean, std, min, max, q01, q99}}}`, as import gives them.

    Memory: one vector column at a time and a few episodes' sampled frames of one camera.
    """
    stats: dict[str, RunningStats] = {}
    order: list[str] = []  # keys in the order an import first meets them (episode, then column order)
    for ep in spec.episodes:
        robot_items = spec.robots[ep.robot]
        for name, col in spec.columns.items():
            dt = DataType(col.data_type)
            have = robot_items.get(dt.value, [])
            if dt.modality == Modality.VECTOR:
                order.extend(f"{name}/{item}" for item in col.items if item in have)
            elif dt.modality == Modality.IMAGE and col.items[0] in have:
                order.append(name)
    for name, col in spec.columns.items():
        dt = DataType(col.data_type)
        if dt.modality not in (Modality.VECTOR, Modality.IMAGE):
            continue  # point clouds have no statistics (as on import)
        width = int(np.prod(col.item_shape))
        if dt.modality == Modality.VECTOR:
            values = _Rows(table.column(name), col.row_width)(np.arange(table.num_rows))
            values = values.reshape(table.num_rows, len(col.items), width)
            for ep in spec.episodes:
                have = spec.robots[ep.robot].get(dt.value, [])
                block = values[ep.start:ep.start + ep.length]
                for j, item in enumerate(col.items):
                    if item in have:
                        stats.setdefault(f"{name}/{item}", RunningStats(width)).update(block[:, j])
            continue
        channels = col.item_shape[-1]
        for frames in _sampled_frames(table, spec, name, col):  # in episode order: the import's update sequence
            sub = frames.reshape(-1, channels)[::PIXEL_STRIDE].astype(np.float32)
            if col.dtype == "uint8":
                sub /= 255.0
            stats.setdefault(name, RunningStats(channels)).update(sub)
    out: Statistics = {}
    for key in dict.fromkeys(order):
        name, _, item = key.partition("/")
        col = spec.columns[name]
        result = stats[key].result()
        if not all(np.isfinite(v).all() for v in result.values()):
            raise DatasetError(f"dataset {spec.name!r}: statistics of {col.data_type} item "
                               f"{item or col.items[0]!r} are not finite (values too large)")
        out.setdefault(col.data_type, {})[item or col.items[0]] = result
    return out


def differences(stored: Statistics, fresh: Statistics) -> list[dict[str, Any]]:
    """Per DataType/item, what differs between stored and recomputed statistics (largest |difference| per stat)."""
    out: list[dict[str, Any]] = []
    for dt in dict.fromkeys([*fresh, *stored]):
        for item in dict.fromkeys([*fresh.get(dt, {}), *stored.get(dt, {})]):
            old, new = stored.get(dt, {}).get(item), fresh.get(dt, {}).get(item)
            if old is None or new is None:
                out.append({"data_type": dt, "item": item, "change": "added" if old is None else "removed"})
                continue
            delta: dict[str, float] = {}
            for stat in STAT_NAMES:
                a, b = old.get(stat), new.get(stat)
                if a is None or len(a) != len(b):
                    delta[stat] = float("inf")
                else:
                    d = float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                    if d > 0:
                        delta[stat] = d
            if delta:
                out.append({"data_type": dt, "item": item, "change": "changed", "max_abs_difference": delta})
    return out


def dataset_statistics(name: str, *, write: bool = False, root: Path | None = None) -> dict[str, Any]:
    """Recompute dataset `name`'s statistics; with `write`, replace those in its spec.json (atomically).

    Returns `{"name", "path", "frames", "statistics", "differences", "written", "note"}`.
    """
    ds = open_dataset(name, root)
    fresh = compute_statistics(ds.table, ds.spec)
    diff = differences(ds.spec.statistics, fresh)
    written = False
    if write and diff:
        data = json.loads((ds.path / SPEC_FILE).read_text())
        if data.get("fingerprint") != ds.spec.fingerprint:  # replaced (e.g. re-imported) while we computed
            raise DatasetError(f"dataset {name!r} changed while its statistics were computed; run stats again")
        data["statistics"] = fresh
        data.setdefault("source", {})["statistics"] = {"recomputed_by": "tools/dataset.py stats --write",
                                                       "changed_items": len(diff)}
        DatasetSpec.from_json(data)  # still a valid spec (raises on a bug, never writes a broken one)
        write_text_atomic(ds.path / SPEC_FILE, json.dumps(data, indent=1))
        written = True
    return {"name": name, "path": str(ds.path), "frames": ds.spec.num_frames, "statistics": fresh,
            "differences": diff, "written": written, "note": QUANTILE_NOTE}


__all__ = ["QUANTILE_NOTE", "STAT_NAMES", "compute_statistics", "dataset_statistics", "differences"]

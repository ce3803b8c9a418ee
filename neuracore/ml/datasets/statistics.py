"""Streaming per-item statistics: mean, std, min, max and q01/q99 from a bounded subsample.

Also the statistics of relative (delta) actions over training windows (`relative_statistics`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.relative_actions import RelativePair, window_steps

_RESERVOIR = 20_000


class RunningStats:
    """Accumulates statistics over rows of shape [N, D] without keeping all rows."""

    def __init__(self, dim: int, seed: int = 0) -> None:
        self.count = 0
        self.sum = np.zeros(dim, np.float64)
        self.sumsq = np.zeros(dim, np.float64)
        self.min = np.full(dim, np.inf)
        self.max = np.full(dim, -np.inf)
        self._reservoir: list[np.ndarray] = []
        self._reservoir_rows = 0
        self._rng = np.random.default_rng(seed)

    def update(self, rows: np.ndarray) -> None:
        """Add rows `[N, D]`."""
        if len(rows) == 0:
            return
        # A copy: the reservoir keeps rows, and must not alias (or later overwrite) the caller's array.
        rows = np.array(rows, dtype=np.float64, copy=True).reshape(len(rows), -1)
        self.count += len(rows)
        self.sum += rows.sum(0)
        self.sumsq += np.square(rows).sum(0)
        self.min = np.minimum(self.min, rows.min(0))
        self.max = np.maximum(self.max, rows.max(0))
        if self._reservoir_rows < _RESERVOIR:
            self._reservoir.append(rows)
            self._reservoir_rows += len(rows)
        else:  # keep a bounded, roughly uniform subsample for the quantiles
            keep = self._rng.random(len(rows)) < _RESERVOIR / max(self.count, 1)
            if keep.any():
                idx = self._rng.integers(0, len(self._reservoir), size=int(keep.sum()))
                for i, row in zip(idx, rows[keep]):
                    block = self._reservoir[i]
                    block[self._rng.integers(0, len(block))] = row

    def result(self) -> dict[str, list[float]]:
        """mean, std, min, max, q01, q99 as lists (zeros when nothing was seen)."""
        if self.count == 0:
            zeros = [0.0] * len(self.sum)
            return {k: zeros for k in ("mean", "std", "min", "max", "q01", "q99")}
        mean = self.sum / self.count
        std = np.sqrt(np.maximum(self.sumsq / self.count - np.square(mean), 0.0))
        sample = np.concatenate(self._reservoir, 0)
        q01, q99 = np.quantile(sample, [0.01, 0.99], axis=0)
        return {
            "mean": mean.tolist(),
            "std": std.tolist(),
            "min": self.min.tolist(),
            "max": self.max.tolist(),
            "q01": np.asarray(q01).tolist(),
            "q99": np.asarray(q99).tolist(),
        }


# Relative actions: at most this many training windows feed the delta statistics (sampled with a
# fixed seed above it), read in blocks of at most _DELTA_BLOCK_ROWS target rows.
MAX_DELTA_WINDOWS = 20_000
_DELTA_BLOCK_ROWS = 1 << 18


class _VectorRows:
    """Gathers rows of a fixed-width vector column chunk by chunk, from zero-copy views of the table.

    Arrow's `ChunkedArray.take` concatenates every chunk first (measured with pyarrow 26 on a 2 GB
    column of 200 chunks: 18 s and a second 2 GB copy per call); here each chunk is a numpy view of
    the memory-mapped table and only the requested rows are copied.
    """

    def __init__(self, table: Any, column: str, width: int, value_index: np.ndarray) -> None:
        chunks = table.column(column).chunks
        self._views = [c.flatten().to_numpy(zero_copy_only=False).reshape(len(c), width) for c in chunks]
        self._ends = np.cumsum([len(c) for c in chunks])
        self._index = np.asarray(value_index)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """`[len(rows), len(value_index)]` float32 values of table rows `rows`."""
        out = np.empty((len(rows), len(self._index)), np.float32)
        chunk = np.searchsorted(self._ends, rows, side="right")
        order = np.argsort(chunk, kind="stable")
        touched, first = np.unique(chunk[order], return_index=True)
        for c, lo, hi in zip(touched, first, [*first[1:], len(order)]):
            picked = order[lo:hi]
            local = rows[picked] - (self._ends[c] - len(self._views[c]))
            out[picked] = self._views[c][local][:, self._index]
        return out


def _sample_windows(lengths: np.ndarray, max_windows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(episode position, frame t) of every window, or of `max_windows` drawn without replacement; shuffled."""
    total = int(lengths.sum())
    rng = np.random.default_rng(seed)
    flat = rng.permutation(total) if total <= max_windows else rng.choice(total, size=max_windows, replace=False)
    ends = np.cumsum(lengths)
    episode = np.searchsorted(ends, flat, side="right")
    return episode, flat - (ends[episode] - lengths[episode])


def relative_statistics(
    dataset: Any, inputs: dict, outputs: dict, pairs: Sequence[RelativePair], episodes: Sequence[int],
    horizon: int, max_windows: int = MAX_DELTA_WINDOWS, seed: int = 0,
) -> dict[DataType, dict[str, list[float]]]:
    """Statistics (mean, std, min, max, q01, q99, as `RunningStats` gives them) of each pair's deltas.

    The deltas are `target[t + k] - state[t]` of the pair's items over the training windows of
    `episodes` (every t of every episode; every k < `horizon`, padding steps excluded), computed in
    float32 exactly as `WindowDataset` serves them. Vectorised numpy over blocks of windows read with
    zero-copy views of the memory-mapped columns, so memory is bounded by the block size, not by the
    dataset. With more than `max_windows` windows, `max_windows` of them are drawn without
    replacement with the fixed `seed` (mean/std/min/max are then those of the sample). Windows are
    visited in a seeded random order, so the quantiles' bounded subsample is uniform over them.
    Returns per output DataType the statistics of `pair.items` (one value per item).
    """
    eps = [dataset.spec.episodes[e] for e in episodes]
    if not eps:
        return {}
    lengths = np.array([e.length for e in eps], np.int64)
    starts = np.array([e.start for e in eps], np.int64)
    episode, t = _sample_windows(lengths, max_windows, seed)
    window_rows, window_ends = starts[episode] + t, starts[episode] + lengths[episode]
    block = max(1, _DELTA_BLOCK_ROWS // max(horizon, 1))
    widths = {name: col.row_width for name, col in dataset.spec.columns.items()}
    result: dict[DataType, dict[str, list[float]]] = {}
    for pair in pairs:
        target, state = outputs[pair.output], inputs[pair.input]
        target_index = target.value_index[list(pair.output_index)]
        state_index = state.value_index[list(pair.input_index)]
        read_goal = _VectorRows(dataset.table, target.columns[0], widths[target.columns[0]], target_index)
        read_state = _VectorRows(dataset.table, state.columns[0], widths[state.columns[0]], state_index)
        stats = RunningStats(len(pair.items), seed)
        for lo in range(0, len(window_rows), block):
            rows, ends = window_rows[lo:lo + block], window_ends[lo:lo + block]
            target_rows, window = window_steps(rows, ends, horizon)
            stats.update(read_goal(target_rows) - read_state(rows)[window])
        result[pair.output] = stats.result()
    return result

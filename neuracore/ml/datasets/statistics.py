"""Streaming per-item statistics: mean, std, min, max and q01/q99 from a bounded subsample."""

from __future__ import annotations

import numpy as np

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

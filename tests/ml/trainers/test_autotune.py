"""The batch-size search against a simulated memory limit, and the effective-batch arithmetic."""

from __future__ import annotations

import math

import pytest

from neuracore.ml.core.errors import ConfigError
from neuracore.ml.trainers.autotune import BatchSizeSearch, Probe, _gpu_search, plan_effective_batch


def _run(limit: int, cap: int = 4096) -> tuple[int, list[int]]:
    tried: list[int] = []

    def probe(size: int) -> Probe:
        tried.append(size)
        return Probe(size, size <= limit, size * 1000, 0.0)

    return _gpu_search(BatchSizeSearch(start=32, cap=cap), probe), tried


@pytest.mark.parametrize("limit", [1, 7, 31, 32, 33, 100, 257, 1000, 3000])
def test_search_finds_within_ten_percent_in_logarithmic_probes(limit: int) -> None:
    chosen, tried = _run(limit)
    assert chosen <= limit, "never choose a size that failed"
    assert chosen >= 0.9 * limit, (chosen, limit)
    assert len(tried) <= 2 * math.ceil(math.log2(limit + 1)) + 4, tried
    assert len(set(tried)) == len(tried), f"a size was probed twice: {tried}"


def test_search_stops_at_the_cap_without_failures() -> None:
    chosen, tried = _run(limit=10_000, cap=100)
    assert chosen == 100
    assert tried == [32, 64, 100]


def test_nothing_fits_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="not even 1 sample per device fits"):
        _run(limit=0)


@pytest.mark.parametrize(
    "effective, per_device_max, processes, expected",
    [
        (256, 64, 2, (64, 2)),  # 64 x 2 x 2
        (256, 300, 2, (128, 1)),  # fits without accumulation
        (96, 40, 1, (32, 3)),  # 40 does not divide 96: next divisor below
        (7, 3, 1, (1, 7)),  # prime: one sample per micro-batch
        (12, 5, 3, (4, 1)),
    ],
)
def test_effective_batch_arithmetic(effective, per_device_max, processes, expected) -> None:
    per_device, accumulation = plan_effective_batch(effective, per_device_max, processes)
    assert (per_device, accumulation) == expected
    assert per_device * processes * accumulation == effective
    assert per_device <= per_device_max


def test_effective_batch_must_split_over_processes() -> None:
    with pytest.raises(ConfigError, match="effective_batch_size=10: must be a multiple of the number of processes"):
        plan_effective_batch(10, 8, 3)

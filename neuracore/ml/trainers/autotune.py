"""`batch_size=auto`: real training-step probes inside the training process, agreed by all ranks.

On a GPU the search grows the per-device batch geometrically until the first out-of-memory (or a
probe whose peak memory crosses the safety margin, or the cap), then bisects between the last fit
and the first failure. It runs under `accelerate.utils.find_executable_batch_size`, whose
reduction function is the bisection. A failure on any rank fails the probe on every rank, so all
ranks shrink together and end with the same size. On CPU (and MPS) memory is rarely the limit:
the search grows while throughput improves, the host-memory estimate fits and a step stays within
the time budget, and picks the fastest size.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import torch
from accelerate import Accelerator
from accelerate.utils import find_executable_batch_size
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size

from neuracore.ml.core.errors import ConfigError
from neuracore.ml.trainers.accelerator import core_model

logger = logging.getLogger(__name__)

class ProbeOutOfMemory(RuntimeError):
    """A probe did not fit on some rank (message matches accelerate's out-of-memory detection)."""


@dataclass
class Probe:
    """One probe: size, outcome, peak memory and duration."""

    batch_size: int
    fits: bool
    peak_bytes: int | None
    seconds: float
    note: str = ""


@dataclass
class AutotuneResult:
    """The chosen per-device batch size and how it was found."""

    batch_size: int
    probes: list[Probe] = field(default_factory=list)
    seconds: float = 0.0
    limit_bytes: int | None = None
    largest_failure: int | None = None


class BatchSizeSearch:
    """Geometric growth to the first failure or the cap, then bisection to within `tolerance`."""

    def __init__(self, start: int, cap: int, tolerance: float = 0.05, growth: int = 2) -> None:
        self.cap = max(int(cap), 1)
        self.start = min(max(int(start), 1), self.cap)
        self.tolerance = tolerance
        self.growth = growth
        self.best = 0  # largest size that fitted
        self.failed: int | None = None  # smallest size that failed

    def record(self, size: int, fits: bool) -> None:
        """Remember the outcome of a probe."""
        if fits:
            self.best = max(self.best, size)
        else:
            self.failed = size if self.failed is None else min(self.failed, size)

    def next_size(self) -> int | None:
        """The next size to probe, or None when the search is over."""
        if self.failed is None:
            if self.best >= self.cap:
                return None
            return min(self.best * self.growth if self.best else self.start, self.cap)
        gap = self.failed - self.best
        if gap <= max(1, math.floor(self.best * self.tolerance)):
            return None
        return self.best + gap // 2

    def after_failure(self) -> int:
        """`find_executable_batch_size`'s reduction: the next (smaller) size, 0 when nothing fits."""
        nxt = self.next_size()
        return 0 if nxt is None and self.best == 0 else (nxt if nxt is not None else self.best)


def _snapshot(model: torch.nn.Module, optimizers: list[Any]) -> dict[str, Any]:
    state = {
        "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "optimizers": [copy.deepcopy(o.state_dict()) for o in optimizers],
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore(model: torch.nn.Module, optimizers: list[Any], state: dict[str, Any]) -> None:
    model.load_state_dict(state["model"])
    for optimizer, saved in zip(optimizers, state["optimizers"]):
        optimizer.load_state_dict(saved)
        optimizer.zero_grad(set_to_none=True)
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def autotune_batch_size(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizers: list[Any],
    make_batch: Callable[[int], dict[str, Any]],
    cap: int,
    max_grad_norm: float | None,
    memory_margin: float = 0.10,
    cpu_max_step_seconds: float = 2.0,
    cpu_time_budget_s: float = 60.0,
    strategy: str = "auto",
    start: int | None = None,
    simulated_limit: int | None = None,
) -> AutotuneResult:
    """Find the per-device batch size with real training steps on real batches (see module doc).

    Model weights, optimizer state and RNG states are restored afterwards, so the run that follows
    is the same as with a fixed batch size. `simulated_limit` makes probes above that many samples
    fail as if out of memory (`tools/benchmark.py autotune --simulate-limit`).
    """
    started = time.perf_counter()
    device = accelerator.device
    on_gpu = device.type in ("cuda", "xpu")
    fake_limit = simulated_limit
    limit = None
    if device.type == "cuda":
        limit = int(torch.cuda.get_device_properties(device).total_memory * (1.0 - memory_margin))
    elif not on_gpu:
        limit = int(psutil.virtual_memory().available * (1.0 - memory_margin))
    saved = _snapshot(core_model(accelerator, model), optimizers)
    probes: list[Probe] = []
    memory_search = strategy == "memory" or (strategy == "auto" and on_gpu)
    search = BatchSizeSearch(start=start or (32 if memory_search else 8), cap=cap)

    def probe(size: int) -> Probe:
        """One full training step at `size`; never raises for OOM (the outcome is agreed instead)."""
        fits, note, peak = True, "", None
        rss_before = psutil.Process().memory_info().rss
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        try:
            batch = make_batch(size)
            model.train()
            # no_sync: a rank that runs out of memory mid-backward must not leave the others
            # waiting in a gradient all-reduce; the outcome is agreed right after instead.
            with accelerator.no_sync(model):
                losses = model(batch)
                accelerator.backward(losses["loss"])
                if fake_limit is not None and size > fake_limit:  # as if backward had run out
                    raise ProbeOutOfMemory(f"simulated out of memory. (above {fake_limit} on this rank)")
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or float("inf"))
            for optimizer in optimizers:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                peak = torch.cuda.max_memory_allocated(device)
            else:
                peak = max(psutil.Process().memory_info().rss - rss_before, 0)
            if limit is not None and device.type == "cuda" and peak > limit:
                fits, note = False, f"peak above the {memory_margin:.0%} safety margin"
        except Exception as exc:  # only out-of-memory is a probe outcome; anything else is re-raised
            if not (isinstance(exc, ProbeOutOfMemory) or should_reduce_batch_size(exc)):
                raise
            fits, note = False, "out of memory"
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        # All ranks agree: one failure fails the probe everywhere.
        failures = accelerator.reduce(torch.tensor([0.0 if fits else 1.0], device=device), reduction="sum")
        if fits and float(failures) > 0:
            fits, note = False, "out of memory on another rank"
        result = Probe(size, fits, peak, seconds, note or "fits")
        probes.append(result)
        logger.info("batch_size=auto probe: %d samples -> %s (peak %s, %.2f s)", size, result.note,
                    "n/a" if peak is None else f"{peak / 2**20:.0f} MiB", seconds)
        return result

    if memory_search:
        chosen = _gpu_search(search, probe)
    else:
        chosen = _cpu_search(search, probe, limit, cpu_max_step_seconds, cpu_time_budget_s, started)
    _restore(core_model(accelerator, model), optimizers, saved)
    clear_device_cache(garbage_collection=True)
    result = AutotuneResult(chosen, probes, time.perf_counter() - started, limit, search.failed)
    logger.info("batch_size=auto: chose %d per device after %d probes in %.1f s", chosen, len(probes), result.seconds)
    return result


def _gpu_search(search: BatchSizeSearch, probe: Callable[[int], Probe]) -> int:
    def reduce() -> int:
        return search.after_failure()

    @find_executable_batch_size(starting_batch_size=search.start, reduce_batch_size_fn=reduce)
    def run(batch_size: int) -> int:
        if search.failed is not None and search.next_size() is None:
            return search.best  # the bisection converged on the last reduction
        size: int | None = batch_size
        while size is not None:
            outcome = probe(size)
            search.record(size, outcome.fits)
            if not outcome.fits:
                raise ProbeOutOfMemory(f"CUDA out of memory. (probe of {size} samples: {outcome.note})")
            size = search.next_size()
        return search.best

    try:
        return run()
    except RuntimeError as exc:
        if "reached zero" in str(exc):
            raise ConfigError(
                "batch_size=auto: not even 1 sample per device fits in memory; use a smaller model, "
                "mixed_precision=bf16 or gradient checkpointing"
            ) from None
        raise


def _cpu_search(
    search: BatchSizeSearch,
    probe: Callable[[int], Probe],
    limit: int | None,
    max_step_seconds: float,
    budget_s: float,
    started: float,
) -> int:
    best_rate, best_size, size = 0.0, 0, search.start
    while True:
        warm = probe(size)  # the first step of a shape allocates; the second is timed
        outcome = probe(size) if warm.fits else warm
        if not outcome.fits:
            break
        rate = size / max(outcome.seconds, 1e-9)
        per_sample = max(warm.peak_bytes or 0, outcome.peak_bytes or 0) / size
        if rate > best_rate * 1.10 or best_size == 0:
            best_rate, best_size = rate, size
        else:
            break  # throughput stopped improving
        nxt = size * 2
        too_slow = outcome.seconds * 2 > max_step_seconds
        too_big = limit is not None and per_sample * nxt > limit
        out_of_time = time.perf_counter() - started > budget_s
        if nxt > search.cap or too_slow or too_big or out_of_time:
            break
        size = nxt
    if best_size == 0:
        raise ConfigError("batch_size=auto: no probe fitted on this device; set batch_size explicitly")
    search.best = best_size
    return best_size


def plan_effective_batch(effective: int, per_device_max: int, processes: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) with per-device x processes x accumulation == effective.

    Uses the fewest accumulation steps whose per-device batch fits `per_device_max`.
    """
    if effective % processes:
        raise ConfigError(
            f"effective_batch_size={effective}: must be a multiple of the number of processes ({processes})"
        )
    per_rank = effective // processes
    for accumulation in range(math.ceil(per_rank / max(per_device_max, 1)), per_rank + 1):
        if per_rank % accumulation == 0:
            return per_rank // accumulation, accumulation
    return 1, per_rank

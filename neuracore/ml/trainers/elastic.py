"""Resume a checkpoint on a different number of processes, or with a different per-device batch.

What is kept, and what is not:

- **The global batch.** The optimizer saw `batch x processes x accumulation` samples per step; a
  resume keeps that product (the checkpoint's), choosing the per-device batch (the run's
  `batch_size` if it is a number, else the checkpoint's, as the most per device) and deriving the
  accumulation. A different `effective_batch_size` is refused: it changes the optimisation itself.
- **The data order and position.** The epoch's permutation depends only on (seed, epoch), and
  accelerate gives global step k the samples `[k*G, (k+1)*G)` of it on any number of processes, so
  the position is carried over in samples: no sample of the epoch is seen twice or skipped.
- **Optimizer, schedulers, EMA, step count**: loaded as saved (DDP keeps full optimizer state on
  every rank, so any number of ranks can read it).
- **Not kept: the random streams.** Each rank's generators were saved per rank; with another
  world size they are re-seeded from (seed, step, rank) instead, deterministically. Results are
  therefore not bit-identical to an uninterrupted run (floating-point reductions differ across
  world sizes anyway); the same elastic resume repeated gives the same result.
- FSDP checkpoints are sharded per rank and are not resumed on another world size.
"""

from __future__ import annotations

import dataclasses
import logging
import random

import numpy as np
import torch

from neuracore.ml.core.errors import CheckpointError, ConfigError
from neuracore.ml.trainers.autotune import plan_effective_batch
from neuracore.ml.trainers.checkpoint import TrainerState

logger = logging.getLogger(__name__)


def global_batch(state: TrainerState) -> int:
    """Samples per optimizer step of the run that wrote `state`."""
    return state.batch_size * state.world_size * state.gradient_accumulation_steps


def is_elastic(saved: TrainerState, world_size: int, batch_size: int, accumulation: int) -> bool:
    """Whether resuming `saved` with these settings changes the world size or the per-device batch."""
    return (saved.world_size, saved.batch_size, saved.gradient_accumulation_steps) != (
        world_size, batch_size, accumulation)


def plan_resume_batch(saved: TrainerState, processes: int, batch_size: int | str,
                      effective_batch_size: int | None, where: str) -> tuple[int, int]:
    """(per-device batch, accumulation) for resuming `saved` on `processes` processes (see module doc)."""
    total = global_batch(saved)
    if effective_batch_size and effective_batch_size != total:
        raise ConfigError(
            f"effective_batch_size={effective_batch_size}: {where} was trained with a global batch of {total} "
            f"({saved.batch_size} per device x {saved.world_size} processes x {saved.gradient_accumulation_steps} "
            f"accumulation); resume with effective_batch_size={total} (or without it)"
        )
    if processes == saved.world_size and (batch_size == "auto" or batch_size == saved.batch_size):
        return saved.batch_size, saved.gradient_accumulation_steps
    per_device_max = batch_size if isinstance(batch_size, int) else saved.batch_size
    if total % processes:
        raise ConfigError(
            f"{where}: its global batch of {total} samples cannot be split over {processes} processes; "
            f"resume on a number of processes that divides {total}"
        )
    return plan_effective_batch(total, per_device_max, processes)


def convert_position(saved: TrainerState, expected: TrainerState, where: str) -> TrainerState:
    """`saved` with its in-epoch position re-expressed in the new per-rank batches and the new settings."""
    if saved.batch_size < 1 or expected.batch_size < 1:
        raise CheckpointError(f"{where}: saved with {saved.world_size} processes, resuming with {expected.world_size}, "
                              "and the checkpoint does not record its batch size; resume on the same number")
    samples_in_epoch = saved.batches_in_epoch * saved.batch_size * saved.world_size
    per_micro_batch = expected.batch_size * expected.world_size
    if samples_in_epoch % per_micro_batch:
        raise CheckpointError(
            f"{where}: the checkpoint is {samples_in_epoch} samples into epoch {saved.epoch}, which is not a whole "
            f"number of batches of {expected.batch_size} x {expected.world_size} processes; resume with the "
            "checkpoint's global batch"
        )
    converted = dataclasses.replace(
        saved,
        batches_in_epoch=samples_in_epoch // per_micro_batch,
        world_size=expected.world_size,
        batch_size=expected.batch_size,
        gradient_accumulation_steps=expected.gradient_accumulation_steps,
    )
    logger.warning(
        "elastic resume from %s: written by %d processes x batch %d x %d accumulation, continuing on %d x %d x %d "
        "(global batch %d kept; %d samples into epoch %d kept; optimizer, schedulers and step %d as saved; random "
        "streams re-seeded per rank, so results are not bit-identical to an uninterrupted run)",
        where, saved.world_size, saved.batch_size, saved.gradient_accumulation_steps, expected.world_size,
        expected.batch_size, expected.gradient_accumulation_steps, global_batch(saved), samples_in_epoch,
        saved.epoch, saved.step,
    )
    return converted


def reseed(seed: int, step: int, rank: int) -> None:
    """Deterministic fresh generators for `rank` after an elastic resume at `step`."""
    value = int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)

"""Choosing the per-device batch size when `batch_size=auto`."""

from __future__ import annotations

import logging

from accelerate import Accelerator

logger = logging.getLogger(__name__)

CPU_AUTO_BATCH_SIZE = 32


def choose_batch_size(requested: int | str, accelerator: Accelerator, num_train_samples: int) -> int:
    """The per-device batch size: the requested integer, or a choice for `auto`.

    On CPU, `auto` uses 32 (capped by the dataset size); the full memory-probing search for
    GPUs is `neuracore.ml.trainers.autotune` issue #5's work and is not done yet, so on a GPU
    `auto` currently also starts from a fixed size, logged so the user can see and override it.
    """
    if requested != "auto":
        return int(requested)
    per_rank = max(num_train_samples // max(accelerator.num_processes, 1), 1)
    size = min(CPU_AUTO_BATCH_SIZE if accelerator.device.type == "cpu" else 64, per_rank)
    logger.info("batch_size=auto: using %d per device on %s (set batch_size=N to choose)", size, accelerator.device.type)
    return size

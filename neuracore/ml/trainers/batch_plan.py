"""The per-device batch size and accumulation of a run: given, probed, or taken from its checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator

from neuracore.ml.config.schema import TrainConfig
from neuracore.ml.datasets.encoded import collate
from neuracore.ml.trainers.autotune import autotune_batch_size, plan_effective_batch
from neuracore.ml.trainers.checkpoint import TrainerState
from neuracore.ml.trainers.data import DataBundle, EpochSampler
from neuracore.ml.trainers.elastic import plan_resume_batch
from neuracore.ml.trainers.prefetch import to_device
from neuracore.ml.utils.atomic import write_text_atomic

logger = logging.getLogger(__name__)

RESOLVED_CONFIG = "resolved_config.yaml"


def decide_batch_size(
    config: TrainConfig,
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizers: list[Any],
    data: DataBundle,
    resume_path: Path | None,
) -> tuple[int, int]:
    """(per-device batch size, gradient accumulation steps) for this run.

    A resume reuses the checkpoint's values (no probing); `batch_size=auto` probes; with
    `effective_batch_size` the accumulation is derived so that batch x processes x accumulation
    equals it.
    """
    if resume_path is not None:
        saved = TrainerState.read(resume_path)
        if saved.batch_size:  # the checkpoint's global batch is kept, on any number of processes
            batch_size, accumulation = plan_resume_batch(
                saved, accelerator.num_processes, config.batch_size, config.effective_batch_size,
                f"resume_checkpoint_path={str(resume_path)!r}")
            logger.info("batch size %d x %d accumulation from the checkpoint (no probing on resume)",
                        batch_size, accumulation)
            return batch_size, accumulation
    processes = accelerator.num_processes
    per_rank_windows = max(len(data.train) // processes, 1)
    if config.batch_size == "auto":
        cap = min(config.autotune.max_batch_size, per_rank_windows)
        if config.effective_batch_size:
            cap = min(cap, config.effective_batch_size // processes or 1)
        result = autotune_batch_size(
            accelerator,
            model,
            optimizers,
            _batch_maker(data, accelerator, config.seed),
            cap=cap,
            max_grad_norm=config.training.max_grad_norm,
            memory_margin=config.autotune.memory_margin,
            cpu_max_step_seconds=config.autotune.cpu_max_step_seconds,
            cpu_time_budget_s=config.autotune.cpu_time_budget_s,
            strategy=config.autotune.strategy,
        )
        batch_size = result.batch_size
    else:
        batch_size = int(config.batch_size)
    accumulation = config.gradient_accumulation_steps
    if config.effective_batch_size:
        batch_size, accumulation = plan_effective_batch(config.effective_batch_size, batch_size, processes)
        logger.info("effective_batch_size=%d: %d per device x %d processes x %d accumulation steps",
                    config.effective_batch_size, batch_size, processes, accumulation)
    return batch_size, accumulation


def _batch_maker(data: DataBundle, accelerator: Accelerator, seed: int):
    """Real batches of any size from the training windows, on the device (for probes)."""

    def make(size: int) -> dict[str, Any]:
        loader = torch.utils.data.DataLoader(
            data.train, batch_size=size, sampler=EpochSampler(len(data.train), seed), num_workers=0,
            generator=torch.Generator().manual_seed(seed), collate_fn=collate,  # also windows with encoded_images
        )
        return to_device(next(iter(loader)), accelerator.device)

    return make


def write_resolved_config(
    accelerator: Accelerator, run_dir: Path, config: TrainConfig, batch_size: int, accumulation: int
) -> None:
    """`<run>/resolved_config.yaml`: the config as run, with the chosen batch size filled in."""
    if not accelerator.is_main_process:
        return
    resolved = dict(config.raw)
    resolved["batch_size"] = batch_size
    resolved["gradient_accumulation_steps"] = accumulation
    resolved["world_size"] = accelerator.num_processes
    text = "# The configuration this run used (batch_size=auto resolved).\n" + yaml.safe_dump(resolved, sort_keys=False)
    write_text_atomic(run_dir / RESOLVED_CONFIG, text)  # a resumed run replaces it: never half a file

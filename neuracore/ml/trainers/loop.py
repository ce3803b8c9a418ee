"""The training loop: steps, validation, logging and checkpoints, as a few visible functions."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils.memory import clear_device_cache, should_reduce_batch_size
from tqdm.auto import tqdm

from neuracore.ml.config.schema import TrainConfig
from neuracore.ml.trainers.accelerator import core_model
from neuracore.ml.trainers.checkpoint import TrainerState, save_checkpoint
from neuracore.ml.trainers.guards import NonFiniteGuard, Preempted, PreemptionHandler
from neuracore.ml.trainers.memory_monitor import ADVICE, MemoryLimitExceeded, MemoryMonitor
from neuracore.ml.trainers.prefetch import DevicePrefetcher
from neuracore.ml.trainers.tracking import log_image_grid, log_scalars
from neuracore.ml.utils.memory import gpu_memory_bytes, process_tree_rss_bytes

logger = logging.getLogger(__name__)

@dataclass
class LoopParts:
    """What `fit` drives: prepared model, optimizers, schedulers and loaders."""

    model: torch.nn.Module
    optimizers: list[Any]
    schedulers: list[Any]
    train_loader: Any
    validation_loader: Any | None
    sampler: Any  # the EpochSampler under the train loader
    total_steps: int
    steps_per_epoch: int
    batch_size: int
    step: Any = None  # the step program (EagerStep or CompiledStep from trainers/step.py)


@dataclass
class LoopResult:
    """Summary of a finished `fit`."""

    state: TrainerState
    train_losses: dict[str, float] = field(default_factory=dict)
    validation_losses: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    samples_per_second: float = 0.0


class _Window:
    """Device-side sums of losses between two log points (read once, at logging time)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.batches = 0
        self.samples = 0
        self.data_time = 0.0
        self.paused = 0.0  # validation/checkpoint time, excluded from throughput
        self.start = time.perf_counter()
        self.grad_norm: torch.Tensor | None = None

    def add(self, losses: dict[str, torch.Tensor], samples: int) -> None:
        for key, value in losses.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.batches += 1
        self.samples += samples


def _batch_size_of(batch: dict[str, Any]) -> int:
    return int(batch["is_pad"].shape[0])


class StepFailed(Exception):
    """An exception inside a training step, with whether the weights may have been half-updated."""

    def __init__(self, cause: BaseException, weights_touched: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.weights_touched = weights_touched


def train_step(parts: LoopParts, batch: dict[str, Any]):
    """One micro-batch through the step program (see `step.py`); failures say whether weights were touched."""
    try:
        return parts.step(batch)
    except Exception as exc:  # re-raised with where it happened
        raise StepFailed(exc, weights_touched=parts.step.stepping) from exc


def _stop_alone_for_memory(accelerator: Accelerator, run_dir: Path, batch_size: int, step: int) -> None:
    """Out of memory on one rank of several: stop this rank now, without any collective.

    The other ranks are waiting in this step's gradient all-reduce; a checkpoint (a collective)
    would wait for them forever. This process exits, and the launcher stops the others.
    """
    from neuracore.ml.trainers.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    last = f"the newest checkpoint is {found[-1][1]}" if found else "there is no checkpoint yet"
    raise MemoryLimitExceeded(
        f"out of memory in a training step on rank {accelerator.process_index} of {accelerator.num_processes} "
        f"(batch_size={batch_size}) after step {step}; no checkpoint now (the other ranks are inside a "
        f"collective; the launcher stops them); {last}; {ADVICE}, then resume with resume_checkpoint_path=auto"
    )


def _stop_for_memory(
    accelerator: Accelerator, parts: LoopParts, run_dir: Path, synced: TrainerState, config: TrainConfig,
    reason: str, can_checkpoint: bool = True,
) -> None:
    """Save a checkpoint of the last completed step (when consistent), then stop with a clear message."""
    for optimizer in parts.optimizers:
        optimizer.zero_grad(set_to_none=True)
    clear_device_cache(garbage_collection=True)
    where = "no checkpoint (the failure happened inside the optimizer step)"
    if can_checkpoint:
        path = save_checkpoint(accelerator, run_dir, synced, config.keep_last_n_checkpoints,
                               core_model(accelerator, parts.model))
        where = f"checkpoint saved at {path}"
    raise MemoryLimitExceeded(
        f"{reason} at step {synced.step}; {where}; {ADVICE}, then resume with resume_checkpoint_path=auto"
    )


# Several processes agree on a preemption request every this many steps (one tiny all-reduce).
PREEMPTION_CHECK_STEPS = 10


def _stop_for_preemption(accelerator: Accelerator, run_dir: Path, state: TrainerState, config: TrainConfig,
                         core: torch.nn.Module, guard: NonFiniteGuard, preemption: PreemptionHandler,
                         saved: bool) -> None:
    """A scheduler asked the run to stop: checkpoint this step boundary (finite weights only), then exit."""
    guard.check(accelerator, f"at step {state.step} (preempted)", run_dir)
    path = (run_dir / "checkpoints" / f"checkpoint_{state.step}" if saved else
            save_checkpoint(accelerator, run_dir, state, config.keep_last_n_checkpoints, core))
    name = signal.Signals(preemption.received).name if preemption.received else "another rank's signal"
    raise Preempted(f"stopped by {name} at step {state.step}; checkpoint saved at {path}; continue with "
                    "resume_checkpoint_path=auto and the same training_name (or local_output_dir)")


@torch.no_grad()
def validate(accelerator: Accelerator, model: torch.nn.Module, loader: Any) -> dict[str, float]:
    """Mean validation losses over all ranks: eval mode, inference weights (e.g. EMA), then restored."""
    was_training = model.training
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    count = torch.zeros((), device=accelerator.device)
    try:
        with core_model(accelerator, model).inference_weights():
            for batch in DevicePrefetcher(loader, accelerator.device):
                losses = model(batch)
                n = _batch_size_of(batch)
                for key, value in losses.items():
                    weighted = value.detach().float() * n
                    sums[key] = sums[key] + weighted if key in sums else weighted
                count += n
    finally:
        model.train(was_training)
    total = accelerator.reduce(count, reduction="sum")
    return {k: float(accelerator.reduce(v, reduction="sum") / total.clamp_min(1)) for k, v in sorted(sums.items())}


def _learning_rates(optimizers: list[Any]) -> dict[str, float]:
    out = {}
    for i, optimizer in enumerate(optimizers):
        for j, group in enumerate(optimizer.param_groups):
            out[f"lr/optimizer{i}_group{j}"] = float(group["lr"])
    return out


def fit(
    accelerator: Accelerator,
    parts: LoopParts,
    config: TrainConfig,
    run_dir: Path,
    state: TrainerState,
    preemption: PreemptionHandler,
    on_validation: Callable[[dict[str, float], TrainerState], None] | None = None,
    on_step: Callable[[TrainerState, bool], None] | None = None,
) -> LoopResult:
    """Train until `parts.total_steps` optimizer steps; validate, log and checkpoint on the way.

    `on_step(state, final)` runs after every optimizer step's validation and before its checkpoint
    (what it changes in `state` is checkpointed), its time excluded from throughput; once more with
    `final=True` after the final validation (e.g. rollouts, `trainers/rollouts.py`).

    `preemption` is entered by the caller before set-up starts, so a SIGTERM that arrives while the dataset
    is opened or the step is compiled is not lost: the run then stops after its first step with a checkpoint.
    """
    model = parts.model
    model.train()
    validation_every = config.training.validation_frequency
    interactive = sys.stderr.isatty()
    progress = tqdm(total=parts.total_steps, initial=state.step, disable=not accelerator.is_main_process,
                    desc="training", dynamic_ncols=True, mininterval=0.1 if interactive else 30.0)
    window = _Window()
    last_train: dict[str, float] = {}
    last_val: dict[str, float] = {}
    images_logged = False
    started = time.perf_counter()
    samples_at_start = state.samples_seen
    done = state.step >= parts.total_steps
    validated_at = -1
    synced = dataclasses.replace(state)  # the state at the last optimizer step (what a checkpoint may hold)
    core = core_model(accelerator, model)  # once: the EMA hook and checkpoint state live on the algorithm
    monitor = MemoryMonitor(accelerator, **dataclasses.asdict(config.memory_monitor))
    guard = NonFiniteGuard(accelerator.device)  # read back only at logging, validation and checkpoint steps

    def run_validation() -> None:
        nonlocal last_val, validated_at
        if parts.validation_loader is None or validated_at == state.step:
            return
        validated_at = state.step
        last_val = validate(accelerator, model, parts.validation_loader)
        log_scalars(accelerator, {f"validation/{k}": v for k, v in last_val.items()}, state.step)
        logger.info("step %d validation: %s", state.step, _fmt(last_val))
        if on_validation is not None:
            on_validation(last_val, state)

    try:
        while not done:
            epoch = state.epoch
            loader = parts.train_loader
            if state.batches_in_epoch:
                loader = accelerator.skip_first_batches(parts.train_loader, state.batches_in_epoch)
            # accelerate's loaders set the sampler's epoch from their own pass counter when iterated, which
            # restarts at 0 in a resumed process: tell them the real epoch (else the order after the first
            # epoch boundary of a resumed run repeats epoch 0's)
            for target in (loader, parts.train_loader, parts.sampler):
                if hasattr(target, "set_epoch"):
                    target.set_epoch(epoch)
            iterator = iter(DevicePrefetcher(loader, accelerator.device))
            while True:
                fetch = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    break
                window.data_time += time.perf_counter() - fetch
                if not images_logged and config.training.log_images:
                    log_image_grid(accelerator, batch, state.step)
                    images_logged = True
                try:
                    losses, grad_norm = train_step(parts, batch)
                except StepFailed as failed:
                    if not should_reduce_batch_size(failed.cause):
                        raise failed.cause from None
                    if accelerator.num_processes > 1:
                        _stop_alone_for_memory(accelerator, run_dir, parts.batch_size, synced.step)
                    _stop_for_memory(accelerator, parts, run_dir, synced, config,
                                     f"out of memory in a training step (batch_size={parts.batch_size})",
                                     can_checkpoint=not failed.weights_touched)
                n = _batch_size_of(batch)
                window.add(losses, n)
                guard.observe(losses, state.step + 1)
                state.batches_in_epoch += 1
                state.samples_seen += n * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                for scheduler in parts.schedulers:
                    scheduler.step()
                state.step += 1
                core.on_optimizer_step(state.step)
                window.grad_norm = grad_norm
                progress.update(1)
                breach = monitor.check(state.step)
                if breach:
                    _stop_for_memory(accelerator, parts, run_dir, state, config, f"memory_monitor: {breach}")
                logging_now = state.step % config.logging_frequency == 0 or state.step == parts.total_steps
                validating = bool(validation_every) and state.step % validation_every == 0
                checkpointing = state.step % config.checkpoint_frequency == 0
                if logging_now or validating or checkpointing:  # the host decides here anyway: read the flag
                    guard.check(accelerator, f"at step {state.step}", run_dir)
                if logging_now:
                    last_train = _log_window(accelerator, parts, window, state)
                    progress.set_postfix(loss=f"{last_train.get('loss', float('nan')):.4f}")
                    window = _Window()
                paused = time.perf_counter()
                if validating:
                    run_validation()
                done = state.step >= parts.total_steps
                if on_step is not None and not done:
                    on_step(state, False)
                if checkpointing and not done:
                    save_checkpoint(accelerator, run_dir, state, config.keep_last_n_checkpoints, core)
                if not done and preemption.requested(accelerator, state.step, every=PREEMPTION_CHECK_STEPS):
                    _stop_for_preemption(accelerator, run_dir, state, config, core, guard, preemption,
                                         saved=checkpointing)
                window.paused += time.perf_counter() - paused
                synced = dataclasses.replace(state)
                if done:
                    break
            if not done or state.batches_in_epoch >= len(parts.train_loader):
                state.epoch = epoch + 1
                state.batches_in_epoch = 0
                synced = dataclasses.replace(state)
                if not validation_every:
                    guard.check(accelerator, f"at the end of epoch {epoch} (step {state.step})", run_dir)
                    run_validation()
    except BaseException:
        progress.close()  # the bar's last redraw goes out before the one-line error, not after it
        raise
    guard.check(accelerator, f"at the end (step {state.step})", run_dir)
    if window.batches:
        last_train = _log_window(accelerator, parts, window, state)
    run_validation()  # the final model is always validated (no-op if it just was)
    if on_step is not None:
        on_step(state, True)
    progress.close()
    elapsed = time.perf_counter() - started
    save_checkpoint(accelerator, run_dir, state, config.keep_last_n_checkpoints, core)
    return LoopResult(
        state=state,
        train_losses=last_train,
        validation_losses=last_val,
        seconds=elapsed,
        samples_per_second=(state.samples_seen - samples_at_start) / max(elapsed, 1e-9),
    )


def _log_window(accelerator: Accelerator, parts: LoopParts, window: _Window, state: TrainerState) -> dict[str, float]:
    """Reduce the window's losses over ranks and write them with throughput and memory."""
    elapsed = max(time.perf_counter() - window.start - window.paused, 1e-9)
    means = {k: accelerator.reduce(v / max(window.batches, 1), reduction="mean") for k, v in sorted(window.sums.items())}
    train = {k: float(v) for k, v in means.items()}
    values: dict[str, float] = {f"train/{k}": v for k, v in train.items()}
    if window.grad_norm is not None:
        values["train/grad_norm"] = float(window.grad_norm)
    values.update(_learning_rates(parts.optimizers))
    values["perf/samples_per_second"] = window.samples * accelerator.num_processes / elapsed
    values["perf/step_time_s"] = elapsed / max(window.batches, 1)
    values["perf/data_wait_fraction"] = min(window.data_time / elapsed, 1.0)
    values["memory/cpu_rss_gb"] = process_tree_rss_bytes() / 1e9
    for key, value in gpu_memory_bytes(accelerator.device).items():
        values[f"memory/gpu_{key}_gb"] = value / 1e9
    values["progress/epoch"] = float(state.epoch)
    log_scalars(accelerator, values, state.step)
    return train


def _fmt(values: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in values.items())

"""Stops that keep a run honest: a non-finite loss ends training, a preemption signal checkpoints and exits.

`NonFiniteGuard` watches every micro-batch's losses on the device (no host sync per step: a device
flag and the first bad step are kept as tensors) and is read back only where the host must decide
anyway — at logging steps, before every checkpoint and before the export. A run whose loss went
NaN/inf stops with one line naming the step and the loss terms, writes no checkpoint and no
export from the bad weights, and keeps the last finite checkpoint.

`PreemptionHandler` turns SIGTERM and SIGUSR1 (what SLURM and cloud schedulers send before they
kill a job) into a checkpoint at the next step boundary and an exit with `PREEMPTED_EXIT_CODE`;
`resume_checkpoint_path=auto` then continues exactly.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Self

import torch
from accelerate import Accelerator

from neuracore.ml.core.errors import NeuracoreError

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: a temporary failure, run it again (schedulers requeue on it)
DIVERGED_EXIT_CODE = 4
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingDiverged(NeuracoreError):
    """The training loss became NaN or infinite."""

    exit_code = DIVERGED_EXIT_CODE


class Preempted(NeuracoreError):
    """The run was asked to stop (SIGTERM/SIGUSR1) and saved a checkpoint to resume from."""

    exit_code = PREEMPTED_EXIT_CODE


class NonFiniteGuard:
    """Device-side record of the first micro-batch whose losses were not finite."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # optimizer step of the first bad loss
        self.bad_terms: dict[str, torch.Tensor] = {}

    def observe(self, losses: dict[str, torch.Tensor], step: int) -> None:
        """Note whether this micro-batch's losses are finite (tensor ops only; `step` is the step it belongs to)."""
        bad_now = []
        for key, value in losses.items():
            bad = ~torch.isfinite(value.detach()).all()
            seen = self.bad_terms.get(key)
            self.bad_terms[key] = bad if seen is None else seen | bad
            bad_now.append(bad)
        if bad_now:  # one update of the first bad step per micro-batch, not one per loss term
            fresh = torch.stack(bad_now).any() & (self.first_bad < 0)
            self.first_bad = torch.where(fresh, torch.full_like(self.first_bad, step), self.first_bad)

    def check(self, accelerator: Accelerator, where: str, run_dir: Path) -> None:
        """Read the flag back (all ranks agree) and stop the run if any loss was not finite."""
        from neuracore.ml.trainers.checkpoint import list_checkpoints

        # 0 = all finite, else 1 + the first bad step; the largest over ranks (any rank's NaN stops all)
        marker = (self.first_bad.float() + 1).clamp_min(0).reshape(1)
        worst = float(accelerator.gather(marker).max()) if accelerator.num_processes > 1 else float(marker)
        if worst <= 0:
            return
        step = int(worst) - 1
        terms = sorted(k for k, v in self.bad_terms.items() if bool(v))
        found = list_checkpoints(run_dir)
        kept = f"the last finite checkpoint is {found[-1][1]}" if found else "no checkpoint was written"
        raise TrainingDiverged(
            f"training loss is not finite at step {step} ({', '.join(terms) or 'on another rank'}); stopped "
            f"{where} without saving or exporting these weights; {kept}; lower algorithm.lr or "
            "training.max_grad_norm, or check the data (python tools/dataset.py verify NAME)"
        )


class PreemptionHandler:
    """SIGTERM/SIGUSR1 set a flag; the loop checkpoints at the next step boundary and exits (see module doc)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Self:
        for sig in PREEMPTION_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner's worker): signals stay as they were
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            logger.info("received %s: saving a checkpoint at the next step boundary, then stopping",
                        signal.Signals(signum).name)
        self.received = signum

    def requested(self, accelerator: Accelerator, step: int, every: int) -> bool:
        """Whether to stop now. One process: the flag. Several: ranks agree every `every` steps (a tiny all-reduce)."""
        if accelerator.num_processes == 1:
            return self.received is not None
        if step % every:
            return False
        flag = torch.tensor([0.0 if self.received is None else 1.0], device=accelerator.device)
        return float(accelerator.reduce(flag, reduction="sum")) > 0

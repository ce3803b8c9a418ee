"""Which model `<run>/best_model/` holds: by validation loss, or by rollout success rate when `eval.env` is set.

`best_model_hooks` returns the loop's two callbacks (`fit(on_validation=..., on_step=...)`):

- without rollouts, every validation whose loss beats `state.best_validation_loss` re-exports
  `best_model/` (as before);
- with rollouts, every rollout report (`trainers/rollouts.py`) whose success rate beats
  `state.best_success_rate`, or equals it at a lower validation loss, re-exports it; then
  `state.best_validation_loss` is the validation loss of that model (ties without a validation
  split go to the later model: it trained longer).

Both fields live in the checkpointed `TrainerState`, so a resumed run keeps comparing against
the same best.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from neuracore.ml.trainers.checkpoint import TrainerState

Export = Callable[[TrainerState, dict[str, float], dict[str, Any] | None], None]


def best_model_hooks(export_best: Export, rollouts: Any | None) -> tuple[Callable[..., None], Callable[..., None] | None]:
    """(on_validation, on_step) for `fit`; `export_best(state, validation_losses, rollout_report)` writes best_model/."""
    last_validation: dict[str, float] = {}

    def on_validation(losses: dict[str, float], state: TrainerState) -> None:
        last_validation.clear()
        last_validation.update(losses)
        if rollouts is not None:
            return  # the rollouts decide
        loss = losses.get("loss", math.inf)
        if state.best_validation_loss is None or loss < state.best_validation_loss:
            state.best_validation_loss = loss
            export_best(state, losses, None)

    if rollouts is None:
        return on_validation, None

    def on_step(state: TrainerState, final: bool) -> None:
        report = rollouts.maybe_run(state, final)
        if report is None:
            return
        loss = last_validation.get("loss")
        if _better(report["success_rate"], loss, state):
            state.best_success_rate = report["success_rate"]
            state.best_validation_loss = loss
            export_best(state, dict(last_validation), report)

    return on_validation, on_step


def _better(success_rate: float, validation_loss: float | None, state: TrainerState) -> bool:
    best = state.best_success_rate
    if best is None or success_rate > best:
        return True
    if success_rate < best:
        return False
    if validation_loss is None or state.best_validation_loss is None:
        return True  # no validation split: the later of two equal models
    return validation_loss < state.best_validation_loss


__all__ = ["best_model_hooks"]

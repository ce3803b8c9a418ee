"""Non-finite losses stop a run (read back only at decision points); SIGTERM/SIGUSR1 request a checkpointed stop."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from neuracore.ml.trainers.accelerator import reset_accelerate_state
from neuracore.ml.trainers.guards import DIVERGED_EXIT_CODE, NonFiniteGuard, PreemptionHandler, TrainingDiverged


@pytest.fixture()
def accelerator():
    reset_accelerate_state()
    yield Accelerator(cpu=True)
    reset_accelerate_state()


def test_guard_names_the_first_bad_step_and_the_terms(accelerator, tmp_path: Path):
    guard = NonFiniteGuard(torch.device("cpu"))
    guard.observe({"loss": torch.tensor(1.0), "kl": torch.tensor(0.5)}, 1)
    guard.check(accelerator, "at step 1", tmp_path)  # finite: nothing happens
    guard.observe({"loss": torch.tensor(float("nan")), "kl": torch.tensor(0.5)}, 2)
    guard.observe({"loss": torch.tensor(float("inf")), "kl": torch.tensor(float("inf"))}, 3)
    with pytest.raises(TrainingDiverged, match=r"not finite at step 2 \(kl, loss\); stopped at step 3 without saving "
                                               r"or exporting these weights; no checkpoint was written") as info:
        guard.check(accelerator, "at step 3", tmp_path)
    assert info.value.exit_code == DIVERGED_EXIT_CODE == 4
    (tmp_path / "checkpoints" / "checkpoint_1").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint_1" / "trainer_state.json").write_text("{}")
    with pytest.raises(TrainingDiverged, match=r"the last finite checkpoint is .*checkpoint_1"):
        guard.check(accelerator, "at step 3", tmp_path)


def test_preemption_signals_set_the_flag_and_handlers_are_restored(accelerator):
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionHandler() as handler:
        assert not handler.requested(accelerator, 1, every=10)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler.requested(accelerator, 1, every=10) and handler.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) is before

"""Fixtures shared by the trainer tests."""

from __future__ import annotations

import pytest
from accelerate import Accelerator


@pytest.fixture()
def accelerator() -> Accelerator:
    acc = Accelerator(cpu=True)
    yield acc
    from neuracore.ml.trainers.accelerator import reset_accelerate_state

    reset_accelerate_state()

"""Exact resume with on-device augmentation: its per-sample parameters come from the checkpointed RNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import FAST, fault_env, run_cli

AUGMENTED = FAST + ["max_steps=6", "checkpoint_frequency=3", "validation_split=0.25", "logging_frequency=2",
                    "training.augmentation.enabled=true", "training.augmentation.crop_scale=[0.7,1.0]",
                    "training.augmentation.rotation_degrees=10"]


def _weights(home: Path, name: str) -> dict[str, np.ndarray]:
    return load_file(str(home / "training" / "runs" / name / "model" / "model.safetensors"))


@pytest.mark.slow
def test_sigkill_then_resume_with_augmentation_is_bit_identical(home: Path) -> None:
    straight = run_cli(AUGMENTED + ["training_name=straight"], home)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "image augmentation on the device, per sample: crop/affine, brightness" in straight.stderr
    plain = run_cli(FAST + ["max_steps=6", "validation_split=0.25", "training_name=plain"], home)
    assert plain.returncode == 0, plain.stderr[-3000:]

    killed = run_cli(AUGMENTED + ["training_name=killed"], home, env=fault_env(kill_after_step=4))
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    resumed = run_cli(AUGMENTED + ["training_name=killed", "resume_checkpoint_path=auto"], home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 3" in resumed.stderr

    a, b, c = _weights(home, "straight"), _weights(home, "killed"), _weights(home, "plain")
    assert not [k for k in a if not np.array_equal(a[k], b[k])]
    assert [k for k in a if not np.array_equal(a[k], c[k])]  # augmentation did change what was learnt

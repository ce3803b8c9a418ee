"""Checkpoint folder logic: atomic writes, rotation by step number, resume path resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from neuracore.ml.core.errors import CheckpointError
from neuracore.ml.trainers.checkpoint import (
    STATE_FILE,
    TrainerState,
    list_checkpoints,
    load_checkpoint,
    resolve_resume_path,
    rotate_checkpoints,
    save_checkpoint,
)


def _prepared(accelerator: Accelerator):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def _fake_checkpoint(run: Path, step: int) -> None:
    path = run / "checkpoints" / f"checkpoint_{step}"
    path.mkdir(parents=True)
    (path / STATE_FILE).write_text(json.dumps({"step": step}))


def test_rotation_orders_by_step_number_not_name(tmp_path: Path) -> None:
    for step in (9, 10, 100, 20):
        _fake_checkpoint(tmp_path, step)
    deleted = rotate_checkpoints(tmp_path, keep_last_n=2)
    assert sorted(p.name for p in deleted) == ["checkpoint_10", "checkpoint_9"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 100]


def test_incomplete_and_temporary_folders_are_never_checkpoints(tmp_path: Path) -> None:
    _fake_checkpoint(tmp_path, 5)
    (tmp_path / "checkpoints" / ".tmp_checkpoint_10").mkdir()
    (tmp_path / "checkpoints" / "checkpoint_20").mkdir()  # no trainer_state.json: a crash mid-write
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5]
    assert resolve_resume_path("auto", tmp_path).name == "checkpoint_5"


def test_auto_resume_without_checkpoints_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        resolve_resume_path("auto", tmp_path)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_resume_path(str(tmp_path), tmp_path)


def test_save_is_atomic_when_writing_fails(tmp_path: Path, accelerator: Accelerator, monkeypatch) -> None:
    _model, _optimizer = _prepared(accelerator)
    first = save_checkpoint(accelerator, tmp_path, TrainerState(step=1, algorithm="x"), keep_last_n=1)
    before = (first / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(accelerator, "save_state", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(accelerator, tmp_path, TrainerState(step=2, algorithm="x"), keep_last_n=1)
    # The previous checkpoint survived rotation and is still the newest usable one.
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert (first / "model.safetensors").read_bytes() == before
    assert resolve_resume_path("auto", tmp_path) == first


def test_load_restores_weights_and_checks_compatibility(tmp_path: Path, accelerator: Accelerator) -> None:
    model, _optimizer = _prepared(accelerator)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    state = TrainerState(step=7, epoch=1, batches_in_epoch=3, algorithm="cnnmlp", dataset_fingerprint="abc")
    path = save_checkpoint(accelerator, tmp_path, state, keep_last_n=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    loaded = load_checkpoint(accelerator, path, TrainerState(algorithm="cnnmlp", dataset_fingerprint="abc"))
    assert (loaded.step, loaded.epoch, loaded.batches_in_epoch) == (7, 1, 3)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match="dataset_fingerprint"):
        load_checkpoint(accelerator, path, TrainerState(algorithm="cnnmlp", dataset_fingerprint="other"))
    with pytest.raises(CheckpointError, match="saved with 1 processes, resuming with 2, and the checkpoint does not "
                       "record its batch size"):
        load_checkpoint(accelerator, path, TrainerState(algorithm="cnnmlp", world_size=2))
    (path / "optimizer.bin").unlink()
    with pytest.raises(CheckpointError, match="optimizer.bin is missing"):
        load_checkpoint(accelerator, path, TrainerState(algorithm="cnnmlp"))


def test_elastic_resume_keeps_the_sample_position_and_refuses_what_it_cannot_keep() -> None:
    from neuracore.ml.core.errors import ConfigError
    from neuracore.ml.trainers.elastic import convert_position, plan_resume_batch

    saved = TrainerState(step=3, epoch=2, batches_in_epoch=6, world_size=2, batch_size=4, gradient_accumulation_steps=2)
    assert plan_resume_batch(saved, 1, "auto", None, "here") == (4, 4)  # global batch 16 kept on one process
    assert plan_resume_batch(saved, 1, 16, None, "here") == (16, 1)
    assert plan_resume_batch(saved, 2, "auto", None, "here") == (4, 2)  # unchanged
    assert plan_resume_batch(saved, 4, 8, 16, "here") == (4, 1)
    with pytest.raises(ConfigError, match="effective_batch_size=32: here was trained with a global batch of 16"):
        plan_resume_batch(saved, 1, "auto", 32, "here")
    with pytest.raises(ConfigError, match="cannot be split over 3 processes"):
        plan_resume_batch(saved, 3, "auto", None, "here")
    moved = convert_position(saved, TrainerState(world_size=1, batch_size=16, gradient_accumulation_steps=1), "here")
    assert (moved.step, moved.epoch, moved.batches_in_epoch) == (3, 2, 3)  # 48 samples = 3 batches of 16
    assert (moved.world_size, moved.batch_size, moved.gradient_accumulation_steps) == (1, 16, 1)
    with pytest.raises(CheckpointError, match="48 samples into epoch 2, which is not a whole number of batches of 5"):
        convert_position(saved, TrainerState(world_size=2, batch_size=5), "here")

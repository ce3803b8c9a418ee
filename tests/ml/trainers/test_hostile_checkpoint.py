"""A damaged, planted or edited checkpoint file is refused on resume, in one line naming it; RNG state without pickle."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from neuracore.ml.core.errors import CheckpointError
from neuracore.ml.trainers.checkpoint import (
    MANIFEST_FILE,
    STATE_FILE,
    TrainerState,
    load_checkpoint,
    save_checkpoint,
)
from neuracore.ml.trainers.rng_state import load_rng_state, save_rng_state
from tests.conftest import FAST, run_cli


@pytest.fixture()
def saved(tmp_path: Path, accelerator: Accelerator) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return save_checkpoint(accelerator, tmp_path, TrainerState(step=3, algorithm="x"), keep_last_n=2)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _same_size_rng(path: Path) -> None:  # a valid RNG file of the same size but another state
    random.seed(123)
    rank = int(path.stem.rsplit("_", 1)[1])
    tmp = path.parent / "elsewhere"
    tmp.mkdir()
    save_rng_state(tmp, rank, 99)
    path.write_bytes((tmp / path.name).read_bytes())
    (tmp / path.name).unlink()
    tmp.rmdir()


DAMAGE = {
    "truncated_rng_state": ("rng_state_0.safetensors", _truncate, "rng_state_0.safetensors is not the file"),
    "replaced_rng_state": ("rng_state_0.safetensors", _same_size_rng, "rng_state_0.safetensors is not the file"),
    "bit_flip_in_weights": ("model.safetensors", _flip_last_byte, "model.safetensors is not the file"),
    "truncated_optimizer": ("optimizer.bin", _truncate, "optimizer.bin is not the file"),
    "edited_trainer_state": (STATE_FILE, lambda p: p.write_text(p.read_text().replace('"step": 3', '"step": 4')),
                             "trainer_state.json is not the file"),
    "deleted_weights": ("model.safetensors", lambda p: p.unlink(), "model.safetensors is missing"),
    "deleted_manifest": (MANIFEST_FILE, lambda p: p.unlink(), "no manifest.json"),
    "malformed_manifest": (MANIFEST_FILE, lambda p: p.write_text("{\"files\": [1, 2]"), "manifest.json is unreadable"),
    "manifest_not_a_mapping": (MANIFEST_FILE, lambda p: p.write_text('{"files": {"model.safetensors": 5}}'),
                               "manifest.json is unreadable or malformed"),
    "manifest_escapes": (MANIFEST_FILE, lambda p: p.write_text(json.dumps(
        {"files": {"../../etc/passwd": {"sha256": "0" * 64, "size": 1}}})), "names '../../etc/passwd', outside"),
    "planted_pickle": ("random_states_0.pkl", lambda p: p.write_bytes(b"\x80\x04K\x01."),
                       "random_states_0.pkl was not part of the saved checkpoint"),
    "planted_folder_file": ("extra/notes.txt", lambda p: (p.parent.mkdir(), p.write_text("x")),
                            "extra/notes.txt was not part of the saved checkpoint"),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_checkpoint_is_refused_naming_the_file(name: str, saved: Path, accelerator: Accelerator):
    rel, damage, message = DAMAGE[name]
    damage(saved / rel)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(accelerator, saved, TrainerState(algorithm="x"))
    text = str(err.value)
    assert message in text and "\n" not in text, text
    assert text.startswith("resume_checkpoint_path=")


def test_checkpoint_holds_no_pickled_rng_and_a_manifest_of_every_file(saved: Path):
    names = sorted(p.name for p in saved.iterdir())
    assert "random_states_0.pkl" not in names and "rng_state_0.safetensors" in names
    listed = json.loads((saved / MANIFEST_FILE).read_text())["files"]
    assert sorted(listed) == sorted(n for n in names if n != MANIFEST_FILE)


def test_rng_state_round_trips_every_generator_exactly(tmp_path: Path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)  # move off the seeds
    save_rng_state(tmp_path, 0, 17)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)), float(np.random.randn()))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    assert load_rng_state(tmp_path / "rng_state_0.safetensors") == 17
    assert (random.random(), float(np.random.rand()), float(torch.rand(1)), float(np.random.randn())) == expected


def test_resume_from_a_tampered_checkpoint_is_one_line_and_writes_nothing(home: Path):
    base = FAST + ["max_steps=2", "checkpoint_frequency=2", "training_name=tamper"]
    first = run_cli(base, home)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = home / "training" / "runs" / "tamper" / "checkpoints" / "checkpoint_2"
    _truncate(ckpt / "rng_state_0.safetensors")
    before = sorted(p.name for p in ckpt.parent.iterdir())
    again = run_cli(base[:-2] + ["max_steps=4", "training_name=tamper", "resume_checkpoint_path=auto"], home)
    assert again.returncode == 2
    errors = [line for line in again.stderr.splitlines() if line.startswith("neuracore: error:")]
    assert len(errors) == 1 and "rng_state_0.safetensors is not the file that was saved" in errors[0], again.stderr
    assert "Traceback" not in again.stderr
    assert sorted(p.name for p in ckpt.parent.iterdir()) == before  # no checkpoint_4, nothing trained


def test_resume_with_other_relative_actions_is_refused(saved: Path, accelerator: Accelerator):
    pairs = {"JOINT_TARGET_POSITIONS": {"input": "JOINT_POSITIONS", "items": ["elbow"]}}
    with pytest.raises(CheckpointError, match=r"trained with relative_actions=null, this run has \{"):
        load_checkpoint(accelerator, saved, TrainerState(algorithm="x", extra={"relative_actions": pairs}))
    load_checkpoint(accelerator, saved, TrainerState(algorithm="x", extra={"relative_actions": None}))

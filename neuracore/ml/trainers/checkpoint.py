"""Atomic checkpoints with rotation by step number, and resume that never silently restarts."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from neuracore.ml.core.errors import CheckpointError, one_line
from neuracore.ml.trainers.rng_state import load_rng_state, rng_file, save_rng_state
from neuracore.ml.utils.atomic import recover_replace, remove_dir, replace_dir, sweep_deleted
from neuracore.ml.utils.hashing import sha256_file

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
ALGORITHM_STATE_FILE = "algorithm_state.safetensors"  # NeuracoreModel.checkpoint_state(), e.g. an EMA
MANIFEST_FILE = "manifest.json"  # sha256 and size of every other file, checked before a resume reads any
_CHECKPOINT = re.compile(r"^checkpoint_(\d+)$")


@dataclass
class TrainerState:
    """Loop position saved with every checkpoint (accelerate saves model/optimizer/RNG beside it)."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    samples_seen: int = 0
    best_validation_loss: float | None = None  # with rollouts (eval.env): the validation loss of best_model/
    best_success_rate: float | None = None  # with rollouts: the success rate of best_model/
    algorithm: str = ""
    dataset_fingerprint: str = ""
    world_size: int = 1
    batch_size: int = 0
    gradient_accumulation_steps: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> TrainerState:
        """Read `trainer_state.json` from a checkpoint folder."""
        try:
            data = json.loads((path / STATE_FILE).read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path / STATE_FILE}: unreadable trainer state ({one_line(exc)})") from None


def checkpoints_dir(run_dir: Path) -> Path:
    """`<run>/checkpoints`."""
    return run_dir / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first, ordered by step (not by name or mtime)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    sweep_deleted(root)  # rotations killed halfway
    for aside in root.glob(".checkpoint_*.replaced"):  # re-saves killed between two renames
        recover_replace(root / aside.name[1:-len(".replaced")], STATE_FILE)
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _algorithm_state(
    model: nn.Module | None, is_main: bool
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's extra checkpoint state as full CPU tensors on the main process (call on every rank:
    gathering a sharded tensor is collective); other ranks get nothing to write."""
    if model is None or not hasattr(model, "checkpoint_state"):
        return {}, {}
    tensors, metadata = model.checkpoint_state()
    full = {}
    for name, tensor in tensors.items():
        if hasattr(tensor, "full_tensor"):  # a DTensor under FSDP
            tensor = tensor.full_tensor()
        if is_main:
            full[name] = tensor.detach().cpu().contiguous()
    return (full, dict(metadata)) if is_main else ({}, {})


def save_checkpoint(
    accelerator: Accelerator, run_dir: Path, state: TrainerState, keep_last_n: int, model: nn.Module | None = None
) -> Path:
    """Write `checkpoint_<step>` atomically (temp folder + rename), then rotate old ones.

    Every rank calls this (accelerate writes per-rank RNG state); rank 0 writes the rest, including
    the unwrapped `model`'s `checkpoint_state()` (e.g. Diffusion Policy's EMA) as safetensors.
    """
    root = checkpoints_dir(run_dir)
    final = root / f"checkpoint_{state.step}"
    tmp = root / f".tmp_checkpoint_{state.step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    # accelerate's pickled RNG file (loaded back inside a silent `except`) is replaced by safetensors
    (tmp / f"random_states_{accelerator.process_index}.pkl").unlink(missing_ok=True)
    save_rng_state(tmp, accelerator.process_index, accelerator.step)
    extra_tensors, extra_metadata = _algorithm_state(model, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if extra_tensors or extra_metadata:
            save_file(extra_tensors, str(tmp / ALGORITHM_STATE_FILE), metadata=extra_metadata)
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=1))
        write_manifest(tmp)  # hashes and fsyncs every file, then the manifest itself
        # re-saving a step (after a resume) swaps the folders in one step: never no checkpoint under the name
        replace_dir(tmp, final)
        rotate_checkpoints(run_dir, keep_last_n)
        logger.info("saved checkpoint %s", final)
    accelerator.wait_for_everyone()
    return final


def write_manifest(folder: Path) -> None:
    """`manifest.json`: sha256 and size of every file under `folder` (each fsynced), written last."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        files[path.relative_to(folder).as_posix()] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    with open(folder / MANIFEST_FILE, "w") as f:
        json.dump({"files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def verify_checkpoint_files(path: Path) -> None:
    """Every file of the checkpoint is the one written (sha256 and size per `manifest.json`), none is added.

    Runs before anything of the checkpoint is read; any difference is a `CheckpointError` naming the file.
    """
    where = f"resume_checkpoint_path={str(path)!r}"
    manifest = path / MANIFEST_FILE
    try:
        files = json.loads(manifest.read_text())["files"]
        entries = {str(rel): (str(e["sha256"]), int(e["size"])) for rel, e in files.items()}
    except FileNotFoundError:
        raise CheckpointError(f"{where}: no {MANIFEST_FILE} (an incomplete checkpoint, or one written by an older "
                              "neuracore); resume from a checkpoint with a manifest") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{where}: {MANIFEST_FILE} is unreadable or malformed ({one_line(exc)})") from None
    root = path.resolve()
    for rel, (sha, size) in sorted(entries.items()):
        file = (root / rel).resolve()
        if root not in file.parents:
            raise CheckpointError(f"{where}: {MANIFEST_FILE} names {rel!r}, outside the checkpoint")
        if not file.is_file():
            raise CheckpointError(f"{where}: {rel} is missing (listed in {MANIFEST_FILE})")
        if file.stat().st_size != size or sha256_file(file) != sha:
            raise CheckpointError(f"{where}: {rel} is not the file that was saved (size or sha256 differs from "
                                  f"{MANIFEST_FILE}); resume from an earlier checkpoint")
    added = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.name != MANIFEST_FILE and p.relative_to(root).as_posix() not in entries)
    if added:
        raise CheckpointError(f"{where}: {added[0]} was not part of the saved checkpoint (not in {MANIFEST_FILE})")


def rotate_checkpoints(run_dir: Path, keep_last_n: int) -> list[Path]:
    """Delete all but the `keep_last_n` highest-step checkpoints; returns what was deleted."""
    found = list_checkpoints(run_dir)
    doomed = [path for _, path in found[: max(len(found) - keep_last_n, 0)]]
    for path in doomed:  # renamed away in one step first: never a half-deleted checkpoint under its name
        remove_dir(path)
    return doomed


def resolve_resume_path(value: str, run_dir: Path) -> Path:
    """`auto` → the newest complete checkpoint of `run_dir`; otherwise the given folder, checked."""
    if value == "auto":
        found = list_checkpoints(run_dir)
        if not found:
            raise CheckpointError(
                f"resume_checkpoint_path=auto: no checkpoint in {checkpoints_dir(run_dir)}; "
                "drop resume_checkpoint_path to start a new run"
            )
        return found[-1][1]
    path = Path(value).expanduser().resolve()
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"resume_checkpoint_path={value!r}: {path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def load_checkpoint(
    accelerator: Accelerator, path: Path, expected: TrainerState, model: nn.Module | None = None
) -> TrainerState:
    """Restore model, optimizer, schedulers, RNG, accelerate's step counter and the unwrapped
    `model`'s extra state (`algorithm_state.safetensors`) from `path`.

    Any mismatch or unreadable file is a `CheckpointError`; a resume never degrades to a fresh start.
    """
    verify_checkpoint_files(path)
    state = TrainerState.read(path)
    for key in ("algorithm", "dataset_fingerprint"):
        have, want = getattr(state, key), getattr(expected, key)
        if have and want and have != want:
            raise CheckpointError(f"resume_checkpoint_path={str(path)!r}: checkpoint {key} is {have!r}, this run has {want!r}")
    if "lora" in expected.extra:  # the adapters (their names, hence the state's keys) must be the same
        from neuracore.ml.trainers.peft import check_resumable

        try:
            check_resumable(state.extra.get("lora"), expected.extra["lora"], f"resume_checkpoint_path={str(path)!r}")
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    for key, want in expected.extra.items():  # other settings that change what is learnt (e.g. relative_actions)
        have = state.extra.get(key)
        if key != "lora" and have != want:
            raise CheckpointError(f"resume_checkpoint_path={str(path)!r}: the checkpoint was trained with {key}="
                                  f"{json.dumps(have)}, this run has {json.dumps(want)}; resume with the same {key}")
    from neuracore.ml.trainers import elastic

    where = f"resume_checkpoint_path={str(path)!r}"
    sharded = accelerator.distributed_type == DistributedType.FSDP  # sharded state is saved as folders
    changed = elastic.is_elastic(state, expected.world_size, expected.batch_size, expected.gradient_accumulation_steps)
    if changed and sharded and state.world_size != expected.world_size:
        raise CheckpointError(f"{where}: an FSDP checkpoint is sharded over {state.world_size} processes; resume "
                              f"it on {state.world_size} (this run has {expected.world_size})")
    needed = ["pytorch_model_fsdp_0", "optimizer_0"] if sharded else ["model.safetensors", "optimizer.bin"]
    if not changed:  # an elastic resume re-seeds instead (trainers/elastic.py)
        needed.append(rng_file(Path(), accelerator.process_index).name)
    missing = [n for n in needed if not (path / n).exists()]
    if missing:
        raise CheckpointError(f"resume_checkpoint_path={str(path)!r}: incomplete checkpoint, missing {', '.join(missing)}")
    try:
        accelerator.load_state(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure is fatal for a resume
        raise CheckpointError(f"resume_checkpoint_path={str(path)!r}: cannot load ({one_line(exc)})") from None
    if changed:  # another world size or per-device batch: position in samples, fresh accumulation cycle
        state = elastic.convert_position(state, expected, where)
        elastic.reseed(int(expected.extra.get("seed", 0) or 0), state.step, accelerator.process_index)
        accelerator.step = 0
    else:
        try:  # after accelerate's own (absent) RNG file: the generators and its micro-step counter, strictly
            accelerator.step = load_rng_state(rng_file(path, accelerator.process_index))
        except ValueError as exc:
            raise CheckpointError(f"{where}: {exc}") from None
    if model is not None and hasattr(model, "load_checkpoint_state"):
        extra = path / ALGORITHM_STATE_FILE
        try:
            tensors: dict[str, torch.Tensor] = {}
            metadata: dict[str, str] = {}
            if extra.exists():
                with safe_open(str(extra), framework="pt", device="cpu") as f:
                    metadata = dict(f.metadata() or {})
                    tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
            model.load_checkpoint_state(tensors, metadata)
        except Exception as exc:  # noqa: BLE001 - corrupt file or state that does not fit the model
            raise CheckpointError(
                f"resume_checkpoint_path={str(path)!r}: {ALGORITHM_STATE_FILE}: {one_line(exc)}"
            ) from None
    return state

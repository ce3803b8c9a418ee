"""The run folder: safety checks before writing, logging into it, and model exports."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType

from neuracore.ml.config.schema import TrainConfig
from neuracore.ml.core.errors import ConfigError, one_line
from neuracore.ml.export.model_folder import export_model
from neuracore.ml.trainers.accelerator import core_model
from neuracore.ml.trainers.checkpoint import TrainerState, list_checkpoints
from neuracore.ml.trainers.peft import lora_settings_of


def prepare_run_folder(run_dir: Path, config: TrainConfig, state: PartialState) -> None:
    """Refuse to train a fresh run over an existing one's checkpoints; create the folder."""
    if state.is_main_process:
        if config.resume_checkpoint_path is None and list_checkpoints(run_dir):
            raise ConfigError(
                f"training_name: run folder {run_dir} already has checkpoints; resume it with "
                "resume_checkpoint_path=auto or choose another training_name"
            )
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            key = "local_output_dir" if config.local_output_dir else "training_name"
            raise ConfigError(f"{key}: cannot create the run folder {run_dir} ({exc.strerror or one_line(exc)}); "
                              "choose a writable place (local_output_dir=...)") from None
    state.wait_for_everyone()


def discard_unstarted_run(run_dir: Path) -> None:
    """Remove a run folder this job created when the run failed before training (rank 0 only).

    Only a folder without checkpoints is removed; its log handler is closed first.
    """
    if list_checkpoints(run_dir):
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir.resolve():
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(run_dir, ignore_errors=True)


def setup_logging(run_dir: Path, is_main: bool) -> None:
    """Console logging (INFO on rank 0, warnings elsewhere) and `<run>/train.log` on rank 0."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_neuracore", False):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console.setLevel(logging.INFO if is_main else logging.WARNING)
    console._neuracore = True  # type: ignore[attr-defined]
    root.addHandler(console)
    if is_main:
        file_handler = logging.FileHandler(run_dir / "train.log")
        file_handler.setFormatter(fmt)
        file_handler._neuracore = True  # type: ignore[attr-defined]
        root.addHandler(file_handler)
    root.setLevel(logging.INFO)
    for noisy in ("accelerate", "datasets", "torch", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def export_run(
    accelerator: Accelerator,
    model: Any,
    out_dir: Path,
    state: TrainerState,
    train_losses: dict[str, float],
    validation_losses: dict[str, float],
    dataset: dict[str, Any],
    command: str,
    rollouts: dict[str, Any] | None = None,
) -> Path:
    """Export the unwrapped model with its training summary (call on every rank; rank 0 writes).

    `rollouts`: the last rollout report of this model (`eval.env`), recorded beside the losses."""
    training = {
        "steps": state.step,
        "epochs_completed": state.epoch,
        "samples_seen": state.samples_seen,
        "batch_size_per_device": state.batch_size,
        "world_size": state.world_size,
        "train_losses": train_losses,
        "validation_losses": validation_losses,
        "best_validation_loss": state.best_validation_loss,
        "command": command,
    }
    if rollouts:
        training["rollouts"] = rollouts
        training["best_success_rate"] = state.best_success_rate
    unwrapped = core_model(accelerator, model)
    with unwrapped.inference_weights():  # e.g. EMA weights are what gets exported
        # Under FSDP gathering the full state dict is collective: every rank calls export_run.
        full = accelerator.get_state_dict(model) if accelerator.distributed_type == DistributedType.FSDP else None
        if not accelerator.is_main_process:
            return out_dir
        lora = lora_settings_of(unwrapped)
        if lora is not None:  # merged weights (default) or the adapters alone
            from neuracore.ml.export.adapter import export_lora

            state = full if full is not None else unwrapped.state_dict()
            return export_lora(unwrapped, out_dir, lora, state, training=training, dataset=dataset)
        return export_model(unwrapped, out_dir, training=training, dataset=dataset, state_dict=full)

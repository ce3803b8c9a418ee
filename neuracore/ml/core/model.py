"""The small base class every algorithm subclasses."""

from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.model_init import ModelInitDescription

Batch = dict[str, Any]


class NeuracoreModel(nn.Module, abc.ABC):
    """A policy: built from a `ModelInitDescription` plus hyper-parameters (the yaml keys).

    Subclasses declare the DataTypes they accept, implement `training_step` (losses from a
    batch; `forward` calls it so DDP/FSDP wrapping sees the computation) and `predict`
    (unnormalised output chunks), and may override optimizers and schedulers.
    """

    algorithm_name: ClassVar[str] = ""
    supported_input_data_types: ClassVar[frozenset[DataType]] = frozenset()
    supported_output_data_types: ClassVar[frozenset[DataType]] = frozenset()
    # Hyper-parameter values used when rebuilding from exported weights (skip pretrained loads).
    rebuild_overrides: ClassVar[dict[str, Any]] = {"use_pretrained_weights": False}
    # Observations per input window (t-history+1 .. t); algorithms with history raise it.
    observation_history: int = 1
    # The trainer's EMA of the weights (trainers/ema.py), attached for training when `ema` is on.
    weight_ema: Any = None

    def __init__(self, model_init_description: ModelInitDescription) -> None:
        super().__init__()
        self.model_init_description = model_init_description
        self._check_supported(model_init_description)

    @classmethod
    def _check_supported(cls, mid: ModelInitDescription) -> None:
        for kind, requested, supported in (
            ("input", mid.inputs, cls.supported_input_data_types),
            ("output", mid.outputs, cls.supported_output_data_types),
        ):
            unsupported = [dt.value for dt in requested if dt not in supported]
            if unsupported:
                valid = ", ".join(sorted(d.value for d in supported))
                raise ConfigError(
                    f"{kind}_data_types: {cls.algorithm_name or cls.__name__} does not support "
                    f"{', '.join(unsupported)}; it supports {valid}"
                )

    @classmethod
    def hyperparameter_defaults(cls) -> dict[str, Any]:
        """Constructor keyword arguments and their defaults (the valid `algorithm.*` keys)."""
        params = inspect.signature(cls.__init__).parameters
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {
            name: (None if p.default is inspect.Parameter.empty else p.default)
            for name, p in params.items()
            if p.kind in kinds and name not in ("self", "model_init_description")
        }

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Losses and metrics for a batch (the DDP-visible entry point)."""
        return self.training_step(batch)

    @abc.abstractmethod
    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Return a dict with a scalar `loss` (what is optimised) plus any other scalar terms."""

    @abc.abstractmethod
    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Return unnormalised `[B, H, D]` chunks keyed by output DataType value."""

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimizers for this model (default: one AdamW over all trainable parameters)."""
        lr = float(getattr(self, "lr", 1e-4))
        weight_decay = float(getattr(self, "weight_decay", 0.0))
        params = [p for p in self.parameters() if p.requires_grad]
        return [torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)]

    def export_assets(self) -> dict[str, Path]:
        """Local folders an export must carry, keyed by the hyper-parameter that names them (default: none).

        `export_model` copies each folder into `<export>/assets/<name>/` (recording every file's sha256),
        and `load_model_folder` rebuilds the model with `<name>` pointing at that copy, so an exported
        model never depends on a path of the machine it was trained on (e.g. pi0's `tokenizer_path`).
        """
        return {}

    def base_weight_files(self) -> list[Path]:
        """Files the initial weights were read from (e.g. pi0's `pretrained_path`); default: none.

        A LoRA adapter-only export (`lora.export=adapter`) refers to them by sha256 as its base.
        """
        return []

    def prepare_batch(self, batch: Batch) -> Batch:
        """Host-side work on a batch before the step program runs (e.g. tokenising language); default: none.

        Whatever needs Python objects (strings) happens here, so `training_step` is tensor work only
        and compiles as one graph.
        """
        return batch

    def prepare_training_state(self) -> None:
        """Create training-only state (e.g. EMA shadow weights) on the weights' device before the first step."""

    def ema_defaults(self) -> dict[str, float] | None:
        """The EMA this algorithm trains with under `ema.decay=auto` ({"decay", "power"}), or None (off)."""
        return None

    def lora_defaults(self) -> dict[str, list[str]]:
        """What `lora.target_modules=auto` and `lora.trainable=auto` mean for this algorithm.

        `target_modules`: patterns of the module names that get LoRA adapters (a regular expression
        matching the whole name, or a name matched as a suffix, as peft does); only `nn.Linear` layers whose
        weight trains without LoRA qualify. `trainable`: patterns of modules trained fully besides the
        adapters (everything else is frozen). Default: adapters on every linear layer, nothing else trained.
        """
        return {"target_modules": [r".*"], "trainable": []}

    def update_in_step(self) -> None:
        """Tensor-only update right after each optimizer step, inside the (compiled) step program.

        It must not read values back to the host (no `.item()`, no Python branch on a tensor): with
        `compile=true` it is traced into the step's graph. Default: the trainer's EMA, when attached;
        an override calls `super().update_in_step()`.
        """
        if self.weight_ema is not None:
            self.weight_ema.update()

    def on_optimizer_step(self, step: int) -> None:
        """Host-side hook after every optimizer step, outside the step program; default: nothing."""

    def checkpoint_state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Training state outside parameters, buffers and optimizers (e.g. the EMA of the weights).

        Returned as named tensors plus string metadata; every checkpoint stores them in
        `algorithm_state.safetensors` (never pickled). Default: the trainer's EMA, when attached.
        """
        return self.weight_ema.state() if self.weight_ema is not None else ({}, {})

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Restore what `checkpoint_state` returned; raise ValueError when it does not fit this model."""
        if self.weight_ema is not None:
            self.weight_ema.load(tensors, metadata)
        elif tensors or metadata:
            what = "an EMA of the weights" if "ema" in metadata else "extra state"
            raise ValueError(f"the checkpoint has {what}, but this run keeps none (set ema.decay as it was)")

    @contextlib.contextmanager
    def inference_weights(self) -> Iterator[None]:
        """Context in which the weights used for validation and export are active: the EMA weights when
        the trainer keeps an EMA, else the training weights."""
        if self.weight_ema is None:
            yield
            return
        with self.weight_ema.swapped_in():
            yield

    def configure_schedulers(
        self, optimizers: list[torch.optim.Optimizer], num_training_steps: int
    ) -> list[torch.optim.lr_scheduler.LRScheduler]:
        """LR schedulers stepped once per optimizer step (default: none)."""
        return []


def build_model(
    cls: type[NeuracoreModel], mid: ModelInitDescription, hyperparameters: dict[str, Any]
) -> NeuracoreModel:
    """Instantiate `cls` after checking every hyper-parameter name against its signature."""
    if not (isinstance(cls, type) and issubclass(cls, NeuracoreModel)):
        raise ConfigError(f"algorithm._target_: {cls!r} is not a subclass of NeuracoreModel")
    valid = cls.hyperparameter_defaults()
    unknown = sorted(set(hyperparameters) - set(valid))
    if unknown:
        import difflib

        hints = [f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, valid, 1)) else k for k in unknown]
        raise ConfigError(
            f"algorithm.{hints[0].split(' ')[0]}: unknown hyper-parameter {', '.join(hints)} for "
            f"{cls.algorithm_name or cls.__name__}; valid: {', '.join(sorted(valid))}"
        )
    from neuracore.ml.core.hyperparameters import check_hyperparameters

    check_hyperparameters(cls, hyperparameters)  # ranges: before anything is allocated
    model = cls(mid, **hyperparameters)
    model.hyperparameters = {**valid, **hyperparameters}
    return model

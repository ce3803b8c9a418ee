"""EMA of the weights for every algorithm: updated inside the step program, checkpointed exactly, FSDP-aware.

`attach_ema(model, options)` hangs a `WeightEMA` on the algorithm (`model.weight_ema`); the base
class's hooks then use it: `update_in_step` (tensor ops only, traced into a compiled step),
`inference_weights` (validation and export see the EMA weights), `checkpoint_state` /
`load_checkpoint_state` (`algorithm_state.safetensors`: `ema.<parameter>` tensors plus an `ema`
JSON with the schedule and the update count).

The schedule is diffusers' `EMAModel` with warm-up (Diffusion Policy's): after `n` updates the
decay is `1 - (1 + n / inv_gamma) ** -power`, clamped to `[min_decay, decay]`, and 0 at the first
update (the shadow starts as the weights). The update count is a device tensor, so no step reads
it back. Under FSDP the shadows are sharded like the parameters they follow (DTensors).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from neuracore.ml.core.errors import ConfigError

logger = logging.getLogger(__name__)


class WeightEMA:
    """Shadow copies of a model's parameters, moved towards them after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float, power: float = 0.75, inv_gamma: float = 1.0,
                 min_decay: float = 0.0) -> None:
        self.decay, self.power, self.inv_gamma, self.min_decay = float(decay), float(power), float(inv_gamma), \
            float(min_decay)
        # Only what trains: frozen weights (a frozen backbone, LoRA's base layers) equal their EMA anyway.
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in model.named_parameters() if p.requires_grad]
        with torch.no_grad():
            self.shadows = [p.detach().clone() for p in self.params]
        device = self.params[0].device if self.params else torch.device("cpu")
        self.updates = torch.zeros((), dtype=torch.float32, device=device)

    def settings(self) -> dict[str, float]:
        """The schedule (recorded in checkpoints and checked on resume)."""
        return {"decay": self.decay, "power": self.power, "inv_gamma": self.inv_gamma, "min_decay": self.min_decay}

    @torch.no_grad()
    def update(self) -> None:
        """One update, as tensor ops only: s <- s - (1 - d) * (s - p) for every trained parameter."""
        self.updates.add_(1)
        n = (self.updates - 1).clamp_min(0)
        decay = (1 - (1 + n / self.inv_gamma) ** -self.power).clamp(self.min_decay, self.decay)
        decay = torch.where(n > 0, decay, torch.zeros_like(decay))
        if self.params:
            torch._foreach_add_(self.shadows, torch._foreach_mul(torch._foreach_sub(self.shadows, self.params),
                                                                 decay - 1))

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The EMA weights in the model inside the block, the training weights back afterwards."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for p, s in zip(self.params, self.shadows, strict=True):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, saved, strict=True):
                    p.copy_(t)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """`ema.<name>` shadows and the `ema` JSON (schedule and update count; read back here only)."""
        tensors = {f"ema.{n}": s.detach() for n, s in zip(self.names, self.shadows, strict=True)}
        return tensors, {"ema": json.dumps({**self.settings(), "optimization_step": int(self.updates)})}

    @torch.no_grad()
    def load(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        """Restore shadows and update count exactly; ValueError naming what does not fit."""
        if "ema" not in metadata:
            raise ValueError("the checkpoint has no EMA state, but this run keeps one (ema.decay is set)")
        saved = json.loads(metadata["ema"])
        missing = [n for n in self.names if f"ema.{n}" not in tensors]
        unexpected = [k for k in tensors if not k.startswith("ema.") or k[4:] not in self.names]
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        changed = {k: (saved.get(k), v) for k, v in self.settings().items() if saved.get(k) not in (None, v)}
        if changed:
            key, (was, now) = next(iter(changed.items()))
            raise ValueError(f"ema.{key}={now} but the checkpoint's EMA used {was}; resume with the same ema settings")
        for name, shadow in zip(self.names, self.shadows, strict=True):
            full = tensors[f"ema.{name}"]
            if tuple(full.shape) != tuple(shadow.shape):
                raise ValueError(f"EMA shadow of {name} has shape {list(full.shape)}, the parameter {list(shadow.shape)}")
            _copy_full_into(shadow, full)
        self.updates.fill_(float(saved["optimization_step"]))


def _copy_full_into(shadow: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full (CPU) tensor into `shadow`, which may be a DTensor shard under FSDP."""
    if hasattr(shadow, "device_mesh"):  # DTensor: keep only this rank's shard of the full value
        from torch.distributed.tensor import distribute_tensor

        local = distribute_tensor(full.to(shadow.device, shadow.dtype), shadow.device_mesh, shadow.placements)
        shadow.to_local().copy_(local.to_local())
    else:
        shadow.copy_(full.to(shadow.device, shadow.dtype))


def resolve_ema(options: Any, model: nn.Module) -> dict[str, float] | None:
    """The EMA settings of this run: `ema.decay=auto` takes the algorithm's `ema_defaults()`; null is off."""
    defaults = model.ema_defaults() if hasattr(model, "ema_defaults") else None
    decay = options.decay
    if decay == "auto":
        if defaults is None:
            return None
        decay = defaults["decay"]
    if decay is None:
        return None
    if isinstance(decay, str) or not 0.0 < float(decay) < 1.0:
        raise ConfigError(f"ema.decay={decay!r}: expected a number in (0, 1), auto (the algorithm's default) or null (off)")
    power = options.power
    if power == "auto":
        power = (defaults or {}).get("power", 0.75)
    if isinstance(power, str) or float(power) <= 0:
        raise ConfigError(f"ema.power={power!r}: expected a positive number or auto")
    return {"decay": float(decay), "power": float(power), "inv_gamma": float(options.inv_gamma),
            "min_decay": float(options.min_decay)}


def attach_ema(model: nn.Module, options: Any) -> WeightEMA | None:
    """Give the (unwrapped, device-placed) algorithm its EMA per `options` (the `ema` config group)."""
    settings = resolve_ema(options, model)
    model.weight_ema = WeightEMA(model, **settings) if settings else None
    if settings:
        logger.info("EMA of the weights: decay %g, power %g (validation and export use the EMA weights)",
                    settings["decay"], settings["power"])
    return model.weight_ema

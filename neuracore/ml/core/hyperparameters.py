"""Valid ranges of numeric hyper-parameters, checked at start-up with one line naming the key.

Keys mean the same in every algorithm here (`lr`, `hidden_dim`, `dropout`, ...), so the table is
shared; an algorithm adds or narrows its own with the class attribute `hyperparameter_ranges`
(merged over this table). Every numeric hyper-parameter of a registered algorithm has a range
(tests/ml/config/test_hostile_config.py checks it); a user's own algorithm without one gets the
finiteness check only. Upper bounds are sanity limits far above any published model (so a typo
such as `hidden_dim=1000000000` is an error, not an attempt to allocate exabytes); the memory a
valid configuration needs is checked separately, before allocating (`trainers/model_size.py`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from neuracore.ml.core.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """`low <= value <= high` (either end open or absent); applies to each element of a list."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        """E.g. `> 0`, `in [0, 1)`, `in [1, 65536]`."""
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return "finite"

    def contains(self, value: float) -> bool:
        """Whether a finite `value` lies in the range."""
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


POSITIVE = Range(0, None, low_open=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1, high_open=True)  # dropout
OPEN_UNIT = Range(0, 1, low_open=True, high_open=True)  # Adam betas, EMA decay
WIDTH = Range(1, 1 << 16)  # layer widths and feature sizes
COUNT = Range(1, 1024)  # layers, heads, groups
STEPS = Range(0, 1 << 30)  # schedule lengths in optimizer steps

HYPERPARAMETER_RANGES: dict[str, Range] = {
    # optimisation
    "lr": POSITIVE, "lr_backbone": NON_NEGATIVE, "decay_lr": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE, "adam_eps": POSITIVE, "optimizer_eps": POSITIVE,
    "beta1": Range(0, 1, high_open=True), "beta2": Range(0, 1, high_open=True),
    "optimizer_betas": Range(0, 1, high_open=True),
    "warmup_steps": STEPS, "lr_scheduler_num_warmup_steps": STEPS, "decay_steps": Range(1, 1 << 30),
    "dropout": PROBABILITY, "kl_weight": NON_NEGATIVE,
    # sizes
    "hidden_dim": WIDTH, "cnn_output_dim": WIDTH, "dim_feedforward": Range(1, 1 << 18), "latent_dim": WIDTH,
    "vision_width": WIDTH, "vision_mlp_dim": Range(1, 1 << 18), "vlm_width": WIDTH, "vlm_mlp_dim": Range(1, 1 << 18),
    "expert_width": WIDTH, "expert_mlp_dim": Range(1, 1 << 18), "head_dim": Range(1, 4096),
    "unet_down_dims": WIDTH, "unet_diffusion_step_embed_dim": WIDTH, "unet_kernel_size": Range(1, 31),
    "unet_n_groups": COUNT, "spatial_softmax_num_keypoints": Range(1, 4096),
    "vocab_size": Range(1, 1 << 22), "max_token_len": Range(1, 1 << 16),
    "max_state_dim": Range(1, 4096), "max_action_dim": Range(1, 4096),
    "image_size": Range(8, 4096), "patch_size": Range(1, 512),
    # counts
    "num_layers": COUNT, "num_encoder_layers": COUNT, "num_decoder_layers": COUNT, "num_vae_encoder_layers": COUNT,
    "depth": COUNT, "vision_depth": COUNT, "nheads": COUNT, "num_heads": COUNT, "num_kv_heads": COUNT,
    "vision_num_heads": COUNT,
    # diffusion / flow matching
    "num_train_timesteps": Range(1, 100_000), "num_inference_steps": Range(1, 100_000),
    "beta_start": OPEN_UNIT, "beta_end": OPEN_UNIT, "clip_sample_range": POSITIVE,
    "crop_ratio": Range(0, 1, low_open=True),
    "ema_max_decay": OPEN_UNIT, "ema_power": POSITIVE,
    # inference
    "temporal_ensemble_coeff": NON_NEGATIVE, "inference_noise_seed": Range(0, 2**32 - 1),
}


def is_numeric(value: Any) -> bool:
    """A number (not a bool) or a non-empty list of numbers."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(is_numeric(v) and not isinstance(v, (list, tuple)) for v in value)
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def ranges_for(cls: type) -> dict[str, Range]:
    """The shared table with the class's own `hyperparameter_ranges` (along its MRO) on top."""
    merged = dict(HYPERPARAMETER_RANGES)
    for klass in reversed(cls.__mro__):
        merged.update(klass.__dict__.get("hyperparameter_ranges", {}))
    return merged


def check_range(key: str, value: Any, valid: Range | None) -> None:
    """One-line `ConfigError` when a numeric `value` (or an element of a list) is non-finite or out of range."""
    if value is None or not is_numeric(value):
        return
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if not math.isfinite(float(v)):
            raise ConfigError(f"{key}={value!r}: must be a finite number")
        if valid is not None and not valid.contains(float(v)):
            raise ConfigError(f"{key}={value!r}: must be {valid.describe()}"
                              + (" (each element)" if isinstance(value, (list, tuple)) else ""))



def check_hyperparameters(cls: type, hyperparameters: dict[str, Any], prefix: str = "algorithm.") -> None:
    """Every numeric hyper-parameter finite and in its range (`ranges_for(cls)`), or a one-line error."""
    ranges = ranges_for(cls)
    for key, value in hyperparameters.items():
        check_range(f"{prefix}{key}", value, ranges.get(key))
__all__ = ["HYPERPARAMETER_RANGES", "Range", "check_hyperparameters", "check_range", "is_numeric", "ranges_for"]

"""Device-side normalisation kept as buffers, so a training step never syncs with the host."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.model_init import FeatureSpec

NORMALIZATION_MODES = ("mean_std", "min_max", "quantile")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalizer(nn.Module):
    """Maps a vector feature to a normalised space and back.

    `mode="mean_std"` gives zero mean / unit variance; `mode="min_max"` maps [min, max] to
    [-1, 1] (Diffusion Policy's convention); `mode="quantile"` maps [q01, q99] to [-1, 1] and clips
    there (openpi's pi0.5 convention: outliers do not stretch the range). Degenerate ranges
    (constant items) pass through.
    """

    def __init__(self, feature: FeatureSpec, mode: str = "mean_std", eps: float = 1e-6) -> None:
        super().__init__()
        if mode not in NORMALIZATION_MODES:
            raise ValueError(f"normalisation mode {mode!r}; valid: {', '.join(NORMALIZATION_MODES)}")
        self.mode = mode
        dim = feature.dim
        stats = feature.stats
        if mode == "mean_std":
            center = torch.tensor(stats.get("mean", [0.0] * dim), dtype=torch.float32)
            scale = torch.tensor(stats.get("std", [1.0] * dim), dtype=torch.float32)
        else:
            low, high = ("min", "max") if mode == "min_max" else ("q01", "q99")
            lo = torch.tensor(stats.get(low, [-1.0] * dim), dtype=torch.float32)
            hi = torch.tensor(stats.get(high, [1.0] * dim), dtype=torch.float32)
            center, scale = (hi + lo) / 2, (hi - lo) / 2
        scale = torch.where(scale.abs() < eps, torch.ones_like(scale), scale)
        self.register_buffer("center", center, persistent=True)
        self.register_buffer("scale", scale, persistent=True)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw values → normalised (clipped to [-1, 1] in quantile mode)."""
        out = (x - self.center) / self.scale
        return out.clamp(-1.0, 1.0) if self.mode == "quantile" else out

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised values → raw."""
        return x * self.scale + self.center


def images_to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in 0-255 → float in [0, 1] (floats are assumed to be in [0, 1] already)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


class ImageNetNormalize(nn.Module):
    """Float [0, 1] RGB images (channel axis at -3) → ImageNet-normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise; input must already be float in [0, 1]."""
        return (images - self.mean) / self.std


def vector_normalizers(
    features: Mapping[DataType, FeatureSpec], modes: str | Mapping[str, str], default: str,
    key: str = "algorithm.normalization", known: Mapping[DataType, FeatureSpec] | None = None,
) -> nn.ModuleDict:
    """One `Normalizer` per vector DataType of `features`, keyed by its value.

    `modes` is one mode for every DataType (`quantile`) or a mapping per DataType
    (`{JOINT_POSITIONS: mean_std, JOINT_TARGET_POSITIONS: quantile}`; unnamed ones get `default`).
    Raises a one-line `ConfigError` naming `key` for an unknown mode or DataType (`known`: the
    DataTypes a mapping may name, default `features`; inputs and outputs share one mapping).
    """
    from neuracore.ml.core.errors import ConfigError

    valid = ", ".join(NORMALIZATION_MODES)
    if isinstance(modes, str):
        chosen = dict.fromkeys((dt.value for dt in features), modes)
    else:
        names = [dt.value for dt in (features if known is None else known)]
        unknown = [k for k in modes if k not in names]
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: not a vector DataType of this model; valid: {', '.join(names)}")
        chosen = {dt.value: modes.get(dt.value, default) for dt in features}
    for name, mode in chosen.items():
        if mode not in NORMALIZATION_MODES:
            where = key if isinstance(modes, str) else f"{key}.{name}"
            raise ConfigError(f"{where}={mode!r}: valid: {valid}")
    return nn.ModuleDict({dt.value: Normalizer(f, chosen[dt.value]) for dt, f in features.items()})

"""torchvision ResNet trunks with optional ImageNet weights that never silently stay random."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

import torch
import torchvision
from torch import nn

from neuracore.ml.core.errors import ConfigError

ResNetName = Literal["resnet18", "resnet34", "resnet50"]  # annotate hyper-parameters with it: checked at start-up
_TRUNKS = dict(zip(get_args(ResNetName), (512, 512, 2048)))


def resnet_trunk(name: str, pretrained: bool, key: str = "algorithm.image_backbone") -> tuple[nn.Module, int]:
    """A ResNet without its pooling and classifier, and its output channel count.

    With `pretrained`, ImageNet weights come from the torch hub cache (`$TORCH_HOME`); if they
    are absent and cannot be downloaded this is a one-line error, never a random model.
    """
    if name not in _TRUNKS:
        raise ConfigError(f"{key}={name!r}: unknown backbone; valid: {', '.join(_TRUNKS)}")
    model = torchvision.models.get_model(name, weights=None)
    if pretrained:
        weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
        model.load_state_dict(_load_imagenet_state(weights.url, name))
    trunk = nn.Sequential(*list(model.children())[:-2])
    return trunk, _TRUNKS[name]


def _load_imagenet_state(url: str, name: str) -> dict[str, torch.Tensor]:
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    path = cache / os.path.basename(url)
    try:
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
        if os.environ.get("NEURACORE_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError("offline mode (NEURACORE_OFFLINE/HF_HUB_OFFLINE), no download attempted")
        return torch.hub.load_state_dict_from_url(url, model_dir=str(cache), progress=False, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - every failure means "no pretrained weights"
        raise ConfigError(
            f"algorithm.use_pretrained_weights=true: ImageNet weights for {name} are not in {path} and could "
            f"not be loaded ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); put the file there or set "
            "algorithm.use_pretrained_weights=false"
        ) from None


def batchnorm_to_groupnorm(module: nn.Module, channels_per_group: int = 16) -> nn.Module:
    """Replace every BatchNorm2d by a GroupNorm (Diffusion Policy's choice for trunks trained from scratch).

    Batch statistics are noisy at small batch sizes and couple samples of a batch; GroupNorm does neither.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            groups = max(child.num_features // channels_per_group, 1)
            setattr(module, name, nn.GroupNorm(groups, child.num_features))
        else:
            batchnorm_to_groupnorm(child, channels_per_group)
    return module

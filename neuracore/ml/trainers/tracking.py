"""TensorBoard through accelerate's tracker: scalars, hparams and an image grid."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from accelerate import Accelerator

from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import DataType

logger = logging.getLogger(__name__)


def flatten_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config → `{"a/b": value}` with values TensorBoard hparams accept."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_config(value, f"{prefix}{key}/"))
        return out
    key = prefix.rstrip("/")
    if data is None:
        out[key] = "null"
    elif isinstance(data, (bool, int, float, str)):
        out[key] = data
    else:
        out[key] = str(data)
    return out


def start_tracking(accelerator: Accelerator, config_raw: dict[str, Any]) -> None:
    """Create `<run>/tensorboard` and write the flattened config as hparams (rank 0 only)."""
    accelerator.init_trackers("tensorboard", config=flatten_config(config_raw))


def log_scalars(accelerator: Accelerator, values: dict[str, float], step: int) -> None:
    """Write finite scalars (non-finite values are logged as text warnings instead)."""
    finite = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    bad = sorted(set(values) - set(finite))
    if bad:
        logger.warning("step %d: non-finite values for %s", step, ", ".join(bad))
    accelerator.log(finite, step=step)


def log_image_grid(accelerator: Accelerator, batch: dict[str, Any], step: int, max_images: int = 16) -> None:
    """A grid per camera of the batch's newest input frames (uint8 [B, T, N, C, H, W])."""
    if not accelerator.is_main_process:
        return
    images = batch.get(keys.INPUTS, {}).get(DataType.RGB_IMAGES.value)
    if images is None:
        return
    import torchvision

    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    frames = images[:max_images, -1].detach().cpu()  # [B, N, C, H, W]
    for cam in range(frames.shape[1]):
        grid = torchvision.utils.make_grid(frames[:, cam], nrow=4)
        writer.add_image(f"inputs/camera_{cam}", grid, global_step=step)


def log_text(accelerator: Accelerator, tag: str, text: str, step: int = 0) -> None:
    """A text entry (e.g. the model summary) on rank 0."""
    if accelerator.is_main_process:
        accelerator.get_tracker("tensorboard", unwrap=True).add_text(tag, text, global_step=step)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable

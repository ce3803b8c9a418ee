"""Small building blocks shared by the image policies: position embeddings, spatial softmax, optimisers."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


def sine_embedding_1d(length: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed `[length, dim]` sinusoidal position embedding (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(temperature) / dim))
    out = torch.zeros(length, dim)
    out[:, 0::2] = torch.sin(position * freqs)
    out[:, 1::2] = torch.cos(position * freqs[: dim // 2])
    return out


class SinePositionEmbedding2d(nn.Module):
    """DETR's 2D sine embedding of a feature map: `[B, C, H, W]` → `[1, dim, H, W]` (half y, half x)."""

    def __init__(self, dim: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"2D sine position embedding needs an even dimension, got {dim}")
        self.half = dim // 2
        self.temperature = temperature

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Embedding for the spatial grid of `features` (depends only on its H and W)."""
        h, w = features.shape[-2:]
        device = features.device
        eps, scale = 1e-6, 2 * math.pi
        # Positions 1..H normalised to (0, 2π], as in DETR with normalize=True.
        y = torch.arange(1, h + 1, device=device, dtype=torch.float32) / (h + eps) * scale
        x = torch.arange(1, w + 1, device=device, dtype=torch.float32) / (w + eps) * scale
        idx = torch.arange(self.half, device=device, dtype=torch.float32)
        dim_t = self.temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / self.half)
        pos_y = y[:, None] / dim_t  # [H, half]
        pos_x = x[:, None] / dim_t  # [W, half]
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        grid = torch.cat(
            (pos_y[:, None, :].expand(h, w, self.half), pos_x[None, :, :].expand(h, w, self.half)), dim=-1
        )
        return grid.permute(2, 0, 1).unsqueeze(0).to(features.dtype)


class SpatialSoftmax(nn.Module):
    """Keypoints of a feature map (Levine et al. 2016): 1x1 conv to K maps, softmax, expected (x, y).

    `[B, C, H, W]` → `[B, K, 2]` coordinates in [-1, 1].
    """

    def __init__(self, in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        self.num_keypoints = num_keypoints

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Expected image coordinates of each keypoint's softmax attention."""
        maps = self.keypoints(features)
        b, k, h, w = maps.shape
        ys = torch.linspace(-1.0, 1.0, h, device=maps.device, dtype=torch.float32)
        xs = torch.linspace(-1.0, 1.0, w, device=maps.device, dtype=torch.float32)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        grid = torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1)  # [HW, 2]
        attention = torch.softmax(maps.reshape(b, k, h * w).float(), dim=-1)
        return attention @ grid


def random_crop(images: torch.Tensor, size: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
    """A random `size` crop per image of `[N, C, H, W]`, on the images' device, without host syncs.

    Offsets are drawn on the device and applied with one gather, so a CUDA step never waits.
    """
    n, c, h, w = images.shape
    ch, cw = size
    if (ch, cw) == (h, w):
        return images
    top = torch.randint(0, h - ch + 1, (n, 1), device=images.device, generator=generator)
    left = torch.randint(0, w - cw + 1, (n, 1), device=images.device, generator=generator)
    rows = top + torch.arange(ch, device=images.device)  # [N, ch]
    cols = left + torch.arange(cw, device=images.device)  # [N, cw]
    index = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, ch * cw).expand(n, c, ch * cw)
    return images.reshape(n, c, h * w).gather(2, index).reshape(n, c, ch, cw)


def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The central `size` crop of `[N, C, H, W]` images (evaluation counterpart of `random_crop`)."""
    h, w = images.shape[-2:]
    top, left = (h - size[0]) // 2, (w - size[1]) // 2
    return images[..., top : top + size[0], left : left + size[1]]


def adamw(groups: Iterable[dict], **kwargs: object) -> torch.optim.AdamW:
    """AdamW with the fused kernel where CUDA will hold the weights, else the multi-threaded foreach one.

    Built before `accelerator.prepare` moves the model, so the choice looks at what the machine has;
    the CPU fused kernel measured several times slower than foreach here, so CPU training never gets it.
    """
    fused = torch.cuda.is_available()
    return torch.optim.AdamW(list(groups), fused=fused or None, **kwargs)

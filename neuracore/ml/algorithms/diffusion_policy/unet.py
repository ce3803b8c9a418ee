"""The FiLM-conditioned 1D temporal U-Net of Diffusion Policy (Chi et al. 2023)."""

from __future__ import annotations

import itertools

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn


class Conv1dBlock(nn.Module):
    """Conv1d → GroupNorm → Mish."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C, T]` → `[B, C', T]`."""
        return self.block(x)


class ConditionalResidualBlock(nn.Module):
    """Two conv blocks; the conditioning vector modulates the first one's output by FiLM (scale and bias)."""

    def __init__(self, in_channels: int, out_channels: int, cond_dim: int, kernel_size: int, groups: int,
                 scale_modulation: bool) -> None:
        super().__init__()
        self.conv1 = Conv1dBlock(in_channels, out_channels, kernel_size, groups)
        self.conv2 = Conv1dBlock(out_channels, out_channels, kernel_size, groups)
        self.scale_modulation = scale_modulation
        self.out_channels = out_channels
        self.cond = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, out_channels * (2 if scale_modulation else 1)))
        self.residual = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """`x`: `[B, C, T]`; `cond`: `[B, cond_dim]`."""
        out = self.conv1(x)
        film = self.cond(cond).unsqueeze(-1)
        if self.scale_modulation:
            scale, bias = film[:, : self.out_channels], film[:, self.out_channels :]
            out = scale * out + bias
        else:
            out = out + film
        return self.conv2(out) + self.residual(x)


class ConditionalUnet1d(nn.Module):
    """Denoiser: noisy action sequence `[B, T, A]`, diffusion step `[B]`, global condition → `[B, T, A]`.

    `T` must be divisible by `2 ** (len(down_dims) - 1)` (the policy pads sequences to such a length).
    """

    def __init__(self, action_dim: int, global_cond_dim: int, down_dims: list[int], kernel_size: int,
                 groups: int, step_embed_dim: int, scale_modulation: bool) -> None:
        super().__init__()
        self.step_embed_dim = step_embed_dim
        self.step_encoder = nn.Sequential(
            nn.Linear(step_embed_dim, step_embed_dim * 4), nn.Mish(), nn.Linear(step_embed_dim * 4, step_embed_dim)
        )
        cond_dim = step_embed_dim + global_cond_dim

        def block(cin: int, cout: int) -> ConditionalResidualBlock:
            return ConditionalResidualBlock(cin, cout, cond_dim, kernel_size, groups, scale_modulation)

        dims = [action_dim, *down_dims]
        pairs = list(itertools.pairwise(dims))
        self.down = nn.ModuleList()
        for i, (cin, cout) in enumerate(pairs):
            last = i == len(pairs) - 1
            self.down.append(nn.ModuleList([
                block(cin, cout), block(cout, cout),
                nn.Conv1d(cout, cout, 3, stride=2, padding=1) if not last else nn.Identity(),
            ]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for cin, cout in reversed(pairs[1:]):
            self.up.append(nn.ModuleList([
                block(cout * 2, cin), block(cin, cin), nn.ConvTranspose1d(cin, cin, 4, stride=2, padding=1),
            ]))
        self.final = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, groups), nn.Conv1d(down_dims[0], action_dim, 1)
        )
        self.temporal_multiple = 2 ** (len(down_dims) - 1)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """Predict noise (or the clean sample) for `sample` `[B, T, A]`."""
        # Sinusoidal step embedding as in the paper (sin then cos, frequencies 10000^(-i/(d/2-1))).
        emb = get_timestep_embedding(timesteps, self.step_embed_dim, flip_sin_to_cos=False, downscale_freq_shift=1)
        cond = torch.cat([self.step_encoder(emb.to(global_cond.dtype)), global_cond], dim=-1)
        x = sample.transpose(1, 2)  # [B, A, T]
        skips = []
        for res1, res2, downsample in self.down:
            x = res2(res1(x, cond), cond)
            skips.append(x)
            x = downsample(x)
        for res in self.mid:
            x = res(x, cond)
        for res1, res2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(res2(res1(x, cond), cond))
        return self.final(x).transpose(1, 2)

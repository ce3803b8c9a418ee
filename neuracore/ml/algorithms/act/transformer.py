"""DETR-style post-norm transformer layers: position embeddings are added to queries and keys at every layer."""

from __future__ import annotations

import torch
from torch import nn


def _ffn(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Self-attention + feed-forward, each followed by residual and LayerNorm."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = _ffn(dim, ffn, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """`x`, `pos`: `[B, S, D]`; `pad`: `[B, S]` true where a token is ignored as a key."""
        qk = x + pos
        x = self.norm1(x + self.drop1(self.attn(qk, qk, x, key_padding_mask=pad, need_weights=False)[0]))
        return self.norm2(x + self.drop2(self.ffn(x)))


class DecoderLayer(nn.Module):
    """Self-attention over queries, cross-attention to the encoder memory, feed-forward (post-norm)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = _ffn(dim, ffn, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_pad: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`x`, `query_pos`: `[B, H, D]`; `memory`, `memory_pos`: `[B, S, D]`."""
        qk = x + query_pos
        x = self.norm1(x + self.drop1(self.self_attn(qk, qk, x, need_weights=False)[0]))
        attended = self.cross_attn(
            x + query_pos, memory + memory_pos, memory, key_padding_mask=memory_pad, need_weights=False
        )[0]
        x = self.norm2(x + self.drop2(attended))
        return self.norm3(x + self.drop3(self.ffn(x)))


class Encoder(nn.Module):
    """A stack of `EncoderLayer`s."""

    def __init__(self, layers: int, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Encode `[B, S, D]` tokens."""
        for layer in self.layers:
            x = layer(x, pos, pad)
        return x


class Decoder(nn.Module):
    """A stack of `DecoderLayer`s with a final LayerNorm."""

    def __init__(self, layers: int, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x, query_pos, memory, memory_pos, memory_pad=None) -> torch.Tensor:
        """Decode queries `[B, H, D]` against `memory`."""
        for layer in self.layers:
            x = layer(x, query_pos, memory, memory_pos, memory_pad)
        return self.norm(x)

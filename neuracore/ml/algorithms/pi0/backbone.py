"""PaliGemma (SigLIP + Gemma) and a Gemma action expert that share attention layer by layer.

Built from transformers' configs and layers (SiglipVisionModel, GemmaDecoderLayer, GemmaRMSNorm,
GemmaRotaryEmbedding, apply_rotary_pos_emb);
only the joint attention (one softmax over prefix and suffix tokens, each stream with its own
projections, norms and MLPs) is written here, because no transformers model runs two weight sets
over one sequence. pi0.5's adaptive RMSNorm of the expert (`AdaRMSNorm`, `adaptive_expert=True`)
is the one other piece written here: transformers' Gemma has no conditioned norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GemmaConfig, SiglipVisionConfig
from transformers.models.gemma.modeling_gemma import (
    GemmaDecoderLayer,
    GemmaRMSNorm,
    GemmaRotaryEmbedding,
    apply_rotary_pos_emb,
)
from transformers.models.siglip.modeling_siglip import SiglipVisionModel

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Pi0Sizes:
    """Widths and depths of the three transformers (defaults: pi0's PaliGemma-3B + Gemma-300M)."""

    vision_width: int = 1152
    vision_depth: int = 27
    vision_mlp_dim: int = 4304
    vision_num_heads: int = 16
    patch_size: int = 14
    image_size: int = 224
    vocab_size: int = 257152
    vlm_width: int = 2048
    vlm_mlp_dim: int = 16384
    expert_width: int = 1024
    expert_mlp_dim: int = 4096
    depth: int = 18
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256


def sizes_from(hyperparameters: dict[str, object]) -> Pi0Sizes:
    """The `Pi0Sizes` fields picked out of an algorithm's keyword arguments (pi0 and pi0.5 share the names)."""
    return Pi0Sizes(**{f.name: hyperparameters[f.name] for f in fields(Pi0Sizes)})  # type: ignore[arg-type]


def vision_config(s: Pi0Sizes) -> SiglipVisionConfig:
    """SigLIP So400m/14 as PaliGemma uses it (no pooling head; all patch tokens go to the LM)."""
    return SiglipVisionConfig(
        hidden_size=s.vision_width,
        intermediate_size=s.vision_mlp_dim,
        num_hidden_layers=s.vision_depth,
        num_attention_heads=s.vision_num_heads,
        patch_size=s.patch_size,
        image_size=s.image_size,
        num_channels=3,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        vision_use_head=False,
        attn_implementation="sdpa",
    )


def gemma_config(s: Pi0Sizes, width: int, mlp_dim: int, vocab_size: int) -> GemmaConfig:
    """A Gemma config sharing depth/heads/head_dim with its partner so attention can be joint."""
    return GemmaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=mlp_dim,
        num_hidden_layers=s.depth,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads,
        head_dim=s.head_dim,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=8192,
        rms_norm_eps=1e-6,
        # pi0 never generates text; the expert has no vocabulary at all.
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="sdpa",
    )


def attention_mask_2d(pad: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """`[B, S, S]` bool: token i sees token j iff both are real and j's block starts no later than i's.

    `blocks[b, i] = 1` where a new block starts (Black et al. 2024: [images+language] [state]
    [actions]): blocks attend bidirectionally inside and causally to earlier blocks.
    """
    cum = torch.cumsum(blocks.int(), dim=1)
    allowed = cum[:, None, :] <= cum[:, :, None]
    allowed = allowed & pad[:, None, :] & pad[:, :, None]
    # A padding token sees itself, so no softmax row is empty (NaN); real tokens never see padding.
    return allowed | torch.eye(pad.shape[1], dtype=torch.bool, device=pad.device)


class AdaRMSNorm(nn.Module):
    """pi0.5's adaptive RMSNorm: `cond` → `dense` → (scale, shift, gate); no fixed weight (openpi's layout).

    `x * rsqrt(mean(x²) + eps) * (1 + scale) + shift`, computed in float32 like Gemma's RMSNorm; the
    gate multiplies the residual branch that follows (`gated_residual`).
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """openpi's PyTorch initialisation: zero weight (no time dependence at first), torch's default bias."""
        nn.init.zeros_(self.dense.weight)
        bound = 1.0 / math.sqrt(self.dense.in_features)
        nn.init.uniform_(self.dense.bias, -bound, bound)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised `x` `[B, S, D]` modulated by `cond` `[B, cond_dim]`, and the gate `[B, 1, D]`."""
        scale, shift, gate = self.dense(cond)[:, None].chunk(3, dim=-1)
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * (1.0 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


def norm_and_gate(norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply a Gemma RMSNorm (gate None) or an `AdaRMSNorm` conditioned on `cond`."""
    if isinstance(norm, AdaRMSNorm):
        if cond is None:
            raise ValueError("an adaptive RMSNorm needs its conditioning (the flow-matching time)")
        return norm(x, cond)
    return norm(x), None


def gated_residual(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """`h + y`, or `h + y * gate` after an adaptive norm."""
    return h + y if gate is None else h + y * gate


def make_adaptive(layer: GemmaDecoderLayer, cond_dim: int) -> None:
    """Swap a decoder layer's two RMSNorms for adaptive ones (pi0.5's expert)."""
    dim, eps = layer.input_layernorm.weight.shape[0], layer.input_layernorm.eps
    layer.input_layernorm = AdaRMSNorm(dim, cond_dim, eps)
    layer.post_attention_layernorm = AdaRMSNorm(dim, cond_dim, eps)


class JointLayer(nn.Module):
    """Layer i of the VLM and of the expert: one attention over both streams, separate weights.

    This is the FSDP wrap unit (with SigLIP's encoder layers) and the gradient-checkpointing unit:
    its forward is what runs, so FSDP gathers exactly these parameters around it.
    """

    def __init__(self, vlm_config: GemmaConfig, expert_config: GemmaConfig, index: int, last: bool,
                 adaptive_expert: bool = False) -> None:
        super().__init__()
        self.vlm = GemmaDecoderLayer(vlm_config, index)
        self.expert = GemmaDecoderLayer(expert_config, index)
        if adaptive_expert:  # pi0.5: the time conditions the expert's norms (cond width = expert width)
            make_adaptive(self.expert, expert_config.hidden_size)
        self.head_dim = vlm_config.head_dim
        self.last = last
        if last:
            # The prefix stream's output after the last attention never reaches the actions, so
            # these get no gradient: frozen so DDP/FSDP see no unused trainable parameters. Its queries
            # (q_proj) only make that output: their gradient is exactly zero, so they are frozen too
            # (else AdamW's weight decay would shrink them for nothing, and LoRA would adapt them).
            for module in (self.vlm.self_attn.q_proj, self.vlm.self_attn.o_proj, self.vlm.post_attention_layernorm,
                           self.vlm.mlp):
                module.requires_grad_(False)

    def forward(
        self,
        prefix: torch.Tensor | None,
        suffix: torch.Tensor | None,
        mask: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past: KV | None = None,
        cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """New prefix and suffix hidden states and this layer's keys/values (post-RoPE).

        `cond` `[B, expert_width]` conditions the expert's adaptive norms (pi0.5); pi0 passes None.
        """
        streams = [(layer, h) for layer, h in ((self.vlm, prefix), (self.expert, suffix)) if h is not None]
        qs, ks, vs, gates = [], [], [], []
        for layer, h in streams:
            x, gate = norm_and_gate(layer.input_layernorm, h, cond if layer is self.expert else None)
            gates.append(gate)
            shape = (*x.shape[:-1], -1, self.head_dim)
            qs.append(layer.self_attn.q_proj(x).view(shape).transpose(1, 2))
            ks.append(layer.self_attn.k_proj(x).view(shape).transpose(1, 2))
            vs.append(layer.self_attn.v_proj(x).view(shape).transpose(1, 2))
        q, k, v = torch.cat(qs, 2), torch.cat(ks, 2), torch.cat(vs, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        new_k, new_v = k, v
        if past is not None:  # inference: the suffix attends to the cached prefix keys/values
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=True)
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
        results: dict[int, torch.Tensor | None] = {}
        start = 0
        for (layer, h), gate in zip(streams, gates, strict=True):
            n = h.shape[1]
            if self.last and layer is self.vlm:
                results[id(layer)] = None  # unused downstream (see __init__)
            else:
                h = gated_residual(h, layer.self_attn.o_proj(out[:, start : start + n]), gate)
                x, gate = norm_and_gate(layer.post_attention_layernorm, h, cond if layer is self.expert else None)
                results[id(layer)] = gated_residual(h, layer.mlp(x), gate)
            start += n
        return results.get(id(self.vlm)), results.get(id(self.expert)), new_k, new_v


class PaliGemmaWithExpert(nn.Module):
    """SigLIP vision tower, projector, Gemma embeddings, joint layers and final norms (no LM head).

    `adaptive_expert=True` (pi0.5) gives every expert RMSNorm, the final one included, an adaRMS `dense`
    layer in place of its weight; `forward` then takes the conditioning `cond`.
    """

    def __init__(self, sizes: Pi0Sizes, adaptive_expert: bool = False) -> None:
        super().__init__()
        self.sizes = sizes
        vlm_config = gemma_config(sizes, sizes.vlm_width, sizes.vlm_mlp_dim, sizes.vocab_size)
        expert_config = gemma_config(sizes, sizes.expert_width, sizes.expert_mlp_dim, 1)
        self.vision = SiglipVisionModel(vision_config(sizes))
        self.projector = nn.Linear(sizes.vision_width, sizes.vlm_width)
        self.embed_tokens = nn.Embedding(sizes.vocab_size, sizes.vlm_width)
        self.layers = nn.ModuleList(
            JointLayer(vlm_config, expert_config, i, last=i == sizes.depth - 1, adaptive_expert=adaptive_expert)
            for i in range(sizes.depth)
        )
        self.vlm_norm = GemmaRMSNorm(sizes.vlm_width, eps=vlm_config.rms_norm_eps)
        self.vlm_norm.requires_grad_(False)  # kept for checkpoint fidelity; pi0 never reads the VLM's output
        self.expert_norm: nn.Module = (
            AdaRMSNorm(sizes.expert_width, sizes.expert_width, eps=expert_config.rms_norm_eps)
            if adaptive_expert
            else GemmaRMSNorm(sizes.expert_width, eps=expert_config.rms_norm_eps)
        )
        self.rotary = GemmaRotaryEmbedding(vlm_config)  # same head_dim and positions for both streams
        self.gradient_checkpointing = False
        self._init_weights(vlm_config.initializer_range)

    def _init_weights(self, std: float) -> None:
        # Gemma's initialisation (normal(0, 0.02), zero biases); RMSNorm weights start at 0 (scale 1).
        for module in [self.projector, self.embed_tokens, *self.layers.modules()]:
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        # adaRMS keeps openpi's own initialisation: a zero gate (Gemma's zero bias) would shut every
        # residual branch of the expert and stall training from scratch.
        for module in [*self.layers.modules(), self.expert_norm]:
            if isinstance(module, AdaRMSNorm):
                module.reset_parameters()

    def vlm_modules(self) -> list[nn.Module]:
        """Everything of PaliGemma's language model (frozen by `train_expert_only`)."""
        return [self.embed_tokens, self.vlm_norm, *(layer.vlm for layer in self.layers)]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each joint layer (and SigLIP layer) in backward instead of storing activations."""
        self.gradient_checkpointing = enabled
        if enabled:  # transformers >= 5 renamed the method; both take the checkpoint kwargs first
            vision = self.vision
            enable = getattr(vision, "activation_checkpointing_enable", None) or vision.gradient_checkpointing_enable
            enable({"use_reentrant": False})

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """`[N, 3, H, W]` in [-1, 1] → `[N, patches, vlm_width]` (HF's /sqrt(d) and Gemma's *sqrt(d) cancel)."""
        features = self.vision(pixel_values=pixels.to(self.projector.weight.dtype)).last_hidden_state
        return self.projector(features)

    def embed_language(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids → Gemma input embeddings (scaled by sqrt(width) as Gemma does)."""
        return self.embed_tokens(ids) * math.sqrt(self.sizes.vlm_width)

    def forward(
        self,
        prefix: torch.Tensor | None,
        suffix: torch.Tensor | None,
        mask: torch.Tensor,
        positions: torch.Tensor,
        past: list[KV] | None = None,
        cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, list[KV]]:
        """Run all layers; returns the expert's normed suffix output and every layer's new keys/values.

        `mask` is `[B, S_query, S_past + S_query]` bool, `positions` the query tokens' positions, `cond`
        the expert's adaRMS conditioning (pi0.5 only).
        """
        ref = prefix if prefix is not None else suffix
        cos, sin = self.rotary(ref, positions)
        kv: list[KV] = []
        for i, layer in enumerate(self.layers):
            layer_past = past[i] if past is not None else None
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                prefix, suffix, k, v = checkpoint(layer, prefix, suffix, mask, cos, sin, layer_past, cond,
                                                  use_reentrant=False)
            else:
                prefix, suffix, k, v = layer(prefix, suffix, mask, cos, sin, layer_past, cond)
            kv.append((k, v))
        return (norm_and_gate(self.expert_norm, suffix, cond)[0] if suffix is not None else None), kv

"""pi0 (Black et al. 2024): PaliGemma prefix + Gemma action expert, flow matching over action chunks."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from neuracore.ml.algorithms.common.layers import adamw
from neuracore.ml.algorithms.pi0.backbone import (
    PaliGemmaWithExpert,
    attention_mask_2d,
    sizes_from,
)
from neuracore.ml.algorithms.pi0.tokenizer import load_tokenizer
from neuracore.ml.algorithms.pi0.weights import Layout, checkpoint_files, load_pretrained
from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import ACTION_LIKE, STATE_LIKE, DataType, Modality
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.model import Batch, NeuracoreModel
from neuracore.ml.core.model_init import ModelInitDescription
from neuracore.ml.core.normalization import images_to_unit_float, vector_normalizers
from neuracore.ml.core.registry import register_algorithm

logger = logging.getLogger(__name__)

_VECTORS = STATE_LIKE | ACTION_LIKE
# Batch keys `prepare_batch` adds: prompt token ids `[B, L]` and their real-token mask.
LANGUAGE_TOKENS = "language_tokens"
LANGUAGE_TOKEN_MASK = "language_token_mask"
# SigLIP's preprocessing: [0, 1] → [-1, 1] (mean 0.5, std 0.5 per channel).
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def resize_with_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """`[N, C, H, W]` in [0, 1] → `[N, C, size, size]`, aspect ratio kept, black padding (as openpi)."""
    h, w = images.shape[-2:]
    if h == size and w == size:
        return images
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (size - nh) // 2, (size - nw) // 2
    return F.pad(resized.clamp(0, 1), (left, size - nw - left, top, size - nh - top), value=0.0)


def time_embedding(t: torch.Tensor, dim: int, min_period: float = 4e-3, max_period: float = 4.0) -> torch.Tensor:
    """Sine-cosine embedding of flow-matching time in [0, 1] (pi0's periods)."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, device=t.device, dtype=torch.float32)  # float32: MPS has no f64
    period = min_period * (max_period / min_period) ** fraction
    angle = t.float()[:, None] * (2 * math.pi / period)[None]
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


# ----- behaviour shared with pi0.5 (`neuracore.ml.algorithms.pi05`): functions of the model --------------


def store_settings(model: NeuracoreModel, args: dict[str, Any]) -> None:
    """Optimizer, schedule, prompt and sampling settings from the constructor's arguments (`locals()`)."""
    model.lr, model.betas, model.adam_eps = args["lr"], (args["beta1"], args["beta2"]), args["adam_eps"]
    model.weight_decay, model.warmup_steps = args["weight_decay"], args["warmup_steps"]
    model.decay_lr, model.decay_steps = args["decay_lr"], args["decay_steps"]
    model.max_token_len, model.image_size = args["max_token_len"], args["image_size"]
    model.num_inference_steps, model.inference_noise_seed = args["num_inference_steps"], args["inference_noise_seed"]


def setup_vectors(model: NeuracoreModel, mid: ModelInitDescription, max_state_dim: int, max_action_dim: int,
                  normalization: str | dict[str, str] = "mean_std", default: str = "mean_std") -> None:
    """State/output DataTypes, their normalisers and the camera count, checked against the padded widths."""
    model.horizon = mid.output_prediction_horizon
    model.max_state_dim, model.max_action_dim = max_state_dim, max_action_dim
    model.state_types = [dt for dt in mid.inputs if dt.modality == Modality.VECTOR]
    model.output_types = list(mid.outputs)
    model.output_dims = [mid.outputs[dt].dim for dt in model.output_types]
    model.state_dim = sum(mid.inputs[dt].dim for dt in model.state_types)
    if model.state_dim > max_state_dim:
        raise ConfigError(f"algorithm.max_state_dim={max_state_dim}: the input vectors have {model.state_dim} values")
    if sum(model.output_dims) > max_action_dim:
        raise ConfigError(
            f"algorithm.max_action_dim={max_action_dim}: the outputs have {sum(model.output_dims)} values"
        )
    states = {dt: mid.inputs[dt] for dt in model.state_types}
    known = {**states, **mid.outputs}
    model.input_norms = vector_normalizers(states, normalization, default, known=known)
    model.output_norms = vector_normalizers(mid.outputs, normalization, default, known=known)
    model.num_cameras = len(mid.inputs[DataType.RGB_IMAGES].items) if DataType.RGB_IMAGES in mid.inputs else 0


def setup_prompting(model: NeuracoreModel, mid: ModelInitDescription, default_prompt: str | None,
                    tokenizer_path: str | None, vocab_size: int, pretrained_path: str | None) -> None:
    """Default prompt, tokenizer (checked against the vocabulary) and the tokenizer/checkpoint pairing."""
    model.uses_language = DataType.LANGUAGE in mid.inputs
    model.default_prompt = default_prompt or mid.default_language or "perform the task"
    if not model.uses_language:
        logger.info("%s: the data spec has no LANGUAGE; every sample is prompted with %r",
                    model.algorithm_name, model.default_prompt)
    model.tokenizer = load_tokenizer(tokenizer_path, vocab_size)
    model.tokenizer_path = tokenizer_path
    if pretrained_path is not None and tokenizer_path is None:
        raise ConfigError(
            "algorithm.tokenizer_path: needed with algorithm.pretrained_path (the checkpoint's token ids)"
        )


def pretrained_files(model: NeuracoreModel) -> list[Path]:
    """The safetensors file(s) of `algorithm.pretrained_path`, or none for a random start."""
    path = getattr(model, "hyperparameters", {}).get("pretrained_path")
    return checkpoint_files(path) if path else []


def tokenizer_assets(model: NeuracoreModel) -> dict[str, Path]:
    """The tokenizer folder, if any, as the export asset `tokenizer_path`."""
    return {} if model.tokenizer_path is None else {"tokenizer_path": Path(model.tokenizer_path).expanduser()}


def check_image_size(image_size: int, patch_size: int) -> None:
    """SigLIP needs whole patches."""
    if image_size % patch_size:
        raise ConfigError(f"algorithm.image_size={image_size}: not a multiple of patch_size={patch_size}")


def finish_setup(model: NeuracoreModel, pretrained_path: str | None, pretrained_layout: Layout,
                 weights_dtype: str, train_expert_only: bool, freeze_vision_encoder: bool,
                 gradient_checkpointing: bool) -> None:
    """Pretrained weights, weight dtype, frozen parts and gradient checkpointing, once all modules exist."""
    if pretrained_path is not None:
        load_pretrained(model, pretrained_path, pretrained_layout)
    else:
        logger.info("%s: algorithm.pretrained_path is null, so the model starts from random weights",
                    model.algorithm_name)
    if weights_dtype == "bfloat16":
        # Normalisation statistics stay float32; the transformers and projections go to bf16.
        for name, module in model.named_children():
            if name not in ("input_norms", "output_norms"):
                module.to(torch.bfloat16)
    backbone = model.backbone
    if train_expert_only:
        for module in (backbone.vision, backbone.projector, *backbone.vlm_modules()):
            module.requires_grad_(False)
    elif freeze_vision_encoder:
        backbone.vision.requires_grad_(False)
    backbone.set_gradient_checkpointing(gradient_checkpointing)


def batch_size_of(batch: Batch) -> int:
    """Samples in a batch (from any input tensor, else is_pad, else the prompts)."""
    tensors = list(batch[keys.INPUTS].values()) or [batch[keys.IS_PAD]]
    return int(tensors[0].shape[0]) if tensors else len(batch[keys.LANGUAGE])


def prompts_of(model: NeuracoreModel, batch: Batch, batch_size: int) -> list[str]:
    """The batch's instructions, or the default prompt for every sample."""
    return list(batch[keys.LANGUAGE]) if model.uses_language else [model.default_prompt] * batch_size


def embed_prefix(model: NeuracoreModel, batch: Batch, ids: torch.Tensor, mask: torch.Tensor,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and prompt embeddings `[B, P, vlm_width]` and their real-token mask `[B, P]`."""
    backbone = model.backbone
    device = backbone.projector.weight.device
    parts, pads = [], []
    if model.num_cameras:
        images = images_to_unit_float(batch[keys.INPUTS][DataType.RGB_IMAGES.value][:, -1])  # [B, N, C, H, W]
        b, n = images.shape[:2]
        pixels = resize_with_pad(images.flatten(0, 1), model.image_size) * 2.0 - 1.0  # SigLIP: [-1, 1]
        emb = backbone.embed_images(pixels)
        emb = emb.view(b, n * emb.shape[1], emb.shape[2])
        cam_mask = batch[keys.INPUT_MASKS][DataType.RGB_IMAGES.value] > 0  # a camera the robot lacks
        parts.append(emb)
        pads.append(cam_mask.repeat_interleave(emb.shape[1] // n, dim=1))
    parts.append(backbone.embed_language(ids.to(device)).to(dtype))
    pads.append(mask.to(device))
    return torch.cat([p.to(dtype) for p in parts], 1), torch.cat(pads, 1)


def normalized_state(model: NeuracoreModel, batch: Batch, batch_size: int) -> torch.Tensor:
    """Normalised, item-masked state `[B, state_dim]` at the last observation (not padded)."""
    parts = [
        model.input_norms[dt.value].normalize(batch[keys.INPUTS][dt.value][:, -1]) * batch[keys.INPUT_MASKS][dt.value]
        for dt in model.state_types
    ]
    device = model.backbone.projector.weight.device
    return torch.cat(parts, -1) if parts else torch.zeros(batch_size, 0, device=device)


def flow_targets(model: NeuracoreModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised actions padded to `[B, H, max_action_dim]` and the per-value loss weight."""
    actions, weights = [], []
    valid = (~batch[keys.IS_PAD]).unsqueeze(-1).float()
    for dt in model.output_types:
        actions.append(model.output_norms[dt.value].normalize(batch[keys.OUTPUTS][dt.value]))
        weights.append(valid * batch[keys.OUTPUT_MASKS][dt.value].unsqueeze(1))
    pad = model.max_action_dim - sum(model.output_dims)
    return F.pad(torch.cat(actions, -1), (0, pad)), F.pad(torch.cat(weights, -1), (0, pad))


def flow_matching_losses(actions: torch.Tensor, weight: torch.Tensor,
                         velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flow-matching MSE of `velocity(x_t, t)` against `noise - actions`, weighted (is_pad, item masks)."""
    b = actions.shape[0]
    noise = torch.randn_like(actions)
    # Constant, valid parameters: skip the argument check, which reads a value back to the host every step.
    beta = torch.distributions.Beta(torch.tensor(1.5, device=actions.device), torch.tensor(1.0, device=actions.device),
                                    validate_args=False)
    t = beta.sample((b,)) * 0.999 + 0.001  # t=1 is pure noise; Beta(1.5, 1) favours noisy times
    x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
    v = velocity(x_t, t)
    err = (v - (noise - actions)).pow(2) * weight
    loss = err.sum() / weight.sum().clamp_min(1.0)
    return {"loss": loss, "flow_mse": loss.detach()}


def joint_forward(backbone: PaliGemmaWithExpert, prefix: torch.Tensor, prefix_pad: torch.Tensor,
                  suffix: torch.Tensor, suffix_blocks: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
    """One joint pass over prefix and suffix (training): the expert's normed suffix output."""
    b = suffix.shape[0]
    pad = torch.cat([prefix_pad, torch.ones(b, suffix.shape[1], dtype=torch.bool, device=suffix.device)], 1)
    blocks = torch.cat([torch.zeros_like(prefix_pad), suffix_blocks], 1)
    out, _ = backbone(prefix, suffix, attention_mask_2d(pad, blocks), torch.cumsum(pad.long(), 1) - 1, cond=cond)
    return out


def initial_noise(model: NeuracoreModel, b: int, device: torch.device) -> torch.Tensor:
    """The integration's start `[B, H, max_action_dim]`: one seeded draw shared by all samples, or fresh noise."""
    shape = (model.horizon, model.max_action_dim)
    if model.inference_noise_seed is None:
        return torch.randn(b, *shape, device=device)
    # The same start for every sample: a chunk depends on its observation only, not on the batch.
    generator = torch.Generator().manual_seed(model.inference_noise_seed)
    return torch.randn(shape, generator=generator).to(device).expand(b, *shape).clone()


Denoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list], torch.Tensor]


def sample_chunks(model: NeuracoreModel, prefix: torch.Tensor, prefix_pad: torch.Tensor,
                  suffix_blocks: torch.Tensor, velocity: Denoise) -> dict[str, torch.Tensor]:
    """Euler-integrate from noise (t=1) to actions (t=0); unnormalised chunks by output DataType.

    The prefix is encoded once; each step runs only the suffix, `velocity(x, t, mask, positions, cache)`,
    against its cached keys/values.
    """
    b, p = prefix_pad.shape
    device = prefix.device
    prefix_mask = attention_mask_2d(prefix_pad, torch.zeros_like(prefix_pad))
    _, cache = model.backbone(prefix, None, prefix_mask, torch.cumsum(prefix_pad.long(), 1) - 1)
    pad = torch.cat([prefix_pad, torch.ones(b, suffix_blocks.shape[1], dtype=torch.bool, device=device)], 1)
    blocks = torch.cat([torch.zeros_like(prefix_pad), suffix_blocks], 1)
    mask = attention_mask_2d(pad, blocks)[:, p:]
    positions = (torch.cumsum(pad.long(), 1) - 1)[:, p:]
    x = initial_noise(model, b, device)
    dt = -1.0 / model.num_inference_steps
    for step in range(model.num_inference_steps):
        t = torch.full((b,), 1.0 + step * dt, device=device)
        x = x + dt * velocity(x, t, mask, positions, cache)
    chunks = torch.split(x[..., : sum(model.output_dims)], model.output_dims, dim=-1)
    return {dt_.value: model.output_norms[dt_.value].unnormalize(c) for dt_, c in zip(model.output_types, chunks)}


# LoRA's defaults for pi0 and pi0.5 (openpi's gemma_2b_lora / gemma_300m_lora): adapters on the attention and
# MLP projections of the language model and of the action expert; SigLIP, the embeddings and the norms frozen.
LORA_TARGETS = [r"backbone\.layers\.\d+\.(vlm|expert)\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"]


def vla_optimizers(model: NeuracoreModel) -> list[torch.optim.Optimizer]:
    """AdamW over trainable parameters only (frozen ones get no optimizer state)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [adamw([{"params": params}], lr=model.lr, betas=model.betas, eps=model.adam_eps,
                  weight_decay=model.weight_decay)]


def warmup_cosine_schedulers(model: NeuracoreModel, optimizers: list[torch.optim.Optimizer],
                             num_training_steps: int) -> list[torch.optim.lr_scheduler.LRScheduler]:
    """Linear warm-up to `lr`, then cosine to `decay_lr` at `decay_steps` (default: the run's length)."""
    total = max(int(model.decay_steps or num_training_steps), model.warmup_steps + 1)
    warmup, floor = model.warmup_steps, model.decay_lr / model.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / (total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers]


@register_algorithm("pi0")
class Pi0(NeuracoreModel):
    """Vision-language-action flow-matching policy; sizes default to the paper's (about 3.3B parameters)."""

    supported_input_data_types: ClassVar[frozenset[DataType]] = _VECTORS | {DataType.RGB_IMAGES, DataType.LANGUAGE}
    supported_output_data_types: ClassVar[frozenset[DataType]] = _VECTORS
    default_input_data_types: ClassVar[tuple[DataType, ...]] = (
        DataType.JOINT_POSITIONS,
        DataType.RGB_IMAGES,
        DataType.LANGUAGE,
    )
    default_output_data_types: ClassVar[tuple[DataType, ...]] = (DataType.JOINT_TARGET_POSITIONS,)
    # Exported weights already hold the pretrained ones: never read the checkpoint again on rebuild.
    rebuild_overrides: ClassVar[dict[str, Any]] = {"pretrained_path": None}
    # FSDP wrap units (accelerate's TRANSFORMER_BASED_WRAP reads this when no class names are given).
    _no_split_modules: ClassVar[list[str]] = ["JointLayer", "SiglipEncoderLayer"]
    image_normalization: ClassVar[tuple[tuple[float, ...], tuple[float, ...]]] = (SIGLIP_MEAN, SIGLIP_STD)

    def __init__(
        self,
        model_init_description: ModelInitDescription,
        pretrained_path: str | None = None,
        pretrained_layout: Layout = "auto",
        tokenizer_path: str | None = None,
        default_prompt: str | None = None,
        normalization: str | dict[str, str] = "mean_std",
        max_state_dim: int = 32,
        max_action_dim: int = 32,
        max_token_len: int = 48,
        num_inference_steps: int = 10,
        inference_noise_seed: int | None = 0,
        image_size: int = 224,
        patch_size: int = 14,
        vision_width: int = 1152,
        vision_depth: int = 27,
        vision_mlp_dim: int = 4304,
        vision_num_heads: int = 16,
        vocab_size: int = 257152,
        vlm_width: int = 2048,
        vlm_mlp_dim: int = 16384,
        expert_width: int = 1024,
        expert_mlp_dim: int = 4096,
        depth: int = 18,
        num_heads: int = 8,
        num_kv_heads: int = 1,
        head_dim: int = 256,
        freeze_vision_encoder: bool = False,
        train_expert_only: bool = False,
        gradient_checkpointing: bool = False,
        weights_dtype: Literal["float32", "bfloat16"] = "float32",
        lr: float = 2.5e-5,
        beta1: float = 0.9,
        beta2: float = 0.95,
        adam_eps: float = 1e-8,
        weight_decay: float = 0.01,
        warmup_steps: int = 1000,
        decay_lr: float = 2.5e-6,
        decay_steps: int | None = None,
    ) -> None:
        super().__init__(model_init_description)
        mid = model_init_description
        store_settings(self, locals())
        setup_vectors(self, mid, max_state_dim, max_action_dim, normalization)
        setup_prompting(self, mid, default_prompt, tokenizer_path, vocab_size, pretrained_path)
        check_image_size(image_size, patch_size)
        self.backbone = PaliGemmaWithExpert(sizes_from(locals()))
        self.state_proj = nn.Linear(max_state_dim, expert_width)
        self.action_in_proj = nn.Linear(max_action_dim, expert_width)
        self.action_time_mlp_in = nn.Linear(2 * expert_width, expert_width)
        self.action_time_mlp_out = nn.Linear(expert_width, expert_width)
        self.action_out_proj = nn.Linear(expert_width, max_action_dim)
        finish_setup(self, pretrained_path, pretrained_layout, weights_dtype, train_expert_only,
                     freeze_vision_encoder, gradient_checkpointing)

    def base_weight_files(self) -> list[Path]:
        """The `pretrained_path` checkpoint file(s), when the weights came from one."""
        return pretrained_files(self)

    def lora_defaults(self) -> dict[str, list[str]]:
        """Adapters on the language model and the expert; the state/action/time projections train fully."""
        return {"target_modules": LORA_TARGETS,
                "trainable": ["state_proj", "action_in_proj", "action_time_mlp_in", "action_time_mlp_out",
                              "action_out_proj"]}

    def export_assets(self) -> dict[str, Path]:
        """The tokenizer folder travels inside the export (`assets/tokenizer_path/`)."""
        return tokenizer_assets(self)

    # ----- inputs -------------------------------------------------------------------------------

    @property
    def _dtype(self) -> torch.dtype:
        return self.state_proj.weight.dtype

    def _prefix(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and language embeddings `[B, P, vlm_width]` and their real-token mask `[B, P]`."""
        if LANGUAGE_TOKENS not in batch:
            batch = self.prepare_batch(batch)
        return embed_prefix(self, batch, batch[LANGUAGE_TOKENS], batch[LANGUAGE_TOKEN_MASK], self._dtype)

    def prepare_batch(self, batch: Batch, batch_size: int | None = None) -> Batch:
        """Tokenise the prompts on the host, so the step itself is tensor work only (one compiled graph)."""
        if batch_size is None:
            batch_size = batch_size_of(batch)
        ids, mask = self.tokenizer(prompts_of(self, batch, batch_size), self.max_token_len)
        device = self.state_proj.weight.device
        return {**batch, LANGUAGE_TOKENS: ids.to(device, non_blocking=True), LANGUAGE_TOKEN_MASK: mask.to(device)}

    def _state(self, batch: Batch, batch_size: int) -> torch.Tensor:
        """Normalised, item-masked state padded to `[B, max_state_dim]`."""
        state = normalized_state(self, batch, batch_size)
        return F.pad(state, (0, self.max_state_dim - state.shape[-1]))

    def _suffix(self, state: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """State token + noisy-action tokens fused with the time embedding: `[B, 1 + H, expert_width]`."""
        dtype = self._dtype
        state_token = self.state_proj(state.to(dtype))[:, None]
        actions = self.action_in_proj(x_t.to(dtype))
        time = time_embedding(t, actions.shape[-1]).to(dtype)[:, None].expand_as(actions)
        fused = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([actions, time], -1))))
        return torch.cat([state_token, fused], 1)

    def _suffix_blocks(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """State starts a block, the action chunk starts the next (bidirectional inside)."""
        blocks = torch.zeros(batch_size, 1 + self.horizon, dtype=torch.bool, device=device)
        blocks[:, :2] = True
        return blocks

    def _velocity(
        self, prefix: torch.Tensor, prefix_pad: torch.Tensor, state: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """One joint forward pass over prefix and suffix (training)."""
        suffix = self._suffix(state, x_t, t)
        out = joint_forward(self.backbone, prefix, prefix_pad, suffix, self._suffix_blocks(suffix.shape[0], suffix.device))
        return self.action_out_proj(out[:, 1:]).float()

    # ----- training and inference ---------------------------------------------------------------

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Flow-matching MSE between predicted and true velocity, masked by is_pad and item masks."""
        actions, weight = flow_targets(self, batch)
        prefix, prefix_pad = self._prefix(batch)
        state = self._state(batch, actions.shape[0])
        return flow_matching_losses(actions, weight, lambda x_t, t: self._velocity(prefix, prefix_pad, state, x_t, t))

    @torch.no_grad()
    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Integrate the velocity field from noise (t=1) to actions (t=0) in `num_inference_steps` Euler steps."""
        prefix, prefix_pad = self._prefix(batch)
        b = prefix_pad.shape[0]
        state = self._state(batch, b)

        def velocity(x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                     cache: list) -> torch.Tensor:
            out, _ = self.backbone(None, self._suffix(state, x, t), mask, positions, past=cache)
            return self.action_out_proj(out[:, 1:]).float()

        return sample_chunks(self, prefix, prefix_pad, self._suffix_blocks(b, prefix.device), velocity)

    # ----- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """AdamW over trainable parameters only (frozen ones get no optimizer state)."""
        return vla_optimizers(self)

    def configure_schedulers(
        self, optimizers: list[torch.optim.Optimizer], num_training_steps: int
    ) -> list[torch.optim.lr_scheduler.LRScheduler]:
        """Linear warm-up to `lr`, then cosine to `decay_lr` at `decay_steps` (default: the run's length)."""
        return warmup_cosine_schedulers(self, optimizers, num_training_steps)

"""pi0.5 (Physical Intelligence 2025; openpi `pi05=True`, LeRobot `pi05`): pi0's PaliGemma + expert, with
the flow-matching time entering the expert through adaptive RMSNorm and the state written into the prompt.

Everything else is pi0's: the backbone module (`pi0.backbone`, built with `adaptive_expert=True`), the
weight loader, the tokenizers and the shared functions of `pi0.model` (prefix embedding, flow-matching
loss, cached-prefix Euler sampling, optimizer and schedule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from neuracore.ml.algorithms.pi0.backbone import PaliGemmaWithExpert, sizes_from
from neuracore.ml.algorithms.pi0.model import (
    LANGUAGE_TOKEN_MASK,
    LANGUAGE_TOKENS,
    LORA_TARGETS,
    Pi0,
    batch_size_of,
    check_image_size,
    embed_prefix,
    finish_setup,
    flow_matching_losses,
    flow_targets,
    joint_forward,
    normalized_state,
    pretrained_files,
    prompts_of,
    sample_chunks,
    setup_prompting,
    setup_vectors,
    store_settings,
    time_embedding,
    tokenizer_assets,
    vla_optimizers,
    warmup_cosine_schedulers,
)
from neuracore.ml.algorithms.pi0.weights import Layout
from neuracore.ml.algorithms.pi05.prompt import StatePrompt
from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.model import Batch, NeuracoreModel
from neuracore.ml.core.model_init import ModelInitDescription
from neuracore.ml.core.registry import register_algorithm


@register_algorithm("pi05")
class Pi05(NeuracoreModel):
    """pi0.5 flow-matching VLA: adaRMS time conditioning, discretised state in the prompt, quantile normalisation."""

    # pi0's inputs, outputs, rebuild rule, FSDP units and SigLIP image statistics.
    supported_input_data_types: ClassVar[frozenset[DataType]] = Pi0.supported_input_data_types
    supported_output_data_types: ClassVar[frozenset[DataType]] = Pi0.supported_output_data_types
    default_input_data_types: ClassVar[tuple[DataType, ...]] = Pi0.default_input_data_types
    default_output_data_types: ClassVar[tuple[DataType, ...]] = Pi0.default_output_data_types
    rebuild_overrides: ClassVar[dict[str, Any]] = Pi0.rebuild_overrides
    _no_split_modules: ClassVar[list[str]] = Pi0._no_split_modules
    image_normalization: ClassVar[tuple[tuple[float, ...], tuple[float, ...]]] = Pi0.image_normalization

    def __init__(
        self,
        model_init_description: ModelInitDescription,
        pretrained_path: str | None = None,
        pretrained_layout: Layout = "auto",
        tokenizer_path: str | None = None,
        default_prompt: str | None = None,
        normalization: str | dict[str, str] = "quantile",
        max_state_dim: int = 32,
        max_action_dim: int = 32,
        max_token_len: int = 200,
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
        # The state is binned over [-1, 1], so quantile (q01/q99 → [-1, 1], clipped) is pi0.5's default.
        setup_vectors(self, mid, max_state_dim, max_action_dim, normalization, default="quantile")
        setup_prompting(self, mid, default_prompt, tokenizer_path, vocab_size, pretrained_path)
        check_image_size(image_size, patch_size)
        self.prompt = StatePrompt(self.tokenizer, self.state_dim, max_token_len)
        self.backbone = PaliGemmaWithExpert(sizes_from(locals()), adaptive_expert=True)
        self.action_in_proj = nn.Linear(max_action_dim, expert_width)
        # openpi's names: the time embedding → MLP → the expert's adaRMS conditioning (no state_proj, no
        # action-time MLP: the action tokens are the projected noisy actions alone).
        self.time_mlp_in = nn.Linear(expert_width, expert_width)
        self.time_mlp_out = nn.Linear(expert_width, expert_width)
        self.action_out_proj = nn.Linear(expert_width, max_action_dim)
        finish_setup(self, pretrained_path, pretrained_layout, weights_dtype, train_expert_only,
                     freeze_vision_encoder, gradient_checkpointing)

    def base_weight_files(self) -> list[Path]:
        """The `pretrained_path` checkpoint file(s), when the weights came from one."""
        return pretrained_files(self)

    def lora_defaults(self) -> dict[str, list[str]]:
        """Adapters on the language model and the expert (adaRMS layers frozen); action/time projections train."""
        return {"target_modules": LORA_TARGETS,
                "trainable": ["action_in_proj", "time_mlp_in", "time_mlp_out", "action_out_proj"]}

    def export_assets(self) -> dict[str, Path]:
        """The tokenizer folder travels inside the export (`assets/tokenizer_path/`)."""
        return tokenizer_assets(self)

    @property
    def _dtype(self) -> torch.dtype:
        return self.action_in_proj.weight.dtype

    # ----- inputs -------------------------------------------------------------------------------

    def prepare_batch(self, batch: Batch, batch_size: int | None = None) -> Batch:
        """Tokenise the instructions on the host (strings); the state is written into the prompt on the device."""
        if batch_size is None:
            batch_size = batch_size_of(batch)
        ids, mask = self.prompt.task_tokens(prompts_of(self, batch, batch_size))
        device = self.action_in_proj.weight.device
        return {**batch, LANGUAGE_TOKENS: ids.to(device, non_blocking=True), LANGUAGE_TOKEN_MASK: mask.to(device)}

    def prompt_tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole prompt `[B, max_token_len]` (ids, real-token mask): instruction + discretised state."""
        if LANGUAGE_TOKENS not in batch:
            batch = self.prepare_batch(batch)
        ids = batch[LANGUAGE_TOKENS]
        b = ids.shape[0]
        state = normalized_state(self, batch, b)
        masks = [batch[keys.INPUT_MASKS][dt.value] for dt in self.state_types]
        item_mask = torch.cat(masks, -1) if masks else torch.zeros_like(state)
        return self.prompt(ids, batch[LANGUAGE_TOKEN_MASK], state, item_mask)

    def _prefix(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and prompt embeddings `[B, P, vlm_width]` and their real-token mask."""
        ids, mask = self.prompt_tokens(batch)
        return embed_prefix(self, batch, ids, mask, self._dtype)

    def time_condition(self, t: torch.Tensor) -> torch.Tensor:
        """Flow-matching time `[B]` → adaRMS conditioning `[B, expert_width]` (sin-cos → MLP → swish, as openpi)."""
        emb = time_embedding(t, self.time_mlp_in.in_features).to(self._dtype)
        return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(emb))))

    def _suffix_blocks(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """The action chunk is one block (bidirectional inside), after the prefix."""
        blocks = torch.zeros(batch_size, self.horizon, dtype=torch.bool, device=device)
        blocks[:, 0] = True
        return blocks

    def _velocity(self, prefix: torch.Tensor, prefix_pad: torch.Tensor, x_t: torch.Tensor,
                  t: torch.Tensor) -> torch.Tensor:
        """One joint forward pass over prefix and action tokens (training)."""
        suffix = self.action_in_proj(x_t.to(self._dtype))
        blocks = self._suffix_blocks(suffix.shape[0], suffix.device)
        out = joint_forward(self.backbone, prefix, prefix_pad, suffix, blocks, cond=self.time_condition(t))
        return self.action_out_proj(out).float()

    # ----- training and inference ---------------------------------------------------------------

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Flow-matching MSE between predicted and true velocity, masked by is_pad and item masks."""
        actions, weight = flow_targets(self, batch)
        prefix, prefix_pad = self._prefix(batch)
        return flow_matching_losses(actions, weight, lambda x_t, t: self._velocity(prefix, prefix_pad, x_t, t))

    @torch.no_grad()
    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Integrate the velocity field from noise (t=1) to actions (t=0) in `num_inference_steps` Euler steps."""
        prefix, prefix_pad = self._prefix(batch)

        def velocity(x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                     cache: list) -> torch.Tensor:
            suffix = self.action_in_proj(x.to(self._dtype))
            out, _ = self.backbone(None, suffix, mask, positions, past=cache, cond=self.time_condition(t))
            return self.action_out_proj(out).float()

        return sample_chunks(self, prefix, prefix_pad, self._suffix_blocks(prefix.shape[0], prefix.device), velocity)

    # ----- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """AdamW over trainable parameters only (openpi's betas 0.9/0.95, weight decay 0.01)."""
        return vla_optimizers(self)

    def configure_schedulers(
        self, optimizers: list[torch.optim.Optimizer], num_training_steps: int
    ) -> list[torch.optim.lr_scheduler.LRScheduler]:
        """Linear warm-up to `lr`, then cosine to `decay_lr` at `decay_steps` (default: the run's length)."""
        return warmup_cosine_schedulers(self, optimizers, num_training_steps)

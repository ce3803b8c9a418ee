"""Diffusion Policy: observation encoder + FiLM 1D U-Net denoiser, diffusers DDPM/DDIM, EMA weights."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from neuracore.ml.algorithms.common.backbones import ResNetName, batchnorm_to_groupnorm, resnet_trunk
from neuracore.ml.algorithms.common.layers import SpatialSoftmax, adamw, center_crop, random_crop
from neuracore.ml.algorithms.diffusion_policy.unet import ConditionalUnet1d
from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import ACTION_LIKE, STATE_LIKE, DataType, Modality
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.model import Batch, NeuracoreModel
from neuracore.ml.core.model_init import ModelInitDescription
from neuracore.ml.core.normalization import ImageNetNormalize, images_to_unit_float, vector_normalizers
from neuracore.ml.core.registry import register_algorithm

VECTOR_INPUTS = STATE_LIKE
OUTPUTS = ACTION_LIKE
# Sampling noise is seeded, so a policy's chunk is a function of its observation (reproducible
# rollouts, identical predictions after save/load) and does not depend on the rest of the batch.
SAMPLING_SEED = 0


class ImageEncoder(nn.Module):
    """ResNet trunk → spatial softmax keypoints → linear + ReLU to `feature_dim` (one per camera)."""

    def __init__(self, backbone: str, pretrained: bool, group_norm: bool, keypoints: int, feature_dim: int) -> None:
        super().__init__()
        trunk, channels = resnet_trunk(backbone, pretrained)
        if group_norm:
            # As in the paper for trunks trained from scratch: batch statistics and EMA interact badly.
            trunk = batchnorm_to_groupnorm(trunk)
        self.trunk = trunk.to(memory_format=torch.channels_last)
        self.pool = SpatialSoftmax(channels, keypoints)
        self.out = nn.Sequential(nn.Linear(keypoints * 2, feature_dim), nn.ReLU())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet-normalised `[N, 3, H, W]` → `[N, feature_dim]`."""
        features = self.trunk(images.contiguous(memory_format=torch.channels_last))
        return self.out(self.pool(features).flatten(1).to(features.dtype))


@register_algorithm("diffusion_policy")
class DiffusionPolicy(NeuracoreModel):
    """Diffusion Policy (Chi et al. 2023) with Neuracore's defaults (about 75M parameters for one camera).

    Two observation steps (state and camera features) condition a FiLM 1D U-Net that denoises the
    whole min-max-normalised action chunk; training adds noise with a diffusers scheduler and
    regresses the noise (or the clean sample); inference runs `num_inference_steps` of DDPM/DDIM.
    An EMA of the weights is used for validation and export.
    """

    supported_input_data_types: ClassVar[frozenset[DataType]] = VECTOR_INPUTS | {DataType.RGB_IMAGES}
    supported_output_data_types: ClassVar[frozenset[DataType]] = OUTPUTS
    default_input_data_types: ClassVar[tuple[DataType, ...]] = (DataType.JOINT_POSITIONS, DataType.RGB_IMAGES)
    default_output_data_types: ClassVar[tuple[DataType, ...]] = (DataType.JOINT_TARGET_POSITIONS,)
    observation_history: int = 2

    def __init__(
        self,
        model_init_description: ModelInitDescription,
        unet_down_dims: list[int] = [256, 512, 1024],  # noqa: B006 - read-only default, mirrors the yaml
        unet_kernel_size: int = 5,
        unet_n_groups: int = 8,
        unet_diffusion_step_embed_dim: int = 128,
        hidden_dim: int = 64,
        spatial_softmax_num_keypoints: int = 32,
        unet_use_film_scale_modulation: bool = True,
        image_backbone: ResNetName = "resnet18",
        use_pretrained_weights: bool = True,
        use_group_norm: bool | None = None,
        crop_ratio: float = 0.9,
        noise_scheduler_type: Literal["DDPM", "DDIM"] = "DDPM",
        num_train_timesteps: int = 100,
        num_inference_steps: int = 100,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        prediction_type: Literal["epsilon", "sample"] = "epsilon",
        normalization_type: str | dict[str, str] = "min_max",
        lr: float = 1e-4,
        freeze_backbone: bool = False,
        lr_backbone: float = 1e-4,
        weight_decay: float = 2e-6,
        optimizer_betas: list[float] = [0.95, 0.999],  # noqa: B006
        optimizer_eps: float = 1e-8,
        lr_scheduler_type: Literal[
            "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"
        ] = "cosine",
        lr_scheduler_num_warmup_steps: int = 500,
        use_ema: bool = True,
        ema_power: float = 0.75,
        ema_max_decay: float = 0.9999,
    ) -> None:
        super().__init__(model_init_description)
        mid = model_init_description
        if not unet_down_dims or any(d % unet_n_groups for d in unet_down_dims):
            raise ConfigError(
                f"algorithm.unet_down_dims={list(unet_down_dims)}: need at least one width, each divisible by "
                f"algorithm.unet_n_groups={unet_n_groups}"
            )
        if not 0 < crop_ratio <= 1:
            raise ConfigError(f"algorithm.crop_ratio={crop_ratio}: must be in (0, 1] (1 = no crop)")
        if not 0 < num_inference_steps <= num_train_timesteps:
            raise ConfigError(
                f"algorithm.num_inference_steps={num_inference_steps}: must be in 1..num_train_timesteps "
                f"({num_train_timesteps})"
            )
        if len(optimizer_betas) != 2:
            raise ConfigError(f"algorithm.optimizer_betas={list(optimizer_betas)}: expected two numbers")
        self.lr, self.lr_backbone, self.weight_decay = lr, lr_backbone, weight_decay
        self.betas, self.eps = tuple(float(b) for b in optimizer_betas), optimizer_eps
        self.lr_scheduler_type, self.warmup = lr_scheduler_type, lr_scheduler_num_warmup_steps
        self.prediction_type = prediction_type
        self.num_inference_steps = num_inference_steps
        self.horizon = mid.output_prediction_horizon
        self.use_ema, self.ema_power, self.ema_max_decay = use_ema, ema_power, ema_max_decay
        # Resolved here and exported (see `hyperparameters`): a rebuild for inference skips the
        # pretrained download but must keep the trained normalisation layers.
        self.use_group_norm = (not use_pretrained_weights) if use_group_norm is None else bool(use_group_norm)

        self.vector_inputs = [dt for dt in mid.inputs if dt.modality == Modality.VECTOR]
        vectors = {dt: mid.inputs[dt] for dt in self.vector_inputs}
        self.input_norms = vector_normalizers(vectors, normalization_type, "min_max", "algorithm.normalization_type",
                                              known={**vectors, **mid.outputs})
        self.output_types = list(mid.outputs)
        self.output_dims = [mid.outputs[dt].dim for dt in self.output_types]
        self.output_norms = vector_normalizers(mid.outputs, normalization_type, "min_max",
                                               "algorithm.normalization_type", known={**vectors, **mid.outputs})
        state_dim = sum(mid.inputs[dt].dim for dt in self.vector_inputs)
        self.num_cameras = len(mid.inputs[DataType.RGB_IMAGES].items) if DataType.RGB_IMAGES in mid.inputs else 0
        if not state_dim and not self.num_cameras:
            raise ConfigError("input_data_types: Diffusion Policy needs at least one camera or vector input")
        self.imagenet = ImageNetNormalize()
        self.image_encoders = nn.ModuleList(
            ImageEncoder(image_backbone, use_pretrained_weights, self.use_group_norm, spatial_softmax_num_keypoints,
                         hidden_dim)
            for _ in range(self.num_cameras)
        )
        for encoder in self.image_encoders:
            encoder.trunk.to(memory_format=torch.channels_last)
            if freeze_backbone:
                encoder.trunk.requires_grad_(False)
        if self.num_cameras:
            _, h, w = mid.inputs[DataType.RGB_IMAGES].shape[-3:]
            self.crop = (max(round(h * crop_ratio), 1), max(round(w * crop_ratio), 1))
        cond_dim = self.observation_history * (state_dim + self.num_cameras * hidden_dim)
        self.action_dim = sum(self.output_dims)
        self.unet = ConditionalUnet1d(
            self.action_dim, cond_dim, list(unet_down_dims), unet_kernel_size, unet_n_groups,
            unet_diffusion_step_embed_dim, unet_use_film_scale_modulation,
        )
        # The U-Net halves the sequence len(down_dims)-1 times: pad any horizon up to a multiple.
        multiple = self.unet.temporal_multiple
        self.padded_horizon = math.ceil(self.horizon / multiple) * multiple
        scheduler_cls = DDPMScheduler if noise_scheduler_type == "DDPM" else DDIMScheduler
        self.noise_scheduler = scheduler_cls(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            clip_sample=clip_sample,
            clip_sample_range=clip_sample_range,
            prediction_type=prediction_type,
        )
        self.num_train_timesteps = num_train_timesteps

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Constructor values (set by `build_model`), with `use_group_norm` resolved for exports."""
        return {**self.__dict__.get("_hyperparameters", {}), "use_group_norm": self.use_group_norm}

    @hyperparameters.setter
    def hyperparameters(self, value: dict[str, Any]) -> None:
        self.__dict__["_hyperparameters"] = dict(value)

    # ---------------------------------------------------------------- observation conditioning
    def _global_cond(self, batch: Batch) -> torch.Tensor:
        inputs, masks = batch[keys.INPUTS], batch[keys.INPUT_MASKS]
        parts = []
        for dt in self.vector_inputs:
            x = inputs[dt.value][:, -self.observation_history :]  # [B, T, D]
            parts.append(self.input_norms[dt.value].normalize(x) * masks[dt.value].unsqueeze(1))
        if self.num_cameras:
            images = inputs[DataType.RGB_IMAGES.value][:, -self.observation_history :]  # [B, T, N, C, H, W]
            b, t = images.shape[:2]
            cam_mask = masks[DataType.RGB_IMAGES.value]
            for cam, encoder in enumerate(self.image_encoders):
                x = images_to_unit_float(images[:, :, cam].reshape(b * t, *images.shape[-3:]))
                # Augmentation on the device: random crops in training, the centre crop otherwise.
                x = random_crop(x, self.crop) if self.training else center_crop(x, self.crop)
                # channels-last: the layout tensor cores' convolution kernels read without a transpose
                feat = encoder(self.imagenet(x).contiguous(memory_format=torch.channels_last)).reshape(b, t, -1)
                parts.append(feat * cam_mask[:, cam, None, None].to(feat.dtype))
        cond = torch.cat([p.to(parts[-1].dtype) for p in parts], dim=-1)  # [B, T, per-step features]
        if cond.shape[1] < self.observation_history:  # fewer frames than the history: repeat the first
            pad = cond[:, :1].expand(-1, self.observation_history - cond.shape[1], -1)
            cond = torch.cat([pad, cond], dim=1)
        return cond.flatten(1)

    def _actions(self, batch: Batch) -> torch.Tensor:
        """Normalised chunk `[B, padded_horizon, A]`: missing items zeroed, padded steps = last valid step.

        The U-Net mixes steps and items, so values the loss ignores must not reach its input either.
        """
        parts = [
            self.output_norms[dt.value].normalize(batch[keys.OUTPUTS][dt.value])
            * batch[keys.OUTPUT_MASKS][dt.value].unsqueeze(1)
            for dt in self.output_types
        ]
        actions = torch.cat(parts, dim=-1)
        is_pad = batch[keys.IS_PAD].bool()
        last = ((~is_pad).sum(dim=1) - 1).clamp_min(0)  # [B] index of the last real step
        last_action = actions.gather(1, last.view(-1, 1, 1).expand(-1, 1, actions.shape[-1]))
        actions = torch.where(is_pad.unsqueeze(-1), last_action, actions)
        extra = self.padded_horizon - actions.shape[1]
        if extra:  # U-Net length: repeat the last action; those steps are excluded from the loss
            actions = torch.cat([actions, actions[:, -1:].expand(-1, extra, -1)], dim=1)
        return actions

    # ---------------------------------------------------------------- training / inference
    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """MSE between the U-Net output and the noise (or clean chunk), masked by is_pad and item masks."""
        cond = self._global_cond(batch)
        actions = self._actions(batch)
        b = actions.shape[0]
        noise = torch.randn_like(actions)
        timesteps = torch.randint(0, self.num_train_timesteps, (b,), device=actions.device)
        scheduler = self.noise_scheduler
        if scheduler.alphas_cumprod.device != actions.device:  # once: keeps add_noise free of copies
            scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(actions.device)
        noisy = scheduler.add_noise(actions, noise, timesteps)
        pred = self.unet(noisy, timesteps, cond).float()
        target = noise if self.prediction_type == "epsilon" else actions
        error = F.mse_loss(pred, target, reduction="none")[:, : self.horizon]
        valid = (~batch[keys.IS_PAD].bool()).unsqueeze(-1).float()
        masks = torch.cat(
            [batch[keys.OUTPUT_MASKS][dt.value] for dt in self.output_types], dim=-1
        ).unsqueeze(1)
        weight = valid * masks
        loss = (error * weight).sum() / weight.sum().clamp_min(1.0)
        return {"mse": loss, "loss": loss}

    @torch.no_grad()
    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Unnormalised `[B, H, D]` chunks after `num_inference_steps` denoising steps."""
        cond = self._global_cond(batch)
        b, device = cond.shape[0], cond.device
        # One identically seeded generator per sample: a sample's noise does not depend on its batch.
        generators = [torch.Generator(device=device).manual_seed(SAMPLING_SEED) for _ in range(b)]
        sample = randn_tensor((b, self.padded_horizon, self.action_dim), generator=generators, device=device,
                              dtype=cond.dtype)
        scheduler = self.noise_scheduler
        scheduler.set_timesteps(self.num_inference_steps, device=device)
        for t in scheduler.timesteps:
            out = self.unet(sample, t.expand(b), cond)
            sample = scheduler.step(out, t, sample, generator=generators).prev_sample
        chunks = torch.split(sample[:, : self.horizon].float(), self.output_dims, dim=-1)
        return {dt.value: self.output_norms[dt.value].unnormalize(c) for dt, c in zip(self.output_types, chunks)}

    # ---------------------------------------------------------------- optimisation and EMA
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """AdamW (fused where available) with the ResNet trunks at `lr_backbone`."""
        backbone = [p for e in self.image_encoders for p in e.trunk.parameters() if p.requires_grad]
        ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "lr": self.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": self.lr_backbone})
        return [adamw(groups, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)]

    def configure_schedulers(
        self, optimizers: list[torch.optim.Optimizer], num_training_steps: int
    ) -> list[torch.optim.lr_scheduler.LRScheduler]:
        """diffusers' `lr_scheduler_type` schedule with `lr_scheduler_num_warmup_steps` of warm-up."""
        return [
            get_scheduler(self.lr_scheduler_type, opt, num_warmup_steps=self.warmup,
                          num_training_steps=num_training_steps)
            for opt in optimizers
        ]

    def ema_defaults(self) -> dict[str, float] | None:
        """Diffusion Policy trains with an EMA of the weights (Chi et al.): `use_ema`, `ema_max_decay`, `ema_power`."""
        return {"decay": self.ema_max_decay, "power": self.ema_power} if self.use_ema else None

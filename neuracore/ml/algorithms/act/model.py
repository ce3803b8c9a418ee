"""ACT: ResNet per camera + transformer encoder/decoder with a CVAE latent, whole action chunk out, L1 loss."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from neuracore.ml.algorithms.act.transformer import Decoder, Encoder
from neuracore.ml.algorithms.common.backbones import ResNetName, resnet_trunk
from neuracore.ml.algorithms.common.layers import SinePositionEmbedding2d, adamw, sine_embedding_1d
from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import ACTION_LIKE, STATE_LIKE, DataType, Modality
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.model import Batch, NeuracoreModel
from neuracore.ml.core.model_init import ModelInitDescription
from neuracore.ml.core.normalization import ImageNetNormalize, images_to_unit_float, vector_normalizers
from neuracore.ml.core.registry import register_algorithm

VECTOR_INPUTS = STATE_LIKE
OUTPUTS = ACTION_LIKE


@register_algorithm("act")
class ACT(NeuracoreModel):
    """Action Chunking with Transformers (Zhao et al. 2023), with LeRobot's defaults.

    Encoder tokens: [latent, state, camera feature cells (2D sine positions)]; the decoder's
    learned queries (one per horizon step) cross-attend to them. In training, a transformer
    encoder over [CLS, state, action chunk] gives the posterior latent (KL-regularised); at
    inference the latent is the prior mean (zeros).
    """

    supported_input_data_types: ClassVar[frozenset[DataType]] = VECTOR_INPUTS | {DataType.RGB_IMAGES}
    supported_output_data_types: ClassVar[frozenset[DataType]] = OUTPUTS
    default_input_data_types: ClassVar[tuple[DataType, ...]] = (DataType.JOINT_POSITIONS, DataType.RGB_IMAGES)
    default_output_data_types: ClassVar[tuple[DataType, ...]] = (DataType.JOINT_TARGET_POSITIONS,)

    def __init__(
        self,
        model_init_description: ModelInitDescription,
        image_backbone: ResNetName = "resnet18",
        use_pretrained_weights: bool = False,
        hidden_dim: int = 512,
        nheads: int = 8,
        dim_feedforward: int = 3200,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 1,
        num_vae_encoder_layers: int = 4,
        dropout: float = 0.1,
        use_vae: bool = True,
        latent_dim: int = 32,
        kl_weight: float = 10.0,
        lr: float = 1e-4,
        freeze_backbone: bool = False,
        lr_backbone: float = 1e-5,
        weight_decay: float = 1e-4,
        temporal_ensemble_coeff: float | None = None,
        normalization: str | dict[str, str] = "mean_std",
    ) -> None:
        super().__init__(model_init_description)
        mid = model_init_description
        if hidden_dim % nheads or hidden_dim % 2:
            raise ConfigError(
                f"algorithm.hidden_dim={hidden_dim}: must be even and divisible by algorithm.nheads={nheads}"
            )
        self.lr, self.lr_backbone, self.weight_decay = lr, lr_backbone, weight_decay
        self.kl_weight, self.use_vae, self.latent_dim = kl_weight, use_vae, latent_dim
        self.temporal_ensemble_coeff = temporal_ensemble_coeff  # used by rollouts (see TemporalEnsembler)
        self.horizon = mid.output_prediction_horizon
        self.vector_inputs = [dt for dt in mid.inputs if dt.modality == Modality.VECTOR]
        vectors = {dt: mid.inputs[dt] for dt in self.vector_inputs}
        self.input_norms = vector_normalizers(vectors, normalization, "mean_std", known={**vectors, **mid.outputs})
        self.output_types = list(mid.outputs)
        self.output_dims = [mid.outputs[dt].dim for dt in self.output_types]
        self.output_norms = vector_normalizers(mid.outputs, normalization, "mean_std", known={**vectors, **mid.outputs})
        state_dim = sum(mid.inputs[dt].dim for dt in self.vector_inputs)
        action_dim = sum(self.output_dims)
        self.num_cameras = len(mid.inputs[DataType.RGB_IMAGES].items) if DataType.RGB_IMAGES in mid.inputs else 0
        if not state_dim and not self.num_cameras:
            raise ConfigError("input_data_types: ACT needs at least one camera or vector input")
        d = hidden_dim

        # Image encoder: one ResNet trunk per camera, projected to d channels, 2D sine positions.
        self.imagenet = ImageNetNormalize()
        self.backbones = nn.ModuleList()
        for _ in range(self.num_cameras):
            trunk, channels = resnet_trunk(image_backbone, use_pretrained_weights)
            if freeze_backbone:
                trunk.requires_grad_(False)
            self.backbones.append(trunk.to(memory_format=torch.channels_last))
        self.image_proj = nn.Conv2d(channels, d, kernel_size=1) if self.num_cameras else None
        self.image_pos = SinePositionEmbedding2d(d)

        # Main encoder over [latent, state?, image cells] and decoder with one learned query per step.
        self.state_proj = nn.Linear(state_dim, d) if state_dim else None
        self.latent_proj = nn.Linear(latent_dim, d)
        self.token_pos = nn.Embedding(1 + (1 if state_dim else 0), d)
        self.encoder = Encoder(num_encoder_layers, d, nheads, dim_feedforward, dropout)
        self.decoder = Decoder(num_decoder_layers, d, nheads, dim_feedforward, dropout)
        self.query_pos = nn.Embedding(self.horizon, d)
        self.action_head = nn.Linear(d, action_dim)

        # CVAE posterior encoder over [CLS, state?, action chunk] (training only).
        if use_vae:
            self.vae_cls = nn.Embedding(1, d)
            self.vae_state_proj = nn.Linear(state_dim, d) if state_dim else None
            self.vae_action_proj = nn.Linear(action_dim, d)
            self.vae_encoder = Encoder(num_vae_encoder_layers, d, nheads, dim_feedforward, dropout)
            self.vae_latent = nn.Linear(d, 2 * latent_dim)
            n_tokens = 1 + (1 if state_dim else 0) + self.horizon
            self.register_buffer("vae_pos", sine_embedding_1d(n_tokens, d).unsqueeze(0), persistent=False)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Xavier for the transformer matrices, as DETR/ACT do (the trunks keep torchvision's init).
        for module in (self.encoder, self.decoder, *([self.vae_encoder] if self.use_vae else [])):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    # ----------------------------------------------------------------------------------------
    def _state(self, batch: Batch) -> torch.Tensor | None:
        if not self.vector_inputs:
            return None
        inputs, masks = batch[keys.INPUTS], batch[keys.INPUT_MASKS]
        parts = [self.input_norms[dt.value].normalize(inputs[dt.value][:, -1]) * masks[dt.value] for dt in self.vector_inputs]
        return torch.cat(parts, dim=-1)

    def _image_tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Camera cells `[B, N*h*w, d]`, their positions and key-padding mask (true for missing cameras)."""
        images = images_to_unit_float(batch[keys.INPUTS][DataType.RGB_IMAGES.value][:, -1])  # [B, N, C, H, W]
        images = self.imagenet(images)
        cam_mask = batch[keys.INPUT_MASKS][DataType.RGB_IMAGES.value]  # [B, N]
        tokens, positions, pads = [], [], []
        for cam, trunk in enumerate(self.backbones):
            x = images[:, cam].contiguous(memory_format=torch.channels_last)
            feat = self.image_proj(trunk(x))  # [B, d, h, w]
            pos = self.image_pos(feat)  # [1, d, h, w]
            cells = feat.shape[-2] * feat.shape[-1]
            tokens.append(feat.flatten(2).transpose(1, 2))
            positions.append(pos.flatten(2).transpose(1, 2).expand(feat.shape[0], -1, -1))
            pads.append((cam_mask[:, cam : cam + 1] < 0.5).expand(-1, cells))
        return torch.cat(tokens, 1), torch.cat(positions, 1), torch.cat(pads, 1)

    def _actions(self, batch: Batch) -> torch.Tensor:
        """Normalised target chunk `[B, H, A]` with missing items zeroed."""
        parts = [
            self.output_norms[dt.value].normalize(batch[keys.OUTPUTS][dt.value])
            * batch[keys.OUTPUT_MASKS][dt.value].unsqueeze(1)
            for dt in self.output_types
        ]
        return torch.cat(parts, dim=-1)

    def _posterior(self, state: torch.Tensor | None, actions: torch.Tensor, is_pad: torch.Tensor):
        b = actions.shape[0]
        tokens = [self.vae_cls.weight.unsqueeze(0).expand(b, -1, -1)]
        if state is not None:
            tokens.append(self.vae_state_proj(state).unsqueeze(1))
        tokens.append(self.vae_action_proj(actions))
        x = torch.cat(tokens, dim=1)
        prefix = torch.zeros(b, x.shape[1] - is_pad.shape[1], dtype=torch.bool, device=is_pad.device)
        pad = torch.cat([prefix, is_pad], dim=1)
        out = self.vae_encoder(x, self.vae_pos.to(x.dtype).expand(b, -1, -1), pad)[:, 0]
        mu, log_var = self.vae_latent(out).chunk(2, dim=-1)
        return mu, log_var

    def _decode(self, batch: Batch, latent: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        b = latent.shape[0]
        tokens = [self.latent_proj(latent).unsqueeze(1)]
        if state is not None:
            tokens.append(self.state_proj(state).unsqueeze(1))
        pos = self.token_pos.weight.unsqueeze(0).expand(b, -1, -1)
        pad = torch.zeros(b, len(tokens), dtype=torch.bool, device=latent.device)
        x = torch.cat(tokens, dim=1)
        if self.num_cameras:
            cells, cell_pos, cell_pad = self._image_tokens(batch)
            x, pos, pad = torch.cat([x, cells], 1), torch.cat([pos, cell_pos.to(x.dtype)], 1), torch.cat([pad, cell_pad], 1)
        memory = self.encoder(x, pos, pad)
        query_pos = self.query_pos.weight.unsqueeze(0).expand(b, -1, -1)
        # The queries also feed the decoder (ACT/DETR feed zeros): with zeros, every value of the first
        # self-attention is the same bias, so its projection weights get exactly zero gradient forever.
        out = self.decoder(query_pos, query_pos, memory, pos, pad)
        return self.action_head(out)  # [B, H, A]

    # ----------------------------------------------------------------------------------------
    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """L1 on the normalised chunk (masked by is_pad and item masks) + kl_weight * KL in training."""
        is_pad = batch[keys.IS_PAD].bool()
        state = self._state(batch)
        b = is_pad.shape[0]
        losses: dict[str, torch.Tensor] = {}
        if self.use_vae and self.training:
            mu, log_var = self._posterior(state, self._actions(batch), is_pad)
            latent = mu + (0.5 * log_var).exp() * torch.randn_like(mu)
            kl = (-0.5 * (1 + log_var - mu.pow(2) - log_var.exp())).sum(-1).mean()
        else:
            # Validation measures what inference does: the prior's mean latent.
            latent = torch.zeros(b, self.latent_dim, device=is_pad.device)
            kl = None
        pred = self._decode(batch, latent, state)
        valid = (~is_pad).unsqueeze(-1).float()
        total = torch.zeros((), device=pred.device)
        for dt, chunk in zip(self.output_types, torch.split(pred, self.output_dims, dim=-1)):
            target = self.output_norms[dt.value].normalize(batch[keys.OUTPUTS][dt.value])
            weight = valid * batch[keys.OUTPUT_MASKS][dt.value].unsqueeze(1)
            loss = (F.l1_loss(chunk.float(), target, reduction="none") * weight).sum() / weight.sum().clamp_min(1.0)
            losses[f"l1_{dt.value.lower()}"] = loss
            total = total + loss
        if kl is not None:
            losses["kl"] = kl
            total = total + self.kl_weight * kl
        losses["loss"] = total
        return losses

    @torch.no_grad()
    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Unnormalised `[B, H, D]` chunks from the prior latent (zeros)."""
        state = self._state(batch)
        b = batch[keys.INPUTS][next(iter(batch[keys.INPUTS]))].shape[0]
        device = self.query_pos.weight.device
        pred = self._decode(batch, torch.zeros(b, self.latent_dim, device=device), state).float()
        return {
            dt.value: self.output_norms[dt.value].unnormalize(chunk)
            for dt, chunk in zip(self.output_types, torch.split(pred, self.output_dims, dim=-1))
        }

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """AdamW (fused where available) with the backbones at `lr_backbone`, the rest at `lr`."""
        backbone = [p for p in self.backbones.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        groups = [{"params": rest, "lr": self.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": self.lr_backbone})
        return [adamw(groups, lr=self.lr, weight_decay=self.weight_decay)]

"""CNNMLP (the ACT paper's baseline): ResNet per camera, MLP to the whole action chunk, L1 loss."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from neuracore.ml.algorithms.common.backbones import ResNetName, resnet_trunk
from neuracore.ml.algorithms.common.layers import adamw
from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import ACTION_LIKE, STATE_LIKE, DataType, Modality
from neuracore.ml.core.model import Batch, NeuracoreModel
from neuracore.ml.core.model_init import ModelInitDescription
from neuracore.ml.core.normalization import ImageNetNormalize, images_to_unit_float, vector_normalizers
from neuracore.ml.core.registry import register_algorithm

_POOL = 4  # feature maps are pooled to 4x4 before flattening, keeping where things are


@register_algorithm("cnnmlp")
class CNNMLP(NeuracoreModel):
    """Per-camera ResNet trunk → 1x1 conv → 4x4 pool → linear; MLP over [cameras, state] → chunk."""

    supported_input_data_types: ClassVar[frozenset[DataType]] = STATE_LIKE | {DataType.RGB_IMAGES}
    supported_output_data_types: ClassVar[frozenset[DataType]] = ACTION_LIKE
    default_input_data_types: ClassVar[tuple[DataType, ...]] = (DataType.JOINT_POSITIONS, DataType.RGB_IMAGES)
    default_output_data_types: ClassVar[tuple[DataType, ...]] = (DataType.JOINT_TARGET_POSITIONS,)

    def __init__(
        self,
        model_init_description: ModelInitDescription,
        image_backbone: ResNetName = "resnet18",
        hidden_dim: int = 512,
        cnn_output_dim: int = 512,
        num_layers: int = 3,
        lr: float = 1e-4,
        freeze_backbone: bool = False,
        lr_backbone: float = 1e-5,
        weight_decay: float = 1e-4,
        use_pretrained_weights: bool = False,
        normalization: str | dict[str, str] = "mean_std",
    ) -> None:
        super().__init__(model_init_description)
        mid = model_init_description
        self.lr, self.lr_backbone, self.weight_decay = lr, lr_backbone, weight_decay
        self.horizon = mid.output_prediction_horizon
        self.vector_inputs = [dt for dt in mid.inputs if dt.modality == Modality.VECTOR]
        vectors = {dt: mid.inputs[dt] for dt in self.vector_inputs}
        self.input_norms = vector_normalizers(vectors, normalization, "mean_std", known={**vectors, **mid.outputs})
        self.output_types = list(mid.outputs)
        self.output_dims = [mid.outputs[dt].dim for dt in self.output_types]
        self.output_norms = vector_normalizers(mid.outputs, normalization, "mean_std", known={**vectors, **mid.outputs})

        self.num_cameras = len(mid.inputs[DataType.RGB_IMAGES].items) if DataType.RGB_IMAGES in mid.inputs else 0
        self.imagenet = ImageNetNormalize()
        self.backbones = nn.ModuleList()
        self.camera_heads = nn.ModuleList()
        for _ in range(self.num_cameras):
            trunk, channels = resnet_trunk(image_backbone, use_pretrained_weights)
            if freeze_backbone:
                trunk.requires_grad_(False)
            self.backbones.append(trunk.to(memory_format=torch.channels_last))
            self.camera_heads.append(
                nn.Sequential(
                    nn.Conv2d(channels, 32, kernel_size=1),
                    nn.ReLU(),
                    nn.AdaptiveAvgPool2d(_POOL),
                    nn.Flatten(),
                    nn.Linear(32 * _POOL * _POOL, cnn_output_dim),
                    nn.ReLU(),
                )
            )
        state_dim = sum(mid.inputs[dt].dim for dt in self.vector_inputs)
        in_dim = self.num_cameras * cnn_output_dim + state_dim
        if in_dim == 0:
            raise ValueError("CNNMLP needs at least one camera or vector input")
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [nn.Linear(in_dim if i == 0 else hidden_dim, hidden_dim), nn.ReLU()]
        layers.append(nn.Linear(hidden_dim if num_layers else in_dim, self.horizon * sum(self.output_dims)))
        self.mlp = nn.Sequential(*layers)

    def _features(self, batch: Batch) -> torch.Tensor:
        inputs = batch[keys.INPUTS]
        parts = []
        if self.num_cameras:
            images = images_to_unit_float(inputs[DataType.RGB_IMAGES.value][:, -1])  # [B, N, C, H, W]
            images = self.imagenet(images)
            for cam, (trunk, head) in enumerate(zip(self.backbones, self.camera_heads)):
                # channels-last: the layout tensor cores' convolution kernels read without a transpose
                feat = head(trunk(images[:, cam].contiguous(memory_format=torch.channels_last)))
                mask = batch[keys.INPUT_MASKS][DataType.RGB_IMAGES.value][:, cam : cam + 1]
                parts.append(feat * mask)  # a camera the robot lacks contributes nothing
        for dt in self.vector_inputs:
            x = self.input_norms[dt.value].normalize(inputs[dt.value][:, -1])
            parts.append(x * batch[keys.INPUT_MASKS][dt.value])
        return torch.cat(parts, dim=-1)

    def _chunks(self, batch: Batch) -> list[torch.Tensor]:
        out = self.mlp(self._features(batch))
        out = out.view(out.shape[0], self.horizon, sum(self.output_dims))
        return list(torch.split(out, self.output_dims, dim=-1))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """L1 between predicted and normalised target chunks, masked by is_pad and item masks."""
        valid = (~batch[keys.IS_PAD]).unsqueeze(-1).float()  # [B, H, 1]
        losses = {}
        total = 0.0
        for dt, pred in zip(self.output_types, self._chunks(batch)):
            target = self.output_norms[dt.value].normalize(batch[keys.OUTPUTS][dt.value])
            weight = valid * batch[keys.OUTPUT_MASKS][dt.value].unsqueeze(1)
            loss = (F.l1_loss(pred, target, reduction="none") * weight).sum() / weight.sum().clamp_min(1.0)
            losses[f"l1_{dt.value.lower()}"] = loss
            total = total + loss
        losses["loss"] = total
        return losses

    @torch.no_grad()
    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Unnormalised `[B, H, D]` chunks."""
        return {
            dt.value: self.output_norms[dt.value].unnormalize(pred)
            for dt, pred in zip(self.output_types, self._chunks(batch))
        }

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """AdamW (fused on CUDA) with the backbone at `lr_backbone` and everything else at `lr`."""
        backbone = [p for p in self.backbones.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in backbone_ids]
        groups = [{"params": rest, "lr": self.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": self.lr_backbone})
        return [adamw(groups, lr=self.lr, weight_decay=self.weight_decay)]

"""A CNNMLP whose training step runs out of memory at a chosen step on a chosen rank (test fixture)."""

from __future__ import annotations

import os

import torch

from neuracore.ml.algorithms.cnnmlp import CNNMLP
from neuracore.ml.core.model_init import ModelInitDescription
from neuracore.ml.core.registry import register_algorithm


@register_algorithm("oom_cnnmlp")
class OomCNNMLP(CNNMLP):
    """`oom_at_step`: the 1-based training step whose forward raises CUDA's out-of-memory error;
    `oom_rank`: the only rank that fails (-1: every rank)."""

    def __init__(self, model_init_description: ModelInitDescription, hidden_dim: int = 32, cnn_output_dim: int = 32,
                 num_layers: int = 1, oom_at_step: int = 3, oom_rank: int = -1) -> None:
        super().__init__(model_init_description, hidden_dim=hidden_dim, cnn_output_dim=cnn_output_dim,
                         num_layers=num_layers)
        self.oom_at_step, self.oom_rank, self.calls = oom_at_step, oom_rank, 0

    def training_step(self, batch):
        if self.training:
            self.calls += 1
            rank = int(os.environ.get("RANK", "0"))
            if self.calls == self.oom_at_step and self.oom_rank in (-1, rank):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return super().training_step(batch)

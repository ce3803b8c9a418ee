"""ACT's temporal ensembling: average every chunk's prediction for the current step with exponential weights."""

from __future__ import annotations

import math

import torch


class TemporalEnsembler:
    """Query the policy every step and execute the weighted mean of all predictions made for this step.

    Weights are `exp(-coeff * i)` with `i = 0` for the oldest prediction (Zhao et al. 2023), so a
    positive `coeff` favours older predictions and smooths the motion. `reset()` at episode start.
    """

    def __init__(self, coeff: float, horizon: int) -> None:
        self.coeff = float(coeff)
        self.horizon = int(horizon)
        self.reset()

    def reset(self) -> None:
        """Forget all pending predictions."""
        self._sum: torch.Tensor | None = None  # [H, D] weighted sums of predictions for steps t..t+H-1
        self._weight: torch.Tensor | None = None  # [H] total weight of each of those steps
        self._count: torch.Tensor | None = None  # [H] number of predictions already made for each step

    def update(self, chunk: torch.Tensor) -> torch.Tensor:
        """Add a new `[H, D]` chunk predicted at the current step; return the action `[D]` to execute."""
        chunk = chunk.detach().float()
        if self._sum is None:
            self._sum = torch.zeros_like(chunk)
            self._weight = torch.zeros(chunk.shape[0], dtype=chunk.dtype, device=chunk.device)
            self._count = torch.zeros_like(self._weight)
        # The newest prediction for a step has index = number of earlier predictions for that step.
        weights = torch.exp(-self.coeff * self._count)
        self._sum += weights[:, None] * chunk
        self._weight += weights
        self._count += 1
        action = self._sum[0] / self._weight[0]
        # Shift the window one step forward: the executed step leaves, an empty future step enters.
        self._sum = torch.cat([self._sum[1:], torch.zeros_like(self._sum[:1])])
        self._weight = torch.cat([self._weight[1:], torch.zeros_like(self._weight[:1])])
        self._count = torch.cat([self._count[1:], torch.zeros_like(self._count[:1])])
        return action

    @staticmethod
    def weights(coeff: float, n: int) -> list[float]:
        """The normalised weights of `n` predictions of one step, oldest first (for documentation/tests)."""
        raw = [math.exp(-coeff * i) for i in range(n)]
        return [w / sum(raw) for w in raw]

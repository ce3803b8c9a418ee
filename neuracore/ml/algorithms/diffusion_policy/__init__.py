"""Diffusion Policy (Chi et al. 2023): ResNet + spatial-softmax encoder, FiLM 1D U-Net, diffusers schedulers."""

from neuracore.ml.algorithms.diffusion_policy.model import DiffusionPolicy

__all__ = ["DiffusionPolicy"]

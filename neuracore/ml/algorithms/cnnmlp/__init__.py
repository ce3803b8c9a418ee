"""CNNMLP: per-camera ResNet features + MLP over features and state, whole chunk out."""

from neuracore.ml.algorithms.cnnmlp.model import CNNMLP

__all__ = ["CNNMLP"]

"""Core types shared by datasets, algorithms, trainers and export (no accelerate, no Hydra)."""

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError, DatasetError, NeuracoreError
from neuracore.ml.core.model import NeuracoreModel, build_model
from neuracore.ml.core.model_init import FeatureSpec, ModelInitDescription
from neuracore.ml.core.registry import get_algorithm, register_algorithm, registered_algorithms

__all__ = [
    "ConfigError",
    "DataType",
    "DatasetError",
    "FeatureSpec",
    "Modality",
    "ModelInitDescription",
    "NeuracoreError",
    "NeuracoreModel",
    "build_model",
    "get_algorithm",
    "register_algorithm",
    "registered_algorithms",
]

"""Exported model folders (config.json + model.safetensors + README.md) and inference loading."""

from neuracore.ml.export.model_folder import export_model, load_model_folder
from neuracore.ml.export.policy import Policy

__all__ = ["Policy", "export_model", "load_model_folder"]

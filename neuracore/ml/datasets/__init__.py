"""Datasets: Arrow format, materialisation, data-spec resolution and training windows."""

from neuracore.ml.datasets.format import DatasetSpec, MaterializedDataset, available_datasets, open_dataset
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, materialize

__all__ = [
    "DatasetLayout",
    "DatasetSpec",
    "Episode",
    "MaterializedDataset",
    "available_datasets",
    "materialize",
    "open_dataset",
]

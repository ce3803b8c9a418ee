"""Datasets: Arrow format, materialisation, data-spec resolution and training windows."""

from neuracore.ml.datasets.api import (
    dataset_info,
    delete_dataset,
    import_dataset,
    list_datasets,
    show_frame,
    verify_dataset,
)
from neuracore.ml.datasets.format import (
    DatasetSpec,
    MaterializedDataset,
    available_datasets,
    open_dataset,
)
from neuracore.ml.datasets.materialize import (
    DatasetLayout,
    Episode,
    EpisodeSource,
    materialize,
)

__all__ = [
    "DatasetLayout",
    "DatasetSpec",
    "Episode",
    "EpisodeSource",
    "MaterializedDataset",
    "available_datasets",
    "dataset_info",
    "delete_dataset",
    "import_dataset",
    "list_datasets",
    "materialize",
    "open_dataset",
    "show_frame",
    "verify_dataset",
]

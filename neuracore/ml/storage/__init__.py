"""Neuracore storage: push models, runs and datasets to an fsspec URL hub; pull them verified.

    from neuracore.ml.storage import push_run, pull_model
    push_run("~/.neuracore/training/runs/my_run", "my-org/my-policy")    # model/ -> main, best_model/ -> best
    folder = pull_model("my-org/my-policy@v1")                           # cached, every sha256 verified
"""

from neuracore.ml.storage.backend import default_storage_url, open_store
from neuracore.ml.storage.datasets import pull_dataset, push_dataset
from neuracore.ml.storage.errors import (
    IntegrityError,
    SourceChangedError,
    StorageConflictError,
    StorageError,
)
from neuracore.ml.storage.hub import Hub, LogEntry, PushResult, Revision, hub_cache_root
from neuracore.ml.storage.models import (
    is_model_folder,
    pull_model,
    push_model,
    push_run,
)
from neuracore.ml.storage.names import looks_like_repo, parse_repo

__all__ = [
    "Hub",
    "IntegrityError",
    "LogEntry",
    "PushResult",
    "Revision",
    "SourceChangedError",
    "StorageConflictError",
    "StorageError",
    "default_storage_url",
    "hub_cache_root",
    "is_model_folder",
    "looks_like_repo",
    "open_store",
    "parse_repo",
    "pull_dataset",
    "pull_model",
    "push_dataset",
    "push_model",
    "push_run",
]

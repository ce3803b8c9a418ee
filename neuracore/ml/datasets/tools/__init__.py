"""Dataset tools behind `tools/dataset.py`: merge, split, filter, stats, view, doctor.

Every tool that writes a dataset stages it in a hidden folder and publishes it in one rename,
like an import: a kill leaves the old dataset or the new one, never half of one.
"""

from __future__ import annotations

from typing import Any

# Public functions, imported on first use so that `import neuracore.ml.datasets.tools.<module>`
# stays as light as that module.
_EXPORTS = {
    "merge_datasets": "merge",
    "split_dataset": "split",
    "parse_episodes": "split",
    "filter_dataset": "filter",
    "compute_statistics": "stats",
    "dataset_statistics": "stats",
    "render_episode": "view",
    "contact_sheet": "view",
    "diagnose_dataset": "doctor",
}


def __getattr__(name: str) -> Any:
    """Lazily import a public tool function (`from neuracore.ml.datasets.tools import merge_datasets`)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["compute_statistics", "contact_sheet", "dataset_statistics", "diagnose_dataset", "filter_dataset",
           "merge_datasets", "parse_episodes", "render_episode", "split_dataset"]

"""Importers: other tools' formats → episodes → `materialize` (one module per source kind).

Each module exposes `plan(path, options) -> ImportPlan`: it reads only metadata (and the first
episode's shapes) and returns lazily read `EpisodeSource`s, so a dataset larger than memory
imports episode by episode, optionally in several processes.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.format import dataset_path
from neuracore.ml.datasets.importers.common import (
    ImportOptions,
    ImportPlan,
    load_mapping,
)
from neuracore.ml.datasets.materialize import materialize

IMPORTERS = {
    "lerobot": "neuracore.ml.datasets.importers.lerobot",
    "hdf5": "neuracore.ml.datasets.importers.hdf5",
    "episodes": "neuracore.ml.datasets.importers.episodes",
}


def plan_import(kind: str, path: str | Path, options: ImportOptions) -> ImportPlan:
    """What importing `path` as `kind` would write (layout, episodes), reading metadata only."""
    if kind not in IMPORTERS:
        raise ConfigError(f"import kind {kind!r} unknown; valid: {', '.join(IMPORTERS)}")
    return importlib.import_module(IMPORTERS[kind]).plan(Path(path).expanduser(), options)


def import_dataset(
    kind: str,
    path: str | Path,
    name: str,
    *,
    frequency: float | None = None,
    mapping: str | Path | Mapping[str, Any] | None = None,
    robot: str | None = None,
    language: str | None = None,
    max_delay_s: float | None = None,
    skip_bad_episodes: bool = False,
    image_encoding: str = "raw",
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    root: Path | None = None,
) -> Path:
    """Import `path` (a `kind` source) as dataset `name`; atomic, returns the dataset folder.

    `mapping` is a `--map` YAML file or dict `{source_key: DATA_TYPE or null}`; `image_encoding`
    stores RGB frames as "raw" uint8 (fastest to read) or "png"/"jpeg" bytes (smaller on disk).
    """
    for key, value, zero_ok in (("--frequency", frequency, False), ("--max-delay-s", max_delay_s, True)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)
                                      and (value > 0 or (zero_ok and value == 0))):
            raise ConfigError(f"{key} {value!r}: must be a {'non-negative' if zero_ok else 'positive'} finite number")
    # The name first: a bad or taken name is refused before the source is read.
    final = dataset_path(name, root)
    if final.exists() and not overwrite:
        raise DatasetError(f"dataset {name!r} already exists at {final}; delete it or pass overwrite")
    options = ImportOptions(frequency, load_mapping(mapping), robot, language, max_delay_s)
    plan = plan_import(kind, path, options)
    plan.layout.image_encoding = image_encoding
    source = {**plan.source, "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return materialize(
        name, plan.sources, plan.layout, plan.frequency, root=root, overwrite=overwrite, source=source,
        skip_bad_episodes=skip_bad_episodes, workers=workers, progress=progress, total=len(plan.sources),
    )


__all__ = ["IMPORTERS", "ImportOptions", "ImportPlan", "import_dataset", "plan_import"]

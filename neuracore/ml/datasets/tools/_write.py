"""Writing a dataset made of other datasets' episodes: Arrow rows copied (never re-encoded), staged, published.

The same staging and publishing as an import (`materialize`): rows go into one Arrow file in a
hidden `staging_prefix` folder (removed on any failure; a killed process's folder is removed by
`sweep_abandoned` next time), spec.json is written beside them, and `replace_dir` renames the
folder into place in one step, so a kill leaves the old dataset or the new one, never half.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from datasets.arrow_writer import ArrowWriter

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import DatasetError
from neuracore.ml.datasets.format import (
    DATA_DIR,
    SPEC_FILE,
    ColumnSpec,
    DatasetSpec,
    EpisodeSpec,
    MaterializedDataset,
    dataset_path,
    encode_image,
    fingerprint_files,
    open_dataset,
    staging_prefix,
    sweep_abandoned,
)
from neuracore.ml.datasets.materialize import _features, _to_saved_dataset
from neuracore.ml.utils.atomic import replace_dir
from neuracore.ml.utils.paths import check_name

_BLOCK_BYTES = 64 << 20  # rows are copied in blocks of about this size: memory stays bounded on any episode


@dataclass
class Part:
    """One episode of an input dataset, to be copied into the output."""

    dataset: MaterializedDataset
    episode: int  # index into `dataset.spec.episodes`


@dataclass
class Staged:
    """A dataset written to its hidden staging folder, not yet under its name."""

    name: str
    tmp: Path
    final: Path
    spec: DatasetSpec
    overwrite: bool = False


def open_inputs(names: list[str], root: Path | None, tool: str) -> list[MaterializedDataset]:
    """Open the input datasets (a name given twice or unknown is a one-line error)."""
    seen: set[str] = set()
    for name in names:
        check_name(name, f"{tool}: dataset")
        if name in seen:
            raise DatasetError(f"{tool}: dataset {name!r} is given twice")
        seen.add(name)
    return [open_dataset(name, root) for name in names]


def check_output(name: str, inputs: list[str], root: Path | None, overwrite: bool, option: str = "--name") -> Path:
    """The output's final folder; refused when it is an input or exists (without `overwrite`)."""
    check_name(name, option)
    if name in inputs:
        raise DatasetError(f"{option} {name!r} is also an input; write to a new name (the input is read while "
                           "the output is written)")
    final = dataset_path(name, root)  # also finishes a replace of this name killed halfway
    if (final.exists() or final.is_symlink()) and not overwrite:
        raise DatasetError(f"dataset {name!r} already exists at {final}; delete it or pass --overwrite")
    if final.parent.exists() and not final.parent.is_dir():
        raise DatasetError(f"{final.parent}: a file where the datasets folder should be; move it away or set "
                           "NEURACORE_HOME elsewhere")
    return final


def input_record(ds: MaterializedDataset) -> dict[str, Any]:
    """What provenance keeps of an input: name, fingerprint, size and its own source."""
    return {"name": ds.name, "fingerprint": ds.spec.fingerprint, "episodes": len(ds.spec.episodes),
            "frames": ds.spec.num_frames, "source": ds.spec.source}


def _filler(col: ColumnSpec, n: int, cache: dict[str, Any]) -> pa.Array:
    """`n` rows of a column the input lacks: zeros, as an import fills an item a robot lacks (masked out)."""
    if col.encoding == "raw":
        zeros = np.zeros(n * col.row_width, col.dtype)
        return pa.FixedSizeListArray.from_arrays(pa.array(zeros), col.row_width)
    key = f"{col.encoding}:{col.item_shape}"
    if key not in cache:  # one black frame encoded once, then repeated
        cache[key] = encode_image(np.zeros(col.item_shape, np.uint8), col.encoding)
    return pa.array([cache[key]] * n, type=pa.binary())


def _vector_block(src: pa.ChunkedArray, src_col: ColumnSpec, col: ColumnSpec) -> pa.Array:
    """A vector column's rows laid out for the output's items (items the input lacks are zeros)."""
    width = int(np.prod(col.item_shape))
    n = len(src)
    values = src.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(n, len(src_col.items), width)
    out = np.zeros((n, len(col.items), width), np.float32)
    for j, item in enumerate(col.items):
        if item in src_col.items:
            out[:, j] = values[:, src_col.items.index(item)]
    return pa.FixedSizeListArray.from_arrays(pa.array(out.reshape(-1)), col.row_width)


def _rows_per_block(ds: MaterializedDataset) -> int:
    per_row = ds.table.nbytes / max(ds.table.num_rows, 1)
    return max(1, int(_BLOCK_BYTES // max(per_row, 1)))


def stage(
    name: str,
    parts: list[Part],
    *,
    columns: dict[str, ColumnSpec],
    robots: dict[str, dict[str, list[str]]],
    frequency: float,
    source: dict[str, Any],
    root: Path | None,
    overwrite: bool,
    inputs: list[str],
) -> Staged:
    """Copy `parts` (in order) into a staging folder with `columns`; statistics recomputed, new fingerprint.

    A column the output shares unchanged with an input is copied as Arrow buffers (encoded frames
    stay the same bytes); a vector column whose items differ is re-laid out; a column an input
    lacks is zero-filled. The caller publishes the result with `publish` (or `discard`s it).
    """
    import datasets as hf

    from neuracore.ml.datasets.tools.stats import compute_statistics

    if not parts:
        raise DatasetError(f"dataset {name!r}: no episodes to write")
    final = check_output(name, inputs, root, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_abandoned(final.parent)  # what killed imports and tools left behind
    tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(name), dir=final.parent))
    tmp.chmod(0o755)
    hf.disable_progress_bars()
    try:
        features = _features(columns)
        schema = features.arrow_schema
        fillers: dict[str, Any] = {}
        episodes: list[EpisodeSpec] = []
        start = 0
        with ArrowWriter(features=features, path=str(tmp / "staging.arrow")) as writer:
            for index, part in enumerate(parts):
                src_spec = part.dataset.spec
                ep = src_spec.episodes[part.episode]
                block = _rows_per_block(part.dataset)
                for lo in range(0, ep.length, block):
                    n = min(block, ep.length - lo)
                    rows = part.dataset.table.slice(ep.start + lo, n)  # zero-copy view of the memory map
                    arrays: list[Any] = []
                    for field_ in schema:
                        if field_.name == "episode_index":
                            arrays.append(pa.array(np.full(n, index, np.int32)))
                        elif field_.name == "frame_index":
                            arrays.append(rows.column("frame_index").cast(field_.type))
                        else:
                            col, src_col = columns[field_.name], src_spec.columns.get(field_.name)
                            if src_col is None:
                                arrays.append(_filler(col, n, fillers))
                            elif src_col.items != col.items and DataType(col.data_type).modality == Modality.VECTOR:
                                arrays.append(_vector_block(rows.column(field_.name), src_col, col))
                            else:
                                arrays.append(rows.column(field_.name))
                        if arrays[-1].type != field_.type:  # e.g. a list type written by another `datasets` version
                            arrays[-1] = arrays[-1].cast(field_.type)
                    writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                episodes.append(EpisodeSpec(ep.robot, start, ep.length, ep.language))
                start += ep.length
            writer.finalize()
        _to_saved_dataset(tmp / "staging.arrow", tmp / DATA_DIR)
        spec = DatasetSpec(name=name, frequency=float(frequency), robots=robots, columns=columns,
                           episodes=episodes, source=source)
        staged = hf.load_from_disk(str(tmp / DATA_DIR))
        spec.statistics = compute_statistics(staged.data.table, spec)
        del staged
        spec.fingerprint = fingerprint_files(tmp / DATA_DIR)
        (tmp / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        hf.enable_progress_bars()
    return Staged(name, tmp, final, spec, overwrite)


def publish(staged: Staged) -> Path:
    """Rename a staged dataset into place (replacing the old one in one step where allowed)."""
    if not staged.overwrite and (staged.final.exists() or staged.final.is_symlink()):  # appeared meanwhile
        discard(staged)
        raise DatasetError(f"dataset {staged.name!r} already exists at {staged.final}; delete it or pass --overwrite")
    replace_dir(staged.tmp, staged.final)
    return staged.final


def discard(staged: Staged) -> None:
    """Remove a staged dataset that will not be published."""
    shutil.rmtree(staged.tmp, ignore_errors=True)


def write(name: str, parts: list[Part], **kwargs: Any) -> Path:
    """`stage` then `publish`: dataset `name` appears whole or not at all."""
    return publish(stage(name, parts, **kwargs))


__all__ = ["Part", "Staged", "check_output", "discard", "input_record", "open_inputs", "publish", "stage", "write"]

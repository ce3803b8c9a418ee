"""`merge`: several datasets' episodes in one new dataset (inputs in the order given, episodes in order).

Robots are unioned: a robot present in several inputs must have the same items there. Columns
are unioned the way an import lays them out (vector items in order of first appearance, one
column per camera); an input's episodes get zeros in columns or items it lacks, which the
robots' item lists mask out in training. A column shared by inputs must have the same item
shape, dtype and image encoding in all, and all inputs the same frequency; otherwise one line
names the datasets and the column. Frames are copied as stored (JPEG/PNG bytes are not
re-encoded); statistics are recomputed over the merged episodes; provenance (every input's
name, fingerprint, size, source and where its episodes start) is kept in `spec.source`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.format import ColumnSpec, MaterializedDataset
from neuracore.ml.datasets.tools._write import Part, check_output, input_record, open_inputs, write


def _shape(col: ColumnSpec) -> str:
    return "x".join(str(s) for s in col.item_shape) + f" {col.dtype}" + (
        f" {col.encoding}" if DataType(col.data_type).modality != Modality.VECTOR else "")


def merged_layout(inputs: list[MaterializedDataset]) -> tuple[dict[str, dict[str, list[str]]], dict[str, ColumnSpec]]:
    """Robots and columns of the merge of `inputs`, or a one-line error naming what does not fit."""
    first = inputs[0]
    for ds in inputs[1:]:
        if abs(ds.spec.frequency - first.spec.frequency) > 1e-9 * first.spec.frequency:
            raise DatasetError(f"merge: {first.name!r} is at {first.spec.frequency:g} Hz but {ds.name!r} at "
                               f"{ds.spec.frequency:g} Hz; re-import one with --frequency "
                               f"{first.spec.frequency:g}")
    robots: dict[str, dict[str, list[str]]] = {}
    owner: dict[str, str] = {}
    for ds in inputs:
        for robot, types in ds.spec.robots.items():
            if robot in robots and robots[robot] != types:
                diff = sorted(dt for dt in {*types, *robots[robot]} if types.get(dt) != robots[robot].get(dt))
                dt = diff[0]
                raise DatasetError(f"merge: robot {robot!r} has {dt} {robots[robot].get(dt, [])} in "
                                   f"{owner[robot]!r} but {types.get(dt, [])} in {ds.name!r}; a robot must have "
                                   "the same items in every input (re-import one with --robot <other name>)")
            robots.setdefault(robot, types)
            owner.setdefault(robot, ds.name)
    seen: dict[str, tuple[ColumnSpec, str]] = {}
    for ds in inputs:
        for name, col in ds.spec.columns.items():
            if name not in seen:
                seen[name] = (col, ds.name)
                continue
            other, where = seen[name]
            same = (other.data_type, other.item_shape, other.dtype, other.encoding) == (
                col.data_type, col.item_shape, col.dtype, col.encoding)
            if not same:
                raise DatasetError(f"merge: column {name} is {_shape(other)} in {where!r} but {_shape(col)} in "
                                   f"{ds.name!r}; re-import one with the other's --image-size/--image-encoding")
    columns: dict[str, ColumnSpec] = {}
    for dt in DataType:  # the order an import gives columns: DataType order, cameras in order of appearance
        for name, (col, _) in seen.items():
            if col.data_type != dt.value:
                continue
            if dt.modality == Modality.VECTOR:
                items = list(dict.fromkeys(i for ds in inputs if name in ds.spec.columns
                                           for i in ds.spec.columns[name].items))
                columns[name] = ColumnSpec(col.data_type, items, list(col.item_shape), col.dtype, col.encoding)
            else:
                columns[name] = col
    return robots, columns


def merge_datasets(names: list[str], out: str, *, root: Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write the episodes of datasets `names` (in that order) as one dataset `out`; returns a summary."""
    if len(names) < 2:
        raise ConfigError(f"merge: give at least two datasets to merge, got {len(names)}")
    check_output(out, list(names), root, overwrite)
    inputs = open_inputs(list(names), root, "merge")
    robots, columns = merged_layout(inputs)
    records, parts, first_episode = [], [], 0
    for ds in inputs:
        records.append({**input_record(ds), "first_episode": first_episode})
        parts.extend(Part(ds, i) for i in range(len(ds.spec.episodes)))
        first_episode += len(ds.spec.episodes)
    source: dict[str, Any] = {"kind": "merge", "inputs": records}
    images = [ds.spec.source.get("images") for ds in inputs]
    if images[0] is not None and all(i == images[0] for i in images):
        source["images"] = images[0]  # the same compact-import settings in every input: still true of the merge
    path = write(out, parts, columns=columns, robots=robots, frequency=inputs[0].spec.frequency, source=source,
                 root=root, overwrite=overwrite, inputs=list(names))
    return {"inputs": list(names), "output": out, "path": str(path), "episodes": len(parts),
            "frames": sum(ds.spec.num_frames for ds in inputs), "robots": list(robots), "columns": list(columns)}


__all__ = ["merge_datasets", "merged_layout"]

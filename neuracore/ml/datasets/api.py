"""Python API behind `tools/dataset.py`: list, info, show, verify and delete datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import DatasetError
from neuracore.ml.datasets.format import (
    DATA_DIR,
    SPEC_FILE,
    available_datasets,
    column_name,
    dataset_path,
    decode_images,
    fingerprint_files,
    open_dataset,
)
from neuracore.ml.datasets.importers import import_dataset
from neuracore.ml.utils import atomic

_VERIFY_ROWS = 1024  # rows per verification batch: bounded memory on any dataset size


def list_datasets(root: Path | None = None) -> list[str]:
    """Names of the datasets under `root` (default `$NEURACORE_HOME/datasets`)."""
    return available_datasets(root)


def _size_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def dataset_info(name: str, root: Path | None = None) -> dict[str, Any]:
    """Episodes, frames, frequency, robots with DataTypes and items, statistics, size on disk."""
    ds = open_dataset(name, root)
    spec = ds.spec
    per_robot: dict[str, int] = {}
    for ep in spec.episodes:
        per_robot[ep.robot] = per_robot.get(ep.robot, 0) + 1
    return {
        "name": spec.name,
        "path": str(ds.path),
        "episodes": len(spec.episodes),
        "frames": spec.num_frames,
        "frequency": spec.frequency,
        "duration_s": spec.num_frames / spec.frequency if spec.frequency else None,
        "robots": {r: {"episodes": per_robot.get(r, 0), "data_types": types} for r, types in spec.robots.items()},
        "languages": sorted({e.language for e in spec.episodes if e.language}),
        "image_encoding": sorted({c.encoding for c in spec.columns.values() if c.data_type == "RGB_IMAGES"}),
        "image_shapes": {c.items[0]: c.item_shape for c in spec.columns.values() if c.data_type == "RGB_IMAGES"},
        "images": spec.source.get("images", {}),  # --image-size / --resize-mode / --jpeg-quality of the import
        "statistics": spec.statistics,
        "size_bytes": _size_bytes(ds.path),
        "fingerprint": spec.fingerprint,
        "format_version": spec.format_version,
        "source": spec.source,
    }


def show_frame(name: str, episode: int, frame: int, root: Path | None = None) -> dict[str, Any]:
    """Every item's value at one frame: vectors as numbers, images as shape and mean pixel value."""
    ds = open_dataset(name, root)
    spec = ds.spec
    if not 0 <= episode < len(spec.episodes):
        raise DatasetError(f"--episode {episode}: dataset {name!r} has episodes 0..{len(spec.episodes) - 1}")
    ep = spec.episodes[episode]
    if not 0 <= frame < ep.length:
        raise DatasetError(f"--frame {frame}: episode {episode} has frames 0..{ep.length - 1}")
    row = ds.table.slice(ep.start + frame, 1)
    values: dict[str, dict[str, Any]] = {}
    for dt_name, items in spec.robots[ep.robot].items():
        dt = DataType(dt_name)
        out: dict[str, Any] = {}
        if dt.modality == Modality.LANGUAGE:
            out = {item: ep.language for item in items}
        elif dt.modality == Modality.VECTOR:
            col = spec.columns[column_name(dt)]
            flat = row.column(column_name(dt)).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            w = dt.item_width
            for item in items:
                j = col.items.index(item)
                v = flat[j * w:(j + 1) * w].astype(float)
                out[item] = float(v[0]) if w == 1 else v.tolist()
        else:
            for item in items:
                col = spec.columns[column_name(dt, item)]
                if col.encoding == "raw":
                    flat = row.column(column_name(dt, item)).combine_chunks().flatten().to_numpy(zero_copy_only=False)
                    img = flat.reshape(col.item_shape)
                else:
                    img = decode_images(row.column(column_name(dt, item)).to_pylist(), col.item_shape, item)[0]
                out[item] = {"shape": list(img.shape), "dtype": col.dtype, "mean": float(img.mean())}
        values[dt_name] = out
    return {"dataset": name, "episode": episode, "frame": frame, "robot": ep.robot,
            "time_s": frame / spec.frequency, "values": values}


def verify_dataset(name: str, root: Path | None = None) -> dict[str, Any]:
    """Re-read every row: fingerprint, column shapes, episode/frame indices, finite values.

    Returns a summary; the first problem found is a one-line `DatasetError`.
    """
    ds = open_dataset(name, root)
    spec, table = ds.spec, ds.table
    where = f"dataset {name!r}"
    actual = fingerprint_files(ds.path / DATA_DIR)
    if spec.fingerprint and actual != spec.fingerprint:
        raise DatasetError(f"{where}: fingerprint mismatch (spec.json {spec.fingerprint[:12]}…, files {actual[:12]}…); "
                           "the Arrow files changed since import")
    for cname, col in spec.columns.items():
        typ = table.schema.field(cname).type
        if col.encoding != "raw":
            if not pa.types.is_binary(typ):
                raise DatasetError(f"{where}: column {cname!r} has type {typ}, expected {col.encoding} bytes")
        elif not pa.types.is_fixed_size_list(typ) or typ.list_size != col.row_width:
            raise DatasetError(f"{where}: column {cname!r} has type {typ}, expected {col.row_width} values per row")
    expected_ep = np.concatenate([np.full(e.length, i, np.int64) for i, e in enumerate(spec.episodes)])
    expected_frame = np.concatenate([np.arange(e.length) for e in spec.episodes])
    checked = 0
    for batch in table.to_batches(max_chunksize=_VERIFY_ROWS):
        n = batch.num_rows
        eps = batch.column("episode_index").to_numpy()
        frames = batch.column("frame_index").to_numpy()
        bad = (eps != expected_ep[checked:checked + n]) | (frames != expected_frame[checked:checked + n])
        if bad.any():
            r = checked + int(np.argmax(bad))
            raise DatasetError(f"{where}: row {r} is episode {expected_ep[r]} frame {expected_frame[r]} in spec.json "
                               f"but the table says episode {eps[r - checked]} frame {frames[r - checked]}")
        for cname, col in spec.columns.items():
            if col.encoding != "raw":  # every frame must decode to the declared shape
                decode_images(batch.column(cname).to_pylist(), col.item_shape,
                              f"{where}: column {cname!r} rows {checked}..{checked + n - 1}")
                continue
            values = batch.column(cname).flatten().to_numpy(zero_copy_only=False)
            if values.size != n * col.row_width:
                raise DatasetError(f"{where}: column {cname!r} has {values.size} values in rows "
                                   f"{checked}..{checked + n - 1}, expected {n * col.row_width}")
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                r = checked + int(np.argwhere(~np.isfinite(values.reshape(n, -1)))[0][0])
                raise DatasetError(f"{where}: column {cname!r} is NaN or Inf at episode {expected_ep[r]} "
                                   f"frame {expected_frame[r]}")
        checked += n
    return {"name": name, "ok": True, "episodes": len(spec.episodes), "frames": checked,
            "columns": len(spec.columns), "fingerprint": actual}


def delete_dataset(name: str, root: Path | None = None) -> Path:
    """Remove dataset `name` (renamed aside first, so a reader never sees half a dataset)."""
    path = dataset_path(name, root)
    if not (path / SPEC_FILE).is_file():
        raise DatasetError(f"dataset {name!r}: not found under {path.parent}; "
                           f"available: {', '.join(available_datasets(root)) or 'none'}")
    atomic.remove_dir(path)  # a linked dataset: the link goes, not what it points to
    return path


__all__ = ["dataset_info", "delete_dataset", "import_dataset", "list_datasets", "show_frame", "verify_dataset"]

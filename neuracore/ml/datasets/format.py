"""On-disk format: `<root>/<name>/data/` (HF `save_to_disk`) + `<root>/<name>/spec.json`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import DatasetError, one_line
from neuracore.ml.utils.hashing import update_with_file
from neuracore.ml.utils.paths import check_name, datasets_root

FORMAT_VERSION = 1
SPEC_FILE = "spec.json"
DATA_DIR = "data"
IMAGE_ENCODINGS = ("raw", "png", "jpeg")
JPEG_QUALITY = 95


def encode_image(image: Any, encoding: str) -> bytes:
    """One `[H, W, C]` uint8 frame as PNG (lossless) or JPEG bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    frame = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    if encoding == "png":
        frame.save(buf, format="PNG")
    else:  # 4:4:4 chroma: colour edges stay sharp for the policy
        frame.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def decode_images(frames: list[bytes], shape: list[int], where: str) -> Any:
    """Encoded frames → `[N, H, W, C]` uint8 (Pillow's C decoder; never per pixel in Python)."""
    import io

    import numpy as np
    from PIL import Image

    out = np.empty((len(frames), *shape), np.uint8)
    for i, data in enumerate(frames):
        try:
            with Image.open(io.BytesIO(data)) as img:
                arr = np.asarray(img.convert("RGB" if shape[-1] == 3 else "L"))
        except (OSError, TypeError) as exc:
            raise DatasetError(f"{where}: frame {i} cannot be decoded ({exc})") from None
        if arr.size != out[i].size:
            raise DatasetError(f"{where}: frame {i} decodes to shape {list(arr.shape)}, expected {list(shape)}")
        out[i] = arr.reshape(shape)
    return out


def column_name(data_type: DataType, item: str | None = None) -> str:
    """Arrow column of a data type: one per vector DataType, one per camera/sensor otherwise."""
    if data_type.modality == Modality.VECTOR:
        return data_type.value
    return f"{data_type.value}.{item}"


@dataclass
class ColumnSpec:
    """One Arrow column: which items it holds and the shape of one item in one frame."""

    data_type: str
    items: list[str]  # vector column: union of item names; image column: [camera]
    item_shape: list[int]  # vector: [width]; image: [H, W, C]; point cloud: [N, 3]
    dtype: str  # numpy dtype of stored values
    encoding: str = "raw"  # "raw" fixed-size values, or "png"/"jpeg" bytes per frame (RGB images)

    @property
    def row_width(self) -> int:
        """Values per row in the flattened fixed-size list."""
        n = 1
        for s in self.item_shape:
            n *= s
        return n * (len(self.items) if DataType(self.data_type).modality == Modality.VECTOR else 1)


@dataclass
class EpisodeSpec:
    """An episode: its robot, rows [start, start+length) of the table, its instruction."""

    robot: str
    start: int
    length: int
    language: str | None = None


@dataclass
class DatasetSpec:
    """The JSON spec stored beside a materialised Arrow table."""

    name: str
    frequency: float
    robots: dict[str, dict[str, list[str]]]  # robot -> DataType value -> ordered item names
    columns: dict[str, ColumnSpec]
    episodes: list[EpisodeSpec]
    statistics: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    fingerprint: str = ""
    format_version: int = FORMAT_VERSION
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        """Rows in the table."""
        return sum(e.length for e in self.episodes)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        out = asdict(self)
        out["num_frames"] = self.num_frames
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetSpec:
        """Inverse of `to_json` (raises KeyError/TypeError on malformed input)."""
        return cls(
            name=data["name"],
            frequency=float(data["frequency"]),
            robots={r: {dt: list(items) for dt, items in d.items()} for r, d in data["robots"].items()},
            columns={k: ColumnSpec(**v) for k, v in data["columns"].items()},
            episodes=[EpisodeSpec(**e) for e in data["episodes"]],
            statistics=data.get("statistics", {}),
            fingerprint=data.get("fingerprint", ""),
            format_version=int(data.get("format_version", FORMAT_VERSION)),
            source=data.get("source", {}),
        )


@dataclass
class MaterializedDataset:
    """An opened dataset: the memory-mapped Arrow table and its spec."""

    path: Path
    spec: DatasetSpec
    table: pa.Table

    @property
    def name(self) -> str:
        """Dataset name."""
        return self.spec.name


def dataset_path(name: str, root: Path | None = None) -> Path:
    """Folder of dataset `name` (validated so it cannot escape the datasets root)."""
    return (root or datasets_root()) / check_name(name, "dataset_name")


def available_datasets(root: Path | None = None) -> list[str]:
    """Names of complete materialised datasets (folders holding a spec.json)."""
    root = root or datasets_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / SPEC_FILE).is_file() and not p.name.startswith("."))


def fingerprint_files(data_dir: Path) -> str:
    """sha256 over the Arrow data files (names and bytes), the dataset's content identity."""
    digest = hashlib.sha256()
    for path in sorted(data_dir.glob("*.arrow")):
        digest.update(path.name.encode())
        update_with_file(digest, path)
    return digest.hexdigest()


def read_spec(path: Path) -> DatasetSpec:
    """Read `spec.json`, with a one-line error naming the file when it is unreadable."""
    spec_file = path / SPEC_FILE
    try:
        spec = DatasetSpec.from_json(json.loads(spec_file.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{spec_file}: unreadable dataset spec ({one_line(exc)})") from None
    if spec.format_version > FORMAT_VERSION:
        raise DatasetError(
            f"{spec_file}: format_version {spec.format_version} is newer than this neuracore "
            f"supports ({FORMAT_VERSION}); upgrade neuracore"
        )
    return spec


def open_dataset(name: str, root: Path | None = None) -> MaterializedDataset:
    """Open a materialised dataset memory-mapped (`datasets.load_from_disk`).

    `demo` is generated on first use. A missing or corrupt dataset is a one-line error.
    """
    import datasets as hf_datasets

    path = dataset_path(name, root)
    if not (path / SPEC_FILE).is_file():
        if name == "demo" and root is None:
            from neuracore.ml.datasets.demo import ensure_demo_dataset

            ensure_demo_dataset()
        else:
            names = available_datasets(root)
            if root is None and "demo" not in names:
                names.append("demo (generated on first use)")
            raise DatasetError(
                f"dataset_name={name!r}: no dataset under {path.parent}; available: {', '.join(names) or 'none'}"
            )
    spec = read_spec(path)
    try:
        hf = hf_datasets.load_from_disk(str(path / DATA_DIR))
        table = hf.data.table
    except Exception as exc:  # noqa: BLE001 - any failure here means the Arrow files are unusable
        raise DatasetError(f"{path / DATA_DIR}: corrupt Arrow dataset ({one_line(exc)})") from None
    if table.num_rows != spec.num_frames:
        raise DatasetError(
            f"{path}: table has {table.num_rows} rows but spec.json lists {spec.num_frames} frames; "
            "re-import the dataset"
        )
    missing = [c for c in spec.columns if c not in table.column_names]
    if missing:
        raise DatasetError(f"{path}: columns {missing} of spec.json are missing from the Arrow table")
    return MaterializedDataset(path=path, spec=spec, table=table)

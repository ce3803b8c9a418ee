"""On-disk format: `<root>/<name>/data/` (HF `save_to_disk`) + `<root>/<name>/spec.json`."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import DatasetError, one_line
from neuracore.ml.utils import atomic
from neuracore.ml.utils.hashing import update_with_file
from neuracore.ml.utils.paths import check_name, datasets_root

FORMAT_VERSION = 1
SPEC_FILE = "spec.json"
DATA_DIR = "data"
IMAGE_ENCODINGS = ("raw", "png", "jpeg")
JPEG_QUALITY = 95


def encode_image(image: Any, encoding: str, quality: int | None = None) -> bytes:
    """One `[H, W, C]` uint8 frame as PNG (lossless) or JPEG bytes (`quality` 1-100, default `JPEG_QUALITY`)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    frame = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    if encoding == "png":
        frame.save(buf, format="PNG")
    else:  # 4:4:4 chroma: colour edges stay sharp for the policy
        frame.save(buf, format="JPEG", quality=quality or JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def decode_images(frames: list[bytes], shape: list[int], where: str) -> Any:
    """Encoded frames → `[N, H, W, C]` uint8 (Pillow's C decoder; never per pixel in Python).

    Each frame's size is read from its header and checked before its pixels are decoded, so a
    frame claiming to be 30000x30000 (a decompression bomb) costs nothing but a one-line error.
    """
    import io

    import numpy as np
    from PIL import Image

    out = np.empty((len(frames), *shape), np.uint8)
    height, width = shape[0], shape[1]
    for i, data in enumerate(frames):
        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.size != (width, height):
                    raise DatasetError(f"{where}: frame {i} is {img.size[1]}x{img.size[0]} pixels, expected "
                                       f"{height}x{width} ({list(shape)})")
                arr = np.asarray(img.convert("RGB" if shape[-1] == 3 else "L"))
        except (OSError, TypeError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetError(f"{where}: frame {i} cannot be decoded ({one_line(exc)})") from None
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
    """Folder of dataset `name` (validated so it cannot escape the datasets root).

    A replace interrupted between its two renames (where the system cannot swap folders
    atomically) is finished here, so every reader sees the old or the new dataset, never none.
    """
    path = (root or datasets_root()) / check_name(name, "dataset_name")
    recover_replace(path)
    return path


def recover_replace(path: Path) -> None:
    """Finish a dataset replace that was killed halfway (see `utils.atomic.replace_dir`)."""
    atomic.recover_replace(path, SPEC_FILE)


_STAGING = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[A-Za-z0-9_-]*)-(?P<pid>\d+)-[a-z0-9_]+$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64]


def staging_prefix(name: str) -> str:
    """Prefix of the hidden folder an import of `name` writes before it takes the name.

    `.<name>.tmp-<host>-<pid>-`: the folder of an import that was killed (its process gone from
    this machine) is recognised and removed by `sweep_abandoned`; another machine's is left alone.
    """
    return f".{name}.tmp-{_host()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's live process
        return True
    return True


def sweep_abandoned(root: Path) -> None:
    """Remove what killed imports and deletes left in `root`: staging folders whose process is gone
    from this machine, and `.<name>.deleting` folders (see `utils.atomic.remove_dir`)."""
    try:
        for p in root.glob(".*.tmp-*"):
            m = _STAGING.match(p.name)
            if m and m["host"] == _host() and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
                shutil.rmtree(p, ignore_errors=True)
    except OSError:
        pass  # e.g. a read-only datasets folder: nothing to clean there
    atomic.sweep_deleted(root)


def available_datasets(root: Path | None = None) -> list[str]:
    """Names of complete materialised datasets (folders holding a spec.json)."""
    root = root or datasets_root()
    if not root.is_dir():
        return []
    for p in root.glob(".*.replaced"):  # replaces killed halfway: finish them before listing
        recover_replace(p.parent / p.name[1:-len(".replaced")])
    sweep_abandoned(root)
    return sorted(p.name for p in root.iterdir() if (p / SPEC_FILE).is_file() and not p.name.startswith("."))


def fingerprint_files(data_dir: Path) -> str:
    """sha256 over the Arrow data files (names and bytes), the dataset's content identity."""
    digest = hashlib.sha256()
    for path in sorted(data_dir.glob("*.arrow")):
        digest.update(path.name.encode())
        update_with_file(digest, path)
    return digest.hexdigest()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_spec_json(data: Any) -> None:
    """Structure and values of a parsed spec.json; the first problem is a `ValueError` naming the key.

    Statistics must be finite (a NaN there trains to a NaN loss), episodes must be ordered,
    contiguous row ranges starting at row 0, and names must be strings.
    """
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(what)

    need(isinstance(data, dict), f"expected a JSON object, got {type(data).__name__}")
    for key in ("name", "frequency", "robots", "columns", "episodes"):
        need(key in data, f"{key!r} is missing")
    need(isinstance(data["name"], str), "'name' must be a string")
    freq = data["frequency"]
    need(_number(freq) and math.isfinite(freq) and freq > 0, f"'frequency' must be a positive number, got {freq!r}")
    robots = data["robots"]
    need(isinstance(robots, dict) and bool(robots), "'robots' must be a non-empty object")
    for robot, types in robots.items():
        need(isinstance(types, dict), f"robots.{robot} must be an object {{DATA_TYPE: [items]}}")
        for dt, items in types.items():
            need(dt in DataType._value2member_map_, f"robots.{robot}: unknown data type {dt!r}")
            need(isinstance(items, list) and all(isinstance(i, str) for i in items),
                 f"robots.{robot}.{dt} must be a list of item names")
    columns = data["columns"]
    need(isinstance(columns, dict), "'columns' must be an object")
    for cname, col in columns.items():
        need(isinstance(col, dict), f"columns.{cname} must be an object")
        need(col.get("data_type") in DataType._value2member_map_, f"columns.{cname}: unknown data_type")
        need(isinstance(col.get("items"), list) and bool(col["items"]) and all(isinstance(i, str) for i in col["items"]),
             f"columns.{cname}.items must be a non-empty list of names")
        shape = col.get("item_shape")
        need(isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape),
             f"columns.{cname}.item_shape must be a list of positive integers, got {shape!r}")
        need(col.get("dtype") in ("uint8", "float32"), f"columns.{cname}.dtype {col.get('dtype')!r}; valid: uint8, float32")
        need(col.get("encoding", "raw") in IMAGE_ENCODINGS, f"columns.{cname}.encoding {col.get('encoding')!r}")
    for robot, types in robots.items():  # every item a robot has is stored in a column
        for dt, items in types.items():
            modality = DataType(dt).modality
            if modality == Modality.VECTOR:
                stored = columns.get(column_name(DataType(dt)), {}).get("items", [])
                missing = [i for i in items if i not in stored]
                need(not missing, f"robots.{robot}.{dt}: items {missing} have no values in columns.{dt}")
            elif modality != Modality.LANGUAGE:
                missing = [i for i in items if column_name(DataType(dt), i) not in columns]
                need(not missing, f"robots.{robot}.{dt}: {missing} have no column")
    episodes = data["episodes"]
    need(isinstance(episodes, list), "'episodes' must be a list")
    end = 0
    for i, ep in enumerate(episodes):
        need(isinstance(ep, dict), f"episodes[{i}] must be an object")
        start, length = ep.get("start"), ep.get("length")
        need(isinstance(start, int) and not isinstance(start, bool) and isinstance(length, int)
             and not isinstance(length, bool), f"episodes[{i}]: start and length must be integers")
        need(length > 0, f"episodes[{i}]: length {length} (an episode has at least one frame)")
        need(start >= 0, f"episodes[{i}] starts at row {start}: a negative row")
        need(start >= end, f"episodes[{i}] starts at row {start}, inside the previous episode (rows up to {end - 1}): "
             "episodes overlap or are out of order")
        need(start == end, f"episodes[{i}] starts at row {start}, but the previous episode ends at row {end}: "
             "a gap between episodes")
        end = start + length
        need(ep.get("robot") in robots, f"episodes[{i}]: robot {ep.get('robot')!r} is not in 'robots'")
        need(ep.get("language") is None or isinstance(ep["language"], str), f"episodes[{i}]: language must be a string")
    statistics = data.get("statistics", {})
    need(isinstance(statistics, dict), "'statistics' must be an object")
    for dt, per_item in statistics.items():
        need(isinstance(per_item, dict), f"statistics.{dt} must be an object")
        for item, stats in per_item.items():
            need(isinstance(stats, dict), f"statistics.{dt}.{item} must be an object")
            sizes = {len(v) for v in stats.values() if isinstance(v, list)}
            need(len(sizes) <= 1 and 0 not in sizes,
                 f"statistics {dt} item {item!r}: {', '.join(stats)} must be non-empty lists of one length")
            for stat, values in stats.items():
                need(isinstance(values, list) and all(_number(v) for v in values),
                     f"statistics {dt} item {item!r} {stat} must be a list of numbers")
                bad = [j for j, v in enumerate(values) if not math.isfinite(v)]
                need(not bad, f"statistics {dt} item {item!r} {stat}[{bad[0] if bad else 0}] is "
                     f"{values[bad[0]] if bad else ''} (non-finite statistics train to a NaN loss); re-import the dataset")
    need(isinstance(data.get("fingerprint", ""), str), "'fingerprint' must be a string")
    need(isinstance(data.get("source", {}), dict), "'source' must be an object")
    version = data.get("format_version", FORMAT_VERSION)
    need(isinstance(version, int) and not isinstance(version, bool), "'format_version' must be an integer")


MAX_JSON_BYTES = 256 << 20  # a metadata file (spec.json, info.json, episode.json) larger than this is refused


def read_json(path: Path, problem: str) -> Any:
    """A metadata JSON file parsed, or one line `<path>: <problem> (<why>)`.

    The one reader of every metadata file the importers and datasets read: an unreadable file,
    invalid JSON or text, nesting deep enough to exhaust the parser's recursion, or a file larger
    than `MAX_JSON_BYTES` (checked before reading) are all one-line `DatasetError`s.
    """
    try:
        size = os.stat(path).st_size
        if size > MAX_JSON_BYTES:
            raise ValueError(f"{size} bytes, more than the {MAX_JSON_BYTES} a metadata file may hold")
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise DatasetError(f"{path}: {problem} ({one_line(exc)})") from None


def read_spec(path: Path) -> DatasetSpec:
    """Read `spec.json`, with a one-line error naming the file when it is unreadable or malformed."""
    spec_file = path / SPEC_FILE
    data = read_json(spec_file, "unreadable dataset spec")
    version = data.get("format_version", FORMAT_VERSION) if isinstance(data, dict) else FORMAT_VERSION
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise DatasetError(
            f"{spec_file}: format_version {version} is newer than this neuracore "
            f"supports ({FORMAT_VERSION}); upgrade neuracore"
        )
    try:
        _check_spec_json(data)
        spec = DatasetSpec.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else one_line(exc)
        raise DatasetError(f"{spec_file}: unreadable dataset spec ({detail})") from None
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
    if table.num_rows != spec.num_frames:  # episodes are contiguous from row 0 (read_spec): all in bounds
        raise DatasetError(
            f"{path}: table has {table.num_rows} rows but spec.json lists {spec.num_frames} frames; "
            "re-import the dataset"
        )
    missing = [c for c in spec.columns if c not in table.column_names]
    if missing:
        raise DatasetError(f"{path}: columns {missing} of spec.json are missing from the Arrow table")
    return MaterializedDataset(path=path, spec=spec, table=table)

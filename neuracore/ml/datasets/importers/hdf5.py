"""HDF5 importer: ACT-style `episode_*.hdf5` folders and robomimic-style `data/demo_<i>` files.

ACT (one file per episode): `/observations/qpos` → JOINT_POSITIONS, `/observations/qvel` →
JOINT_VELOCITIES, `/observations/effort` → JOINT_TORQUES, `/observations/images/<camera>` →
RGB_IMAGES, `/action` → JOINT_TARGET_POSITIONS; items are `joint_<i>` (`action_<i>` for
actions whose width differs from qpos). Default rate 50 Hz.

robomimic (one file, `data/demo_<i>/obs/<key>` and `data/demo_<i>/actions`): `*_joint_pos` →
JOINT_POSITIONS, `*_joint_vel` → JOINT_VELOCITIES, `*_eef_pos` + `*_eef_quat` →
END_EFFECTOR_POSES (xyz + quaternion as stored, xyzw), `*_gripper_qpos` →
PARALLEL_GRIPPER_OPEN_AMOUNTS, `*_image` → RGB_IMAGES, `*_depth` → DEPTH_IMAGES, `actions` →
JOINT_TARGET_POSITIONS (`action_<i>`), any other obs key → CUSTOM_1D (`<key>_<i>`). Default 20 Hz.

`--map` keys are paths inside an episode (`observations/qpos`, `obs/object`, `actions`).
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import DatasetError, one_line
from neuracore.ml.datasets.importers.common import (
    MAX_VECTOR_WIDTH,
    Field,
    ImportOptions,
    ImportPlan,
    build_layout,
    check_confined,
    check_declared_shape,
    check_mapping_keys,
    default_robot,
    episode_from_arrays,
)
from neuracore.ml.datasets.materialize import Episode, EpisodeSource

ACT_FREQUENCY = 50.0
ROBOMIMIC_FREQUENCY = 20.0
_ACT_KEYS = {
    "observations/qpos": DataType.JOINT_POSITIONS,
    "observations/qvel": DataType.JOINT_VELOCITIES,
    "observations/effort": DataType.JOINT_TORQUES,
    "action": DataType.JOINT_TARGET_POSITIONS,
}


def _open(path: Path) -> Any:
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path}: unreadable HDF5 file (truncated or not HDF5: {exc})") from None


_MAX_LINK_HOPS = 32


def _node(group: Any, key: str, where: str) -> Any:
    """The object at `key` under `group`, or None if there is none; never leaves this file.

    The path is walked link by link without following any link first: an external link is
    refused before its file is opened, soft links are followed inside this file only, and a
    dataset whose data lives in other files (external storage, a virtual dataset) is refused.
    """
    import h5py

    node, parts, hops = group, [p for p in key.split("/") if p and p != "."], 0
    while parts:
        name = parts.pop(0)
        if not isinstance(node, h5py.Group):
            return None  # a path through a dataset
        link = node.get(name, getlink=True)
        if link is None:
            return None
        if isinstance(link, h5py.ExternalLink):
            raise DatasetError(f"{where}: {key!r} is an external link to {link.filename}:{link.path}; refused "
                               "(it would read outside the source)")
        if isinstance(link, h5py.SoftLink):
            hops += 1
            if hops > _MAX_LINK_HOPS:
                raise DatasetError(f"{where}: {key!r}: more than {_MAX_LINK_HOPS} soft links (a loop?)")
            target = str(link.path)
            node = node.file if target.startswith("/") else node
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        try:
            node = node[name]  # a hard link: an object of this file
        except (KeyError, OSError, ValueError):
            return None
    if isinstance(node, h5py.Dataset):
        if node.is_virtual:
            raise DatasetError(f"{where}: {key!r} is a virtual dataset (its data lives in other files); refused")
        if node.external:
            files = ", ".join(sorted({str(e[0]) for e in node.external}))
            raise DatasetError(f"{where}: {key!r} keeps its data in external files ({files}); refused")
    return node


def _has(group: Any, key: str, where: str) -> bool:
    return _node(group, key, where) is not None


def _dataset(group: Any, key: str, where: str) -> Any:
    """The dataset at `key`, checked: numeric, an array (not a scalar), a size that fits in memory."""
    import h5py

    node = _node(group, key, where)
    if node is None:
        raise DatasetError(f"{where}: {key!r} is missing")
    if not isinstance(node, h5py.Dataset):
        raise DatasetError(f"{where}: {key!r} is a group, expected an array")
    if node.shape is None or len(node.shape) == 0:
        raise DatasetError(f"{where}: {key!r} is a scalar, expected an array with one row per frame")
    if node.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: {key!r} holds {node.dtype} values, not numbers")
    check_declared_shape(list(node.shape), node.dtype.itemsize, f"{where}: {key!r}")
    return node


def _read(group: Any, key: str, where: str) -> np.ndarray:
    node = _dataset(group, key, where)
    try:
        return node[()]
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{where}: cannot read {key!r} ({one_line(exc)})") from None


def _natural_key(path: Path | str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path)))


def _keys(group: Any, where: str, prefix: str = "", depth: int = 0) -> list[str]:
    """Paths of every dataset under `group` (through links inside this file only; see `_node`)."""
    import h5py

    if depth > _MAX_LINK_HOPS:
        raise DatasetError(f"{where}: groups nested more than {_MAX_LINK_HOPS} deep under {prefix!r} (a loop?)")
    out: list[str] = []
    for name in group:
        soft = isinstance(group.get(name, getlink=True), h5py.SoftLink)
        node = _node(group, name, where)
        if isinstance(node, h5py.Group):
            if not soft:  # a soft-linked group is listed where it lives (and cannot loop here)
                out.extend(_keys(node, where, f"{prefix}{name}/", depth + 1))
        elif node is not None:
            out.append(f"{prefix}{name}")
    return out


def _vector_items(data_type: DataType, key: str, width: int, joints: int | None) -> list[str]:
    if data_type.item_width > 1:
        return [f"{key.rsplit('/', 1)[-1]}_{i}" for i in range(width // data_type.item_width)]
    if data_type in (DataType.JOINT_POSITIONS, DataType.JOINT_VELOCITIES, DataType.JOINT_TORQUES) or (
        data_type == DataType.JOINT_TARGET_POSITIONS and width == joints
    ):
        return [f"joint_{i}" for i in range(width)]
    stem = "action" if key.endswith(("action", "actions")) else key.rsplit("/", 1)[-1]
    return [f"{stem}_{i}" for i in range(width)]


def _fields(group: Any, defaults: dict[str, DataType], options: ImportOptions, where: str) -> list[Field]:
    """Fields of one episode group: defaults for the layout, overridden by `--map`."""
    keys = _keys(group, where)
    check_mapping_keys(options.mapping, keys, where)
    chosen = {**defaults, **options.mapping}
    qpos = _dataset(group, "observations/qpos", where).shape[-1] if "observations/qpos" in keys else None
    fields: list[Field] = []
    for key in keys:
        dt = chosen.get(key)
        if dt is None:
            continue
        shape = list(_dataset(group, key, where).shape[1:])
        if dt.modality == Modality.VECTOR:
            width = math.prod(shape)
            if not 0 < width <= MAX_VECTOR_WIDTH:
                raise DatasetError(f"{where}: {key!r} has {width} values per frame; expected 1..{MAX_VECTOR_WIDTH}")
            if width % dt.item_width:
                raise DatasetError(f"{where}: {key!r} has {width} values per frame, not a multiple of "
                                   f"{dt.item_width} for {dt.value}")
            fields.append(Field(key, dt, _vector_items(dt, key, width, qpos)))
        elif dt.modality == Modality.IMAGE:
            if len(shape) == 2:
                shape = [*shape, 1]
            if len(shape) != 3 or min(shape) == 0:
                raise DatasetError(f"{where}: {key!r} has frames of shape {shape}, expected [H, W, C] images")
            fields.append(Field(key, dt, [key.rsplit("/", 1)[-1].removesuffix("_image").removesuffix("_depth")],
                                shape))
        else:
            raise DatasetError(f"{where}: {key!r} cannot be imported as {dt.value}")
    return fields


def _act_defaults(group: Any, where: str) -> dict[str, DataType]:
    out = {k: v for k, v in _ACT_KEYS.items() if _has(group, k, where)}
    images = _node(group, "observations/images", where)
    if images is not None and hasattr(images, "keys"):
        for cam in images:
            out[f"observations/images/{cam}"] = DataType.RGB_IMAGES
    return out


def _group_keys(group: Any, key: str, where: str) -> list[str]:
    node = _node(group, key, where)
    return list(node) if node is not None and hasattr(node, "keys") else []


def _robomimic_defaults(group: Any, where: str) -> dict[str, DataType]:
    out: dict[str, DataType] = {}
    for key in _group_keys(group, "obs", where):
        if key.endswith("_image"):
            dt = DataType.RGB_IMAGES
        elif key.endswith("_depth"):
            dt = DataType.DEPTH_IMAGES
        elif key.endswith("_joint_pos"):
            dt = DataType.JOINT_POSITIONS
        elif key.endswith("_joint_vel"):
            dt = DataType.JOINT_VELOCITIES
        elif key.endswith("_gripper_qpos"):
            dt = DataType.PARALLEL_GRIPPER_OPEN_AMOUNTS
        elif key.endswith(("_eef_pos", "_eef_quat")):
            continue  # joined into one END_EFFECTOR_POSES item below
        else:
            dt = DataType.CUSTOM_1D
        out[f"obs/{key}"] = dt
    if _has(group, "actions", where):
        out["actions"] = DataType.JOINT_TARGET_POSITIONS
    return out


def _eef_pairs(group: Any, where: str) -> list[str]:
    """robomimic prefixes with both `<p>eef_pos` and `<p>eef_quat` observations."""
    obs = _group_keys(group, "obs", where)
    return [k[: -len("eef_pos")] for k in obs if k.endswith("eef_pos") and f"{k[:-3]}quat" in obs]


def _load(path: str, group_path: str, robot: str, fields: list[Field], eef: list[str], language: str | None,
          where: str) -> Episode:
    """Read one episode (an ACT file or a robomimic demo group); runs in a worker process."""
    with _open(Path(path)) as f:
        group = _node(f, group_path, where) if group_path else f
        if group is None or not hasattr(group, "keys"):
            raise DatasetError(f"{where}: group {group_path!r} missing")
        arrays: dict[str, np.ndarray] = {}
        joined = {f"obs/{p}eef" for p in eef}
        for fld in fields:
            if fld.key in joined:
                continue
            if not _has(group, fld.key, where):
                raise DatasetError(f"{where}: {fld.data_type.value} {fld.key!r} is missing")
            arrays[fld.key] = _read(group, fld.key, where)
        for prefix in eef:
            pos = _read(group, f"obs/{prefix}eef_pos", where)
            quat = _read(group, f"obs/{prefix}eef_quat", where)
            if len(pos) != len(quat):
                raise DatasetError(f"{where}: obs/{prefix}eef_pos and eef_quat have {len(pos)} and {len(quat)} frames")
            arrays[f"obs/{prefix}eef"] = np.concatenate([pos, quat], axis=-1)
    return episode_from_arrays(robot, fields, arrays, language, where)


def _frames(path: str, group_path: str, key: str, where: str) -> int:
    """Frames of one episode from the shape of one of its arrays (metadata only)."""
    with _open(Path(path)) as f:
        group = _node(f, group_path, where) if group_path else f
        if group is None or not hasattr(group, "keys"):
            raise DatasetError(f"{where}: group {group_path!r} missing")
        return int(_dataset(group, key, where).shape[0])


def plan(path: Path, options: ImportOptions) -> ImportPlan:
    """Inspect `path` (a folder of ACT episodes, one ACT episode or a robomimic file)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("episode_*.hdf5"), key=_natural_key) or sorted(
            path.glob("*.hdf5"), key=_natural_key
        )
        if not files:
            raise DatasetError(f"{path}: no episode_*.hdf5 files")
        # A symlinked episode file must not lead out of the source folder.
        files = [check_confined(path, p, where=p.name) for p in files]
        style = "act"
    elif path.is_file():
        files = [path]
        with _open(path) as f:
            data = _node(f, "data", str(path))
            style = "robomimic" if data is not None and hasattr(data, "keys") else "act"
    else:
        raise DatasetError(f"{path}: no such file or folder")

    with _open(files[0]) as f:
        if style == "act":
            defaults = _act_defaults(f, str(files[0]))
            fields = _fields(f, defaults, options, str(files[0]))
            eef: list[str] = []
            attrs_language = None
            demos: list[tuple[str, str, str]] = [(str(p), "", p.name) for p in files]
            frequency = options.frequency or ACT_FREQUENCY
        else:
            names = sorted((k for k in f["data"] if k.startswith("demo")), key=_natural_key)
            if not names:
                raise DatasetError(f"{path}: no data/demo_<i> groups")
            where = f"{path}:data/{names[0]}"
            first = _node(f, f"data/{names[0]}", where)
            if first is None or not hasattr(first, "keys"):
                raise DatasetError(f"{where}: not a group")
            defaults = _robomimic_defaults(first, where)
            fields = _fields(first, defaults, options, where)
            eef = [p for p in _eef_pairs(first, where) if f"obs/{p}eef_pos" not in options.mapping]
            fields += [Field(f"obs/{p}eef", DataType.END_EFFECTOR_POSES, [f"{p}eef"]) for p in eef]
            attrs_language = f["data"].attrs.get("language")
            if isinstance(attrs_language, bytes):
                attrs_language = attrs_language.decode("utf-8", "replace")
            if attrs_language is not None and not isinstance(attrs_language, str):
                raise DatasetError(f"{path}: data attribute 'language' must be a string, got {attrs_language!r}")
            demos = [(str(path), f"data/{n}", f"{path.name}:data/{n}") for n in names]
            frequency = options.frequency or ROBOMIMIC_FREQUENCY
    if not fields:
        raise DatasetError(f"{files[0]}: nothing to import (no known keys; use --map)")
    language = options.language or (str(attrs_language) if attrs_language else None)
    robot = default_robot(options, None)
    layout = build_layout(robot, fields, language is not None)
    joined = {f"obs/{p}eef" for p in eef}  # pos + quat joined on load: not a key of the file
    sources = [
        EpisodeSource(label, functools.partial(_load, p, g, robot, fields, eef, language, label),
                      functools.partial(_frames, p, g, next(f.key for f in fields if f.key not in joined), label))
        for p, g, label in demos
    ]
    return ImportPlan(layout, sources, frequency, {"kind": "hdf5", "style": style, "path": str(path.resolve())})

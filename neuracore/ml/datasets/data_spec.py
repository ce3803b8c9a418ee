"""Resolve `input/output_data_types` or `input/output_robot_data_spec` against a dataset."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.model_init import FeatureSpec
from neuracore.ml.datasets.format import DatasetSpec, column_name

RobotDataSpec = dict[str, dict[DataType, list[str]]]


@dataclass
class ResolvedFeature:
    """A DataType of the model's inputs or outputs, located in the Arrow table."""

    data_type: DataType
    items: list[str]  # model order (union over the selected robots)
    columns: list[str]  # vector: [the DataType column]; images: one column per camera
    value_index: np.ndarray  # vector: positions in the column's flat row; images: unused
    robot_masks: dict[str, np.ndarray]  # robot -> [D] (vectors) or [N_cam] (images) float32 0/1
    item_shape: list[int]

    def feature_spec(self, spec: DatasetSpec) -> FeatureSpec:
        """The `FeatureSpec` (with statistics in model order) an algorithm is built from."""
        stats_by_item = spec.statistics.get(self.data_type.value, {})
        stats: dict[str, list[float]] = {}
        if self.data_type.modality in (Modality.VECTOR, Modality.IMAGE) and stats_by_item:
            for key in ("mean", "std", "min", "max", "q01", "q99"):
                if self.data_type.modality == Modality.VECTOR:
                    stats[key] = [v for item in self.items for v in stats_by_item[item][key]]
                else:  # images: per-channel stats averaged over cameras
                    per_cam = np.array([stats_by_item[c][key] for c in self.items if c in stats_by_item])
                    stats[key] = per_cam.mean(0).tolist()
        if self.data_type.modality == Modality.IMAGE:
            h, w, c = self.item_shape
            shape = [c, h, w]
        else:
            shape = list(self.item_shape)
        return FeatureSpec(self.data_type, list(self.items), shape, stats)


def _robot_spec_from_config(value: Any, key: str) -> RobotDataSpec:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping {{robot: {{DATA_TYPE: [items]}}}}, got {value!r}")
    out: RobotDataSpec = {}
    for robot, per_type in value.items():
        if per_type is None:
            per_type = {}
        if not isinstance(per_type, Mapping):
            raise ConfigError(f"{key}.{robot}: expected a mapping {{DATA_TYPE: [items]}}, got {per_type!r}")
        out[str(robot)] = {
            DataType.parse(dt, f"{key}.{robot}"): [str(i) for i in (items or [])] for dt, items in per_type.items()
        }
    return out


def _by_type(
    spec: DatasetSpec, data_types: Iterable[DataType] | None, robot_spec: RobotDataSpec | None, key: str
) -> dict[DataType, dict[str, list[str]]]:
    """DataType -> robot -> items, validated against the dataset."""
    selected: dict[DataType, dict[str, list[str]]] = {}
    if robot_spec:
        for robot, per_type in robot_spec.items():
            if robot not in spec.robots:
                raise ConfigError(f"{key}: robot {robot!r} not in dataset {spec.name!r}; robots: {', '.join(spec.robots)}")
            available = spec.robots[robot]
            for dt, items in (per_type or {dt: [] for dt in map(DataType.parse, available)}).items():
                if dt.value not in available:
                    raise ConfigError(
                        f"{key}.{robot}: data type {dt.value} not recorded for robot {robot!r}; "
                        f"available: {', '.join(available)}"
                    )
                have = available[dt.value]
                missing = [i for i in items if i not in have]
                if missing:
                    raise ConfigError(
                        f"{key}.{robot}.{dt.value}: {', '.join(map(repr, missing))} not in dataset "
                        f"{spec.name!r}; available: {', '.join(have)}"
                    )
                selected.setdefault(dt, {})[robot] = list(items) or list(have)
    else:
        for dt in data_types or []:
            robots = {r: d[dt.value] for r, d in spec.robots.items() if dt.value in d}
            if not robots:
                present = sorted({t for d in spec.robots.values() for t in d})
                raise ConfigError(
                    f"{key}: data type {dt.value} not in dataset {spec.name!r}; available: {', '.join(present)}"
                )
            selected[dt] = robots
    return selected


def resolve_features(
    spec: DatasetSpec,
    data_types: Iterable[str | DataType] | None,
    robot_spec: Any,
    key: str,
) -> dict[DataType, ResolvedFeature]:
    """Resolve one side (inputs or outputs) of the data spec to table columns and item masks."""
    types = [DataType.parse(d, key) for d in (data_types or [])]
    if robot_spec:  # errors name the key the user actually set
        key = key.replace("data_types", "robot_data_spec")
    parsed = _robot_spec_from_config(robot_spec, key) if robot_spec else None
    by_type = _by_type(spec, types, parsed, key)
    resolved: dict[DataType, ResolvedFeature] = {}
    for dt, per_robot in by_type.items():
        items: list[str] = []
        for robot_items in per_robot.values():
            items.extend(i for i in robot_items if i not in items)
        if dt.modality == Modality.LANGUAGE:
            resolved[dt] = ResolvedFeature(dt, items, [], np.zeros(0, np.int64), {}, [])
            continue
        if dt.modality == Modality.VECTOR:
            col = spec.columns[column_name(dt)]
            width = dt.item_width
            index = np.array([col.items.index(i) * width + k for i in items for k in range(width)], np.int64)
            masks = {
                r: np.repeat(np.array([i in per_robot.get(r, []) for i in items], np.float32), width)
                for r in spec.robots
            }
            resolved[dt] = ResolvedFeature(dt, items, [column_name(dt)], index, masks, [width])
        else:
            shapes = {tuple(spec.columns[column_name(dt, c)].item_shape) for c in items}
            if len(shapes) != 1:
                raise ConfigError(f"{key}: cameras of {dt.value} have different shapes {sorted(shapes)}; resize on import")
            masks = {r: np.array([c in per_robot.get(r, []) for c in items], np.float32) for r in spec.robots}
            resolved[dt] = ResolvedFeature(
                dt, items, [column_name(dt, c) for c in items], np.zeros(0, np.int64), masks, list(shapes.pop())
            )
    return resolved


def _everything(spec: DatasetSpec, robot_spec: Any) -> Any:
    """`{}` means every robot with every data type and item."""
    if robot_spec is not None and len(robot_spec) == 0:
        return {robot: {dt: [] for dt in types} for robot, types in spec.robots.items()}
    return robot_spec


def resolve_model_data_spec(
    spec: DatasetSpec,
    algorithm: type,
    input_data_types: list[str] | None,
    output_data_types: list[str] | None,
    input_robot_data_spec: Any,
    output_robot_data_spec: Any,
) -> tuple[dict[DataType, ResolvedFeature], dict[DataType, ResolvedFeature]]:
    """Resolve both sides for `algorithm`, using its default types where the config gives none.

    Requested types the algorithm does not support are a one-line error naming what it supports.
    """
    available = {dt for robot in spec.robots.values() for dt in robot}
    name = getattr(algorithm, "algorithm_name", "") or algorithm.__name__
    sides = []
    for key, types, robot_spec, defaults in (
        ("input_data_types", input_data_types, input_robot_data_spec, "default_input_data_types"),
        ("output_data_types", output_data_types, output_robot_data_spec, "default_output_data_types"),
    ):
        if not types and robot_spec is None:
            types = [dt.value for dt in getattr(algorithm, defaults, ()) if dt.value in available]
            if not types:
                wanted = ", ".join(dt.value for dt in getattr(algorithm, defaults, ())) or "none"
                raise ConfigError(f"{key}: none given and dataset {spec.name!r} has none of {name}'s defaults ({wanted})")
        resolved = resolve_features(spec, types, _everything(spec, robot_spec), key)
        supported = getattr(algorithm, "supported_" + key, frozenset())
        bad = [dt.value for dt in resolved if dt not in supported]
        if bad:
            shown = key if robot_spec is None else key.replace("data_types", "robot_data_spec")
            raise ConfigError(
                f"{shown}: {name} does not support {', '.join(bad)}; it supports "
                f"{', '.join(sorted(d.value for d in supported))}"
            )
        sides.append(resolved)
    return sides[0], sides[1]

"""What an algorithm is built from: the resolved data spec and the dataset statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.relative_actions import RelativePair, pairs_from_json, pairs_to_json


@dataclass
class FeatureSpec:
    """One DataType of a model's inputs or outputs: ordered items, per-item shape, statistics.

    For vectors `shape` is `[width]` and the batch tensor is `[B, T, len(items) * width]`;
    for images `shape` is `[C, H, W]` and the batch tensor is `[B, T, len(items), C, H, W]`.
    `stats` maps mean/std/min/max/q01/q99 to flat lists (per value for vectors, per channel
    for images, in 0-1 units for uint8 images).
    """

    data_type: DataType
    items: list[str]
    shape: list[int]
    stats: dict[str, list[float]] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Width of the last axis of a vector batch tensor."""
        return len(self.items) * self.shape[0] if self.data_type.modality == Modality.VECTOR else 0

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        out = asdict(self)
        out["data_type"] = self.data_type.value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSpec:
        """Inverse of `to_json`."""
        return cls(
            data_type=DataType.parse(data["data_type"]),
            items=list(data["items"]),
            shape=[int(s) for s in data["shape"]],
            stats={k: [float(x) for x in v] for k, v in data.get("stats", {}).items()},
        )


@dataclass
class ModelInitDescription:
    """Everything an algorithm needs to build itself, and everything export needs to rebuild it."""

    inputs: dict[DataType, FeatureSpec]
    outputs: dict[DataType, FeatureSpec]
    output_prediction_horizon: int
    frequency: float = 10.0
    default_language: str | None = None
    # Output items learnt and predicted as deltas to an input (core/relative_actions.py); [] = absolute.
    relative_actions: list[RelativePair] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form (goes into an exported config.json)."""
        out = {
            "inputs": {dt.value: f.to_json() for dt, f in self.inputs.items()},
            "outputs": {dt.value: f.to_json() for dt, f in self.outputs.items()},
            "output_prediction_horizon": self.output_prediction_horizon,
            "frequency": self.frequency,
            "default_language": self.default_language,
        }
        if self.relative_actions:  # absent = absolute outputs (so exports without it read as before)
            out["relative_actions"] = pairs_to_json(self.relative_actions)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInitDescription:
        """Inverse of `to_json`."""
        inputs = {DataType.parse(k): FeatureSpec.from_json(v) for k, v in data["inputs"].items()}
        outputs = {DataType.parse(k): FeatureSpec.from_json(v) for k, v in data["outputs"].items()}
        relative = data.get("relative_actions") or {}
        return cls(
            inputs=inputs,
            outputs=outputs,
            output_prediction_horizon=int(data["output_prediction_horizon"]),
            frequency=float(data.get("frequency", 10.0)),
            default_language=data.get("default_language"),
            relative_actions=pairs_from_json(relative, {dt: f.items for dt, f in outputs.items()},
                                             {dt: f.items for dt, f in inputs.items()}),
        )

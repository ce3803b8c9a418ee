"""The 14 data types a robot recording can hold, and how each is stored."""

from __future__ import annotations

import enum


class Modality(str, enum.Enum):
    """How values of a data type are shaped."""

    VECTOR = "vector"  # each item is `width` floats (a joint angle, a pose)
    IMAGE = "image"  # each item is a camera: [H, W, C] uint8 (RGB) or [H, W, 1] float (depth)
    POINT_CLOUD = "point_cloud"  # each item is a sensor: [N, 3] float
    LANGUAGE = "language"  # one instruction string per episode


class DataType(str, enum.Enum):
    """A kind of robot data; the value is the name used in configs, Arrow columns and exports."""

    JOINT_POSITIONS = "JOINT_POSITIONS"
    JOINT_VELOCITIES = "JOINT_VELOCITIES"
    JOINT_TORQUES = "JOINT_TORQUES"
    JOINT_TARGET_POSITIONS = "JOINT_TARGET_POSITIONS"
    VISUAL_JOINT_POSITIONS = "VISUAL_JOINT_POSITIONS"
    END_EFFECTOR_POSES = "END_EFFECTOR_POSES"
    PARALLEL_GRIPPER_OPEN_AMOUNTS = "PARALLEL_GRIPPER_OPEN_AMOUNTS"
    PARALLEL_GRIPPER_TARGET_OPEN_AMOUNTS = "PARALLEL_GRIPPER_TARGET_OPEN_AMOUNTS"
    RGB_IMAGES = "RGB_IMAGES"
    DEPTH_IMAGES = "DEPTH_IMAGES"
    POINT_CLOUDS = "POINT_CLOUDS"
    POSES = "POSES"
    LANGUAGE = "LANGUAGE"
    CUSTOM_1D = "CUSTOM_1D"

    @property
    def modality(self) -> Modality:
        """Storage shape family of this data type."""
        return _MODALITY.get(self, Modality.VECTOR)

    @property
    def item_width(self) -> int:
        """Floats per item for vector types (7 for xyz + quaternion poses, else 1)."""
        return 7 if self in (DataType.END_EFFECTOR_POSES, DataType.POSES) else 1

    @classmethod
    def parse(cls, value: str | DataType, key: str = "data type") -> DataType:
        """Parse a name (case-insensitive), raising a one-line error listing valid names."""
        from neuracore.ml.core.errors import ConfigError

        if isinstance(value, DataType):
            return value
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            valid = ", ".join(d.value for d in cls)
            raise ConfigError(f"{key}: unknown data type {value!r}; valid: {valid}") from None


_MODALITY = {
    DataType.RGB_IMAGES: Modality.IMAGE,
    DataType.DEPTH_IMAGES: Modality.IMAGE,
    DataType.POINT_CLOUDS: Modality.POINT_CLOUD,
    DataType.LANGUAGE: Modality.LANGUAGE,
}

# Proprioceptive vector types an algorithm can take as its state input.
STATE_LIKE = frozenset(
    {
        DataType.JOINT_POSITIONS,
        DataType.JOINT_VELOCITIES,
        DataType.JOINT_TORQUES,
        DataType.JOINT_TARGET_POSITIONS,
        DataType.END_EFFECTOR_POSES,
        DataType.PARALLEL_GRIPPER_OPEN_AMOUNTS,
        DataType.CUSTOM_1D,
    }
)

# Types that describe what the robot should do next (what an algorithm can predict).
ACTION_LIKE = frozenset(
    {
        DataType.JOINT_TARGET_POSITIONS,
        DataType.JOINT_POSITIONS,
        DataType.JOINT_VELOCITIES,
        DataType.PARALLEL_GRIPPER_TARGET_OPEN_AMOUNTS,
        DataType.PARALLEL_GRIPPER_OPEN_AMOUNTS,
        DataType.END_EFFECTOR_POSES,
        DataType.CUSTOM_1D,
    }
)

"""DataType: the 14 names, parsing with one-line errors, modality and item width."""

from __future__ import annotations

import pytest

from neuracore.ml.core.data_types import ACTION_LIKE, DataType, Modality
from neuracore.ml.core.errors import ConfigError, NeuracoreError

ALL_NAMES = [
    "JOINT_POSITIONS",
    "JOINT_VELOCITIES",
    "JOINT_TORQUES",
    "JOINT_TARGET_POSITIONS",
    "VISUAL_JOINT_POSITIONS",
    "END_EFFECTOR_POSES",
    "PARALLEL_GRIPPER_OPEN_AMOUNTS",
    "PARALLEL_GRIPPER_TARGET_OPEN_AMOUNTS",
    "RGB_IMAGES",
    "DEPTH_IMAGES",
    "POINT_CLOUDS",
    "POSES",
    "LANGUAGE",
    "CUSTOM_1D",
]


def test_all_fourteen_types_present_with_value_equal_to_name() -> None:
    assert len(DataType) == 14
    assert sorted(d.value for d in DataType) == sorted(ALL_NAMES)
    for d in DataType:
        assert d.name == d.value
        # str-enum: usable directly as a config string / column name
        assert d == d.value


@pytest.mark.parametrize("name", ALL_NAMES)
def test_parse_exact_name(name: str) -> None:
    assert DataType.parse(name) is DataType[name]


@pytest.mark.parametrize("raw, expected", [
    ("joint_positions", DataType.JOINT_POSITIONS),
    ("Rgb_Images", DataType.RGB_IMAGES),
    ("  custom_1d  ", DataType.CUSTOM_1D),
    (DataType.POSES, DataType.POSES),
])
def test_parse_is_case_insensitive_and_strips(raw: object, expected: DataType) -> None:
    assert DataType.parse(raw) is expected


def test_parse_unknown_names_every_valid_value_in_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        DataType.parse("JOINT_POSITION")
    msg = str(info.value)
    assert "\n" not in msg
    assert "'JOINT_POSITION'" in msg
    assert msg.startswith("data type:")
    for name in ALL_NAMES:
        assert name in msg
    assert isinstance(info.value, NeuracoreError)


def test_parse_error_uses_given_key() -> None:
    with pytest.raises(ConfigError, match=r"^input_data_types: unknown data type 'bogus'; valid: JOINT_POSITIONS, "):
        DataType.parse("bogus", key="input_data_types")


def test_parse_error_has_no_chained_keyerror() -> None:
    with pytest.raises(ConfigError) as info:
        DataType.parse("nope")
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize("dt, modality", [
    (DataType.RGB_IMAGES, Modality.IMAGE),
    (DataType.DEPTH_IMAGES, Modality.IMAGE),
    (DataType.POINT_CLOUDS, Modality.POINT_CLOUD),
    (DataType.LANGUAGE, Modality.LANGUAGE),
    (DataType.JOINT_POSITIONS, Modality.VECTOR),
    (DataType.END_EFFECTOR_POSES, Modality.VECTOR),
    (DataType.POSES, Modality.VECTOR),
    (DataType.CUSTOM_1D, Modality.VECTOR),
    (DataType.PARALLEL_GRIPPER_OPEN_AMOUNTS, Modality.VECTOR),
])
def test_modality(dt: DataType, modality: Modality) -> None:
    assert dt.modality is modality


def test_exactly_ten_vector_types() -> None:
    vectors = {d for d in DataType if d.modality == Modality.VECTOR}
    assert len(vectors) == 10
    assert {DataType.RGB_IMAGES, DataType.DEPTH_IMAGES, DataType.POINT_CLOUDS, DataType.LANGUAGE}.isdisjoint(vectors)


def test_item_width_seven_for_poses_one_otherwise() -> None:
    assert DataType.END_EFFECTOR_POSES.item_width == 7
    assert DataType.POSES.item_width == 7
    for d in DataType:
        if d not in (DataType.END_EFFECTOR_POSES, DataType.POSES):
            assert d.item_width == 1, d


def test_action_like_are_vector_types() -> None:
    assert DataType.JOINT_TARGET_POSITIONS in ACTION_LIKE
    assert all(d.modality == Modality.VECTOR for d in ACTION_LIKE)
    assert len(set(ACTION_LIKE)) == len(ACTION_LIKE)

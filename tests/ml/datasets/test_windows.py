"""Episode splits, data-spec resolution and training windows over a materialised dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from neuracore.ml.algorithms.cnnmlp import CNNMLP
from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.datasets.data_spec import resolve_features, resolve_model_data_spec
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, materialize
from neuracore.ml.datasets.windows import WindowDataset, split_episodes

JP = DataType.JOINT_POSITIONS
JT = DataType.JOINT_TARGET_POSITIONS
RGB = DataType.RGB_IMAGES
DEPTH = DataType.DEPTH_IMAGES
LANG = DataType.LANGUAGE
H, W = 4, 6

ALPHA_JOINTS = ["s", "e", "g"]
BETA_JOINTS = ["e", "w"]
UNION = ["s", "e", "g", "w"]
# (robot, length) per episode
EPISODES = [("alpha", 6), ("beta", 4), ("alpha", 5)]


def _value(ep: int, t: int, item: str, target: bool = False) -> float:
    """Distinct, float32-exact values: episode, frame and item can be read back from a number."""
    v = 1000.0 * ep + 10.0 * t + UNION.index(item) + 0.5
    return -v if target else v


def _images(ep: int, length: int, cam: str) -> np.ndarray:
    rng = np.random.default_rng(100 * ep + len(cam))
    return rng.integers(1, 256, size=(length, H, W, 3), dtype=np.uint8)


def _layout() -> DatasetLayout:
    return DatasetLayout(
        robots={
            "alpha": {JP: ALPHA_JOINTS, JT: ALPHA_JOINTS, RGB: ["top", "side"], DEPTH: ["depth"], LANG: ["instruction"]},
            "beta": {JP: BETA_JOINTS, JT: BETA_JOINTS, RGB: ["top"]},
        },
        item_shapes={RGB: {"top": [H, W, 3], "side": [H, W, 3]}, DEPTH: {"depth": [H, W, 1]}},
    )


def _episode(ep: int, robot: str, length: int) -> Episode:
    joints = ALPHA_JOINTS if robot == "alpha" else BETA_JOINTS
    cams = ["top", "side"] if robot == "alpha" else ["top"]
    data = {
        JP: {j: np.array([_value(ep, t, j) for t in range(length)]) for j in joints},
        JT: {j: np.array([_value(ep, t, j, target=True) for t in range(length)]) for j in joints},
        RGB: {c: _images(ep, length, c) for c in cams},
    }
    if robot == "alpha":
        data[DEPTH] = {"depth": np.full((length, H, W, 1), 0.25, np.float32)}
    return Episode(robot, data, language=f"alpha task {ep}" if robot == "alpha" else None)


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("windows_root")
    episodes = (_episode(i, r, n) for i, (r, n) in enumerate(EPISODES))
    materialize("win", episodes, _layout(), 10.0, root=root)
    return open_dataset("win", root=root)


# --- split_episodes ---------------------------------------------------------------------------


def test_split_is_by_episode_disjoint_and_complete() -> None:
    train, val = split_episodes(20, 0.2, seed=3)
    assert len(val) == 4 and len(train) == 16
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == list(range(20))
    assert train == sorted(train) and val == sorted(val)


def test_split_deterministic_per_seed() -> None:
    assert split_episodes(50, 0.1, seed=7) == split_episodes(50, 0.1, seed=7)
    vals = {tuple(split_episodes(50, 0.1, seed=s)[1]) for s in range(6)}
    assert len(vals) > 1  # the seed changes which episodes validate


@pytest.mark.parametrize("n, frac, n_val", [
    (10, 0.0, 0),  # no validation
    (10, 0.01, 1),  # a positive split rounds up to at least one episode
    (10, 0.99, 9),  # but always leaves one for training
    (10, 1.0, 9),
    (3, 0.5, 2),
    (1, 0.5, 0),  # a single episode always trains
    (0, 0.2, 0),
])
def test_split_sizes(n: int, frac: float, n_val: int) -> None:
    train, val = split_episodes(n, frac, seed=0)
    assert len(val) == n_val and len(train) == n - n_val
    assert sorted(train + val) == list(range(n))


# --- resolve_features -------------------------------------------------------------------------


def test_resolve_by_type_unions_items_across_robots(ds) -> None:
    feats = resolve_features(ds.spec, ["joint_positions", RGB], None, "input_data_types")
    assert list(feats) == [JP, RGB]
    jp = feats[JP]
    assert jp.items == UNION and jp.columns == ["JOINT_POSITIONS"]
    assert jp.value_index.tolist() == [0, 1, 2, 3]
    assert jp.robot_masks["alpha"].tolist() == [1, 1, 1, 0]
    assert jp.robot_masks["beta"].tolist() == [0, 1, 0, 1]
    assert jp.robot_masks["beta"].dtype == np.float32
    rgb = feats[RGB]
    assert rgb.items == ["top", "side"] and rgb.columns == ["RGB_IMAGES.top", "RGB_IMAGES.side"]
    assert rgb.item_shape == [H, W, 3]
    assert rgb.robot_masks["alpha"].tolist() == [1, 1] and rgb.robot_masks["beta"].tolist() == [1, 0]


def test_robot_spec_selects_items_in_given_order(ds) -> None:
    spec = {"beta": {"JOINT_POSITIONS": ["w", "e"]}, "alpha": {"joint_positions": ["g", "s"], "RGB_IMAGES": ["side"]}}
    feats = resolve_features(ds.spec, None, spec, "input_data_types")
    jp = feats[JP]
    assert jp.items == ["w", "e", "g", "s"]  # robots in given order, each robot's items in given order
    assert jp.value_index.tolist() == [3, 1, 2, 0]  # positions in the [s, e, g, w] column
    assert jp.robot_masks["beta"].tolist() == [1, 1, 0, 0]
    assert jp.robot_masks["alpha"].tolist() == [0, 0, 1, 1]
    rgb = feats[RGB]
    assert rgb.items == ["side"] and rgb.columns == ["RGB_IMAGES.side"]
    assert rgb.robot_masks["alpha"].tolist() == [1] and rgb.robot_masks["beta"].tolist() == [0]


def test_robot_spec_empty_or_none_items_mean_all_of_that_robot(ds) -> None:
    feats = resolve_features(ds.spec, None, {"beta": {"JOINT_POSITIONS": []}}, "input_data_types")
    assert feats[JP].items == BETA_JOINTS
    assert feats[JP].robot_masks["alpha"].tolist() == [0, 0]
    feats = resolve_features(ds.spec, None, {"beta": {"JOINT_TARGET_POSITIONS": None}}, "output_data_types")
    assert feats[JT].items == BETA_JOINTS
    feats = resolve_features(ds.spec, None, {"beta": None}, "input_data_types")
    assert list(feats) == [JP, JT, RGB]  # every type recorded for beta
    assert feats[RGB].items == ["top"]


def test_robot_spec_ignores_data_types_list(ds) -> None:
    feats = resolve_features(ds.spec, ["RGB_IMAGES"], {"alpha": {"JOINT_POSITIONS": ["e"]}}, "input_data_types")
    assert list(feats) == [JP] and feats[JP].items == ["e"]


def test_pose_width_expands_value_index(tmp_path: Path) -> None:
    layout = DatasetLayout(robots={"r": {DataType.END_EFFECTOR_POSES: ["left", "right"]}})
    data = {DataType.END_EFFECTOR_POSES: {"left": np.zeros((3, 7)), "right": np.ones((3, 7))}}
    materialize("poses", iter([Episode("r", data)]), layout, 10.0, root=tmp_path)
    spec = open_dataset("poses", root=tmp_path).spec
    f = resolve_features(spec, None, {"r": {"END_EFFECTOR_POSES": ["right"]}}, "input_data_types")
    ee = f[DataType.END_EFFECTOR_POSES]
    assert ee.value_index.tolist() == list(range(7, 14))
    assert ee.robot_masks["r"].tolist() == [1.0] * 7
    assert ee.feature_spec(spec).dim == 7


@pytest.mark.parametrize("robot_spec, location, expected", [
    ({"gamma": {"JOINT_POSITIONS": []}}, "",
     "robot 'gamma' not in dataset 'win'; robots: alpha, beta"),
    ({"beta": {"DEPTH_IMAGES": []}}, ".beta",
     ("data type DEPTH_IMAGES not recorded for robot 'beta'; "
     "available: JOINT_POSITIONS, JOINT_TARGET_POSITIONS, RGB_IMAGES")),
    ({"beta": {"JOINT_POSITIONS": ["e", "knee", "s"]}}, ".beta.JOINT_POSITIONS",
     "'knee', 's' not in dataset 'win'; available: e, w"),
    ({"alpha": {"RGB_IMAGES": ["wrist"]}}, ".alpha.RGB_IMAGES",
     "'wrist' not in dataset 'win'; available: top, side"),
])
def test_robot_spec_errors_list_what_exists(ds, robot_spec: dict, location: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_features(ds.spec, None, robot_spec, "input_data_types")
    msg = str(info.value)
    assert "\n" not in msg
    # The key prefix is currently `input_data_types...` even for robot-spec errors (see report);
    # only require that it names the input side and the location inside the spec.
    key, sep, rest = msg.partition(": ")
    assert sep and key.startswith("input_") and key.endswith(location)
    assert rest == expected


def test_robot_spec_unknown_data_type_name(ds) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_features(ds.spec, None, {"alpha": {"JOINT_ANGLES": []}}, "input_data_types")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("input_robot_data_spec.alpha: unknown data type 'JOINT_ANGLES'; valid: ")
    assert "JOINT_POSITIONS" in msg and "CUSTOM_1D" in msg


@pytest.mark.parametrize("bad", [["e"], "alpha", 3])
def test_robot_spec_must_be_mappings(ds, bad) -> None:
    with pytest.raises(ConfigError, match=r"^input_robot_data_spec(\.alpha)?: expected a mapping"):
        resolve_features(ds.spec, None, {"alpha": bad} if bad != 3 else ["alpha"], "input_data_types")


def test_data_type_not_in_dataset(ds) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_features(ds.spec, ["CUSTOM_1D"], None, "output_data_types")
    assert str(info.value) == (
        "output_data_types: data type CUSTOM_1D not in dataset 'win'; available: "
        "DEPTH_IMAGES, JOINT_POSITIONS, JOINT_TARGET_POSITIONS, LANGUAGE, RGB_IMAGES"
    )
    with pytest.raises(ConfigError, match="^output_data_types: unknown data type 'ACTIONS'; valid: "):
        resolve_features(ds.spec, ["ACTIONS"], None, "output_data_types")


def test_cameras_with_different_shapes_rejected(tmp_path: Path) -> None:
    layout = DatasetLayout(robots={"r": {RGB: ["a", "b"]}}, item_shapes={RGB: {"a": [2, 2, 3], "b": [3, 2, 3]}})
    data = {RGB: {"a": np.zeros((2, 2, 2, 3), np.uint8), "b": np.zeros((2, 3, 2, 3), np.uint8)}}
    materialize("shapes", iter([Episode("r", data)]), layout, 10.0, root=tmp_path)
    spec = open_dataset("shapes", root=tmp_path).spec
    with pytest.raises(ConfigError, match="input_data_types: cameras of RGB_IMAGES have different shapes"):
        resolve_features(spec, ["RGB_IMAGES"], None, "input_data_types")
    assert resolve_features(spec, None, {"r": {"RGB_IMAGES": ["b"]}}, "input_data_types")[RGB].item_shape == [3, 2, 3]


def test_feature_spec_stats_in_model_order(ds) -> None:
    feats = resolve_features(ds.spec, None, {"beta": {"JOINT_POSITIONS": ["w", "e"]}}, "input_data_types")
    fs = feats[JP].feature_spec(ds.spec)
    assert fs.data_type is JP and fs.items == ["w", "e"] and fs.shape == [1] and fs.dim == 2
    stats = ds.spec.statistics["JOINT_POSITIONS"]
    for key in ("mean", "std", "min", "max", "q01", "q99"):
        assert fs.stats[key] == stats["w"][key] + stats["e"][key]
    # w only in episode 1 (beta, 4 frames): values 1000 + 10 t + 3.5
    assert fs.stats["min"][0] == 1003.5 and fs.stats["max"][0] == 1033.5
    img = resolve_features(ds.spec, ["RGB_IMAGES"], None, "input_data_types")[RGB].feature_spec(ds.spec)
    assert img.shape == [3, H, W] and img.dim == 0
    rgb_stats = ds.spec.statistics["RGB_IMAGES"]
    expected = (np.array(rgb_stats["top"]["mean"]) + np.array(rgb_stats["side"]["mean"])) / 2
    np.testing.assert_allclose(img.stats["mean"], expected)


# --- resolve_model_data_spec ------------------------------------------------------------------


def test_model_spec_defaults_from_algorithm(ds) -> None:
    inputs, outputs = resolve_model_data_spec(ds.spec, CNNMLP, None, None, None, None)
    assert list(inputs) == [JP, RGB]  # CNNMLP.default_input_data_types
    assert list(outputs) == [JT]
    assert inputs[JP].items == UNION and inputs[RGB].items == ["top", "side"]
    assert outputs[JT].items == UNION
    inputs, outputs = resolve_model_data_spec(ds.spec, CNNMLP, [], [], None, None)
    assert list(inputs) == [JP, RGB] and list(outputs) == [JT]


def test_model_spec_defaults_missing_from_dataset(tmp_path: Path) -> None:
    layout = DatasetLayout(robots={"r": {DataType.CUSTOM_1D: ["x"]}})
    materialize("c1d", iter([Episode("r", {DataType.CUSTOM_1D: {"x": np.zeros(3)}})]), layout, 10.0, root=tmp_path)
    spec = open_dataset("c1d", root=tmp_path).spec
    with pytest.raises(ConfigError) as info:
        resolve_model_data_spec(spec, CNNMLP, None, ["CUSTOM_1D"], None, None)
    assert str(info.value) == ("input_data_types: none given and dataset 'c1d' has none of cnnmlp's defaults "
                               "(JOINT_POSITIONS, RGB_IMAGES)")
    inputs, outputs = resolve_model_data_spec(spec, CNNMLP, ["CUSTOM_1D"], ["CUSTOM_1D"], None, None)
    assert list(inputs) == [DataType.CUSTOM_1D] == list(outputs)


@pytest.mark.parametrize("bad", ["LANGUAGE", "DEPTH_IMAGES"])
def test_model_spec_rejects_unsupported_input(ds, bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_model_data_spec(ds.spec, CNNMLP, ["JOINT_POSITIONS", bad], None, None, None)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg == (f"input_data_types: cnnmlp does not support {bad}; it supports "
                   + ", ".join(sorted(d.value for d in CNNMLP.supported_input_data_types)))


def test_model_spec_rejects_unsupported_output(ds) -> None:
    with pytest.raises(ConfigError, match=r"^output_data_types: cnnmlp does not support RGB_IMAGES; it supports "
                                          r"CUSTOM_1D, END_EFFECTOR_POSES, JOINT_POSITIONS"):
        resolve_model_data_spec(ds.spec, CNNMLP, None, ["RGB_IMAGES"], None, None)


def test_model_spec_robot_spec(ds) -> None:
    inputs, outputs = resolve_model_data_spec(
        ds.spec, CNNMLP, None, None,
        {"alpha": {"JOINT_POSITIONS": ["g"], "RGB_IMAGES": ["side"]}},
        {"beta": {"JOINT_TARGET_POSITIONS": ["w"]}},
    )
    assert inputs[JP].items == ["g"] and inputs[RGB].items == ["side"]
    assert outputs[JT].items == ["w"] and outputs[JT].robot_masks["alpha"].tolist() == [0]


class _Everything:
    """A stand-in algorithm that supports every data type."""

    algorithm_name = "everything"
    supported_input_data_types = frozenset(DataType)
    supported_output_data_types = frozenset(DataType)
    default_input_data_types = (JP,)
    default_output_data_types = (JT,)


def test_empty_robot_spec_means_everything(ds) -> None:
    inputs, outputs = resolve_model_data_spec(ds.spec, _Everything, None, None, {}, {})
    assert set(inputs) == {JP, JT, RGB, DEPTH, LANG} == set(outputs)
    assert inputs[JP].items == UNION
    assert inputs[RGB].items == ["top", "side"]
    assert inputs[JP].robot_masks["beta"].tolist() == [0, 1, 0, 1]
    assert inputs[DEPTH].robot_masks["beta"].tolist() == [0]
    # `{}` takes precedence over a data-type list
    inputs, _ = resolve_model_data_spec(ds.spec, _Everything, ["JOINT_POSITIONS"], None, {}, None)
    assert set(inputs) == {JP, JT, RGB, DEPTH, LANG}


def test_empty_robot_spec_with_cnnmlp_names_unsupported(ds) -> None:
    with pytest.raises(ConfigError, match="^input_robot_data_spec: cnnmlp does not support DEPTH_IMAGES, LANGUAGE; "):
        resolve_model_data_spec(ds.spec, CNNMLP, None, None, {}, None)


# --- WindowDataset ----------------------------------------------------------------------------


def _windows(ds, episodes=(0, 1, 2), history: int = 1, horizon: int = 3, inputs=None, outputs=None, **kw):
    ins = resolve_features(ds.spec, inputs or ["JOINT_POSITIONS", "RGB_IMAGES"], None, "input_data_types")
    outs = resolve_features(ds.spec, outputs or ["JOINT_TARGET_POSITIONS"], None, "output_data_types")
    return WindowDataset(ds, ins, outs, list(episodes), history, horizon, **kw)


def _expected_vec(ep: int, steps, target: bool = False) -> np.ndarray:
    robot = EPISODES[ep][0]
    joints = ALPHA_JOINTS if robot == "alpha" else BETA_JOINTS
    return np.array([[_value(ep, t, j, target) if j in joints else 0.0 for j in UNION] for t in steps], np.float32)


def test_length_and_index_mapping(ds) -> None:
    w = _windows(ds)
    assert len(w) == 6 + 4 + 5
    w = _windows(ds, episodes=[2, 1])
    assert len(w) == 5 + 4
    first = w[0][keys.INPUTS]["JOINT_POSITIONS"]
    np.testing.assert_array_equal(first, _expected_vec(2, [0]))
    np.testing.assert_array_equal(w[5][keys.INPUTS]["JOINT_POSITIONS"], _expected_vec(1, [0]))
    assert len(_windows(ds, episodes=[])) == 0


@pytest.mark.parametrize("history, horizon", [(1, 1), (1, 4), (3, 2), (4, 8)])
def test_window_values_match_source_for_every_frame(ds, history: int, horizon: int) -> None:
    w = _windows(ds, history=history, horizon=horizon)
    index = 0
    for ep, (robot, length) in enumerate(EPISODES):
        for t in range(length):
            sample = w[index]
            index += 1
            in_steps = [min(max(s, 0), length - 1) for s in range(t - history + 1, t + 1)]
            out_steps = [min(s, length - 1) for s in range(t, t + horizon)]
            x = sample[keys.INPUTS]["JOINT_POSITIONS"]
            y = sample[keys.OUTPUTS]["JOINT_TARGET_POSITIONS"]
            assert x.shape == (history, 4) and x.dtype == np.float32
            assert y.shape == (horizon, 4) and y.dtype == np.float32
            np.testing.assert_array_equal(x, _expected_vec(ep, in_steps))
            np.testing.assert_array_equal(y, _expected_vec(ep, out_steps, target=True))
            pad = sample[keys.IS_PAD]
            assert pad.dtype == bool and pad.shape == (horizon,)
            assert pad.tolist() == [s >= length for s in range(t, t + horizon)]
            masks = sample[keys.INPUT_MASKS]["JOINT_POSITIONS"].tolist()
            assert masks == ([1, 1, 1, 0] if robot == "alpha" else [0, 1, 0, 1])
            assert sample[keys.OUTPUT_MASKS]["JOINT_TARGET_POSITIONS"].tolist() == masks
    assert index == len(w)


def test_history_clamped_at_episode_start_and_horizon_at_end(ds) -> None:
    w = _windows(ds, episodes=[1], history=3, horizon=4)  # beta, 4 frames
    s0 = w[0]
    np.testing.assert_array_equal(s0[keys.INPUTS]["JOINT_POSITIONS"][:, 1], [1001.5] * 3)  # frame 0 thrice
    last = w[3]
    np.testing.assert_array_equal(last[keys.INPUTS]["JOINT_POSITIONS"][:, 3], [1013.5, 1023.5, 1033.5])
    # outputs repeat the last frame past the end, flagged as padding
    np.testing.assert_array_equal(last[keys.OUTPUTS]["JOINT_TARGET_POSITIONS"][:, 3], [-1033.5] * 4)
    assert last[keys.IS_PAD].tolist() == [False, True, True, True]
    assert w[1][keys.IS_PAD].tolist() == [False, False, False, True]
    assert not w[0][keys.IS_PAD].any()


def test_windows_never_cross_episode_boundaries(ds) -> None:
    w = _windows(ds, history=4, horizon=10)
    for i in range(len(w)):
        sample = w[i]
        for arr in (sample[keys.INPUTS]["JOINT_POSITIONS"], -sample[keys.OUTPUTS]["JOINT_TARGET_POSITIONS"]):
            episodes = {int(v // 1000) for v in arr[:, 1]}  # item 'e' is recorded by every robot
            assert len(episodes) == 1


def test_images_shape_dtype_and_values(ds) -> None:
    w = _windows(ds, history=2)
    for index, (ep, t) in {0: (0, 0), 3: (0, 3), 7: (1, 1), 14: (2, 4)}.items():
        sample = w[index]
        imgs = sample[keys.INPUTS]["RGB_IMAGES"]
        assert imgs.shape == (2, 2, 3, H, W) and imgs.dtype == np.uint8  # [T, N_cam, C, H, W]
        robot, length = EPISODES[ep]
        steps = [max(t - 1, 0), t]
        for c, cam in enumerate(["top", "side"]):
            if robot == "beta" and cam == "side":
                assert not imgs[:, c].any()  # beta has no side camera: zero padding
                continue
            source = _images(ep, length, cam)
            for k, s in enumerate(steps):
                np.testing.assert_array_equal(imgs[k, c], source[s].transpose(2, 0, 1))
        expected_mask = [1, 1] if robot == "alpha" else [1, 0]
        assert sample[keys.INPUT_MASKS]["RGB_IMAGES"].tolist() == expected_mask


def test_depth_images_are_float(ds) -> None:
    ins = resolve_features(ds.spec, ["DEPTH_IMAGES"], None, "input_data_types")
    outs = resolve_features(ds.spec, ["JOINT_POSITIONS"], None, "output_data_types")
    w = WindowDataset(ds, ins, outs, [0, 1], 1, 2)
    d = w[0][keys.INPUTS]["DEPTH_IMAGES"]
    assert d.shape == (1, 1, 1, H, W) and d.dtype == np.float32
    assert np.all(d == 0.25)
    assert w[0][keys.INPUT_MASKS]["DEPTH_IMAGES"].tolist() == [1]
    assert not w[6][keys.INPUTS]["DEPTH_IMAGES"].any()
    assert w[6][keys.INPUT_MASKS]["DEPTH_IMAGES"].tolist() == [0]


def test_robot_spec_window_item_order(ds) -> None:
    ins = resolve_features(ds.spec, None, {"alpha": {"JOINT_POSITIONS": ["g", "s"]}}, "input_data_types")
    outs = resolve_features(ds.spec, None, {"beta": {"JOINT_TARGET_POSITIONS": ["w"]}}, "output_data_types")
    w = WindowDataset(ds, ins, outs, [0, 1], 1, 2)
    sample = w[2]  # episode 0, frame 2
    np.testing.assert_array_equal(sample[keys.INPUTS]["JOINT_POSITIONS"], [[22.5, 20.5]])
    np.testing.assert_array_equal(sample[keys.OUTPUTS]["JOINT_TARGET_POSITIONS"], [[0.0], [0.0]])  # alpha lacks w
    assert sample[keys.OUTPUT_MASKS]["JOINT_TARGET_POSITIONS"].tolist() == [0]
    beta = w[6]  # episode 1, frame 0
    np.testing.assert_array_equal(beta[keys.OUTPUTS]["JOINT_TARGET_POSITIONS"], [[-1003.5], [-1013.5]])
    assert beta[keys.INPUT_MASKS]["JOINT_POSITIONS"].tolist() == [0, 0]


def test_same_type_as_input_and_output(ds) -> None:
    w = _windows(ds, inputs=["JOINT_POSITIONS"], outputs=["JOINT_POSITIONS"], history=2, horizon=3)
    sample = w[4]  # episode 0, frame 4 (length 6)
    np.testing.assert_array_equal(sample[keys.INPUTS]["JOINT_POSITIONS"], _expected_vec(0, [3, 4]))
    np.testing.assert_array_equal(sample[keys.OUTPUTS]["JOINT_POSITIONS"], _expected_vec(0, [4, 5, 5]))


def test_language(ds) -> None:
    w = _windows(ds, inputs=["JOINT_POSITIONS", "LANGUAGE"], default_language="do the thing")
    assert "LANGUAGE" not in w[0][keys.INPUTS]
    assert w[0][keys.LANGUAGE] == "alpha task 0"
    assert w[6][keys.LANGUAGE] == "do the thing"  # beta episodes have no instruction
    assert w[12][keys.LANGUAGE] == "alpha task 2"
    assert keys.LANGUAGE not in _windows(ds)[0]


def test_default_collate_batches(ds) -> None:
    w = _windows(ds, history=2, horizon=5, inputs=["JOINT_POSITIONS", "RGB_IMAGES", "LANGUAGE"])
    loader = torch.utils.data.DataLoader(w, batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch[keys.INPUTS]["JOINT_POSITIONS"].shape == (4, 2, 4)
    assert batch[keys.INPUTS]["JOINT_POSITIONS"].dtype == torch.float32
    assert batch[keys.INPUTS]["RGB_IMAGES"].shape == (4, 2, 2, 3, H, W)
    assert batch[keys.INPUTS]["RGB_IMAGES"].dtype == torch.uint8
    assert batch[keys.INPUT_MASKS]["RGB_IMAGES"].shape == (4, 2)
    assert batch[keys.OUTPUTS]["JOINT_TARGET_POSITIONS"].shape == (4, 5, 4)
    assert batch[keys.OUTPUT_MASKS]["JOINT_TARGET_POSITIONS"].shape == (4, 4)
    assert batch[keys.IS_PAD].dtype == torch.bool and batch[keys.IS_PAD].shape == (4, 5)
    assert batch[keys.LANGUAGE] == ["alpha task 0"] * 4
    assert batch[keys.IS_PAD][3].tolist() == [False, False, False, True, True]  # frame 3 of 6


def test_windows_on_demo_dataset(demo_home: Path) -> None:
    demo = open_dataset("demo", root=demo_home / "datasets")
    inputs, outputs = resolve_model_data_spec(demo.spec, CNNMLP, None, None, None, None)
    w = WindowDataset(demo, inputs, outputs, [0, 1], 1, 5)
    assert len(w) == demo.spec.episodes[0].length + demo.spec.episodes[1].length
    sample = w[0]
    assert sample[keys.INPUTS]["RGB_IMAGES"].shape == (1, 1, 3, 64, 64)
    assert sample[keys.INPUTS]["RGB_IMAGES"].any()
    assert sample[keys.INPUTS]["JOINT_POSITIONS"].shape == (1, 3)
    assert sample[keys.OUTPUTS]["JOINT_TARGET_POSITIONS"].shape == (5, 3)

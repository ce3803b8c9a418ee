"""Several datasets in one run: merged spec, pooled statistics, union windows with masks, weighted sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.data_spec import resolve_model_data_spec
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, materialize
from neuracore.ml.datasets.mixture import (
    MixtureSampler,
    MixtureWindows,
    allocate,
    build_mixture,
    check_names_and_weights,
    check_robot_spec,
    open_datasets,
    pool_statistics,
)
from neuracore.ml.sim import pick_place

JP, JT, RGB = DataType.JOINT_POSITIONS, DataType.JOINT_TARGET_POSITIONS, DataType.RGB_IMAGES


def make_second(root: Path, name: str = "second", robot: str = "other_arm", episodes: int = 3, length: int = 6,
                image: int = pick_place.IMAGE_SIZE, camera: str = pick_place.CAMERA_NAME, offset: float = 10.0) -> Path:
    """A tiny dataset of another robot: joints `elbow`, `wrist` (one shared with the demo), one camera."""
    joints = ["elbow", "wrist"]
    layout = DatasetLayout(robots={robot: {JP: joints, JT: joints, RGB: [camera]}},
                           item_shapes={RGB: {camera: [image, image, 3]}})

    def eps():
        for e in range(episodes):
            q = offset + np.arange(length * 2, dtype=np.float32).reshape(length, 2) + 100 * e
            yield Episode(robot=robot, data={JP: {n: q[:, j] for j, n in enumerate(joints)},
                                             JT: {n: q[:, j] + 0.5 for j, n in enumerate(joints)},
                                             RGB: {camera: np.full((length, image, image, 3), 7 + e, np.uint8)}})

    return materialize(name, eps(), layout, pick_place.FREQUENCY_HZ, root=root)


class Algo:
    """The least an algorithm class declares for data-spec resolution."""

    algorithm_name = "algo"
    default_input_data_types = (JP, RGB)
    default_output_data_types = (JT,)
    supported_input_data_types = frozenset({JP, RGB})
    supported_output_data_types = frozenset({JT})


@pytest.fixture()
def two(home: Path):
    make_second(home / "datasets")
    return open_dataset("demo"), open_dataset("second")


def _resolve(mixture):
    return resolve_model_data_spec(mixture.spec, Algo, None, None, None, None)


def test_pool_statistics_exact_mean_std_min_max() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 2, (50, 2)), rng.normal(-3, 0.5, (150, 2))

    def st(x):
        return {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(),
                "max": x.max(0).tolist(), "q01": np.quantile(x, 0.01, 0).tolist(), "q99": np.quantile(x, 0.99, 0).tolist()}

    pooled = pool_statistics([(st(a), 50), (st(b), 150)])
    both = np.concatenate([a, b])
    np.testing.assert_allclose(pooled["mean"], both.mean(0), rtol=1e-10)
    np.testing.assert_allclose(pooled["std"], both.std(0), rtol=1e-10)
    np.testing.assert_allclose(pooled["min"], both.min(0))
    np.testing.assert_allclose(pooled["max"], both.max(0))
    # q01/q99: the count-weighted mean of the parts' quantiles (documented approximation)
    np.testing.assert_allclose(pooled["q01"], 0.25 * np.array(st(a)["q01"]) + 0.75 * np.array(st(b)["q01"]))


def test_shared_union_items_masks_and_values(two) -> None:
    demo, second = two
    mixture = build_mixture([demo, second], None, "shared")
    inputs, outputs = _resolve(mixture)
    assert inputs[JP].items == ["shoulder", "elbow", "gripper", "wrist"]
    assert inputs[RGB].items == [pick_place.CAMERA_NAME]
    np.testing.assert_array_equal(inputs[JP].robot_masks["planar_arm"], [1, 1, 1, 0])
    np.testing.assert_array_equal(inputs[JP].robot_masks["other_arm"], [0, 1, 0, 1])
    # elbow pooled over both datasets by frame counts; wrist only from the second
    d, s = demo.spec.statistics["JOINT_POSITIONS"], second.spec.statistics["JOINT_POSITIONS"]
    n_d, n_s = demo.spec.num_frames, second.spec.num_frames
    want = (n_d * d["elbow"]["mean"][0] + n_s * s["elbow"]["mean"][0]) / (n_d + n_s)
    assert mixture.spec.statistics["JOINT_POSITIONS"]["elbow"]["mean"][0] == pytest.approx(want)
    assert mixture.spec.statistics["JOINT_POSITIONS"]["wrist"] == s["wrist"]

    windows = MixtureWindows(mixture, inputs, outputs, [[0, 1], [0, 2]], 1, 3)
    assert windows.lengths == [demo.spec.episodes[0].length + demo.spec.episodes[1].length, 12]
    sample = windows[windows.lengths[0] + 7]  # second dataset, episode 2, frame 1
    np.testing.assert_array_equal(sample[keys.INPUTS]["JOINT_POSITIONS"], [[0, 10 + 200 + 2, 0, 10 + 200 + 3]])
    np.testing.assert_array_equal(sample[keys.INPUT_MASKS]["JOINT_POSITIONS"], [0, 1, 0, 1])
    assert sample[keys.OUTPUTS]["JOINT_TARGET_POSITIONS"].shape == (3, 4)
    assert sample[keys.INPUTS]["RGB_IMAGES"].shape == (1, 1, 3, 64, 64)
    assert int(sample[keys.INPUTS]["RGB_IMAGES"].max()) == 9
    first = windows[0]
    assert first[keys.INPUTS]["JOINT_POSITIONS"][0, 3] == 0 and first[keys.INPUT_MASKS]["JOINT_POSITIONS"][3] == 0
    assert set(first[keys.INPUTS]) == set(sample[keys.INPUTS]) and set(first[keys.OUTPUTS]) == set(sample[keys.OUTPUTS])


def test_per_robot_namespaced_items(two) -> None:
    demo, second = two
    mixture = build_mixture([demo, second], [1, 3], "per_robot")
    inputs, _ = _resolve(mixture)
    assert inputs[JP].items == ["planar_arm/shoulder", "planar_arm/elbow", "planar_arm/gripper",
                                "other_arm/elbow", "other_arm/wrist"]
    assert inputs[RGB].items == ["planar_arm/top", "other_arm/top"]
    np.testing.assert_array_equal(inputs[RGB].robot_masks["other_arm"], [0, 1])
    stats = mixture.spec.statistics["JOINT_POSITIONS"]
    assert stats["other_arm/elbow"] == second.spec.statistics["JOINT_POSITIONS"]["elbow"]
    assert stats["planar_arm/elbow"] == demo.spec.statistics["JOINT_POSITIONS"]["elbow"]
    _, outputs = _resolve(mixture)
    windows = MixtureWindows(mixture, inputs, outputs, [[0], [1]], 1, 2)
    s = windows[windows.lengths[0]]
    np.testing.assert_array_equal(s[keys.INPUTS]["JOINT_POSITIONS"][0], [0, 0, 0, 110, 111])
    assert s[keys.INPUTS]["RGB_IMAGES"][0, 0].max() == 0 and s[keys.INPUTS]["RGB_IMAGES"][0, 1].min() == 8
    assert mixture.fingerprint != build_mixture([demo, second], [1, 2], "per_robot").fingerprint


def test_sampler_deterministic_weighted_and_cycles() -> None:
    sampler = MixtureSampler([10, 3], [1, 1], seed=5)
    assert len(sampler) == 13 and sampler.counts == [7, 6]
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert list(sampler) == orders[-1]  # depends only on (seed, epoch)
        assert sum(i >= 10 for i in orders[-1]) == 6
    small = [i - 10 for o in orders for i in o if i >= 10]
    for k in range(0, 18, 3):  # the small dataset cycles through all its windows before repeating one
        assert sorted(small[k:k + 3]) == [0, 1, 2]
    big = [i for o in orders for i in o if i < 10]
    assert sorted(big[:10]) == list(range(10))
    fresh = MixtureSampler([10, 3], [1, 1], seed=5)
    fresh.set_epoch(2)
    assert list(fresh) == orders[2]
    assert sorted(MixtureSampler([4, 3], None, seed=1)) == list(range(7))  # default: plain concatenation
    assert list(MixtureSampler([4, 3], [1, 9], seed=1, shuffle=False)) == list(range(7))
    assert allocate(10, [1, 1, 1]) == [4, 3, 3]


def test_bad_input_one_line(two, home: Path) -> None:
    demo, second = two
    with pytest.raises(ConfigError, match=r"^dataset_weights: 1 weights for 2 datasets \(demo, second\)"):
        check_names_and_weights(["demo", "second"], [1.0])
    with pytest.raises(ConfigError, match=r"weight 0 of dataset 'second' must be a positive finite number"):
        check_names_and_weights(["demo", "second"], [1, 0])
    with pytest.raises(ConfigError, match=r"weight inf of dataset"):
        check_names_and_weights(["demo", "second"], [1, float("inf")])
    with pytest.raises(ConfigError, match=r"needs a list of at least two names in dataset_name, got 'demo'"):
        check_names_and_weights(["demo"], [1])
    with pytest.raises(ConfigError, match=r"^dataset_name: 'demo' is listed twice"):
        check_names_and_weights(["demo", "demo"], None)
    with pytest.raises(ConfigError, match=r"^dataset\.statistics='robot': valid: shared, per_robot$"):
        build_mixture([demo, second], None, "robot")
    mixture = build_mixture([demo, second], None, "shared")
    with pytest.raises(ConfigError, match=r"^input_robot_data_spec: robot 'ghost' is in none of the datasets demo, "
                                          r"second; robots: planar_arm \(demo\), other_arm \(second\)$"):
        check_robot_spec(mixture, {"ghost": {}}, "input_robot_data_spec")
    make_second(home / "datasets", name="small_images", image=32)
    with pytest.raises(DatasetError, match=r"^dataset_name: RGB_IMAGES camera 'top' has shape \[64, 64, 3\] in dataset "
                                           r"'demo' but \[32, 32, 3\] in 'small_images'; resize on import"):
        open_datasets(["demo", "small_images"], None, "shared")
    single = open_datasets(["demo"], None, "shared")
    assert single.spec.name == "demo" and not hasattr(single, "datasets")

"""Normalizer (mean_std / min_max), image conversion and ImageNet normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.model_init import FeatureSpec
from neuracore.ml.core.normalization import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNetNormalize,
    Normalizer,
    images_to_unit_float,
)


def _data() -> np.ndarray:
    rng = np.random.default_rng(0)
    # three items with very different ranges
    return np.stack([rng.normal(2.0, 3.0, 500), rng.uniform(-10, 50, 500), rng.normal(-1.0, 0.01, 500)], 1)


def _feature(data: np.ndarray) -> FeatureSpec:
    stats = {
        "mean": data.mean(0).tolist(),
        "std": data.std(0).tolist(),
        "min": data.min(0).tolist(),
        "max": data.max(0).tolist(),
    }
    return FeatureSpec(DataType.JOINT_POSITIONS, ["a", "b", "c"], [1], stats)


def test_mean_std_standardises_and_round_trips() -> None:
    data = _data()
    norm = Normalizer(_feature(data), "mean_std")
    x = torch.tensor(data, dtype=torch.float32)
    z = norm.normalize(x)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(3), atol=1e-3)
    assert torch.allclose(norm.unnormalize(z), x, atol=1e-4, rtol=1e-5)
    assert torch.allclose(norm.center, torch.tensor(data.mean(0), dtype=torch.float32))
    assert torch.allclose(norm.scale, torch.tensor(data.std(0), dtype=torch.float32))


def test_default_mode_is_mean_std() -> None:
    data = _data()
    a, b = Normalizer(_feature(data)), Normalizer(_feature(data), "mean_std")
    assert torch.equal(a.center, b.center) and torch.equal(a.scale, b.scale)


def test_min_max_maps_min_to_minus_one_and_max_to_plus_one() -> None:
    data = _data()
    norm = Normalizer(_feature(data), "min_max")
    lo = torch.tensor(data.min(0), dtype=torch.float32)
    hi = torch.tensor(data.max(0), dtype=torch.float32)
    assert torch.allclose(norm.normalize(lo), -torch.ones(3), atol=1e-5)
    assert torch.allclose(norm.normalize(hi), torch.ones(3), atol=1e-5)
    assert torch.allclose(norm.normalize((lo + hi) / 2), torch.zeros(3), atol=1e-5)
    z = norm.normalize(torch.tensor(data, dtype=torch.float32))
    assert z.min() >= -1 - 1e-5 and z.max() <= 1 + 1e-5
    assert torch.allclose(norm.unnormalize(z), torch.tensor(data, dtype=torch.float32), atol=1e-4)


def test_normalise_works_on_batched_time_tensors() -> None:
    data = _data()
    norm = Normalizer(_feature(data), "min_max")
    x = torch.tensor(data[:24], dtype=torch.float32).view(2, 12, 3)  # [B, T, D]
    assert norm.normalize(x).shape == (2, 12, 3)
    assert torch.allclose(norm.unnormalize(norm.normalize(x)), x, atol=1e-4)


@pytest.mark.parametrize("mode", ["mean_std", "min_max"])
def test_constant_items_pass_through_with_unit_scale(mode: str) -> None:
    data = np.stack([np.full(10, 4.0), np.linspace(0, 1, 10)], 1)
    feature = FeatureSpec(DataType.CUSTOM_1D, ["const", "ramp"], [1], {
        "mean": data.mean(0).tolist(), "std": data.std(0).tolist(),
        "min": data.min(0).tolist(), "max": data.max(0).tolist(),
    })
    norm = Normalizer(feature, mode)
    assert norm.scale[0].item() == 1.0  # degenerate range: no division by ~0
    x = torch.tensor([[4.0, 0.5], [5.5, 0.25]])
    z = norm.normalize(x)
    assert torch.isfinite(z).all()
    assert z[0, 0].item() == pytest.approx(0.0)
    assert z[1, 0].item() == pytest.approx(1.5)  # deviations are kept unscaled
    assert torch.allclose(norm.unnormalize(z), x, atol=1e-6)


def test_near_constant_below_eps_is_also_unit_scale() -> None:
    feature = FeatureSpec(DataType.CUSTOM_1D, ["x"], [1], {"mean": [1.0], "std": [1e-9]})
    assert Normalizer(feature).scale.tolist() == [1.0]
    feature = FeatureSpec(DataType.CUSTOM_1D, ["x"], [1], {"mean": [1.0], "std": [1e-3]})
    assert Normalizer(feature).scale.tolist() == [pytest.approx(1e-3)]


@pytest.mark.parametrize("mode", ["mean_std", "min_max"])
def test_missing_stats_is_identity(mode: str) -> None:
    feature = FeatureSpec(DataType.END_EFFECTOR_POSES, ["ee"], [7], {})
    norm = Normalizer(feature, mode)
    assert norm.center.shape == (7,) and norm.scale.shape == (7,)
    x = torch.randn(5, 7)
    assert torch.allclose(norm.normalize(x), x)


def test_invalid_mode_names_valid_modes() -> None:
    feature = FeatureSpec(DataType.JOINT_POSITIONS, ["a"], [1], {})
    with pytest.raises(ValueError, match="'zscore'; valid: mean_std, min_max"):
        Normalizer(feature, "zscore")


def test_buffers_are_saved_in_state_dict() -> None:
    data = _data()
    norm = Normalizer(_feature(data), "mean_std")
    state = norm.state_dict()
    assert set(state) == {"center", "scale"}
    other = Normalizer(FeatureSpec(DataType.JOINT_POSITIONS, ["a", "b", "c"], [1], {}), "mean_std")
    other.load_state_dict(state)
    x = torch.tensor(data[:5], dtype=torch.float32)
    assert torch.allclose(other.normalize(x), norm.normalize(x))


def test_images_to_unit_float_uint8() -> None:
    images = torch.tensor([0, 51, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2)
    out = images_to_unit_float(images)
    assert out.dtype == torch.float32
    assert out.flatten().tolist() == pytest.approx([0.0, 0.2, 128 / 255, 1.0])
    assert out.max().item() == 1.0
    assert images.dtype == torch.uint8 and images.flatten()[-1].item() == 255  # input untouched


def test_images_to_unit_float_float_passes_through() -> None:
    images = torch.rand(2, 3, 4, 4)
    assert torch.equal(images_to_unit_float(images), images)
    half = images.half()
    out = images_to_unit_float(half)
    assert out.dtype == torch.float32
    assert torch.allclose(out, half.float())


def test_imagenet_normalize() -> None:
    norm = ImageNetNormalize()
    mean_image = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(2, 1, 3, 4, 4)
    assert torch.allclose(norm(mean_image), torch.zeros(2, 1, 3, 4, 4), atol=1e-6)
    ones = torch.ones(3, 2, 2)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(norm(ones)[:, 0, 0], expected)
    assert norm.state_dict() == {}  # constants, not checkpointed


def test_quantile_mode_maps_q01_q99_to_unit_range_and_clips_outliers():
    from neuracore.ml.core.data_types import DataType
    from neuracore.ml.core.model_init import FeatureSpec
    from neuracore.ml.core.normalization import Normalizer

    feature = FeatureSpec(DataType.JOINT_POSITIONS, ["a", "b", "flat"], [1],
                          {"q01": [0.0, -2.0, 3.0], "q99": [2.0, 2.0, 3.0], "min": [-9.0] * 3, "max": [9.0] * 3})
    norm = Normalizer(feature, "quantile")
    x = torch.tensor([[0.0, 0.0, 3.0], [2.0, 1.0, 3.5], [5.0, -9.0, 3.0]])
    out = norm.normalize(x)
    assert torch.allclose(out, torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.5, 0.5], [1.0, -1.0, 0.0]]))
    # inside the range the round trip is exact; outliers come back at the range's edge
    assert torch.allclose(norm.unnormalize(out)[:2], x[:2])
    assert torch.allclose(norm.unnormalize(out)[2], torch.tensor([2.0, -2.0, 3.0]))
    with pytest.raises(ValueError, match="valid: mean_std, min_max, quantile"):
        Normalizer(feature, "zscore")


def test_vector_normalizers_take_one_mode_or_one_per_data_type_and_name_bad_keys():
    from neuracore.ml.core.errors import ConfigError
    from neuracore.ml.core.normalization import vector_normalizers

    stats = {"mean": [0.0], "std": [2.0], "min": [-4.0], "max": [4.0], "q01": [-1.0], "q99": [1.0]}
    state = {DataType.JOINT_POSITIONS: FeatureSpec(DataType.JOINT_POSITIONS, ["a"], [1], stats)}
    action = {DataType.JOINT_TARGET_POSITIONS: FeatureSpec(DataType.JOINT_TARGET_POSITIONS, ["a"], [1], stats)}
    known = {**state, **action}
    assert vector_normalizers(state, "quantile", "mean_std")["JOINT_POSITIONS"].mode == "quantile"
    per_type = {"JOINT_TARGET_POSITIONS": "min_max"}
    assert vector_normalizers(state, per_type, "mean_std", known=known)["JOINT_POSITIONS"].mode == "mean_std"
    assert vector_normalizers(action, per_type, "mean_std", known=known)["JOINT_TARGET_POSITIONS"].mode == "min_max"
    with pytest.raises(ConfigError, match=r"algorithm.normalization.JOINT_VELOCITIES: not a vector DataType of this "
                                          r"model; valid: JOINT_POSITIONS, JOINT_TARGET_POSITIONS"):
        vector_normalizers(state, {"JOINT_VELOCITIES": "quantile"}, "mean_std", known=known)
    with pytest.raises(ConfigError, match=r"algorithm.normalization='zscore': valid: mean_std, min_max, quantile"):
        vector_normalizers(state, "zscore", "mean_std")
    with pytest.raises(ConfigError, match=r"algorithm.normalization.JOINT_POSITIONS='z': valid"):
        vector_normalizers(state, {"JOINT_POSITIONS": "z"}, "mean_std", known=known)

"""Algorithm registry, `NeuracoreModel` support checks and `build_model` hyper-parameter checks."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from neuracore.ml.algorithms.cnnmlp import CNNMLP
from neuracore.ml.core import registry
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.model import NeuracoreModel, build_model
from neuracore.ml.core.model_init import FeatureSpec, ModelInitDescription
from neuracore.ml.core.registry import class_path, get_algorithm, register_algorithm, registered_algorithms

CNNMLP_SUPPORTED_INPUTS = [
    "CUSTOM_1D", "END_EFFECTOR_POSES", "JOINT_POSITIONS", "JOINT_TARGET_POSITIONS", "JOINT_TORQUES",
    "JOINT_VELOCITIES", "PARALLEL_GRIPPER_OPEN_AMOUNTS", "RGB_IMAGES",
]


def _vec(dt: DataType, items: list[str]) -> FeatureSpec:
    return FeatureSpec(dt, items, [dt.item_width], {})


def _mid(inputs: list[FeatureSpec], outputs: list[FeatureSpec], horizon: int = 4) -> ModelInitDescription:
    return ModelInitDescription(
        inputs={f.data_type: f for f in inputs},
        outputs={f.data_type: f for f in outputs},
        output_prediction_horizon=horizon,
    )


def _vector_mid() -> ModelInitDescription:
    return _mid([_vec(DataType.JOINT_POSITIONS, ["a", "b"])], [_vec(DataType.JOINT_TARGET_POSITIONS, ["a", "b"])])


@pytest.fixture()
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A private copy of the registry so test registrations never leak into other tests."""
    registry.registered_algorithms()  # make sure built-ins are in the copy
    copy = dict(registry._REGISTRY)
    monkeypatch.setattr(registry, "_REGISTRY", copy)
    return copy


class _Tiny(NeuracoreModel):
    """A minimal algorithm for exercising the base class."""

    supported_input_data_types: ClassVar[frozenset[DataType]] = frozenset({DataType.JOINT_POSITIONS})
    supported_output_data_types: ClassVar[frozenset[DataType]] = frozenset({DataType.JOINT_TARGET_POSITIONS})

    def __init__(self, model_init_description: ModelInitDescription, width: int = 3, lr: float = 0.5,
                 *, flag: bool = True) -> None:
        super().__init__(model_init_description)
        self.width, self.lr, self.flag = width, lr, flag
        self.layer = torch.nn.Linear(2, width)

    def training_step(self, batch):  # pragma: no cover - not exercised
        return {"loss": torch.zeros(())}

    def predict(self, batch):  # pragma: no cover - not exercised
        return {}


# --- registry ---------------------------------------------------------------------------------


def test_builtin_cnnmlp_registered() -> None:
    algorithms = registered_algorithms()
    assert algorithms["cnnmlp"] is CNNMLP
    assert get_algorithm("cnnmlp") is CNNMLP
    assert CNNMLP.algorithm_name == "cnnmlp"
    assert list(algorithms) == sorted(algorithms)


def test_registered_algorithms_returns_a_copy() -> None:
    algorithms = registered_algorithms()
    algorithms["zzz_fake"] = CNNMLP
    assert "zzz_fake" not in registered_algorithms()


def test_get_algorithm_unknown_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        get_algorithm("nope")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("algorithm='nope'")
    assert "unknown algorithm" in msg
    assert msg.endswith("valid: " + ", ".join(registered_algorithms()))
    assert "cnnmlp" in msg


def test_register_algorithm_sets_name_and_is_idempotent(isolated_registry: dict) -> None:
    class Registered(_Tiny):  # a fresh subclass: registration sets a class attribute
        pass

    cls = register_algorithm("tiny_test_algo")(Registered)
    assert cls is Registered
    assert Registered.algorithm_name == "tiny_test_algo"
    assert _Tiny.algorithm_name == ""
    assert get_algorithm("tiny_test_algo") is Registered
    # registering the same class again (e.g. a re-import) is fine
    register_algorithm("tiny_test_algo")(Registered)
    assert get_algorithm("tiny_test_algo") is Registered


def test_register_algorithm_name_clash_names_existing_class(isolated_registry: dict) -> None:
    class Other(_Tiny):
        pass

    with pytest.raises(ConfigError) as info:
        register_algorithm("cnnmlp")(Other)
    msg = str(info.value)
    assert "'cnnmlp'" in msg and "already registered" in msg
    assert "neuracore.ml.algorithms.cnnmlp.model.CNNMLP" in msg
    assert isolated_registry["cnnmlp"] is CNNMLP


def test_isolated_registry_does_not_leak() -> None:
    assert "tiny_test_algo" not in registered_algorithms()


def test_class_path() -> None:
    assert class_path(CNNMLP) == "neuracore.ml.algorithms.cnnmlp.model.CNNMLP"


# --- hyper-parameters -------------------------------------------------------------------------


def test_hyperparameter_defaults_from_signature() -> None:
    assert _Tiny.hyperparameter_defaults() == {"width": 3, "lr": 0.5, "flag": True}
    defaults = CNNMLP.hyperparameter_defaults()
    assert "model_init_description" not in defaults and "self" not in defaults
    assert defaults["hidden_dim"] == 512
    assert defaults["image_backbone"] == "resnet18"
    assert defaults["use_pretrained_weights"] is False


def test_build_model_unknown_key_suggests_close_match() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(CNNMLP, _vector_mid(), {"hiden_dim": 8})
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("algorithm.hiden_dim: unknown hyper-parameter hiden_dim (did you mean hidden_dim?)")
    assert "for cnnmlp" in msg
    assert "valid: " + ", ".join(sorted(CNNMLP.hyperparameter_defaults())) in msg


def test_build_model_unknown_key_without_close_match() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(_Tiny, _vector_mid(), {"qqqqqqqq": 1})
    msg = str(info.value)
    assert msg.startswith("algorithm.qqqqqqqq: unknown hyper-parameter qqqqqqqq for _Tiny")
    assert "did you mean" not in msg
    assert msg.endswith("valid: flag, lr, width")


def test_build_model_several_unknown_keys_all_named() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(_Tiny, _vector_mid(), {"zzz": 1, "widht": 2, "width": 4})
    msg = str(info.value)
    assert msg.startswith("algorithm.widht:")
    assert "widht (did you mean width?)" in msg
    assert "zzz" in msg


def test_build_model_rejects_non_model_class() -> None:
    with pytest.raises(ConfigError, match=r"^algorithm._target_: .*not a subclass of NeuracoreModel"):
        build_model(dict, _vector_mid(), {})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a subclass of NeuracoreModel"):
        build_model(CNNMLP(_vector_mid(), hidden_dim=4, num_layers=1), _vector_mid(), {})  # an instance


def test_build_model_records_merged_hyperparameters() -> None:
    model = build_model(_Tiny, _vector_mid(), {"width": 5})
    assert isinstance(model, _Tiny)
    assert model.width == 5 and model.layer.out_features == 5
    assert model.hyperparameters == {"width": 5, "lr": 0.5, "flag": True}
    assert model.model_init_description.output_prediction_horizon == 4


def test_build_cnnmlp_vector_only() -> None:
    model = build_model(CNNMLP, _vector_mid(), {"hidden_dim": 8, "num_layers": 1})
    assert model.hyperparameters["hidden_dim"] == 8
    assert model.hyperparameters["cnn_output_dim"] == 512
    assert model.num_cameras == 0
    # default optimiser reads lr / weight_decay hyper-parameters
    (opt,) = model.configure_optimizers()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(1e-4)


# --- supported data types -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [DataType.LANGUAGE, DataType.DEPTH_IMAGES, DataType.POINT_CLOUDS])
def test_unsupported_input_names_supported_types(bad: DataType) -> None:
    mid = _mid(
        [_vec(DataType.JOINT_POSITIONS, ["a"]), FeatureSpec(bad, ["x"], [1], {})],
        [_vec(DataType.JOINT_TARGET_POSITIONS, ["a"])],
    )
    with pytest.raises(ConfigError) as info:
        build_model(CNNMLP, mid, {})
    msg = str(info.value)
    assert "\n" not in msg
    assert msg == (f"input_data_types: cnnmlp does not support {bad.value}; it supports "
                   + ", ".join(CNNMLP_SUPPORTED_INPUTS))


def test_unsupported_output_names_supported_types() -> None:
    mid = _mid([_vec(DataType.JOINT_POSITIONS, ["a"])],
               [_vec(DataType.JOINT_TARGET_POSITIONS, ["a"]), FeatureSpec(DataType.RGB_IMAGES, ["cam"], [3, 8, 8])])
    with pytest.raises(ConfigError) as info:
        CNNMLP(mid)
    msg = str(info.value)
    assert msg.startswith("output_data_types: cnnmlp does not support RGB_IMAGES; it supports ")
    assert "JOINT_TARGET_POSITIONS" in msg and "PARALLEL_GRIPPER_TARGET_OPEN_AMOUNTS" in msg


def test_unsupported_uses_class_name_when_unregistered() -> None:
    mid = _mid([_vec(DataType.JOINT_VELOCITIES, ["a"]), _vec(DataType.CUSTOM_1D, ["c"])],
               [_vec(DataType.JOINT_TARGET_POSITIONS, ["a"])])
    with pytest.raises(ConfigError) as info:
        _Tiny(mid)
    assert str(info.value) == (
        "input_data_types: _Tiny does not support JOINT_VELOCITIES, CUSTOM_1D; it supports JOINT_POSITIONS"
    )

"""Exported model folders: export → Policy.from_pretrained round trip, config/card, safe loading, errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from neuracore.ml.algorithms.cnnmlp import CNNMLP
from neuracore.ml.core import (
    DataType,
    FeatureSpec,
    ModelInitDescription,
    build_model,
    registered_algorithms,
)
from neuracore.ml.core import batch as keys
from neuracore.ml.core.errors import CheckpointError, ConfigError
from neuracore.ml.export import Policy, export_model, load_model_folder, model_folder
from tests.conftest import edit_config

JOINTS = ["shoulder", "elbow", "gripper"]
CAMERA = "top"
HORIZON = 5
SIZE = 64
HYPER = {"hidden_dim": 16, "cnn_output_dim": 16, "num_layers": 1}
DATASET_INFO = {"name": "tinyset", "fingerprint": "abc123def4567890ffff", "episodes": 3, "frames": 42}
TRAINING_INFO = {"steps": 7, "command": "python -m neuracore.ml.train algorithm=cnnmlp dataset_name=tinyset"}


def make_mid() -> ModelInitDescription:
    """1 camera 64x64, 3 joints in and out, horizon 5, non-trivial statistics."""
    return ModelInitDescription(
        inputs={
            DataType.JOINT_POSITIONS: FeatureSpec(
                DataType.JOINT_POSITIONS, list(JOINTS), [1], {"mean": [0.1, -0.4, 0.02], "std": [0.7, 1.3, 0.05]}
            ),
            DataType.RGB_IMAGES: FeatureSpec(DataType.RGB_IMAGES, [CAMERA], [3, SIZE, SIZE]),
        },
        outputs={
            DataType.JOINT_TARGET_POSITIONS: FeatureSpec(
                DataType.JOINT_TARGET_POSITIONS, list(JOINTS), [1], {"mean": [1.0, -2.0, 0.5], "std": [0.5, 0.25, 2.0]}
            ),
        },
        output_prediction_horizon=HORIZON,
        frequency=10.0,
    )


def make_model(seed: int = 0, **overrides) -> CNNMLP:
    torch.manual_seed(seed)
    model = build_model(CNNMLP, make_mid(), {**HYPER, **overrides})
    return model.eval()


def make_observation(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        DataType.JOINT_POSITIONS.value: rng.normal(size=3).astype(np.float32),
        DataType.RGB_IMAGES.value: rng.integers(0, 256, size=(1, SIZE, SIZE, 3), dtype=np.uint8),
    }


def policy_chunk(model: CNNMLP, obs: dict[str, np.ndarray]) -> np.ndarray:
    """The original in-memory model's chunk for `obs`, through the same Policy front end."""
    return Policy(model, {}).predict(obs)[DataType.JOINT_TARGET_POSITIONS.value]


def batch_from_observation(obs: dict[str, np.ndarray]) -> dict:
    """The batch a single observation becomes (history 1), built independently of Policy."""
    joints = torch.from_numpy(obs[DataType.JOINT_POSITIONS.value]).reshape(1, 1, 3)
    images = torch.from_numpy(obs[DataType.RGB_IMAGES.value]).permute(0, 3, 1, 2).reshape(1, 1, 1, 3, SIZE, SIZE)
    return {
        keys.INPUTS: {DataType.JOINT_POSITIONS.value: joints, DataType.RGB_IMAGES.value: images.contiguous()},
        keys.INPUT_MASKS: {DataType.JOINT_POSITIONS.value: torch.ones(1, 3), DataType.RGB_IMAGES.value: torch.ones(1, 1)},
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[CNNMLP, Path]:
    model = make_model()
    folder = export_model(model, tmp_path_factory.mktemp("export") / "model", training=TRAINING_INFO, dataset=DATASET_INFO)
    return model, folder


@pytest.fixture()
def folder_copy(exported: tuple[CNNMLP, Path], tmp_path: Path) -> Path:
    """A private copy of the exported folder that a test may damage."""
    dst = tmp_path / "model"
    shutil.copytree(exported[1], dst)
    return dst


# --------------------------------------------------------------------------- round trip


def test_export_writes_exactly_the_three_files(exported):
    _, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    leftovers = [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_policy_predictions_identical_to_original_model(exported):
    model, folder = exported
    obs = make_observation()
    policy = Policy.from_pretrained(folder)
    out = policy.predict(obs)
    assert set(out) == {DataType.JOINT_TARGET_POSITIONS.value}
    got = out[DataType.JOINT_TARGET_POSITIONS.value]
    assert isinstance(got, np.ndarray) and got.shape == (HORIZON, 3) and got.dtype == np.float32
    # Bit-identical to the original (never exported) model behind the same Policy front end.
    original = Policy(model, {}).predict(obs)[DataType.JOINT_TARGET_POSITIONS.value]
    assert np.array_equal(got, original)
    # And the same numbers as the original model's own predict on that observation.
    with torch.no_grad():
        want = model.predict(batch_from_observation(obs))[DataType.JOINT_TARGET_POSITIONS.value][0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-6)
    # The output is unnormalised with the exported statistics: not a chunk in normalised units.
    assert not np.allclose(got.mean(0), 0.0, atol=0.05)
    assert policy.output_items == {DataType.JOINT_TARGET_POSITIONS.value: JOINTS}


def test_policy_feeds_the_model_the_batch_it_was_trained_on(exported):
    _model, folder = exported
    obs = make_observation()
    policy = Policy.from_pretrained(folder)
    seen = []
    real_predict = policy.model.predict
    policy.model.predict = lambda batch: seen.append(batch) or real_predict(batch)
    policy.predict(obs)
    (batch,) = seen
    expected = batch_from_observation(obs)
    for dt in (DataType.JOINT_POSITIONS.value, DataType.RGB_IMAGES.value):
        got = batch[keys.INPUTS][dt]
        assert got.dtype == expected[keys.INPUTS][dt].dtype
        assert torch.equal(got, expected[keys.INPUTS][dt]), dt
        assert torch.equal(batch[keys.INPUT_MASKS][dt], expected[keys.INPUT_MASKS][dt]), dt


def test_policy_images_have_the_training_memory_layout(exported):
    _, folder = exported
    policy = Policy.from_pretrained(folder)
    seen = []
    real_predict = policy.model.predict
    policy.model.predict = lambda batch: seen.append(batch) or real_predict(batch)
    policy.predict(make_observation())
    assert seen[0][keys.INPUTS][DataType.RGB_IMAGES.value].is_contiguous()


def test_loaded_state_matches_original_bit_for_bit(exported):
    model, folder = exported
    loaded, _config = load_model_folder(folder)
    assert type(loaded) is CNNMLP
    assert not loaded.training, "a loaded model must be in eval mode"
    original = model.state_dict()
    restored = loaded.state_dict()
    assert set(original) == set(restored)
    for name, tensor in original.items():
        assert torch.equal(tensor, restored[name]), name
    assert loaded.model_init_description == model.model_init_description
    # A second observation gives a different chunk (the model is not constant) and still matches.
    obs = make_observation(seed=7)
    with torch.no_grad():
        a = model.predict(batch_from_observation(obs))[DataType.JOINT_TARGET_POSITIONS.value]
        b = loaded.predict(batch_from_observation(obs))[DataType.JOINT_TARGET_POSITIONS.value]
        c = loaded.predict(batch_from_observation(make_observation()))[DataType.JOINT_TARGET_POSITIONS.value]
    assert torch.equal(a, b)
    assert not torch.equal(b, c)


def test_export_replaces_previous_export(exported, tmp_path):
    folder = tmp_path / "model"
    export_model(make_model(seed=3), folder)
    export_model(make_model(seed=4), folder)
    obs = make_observation()
    got = Policy.from_pretrained(folder).predict(obs)[DataType.JOINT_TARGET_POSITIONS.value]
    assert np.array_equal(got, policy_chunk(make_model(seed=4), obs))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# --------------------------------------------------------------------------- config.json and card


def test_config_json_fields(exported):
    model, folder = exported
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 1  # no embedded assets: readable by every neuracore version
    assert "assets" not in config
    assert config["algorithm"]["name"] == "cnnmlp"
    assert config["algorithm"]["class"] == "neuracore.ml.algorithms.cnnmlp.model.CNNMLP"
    assert config["algorithm"]["hyperparameters"] == {**CNNMLP.hyperparameter_defaults(), **HYPER}
    real_count = sum(p.numel() for p in model.parameters())
    assert config["num_parameters"] == real_count
    assert real_count > 11_000_000  # the ResNet18 trunk is counted, not just the head
    assert config["versions"]["torch"] == metadata.version("torch")
    assert torch.__version__.startswith(config["versions"]["torch"])
    assert "python" in config["versions"] and "safetensors" in config["versions"]
    assert config["data_spec"] == {
        "inputs": {"JOINT_POSITIONS": JOINTS, "RGB_IMAGES": [CAMERA]},
        "outputs": {"JOINT_TARGET_POSITIONS": JOINTS},
        "output_prediction_horizon": HORIZON,
        "observation_history": 1,
    }
    assert ModelInitDescription.from_json(config["model_init_description"]) == make_mid()
    assert config["dataset"] == DATASET_INFO
    assert config["training"] == TRAINING_INFO


def test_model_card(exported):
    model, folder = exported
    card = (folder / "README.md").read_text()
    assert card.startswith("# cnnmlp policy")
    assert "`tinyset`" in card
    assert DATASET_INFO["fingerprint"][:16] in card
    assert f"{sum(p.numel() for p in model.parameters()):,} parameters" in card
    assert f"prediction horizon: {HORIZON} steps" in card
    assert "JOINT_POSITIONS: shoulder, elbow, gripper" in card
    assert "JOINT_TARGET_POSITIONS: shoulder, elbow, gripper" in card
    assert '"hidden_dim": 16' in card
    assert TRAINING_INFO["command"] in card
    assert "Policy.from_pretrained" in card


# --------------------------------------------------------------------------- loading never unpickles


@pytest.fixture()
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("loading an exported model must never unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_loading_never_unpickles(exported, no_unpickling):
    model, folder = exported
    obs = make_observation()
    got = Policy.from_pretrained(folder).predict(obs)[DataType.JOINT_TARGET_POSITIONS.value]
    assert np.array_equal(got, policy_chunk(model, obs))


def _marker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module that leaves a file behind if anything imports it."""
    marker = tmp_path / "imported.flag"
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "nc_untrusted_marker.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nclass Evil: pass\n"
    )
    monkeypatch.syspath_prepend(str(mod_dir))
    return marker


def test_unregistered_algorithm_is_refused_with_how_to_trust(folder_copy, tmp_path, monkeypatch, no_unpickling):
    marker = _marker_module(tmp_path, monkeypatch)

    def edit(config):
        config["algorithm"]["name"] = "my_private_algo"
        config["algorithm"]["class"] = "nc_untrusted_marker.Evil"

    edit_config(folder_copy, edit)
    with pytest.raises(CheckpointError) as info:
        Policy.from_pretrained(folder_copy)
    msg = str(info.value)
    assert "my_private_algo" in msg and "not registered" in msg
    assert "trusted_algorithms" in msg
    assert "config.json" in msg
    assert "\n" not in msg
    assert not marker.exists(), "the class path in config.json must never be imported"
    assert "my_private_algo" not in registered_algorithms()


def test_trusted_algorithms_loads_unregistered_name(exported, folder_copy, tmp_path, monkeypatch, no_unpickling):
    model, _ = exported
    marker = _marker_module(tmp_path, monkeypatch)

    def edit(config):
        config["algorithm"]["name"] = "my_private_algo"
        config["algorithm"]["class"] = "nc_untrusted_marker.Evil"

    edit_config(folder_copy, edit)
    policy = Policy.from_pretrained(folder_copy, trusted_algorithms={"my_private_algo": CNNMLP})
    assert type(policy.model) is CNNMLP
    obs = make_observation()
    assert np.array_equal(policy.predict(obs)[DataType.JOINT_TARGET_POSITIONS.value], policy_chunk(model, obs))
    assert not marker.exists()
    assert "my_private_algo" not in registered_algorithms()  # trusting is per call, not a registration


# --------------------------------------------------------------------------- damaged weights


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[8:24] = b"\xff" * 16  # the JSON header starts at byte 8
    path.write_bytes(bytes(data))


def _huge_header_length(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0:8] = (2**62).to_bytes(8, "little")
    path.write_bytes(bytes(data))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _missing(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage", [_truncate, _garble_header, _huge_header_length, _empty, _missing])
def test_corrupt_weights_are_a_checkpoint_error_naming_the_file(folder_copy, damage):
    weights = folder_copy / "model.safetensors"
    _drop_checksum(folder_copy)  # exercise the safetensors reader itself, not the checksum
    damage(weights)
    with pytest.raises(CheckpointError) as info:
        Policy.from_pretrained(folder_copy)
    msg = str(info.value)
    assert str(weights) in msg
    assert "cannot load weights" in msg or "missing weights file" in msg
    assert "\n" not in msg


def _drop_checksum(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.pop("weights_sha256")
    (folder / "config.json").write_text(json.dumps(config))


def test_a_flipped_byte_in_tensor_data_is_caught_by_the_checksum(folder_copy):
    weights = folder_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's data: the file still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 does not match config.json"):
        Policy.from_pretrained(folder_copy)


def test_weights_of_a_different_architecture_are_refused(folder_copy, tmp_path):
    other = export_model(make_model(hidden_dim=32), tmp_path / "other")
    shutil.copy(other / "model.safetensors", folder_copy / "model.safetensors")
    _drop_checksum(folder_copy)
    with pytest.raises(CheckpointError) as info:
        load_model_folder(folder_copy)
    msg = str(info.value)
    assert str(folder_copy / "model.safetensors") in msg
    assert "size mismatch" in msg or "shape" in msg
    assert "mlp.0.weight" in msg


def test_architecture_mismatch_message_is_one_line(folder_copy, tmp_path):
    other = export_model(make_model(hidden_dim=32), tmp_path / "other")
    shutil.copy(other / "model.safetensors", folder_copy / "model.safetensors")
    _drop_checksum(folder_copy)
    with pytest.raises(CheckpointError) as info:
        load_model_folder(folder_copy)
    assert "\n" not in str(info.value) and "\t" not in str(info.value)


def test_missing_and_unexpected_tensors_are_named(exported, folder_copy):
    model, _ = exported
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    del state["mlp.0.bias"]
    state["mlp.9.weight"] = torch.zeros(2, 2)
    safetensors.torch.save_file(state, str(folder_copy / "model.safetensors"), metadata={"format": "pt"})
    _drop_checksum(folder_copy)
    with pytest.raises(CheckpointError) as info:
        load_model_folder(folder_copy)
    msg = str(info.value)
    assert "missing" in msg and "mlp.0.bias" in msg
    assert "unexpected" in msg and "mlp.9.weight" in msg
    assert "\n" not in msg


# --------------------------------------------------------------------------- malformed config.json


def _write(text: str):
    return lambda folder: (folder / "config.json").write_text(text)


def _edit(edit):
    return lambda folder: edit_config(folder, edit)


GOOD_MALFORMED = {
    "not_json": _write("{this is not json"),
    "empty_file": _write(""),
    "json_list": _write("[1, 2, 3]"),
    "empty_object": _write("{}"),
    "no_model_init_description": _edit(lambda c: c.pop("model_init_description")),
    "algorithm_null": _edit(lambda c: c.__setitem__("algorithm", None)),
    "newer_format": _edit(lambda c: c.__setitem__("format_version", 999)),
    "missing_file": lambda folder: (folder / "config.json").unlink(),
}

BUGGY_MALFORMED = {
    # These raise raw KeyError / AttributeError / ValueError / TypeError instead of CheckpointError.
    "model_init_description_without_horizon": _edit(lambda c: c["model_init_description"].pop("output_prediction_horizon")),
    "model_init_description_inputs_not_mapping": _edit(lambda c: c["model_init_description"].__setitem__("inputs", 5)),
    "feature_without_items": _edit(lambda c: c["model_init_description"]["inputs"]["JOINT_POSITIONS"].pop("items")),
    "format_version_not_a_number": _edit(lambda c: c.__setitem__("format_version", "x")),
    "hyperparameters_not_mapping": _edit(lambda c: c["algorithm"].__setitem__("hyperparameters", [1])),
    "hyperparameter_of_wrong_type": _edit(lambda c: c["algorithm"]["hyperparameters"].__setitem__("hidden_dim", "abc")),
}


@pytest.mark.parametrize("name", list(GOOD_MALFORMED))
def test_malformed_config_is_a_checkpoint_error(folder_copy, name):
    GOOD_MALFORMED[name](folder_copy)
    with pytest.raises(CheckpointError) as info:
        Policy.from_pretrained(folder_copy)
    msg = str(info.value)
    assert str(folder_copy / "config.json") in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "name",
    list(BUGGY_MALFORMED),
)
def test_malformed_config_contents_are_a_checkpoint_error(folder_copy, name):
    BUGGY_MALFORMED[name](folder_copy)
    try:
        Policy.from_pretrained(folder_copy)
    except CheckpointError as exc:
        assert "config.json" in str(exc)
        return
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(f"{type(exc).__name__} instead of CheckpointError: {exc}") from None
    raise AssertionError("a malformed config.json loaded without error")


# --------------------------------------------------------------------------- atomic export


def test_failed_export_keeps_previous_export_and_leaves_no_temp(exported, tmp_path, monkeypatch):
    model, _ = exported
    folder = export_model(model, tmp_path / "model", dataset=DATASET_INFO)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def half_written_then_fail(module, filename, **kwargs):
        Path(filename).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_model", half_written_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export_model(make_model(seed=9), folder, dataset={"name": "other"})
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"], "temp folder left behind"
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after == before
    obs = make_observation()
    got = Policy.from_pretrained(folder).predict(obs)[DataType.JOINT_TARGET_POSITIONS.value]
    assert np.array_equal(got, policy_chunk(model, obs))


def test_failed_card_write_keeps_previous_export(exported, tmp_path, monkeypatch):
    model, _ = exported
    folder = export_model(model, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def broken_card(config):
        raise RuntimeError("card template exploded")

    monkeypatch.setattr(model_folder, "model_card", broken_card)
    with pytest.raises(RuntimeError, match="card template"):
        export_model(make_model(seed=9), folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


@pytest.mark.parametrize("swap", ["exchange_fails", "no_exchange_rename_fails"])
def test_failed_final_rename_keeps_previous_export(exported, tmp_path, monkeypatch, swap):
    from neuracore.ml.utils import atomic

    model, _ = exported
    folder = export_model(model, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_replace = os.replace

    def failing_exchange(a, b):
        raise OSError(5, "Input/output error", str(b))

    def replace(src, dst):
        if Path(dst) == folder and Path(src).name.startswith(".model.tmp-"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    if swap == "exchange_fails":  # the one-step swap (renameat2) itself fails
        monkeypatch.setattr(atomic, "exchange", failing_exchange)
    else:  # a file system without the swap: old aside, new in place; the second rename fails
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
        monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError):
        export_model(make_model(seed=9), folder)
    monkeypatch.undo()
    assert folder.is_dir() and {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# --------------------------------------------------------------------------- Policy.predict inputs


@pytest.fixture(scope="module")
def policy(exported) -> Policy:
    return Policy.from_pretrained(exported[1])


def test_predict_missing_data_type(policy):
    obs = make_observation()
    del obs["JOINT_POSITIONS"]
    with pytest.raises(ConfigError) as info:
        policy.predict(obs)
    msg = str(info.value)
    assert "missing JOINT_POSITIONS" in msg
    assert "shoulder, elbow, gripper" in msg


def test_predict_missing_images(policy):
    obs = make_observation()
    del obs["RGB_IMAGES"]
    with pytest.raises(ConfigError, match=r"missing RGB_IMAGES.*top"):
        policy.predict(obs)


@pytest.mark.parametrize("length", [2, 4])
def test_predict_wrong_vector_length(policy, length):
    obs = make_observation()
    obs["JOINT_POSITIONS"] = np.zeros(length, np.float32)
    with pytest.raises(ConfigError) as info:
        policy.predict(obs)
    msg = str(info.value)
    assert "JOINT_POSITIONS" in msg
    assert f"{length} values" in msg and "expected 3" in msg


@pytest.mark.parametrize(
    "shape", [(1, 32, 32, 3), (SIZE, SIZE, 3), (1, 3, SIZE, SIZE), (2, SIZE, SIZE, 3)], ids=str
)
def test_predict_wrong_image_shape(policy, shape):
    obs = make_observation()
    obs["RGB_IMAGES"] = np.zeros(shape, np.uint8)
    with pytest.raises(ConfigError) as info:
        policy.predict(obs)
    msg = str(info.value)
    assert "RGB_IMAGES" in msg
    assert str(list(shape)) in msg
    assert "[1, 64, 64, 3]" in msg


def test_predict_mapping_missing_item(policy):
    obs = make_observation()
    obs["JOINT_POSITIONS"] = {"shoulder": 0.1, "elbow": 0.2}
    with pytest.raises(ConfigError, match=r"JOINT_POSITIONS.*missing items gripper"):
        policy.predict(obs)
    obs = make_observation()
    obs["RGB_IMAGES"] = {"side": obs["RGB_IMAGES"][0]}
    with pytest.raises(ConfigError, match=r"RGB_IMAGES.*missing cameras top"):
        policy.predict(obs)


def test_predict_mapping_form_equals_array_form(policy):
    obs = make_observation()
    joints = obs["JOINT_POSITIONS"]
    as_mapping = {
        # Deliberately not in model order: the mapping is read by item name.
        "JOINT_POSITIONS": {"gripper": joints[2], "shoulder": float(joints[0]), "elbow": np.float32(joints[1])},
        "RGB_IMAGES": {"top": obs["RGB_IMAGES"][0]},
    }
    a = policy.predict(obs)["JOINT_TARGET_POSITIONS"]
    b = policy.predict(as_mapping)["JOINT_TARGET_POSITIONS"]
    assert np.array_equal(a, b)
    # A permuted array (wrong order) is taken as given, so it gives a different chunk.
    permuted = dict(obs, JOINT_POSITIONS=joints[[2, 0, 1]])
    assert not np.array_equal(a, policy.predict(permuted)["JOINT_TARGET_POSITIONS"])


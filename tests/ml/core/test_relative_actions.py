"""Relative (delta) actions: resolution and errors, to_delta/to_absolute, delta statistics, windows, every
algorithm training on deltas, the export's record and `Policy.predict` returning absolute targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from neuracore.ml.config.schema import AlgorithmChoice, RelativeActionsOptions, TrainConfig
from neuracore.ml.core import DataType, ModelInitDescription, build_model, registered_algorithms
from neuracore.ml.core import batch as keys
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.relative_actions import (
    make_pair,
    merge_statistics,
    parse_pairs,
    resolve_relative_actions,
    to_absolute,
    to_delta,
)
from neuracore.ml.datasets.data_spec import resolve_features
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, materialize
from neuracore.ml.datasets.statistics import relative_statistics
from neuracore.ml.datasets.windows import WindowDataset
from neuracore.ml.export import Policy, export_model
from neuracore.ml.trainers.data import build_data
from tests.conftest import FAST, run_cli
from tests.ml.algorithms.test_registered_algorithms import tiny_hyperparameters
from tests.ml.config.test_cli_errors import error_line

JP, JT = DataType.JOINT_POSITIONS, DataType.JOINT_TARGET_POSITIONS
OUT_ITEMS = ["a", "b", "g", "extra"]  # "extra" has no JOINT_POSITIONS item: it stays absolute
IN_ITEMS = ["b", "a", "g"]  # another order than the outputs: positions are looked up by name
TINY_LENGTHS = [7, 3, 9, 5]
TINY_HORIZON = 4


def _pairs(absolute_items=("g",)):
    return resolve_relative_actions(True, "auto", list(absolute_items), {JT: OUT_ITEMS}, {JP: IN_ITEMS})


# --------------------------------------------------------------------------- pure functions


def test_pairs_name_items_by_name_and_skip_absolute_and_unpaired_items():
    (pair,) = _pairs()
    assert (pair.output, pair.input, pair.items) == (JT, JP, ("a", "b"))
    assert pair.output_index == (0, 1) and pair.input_index == (1, 0)
    assert resolve_relative_actions(False, "auto", ["nope"], {JT: OUT_ITEMS}, {}) == []  # off: nothing checked


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_to_delta_then_to_absolute_gives_the_same_targets_exactly(backend):
    rng = np.random.default_rng(0)
    # Multiples of 1/256 in a small range: float32 subtraction and addition are exact on them, so the
    # round trip must reproduce every bit; a wrong index or sign would not.
    targets = (rng.integers(-512, 512, (6, 5, 4)) / 256).astype(np.float32)
    state = (rng.integers(-512, 512, (6, 2, 3)) / 256).astype(np.float32)  # [B, T_in, D]: t is the last step
    outputs, inputs = {JT.value: targets}, {JP.value: state}
    if backend == "torch":
        outputs, inputs = {JT.value: torch.from_numpy(targets)}, {JP.value: torch.from_numpy(state)}
    pairs = _pairs()
    delta = to_delta(outputs, inputs, pairs)
    back = to_absolute(delta, inputs, pairs)
    d, b = (np.asarray(delta[JT.value]), np.asarray(back[JT.value]))
    assert np.array_equal(b, targets)
    assert np.array_equal(np.asarray(outputs[JT.value]), targets)  # inputs of the functions are not modified
    # a (output 0) is relative to state item a (input 1), b (output 1) to input 0, at the last step
    assert np.array_equal(d[..., 0], targets[..., 0] - state[:, -1, None, 1])
    assert np.array_equal(d[..., 1], targets[..., 1] - state[:, -1, None, 0])
    # absolute_items (g) and items without a state item (extra) stay absolute, bit for bit
    assert np.array_equal(d[..., 2:], targets[..., 2:])


def test_round_trip_on_arbitrary_floats_is_within_rounding():
    rng = np.random.default_rng(1)
    targets = rng.normal(size=(3, 5, 4)).astype(np.float32)
    state = rng.normal(size=(3, 1, 3)).astype(np.float32)
    back = to_absolute(to_delta({JT.value: targets}, {JP.value: state}, _pairs()), {JP.value: state}, _pairs())
    np.testing.assert_allclose(back[JT.value], targets, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pairs,absolute,outputs,inputs,key", [
    ({"FOO": "JOINT_POSITIONS"}, [], {JT: ["a"]}, {JP: ["a"]}, "relative_actions.pairs.FOO"),
    ({"JOINT_TARGET_POSITIONS": "RGB_IMAGES"}, [], {JT: ["a"]}, {JP: ["a"]},
     "relative_actions.pairs.JOINT_TARGET_POSITIONS=RGB_IMAGES"),
    ({"END_EFFECTOR_POSES": "END_EFFECTOR_POSES"}, [], {JT: ["a"]}, {JP: ["a"]},
     "relative_actions.pairs.END_EFFECTOR_POSES"),
    ("nope", [], {JT: ["a"]}, {JP: ["a"]}, "relative_actions.pairs='nope'"),
    ({"JOINT_VELOCITIES": "JOINT_POSITIONS"}, [], {JT: ["a"]}, {JP: ["a"]}, "relative_actions.pairs.JOINT_VELOCITIES"),
    ({"JOINT_TARGET_POSITIONS": "JOINT_VELOCITIES"}, [], {JT: ["a"]}, {JP: ["a"]},
     "relative_actions.pairs.JOINT_TARGET_POSITIONS"),
    ("auto", [], {JT: ["a"]}, {DataType.RGB_IMAGES: ["top"]}, "relative_actions.pairs=auto"),
    ("auto", ["nope"], {JT: ["a"]}, {JP: ["a"]}, "relative_actions.absolute_items"),
    ("auto", ["a"], {JT: ["a"]}, {JP: ["a"]}, "relative_actions.enabled=true"),
    ("auto", [], {JT: ["a"]}, {JP: ["b"]}, "relative_actions.enabled=true"),
], ids=["unknown_type", "image_input", "pose_output", "bad_string", "output_not_predicted", "input_not_observed",
        "auto_without_state", "unknown_absolute_item", "all_absolute", "no_same_named_item"])
def test_bad_settings_are_one_line_errors_naming_the_key(pairs, absolute, outputs, inputs, key):
    with pytest.raises(ConfigError) as exc:
        resolve_relative_actions(True, pairs, absolute, outputs, inputs)
    message = str(exc.value)
    assert message.startswith(key) and "\n" not in message, message


def test_model_init_description_records_the_pairs_and_old_descriptions_read_as_absolute():
    from neuracore.ml.core.model_init import FeatureSpec

    mid = ModelInitDescription(inputs={JP: FeatureSpec(JP, IN_ITEMS, [1])}, outputs={JT: FeatureSpec(JT, OUT_ITEMS, [1])},
                               output_prediction_horizon=3, relative_actions=_pairs())
    data = json.loads(json.dumps(mid.to_json()))
    assert data["relative_actions"] == {"JOINT_TARGET_POSITIONS": {"input": "JOINT_POSITIONS", "items": ["a", "b"]}}
    assert ModelInitDescription.from_json(data) == mid
    del data["relative_actions"]  # an export written before relative actions existed
    assert ModelInitDescription.from_json(data).relative_actions == []
    assert "relative_actions" not in ModelInitDescription.from_json(data).to_json()


def test_merge_statistics_replaces_only_the_relative_items():
    (pair,) = _pairs()
    stats = {k: [1.0, 2.0, 3.0, 4.0] for k in ("mean", "std", "min", "max", "q01", "q99")}
    merged = merge_statistics(stats, pair, {k: [10.0, 20.0] for k in stats})
    assert merged["mean"] == [10.0, 20.0, 3.0, 4.0] and stats["mean"] == [1.0, 2.0, 3.0, 4.0]


# --------------------------------------------------------------------------- statistics and windows


def _tiny_episode(i: int, n: int) -> Episode:
    rng = np.random.default_rng(100 + i)
    q = rng.normal(size=(n, 3)).astype(np.float32)
    a = rng.normal(size=(n, 4)).astype(np.float32) * 2 + 1
    return Episode("arm", {JP: {name: q[:, j] for j, name in enumerate(IN_ITEMS)},
                           JT: {name: a[:, j] for j, name in enumerate(OUT_ITEMS)}})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("relative_ds")
    layout = DatasetLayout(robots={"arm": {JP: IN_ITEMS, JT: OUT_ITEMS}})
    materialize("tiny", (_tiny_episode(i, n) for i, n in enumerate(TINY_LENGTHS)), layout, 10.0, root=root)
    ds = open_dataset("tiny", root)
    inputs = resolve_features(ds.spec, ["JOINT_POSITIONS"], None, "input_data_types")
    outputs = resolve_features(ds.spec, ["JOINT_TARGET_POSITIONS"], None, "output_data_types")
    return ds, inputs, outputs


def _brute_force_deltas(ds, episodes, horizon, windows=None) -> np.ndarray:
    """target[t+k] - state[t] of the relative items (a, b), one window at a time from the Episode arrays."""
    rows = []
    for e in episodes:
        ep = _tiny_episode(e, TINY_LENGTHS[e])
        q = np.stack([ep.data[JP]["a"], ep.data[JP]["b"]], 1)
        a = np.stack([ep.data[JT]["a"], ep.data[JT]["b"]], 1)
        for t in range(len(q)):
            if windows is not None and (e, t) not in windows:
                continue
            for k in range(horizon):
                if t + k < len(q):  # steps past the episode end are padding
                    rows.append(a[t + k] - q[t])
    return np.stack(rows)


def _assert_stats_equal(got: dict, rows: np.ndarray) -> None:
    want = {"mean": rows.mean(0, dtype=np.float64), "std": rows.astype(np.float64).std(0), "min": rows.min(0),
            "max": rows.max(0), "q01": np.quantile(rows.astype(np.float64), 0.01, axis=0),
            "q99": np.quantile(rows.astype(np.float64), 0.99, axis=0)}
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-9, err_msg=key)


def test_delta_statistics_equal_a_brute_force_computation(tiny):
    ds, inputs, outputs = tiny
    train = [0, 2, 3]
    pairs = resolve_relative_actions(True, "auto", ["g"], {JT: outputs[JT].items}, {JP: inputs[JP].items})
    got = relative_statistics(ds, inputs, outputs, pairs, train, TINY_HORIZON)
    _assert_stats_equal(got[JT], _brute_force_deltas(ds, train, TINY_HORIZON))


def test_delta_statistics_sample_windows_with_a_fixed_seed(tiny):
    from neuracore.ml.datasets.statistics import _sample_windows

    ds, inputs, outputs = tiny
    train = [0, 2, 3]
    pairs = resolve_relative_actions(True, "auto", ["g"], {JT: outputs[JT].items}, {JP: inputs[JP].items})
    a = relative_statistics(ds, inputs, outputs, pairs, train, TINY_HORIZON, max_windows=6)
    assert a == relative_statistics(ds, inputs, outputs, pairs, train, TINY_HORIZON, max_windows=6)
    episode, t = _sample_windows(np.array([TINY_LENGTHS[e] for e in train]), 6, 0)
    windows = {(train[e], int(f)) for e, f in zip(episode, t)}
    assert len(windows) == 6
    _assert_stats_equal(a[JT], _brute_force_deltas(ds, train, TINY_HORIZON, windows))


def test_windows_serve_deltas_to_the_last_observation(tiny):
    ds, inputs, outputs = tiny
    pairs = resolve_relative_actions(True, "auto", ["g"], {JT: outputs[JT].items}, {JP: inputs[JP].items})
    absolute = WindowDataset(ds, inputs, outputs, [0, 2], history=2, horizon=TINY_HORIZON)
    relative = WindowDataset(ds, inputs, outputs, [0, 2], history=2, horizon=TINY_HORIZON, relative_actions=pairs)
    for i in (0, 3, len(absolute) - 1):
        a, r = absolute[i], relative[i]
        state = a[keys.INPUTS][JP.value][-1]
        want = a[keys.OUTPUTS][JT.value].copy()
        want[:, [0, 1]] -= state[[1, 0]]  # outputs a, b minus state a (input 1), b (input 0)
        assert np.array_equal(r[keys.OUTPUTS][JT.value], want)
        assert np.array_equal(r[keys.INPUTS][JP.value], a[keys.INPUTS][JP.value])
        assert np.array_equal(r[keys.IS_PAD], a[keys.IS_PAD])


# --------------------------------------------------------------------------- every algorithm, export, Policy


def _demo_data(name: str, demo_home: Path, horizon: int = 5):
    cls = registered_algorithms()[name]
    config = TrainConfig(algorithm=AlgorithmChoice(name, cls, tiny_hyperparameters(name)), dataset_name="demo",
                         output_prediction_horizon=horizon,
                         relative_actions=RelativeActionsOptions(enabled=True, absolute_items=["gripper"]))
    return cls, build_data(config, open_dataset("demo", root=demo_home / "datasets"))


@pytest.mark.parametrize("name", sorted(registered_algorithms()))
def test_every_algorithm_trains_on_deltas_and_predicts(name: str, demo_home: Path):
    cls, data = _demo_data(name, demo_home)
    mid = data.model_init
    (pair,) = mid.relative_actions
    assert pair.items == ("shoulder", "elbow")
    stats, spec_stats = mid.outputs[JT].stats, data.train.spec.statistics[JT.value]
    assert stats["mean"][2] == spec_stats["gripper"]["mean"][0]  # the absolute item keeps the dataset's statistics
    assert stats["mean"][0] != spec_stats["shoulder"]["mean"][0]  # relative items carry the deltas'
    torch.manual_seed(0)
    model = build_model(cls, mid, tiny_hyperparameters(name)).train()
    batch = default_collate([data.train[i] for i in np.linspace(0, len(data.train) - 1, 4).round().astype(int)])
    optimizers = model.configure_optimizers()
    for _ in range(2):
        loss = model(batch)["loss"]
        assert torch.isfinite(loss)
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        raw = model.predict(batch)[JT.value]
    absolute = to_absolute({JT.value: raw}, batch[keys.INPUTS], mid.relative_actions)[JT.value]
    state = batch[keys.INPUTS][JP.value][:, -1]
    assert torch.equal(absolute[..., :2], raw[..., :2] + state[:, None, :2])
    assert torch.equal(absolute[..., 2], raw[..., 2])


def _observation(data) -> dict:
    sample = data.validation[0]
    return {JP.value: sample[keys.INPUTS][JP.value][-1],
            DataType.RGB_IMAGES.value: sample[keys.INPUTS][DataType.RGB_IMAGES.value][-1].transpose(0, 2, 3, 1)}


def _expected_absolute(model, observation: dict) -> np.ndarray:
    """The model's raw (delta) chunk for one observation, plus the observed joints on shoulder and elbow."""
    joints = torch.from_numpy(observation[JP.value]).reshape(1, 1, -1)
    images = torch.from_numpy(np.ascontiguousarray(observation[DataType.RGB_IMAGES.value].transpose(0, 3, 1, 2)))[None, None]
    batch = {keys.INPUTS: {JP.value: joints, DataType.RGB_IMAGES.value: images},
             keys.INPUT_MASKS: {JP.value: torch.ones(1, 3), DataType.RGB_IMAGES.value: torch.ones(1, 1)}}
    with torch.no_grad():
        raw = model.predict(batch)[JT.value][0].float().numpy()
    expected = raw.copy()
    expected[:, :2] = raw[:, :2] + observation[JP.value][None, :2]
    return expected


def test_export_records_relative_actions_and_policy_predicts_absolute(demo_home: Path, tmp_path: Path):
    cls, data = _demo_data("cnnmlp", demo_home)
    torch.manual_seed(0)
    model = build_model(cls, data.model_init, tiny_hyperparameters("cnnmlp")).eval()
    folder = export_model(model, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_init_description"]["relative_actions"] == {
        "JOINT_TARGET_POSITIONS": {"input": "JOINT_POSITIONS", "items": ["shoulder", "elbow"]}}
    policy = Policy.from_pretrained(folder)
    assert policy.description.relative_actions == data.model_init.relative_actions
    observation = _observation(data)
    got = policy.predict(observation)[JT.value]
    assert np.array_equal(got, _expected_absolute(policy.model, observation))
    policy.reset()  # select_action goes through predict: its first action is the chunk's first, absolute
    assert np.array_equal(policy.select_action(observation)[JT.value], got[0])


# --------------------------------------------------------------------------- the CLI


def test_train_cli_with_relative_actions_exports_a_policy_that_predicts_absolute_targets(home: Path):
    proc = run_cli(FAST + ["max_steps=2", "relative_actions.enabled=true", "relative_actions.absolute_items=[gripper]",
                           "validation_split=0.1", "checkpoint_frequency=100", "training_name=relative"], home, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = home / "training" / "runs" / "relative" / "model"
    mid = json.loads((folder / "config.json").read_text())["model_init_description"]
    assert mid["relative_actions"] == {"JOINT_TARGET_POSITIONS": {"input": "JOINT_POSITIONS", "items": ["shoulder", "elbow"]}}
    policy = Policy.from_pretrained(folder)
    _, data = _demo_data("cnnmlp", home)
    observation = _observation(data)
    assert np.array_equal(policy.predict(observation)[JT.value], _expected_absolute(policy.model, observation))


@pytest.mark.parametrize("args,key", [
    (["relative_actions.pairs={FOO: JOINT_POSITIONS}"], "relative_actions.pairs.FOO"),
    (["relative_actions.enabled=true", "input_data_types=[RGB_IMAGES]"], "relative_actions.pairs=auto"),
    (["relative_actions.enabled=true", "relative_actions.absolute_items=[wrist]"], "relative_actions.absolute_items"),
], ids=["unknown_data_type", "pair_input_not_an_input", "absolute_item_not_an_output"])
def test_cli_refuses_bad_relative_actions_in_one_line(home: Path, args, key):
    msg = error_line(run_cli(FAST + args, home, timeout=120))
    assert msg.startswith(key), msg
    runs = home / "training" / "runs"
    assert not runs.is_dir() or not any(runs.iterdir())  # refused before a run folder was made


def test_parse_pairs_accepts_auto_and_mappings():
    assert parse_pairs("auto") == {JT: JP}
    assert parse_pairs({"joint_target_positions": "JOINT_POSITIONS"}) == {JT: JP}
    pair = make_pair(JT, JP, ["b"], ["a", "b"], ["b", "a"])
    assert (pair.output_index, pair.input_index) == ((1,), (0,))


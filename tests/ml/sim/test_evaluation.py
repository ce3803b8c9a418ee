"""`neuracore.ml.sim.evaluation`: env items matched to the model's by name or by position; reports."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.sim.envs import DemoEnv
from neuracore.ml.sim.evaluation import evaluate, match_items, rollout


class _Recorder:
    """A policy that records what it is fed and always asks for the same action (model item order)."""

    def __init__(self, outputs: list[str], joints: list[str], action: list[float]) -> None:
        self.output_items = {DataType.JOINT_TARGET_POSITIONS.value: outputs}
        self.description = SimpleNamespace(inputs={DataType.JOINT_POSITIONS: SimpleNamespace(items=joints)})
        self.action = np.asarray(action, np.float32)
        self.seen: list[list[str]] = []
        self.temporal_ensemble_coeff, self.n_action_steps = None, 1

    def reset(self) -> None:
        self.seen.clear()

    def select_action(self, observation):
        self.seen.append(list(observation[DataType.JOINT_POSITIONS.value]))
        return {DataType.JOINT_TARGET_POSITIONS.value: self.action}


class _SpyEnv(DemoEnv):
    def __init__(self) -> None:
        super().__init__()
        self.actions: list[list[float]] = []

    def step(self, action):
        self.actions.append(list(np.asarray(action)))
        return super().step(action)


def test_items_by_name_follow_the_env_order_whatever_the_model_order() -> None:
    env = _SpyEnv()
    policy = _Recorder(["gripper", "shoulder", "elbow"], ["shoulder", "elbow", "gripper"], [0.9, 0.1, 0.2])
    assert match_items(policy, env).actions == [1, 2, 0]
    rollout(policy, 100_000, env)
    assert env.actions[0] == pytest.approx([0.1, 0.2, 0.9])  # shoulder, elbow, gripper
    assert policy.seen[0] == ["shoulder", "elbow", "gripper"]


def test_items_by_position_rename_observations_and_keep_the_action_order() -> None:
    env = _SpyEnv()
    policy = _Recorder(["motor_0", "motor_1", "motor_2"], ["motor_0", "motor_1", "motor_2"], [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError) as info:
        match_items(policy, env)
    assert str(info.value) == ("env 'demo': the model's JOINT_TARGET_POSITIONS lack items shoulder, elbow, gripper "
                               "(it predicts motor_0, motor_1, motor_2; items named otherwise: match_items=position)")
    report = evaluate(policy, env, 1, how="position")
    assert env.actions[0] == pytest.approx([0.1, 0.2, 0.3])
    assert policy.seen[0] == ["motor_0", "motor_1", "motor_2"]  # the env's joints fed under the model's names
    assert report["episodes"] == 1 and report["seeds"] == [100_000, 100_000]


@pytest.mark.parametrize(("outputs", "joints", "message"), [
    (["a", "b"], ["a", "b", "c"], "the model has 2 JOINT_TARGET_POSITIONS items (a, b), the env 3 (shoulder, elbow, gripper)"),
    (["a", "b", "c"], ["a", "b"], "the model has 2 JOINT_POSITIONS items (a, b), the env 3 (shoulder, elbow, gripper)"),
])
def test_items_by_position_need_the_same_counts(outputs, joints, message) -> None:
    with pytest.raises(ConfigError) as info:
        match_items(_Recorder(outputs, joints, [0.0] * len(outputs)), DemoEnv(), "position")
    assert str(info.value) == f"env 'demo', match_items=position: {message}"


def test_unknown_match_mode_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^match_items='order': valid: name, position$"):
        match_items(_Recorder(["a"], ["a"], [0.0]), DemoEnv(), "order")

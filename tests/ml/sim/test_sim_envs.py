"""`neuracore.ml.sim.envs`: one interface for demo, ALOHA and PushT; one-line errors for bad names and a missing extra."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from neuracore.ml.core.errors import ConfigError
from neuracore.ml.sim.envs import EVAL_SEED_OFFSET, SIM_EXTRA_INSTALL, DemoEnv, env_names, make_env


def test_registry_names_every_env() -> None:
    assert env_names() == ["demo", "aloha_transfer_cube", "aloha_insertion", "pusht"]
    assert EVAL_SEED_OFFSET == 100_000


def test_unknown_env_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        make_env("aloha_cube")
    assert str(info.value) == "env 'aloha_cube': unknown; valid: demo, aloha_transfer_cube, aloha_insertion, pusht"


@pytest.mark.parametrize(("env", "module"), [("aloha_transfer_cube", "gym_aloha"), ("aloha_insertion", "gym_aloha"),
                                             ("pusht", "gym_pusht")])
def test_missing_sim_extra_is_one_line(env: str, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an install without the extra looks like to `import`
    with pytest.raises(ConfigError) as info:
        make_env(env)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg == (f"env {env!r} needs the `sim` extra (Python module {module!r} is not installed): "
                   f"{SIM_EXTRA_INSTALL}")
    assert SIM_EXTRA_INSTALL == 'pip install -e ".[sim]"'


def test_demo_env_observations_follow_the_data_spec() -> None:
    env = make_env("demo")
    obs = env.reset(EVAL_SEED_OFFSET)
    assert isinstance(env, DemoEnv)
    assert list(obs["JOINT_POSITIONS"]) == ["shoulder", "elbow", "gripper"] == env.joint_names == env.action_names
    assert obs["RGB_IMAGES"]["top"].shape == (64, 64, 3) and obs["RGB_IMAGES"]["top"].dtype == np.uint8
    assert obs["LANGUAGE"].startswith("pick up the ")
    q = np.array([obs["JOINT_POSITIONS"][n] for n in env.joint_names])
    result = env.step(q)  # hold still
    assert env.steps == 1 and result.reward == 0.0 and not result.success and not result.done
    while not env.done:
        env.step(q)
    assert env.steps == env.max_steps == 60 and not env.success and env.max_reward_reached == 0.0


def test_demo_env_expert_succeeds_and_is_deterministic() -> None:
    from neuracore.ml.sim import pick_place

    env = make_env("demo")
    first = env.reset(3)
    again = make_env("demo").reset(3)
    assert np.array_equal(first["RGB_IMAGES"]["top"], again["RGB_IMAGES"]["top"])
    while not env.done:
        env.step(pick_place.scripted_expert(env._env))
    assert env.success and env.max_reward_reached == 1.0 and env.steps < env.max_steps


def test_demo_env_resizes_to_the_requested_image_size() -> None:
    env = make_env("demo", image_size={"top": (32, 48)})
    assert env.cameras == {"top": (32, 48)}
    assert env.reset(0)["RGB_IMAGES"]["top"].shape == (32, 48, 3)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"image_size": {"wrist": (32, 32)}}, "env 'demo': no camera 'wrist'; cameras: top"),
])
def test_demo_env_bad_options(kwargs: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_env("demo", **kwargs)
    assert str(info.value) == expected


def test_demo_env_bad_actions() -> None:
    env = make_env("demo")
    with pytest.raises(ConfigError, match=r"env 'demo': call reset\(seed\) before step"):
        env.step(np.zeros(3))
    env.reset(0)
    with pytest.raises(ConfigError) as info:
        env.step(np.zeros(2))
    assert str(info.value) == "env 'demo': action has 2 values, expected 3 (shoulder, elbow, gripper)"
    with pytest.raises(ConfigError, match="action values must be finite"):
        env.step(np.array([0.0, np.nan, 0.0]))


def test_pusht_resets_steps_and_renders() -> None:
    pytest.importorskip("gym_pusht", reason='the `sim` extra is not installed (pip install -e ".[sim]")')
    env = make_env("pusht", image_size={"top": (48, 48)})
    obs = env.reset(EVAL_SEED_OFFSET)
    again = make_env("pusht").reset(EVAL_SEED_OFFSET)
    assert list(obs["JOINT_POSITIONS"]) == ["agent_x", "agent_y"] == env.action_names
    assert obs["RGB_IMAGES"]["top"].shape == (48, 48, 3) and again["RGB_IMAGES"]["top"].shape == (96, 96, 3)
    assert obs["JOINT_POSITIONS"] == again["JOINT_POSITIONS"]  # deterministic per seed
    assert obs["RGB_IMAGES"]["top"].std() > 0  # something was drawn
    agent = np.array([obs["JOINT_POSITIONS"][n] for n in env.joint_names], np.float64)
    result = env.step(agent + [10.0, 0.0])
    moved = np.array([result.observation["JOINT_POSITIONS"][n] for n in env.joint_names])
    assert moved[0] > agent[0]  # PD control moves the agent towards the target
    assert 0.0 <= result.reward <= 1.0 and "coverage" in result.info and env.steps == 1
    assert env.frequency == 10.0 and env.max_steps == 300
    with pytest.raises(ConfigError, match=r"env 'pusht': action has 3 values, expected 2 \(agent_x, agent_y\)"):
        env.step(np.zeros(3))
    env.close()

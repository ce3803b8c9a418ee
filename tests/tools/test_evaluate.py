"""`Policy.select_action` (action chunks or temporal ensembling) and `tools/evaluate.py` rollouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from neuracore.ml.core.errors import ConfigError
from neuracore.ml.sim.pick_place import PickPlaceEnv
from tests.conftest import FAST, REPO, run_cli

EVALUATE = str(REPO / "tools" / "evaluate.py")


def _observations(n: int) -> list[dict]:
    env = PickPlaceEnv(3)
    out = []
    obs = env.observe()
    for i in range(n):
        out.append({"JOINT_POSITIONS": obs.joint_positions, "RGB_IMAGES": obs.image[None]})
        obs = env.step(obs.joint_positions + 0.05 * (i + 1))
    return out


def _counting(policy):
    """Record every chunk the model predicts (the Policy's predict output)."""
    chunks: list[np.ndarray] = []
    original = policy.predict

    def predict(observation):
        out = original(observation)
        chunks.append(out["JOINT_TARGET_POSITIONS"].copy())
        return out

    policy.predict = predict
    return chunks


def _untrained(**options):
    from tools.evaluate import untrained_policy

    return untrained_policy("cnnmlp", 5, 0, **options)


def test_select_action_executes_the_first_n_actions_of_each_chunk(home: Path) -> None:
    policy = _untrained(n_action_steps=3)
    chunks = _counting(policy)
    actions = [policy.select_action(o)["JOINT_TARGET_POSITIONS"] for o in _observations(7)]
    assert len(chunks) == 3  # predicted at steps 0, 3 and 6 only
    expected = [chunks[0][0], chunks[0][1], chunks[0][2], chunks[1][0], chunks[1][1], chunks[1][2], chunks[2][0]]
    assert all(np.array_equal(a, e) for a, e in zip(actions, expected, strict=True))
    assert all(a.shape == (3,) for a in actions)
    policy.reset()  # a new episode predicts afresh
    policy.select_action(_observations(1)[0])
    assert len(chunks) == 4


def test_select_action_with_temporal_ensembling_averages_every_prediction(home: Path) -> None:
    policy = _untrained(temporal_ensemble_coeff=0.5)
    assert policy.n_action_steps == 1
    chunks = _counting(policy)
    actions = [policy.select_action(o)["JOINT_TARGET_POSITIONS"] for o in _observations(3)]
    assert len(chunks) == 3  # the model is queried every step
    w = math.exp(-0.5)  # weight of the second-oldest prediction of a step
    np.testing.assert_allclose(actions[0], chunks[0][0], rtol=1e-6)
    np.testing.assert_allclose(actions[1], (chunks[0][1] + w * chunks[1][0]) / (1 + w), rtol=1e-5)
    np.testing.assert_allclose(actions[2], (chunks[0][2] + w * chunks[1][1] + w * w * chunks[2][0]) / (1 + w + w * w),
                               rtol=1e-5)
    assert not np.allclose(actions[1], chunks[1][0])  # really a mean, not the newest prediction


def test_history_advances_on_steps_without_a_prediction(home: Path) -> None:
    from neuracore.ml.export.policy import Policy

    base = _untrained(n_action_steps=4)
    base.model.observation_history = 2  # as Diffusion Policy: the last two frames feed each prediction
    policy = Policy(base.model, base.config, n_action_steps=4)
    observations = _observations(5)
    for o in observations:
        policy.select_action(o)
    frames = list(policy._frames)
    assert len(frames) == 2
    for frame, obs in zip(frames, observations[3:], strict=True):
        assert np.array_equal(frame["JOINT_POSITIONS"], obs["JOINT_POSITIONS"].astype(np.float32))


def test_rollout_options_are_checked(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"n_action_steps=9: must be in 1..5"):
        _untrained(n_action_steps=9)
    with pytest.raises(ConfigError, match=r"n_action_steps=3: temporal ensembling queries the model every step"):
        _untrained(n_action_steps=3, temporal_ensemble_coeff=0.01)


@pytest.mark.slow
def test_evaluate_cli_reports_chunked_and_ensembled_rollouts(home: Path) -> None:
    assert run_cli(FAST + ["max_steps=2", "training_name=evalme"], home).returncode == 0
    chunked = run_cli([EVALUATE, "latest", "--episodes", "2", "--execute-steps", "5", "--json"], home, module="")
    assert chunked.returncode == 0, chunked.stderr[-2000:]
    report = json.loads(chunked.stdout.strip().splitlines()[-1])
    assert report["model"].endswith("evalme/model") and report["episodes"] == 2
    assert report["n_action_steps"] == 5 and report["temporal_ensemble_coeff"] is None
    assert 0 <= report["successes"] <= 2 and 1 <= report["mean_steps"] <= 60
    ensembled = run_cli([EVALUATE, "latest", "--episodes", "1", "--temporal-ensemble", "0.01", "--json"], home,
                        module="")
    assert ensembled.returncode == 0, ensembled.stderr[-2000:]
    report = json.loads(ensembled.stdout.strip().splitlines()[-1])
    assert report["temporal_ensemble_coeff"] == 0.01 and report["n_action_steps"] == 1
    bad = run_cli([EVALUATE, "latest", "--episodes", "1", "--execute-steps", "0"], home, module="")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("evaluate: error: n_action_steps=0")

"""Rollouts during training (`eval.env`): reports, best_model/ by success rate, no effect on the training RNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from neuracore.ml.config.schema import EvalOptions
from neuracore.ml.trainers.best_model import best_model_hooks
from neuracore.ml.trainers.checkpoint import TrainerState
from tests.conftest import FAST, run_cli
from tests.ml.config.test_cli_errors import error_line


class _Reports:
    """Stands in for RolloutEvaluator: hands out the given success rates, one per call."""

    def __init__(self, rates: list[float]) -> None:
        self.rates = list(rates)

    def maybe_run(self, state: TrainerState, final: bool):
        return {"success_rate": self.rates.pop(0), "step": state.step} if self.rates else None


def test_best_model_by_validation_loss_without_rollouts() -> None:
    exported = []
    on_validation, on_step = best_model_hooks(lambda st, losses, report: exported.append((st.step, report)), None)
    assert on_step is None
    state = TrainerState()
    for step, loss in [(1, 0.5), (2, 0.7), (3, 0.4)]:
        state.step = step
        on_validation({"loss": loss}, state)
    assert exported == [(1, None), (3, None)] and state.best_validation_loss == 0.4


def test_best_model_by_success_rate_with_ties_to_the_lower_validation_loss() -> None:
    exported = []
    rollouts = _Reports([0.2, 0.1, 0.2, 0.2, 0.5])
    on_validation, on_step = best_model_hooks(lambda st, losses, report: exported.append((st.step, losses["loss"])),
                                              rollouts)
    state = TrainerState()
    for step, loss in [(1, 0.9), (2, 0.1), (3, 0.5), (4, 0.6), (5, 0.8)]:
        state.step = step
        on_validation({"loss": loss}, state)  # never exports by itself when rollouts are on
        on_step(state, step == 5)
    # 1: first; 2: lower rate; 3: same rate, lower loss; 4: same rate, higher loss; 5: higher rate
    assert exported == [(1, 0.9), (3, 0.5), (5, 0.8)]
    assert state.best_success_rate == 0.5 and state.best_validation_loss == 0.8


def _evaluator(home: Path, **options):
    from accelerate import Accelerator

    from neuracore.ml.trainers.rollouts import RolloutEvaluator
    from tools.evaluate import untrained_policy

    model = untrained_policy("cnnmlp", 5, 0).model.train()
    return RolloutEvaluator(Accelerator(cpu=True), model, EvalOptions(env="demo", **options), "cnnmlp"), model


def test_a_rollout_report_is_reproducible_and_leaves_the_model_and_rng_as_they_were(home: Path) -> None:
    evaluator, model = _evaluator(home, episodes=3, execute_steps=4, every_n_steps=10)
    assert model.training  # building the policy does not leave eval mode behind
    torch.manual_seed(7)
    before = torch.get_rng_state()
    state = TrainerState(step=9)
    assert evaluator.maybe_run(state, False) is None  # not due
    state.step = 10
    first = evaluator.maybe_run(state, False)
    assert torch.equal(torch.get_rng_state(), before)  # the training RNG did not move
    assert model.training
    assert evaluator.maybe_run(state, True) is None  # once per step, even at the end
    again = evaluator.run()
    evaluator.close()
    for report in (first, again):
        report.pop("seconds"), report.pop("seconds_per_step")
    assert first == again
    assert first["env"] == "demo" and first["episodes"] == 3 and first["seeds"] == [100_000, 100_002]
    assert first["n_action_steps"] == 4 and 0 <= first["success_rate"] <= 1 and 1 <= first["mean_steps"] <= 60


def test_execute_steps_beyond_the_horizon_is_one_line(home: Path) -> None:
    from neuracore.ml.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^eval\.execute_steps=8: must be in 1\.\.5 \(output_prediction_horizon"):
        _evaluator(home)


ROLLOUT_RUN = FAST + ["max_steps=4", "checkpoint_frequency=2", "logging_frequency=2", "validation_split=0.25"]
ROLLOUTS = ["eval.env=demo", "eval.every_n_steps=2", "eval.episodes=2", "eval.execute_steps=5"]


@pytest.mark.slow
def test_rollouts_are_logged_keep_best_model_and_do_not_change_training(home: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain = run_cli(ROLLOUT_RUN + ["training_name=plain"], home)
    assert plain.returncode == 0, plain.stderr[-3000:]
    rolled = run_cli(ROLLOUT_RUN + ROLLOUTS + ["training_name=rolled"], home)
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    runs = home / "training" / "runs"
    assert "rollouts: 2 episodes of demo every 2 steps and at the end on 1 rank(s)" in rolled.stderr
    assert rolled.stderr.count("rollouts: demo success rate") == 2  # steps 2 and 4 (the end)
    # Rollouts run in a forked RNG, in eval mode: the training itself is exactly the run without them.
    a = load_file(str(runs / "plain" / "model" / "model.safetensors"))
    b = load_file(str(runs / "rolled" / "model" / "model.safetensors"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    acc = EventAccumulator(str(runs / "rolled" / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert {"eval/success_rate", "eval/mean_max_reward", "eval/mean_episode_length"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("eval/success_rate")] == [2, 4]
    best = json.loads((runs / "rolled" / "best_model" / "config.json").read_text())["training"]
    assert best["rollouts"]["env"] == "demo" and best["rollouts"]["episodes"] == 2
    assert best["best_success_rate"] == best["rollouts"]["success_rate"]
    final = json.loads((runs / "rolled" / "model" / "config.json").read_text())["training"]
    assert final["rollouts"]["seeds"] == [100_000, 100_001]
    state = json.loads((runs / "rolled" / "checkpoints" / "checkpoint_4" / "trainer_state.json").read_text())
    assert state["best_success_rate"] == best["best_success_rate"]
    assert "rollouts in `demo`" in (runs / "rolled" / "model" / "README.md").read_text()
    plain_best = json.loads((runs / "plain" / "best_model" / "config.json").read_text())["training"]
    assert "rollouts" not in plain_best  # without eval.env: best by validation loss, as before


def test_an_env_the_model_cannot_drive_is_one_line_and_leaves_no_run(home: Path) -> None:
    proc = run_cli(FAST + ["max_steps=2", "eval.env=demo", "eval.execute_steps=5", "training_name=nodrive",
                           "output_data_types=[JOINT_TARGET_POSITIONS]",
                           "output_robot_data_spec={planar_arm: {JOINT_TARGET_POSITIONS: [shoulder, elbow]}}"], home)
    msg = error_line(proc, only_line=False)
    assert msg == ("env 'demo': the model's JOINT_TARGET_POSITIONS lack items gripper (it predicts shoulder, elbow; "
                   "items named otherwise: match_items=position)")
    assert not (home / "training" / "runs" / "nodrive").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("eval.env=cube", "eval.env='cube': unknown; valid: null (off), demo, aloha_transfer_cube, aloha_insertion, pusht"),
    ("eval.env=pushtt", "eval.env='pushtt': unknown (did you mean pusht?); valid: null (off), demo,"),
    ("eval.episodes=0", "eval.episodes=0: must be >= 1"),
    ("eval.every_n_steps=0", "eval.every_n_steps=0: must be >= 1"),
    ("eval.temporal_ensemble=-1", "eval.temporal_ensemble=-1.0: must be >= 0 (or null: chunks)"),
    ("eval.resize_mode=stretch", "eval.resize_mode='stretch': valid: letterbox, crop"),
    ("eval.seed=-3", "eval.seed=-3: must be in [0, 2**31 - 1]"),
    ("eval.match_items=order", "eval.match_items='order': valid: name, position"),
    ("eval.episodez=3", "eval.episodez: unknown config key (did you mean eval.episodes?); valid eval keys: env,"),
])
def test_bad_eval_options_are_one_line(home: Path, override: str, message: str, capsys) -> None:
    from tests.ml.config.test_cli_errors import in_process_error

    msg = in_process_error(FAST + [override], capsys)
    assert msg.startswith(message), msg
    assert not (home / "training").exists()


def test_eval_options_default_to_off() -> None:
    from neuracore.ml.config.schema import _eval_options

    options = _eval_options(None)
    assert options == EvalOptions() and options.env is None
    assert (options.episodes, options.execute_steps, options.seed) == (10, 8, 0)

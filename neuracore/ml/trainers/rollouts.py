"""Closed-loop rollouts in a simulated task while training (`eval.env=...`).

Every `eval.every_n_steps` optimizer steps, and once at the end, the model is rolled out for
`eval.episodes` episodes of `eval.env` with its inference weights (the EMA when one is kept), in
eval mode (no dropout, no augmentation). The episodes are spread over the ranks (episode i on
rank i % world_size) and gathered, so every rank sees the same report; the success rate, mean
highest reward, stage rates and episode length go to the trackers under `eval/`, and
`best_model/` is kept by success rate (`trainers/best_model.py`).

Evaluation episode i uses env seed 100000 + eval.seed + i (`sim.evaluation.evaluation_seeds`),
never a training seed. The rollouts run inside `torch.random.fork_rng` with a fixed seed, so
they do not move the training RNG: a run with rollouts still resumes bit-identically, and the
same weights always get the same report.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object

from neuracore.ml.core.errors import ConfigError
from neuracore.ml.trainers.checkpoint import TrainerState
from neuracore.ml.trainers.tracking import log_scalars

logger = logging.getLogger("neuracore.ml.train")


class RolloutEvaluator:
    """Rolls the core model out in `options.env`; `maybe_run(state, done)` is the loop's step hook."""

    def __init__(self, accelerator: Accelerator, core: torch.nn.Module, options: Any, algorithm: str) -> None:
        from neuracore.ml.export.policy import Policy
        from neuracore.ml.sim.evaluation import env_for_policy

        if accelerator.distributed_type == DistributedType.FSDP:
            raise ConfigError(f"eval.env={options.env}: rollouts during training need the whole model on every rank; "
                              "under FSDP evaluate the export instead (python tools/evaluate.py <run>/model --env "
                              f"{options.env})")
        self.accelerator = accelerator
        self.core = core
        self.options = options
        was_training = core.training
        horizon = int(core.model_init_description.output_prediction_horizon)
        if options.temporal_ensemble is None and options.execute_steps > horizon:
            raise ConfigError(f"eval.execute_steps={options.execute_steps}: must be in 1..{horizon} "
                              "(output_prediction_horizon, the length of a predicted chunk)")
        if options.temporal_ensemble is not None:
            rollout = {"temporal_ensemble_coeff": options.temporal_ensemble, "n_action_steps": 1}
        else:
            rollout = {"n_action_steps": options.execute_steps}
        try:  # checks the env against the model now: a mismatch stops the run before its first step
            self.policy = Policy(core, {"algorithm": {"name": algorithm}}, accelerator.device, **rollout)
            self.env = env_for_policy(self.policy, options.env, options.resize_mode, options.match_items)
        finally:
            core.train(was_training)
        self.evaluated_at = -1
        self.last: dict[str, Any] = {}

    def due(self, step: int, done: bool) -> bool:
        """Whether a rollout belongs to this step: every `every_n_steps`, and at the last step."""
        every = self.options.every_n_steps
        return step != self.evaluated_at and (done or bool(every) and step % every == 0)

    def maybe_run(self, state: TrainerState, done: bool) -> dict[str, Any] | None:
        """Roll out if due at `state.step` (on every rank together); log and return the report."""
        if not self.due(state.step, done):
            return None
        self.evaluated_at = state.step
        report = self.run()
        self.last = report
        values = {"eval/success_rate": report["success_rate"], "eval/mean_max_reward": report["mean_max_reward"],
                  "eval/mean_episode_length": report["mean_steps"], "eval/seconds_per_step": report["seconds_per_step"]}
        values.update({f"eval/stage_{k}_rate": v for k, v in report["stage_rates"].items()})
        log_scalars(self.accelerator, values, state.step)
        logger.info("step %d rollouts: %s success rate %.0f%% (%d/%d episodes), mean max reward %.2f, "
                    "mean episode length %.1f steps, %.1f s", state.step, report["env"], 100 * report["success_rate"],
                    report["successes"], report["episodes"], report["mean_max_reward"], report["mean_steps"],
                    report["seconds"])
        return report

    def run(self) -> dict[str, Any]:
        """This rank's share of the episodes, gathered into one report (identical on every rank)."""
        import time

        from neuracore.ml.sim.evaluation import evaluation_seeds, rollout, summarise

        seeds = evaluation_seeds(self.options.episodes, self.options.seed)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        started = time.perf_counter()
        mine = []
        was_training = self.core.training
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        self.core.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad(), self.core.inference_weights():
                for i in range(rank, len(seeds), world):
                    torch.manual_seed(seeds[i])  # the same weights give the same episode, whatever ran before
                    mine.append((i, rollout(self.policy, seeds[i], self.env, self.options.match_items)))
        finally:
            self.core.train(was_training)
        results = [r for _, r in sorted(gather_object(mine) if world > 1 else mine, key=lambda p: p[0])]
        return summarise(results, self.env, seeds, self.policy, time.perf_counter() - started)

    def close(self) -> None:
        """Release the simulator (renderer contexts, MuJoCo models)."""
        with contextlib.suppress(Exception):
            self.env.close()


def build_rollouts(config: Any, accelerator: Accelerator, core: torch.nn.Module) -> RolloutEvaluator | None:
    """The evaluator of `eval.env` (checked against the model now), or None when rollouts are off."""
    if config.eval.env is None:
        return None
    evaluator = RolloutEvaluator(accelerator, core, config.eval, config.algorithm.name)
    every = config.eval.every_n_steps
    logger.info("rollouts: %d episodes of %s %s on %d rank(s); best_model/ by success rate",
                config.eval.episodes, config.eval.env, f"every {every} steps and at the end" if every else "at the end",
                accelerator.num_processes)
    return evaluator


__all__ = ["RolloutEvaluator", "build_rollouts"]

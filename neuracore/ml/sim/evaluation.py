"""Closed-loop evaluation of a `Policy` in a simulated task: used by `tools/evaluate.py` and by training.

    env = env_for_policy(policy, "demo")
    report = evaluate(policy, env, episodes=50, seed=0)      # seeds 100000.. never a training seed

Each episode runs one `policy.select_action` per control step (chunks executed open-loop or
temporally ensembled, as the policy was built); the report has the success rate, the mean
highest reward and the share of episodes reaching each reward stage (ALOHA: 1 touched .. 4
success), the mean episode length and the seconds per step (policy + simulation + rendering).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.sim.envs import EVAL_SEED_OFFSET, SimEnv, make_env


def env_for_policy(policy: Any, name: str, resize_mode: str = "letterbox") -> SimEnv:
    """Env `name` returning camera frames at the sizes the policy's model was trained on."""
    sizes = {}
    feature = policy.description.inputs.get(DataType.RGB_IMAGES)
    if feature is not None:
        _, h, w = feature.shape
        sizes = {cam: (h, w) for cam in feature.items}
    env = make_env(name, image_size=sizes, resize_mode=resize_mode)
    output = policy.output_items.get(DataType.JOINT_TARGET_POSITIONS.value)
    if output is None:
        raise ConfigError(f"env {name!r} is driven by JOINT_TARGET_POSITIONS; the model predicts "
                          f"{', '.join(policy.output_items) or 'nothing'}")
    missing = [n for n in env.action_names if n not in output]
    if missing:
        raise ConfigError(f"env {name!r}: the model's JOINT_TARGET_POSITIONS lack items {', '.join(missing)} "
                          f"(it predicts {', '.join(output)})")
    return env


def rollout(policy: Any, seed: int, env: SimEnv) -> dict[str, Any]:
    """One episode from env seed `seed`: success, highest reward, length in steps, seconds per step."""
    output = policy.output_items[DataType.JOINT_TARGET_POSITIONS.value]
    order = [output.index(n) for n in env.action_names]  # the model's item order -> the env's
    policy.reset()
    obs = env.reset(seed)
    started = time.perf_counter()
    while not env.done:
        action = policy.select_action(obs)[DataType.JOINT_TARGET_POSITIONS.value]
        obs = env.step(np.asarray(action)[order]).observation
    seconds = time.perf_counter() - started
    return {"success": bool(env.success), "max_reward": float(env.max_reward_reached), "steps": env.steps,
            "seconds_per_step": seconds / max(env.steps, 1)}


def evaluation_seeds(episodes: int, seed: int = 0) -> list[int]:
    """Env seeds of `episodes` evaluation episodes: `EVAL_SEED_OFFSET + seed + i`, never a training seed."""
    return [EVAL_SEED_OFFSET + seed + i for i in range(episodes)]


def evaluate(policy: Any, env: SimEnv, episodes: int, seed: int = 0) -> dict[str, Any]:
    """Roll `policy` out for `episodes` episodes and summarise them (see module doc)."""
    if episodes < 1:
        raise ConfigError(f"episodes={episodes}: must be at least 1")
    seeds = evaluation_seeds(episodes, seed)
    started = time.perf_counter()
    results = [rollout(policy, s, env) for s in seeds]
    return summarise(results, env, seeds, policy, time.perf_counter() - started)


def summarise(results: list[dict[str, Any]], env: SimEnv, seeds: list[int], policy: Any, seconds: float) -> dict[str, Any]:
    """The report of `evaluate` from per-episode `rollout` results (in seed order)."""
    successes = sum(r["success"] for r in results)
    stages = range(1, int(env.max_reward) + 1) if env.max_reward > 1 else []
    return {
        "env": env.name,
        "episodes": len(results),
        "seeds": [seeds[0], seeds[-1]],
        "successes": successes,
        "success_rate": successes / len(results),
        "mean_max_reward": float(np.mean([r["max_reward"] for r in results])),
        "stage_rates": {str(k): float(np.mean([r["max_reward"] >= k for r in results])) for k in stages},
        "mean_steps": float(np.mean([r["steps"] for r in results])),
        "seconds_per_step": float(np.mean([r["seconds_per_step"] for r in results])),
        "temporal_ensemble_coeff": policy.temporal_ensemble_coeff,
        "n_action_steps": policy.n_action_steps,
        "seconds": round(seconds, 1),
    }

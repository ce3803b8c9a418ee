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
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.sim.envs import EVAL_SEED_OFFSET, SimEnv, make_env

MATCH_ITEMS = ("name", "position")


@dataclass(frozen=True)
class ItemMatch:
    """How an env's items line up with a model's: by name (the default) or by position (`match_items=position`)."""

    actions: list[int]  # for each of env.action_names, its index in the model's JOINT_TARGET_POSITIONS vector
    joints: dict[str, str]  # env joint name -> the model's JOINT_POSITIONS item it is fed as (empty: same names)


def match_items(policy: Any, env: SimEnv, how: str = "name") -> ItemMatch:
    """The env's action (and joint) items in the model's terms, or a one-line error naming what is missing.

    `position`: the model's items are taken in order for the env's (same count required), for data
    imported with other names for the same joints (e.g. LeRobot's `motor_0, motor_1`)."""
    if how not in MATCH_ITEMS:
        raise ConfigError(f"match_items={how!r}: valid: {', '.join(MATCH_ITEMS)}")
    output = policy.output_items.get(DataType.JOINT_TARGET_POSITIONS.value)
    if output is None:
        raise ConfigError(f"env {env.name!r} is driven by JOINT_TARGET_POSITIONS; the model predicts "
                          f"{', '.join(policy.output_items) or 'nothing'}")
    if how == "name":
        missing = [n for n in env.action_names if n not in output]
        if missing:
            raise ConfigError(f"env {env.name!r}: the model's JOINT_TARGET_POSITIONS lack items {', '.join(missing)} "
                              f"(it predicts {', '.join(output)}; items named otherwise: match_items=position)")
        return ItemMatch([output.index(n) for n in env.action_names], {})
    inputs = policy.description.inputs.get(DataType.JOINT_POSITIONS)
    joints = list(inputs.items) if inputs is not None else []
    for kind, model_items, env_items in (("JOINT_TARGET_POSITIONS", output, env.action_names),
                                         ("JOINT_POSITIONS", joints or env.joint_names, env.joint_names)):
        if len(model_items) != len(env_items):
            raise ConfigError(f"env {env.name!r}, match_items=position: the model has {len(model_items)} {kind} items "
                              f"({', '.join(model_items)}), the env {len(env_items)} ({', '.join(env_items)})")
    return ItemMatch(list(range(len(env.action_names))), dict(zip(env.joint_names, joints)) if joints else {})


def env_for_policy(policy: Any, name: str, resize_mode: str = "letterbox", how: str = "name") -> SimEnv:
    """Env `name` returning camera frames at the sizes the policy's model was trained on (items checked)."""
    sizes = {}
    feature = policy.description.inputs.get(DataType.RGB_IMAGES)
    if feature is not None:
        _, h, w = feature.shape
        sizes = {cam: (h, w) for cam in feature.items}
    env = make_env(name, image_size=sizes, resize_mode=resize_mode)
    try:
        match_items(policy, env, how)
    except ConfigError:
        env.close()
        raise
    return env


def rollout(policy: Any, seed: int, env: SimEnv, how: str = "name") -> dict[str, Any]:
    """One episode from env seed `seed`: success, highest reward, length in steps, seconds per step."""
    match = match_items(policy, env, how)
    joints = DataType.JOINT_POSITIONS.value
    policy.reset()
    obs = env.reset(seed)
    started = time.perf_counter()
    while not env.done:
        if match.joints:
            obs = {**obs, joints: {match.joints[k]: v for k, v in obs[joints].items()}}
        action = policy.select_action(obs)[DataType.JOINT_TARGET_POSITIONS.value]
        obs = env.step(np.asarray(action)[match.actions]).observation
    seconds = time.perf_counter() - started
    return {"success": bool(env.success), "max_reward": float(env.max_reward_reached), "steps": env.steps,
            "seconds_per_step": seconds / max(env.steps, 1)}


def evaluation_seeds(episodes: int, seed: int = 0) -> list[int]:
    """Env seeds of `episodes` evaluation episodes: `EVAL_SEED_OFFSET + seed + i`, never a training seed."""
    return [EVAL_SEED_OFFSET + seed + i for i in range(episodes)]


def evaluate(policy: Any, env: SimEnv, episodes: int, seed: int = 0, how: str = "name") -> dict[str, Any]:
    """Roll `policy` out for `episodes` episodes and summarise them (see module doc)."""
    if episodes < 1:
        raise ConfigError(f"episodes={episodes}: must be at least 1")
    seeds = evaluation_seeds(episodes, seed)
    started = time.perf_counter()
    results = [rollout(policy, s, env, how) for s in seeds]
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

"""Roll a trained policy out in the demo pick-and-place task and print its success rate.

    python tools/evaluate.py ~/.neuracore/training/runs/<run>/model --episodes 50
    python tools/evaluate.py latest                                # the newest run's final model
    python tools/evaluate.py --untrained cnnmlp --episodes 50     # baseline: a random-init model
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from neuracore.ml.core.errors import NeuracoreError, run_cli

EVAL_SEED_OFFSET = 100_000  # evaluation episodes never overlap the demo dataset's seeds


def rollout(policy, seed: int) -> tuple[bool, int]:
    """One episode, one `policy.select_action` per control step (chunks or temporal ensembling)."""
    from neuracore.ml.sim.pick_place import PickPlaceEnv

    env = PickPlaceEnv(seed)
    policy.reset()
    obs = env.observe()
    while not env.done:
        action = policy.select_action(
            {
                "JOINT_POSITIONS": obs.joint_positions,
                "RGB_IMAGES": obs.image[None],
                "LANGUAGE": obs.language,
            }
        )["JOINT_TARGET_POSITIONS"]
        obs = env.step(action)
    return env.success, env.steps


def untrained_policy(algorithm: str, horizon: int, seed: int, **rollout_options):
    """A freshly initialised model of `algorithm` built for the demo dataset (the baseline)."""
    import torch

    from neuracore.ml.core.model import build_model
    from neuracore.ml.core.model_init import ModelInitDescription
    from neuracore.ml.core.registry import get_algorithm
    from neuracore.ml.datasets.data_spec import resolve_model_data_spec
    from neuracore.ml.datasets.format import open_dataset
    from neuracore.ml.export.policy import Policy

    torch.manual_seed(seed)
    dataset = open_dataset("demo")
    cls = get_algorithm(algorithm)
    inputs, outputs = resolve_model_data_spec(dataset.spec, cls, None, None, None, None)
    mid = ModelInitDescription(
        inputs={dt: f.feature_spec(dataset.spec) for dt, f in inputs.items()},
        outputs={dt: f.feature_spec(dataset.spec) for dt, f in outputs.items()},
        output_prediction_horizon=horizon,
        frequency=dataset.spec.frequency,
    )
    model = build_model(cls, mid, {})
    return Policy(model.eval(), {"algorithm": {"name": algorithm}}, **rollout_options)


def resolve_model_folder(value: str) -> Path:
    """`latest` → newest run's model; a run folder → its model/; otherwise the folder itself."""
    from neuracore.ml.utils.paths import runs_root

    if value == "latest":
        runs = [p for p in runs_root().glob("*") if (p / "model" / "config.json").is_file()]
        if not runs:
            raise NeuracoreError(f"latest: no finished run with a model/ folder under {runs_root()}")
        return max(runs, key=lambda p: (p / "model" / "config.json").stat().st_mtime) / "model"
    path = Path(value).expanduser()
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "model", nargs="?",
        help="exported model folder (<run>/model or <run>/best_model), a run folder, or `latest` (newest run)",
    )
    parser.add_argument("--untrained", metavar="ALGORITHM", help="evaluate a randomly initialised model instead")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--execute-steps", type=int, default=8, help="actions executed from each predicted chunk")
    parser.add_argument(
        "--temporal-ensemble", type=float, metavar="COEFF",
        help="query the policy every step and execute the exponentially weighted mean of all predictions "
             "for that step (ACT's temporal ensembling, e.g. 0.01); replaces --execute-steps",
    )
    parser.add_argument("--seed", type=int, default=0, help="first evaluation episode (offset by 100000)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.untrained):
        parser.error("give a model folder or --untrained ALGORITHM (not both)")
    return run_cli("evaluate", _evaluate, args)


def _evaluate(args: argparse.Namespace) -> int:
    """Roll the policy out (errors are reported by `run_cli`)."""
    from neuracore.ml.export.model_folder import recover_export
    from neuracore.ml.export.policy import Policy

    if args.episodes < 1:
        raise NeuracoreError(f"--episodes {args.episodes}: must be at least 1")
    if args.temporal_ensemble is not None:
        options = {"temporal_ensemble_coeff": args.temporal_ensemble, "n_action_steps": 1}
    else:
        options = {"n_action_steps": args.execute_steps}
    if args.model:
        args.model = str(resolve_model_folder(args.model))
        recover_export(Path(args.model))  # an export replace killed halfway: the previous export is put back
        if not Path(args.model).is_dir():
            what = "not a folder" if Path(args.model).exists() else "no such folder"
            raise NeuracoreError(f"{args.model}: {what} (give an exported model folder, a run folder or `latest`)")
        if not (Path(args.model) / "config.json").is_file():
            raise NeuracoreError(f"{args.model}: not an exported model folder (no config.json)")
        policy = Policy.from_pretrained(args.model, device=args.device, **options)
    else:
        policy = untrained_policy(args.untrained, 20, args.seed, **options)
    started = time.perf_counter()
    results = [rollout(policy, EVAL_SEED_OFFSET + args.seed + i) for i in range(args.episodes)]
    successes = sum(s for s, _ in results)
    report = {
        "model": args.model or f"untrained {args.untrained}",
        "episodes": args.episodes,
        "successes": successes,
        "success_rate": successes / max(args.episodes, 1),
        "mean_steps": float(np.mean([n for _, n in results])),
        "temporal_ensemble_coeff": policy.temporal_ensemble_coeff,
        "n_action_steps": policy.n_action_steps,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"success rate {report['success_rate']:.0%} ({successes}/{args.episodes} episodes), "
            f"mean episode length {report['mean_steps']:.1f} steps, {report['seconds']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

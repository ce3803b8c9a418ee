"""Roll a trained policy out in a simulated task and print its success rate.

    python tools/evaluate.py ~/.neuracore/training/runs/<run>/model --episodes 50
    python tools/evaluate.py latest                                # the newest run's final model
    python tools/evaluate.py --untrained cnnmlp --episodes 50     # baseline: a random-init model
    python tools/evaluate.py latest --env aloha_transfer_cube --temporal-ensemble 0.01
    python tools/evaluate.py latest --env pusht --episodes 50

Envs: demo (default), aloha_transfer_cube, aloha_insertion, pusht (the last three need
`pip install -e ".[sim]"`). Episode i uses seed 100000 + --seed + i, never a training seed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from neuracore.ml.core.errors import CliParser, NeuracoreError, run_cli


def untrained_policy(algorithm: str, horizon: int, seed: int, dataset_name: str = "demo", **rollout_options):
    """A freshly initialised model of `algorithm` built for `dataset_name` (the baseline)."""
    import torch

    from neuracore.ml.core.model import build_model
    from neuracore.ml.core.model_init import ModelInitDescription
    from neuracore.ml.core.registry import get_algorithm
    from neuracore.ml.datasets.data_spec import resolve_model_data_spec
    from neuracore.ml.datasets.format import open_dataset
    from neuracore.ml.export.policy import Policy

    torch.manual_seed(seed)
    dataset = open_dataset(dataset_name)
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
    parser = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "model", nargs="?",
        help="exported model folder (<run>/model or <run>/best_model), a run folder, or `latest` (newest run)",
    )
    parser.add_argument("--untrained", metavar="ALGORITHM", help="evaluate a randomly initialised model instead")
    parser.add_argument("--env", default="demo",
                        help="simulated task: demo, aloha_transfer_cube, aloha_insertion, pusht (default demo)")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--execute-steps", type=int, default=8, help="actions executed from each predicted chunk")
    parser.add_argument(
        "--temporal-ensemble", type=float, metavar="COEFF",
        help="query the policy every step and execute the exponentially weighted mean of all predictions "
             "for that step (ACT's temporal ensembling, e.g. 0.01); replaces --execute-steps",
    )
    parser.add_argument("--seed", type=int, default=0, help="first evaluation episode (offset by 100000)")
    parser.add_argument("--dataset", default="demo", help="with --untrained: the dataset the model is built for")
    parser.add_argument("--resize-mode", default="letterbox", metavar="letterbox|crop",
                        help="how rendered frames are resized to the model's image size (as on import)")
    parser.add_argument("--match-items", default="name", metavar="name|position",
                        help="env items to the model's by name (default) or by position, for data imported under "
                             "other item names (e.g. LeRobot's motor_0, motor_1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.untrained):
        parser.error("give a model folder or --untrained ALGORITHM (not both)")
    return run_cli("evaluate", _evaluate, args)


def _evaluate(args: argparse.Namespace) -> int:
    """Roll the policy out (errors are reported by `run_cli`)."""
    from neuracore.ml.datasets.images import check_resize_mode
    from neuracore.ml.export.model_folder import recover_export
    from neuracore.ml.export.policy import Policy
    from neuracore.ml.sim.envs import ENVS
    from neuracore.ml.sim.evaluation import MATCH_ITEMS, env_for_policy, evaluate

    if args.episodes < 1:
        raise NeuracoreError(f"--episodes {args.episodes}: must be at least 1")
    if args.env not in ENVS:  # before a model is loaded: a typo costs nothing
        raise NeuracoreError(f"--env {args.env!r}: unknown; valid: {', '.join(ENVS)}")
    check_resize_mode(args.resize_mode)
    if args.match_items not in MATCH_ITEMS:
        raise NeuracoreError(f"--match-items {args.match_items!r}: valid: {', '.join(MATCH_ITEMS)}")
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
        policy = untrained_policy(args.untrained, 20, args.seed, args.dataset, **options)
    env = env_for_policy(policy, args.env, args.resize_mode, args.match_items)
    try:
        report = {"model": args.model or f"untrained {args.untrained}",
                  **evaluate(policy, env, args.episodes, args.seed, args.match_items)}
    finally:
        env.close()
    if args.json:
        print(json.dumps(report))
    else:
        stages = ", ".join(f"{k}: {v:.0%}" for k, v in report["stage_rates"].items())
        print(
            f"{args.env}: success rate {report['success_rate']:.0%} ({report['successes']}/{args.episodes} episodes), "
            f"mean max reward {report['mean_max_reward']:.2f}" + (f" (stages {stages})" if stages else "")
            + f", mean episode length {report['mean_steps']:.1f} steps, "
            f"{report['seconds_per_step'] * 1000:.1f} ms/step, {report['seconds']} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

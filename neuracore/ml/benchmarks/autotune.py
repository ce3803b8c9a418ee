"""batch_size=auto: the probes, the chosen size, the search time and the largest size that truly fits.

    python tools/benchmark.py autotune algorithm=cnnmlp                       # on this device
    python tools/benchmark.py autotune algorithm=cnnmlp --simulate-limit 300  # CPU: pretend memory ends at 300

Runs the same search as training (`neuracore.ml.trainers.autotune`) on real batches of the
dataset (default `demo`), then probes every size between the chosen one and the first failure to
find the largest size that fits, so the cost of the safety margin and of the bisection tolerance
can be seen.
"""

from __future__ import annotations

import argparse
import time

from neuracore.ml.core.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of `tools/benchmark.py autotune`."""
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. algorithm=cnnmlp dataset_name=demo")
    parser.add_argument("--strategy", default="memory", choices=["memory", "throughput", "auto"],
                        help="search strategy (memory: grow to the first OOM, then bisect)")
    parser.add_argument("--simulate-limit", type=int, default=None,
                        help="treat probes above this many samples as out of memory (to try the search on CPU)")
    parser.add_argument("--max-batch-size", type=int, default=1024)


def run(args: argparse.Namespace) -> int:
    """Run the search and the exhaustive check; print both."""
    from neuracore.ml.config.preflight import compose_config
    from neuracore.ml.config.schema import validate_config
    from neuracore.ml.core.model import build_model
    from neuracore.ml.datasets.format import open_dataset
    from neuracore.ml.train import CONFIG_DIR
    from neuracore.ml.trainers.accelerator import make_accelerator, start_distributed
    from neuracore.ml.trainers.autotune import autotune_batch_size
    from neuracore.ml.trainers.batch_plan import _batch_maker
    from neuracore.ml.trainers.data import build_data

    overrides = list(args.overrides)
    if not any(o.startswith("dataset_name=") for o in overrides):
        overrides.append("dataset_name=demo")
    if not any(o.startswith("algorithm=") for o in overrides):
        raise ConfigError("autotune: give algorithm=<name> (e.g. algorithm=cnnmlp)")
    config = validate_config(compose_config(overrides + ["num_workers=0"], CONFIG_DIR))
    import tempfile
    from pathlib import Path

    state = start_distributed(config)
    accelerator = make_accelerator(config, Path(tempfile.mkdtemp(prefix="autotune-")))
    data = build_data(config, open_dataset(config.dataset_name))
    model = build_model(config.algorithm.cls, data.model_init, config.algorithm.hyperparameters)
    optimizers = model.configure_optimizers()
    prepared = accelerator.prepare(model, *optimizers)
    model, optimizers = prepared[0], list(prepared[1:])
    cap = min(args.max_batch_size, len(data.train))
    make_batch = _batch_maker(data, accelerator, config.seed)
    common = {"cap": cap, "max_grad_norm": config.training.max_grad_norm, "memory_margin": config.autotune.memory_margin,
                  "cpu_max_step_seconds": config.autotune.cpu_max_step_seconds,
                  "cpu_time_budget_s": config.autotune.cpu_time_budget_s, "simulated_limit": args.simulate_limit}
    result = autotune_batch_size(accelerator, model, optimizers, make_batch, strategy=args.strategy, **common)
    print(f"device {accelerator.device}, world size {state.num_processes}, strategy {args.strategy}, cap {cap}")
    for probe in result.probes:
        peak = "n/a" if probe.peak_bytes is None else f"{probe.peak_bytes / 2**20:8.0f} MiB"
        print(f"  probe {probe.batch_size:5d}: {probe.note:<32} peak {peak}  {probe.seconds:6.2f} s")
    print(f"chosen batch size {result.batch_size} after {len(result.probes)} probes in {result.seconds:.1f} s")
    if result.largest_failure is None:
        print("no probe failed: the chosen size is the cap")
        return 0
    started = time.perf_counter()
    largest = result.batch_size
    for size in range(result.batch_size + 1, result.largest_failure):
        one = autotune_batch_size(accelerator, model, optimizers, make_batch, strategy="memory", start=size,
                                  **{**common, "cap": size})  # exactly one probe at `size`
        if one.batch_size < size:
            break
        largest = size
    print(f"largest size that fits (exhaustive check of {result.batch_size + 1}..{result.largest_failure - 1}): "
          f"{largest} in {time.perf_counter() - started:.1f} s; chosen/largest = {result.batch_size / largest:.3f}")
    return 0

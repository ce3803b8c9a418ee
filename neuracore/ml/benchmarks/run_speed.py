"""Speed of a finished training run: `tools/benchmark.py speed <run_dir> [--skip-steps N]`.

Reads the run's TensorBoard scalars that the loop logs every `logging_frequency` steps
(`perf/samples_per_second`, `perf/step_time_s`, `perf/data_wait_fraction`, GPU memory) and prints
their medians over the windows after `--skip-steps` (warm-up: compile, CUDA-graph capture, cuDNN
autotuning). This is speed through the normal training command, data loading included.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from neuracore.ml.core.errors import ConfigError

SCALARS = {
    "perf/samples_per_second": ("samples/s", 1.0, "{:.5g}"),
    "perf/step_time_s": ("ms/step", 1e3, "{:.4g}"),
    "perf/data_wait_fraction": ("data wait", 100.0, "{:.1f} %"),
    "memory/gpu_peak_allocated_gb": ("peak GPU GB", 1.0, "{:.1f}"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of `tools/benchmark.py speed`."""
    parser.add_argument("run_dir", type=Path, help="a run folder (<NEURACORE_HOME>/training/runs/<name>)")
    parser.add_argument("--skip-steps", type=int, default=20, help="ignore logging windows ending at or before this step")


def read_speed(run_dir: Path, skip_steps: int) -> dict[str, float]:
    """Median of each perf scalar over the logging windows after `skip_steps`, plus the window count."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = run_dir / "tensorboard"
    if not folder.is_dir():
        raise ConfigError(f"{run_dir}: no tensorboard/ folder; give a run folder written by neuracore.ml.train")
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    if "perf/samples_per_second" not in tags:
        raise ConfigError(f"{run_dir}: the run logged no perf/samples_per_second (did it reach a logging step?)")
    out: dict[str, float] = {}
    for tag in SCALARS:
        if tag in tags:
            values = [e.value for e in acc.Scalars(tag) if e.step > skip_steps]
            if values:
                out[tag] = statistics.median(values)
    out["windows"] = len([e for e in acc.Scalars("perf/samples_per_second") if e.step > skip_steps])
    if not out["windows"]:
        raise ConfigError(f"--skip-steps {skip_steps}: no logging window after it; train longer or skip fewer")
    return out


def run(args: argparse.Namespace) -> int:
    """Print the medians of the run's speed scalars after warm-up."""
    speed = read_speed(args.run_dir, args.skip_steps)
    parts = [fmt.format(speed[tag] * scale) + f" {label}" if "%" not in fmt else f"{label} " + fmt.format(speed[tag] * scale)
             for tag, (label, scale, fmt) in SCALARS.items() if tag in speed]
    print(f"{args.run_dir.name}: {', '.join(parts)} (median of {int(speed['windows'])} logging windows after step "
          f"{args.skip_steps})")
    return 0

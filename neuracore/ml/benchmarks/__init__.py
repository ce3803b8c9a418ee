"""Benchmarks behind `tools/benchmark.py <name>`: one module per benchmark.

Each module exposes `add_arguments(parser)` and `run(args) -> int`, prints samples/s and, where
there is one, the ratio to a baseline measured in the same process.
"""

BENCHMARKS = {
    "data": "neuracore.ml.benchmarks.data_loading",
    "train": "neuracore.ml.benchmarks.training",
    "autotune": "neuracore.ml.benchmarks.autotune",
    "speed": "neuracore.ml.benchmarks.run_speed",
    "memory": "neuracore.ml.benchmarks.memory_plan",
    "augment": "neuracore.ml.benchmarks.augmentation",
}

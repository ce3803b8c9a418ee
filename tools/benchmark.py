"""Benchmarks: `python tools/benchmark.py <data|train|autotune|speed|memory> ...`.

    python tools/benchmark.py data demo
    python tools/benchmark.py train algorithm=cnnmlp
    python tools/benchmark.py autotune algorithm=cnnmlp
    python tools/benchmark.py memory algorithm=pi05 --gpu-gb 24,40,80,141 --batch-size 32 --cameras 3
"""

from __future__ import annotations

import argparse
import importlib
import sys

from neuracore.ml.benchmarks import BENCHMARKS
from neuracore.ml.core.errors import CliParser, run_cli


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the named benchmark module."""
    parser = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    modules = {}
    for name, module_path in BENCHMARKS.items():
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as exc:
            if exc.name != module_path:
                raise
            continue  # not built yet
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0]))
    args = parser.parse_args(argv)
    return run_cli("benchmark", modules[args.benchmark].run, args)

if __name__ == "__main__":
    sys.exit(main())

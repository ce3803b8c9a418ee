"""`tools/benchmark.py data URL`: the same loader numbers for a dataset read from object storage.

    python tools/benchmark.py data s3://bucket/datasets/my_ds --cache-gb 2     # shards.json needed
    python tools/benchmark.py data lab/my_ds@v1 --remote --cache-gb 2          # a pushed revision

Windows come in the training order (`ShardSampler`, epochs one after another), through a shard cache
that starts empty for every worker count (a fresh temporary folder unless --cache-dir); after each
rate, a line with the cache's hits, misses and megabytes downloaded over that run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from neuracore.ml.config.schema import LoaderOptions
from neuracore.ml.core.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--remote`, `--cache-gb` and `--cache-dir` options of `tools/benchmark.py data`."""
    parser.add_argument("--remote", action="store_true",
                        help="read NAME (org/name[@rev] in hub storage) shard by shard; implied by a URL NAME "
                             "(s3://, gs://, hf://, file://)")
    parser.add_argument("--cache-gb", type=float, default=20.0, help="remote: bound of the shard cache (GB)")
    parser.add_argument("--cache-dir", help="remote: shard cache folder (default: a fresh temporary one)")


def wanted(args: argparse.Namespace) -> bool:
    """Whether NAME is read from storage."""
    from neuracore.ml.datasets.remote import is_url

    return bool(args.remote) or is_url(args.name)


def open_remote(args: argparse.Namespace) -> Any:
    """The dataset at NAME, read on demand into the cache."""
    from neuracore.ml.datasets.remote import check_url, is_url, open_remote_dataset

    if not args.cache_gb > 0:
        raise ConfigError(f"--cache-gb {args.cache_gb}: must be > 0")
    if is_url(args.name):
        check_url(args.name)
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="neuracore-bench-cache-")
    args._temporary_cache = None if args.cache_dir else cache_dir
    return open_remote_dataset(args.name, LoaderOptions(stream=True, cache_max_gb=args.cache_gb,
                                                        cache_dir=cache_dir))


def training_order(windows: Any, args: argparse.Namespace, samples: int) -> list[int]:
    """`samples` window indices in the training order, from an empty cache (a temporary one is emptied)."""
    from neuracore.ml.datasets.remote import ShardSampler

    cache = windows.table.cache
    if getattr(args, "_temporary_cache", None):
        for sub in cache.folder.glob("??"):
            shutil.rmtree(sub, ignore_errors=True)
    windows.table._open.clear()
    args._stats_before = cache.stats()
    sampler = ShardSampler(windows, args.batch_size, 1, 0, cache.max_bytes)
    order: list[int] = []
    epoch = 0
    while len(order) < samples and len(sampler):
        sampler.set_epoch(epoch)
        order += list(sampler)
        epoch += 1
    return order[:samples]


def cache_line(windows: Any, args: argparse.Namespace) -> str:
    """Hits, misses and downloads of the run just measured (main process and workers)."""
    from neuracore.ml.datasets.remote import hit_rate

    now, before = windows.table.cache.stats(), args._stats_before
    hits, misses, down = (now[k] - before[k] for k in ("hits", "misses", "downloaded_bytes"))
    total = sum(s.size for s in windows.table.shards)
    return (f"  shard cache (at most {args.cache_gb:g} GB, dataset {total / 2**30:.3f} GB): {hits} hits, {misses} "
            f"misses (hit rate {hit_rate(hits, misses):.1f}%), {down / 2**20:.1f} MB downloaded "
            f"({down / total:.2f}x the dataset)")


def cleanup(args: argparse.Namespace) -> None:
    """Remove a temporary cache folder."""
    if getattr(args, "_temporary_cache", None):
        shutil.rmtree(Path(args._temporary_cache), ignore_errors=True)

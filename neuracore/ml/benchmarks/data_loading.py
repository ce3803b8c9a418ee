"""Data loading: training windows per second for 0, 1 and 2 DataLoader workers, and peak RSS.

    python tools/benchmark.py data                 # a synthetic dataset: 2 cameras 224x224, 14 joints
    python tools/benchmark.py data my_dataset      # any materialised dataset (all cameras and joints)
    python tools/benchmark.py data large           # 100k frames, 3 cameras 480x640, imported as 224x224 JPEG

Each sample is what training reads: JOINT_POSITIONS and RGB_IMAGES at t, JOINT_TARGET_POSITIONS
t..t+H-1 (H = --horizon, default 100), collated into batches exactly as the training loop does.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from neuracore.ml.benchmarks import remote_loading
from neuracore.ml.benchmarks.large_dataset import LARGE
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.datasets.format import IMAGE_ENCODINGS

SYNTHETIC = "synthetic"
_CAMERAS = ["cam_high", "cam_wrist"]
_JOINTS = [f"joint_{i}" for i in range(14)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of `tools/benchmark.py data`."""
    parser.add_argument("name", nargs="?", default=SYNTHETIC,
                        help=f"dataset name, or '{SYNTHETIC}' (default) for a generated 224x224 two-camera dataset, "
                             f"or '{LARGE}' for a large recording imported compactly (--frames-total, --cameras)")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per worker count (after warm-up)")
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--episodes", type=int, default=6, help="synthetic: episodes")
    parser.add_argument("--frames", type=int, default=200, help="synthetic: frames per episode")
    parser.add_argument("--image-encoding", choices=IMAGE_ENCODINGS, default="raw",
                        help="synthetic: how RGB frames are stored")
    parser.add_argument("--frames-total", type=int, default=100_000, help="large: frames of the recording")
    parser.add_argument("--cameras", type=int, default=3, help="large: cameras")
    parser.add_argument("--source-size", default="480x640", metavar="HxW", help="large: recorded frame size")
    parser.add_argument("--image-size", default="224x224", metavar="HxW", help="large: stored frame size")
    parser.add_argument("--import-workers", type=int, default=2, help="large: import worker processes")
    parser.add_argument("--jpeg-quality", type=int, help="large, with --image-encoding jpeg (default 95)")
    remote_loading.add_arguments(parser)  # a URL NAME, or --remote: read from storage through the shard cache
    parser.add_argument("--torch-threads", type=int, help="torch intra-op threads in this process (collation "
                        "with workers=0 happens here; default: torch's)")


def _synthetic_episodes(episodes: int, frames: int, cameras: list[str] = _CAMERAS) -> Iterator:
    from neuracore.ml.datasets.materialize import Episode

    rng = np.random.default_rng(0)
    for _ in range(episodes):
        q = np.cumsum(rng.normal(0, 0.01, (frames, len(_JOINTS))), 0).astype(np.float32)
        # Smooth gradients with sensor-like noise, shifting over time: compresses like camera frames.
        y, x = np.mgrid[0:224, 0:224]
        images = {}
        for c in cameras:
            base = np.stack([x, y, (x + y) // 2], -1) + rng.integers(0, 64, 3)
            noise = rng.integers(0, 12, (frames, 224, 224, 3))
            shift = np.arange(frames)[:, None, None, None]
            images[c] = ((base[None] + shift + noise) % 256).astype(np.uint8)
        yield Episode(
            robot="bimanual",
            data={
                DataType.JOINT_POSITIONS: {n: q[:, j] for j, n in enumerate(_JOINTS)},
                DataType.JOINT_TARGET_POSITIONS: {n: np.roll(q[:, j], -1) for j, n in enumerate(_JOINTS)},
                DataType.RGB_IMAGES: images,
            },
        )


def make_synthetic_dataset(name: str, root: Path | None, episodes: int, frames: int, encoding: str = "raw",
                           cameras: int = 2) -> float:
    """Materialise the synthetic benchmark dataset (224x224 cameras, 14 joints) as `name`; returns import frames/s."""
    from neuracore.ml.datasets.materialize import DatasetLayout, materialize

    names = _CAMERAS[:cameras] if cameras <= len(_CAMERAS) else [f"cam_{i}" for i in range(cameras)]
    layout = DatasetLayout(
        robots={"bimanual": {DataType.JOINT_POSITIONS: _JOINTS, DataType.JOINT_TARGET_POSITIONS: _JOINTS,
                             DataType.RGB_IMAGES: names}},
        item_shapes={DataType.RGB_IMAGES: {c: [224, 224, 3] for c in names}},
        image_encoding=encoding,
    )
    start = time.perf_counter()
    materialize(name, _synthetic_episodes(episodes, frames, names), layout, 30.0, root=root)
    return episodes * frames / (time.perf_counter() - start)


def _make_synthetic(root: Path, episodes: int, frames: int, encoding: str = "raw") -> float:
    """Write the two-camera synthetic dataset under `root`; returns import frames/s."""
    return make_synthetic_dataset(SYNTHETIC, root, episodes, frames, encoding)


def _memory_mb() -> tuple[float, float, float]:
    """(RSS of this process, PSS of this process, PSS summed over its live children) in MB.

    PSS splits pages shared by forked workers (torch, the memory-mapped table) among them, so
    the sum is what the machine really spends; RSS would count every shared page once per worker.
    """
    import psutil

    me = psutil.Process()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            children += child.memory_full_info().pss
        except psutil.Error:
            pass
    info = me.memory_full_info()
    return info.rss / 2**20, info.pss / 2**20, children / 2**20


def _import_large(args: argparse.Namespace, root: Path) -> None:
    """Generate and import the large recording (in a child process, kept out of this one's memory)."""
    from neuracore.ml.benchmarks.large_dataset import generate_seconds, import_large
    from neuracore.ml.datasets.images import parse_image_size

    sizes = {}
    for key in ("source_size", "image_size"):
        try:
            parsed = parse_image_size(getattr(args, key))
        except ConfigError:
            parsed = None
        if parsed is None or set(parsed) != {"*"}:
            raise ConfigError(f"--{key.replace('_', '-')} {getattr(args, key)!r}: give one HxW, e.g. 480x640")
        sizes[key] = parsed["*"]
    if args.frames_total < 1 or args.cameras < 1 or args.import_workers < 0:
        raise ConfigError("--frames-total and --cameras must be >= 1, --import-workers >= 0")
    encoding = "jpeg" if args.image_encoding == "raw" else args.image_encoding  # large: compact by default
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        gen = pool.submit(generate_seconds, args.cameras, sizes["source_size"]).result()
        r = pool.submit(import_large, LARGE, root, args.frames_total, args.cameras, sizes["source_size"],
                        sizes["image_size"], encoding, args.jpeg_quality, args.import_workers).result()
    h, w = sizes["source_size"]
    print(f"large recording: {r['frames']} frames ({r['episodes']} episodes), {args.cameras} cameras {h}x{w} "
          f"(raw {r['raw_source_bytes_per_frame'] / 1e6:.2f} MB/frame), 14 joints, 50 Hz")
    print(f"import --image-size {args.image_size} --image-encoding {encoding} --workers {args.import_workers}: "
          f"{r['frames_per_second']:.1f} frames/s ({r['seconds']:.0f} s; generating alone {1 / gen:.0f} frames/s "
          f"on one core), {r['bytes_per_frame'] / 1e3:.1f} kB/frame on disk ({r['bytes'] / 1e9:.2f} GB, "
          f"{r['raw_source_bytes_per_frame'] / r['bytes_per_frame']:.0f}x smaller than raw)")


def run(args: argparse.Namespace) -> int:
    """Print samples/s per worker count and peak RSS."""
    import torch

    from neuracore.ml.datasets.data_spec import resolve_features
    from neuracore.ml.datasets.format import open_dataset
    from neuracore.ml.datasets.windows import WindowDataset

    try:
        worker_counts = [int(w) for w in str(args.workers).split(",")]
    except ValueError:
        raise ConfigError(f"--workers {args.workers!r}: expected comma-separated integers like 0,1,2") from None
    tmp: Path | None = None
    root = None
    try:
        if args.name == SYNTHETIC:
            tmp = Path(tempfile.mkdtemp(prefix="neuracore-bench-data-"))
            root = tmp
            # In a child process, so that generating it does not count in this process's RSS.
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                rate = pool.submit(_make_synthetic, root, args.episodes, args.frames, args.image_encoding).result()
            print(f"synthetic dataset: {args.episodes} episodes x {args.frames} frames, 2 cameras 224x224 "
                  f"({args.image_encoding}), 14 joints; materialised at {rate:.0f} frames/s")
        elif args.name == LARGE:
            tmp = Path(tempfile.mkdtemp(prefix="neuracore-bench-large-"))
            root = tmp
            _import_large(args, root)
        remote = remote_loading.wanted(args)
        dataset = remote_loading.open_remote(args) if remote else open_dataset(args.name, root)
        spec = dataset.spec
        present = {dt for r in spec.robots.values() for dt in r}
        in_types = [dt for dt in (DataType.JOINT_POSITIONS, DataType.RGB_IMAGES) if dt.value in present]
        out_type = next((dt for dt in (DataType.JOINT_TARGET_POSITIONS, DataType.JOINT_POSITIONS)
                         if dt.value in present), None)
        if not in_types or out_type is None:
            raise ConfigError(f"dataset {args.name!r} has no JOINT_POSITIONS/RGB_IMAGES inputs or joint outputs")
        inputs = resolve_features(spec, in_types, None, "input_data_types")
        outputs = resolve_features(spec, [out_type], None, "output_data_types")
        windows = WindowDataset(dataset, inputs, outputs, range(len(spec.episodes)), 1, args.horizon)
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        shapes = {k: tuple(v.shape) for k, v in windows[0]["inputs"].items()}
        print(f"{args.name}: {len(windows)} windows, inputs {shapes}, horizon {args.horizon}, "
              f"batch {args.batch_size}, torch threads {torch.get_num_threads()}")
        for workers in worker_counts:
            loader = torch.utils.data.DataLoader(
                windows, batch_size=args.batch_size, num_workers=workers,
                sampler=remote_loading.training_order(windows, args, args.batch_size * (args.batches + 3)) if remote
                else torch.utils.data.RandomSampler(windows, replacement=True,
                                                    num_samples=args.batch_size * (args.batches + 3),
                                                    generator=torch.Generator().manual_seed(0)),
                prefetch_factor=4 if workers else None,
            )
            it = iter(loader)
            for _ in range(3):  # warm-up: worker start
                next(it)
            start = time.perf_counter()
            n = 0
            measure = 0.0
            peak = np.zeros(3)
            for i, batch in enumerate(it):
                n += len(batch["is_pad"])
                if i % 5 == 0:  # reading smaps costs milliseconds: sample, and keep it out of the timing
                    t = time.perf_counter()
                    peak = np.maximum(peak, _memory_mb())
                    measure += time.perf_counter() - t
            seconds = time.perf_counter() - start - measure
            print(f"workers={workers}: {n / seconds:8.1f} samples/s  ({n} samples in {seconds:.2f} s)  "
                  f"peak RSS {peak[0]:.0f} MB (PSS main {peak[1]:.0f} MB + workers {peak[2]:.0f} MB)")
            if remote:
                print(remote_loading.cache_line(windows, args))
            del it, loader
    finally:
        remote_loading.cleanup(args)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0

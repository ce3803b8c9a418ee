"""On-device augmentation: samples/s of the batched per-sample augmenter against torchvision, per sample.

    python tools/benchmark.py augment                                   # 2 cameras at 224x224, batch 32
    python tools/benchmark.py augment --batch-size 256 --cameras 3 --size 224x224 --device cuda

Both sides do the same work on the same uint8 batch `[B, 1, N, 3, H, W]` on the chosen device: a
random resized crop, a small rotation and LeRobot's colour jitter (brightness, contrast, saturation,
hue, sharpness) with parameters of their own for every (sample, camera). The baseline is what
torchvision offers for that — a v2 `Compose` called once per image, since one call draws one set of
parameters — and the ratio is ours over it, measured in this process.
"""

from __future__ import annotations

import argparse
import time

from neuracore.ml.core.errors import ConfigError

OPTIONS = {"enabled": True, "crop_scale": [0.8, 1.0], "rotation_degrees": 5.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of `tools/benchmark.py augment`."""
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--size", default="224x224", help="HxW of each camera frame")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per side (after one warm-up)")


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size={text!r}: expected HxW, e.g. 224x224") from None
    if not (8 <= h <= 4096 and 8 <= w <= 4096):
        raise ConfigError(f"--size={text!r}: each side must be in [8, 4096]")
    return h, w


def _timed(fn, repeats: int, sync) -> float:
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def run(args: argparse.Namespace) -> int:
    """Time both sides; print samples/s and the ratio."""
    import torch
    from torchvision.transforms import v2

    from neuracore.ml.core.augment import ImageAugmenter, parse_augmentation

    h, w = _size(args.size)
    if args.batch_size < 1 or args.cameras < 1 or args.repeats < 1:
        raise ConfigError("--batch-size, --cameras and --repeats must be >= 1")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device here")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 1, args.cameras, 3, h, w), dtype=torch.uint8, device=device)
    options = parse_augmentation(OPTIONS)
    augmenter = ImageAugmenter(options, [f"cam{i}" for i in range(args.cameras)])
    reference = v2.Compose([
        v2.RandomResizedCrop((h, w), scale=tuple(options.crop_scale), ratio=(1.0, 1.0), antialias=False),
        v2.RandomRotation(options.rotation_degrees),
        v2.ToDtype(torch.float32, scale=True),
        v2.ColorJitter(brightness=tuple(options.brightness), contrast=tuple(options.contrast),
                       saturation=tuple(options.saturation), hue=tuple(options.hue)),
        v2.RandomAdjustSharpness(sharpness_factor=options.sharpness[1], p=1.0),  # ours always sharpens too
    ])
    flat = images.reshape(-1, 3, h, w)

    def ours() -> None:
        augmenter.apply(images, augmenter.sample(images))

    def per_image() -> None:
        torch.stack([reference(img) for img in flat])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.no_grad():
        t_ours = _timed(ours, args.repeats, sync)
        t_ref = _timed(per_image, args.repeats, sync)
    n = args.batch_size
    print(f"augmentation on {device}: batch {n} x {args.cameras} camera(s) at {h}x{w}, crop + rotation + colour jitter")
    print(f"  neuracore (batched, per-sample parameters): {n / t_ours:10.1f} samples/s  ({t_ours * 1e3:.1f} ms/batch)")
    print(f"  torchvision v2, one call per image:         {n / t_ref:10.1f} samples/s  ({t_ref * 1e3:.1f} ms/batch)")
    print(f"  ratio: {t_ref / t_ours:.2f}x")
    return 0

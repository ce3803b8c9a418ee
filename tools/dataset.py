"""Datasets: import other formats, inspect, verify and delete (`$NEURACORE_HOME/datasets/<name>`).

    python tools/dataset.py import lerobot /data/my_lerobot_ds --name my_dataset
    python tools/dataset.py import hdf5 /data/act_episodes --name aloha --frequency 50
    python tools/dataset.py import episodes /data/recordings --name mine --frequency 30 --max-delay-s 0.1
    python tools/dataset.py import lerobot /data/ds --name small --image-size 224x224 --image-encoding jpeg --workers 2
    python tools/dataset.py import hdf5 /data/act --name a --image-size top=224x224,wrist=128x128 --resize-mode crop
    python tools/dataset.py list
    python tools/dataset.py info my_dataset [--json]
    python tools/dataset.py show my_dataset --episode 0 --frame 10 [--json]
    python tools/dataset.py verify my_dataset
    python tools/dataset.py delete my_dataset
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from neuracore.ml.core.errors import run_cli
from neuracore.ml.datasets import api
from neuracore.ml.datasets.format import IMAGE_ENCODINGS
from neuracore.ml.datasets.importers import IMPORTERS
from neuracore.ml.utils.paths import check_name


def _add_import(sub: Any) -> None:
    p = sub.add_parser("import", help="import a LeRobot v3 folder, HDF5 episodes or raw episode folders")
    p.add_argument("kind", choices=sorted(IMPORTERS), help="source format")
    p.add_argument("path", help="LeRobot dataset folder, HDF5 file or folder, or folder of episode folders")
    p.add_argument("--name", required=True, help="dataset name under $NEURACORE_HOME/datasets")
    p.add_argument("--frequency", type=float, help="output rate in Hz (default: the source's; required for episodes)")
    p.add_argument("--map", dest="mapping", help="YAML {source_key: DATA_TYPE or null} overriding the defaults")
    p.add_argument("--robot", help="robot name (default: the source's robot type, else 'robot')")
    p.add_argument("--language", help="instruction for episodes that have none")
    p.add_argument("--max-delay-s", type=float, help="episodes: longest previous-sample hold (default 2/frequency)")
    p.add_argument("--skip-bad-episodes", action="store_true", help="skip and report bad episodes instead of failing")
    p.add_argument("--image-encoding", choices=IMAGE_ENCODINGS, default="raw",
                   help="store RGB frames raw (fastest to read) or as PNG/JPEG bytes (smaller; decoded by loader workers)")
    p.add_argument("--image-size", metavar="HxW|CAM=HxW,...",
                   help="resize camera frames on import: HxW for all cameras (e.g. 224x224) or per camera "
                        "(top=224x224,wrist=128x128); area interpolation (PIL BOX), aspect ratio kept (--resize-mode)")
    p.add_argument("--resize-mode", default="letterbox", metavar="letterbox|crop",
                   help="letterbox (default): whole frame, padded with black; crop: centre crop to the target's aspect")
    p.add_argument("--jpeg-quality", metavar="1-100", help="JPEG quality with --image-encoding jpeg (default 95)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes reading, resizing and encoding episodes (0: in this process)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")


def _print_info(info: dict[str, Any]) -> None:
    print(f"{info['name']}: {info['episodes']} episodes, {info['frames']} frames at {info['frequency']:g} Hz "
          f"({info['duration_s']:.1f} s), {info['size_bytes'] / 1e6:.1f} MB on disk")
    print(f"  path: {info['path']}")
    print(f"  fingerprint: {info['fingerprint']}")
    for robot, r in info["robots"].items():
        print(f"  robot {robot} ({r['episodes']} episodes)")
        for dt, items in r["data_types"].items():
            print(f"    {dt} ({len(items)}): {', '.join(items)}")
    images = info.get("images") or {}
    if images:
        resized = ", ".join(f"{c.split('.', 1)[-1]} {r['from'][0]}x{r['from'][1]}->{r['to'][0]}x{r['to'][1]}"
                            for c, r in images.get("resized", {}).items())
        print(f"  images: {', '.join(info['image_encoding'])}"
              + (f" quality {images['jpeg_quality']}" if "jpeg" in info["image_encoding"] else "")
              + (f"; resized ({images['resize_mode']}, {images['interpolation']}): {resized}" if resized else ""))
    for lang in info["languages"][:10]:
        print(f"  instruction: {lang!r}")
    for dt, per_item in info["statistics"].items():
        print(f"  statistics {dt}:")
        for item, s in per_item.items():
            fmt = lambda v: "[" + ", ".join(f"{x:.4g}" for x in v) + "]"
            print(f"    {item}: mean {fmt(s['mean'])} std {fmt(s['std'])} min {fmt(s['min'])} max {fmt(s['max'])}")
    skipped = info["source"].get("skipped_episodes")
    if skipped:
        print(f"  skipped on import: {len(skipped)} episodes")
        for s in skipped:
            print(f"    {s['error']}")


def _print_frame(shown: dict[str, Any]) -> None:
    print(f"{shown['dataset']} episode {shown['episode']} frame {shown['frame']} "
          f"(robot {shown['robot']}, t={shown['time_s']:.3f} s)")
    for dt, items in shown["values"].items():
        print(f"  {dt}:")
        for item, v in items.items():
            if isinstance(v, dict):
                print(f"    {item}: image {v['shape']} {v['dtype']} mean {v['mean']:.4f}")
            elif isinstance(v, list):
                print(f"    {item}: [{', '.join(f'{x:.6g}' for x in v)}]")
            elif isinstance(v, float):
                print(f"    {item}: {v:.6g}")
            else:
                print(f"    {item}: {v!r}")


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; errors are one line on stderr with exit status 2."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_import(sub)
    sub.add_parser("list", help="list datasets")
    for cmd in ("info", "show"):
        p = sub.add_parser(cmd, help="describe a dataset" if cmd == "info" else "print every item at one frame")
        p.add_argument("name")
        p.add_argument("--json", action="store_true")
        if cmd == "show":
            p.add_argument("--episode", type=int, default=0)
            p.add_argument("--frame", type=int, default=0)
    sub.add_parser("verify", help="re-read everything, check fingerprint and shapes").add_argument("name")
    sub.add_parser("delete", help="delete a dataset").add_argument("name")
    p = sub.add_parser("push", help="push a dataset to storage as a new revision of org/name")
    p.add_argument("name")
    p.add_argument("--repo", required=True, help="org/name")
    p.add_argument("--revision", help="also tag the revision with this name")
    p.add_argument("--message", default="")
    p.add_argument("--storage", help="storage URL (default $NEURACORE_STORAGE_URL or file://$NEURACORE_HOME/storage)")
    p = sub.add_parser("pull", help="pull org/name[@revision] into the datasets folder")
    p.add_argument("spec", help="org/name or org/name@revision")
    p.add_argument("--name", help="local dataset name (default: the repository name)")
    p.add_argument("--storage", help="storage URL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_cli("dataset", _run, args)


def _run(args: argparse.Namespace) -> int:
    """The chosen subcommand (errors are reported by `run_cli`)."""
    if args.command == "import":
        start = time.perf_counter()
        path = api.import_dataset(
            args.kind, args.path, args.name, frequency=args.frequency, mapping=args.mapping, robot=args.robot,
            language=args.language, max_delay_s=args.max_delay_s, skip_bad_episodes=args.skip_bad_episodes,
            image_encoding=args.image_encoding, image_size=args.image_size, resize_mode=args.resize_mode,
            jpeg_quality=args.jpeg_quality, workers=args.workers, overwrite=args.overwrite, progress=True,
            on_estimate=lambda line: print(line, flush=True),
        )
        info = api.dataset_info(args.name)
        seconds = time.perf_counter() - start
        print(f"imported {args.name!r}: {info['episodes']} episodes, {info['frames']} frames in {seconds:.1f} s "
              f"({info['frames'] / seconds:.0f} frames/s) at {path}")
        for s in info["source"].get("skipped_episodes", []):
            print(f"skipped: {s['error']}")
    elif args.command == "list":
        for name in api.list_datasets():
            print(name)
    elif args.command == "info":
        info = api.dataset_info(args.name)
        print(json.dumps(info, indent=1)) if args.json else _print_info(info)
    elif args.command == "show":
        shown = api.show_frame(args.name, args.episode, args.frame)
        print(json.dumps(shown, indent=1)) if args.json else _print_frame(shown)
    elif args.command == "verify":
        result = api.verify_dataset(args.name)
        print(f"{args.name}: ok ({result['episodes']} episodes, {result['frames']} frames, "
              f"{result['columns']} columns, fingerprint {result['fingerprint'][:12]})")
    elif args.command == "delete":
        print(f"deleted {api.delete_dataset(args.name)}")
    elif args.command == "push":
        from neuracore.ml.storage import push_dataset

        result = push_dataset(args.name, args.repo, message=args.message, tag=args.revision,
                              storage_url=args.storage)
        print(f"pushed {args.name!r} to {result.repo}@{result.revision[:12]} (branch {result.branch})")
    elif args.command == "pull":
        from neuracore.ml.storage import pull_dataset

        if args.name is not None:  # refused before storage is contacted
            check_name(args.name, "--name")
        path = pull_dataset(args.spec, local_name=args.name, storage_url=args.storage)
        print(f"pulled {args.spec} to {path} (dataset_name={path.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

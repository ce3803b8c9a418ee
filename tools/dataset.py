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
    python tools/dataset.py merge a b c --name abc
    python tools/dataset.py split abc --fraction 0.8 --seed 0 --name abc_train --rest-name abc_val
    python tools/dataset.py filter abc --name abc_clean --drop-episodes 3,5-7 --min-length 2.5s --robot so100
    python tools/dataset.py stats abc [--write]
    python tools/dataset.py view abc --episode 3 [--out ep3.gif] [--items JOINT_POSITIONS] [--fps 10]
    python tools/dataset.py view abc --sheet [--out abc.png] [--frames-per-episode 4] [--camera top]
    python tools/dataset.py doctor abc [--json] [--idle-seconds 2] [--outlier-margin 3]
    python tools/dataset.py generate aloha_transfer_cube --episodes 50 --name aloha_cube --workers 2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from neuracore.ml.core.errors import CliParser, run_cli
from neuracore.ml.datasets import api
from neuracore.ml.datasets.format import IMAGE_ENCODINGS
from neuracore.ml.datasets.importers import IMPORTERS
from neuracore.ml.datasets.tools.view import add_view_parser, run_view
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


# --- merge, split, filter, stats (neuracore.ml.datasets.tools) ---------------------------------------------

_EDIT_TOOLS = ("merge", "split", "filter", "stats")


def _add_edit_tools(sub: Any) -> None:
    """Sub-commands that write a new dataset from existing ones (atomic, like import), and `stats`."""
    p = sub.add_parser("merge", help="merge datasets (robots unioned) into a new one")
    p.add_argument("inputs", nargs="+", metavar="NAME", help="two or more datasets, merged in this order")
    p.add_argument("--name", required=True, help="the new dataset")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p = sub.add_parser("split", help="split a dataset by episodes (ranges or a seeded fraction)")
    p.add_argument("input", metavar="NAME")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--episodes", help="episode indices and inclusive ranges for --name, e.g. 0-9,20")
    how.add_argument("--fraction", type=float, help="share of the episodes (0..1, by episode) for --name, e.g. 0.8")
    p.add_argument("--seed", type=int, default=0, help="seed of the episode permutation with --fraction (default 0)")
    p.add_argument("--name", required=True, help="the dataset of the chosen episodes")
    p.add_argument("--rest-name", help="also write the other episodes as this dataset")
    p.add_argument("--overwrite", action="store_true", help="replace existing datasets of those names")
    p = sub.add_parser("filter", help="keep the episodes that pass every criterion, as a new dataset")
    p.add_argument("input", metavar="NAME")
    p.add_argument("--name", required=True, help="the new dataset")
    p.add_argument("--drop-episodes", metavar="3,5-7", help="episode indices and inclusive ranges to drop")
    p.add_argument("--min-length", metavar="N|Ts", help="drop episodes shorter than N frames (50) or T seconds (2.5s)")
    p.add_argument("--max-length", metavar="N|Ts", help="drop episodes longer than N frames (500) or T seconds (30s)")
    p.add_argument("--robot", action="append", metavar="ROBOT",
                   help="keep only this robot's episodes (repeat or comma-separate for several)")
    p.add_argument("--language", metavar="REGEX", help="keep episodes whose instruction matches (re.search)")
    p.add_argument("--exclude-language", metavar="REGEX", help="drop episodes whose instruction matches")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")
    p = sub.add_parser("stats", help="recompute statistics (mean, std, min, max, q01, q99) and compare")
    p.add_argument("input", metavar="NAME")
    p.add_argument("--write", action="store_true", help="replace the statistics in spec.json (atomically)")
    p.add_argument("--json", action="store_true")


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _vec(values: list[float]) -> str:
    return "[" + ", ".join(f"{x:.4g}" for x in values) + "]"


def _run_edit_tools(args: argparse.Namespace) -> int:
    """merge / split / filter / stats."""
    from neuracore.ml.datasets import tools
    from neuracore.ml.datasets.tools.stats import STAT_NAMES

    if args.command == "merge":
        r = tools.merge_datasets(args.inputs, args.name, overwrite=args.overwrite)
        print(f"merged {', '.join(map(repr, r['inputs']))} into {args.name!r}: {r['episodes']} episodes, "
              f"{r['frames']} frames, robots {', '.join(r['robots'])}, at {r['path']}")
    elif args.command == "split":
        r = tools.split_dataset(args.input, args.name, episodes=args.episodes, fraction=args.fraction, seed=args.seed,
                                rest_name=args.rest_name, overwrite=args.overwrite)
        how = f"--episodes {args.episodes}" if args.episodes else f"--fraction {args.fraction:g} --seed {args.seed}"
        print(f"split {args.input!r} ({r['episodes']} episodes) by {how}:")
        for o in r["outputs"]:
            print(f"  {o['name']!r}: {len(o['episodes'])} episodes ({_ranges(o['episodes'])}), {o['frames']} frames, "
                  f"at {o['path']}")
    elif args.command == "filter":
        robots = [r.strip() for v in args.robot for r in v.split(",")] if args.robot else None
        r = tools.filter_dataset(args.input, args.name, drop_episodes=args.drop_episodes, min_length=args.min_length,
                                 max_length=args.max_length, robots=robots, language=args.language,
                                 exclude_language=args.exclude_language, overwrite=args.overwrite)
        print(f"kept {len(r['kept'])} of {r['episodes']} episodes ({r['frames']} of {r['input_frames']} frames) of "
              f"{args.input!r} as {args.name!r} at {r['path']}")
        print(f"dropped {len(r['dropped'])} episodes" + (":" if r["dropped"] else ""))
        for d in r["dropped"][:50]:
            print(f"  episode {d['episode']}: {'; '.join(d['reasons'])}")
        if len(r["dropped"]) > 50:
            print(f"  ... and {len(r['dropped']) - 50} more (listed in spec.json source.dropped)")
    elif args.command == "stats":
        r = tools.dataset_statistics(args.input, write=args.write)
        if args.json:
            print(json.dumps(r, indent=1))
            return 0
        print(f"statistics of {args.input!r}, recomputed from {r['frames']} frames ({r['note']}):")
        for dt, per_item in r["statistics"].items():
            print(f"  {dt}:")
            for item, s in per_item.items():
                print(f"    {item}: " + " ".join(f"{k} {_vec(s[k])}" for k in STAT_NAMES))
        if not r["differences"]:
            print("same as stored in spec.json" + (" (left as it is)" if args.write else ""))
        else:
            print(f"differences from spec.json ({len(r['differences'])} items):")
            for d in r["differences"]:
                what = d["change"] if d["change"] != "changed" else "max |difference| " + ", ".join(
                    f"{k} {v:.3g}" for k, v in d["max_abs_difference"].items())
                print(f"  {d['data_type']} {d['item']}: {what}")
            print(f"wrote the new statistics to {r['path']}/spec.json (fingerprint unchanged: it covers the Arrow "
                  "files only)" if r["written"] else "pass --write to store them in spec.json")
    return 0


def _add_doctor(sub: Any) -> None:
    """`doctor NAME`: read-only checks, each finding with a suggested fix (neuracore.ml.datasets.tools.doctor)."""
    p = sub.add_parser("doctor", help="report constant items, outliers, idle stretches, action lag, odd episode "
                       "lengths, black/frozen camera frames (reads only)")
    p.add_argument("input", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print the findings as one JSON list")
    p.add_argument("--idle-seconds", default="2", metavar="S", help="report stretches without motion longer than S")
    p.add_argument("--outlier-margin", default="3", metavar="M", help="outlier: more than M q01..q99 spans outside it")


def _run_doctor(args: argparse.Namespace) -> int:
    """Print the doctor's report (or its findings as JSON); findings do not change the exit status."""
    from neuracore.ml.datasets.tools.doctor import diagnose_dataset, format_report

    r = diagnose_dataset(args.input, idle_seconds=args.idle_seconds, outlier_margin=args.outlier_margin)
    print(json.dumps([f.to_json() for f in r["findings"]], indent=1) if args.json else format_report(r))
    return 0


# --- generate: scripted simulator demonstrations (neuracore.ml.sim.generate) -------------------------------


def _add_generate(sub: Any) -> None:
    """`generate ENV`: scripted demonstrations of a simulated task, written like an import."""
    p = sub.add_parser("generate", help="scripted ALOHA demonstrations (needs pip install -e \".[sim]\")")
    p.add_argument("env", help="aloha_transfer_cube or aloha_insertion")
    p.add_argument("--name", required=True, help="dataset name under $NEURACORE_HOME/datasets")
    p.add_argument("--episodes", type=int, default=50, help="seeds tried (episode i: seed + i; default 50)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0; evaluation uses seeds from 100000)")
    p.add_argument("--workers", type=int, default=0, help="processes simulating and rendering episodes (0: here)")
    p.add_argument("--render-size", default="480x640", metavar="HxW", help="rendered top camera (default 480x640)")
    p.add_argument("--image-size", metavar="HxW", help="store frames resized to HxW (area interpolation, --resize-mode)")
    p.add_argument("--resize-mode", default="letterbox", metavar="letterbox|crop")
    p.add_argument("--image-encoding", choices=IMAGE_ENCODINGS, default="raw")
    p.add_argument("--jpeg-quality", metavar="1-100")
    p.add_argument("--keep-failed", action="store_true", help="also write demonstrations whose replay failed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset of that name")


def _run_generate(args: argparse.Namespace) -> int:
    """Generate, then print what was written."""
    from neuracore.ml.sim.generate import generate_dataset

    r = generate_dataset(args.env, args.name, args.episodes, seed=args.seed, workers=args.workers,
                         render_size=args.render_size, image_size=args.image_size, resize_mode=args.resize_mode,
                         image_encoding=args.image_encoding, jpeg_quality=args.jpeg_quality,
                         keep_failed=args.keep_failed, overwrite=args.overwrite, progress=True)
    print(f"generated {args.name!r} ({args.env}): {r['episodes']} of {r['attempted']} scripted episodes "
          f"(seeds {args.seed}-{args.seed + args.episodes - 1}) in {r['seconds']:.1f} s at {r['path']}")
    if r["failed"]:
        print(f"left out {len(r['failed'])} failed demonstrations: {', '.join(r['failed'])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; errors are one line on stderr with exit status 2."""
    parser = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p = sub.add_parser("shards", help="write shards.json (sha256, bytes, rows per Arrow shard) for training from storage")
    p.add_argument("name")
    p.add_argument("--shard-mb", type=float, help="first rewrite data/ into shards of about this many MB (same rows)")
    p = sub.add_parser("pull", help="pull org/name[@revision] into the datasets folder")
    p.add_argument("spec", help="org/name or org/name@revision")
    p.add_argument("--name", help="local dataset name (default: the repository name)")
    p.add_argument("--storage", help="storage URL")
    _add_edit_tools(sub)
    add_view_parser(sub)
    _add_doctor(sub)
    _add_generate(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_cli("dataset", _run, args)


def _run(args: argparse.Namespace) -> int:
    """The chosen subcommand (errors are reported by `run_cli`)."""
    if args.command in _EDIT_TOOLS:
        return _run_edit_tools(args)
    if args.command == "view":
        return run_view(args)
    if args.command == "doctor":
        return _run_doctor(args)
    if args.command == "generate":
        return _run_generate(args)
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
        from neuracore.ml.datasets.format import SPEC_FILE, dataset_path
        from neuracore.ml.datasets.remote import SHARDS_FILE, write_shard_list
        from neuracore.ml.storage import push_dataset

        if (dataset_path(args.name) / SPEC_FILE).is_file() and not (dataset_path(args.name) / SHARDS_FILE).is_file():
            write_shard_list(dataset_path(args.name))  # the hash list dataset.stream=true verifies shards with
        result = push_dataset(args.name, args.repo, message=args.message, tag=args.revision,
                              storage_url=args.storage)
        print(f"pushed {args.name!r} to {result.repo}@{result.revision[:12]} (branch {result.branch})")
    elif args.command == "shards":
        from neuracore.ml.datasets.format import dataset_path
        from neuracore.ml.datasets.remote import SHARDS_FILE, write_shard_list

        shards = write_shard_list(dataset_path(args.name), args.shard_mb)
        print(f"{args.name}: {len(shards)} shards, largest {max(s.size for s in shards) / 2**20:.1f} MB; "
              f"wrote {dataset_path(args.name) / SHARDS_FILE}")
    elif args.command == "pull":
        from neuracore.ml.storage import pull_dataset

        if args.name is not None:  # refused before storage is contacted
            check_name(args.name, "--name")
        path = pull_dataset(args.spec, local_name=args.name, storage_url=args.storage)
        print(f"pulled {args.spec} to {path} (dataset_name={path.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

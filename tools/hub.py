"""Push trained policies to Neuracore storage, pull them anywhere, list and inspect repositories.

    python tools/hub.py push ~/.neuracore/training/runs/<run>/model --repo my-org/my-policy [--revision v1]
    python tools/hub.py push ~/.neuracore/training/runs/<run> --repo my-org/my-policy   # model -> main, best_model -> best
    python tools/hub.py pull my-org/my-policy@v1 --to ./policy
    python tools/hub.py list [my-org]
    python tools/hub.py log my-org/my-policy [--branch best]

Storage: --storage URL, else $NEURACORE_STORAGE_URL, else file://$NEURACORE_HOME/storage;
s3://bucket/prefix uses s3fs with the usual AWS variables (endpoint: AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from neuracore.ml.core.errors import CliParser, ConfigError, run_cli
from neuracore.ml.storage import Hub, is_model_folder, parse_repo, push_model, push_run
from neuracore.ml.storage.backend import STORAGE_ENV, check_storage_url, redact

MB = 1e6


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MB:.1f} MB in {seconds:.2f} s ({nbytes / MB / max(seconds, 1e-9):.1f} MB/s)"


def cmd_push(args: argparse.Namespace) -> int:
    """Push a model folder (one revision) or a run folder (model -> main, best_model -> best)."""
    folder = Path(args.folder).expanduser()
    parse_repo(args.repo, allow_revision=False)
    if is_model_folder(folder):
        results = {"model": push_model(folder, args.repo, message=args.message, tag=args.revision,
                                       storage_url=args.storage)}
    elif is_model_folder(folder / "model"):
        results = push_run(folder, args.repo, storage_url=args.storage, message=args.message, tag=args.revision)
    else:
        raise ConfigError(f"{folder}: neither an exported model folder (config.json + model.safetensors) "
                          "nor a run folder with model/")
    for name, r in results.items():
        tag = f", tag {r.tag}" if r.tag else ""
        print(f"pushed {name} -> {r.repo}@{r.revision[:12]} (branch {r.branch}{tag}): {r.files} files, "
              f"{r.bytes_total / MB:.1f} MB, uploaded {_rate(r.bytes_uploaded, r.seconds)}"
              + (f"; {(r.bytes_total - r.bytes_uploaded) / MB:.1f} MB already stored" if r.bytes_uploaded < r.bytes_total else ""))
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    """Download a revision (verified) into --to, or into the local cache."""
    hub = Hub(args.storage)
    start = time.perf_counter()
    if args.to:
        dest = Path(args.to).expanduser()
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            raise ConfigError(f"--to {dest}: exists and is not a folder; choose a new folder")
        if dest.exists() and any(dest.iterdir()):
            raise ConfigError(f"--to {dest}: folder exists and is not empty; choose a new folder")
        rev = hub.revision(args.spec)  # resolved and checked before the empty target is touched
        emptied = dest.exists()
        if emptied:
            dest.rmdir()
        try:
            rev = hub.download(args.spec, dest, rev)
        except BaseException:
            if emptied and not dest.exists():
                dest.mkdir()  # the user's empty folder is back, as it was
            raise
    else:
        dest, rev = hub.fetch(args.spec)
    print(f"pulled {parse_repo(args.spec).repo}@{rev.id[:12]} -> {dest}: {len(rev.files)} files, "
          f"{_rate(rev.size, time.perf_counter() - start)}, sha256 verified")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """One line per repository: its main head, time and message."""
    hub = Hub(args.storage)
    repos = hub.list_repos(args.org)
    if not repos:
        print(f"no repositories in {redact(hub.store.describe())}")
    for repo in repos:
        entries = hub.log(repo) if "main" in hub.branches(repo) else []
        head = entries[0] if entries else None
        desc = f"{head.revision[:12]}  {head.time}  {head.kind:8s} {head.message}" if head else "(no main branch)"
        print(f"{repo:40s} {desc}")
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    """History of a branch, newest first."""
    hub = Hub(args.storage)
    entries = hub.log(args.repo, args.branch)
    if args.json:
        print(json.dumps([e.__dict__ for e in entries], indent=1))
        return 0
    for e in entries:
        tags = f"  [{', '.join(e.tags)}]" if e.tags else ""
        print(f"{e.revision[:12]}  {e.time}  {e.kind:8s} {e.message}{tags}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    parser = CliParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def with_storage(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--storage", default=None, help="storage URL (default $NEURACORE_STORAGE_URL or "
                                                       "file://$NEURACORE_HOME/storage)")
        return p

    p = with_storage(sub.add_parser("push", help="push a model folder or a run folder"))
    p.add_argument("folder")
    p.add_argument("--repo", required=True, help="org/name")
    p.add_argument("--revision", default=None, help="also tag the pushed revision (best model: <tag>-best)")
    p.add_argument("--message", default="", help="revision message")
    p.set_defaults(func=cmd_push)
    p = with_storage(sub.add_parser("pull", help="download org/name[@revision]"))
    p.add_argument("spec", help="org/name, org/name@best, org/name@<tag> or org/name@<revision>")
    p.add_argument("--to", default=None, help="target folder (default: the cache under $NEURACORE_HOME/cache/hub)")
    p.set_defaults(func=cmd_pull)
    p = with_storage(sub.add_parser("list", help="list repositories"))
    p.add_argument("org", nargs="?", default=None)
    p.set_defaults(func=cmd_list)
    p = with_storage(sub.add_parser("log", help="history of a repository branch"))
    p.add_argument("repo")
    p.add_argument("--branch", default="main")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_log)
    return parser


def _run(args: argparse.Namespace) -> int:
    """The sub-command, once the storage URL is known to carry no credentials (they would be echoed)."""
    check_storage_url(args.storage or os.environ.get(STORAGE_ENV))
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point; expected failures are one line on stderr and exit status 1 (bugs keep their traceback)."""
    args = build_parser().parse_args(argv)
    return run_cli("hub", _run, args, exit_code=1)


if __name__ == "__main__":
    sys.exit(main())

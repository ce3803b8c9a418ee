"""Move materialised Arrow datasets (data/ + spec.json) through the same storage as models."""

from __future__ import annotations

from pathlib import Path

from neuracore.ml.core.errors import DatasetError
from neuracore.ml.datasets.format import DATA_DIR, SPEC_FILE, dataset_path, read_spec
from neuracore.ml.storage.hub import Hub, PushResult
from neuracore.ml.storage.names import RepoRef, parse_repo

DATASET_KIND = "dataset"


def push_dataset(
    name: str,
    repo: str,
    *,
    message: str = "",
    tag: str | None = None,
    storage_url: str | None = None,
    root: Path | None = None,
) -> PushResult:
    """Push `$NEURACORE_HOME/datasets/<name>` (or `root/<name>`) as a new revision of `repo`."""
    path = dataset_path(name, root)
    if not (path / SPEC_FILE).is_file() or not (path / DATA_DIR).is_dir():
        raise DatasetError(f"dataset {name!r}: {path} has no {SPEC_FILE} and {DATA_DIR}/; materialise it first")
    spec = read_spec(path)
    metadata = {
        "name": spec.name,
        "fingerprint": spec.fingerprint,
        "episodes": len(spec.episodes),
        "frames": spec.num_frames,
        "frequency": spec.frequency,
        "robots": sorted(spec.robots),
    }
    return Hub(storage_url).push_folder(
        path.resolve(), repo, message=message or f"dataset {spec.name} ({len(spec.episodes)} episodes)",
        kind=DATASET_KIND, metadata=metadata, tag=tag,
    )


def pull_dataset(
    spec: str, local_name: str | None = None, storage_url: str | None = None, root: Path | None = None
) -> Path:
    """Download `org/name[@revision]` into the datasets folder as `local_name` (default: the repo name).

    Every file's sha256 is verified and the folder appears atomically. A dataset already there
    with the same fingerprint is reused; one with another fingerprint is an error (never replaced).
    """
    ref = parse_repo(spec)
    dest = dataset_path(local_name or ref.name, root)  # a bad local name fails before storage is contacted
    hub = Hub(storage_url)
    revision = hub.revision(ref)
    if revision.manifest.get("kind") != DATASET_KIND:
        raise DatasetError(f"{ref}: revision {revision.id[:12]} is a {revision.manifest.get('kind')!r}, not a dataset")
    fingerprint = revision.manifest.get("metadata", {}).get("fingerprint", "")
    if dest.exists():
        if (dest / SPEC_FILE).is_file() and read_spec(dest).fingerprint == fingerprint:
            return dest
        raise DatasetError(
            f"dataset {dest.name!r}: {dest} already exists with other contents than {ref} "
            f"(fingerprint {fingerprint[:12]}); pass another local name or remove it"
        )
    hub.download(RepoRef(ref.org, ref.name, revision.id), dest, revision)
    read_spec(dest)  # a one-line error now rather than at training time
    return dest

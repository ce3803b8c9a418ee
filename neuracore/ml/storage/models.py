"""Push exported model folders and training runs; pull them for `Policy.from_pretrained`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from neuracore.ml.core.errors import CheckpointError, ConfigError, one_line
from neuracore.ml.storage.errors import StorageError
from neuracore.ml.storage.hub import Hub, PreparedPush, PushResult
from neuracore.ml.storage.names import parse_repo

MODEL_KIND = "model"
CONFIG_FILE = "config.json"  # same names as neuracore.ml.export.model_folder (kept torch-free here)
WEIGHTS_FILE = "model.safetensors"
BEST_BRANCH = "best"
RUN_FOLDERS = {"model": "main", "best_model": BEST_BRANCH}


def is_model_folder(path: str | Path) -> bool:
    """True when `path` holds an exported model (config.json + model.safetensors)."""
    p = Path(path).expanduser()
    return (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


def _hub(storage_url: str | None) -> Hub:
    """The hub at `storage_url` (default `$NEURACORE_STORAGE_URL`; credentials in the URL are refused by `open_store`)."""
    return Hub(storage_url)


def _mapping(config: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: not a neuracore model config ({key!r} is a {type(value).__name__}, "
                              "expected a mapping)")
    return value


def model_metadata(folder: str | Path) -> dict[str, Any]:
    """Summary of an exported model's config.json recorded in the revision (shown by `log`)."""
    path = Path(folder).expanduser() / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
        algorithm = config["algorithm"]["name"]
        if not isinstance(algorithm, str) or not isinstance(config.get("model_init_description"), dict):
            raise TypeError("algorithm.name must be a string and model_init_description a mapping")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: not a neuracore model config ({one_line(exc)})") from None
    training = _mapping(config, "training", path)
    sha = config.get("weights_sha256")
    if sha is not None and not isinstance(sha, str):
        raise CheckpointError(f"{path}: not a neuracore model config (weights_sha256 is a {type(sha).__name__})")
    return {
        "algorithm": algorithm,
        "num_parameters": config.get("num_parameters"),
        "weights_sha256": config.get("weights_sha256"),
        "dataset": _mapping(config, "dataset", path),
        "training": {k: training[k] for k in ("steps", "epochs_completed", "train_losses", "validation_losses",
                                              "best_validation_loss", "command") if k in training},
        "versions": _mapping(config, "versions", path),
    }


def push_model(
    folder: str | Path,
    repo: str,
    *,
    message: str = "",
    tag: str | None = None,
    branch: str = "main",
    storage_url: str | None = None,
    hub: Hub | None = None,
) -> PushResult:
    """Push an exported model folder as a new revision of `repo` on `branch` (optionally tagged)."""
    hub = hub or _hub(storage_url)
    prepared = _prepare_model(hub, folder, repo, message=message, tag=tag, branch=branch, upload=True)
    return hub.publish_tag(hub.publish_branch(prepared), prepared)


def _prepare_model(hub: Hub, folder: str | Path, repo: str, *, message: str, tag: str | None, branch: str,
                   upload: bool) -> PreparedPush:
    """Check, hash (and with `upload` store the blobs of) an exported model folder; nothing visible yet."""
    folder = Path(folder).expanduser()
    if not is_model_folder(folder):
        raise ConfigError(f"{folder}: not an exported model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    metadata = model_metadata(folder)

    def check_weights(entries: dict[str, dict[str, Any]]) -> None:
        expected = metadata.get("weights_sha256")
        if expected and entries[WEIGHTS_FILE]["sha256"] != expected:
            raise CheckpointError(f"{folder / WEIGHTS_FILE}: sha256 does not match config.json; refusing to push")

    return hub.prepare_push(folder, repo, message=message or f"{metadata['algorithm']} model", kind=MODEL_KIND,
                            metadata=metadata, branch=branch, tag=tag, validate=check_weights, upload=upload)


def push_run(
    run_dir: str | Path,
    repo: str,
    storage_url: str | None = None,
    message: str = "",
    tag: str | None = None,
    hub: Hub | None = None,
) -> dict[str, PushResult]:
    """Push a run's final model to branch `main` and its best model to branch `best`.

    With `tag`, the final model is also tagged `tag` and the best model `tag-best`. Returns the
    push result by folder name (`model`, `best_model`); a missing best_model is skipped.

    Both folders are checked and hashed, then every blob of both is stored, and only then are the
    branches moved (main, then best) and last the tags created. If a step of that last phase fails,
    the StorageError says in one line which refs moved and which did not; no tag exists yet then,
    so running the same push again puts both branches (and the tags) on the same run.
    """
    run_dir = Path(run_dir).expanduser()
    present = {name: branch for name, branch in RUN_FOLDERS.items() if is_model_folder(run_dir / name)}
    if "model" not in present:
        raise ConfigError(f"{run_dir}: not a run folder with an exported model/ (and optional best_model/)")
    hub = hub or _hub(storage_url)
    prepared = {
        name: _prepare_model(hub, run_dir / name, repo, message=message or f"{run_dir.name}: {name}", branch=branch,
                             tag=None if tag is None else (tag if name == "model" else f"{tag}-best"), upload=False)
        for name, branch in present.items()
    }
    for p in prepared.values():
        hub.upload_blobs(p)
    results: dict[str, PushResult] = {}
    for name, p in prepared.items():
        try:
            results[name] = hub.publish_branch(p)
        except StorageError as exc:
            if not results:
                raise  # nothing moved: the error already says so
            raise StorageError(f"{_moved(results)}, but branch {p.branch!r} ({name}/) was not moved and no tag "
                               f"was created: {exc}; push the run again to move both") from None
    for name, p in prepared.items():
        try:
            hub.publish_tag(results[name], p)
        except StorageError as exc:
            raise StorageError(f"{_moved(results)}, but tag {p.tag!r} ({name}/) was not created: {exc}") from None
    return results


def _moved(results: dict[str, PushResult]) -> str:
    moved = ", ".join(f"branch {r.branch!r} to {r.revision[:12]}" for r in results.values())
    return f"{next(iter(results.values())).repo}: moved {moved}"


def pull_model(spec: str, storage_url: str | None = None) -> Path:
    """Cached, verified local folder of `org/name[@revision]` holding an exported model."""
    ref = parse_repo(spec)
    folder = _hub(storage_url).pull(ref)
    if not is_model_folder(folder):
        raise CheckpointError(f"{ref}: revision holds no exported model ({CONFIG_FILE} + {WEIGHTS_FILE})")
    return folder

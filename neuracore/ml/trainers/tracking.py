"""Experiment trackers through accelerate: TensorBoard (default), Weights & Biases, MLflow.

Every tracker gets the same scalars (`accelerator.log`), image grids and flattened config as
hparams, under the run folder's name. Only rank 0 talks to trackers. Tracker run ids are kept in
`<run>/trackers.json`, so a resumed run (`resume_checkpoint_path=...`) continues the same wandb
and MLflow runs. Credentials are never read here: wandb and MLflow take theirs from their own
environment variables or login files, and no value that looks like a secret is logged as hparams.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker

from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError, one_line
from neuracore.ml.utils.atomic import write_text_atomic

if TYPE_CHECKING:
    from neuracore.ml.config.schema import TrainConfig

logger = logging.getLogger(__name__)

TRACKERS_FILE = "trackers.json"
DEFAULT_PROJECT = "neuracore"
REDACTED = "***"
_SECRET_KEY = re.compile(r"^(.*[_-])?(api_?key|access_?key|secret(_?key)?|password|passwd|token|credentials?)$",
                         re.IGNORECASE)
_MLFLOW_BAD_KEY_CHARS = re.compile(r"[^\w./\- :]")


def flatten_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config → `{"a/b": value}` with values TensorBoard hparams accept."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten_config(value, f"{prefix}{key}/"))
        return out
    key = prefix.rstrip("/")
    if data is None:
        out[key] = "null"
    elif isinstance(data, (bool, int, float, str)):
        out[key] = data
    else:
        out[key] = str(data)
    return out


def redact_secrets(values: dict[str, Any]) -> dict[str, Any]:
    """Values whose key's last part names a credential (api_key, token, password, ...) become `***`."""
    return {k: REDACTED if _SECRET_KEY.search(k.rsplit("/", 1)[-1]) else v for k, v in values.items()}


def redact_uri(uri: str) -> str:
    """A tracking URI without user:password@ or query string (where tokens travel)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return REDACTED
    netloc = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def project_name(config: TrainConfig, tracker: str) -> str:
    """wandb project / MLflow experiment: `tracker_project`, else the tracker's own variable, else neuracore."""
    env = {"wandb": "WANDB_PROJECT", "mlflow": "MLFLOW_EXPERIMENT_NAME"}.get(tracker)
    return config.tracker_project or (env and os.environ.get(env)) or DEFAULT_PROJECT


def read_tracker_ids(run_dir: Path) -> dict[str, dict[str, Any]]:
    """`<run>/trackers.json` (tracker name → its run id and where it lives), or {} if absent or unreadable."""
    path = Path(run_dir) / TRACKERS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("%s unreadable (%s): trackers start new runs", path, one_line(exc))
        return {}
    return data if isinstance(data, dict) else {}


def build_trackers(config: TrainConfig, run_dir: Path) -> list[GeneralTracker] | None:
    """accelerate tracker objects for `report_to` (the Accelerator's `log_with`); started by `start_tracking`.

    A resumed run reuses the wandb id and MLflow run id recorded in `<run>/trackers.json`.
    """
    names = list(config.report_to)
    if not names:
        return None
    saved = read_tracker_ids(run_dir) if config.resume_checkpoint_path else {}
    run_name = Path(run_dir).name
    trackers: list[GeneralTracker] = []
    for name in names:
        previous = saved.get(name) if isinstance(saved.get(name), dict) else {}
        if name == "tensorboard":
            trackers.append(TensorBoardTracker("tensorboard", str(run_dir)))  # <run>/tensorboard
        elif name == "wandb":
            # finish_previous: a --multirun job after a failed one must not log into that job's run
            kwargs: dict[str, Any] = {"name": run_name, "dir": str(run_dir), "reinit": "finish_previous"}
            if previous.get("id"):
                kwargs.update(id=str(previous["id"]), resume="allow")
            trackers.append(WandBTracker(project_name(config, "wandb"), **kwargs))
        elif name == "mlflow":
            trackers.append(MLflowTracker(experiment_name=project_name(config, "mlflow"),
                                          run_id=previous.get("run_id") or None, run_name=run_name,
                                          tags={"neuracore.algorithm": config.algorithm.name,
                                                "neuracore.dataset": config.dataset_name}))
        else:  # validate_config only lets the names above through
            raise ConfigError(f"report_to: unknown tracker {name!r}")
    return trackers


def mlflow_tracking_uri(run_dir: Path) -> str:
    """`MLFLOW_TRACKING_URI` when set (a server or database), else a file store in `<run>/mlruns`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"file:{Path(run_dir).resolve() / 'mlruns'}"


def _prepare_mlflow(tracker: MLflowTracker, run_dir: Path) -> None:
    import mlflow

    uri = mlflow_tracking_uri(run_dir)
    if urlsplit(uri).scheme in ("", "file"):
        # MLflow 3 keeps the file store only behind this switch; it needs no server and no database.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    if mlflow.active_run() is not None:  # left over by an earlier --multirun job that failed
        mlflow.end_run("FAILED")
    if tracker.run_id:
        try:
            mlflow.tracking.MlflowClient().get_run(tracker.run_id)
        except Exception as exc:  # noqa: BLE001 - any store error means: that run is not there
            logger.warning("mlflow: run %s from %s is not in %s (%s); starting a new MLflow run",
                           tracker.run_id, TRACKERS_FILE, redact_uri(uri), one_line(exc, 120))
            tracker.run_id = None


def _mlflow_params(tracker: MLflowTracker, hparams: dict[str, Any]) -> dict[str, Any]:
    """Valid MLflow param names; on a resumed run only new keys (MLflow forbids changing a logged param)."""
    import mlflow

    params = {_MLFLOW_BAD_KEY_CHARS.sub("_", k): v for k, v in hparams.items()}
    existing = mlflow.tracking.MlflowClient().get_run(tracker.active_run.info.run_id).data.params
    changed = sorted(k for k, v in params.items() if k in existing and existing[k] != str(v))
    if changed:
        logger.info("mlflow: %d parameter(s) differ from the resumed run's and keep their first values: %s",
                    len(changed), ", ".join(changed[:10]) + (" ..." if len(changed) > 10 else ""))
    return {k: v for k, v in params.items() if k not in existing}


def start_tracking(accelerator: Accelerator, config: TrainConfig, run_dir: Path) -> None:
    """Start every tracker of `report_to`, log the flattened config as hparams and record the run ids (rank 0)."""
    if not accelerator.is_main_process or not accelerator.log_with:
        return
    mlflow_tracker = next((t for t in accelerator.log_with if isinstance(t, MLflowTracker)), None)
    if mlflow_tracker is not None:
        _prepare_mlflow(mlflow_tracker, run_dir)
    try:
        accelerator.init_trackers(DEFAULT_PROJECT)  # names, ids and folders are in the tracker objects
    except Exception as exc:  # noqa: BLE001 - a tracker that cannot start is the user's setup: one line
        package = type(exc).__module__.split(".")[0]
        which = package if package in ("wandb", "mlflow") else "a tracker"
        hint = "; run `wandb login` or set WANDB_MODE=offline" if which == "wandb" else ""
        raise ConfigError(f"report_to: {which} could not start ({one_line(exc, 160)}){hint}") from None
    hparams = redact_secrets(flatten_config(config.raw))
    for tracker in accelerator.trackers:
        values = _mlflow_params(tracker, hparams) if isinstance(tracker, MLflowTracker) else hparams
        tracker.store_init_configuration(values)
    _record_tracker_ids(accelerator, run_dir)


def _record_tracker_ids(accelerator: Accelerator, run_dir: Path) -> None:
    """Write `<run>/trackers.json` (keeping entries of trackers this run does not use) and say where runs are."""
    ids = read_tracker_ids(run_dir)
    for tracker in accelerator.trackers:
        if isinstance(tracker, WandBTracker):
            run = tracker.run
            ids["wandb"] = {"id": run.id, "project": run.project, "name": run.name,
                            "offline": bool(getattr(run.settings, "_offline", False))}
            logger.info("wandb: run %s (%s) in project %s%s", run.id, run.name, run.project,
                        f", {run.url}" if getattr(run, "url", None) else " (offline: `wandb sync <run>/wandb/offline-run-*`)")
        elif isinstance(tracker, MLflowTracker):
            import mlflow

            info = tracker.active_run.info
            uri = redact_uri(mlflow.get_tracking_uri())
            ids["mlflow"] = {"run_id": info.run_id, "experiment_id": info.experiment_id, "run_name": info.run_name,
                             "tracking_uri": uri}
            logger.info("mlflow: run %s (%s) in experiment %s at %s", info.run_id, info.run_name,
                        tracker.experiment_name, uri)
    if ids:
        write_text_atomic(Path(run_dir) / TRACKERS_FILE, json.dumps(ids, indent=2, sort_keys=True) + "\n")


def log_scalars(accelerator: Accelerator, values: dict[str, float], step: int) -> None:
    """Write finite scalars (non-finite values are logged as text warnings instead)."""
    finite = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    bad = sorted(set(values) - set(finite))
    if bad:
        logger.warning("step %d: non-finite values for %s", step, ", ".join(bad))
    accelerator.log(finite, step=step)


def log_image(accelerator: Accelerator, tag: str, image: torch.Tensor, step: int) -> None:
    """One uint8 [C, H, W] image to every tracker that shows images (rank 0)."""
    if not accelerator.is_main_process:
        return
    image = image.detach().cpu()
    hwc = image.permute(1, 2, 0).numpy()
    for tracker in accelerator.trackers:
        if isinstance(tracker, TensorBoardTracker):
            tracker.log_images({tag: image[None]}, step=step)
        elif isinstance(tracker, WandBTracker):
            tracker.log_images({tag: [hwc]}, step=step)
        elif isinstance(tracker, MLflowTracker):
            import mlflow

            mlflow.log_image(hwc, key=tag, step=step)


def log_image_grid(accelerator: Accelerator, batch: dict[str, Any], step: int, max_images: int = 16) -> None:
    """A grid per camera of the batch's newest input frames (uint8 [B, T, N, C, H, W]) to every tracker."""
    if not accelerator.is_main_process or not accelerator.trackers:
        return
    images = batch.get(keys.INPUTS, {}).get(DataType.RGB_IMAGES.value)
    if images is None:
        return
    import torchvision

    frames = images[:max_images, -1].detach().cpu()  # [B, N, C, H, W]
    for cam in range(frames.shape[1]):
        grid = torchvision.utils.make_grid(frames[:, cam], nrow=4)
        log_image(accelerator, f"inputs/camera_{cam}", grid, step)


def log_text(accelerator: Accelerator, tag: str, text: str, step: int = 0) -> None:
    """A text entry (e.g. the model summary) on rank 0: TensorBoard text, wandb HTML, MLflow artifact."""
    if not accelerator.is_main_process:
        return
    for tracker in accelerator.trackers:
        if isinstance(tracker, TensorBoardTracker):
            tracker.writer.add_text(tag, text, global_step=step)
        elif isinstance(tracker, WandBTracker):
            import html

            import wandb

            tracker.log({tag: wandb.Html(f"<pre>{html.escape(text)}</pre>")}, step=step)
        elif isinstance(tracker, MLflowTracker):
            import mlflow

            mlflow.log_text(text, f"{tag}.txt")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable

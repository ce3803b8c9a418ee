"""Trackers (report_to): validation, hparams without secrets, and an offline wandb + MLflow file-store
round trip in this process — start, log, finish, resume into the same runs, read everything back."""

from __future__ import annotations

import glob
import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from neuracore.ml.config.schema import AlgorithmChoice, TrainConfig, validate_config
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.model import NeuracoreModel
from neuracore.ml.trainers import tracking

SECRET = "fake-wandb-key-0123456789abcdef0123"  # set as WANDB_API_KEY: must never reach a file


# --------------------------------------------------------------------------- readers (used by tests/recipes too)


def wandb_records(path: Path):
    """The protobuf records of a `.wandb` file (wandb's LevelDB-style log: 7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb datastore"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def read_wandb_offline(run_dir: Path) -> list[dict[str, Any]]:
    """Every offline wandb run folder of `<run>/wandb`, oldest first: id, name, project, config, history."""
    runs = []
    for path in sorted(glob.glob(str(Path(run_dir) / "wandb" / "offline-run-*" / "*.wandb"))):
        run: dict[str, Any] = {"path": path, "config": {}, "history": []}
        for record in wandb_records(Path(path)):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run.update(id=record.run.run_id, name=record.run.display_name, project=record.run.project)
                run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                row: dict[str, Any] = {}
                for item in record.history.item:
                    path = list(item.nested_key) or [item.key]
                    if len(path) == 1:
                        row[path[0]] = json.loads(item.value_json)
                    else:  # media (images) arrive as several items under one key
                        row.setdefault(path[0], {})["/".join(path[1:])] = json.loads(item.value_json)
                run["history"].append(row)
        runs.append(run)
    return runs


def wandb_scalars(run: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """tag → [(step, value)] of one offline run's numeric history (wandb's own `_...` keys left out)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in run["history"]:
        for key, value in row.items():
            if not key.startswith("_") and isinstance(value, (int, float)):
                out.setdefault(key, []).append((int(row["_step"]), float(value)))
    return out


def files_containing(folder: Path, needle: str) -> list[str]:
    """Files under `folder` whose bytes contain `needle`."""
    raw = needle.encode()
    return [str(p) for p in Path(folder).rglob("*") if p.is_file() and raw in p.read_bytes()]


# --------------------------------------------------------------------------- config


def _raw(**extra: Any) -> dict[str, Any]:
    from neuracore.ml.core.registry import get_algorithm

    cls = get_algorithm("cnnmlp")
    return {"algorithm": {"_target_": f"{cls.__module__}.{cls.__qualname__}"}, "dataset_name": "demo", **extra}


def test_report_to_defaults_to_tensorboard_and_accepts_names_lists_and_none() -> None:
    assert validate_config(_raw()).report_to == ["tensorboard"]
    assert validate_config(_raw(report_to="wandb")).report_to == ["wandb"]
    assert validate_config(_raw(report_to=["mlflow", "tensorboard", "mlflow"])).report_to == ["mlflow", "tensorboard"]
    assert validate_config(_raw(report_to=[])).report_to == []
    assert validate_config(_raw(report_to="none")).report_to == []
    assert validate_config(_raw(tracker_project="robots")).tracker_project == "robots"


def test_report_to_errors_are_one_line_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^report_to: unknown tracker 'wandbb' \(did you mean wandb\?\); "
                                          r"valid: tensorboard, wandb, mlflow$"):
        validate_config(_raw(report_to=["tensorboard", "wandbb"]))
    with pytest.raises(ConfigError, match=r"^report_to=3: expected a list"):
        validate_config(_raw(report_to=3))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^report_to: mlflow is not installed; pip install mlflow-skinny "
                                          r"\(or pip install 'neuracore\[trackers\]'\)$") as info:
        validate_config(_raw(report_to=["mlflow"]))
    assert "\n" not in str(info.value)


def test_hparams_are_flat_and_secrets_are_redacted() -> None:
    flat = tracking.flatten_config({"algorithm": {"lr": 1e-4, "max_token_len": 48, "tokenizer_path": "t"},
                                    "device": None, "report_to": ["tensorboard"],
                                    "storage": {"api_key": "k1", "hf_token": "k2", "password": "k3"}})
    assert flat["algorithm/lr"] == 1e-4 and flat["device"] == "null" and flat["report_to"] == "['tensorboard']"
    red = tracking.redact_secrets(flat)
    assert red["storage/api_key"] == red["storage/hf_token"] == red["storage/password"] == "***"
    assert red["algorithm/max_token_len"] == 48 and red["algorithm/tokenizer_path"] == "t"  # not secrets
    assert tracking.redact_uri("https://user:pa55@mlflow.example:5000/x?token=abc") == "https://mlflow.example:5000/x"
    assert tracking.redact_uri("file:///tmp/run/mlruns") == "file:///tmp/run/mlruns"


def _config(run_dir: Path, report_to: list[str], resume: bool = False) -> TrainConfig:
    raw = {"algorithm": {"name": "cnnmlp", "lr": 1e-4}, "dataset_name": "demo", "seed": 42,
           "report_to": report_to, "resume_checkpoint_path": "auto" if resume else None, "max_steps": 4,
           "storage": {"api_key": SECRET}}
    return TrainConfig(algorithm=AlgorithmChoice("cnnmlp", NeuracoreModel, {}), dataset_name="demo",
                       report_to=report_to, training_name=run_dir.name,
                       resume_checkpoint_path="auto" if resume else None, raw=raw)


def test_build_trackers_names_folders_and_reuses_recorded_ids_only_on_resume(tmp_path: Path) -> None:
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    run = tmp_path / "my_run"
    run.mkdir()
    assert tracking.build_trackers(_config(run, []), run) is None
    (run / tracking.TRACKERS_FILE).write_text(json.dumps({"wandb": {"id": "w123"}, "mlflow": {"run_id": "m456"}}))
    tb, wb, ml = tracking.build_trackers(_config(run, ["tensorboard", "wandb", "mlflow"]), run)
    assert isinstance(tb, TensorBoardTracker) and Path(tb.logging_dir_param) / tb.run_name == run / "tensorboard"
    assert isinstance(wb, WandBTracker) and wb.run_name == "neuracore"
    assert wb.init_kwargs == {"name": "my_run", "dir": str(run), "reinit": "finish_previous"}  # fresh: new runs
    assert isinstance(ml, MLflowTracker) and ml.run_id is None and ml.run_name == "my_run"
    _, wb, ml = tracking.build_trackers(_config(run, ["tensorboard", "wandb", "mlflow"], resume=True), run)
    assert wb.init_kwargs == {"name": "my_run", "dir": str(run), "reinit": "finish_previous", "id": "w123",
                              "resume": "allow"}
    assert ml.run_id == "m456" and ml.experiment_name == "neuracore"


# --------------------------------------------------------------------------- an offline round trip


@pytest.fixture()
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """wandb offline (its config/cache in tmp), MLflow at an explicit file store; both reset afterwards."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # leave pytest's capture alone
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'store'}")
    for name in ("WANDB_PROJECT", "WANDB_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    from neuracore.ml.trainers.accelerator import reset_accelerate_state

    reset_accelerate_state()
    yield tmp_path
    import mlflow
    import wandb

    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    wandb.teardown()
    reset_accelerate_state()


def _session(run: Path, resume: bool, steps: range) -> None:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    config = _config(run, ["tensorboard", "wandb", "mlflow"], resume=resume)
    accelerator = Accelerator(cpu=True, log_with=tracking.build_trackers(config, run),
                              project_config=ProjectConfiguration(project_dir=str(run), logging_dir=str(run)))
    tracking.start_tracking(accelerator, config, run)
    images = torch.randint(0, 255, (2, 1, 1, 3, 8, 8), dtype=torch.uint8)  # [B, T, N, C, H, W]
    tracking.log_image_grid(accelerator, {"inputs": {"RGB_IMAGES": images}}, steps[0])
    for step in steps:
        tracking.log_scalars(accelerator, {"train/loss": 1.0 / step, "lr/optimizer0_group0": 1e-4,
                                           "train/bad": float("nan")}, step)
    accelerator.end_training()
    from neuracore.ml.trainers.accelerator import reset_accelerate_state

    reset_accelerate_state()


def test_offline_wandb_and_mlflow_runs_continue_on_resume_with_the_same_scalars(offline: Path) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = offline / "tracked"
    run.mkdir()
    _session(run, resume=False, steps=range(1, 3))
    first = json.loads((run / tracking.TRACKERS_FILE).read_text())
    _session(run, resume=True, steps=range(3, 5))
    ids = json.loads((run / tracking.TRACKERS_FILE).read_text())
    assert ids["wandb"]["id"] == first["wandb"]["id"] and ids["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    assert ids["wandb"]["offline"] is True and ids["mlflow"]["tracking_uri"].startswith("file:")

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tb_tags = set(acc.Tags()["scalars"])
    assert tb_tags == {"train/loss", "lr/optimizer0_group0"} and "inputs/camera_0" in acc.Tags()["images"]

    client = MlflowClient(f"file:{offline / 'store'}")
    mlrun = client.get_run(ids["mlflow"]["run_id"])
    assert mlrun.info.run_name == "tracked" and mlrun.info.status == "FINISHED"
    assert set(mlrun.data.metrics) == tb_tags
    assert [(m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, "train/loss")] == [
        (s, pytest.approx(1.0 / s)) for s in range(1, 5)]
    assert mlrun.data.params["algorithm/lr"] == "0.0001" and mlrun.data.params["storage/api_key"] == "***"
    assert mlrun.data.params["resume_checkpoint_path"] == "null"  # first value kept: MLflow params are immutable
    images = [f.path for f in client.list_artifacts(mlrun.info.run_id, "images")]
    assert any("camera_0+step+1" in p for p in images) and any("camera_0+step+3" in p for p in images)

    wruns = read_wandb_offline(run)
    assert len(wruns) == 2 and {r["id"] for r in wruns} == {ids["wandb"]["id"]}
    assert {r["name"] for r in wruns} == {"tracked"} and {r["project"] for r in wruns} == {"neuracore"}
    scalars = [wandb_scalars(r) for r in wruns]
    assert set(scalars[0]) == set(scalars[1]) == tb_tags
    assert [s for s, _ in scalars[0]["train/loss"]] + [s for s, _ in scalars[1]["train/loss"]] == [1, 2, 3, 4]
    assert wruns[1]["config"]["algorithm/lr"] == 1e-4 and wruns[1]["config"]["storage/api_key"] == "***"
    assert wruns[1]["config"]["resume_checkpoint_path"] == "auto"
    shown = [row["inputs/camera_0"] for r in wruns for row in r["history"] if "inputs/camera_0" in row]
    assert len(shown) == 2 and shown[0]["count"] == 1 and shown[0]["_type"] == "images/separated"
    assert files_containing(offline, SECRET) == []

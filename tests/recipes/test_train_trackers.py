"""`python -m neuracore.ml.train report_to=[tensorboard,wandb,mlflow]` offline (wandb offline mode, MLflow's
file store in <run>/mlruns), read back: the same scalars as TensorBoard, hparams, run name, images, no
credentials anywhere; a killed run resumed with resume_checkpoint_path=auto logs into the same tracker runs.

(Named test_train_trackers.py: pytest's default import mode refuses two test modules with one basename,
and tests/ml/trainers/test_trackers.py holds the unit tests and the offline readers.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import FAST, fault_env, run_cli
from tests.ml.trainers.test_trackers import SECRET, files_containing, read_wandb_offline, wandb_scalars

pytest.importorskip("wandb")
pytest.importorskip("mlflow")

ARGS = FAST + ["logging_frequency=2", "checkpoint_frequency=2", "training.log_images=true",
               "report_to=[tensorboard,wandb,mlflow]"]


@pytest.fixture()
def offline_env(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Child runs: wandb offline with a key that must not leak, MLflow at its default (<run>/mlruns)."""
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this process's MlflowClient
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "WANDB_PROJECT", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    return home


def _tensorboard(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _mlflow(run: Path):
    from mlflow.tracking import MlflowClient

    ids = json.loads((run / "trackers.json").read_text())
    client = MlflowClient(f"file:{run / 'mlruns'}")  # the default store: nothing but the run folder
    return client, client.get_run(ids["mlflow"]["run_id"])


def test_every_tracker_gets_tensorboards_scalars_hparams_images_and_the_run_name(offline_env: Path) -> None:
    result = run_cli(ARGS + ["max_steps=2", "training_name=tracked", "tracker_project=robots"], offline_env)
    assert result.returncode == 0, result.stderr[-3000:]
    run = offline_env / "training" / "runs" / "tracked"
    tb = _tensorboard(run)
    tb_tags = set(tb.Tags()["scalars"])
    assert {"train/loss", "validation/loss", "model/num_parameters", "perf/samples_per_second"} <= tb_tags
    assert "inputs/camera_0" in tb.Tags()["images"]

    client, mlrun = _mlflow(run)
    assert mlrun.info.run_name == "tracked" and mlrun.info.status == "FINISHED"
    assert client.get_experiment(mlrun.info.experiment_id).name == "robots"
    assert set(mlrun.data.metrics) == tb_tags
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "train/loss")] == [2]
    assert mlrun.data.metrics["train/loss"] == pytest.approx(tb.Scalars("train/loss")[-1].value, rel=1e-6)
    assert mlrun.data.params["algorithm/hidden_dim"] == "32" and mlrun.data.params["max_steps"] == "2"
    assert any("inputs~camera_0" in f.path for f in client.list_artifacts(mlrun.info.run_id, "images"))

    (wrun,) = read_wandb_offline(run)
    assert wrun["name"] == "tracked" and wrun["project"] == "robots"
    assert wrun["id"] == json.loads((run / "trackers.json").read_text())["wandb"]["id"]
    scalars = wandb_scalars(wrun)
    assert set(scalars) == tb_tags
    assert scalars["train/loss"] == [(2, pytest.approx(tb.Scalars("train/loss")[-1].value, rel=1e-6))]
    assert wrun["config"]["algorithm/hidden_dim"] == 32 and wrun["config"]["report_to"] == str(
        ["tensorboard", "wandb", "mlflow"])
    assert any("inputs/camera_0" in row for row in wrun["history"])

    resolved = yaml.safe_load((run / "resolved_config.yaml").read_text())
    assert resolved["report_to"] == ["tensorboard", "wandb", "mlflow"]
    assert SECRET not in result.stdout + result.stderr and files_containing(run, SECRET) == []


@pytest.mark.slow
def test_a_killed_run_resumed_with_auto_continues_the_same_tracker_runs(offline_env: Path) -> None:
    args = ARGS + ["max_steps=4", "training_name=again"]
    killed = run_cli(args, offline_env, env=fault_env(kill_after_step=3))
    assert killed.returncode != 0
    run = offline_env / "training" / "runs" / "again"
    first = json.loads((run / "trackers.json").read_text())
    resumed = run_cli(args + ["resume_checkpoint_path=auto"], offline_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "at step 2" in resumed.stderr
    ids = json.loads((run / "trackers.json").read_text())
    assert ids == first  # the same wandb id and MLflow run id

    tb_tags = set(_tensorboard(run).Tags()["scalars"])
    client, mlrun = _mlflow(run)
    assert mlrun.info.run_id == first["mlflow"]["run_id"] and mlrun.info.status == "FINISHED"
    assert set(mlrun.data.metrics) == tb_tags
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "train/loss")] == [2, 4]
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "model/num_parameters")] == [0, 2]

    # wandb offline: one folder per process, one run id (`wandb sync` joins them). A SIGKILLed process loses
    # what wandb's service had not yet written, so only the resumed process's history is exact.
    wruns = read_wandb_offline(run)
    # (the killed process may not even have written its run record: only ids and names it did write are checked)
    assert len(wruns) == 2 and wruns[1].get("id") == first["wandb"]["id"] and wruns[1].get("name") == "again"
    assert {r["id"] for r in wruns if "id" in r} == {first["wandb"]["id"]}
    assert {r["name"] for r in wruns if "name" in r} == {"again"}
    assert set(wandb_scalars(wruns[1])) == tb_tags
    assert [s for s, _ in wandb_scalars(wruns[1])["train/loss"]] == [4]
    assert [s for s, _ in wandb_scalars(wruns[1])["model/num_parameters"]] == [2]
    assert wruns[1]["config"]["resume_checkpoint_path"] == "auto" and wruns[1]["config"]["algorithm/hidden_dim"] == 32
    assert SECRET not in killed.stderr + resumed.stdout + resumed.stderr and files_containing(run, SECRET) == []

    bad = run_cli(FAST + ["report_to=[tensorboard,wandbb]"], offline_env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == ("neuracore: error: report_to: unknown tracker 'wandbb' "
                                                   "(did you mean wandb?); valid: tensorboard, wandb, mlflow")

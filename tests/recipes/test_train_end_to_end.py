"""End-to-end runs of the real entry points: files, TensorBoard, export, exact resume, DDP, sweeps."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import FAST, fault_env, run_cli, run_group


def _runs(home: Path) -> Path:
    return home / "training" / "runs"


def _weights(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / "model.safetensors"))


def test_train_writes_run_folder_tensorboard_and_export(home: Path) -> None:
    result = run_cli(FAST + ["max_steps=6", "logging_frequency=2", "checkpoint_frequency=3",
                             "training_name=e2e", "training.log_images=true"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    run = _runs(home) / "e2e"
    first = next(line for line in (run / "train.log").read_text().splitlines() if line.strip())
    assert "world_size=1" in first and "device=cpu" in first and "mixed_precision=no" in first
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint_3", "checkpoint_6"]
    ckpt = run / "checkpoints" / "checkpoint_6"
    assert (ckpt / "model.safetensors").is_file()
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["algorithm"] == "cnnmlp" and state["world_size"] == 1

    for folder in ("model", "best_model"):
        config = json.loads((run / folder / "config.json").read_text())
        assert config["algorithm"]["name"] == "cnnmlp"
        assert config["data_spec"]["inputs"]["JOINT_POSITIONS"] == ["shoulder", "elbow", "gripper"]
        assert config["data_spec"]["inputs"]["RGB_IMAGES"] == ["top"]
        assert config["num_parameters"] > 1_000_000
        assert "torch" in config["versions"]
        stats = config["model_init_description"]["outputs"]["JOINT_TARGET_POSITIONS"]["stats"]
        assert len(stats["mean"]) == 3
        assert (run / folder / "README.md").read_text().startswith("# cnnmlp policy")
    model_cfg = json.loads((run / "model" / "config.json").read_text())
    assert model_cfg["training"]["steps"] == 6
    assert "max_steps=6" in model_cfg["training"]["command"]
    # The exported weights are the final checkpoint's weights.
    final = _weights(run / "model")
    ckpt_weights = _weights(ckpt)
    assert set(final) == set(ckpt_weights)
    assert all(np.array_equal(final[k], ckpt_weights[k]) for k in final)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "validation/loss", "train/grad_norm", "perf/samples_per_second",
                "perf/step_time_s", "perf/data_wait_fraction", "memory/cpu_rss_gb", "model/num_parameters"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    assert any(t.startswith("lr/") for t in tags["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6]
    assert all(np.isfinite(e.value) for e in acc.Scalars("train/loss"))
    assert acc.Scalars("model/num_parameters")[0].value == pytest.approx(model_cfg["num_parameters"], rel=1e-6)
    assert "inputs/camera_0" in tags["images"]
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(run / "tensorboard"))
    mux.Reload()
    hparams = [tags["_hparams_/session_start_info"] for tags in mux.PluginRunToTagToContent("hparams").values()
               if "_hparams_/session_start_info" in tags]
    assert hparams and b"algorithm/lr" in hparams[0] and b"max_steps" in hparams[0]


def test_policy_from_exported_folder_predicts_a_chunk(home: Path) -> None:
    result = run_cli(FAST + ["max_steps=2", "training_name=pol"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    from neuracore.ml import Policy
    from neuracore.ml.sim.pick_place import PickPlaceEnv

    policy = Policy.from_pretrained(_runs(home) / "pol" / "model")
    obs = PickPlaceEnv(7).observe()
    out = policy.predict({"JOINT_POSITIONS": obs.joint_positions, "RGB_IMAGES": obs.image[None]})
    assert out["JOINT_TARGET_POSITIONS"].shape == (5, 3)
    assert np.isfinite(out["JOINT_TARGET_POSITIONS"]).all()
    assert policy.output_items == {"JOINT_TARGET_POSITIONS": ["shoulder", "elbow", "gripper"]}


def _resume_args(name: str) -> list[str]:
    # Dropout-free CNNMLP still exercises optimizer state, RNG, data order and BatchNorm buffers.
    return FAST + ["max_steps=8", "checkpoint_frequency=3", "keep_last_n_checkpoints=2",
                   "validation_split=0.25", f"training_name={name}", "logging_frequency=2"]


def test_sigkill_then_resume_auto_gives_identical_weights(home: Path) -> None:
    straight = run_cli(_resume_args("straight"), home)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed = run_cli(_resume_args("killed"), home, env=fault_env(kill_after_step=5))
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    run = _runs(home) / "killed"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint_3"]
    assert not (run / "model").exists()

    resumed = run_cli(_resume_args("killed") + ["resume_checkpoint_path=auto"], home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "at step 3" in resumed.stderr
    a, b = _weights(_runs(home) / "straight" / "model"), _weights(run / "model")
    assert set(a) == set(b)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"


@pytest.mark.slow
def test_rotation_stays_correct_across_resumes(home: Path) -> None:
    base = FAST + ["checkpoint_frequency=2", "keep_last_n_checkpoints=2", "training_name=rot"]
    assert run_cli(base + ["max_steps=6"], home).returncode == 0
    ckpts = _runs(home) / "rot" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint_4", "checkpoint_6"]
    # Two more resumes, each extending the run: the newest two survive every time.
    for max_steps, expected in ((10, ["checkpoint_10", "checkpoint_8"]), (12, ["checkpoint_10", "checkpoint_12"])):
        result = run_cli(base + [f"max_steps={max_steps}", "resume_checkpoint_path=auto"], home)
        assert result.returncode == 0, result.stderr[-3000:]
        assert sorted(p.name for p in ckpts.iterdir()) == sorted(expected)
    state = json.loads((ckpts / "checkpoint_12" / "trainer_state.json").read_text())
    assert state["step"] == 12


def test_fresh_run_refuses_to_overwrite_checkpoints(home: Path) -> None:
    assert run_cli(FAST + ["max_steps=2", "training_name=taken"], home).returncode == 0
    again = run_cli(FAST + ["max_steps=2", "training_name=taken"], home)
    assert again.returncode == 2
    assert "already has checkpoints" in again.stderr and "resume_checkpoint_path=auto" in again.stderr
    assert (_runs(home) / "taken" / "checkpoints" / "checkpoint_2").is_dir()


def test_corrupt_checkpoint_resume_fails_loudly(home: Path) -> None:
    assert run_cli(FAST + ["max_steps=2", "training_name=corrupt"], home).returncode == 0
    weights = _runs(home) / "corrupt" / "checkpoints" / "checkpoint_2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = run_cli(FAST + ["max_steps=4", "training_name=corrupt", "resume_checkpoint_path=auto"], home)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.startswith("neuracore: error:")]
    assert len(lines) == 1 and "checkpoint_2" in lines[0] and "model.safetensors is not the file that was saved" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (_runs(home) / "corrupt" / "checkpoints" / "checkpoint_4").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_ranks_on_cpu(home: Path) -> None:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {**os.environ, "NEURACORE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port()),
           "recipes/train.py", *FAST, "max_steps=4", "checkpoint_frequency=2", "logging_frequency=2"]
    result = run_group(cmd, env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = list(_runs(home).iterdir())
    assert len(runs) == 1, f"ranks must share one run folder, got {[r.name for r in runs]}"
    log = (runs[0] / "train.log").read_text()
    assert "world_size=2" in log.splitlines()[0]
    assert log.count("world_size=") == 1  # only rank 0 writes the log
    state = json.loads((runs[0] / "checkpoints" / "checkpoint_4" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4
    assert state["samples_seen"] == 4 * 4 * 2  # steps x per-device batch x ranks
    assert (runs[0] / "model" / "model.safetensors").is_file()


def test_multirun_sweep_gives_one_run_folder_per_job(home: Path) -> None:
    result = run_cli(["--multirun", *FAST, "max_steps=2", "algorithm.lr=1e-4,5e-4"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(_runs(home).iterdir())
    assert len(runs) == 2
    lrs = sorted(json.loads((r / "model" / "config.json").read_text())["algorithm"]["hyperparameters"]["lr"]
                 for r in runs)
    assert lrs == [1e-4, 5e-4]


def test_recipe_entry_point_matches_module_entry_point(home: Path) -> None:
    result = run_cli(["recipes/train.py", *FAST, "max_steps=2", "training_name=recipe"], home, module="")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (_runs(home) / "recipe" / "model" / "config.json").is_file()


def test_gradient_accumulation_counts_optimizer_steps(home: Path) -> None:
    result = run_cli(FAST + ["max_steps=3", "gradient_accumulation_steps=2", "training_name=accum",
                             "checkpoint_frequency=100"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((_runs(home) / "accum" / "checkpoints" / "checkpoint_3" / "trainer_state.json").read_text())
    assert state["step"] == 3
    assert state["batches_in_epoch"] == 6  # two micro-batches per optimizer step
    assert state["samples_seen"] == 3 * 2 * 4


def test_pretrained_weights_unavailable_is_an_error_not_a_random_model(home: Path, tmp_path: Path) -> None:
    result = run_cli(FAST + ["max_steps=1", "algorithm.use_pretrained_weights=true", "training_name=pre"], home,
                     env={"TORCH_HOME": str(tmp_path / "torch_home"), "NEURACORE_OFFLINE": "1"})
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.startswith("neuracore: error:")]
    assert len(lines) == 1
    assert "use_pretrained_weights=true" in lines[0] and "resnet18" in lines[0]
    assert "use_pretrained_weights=false" in lines[0]
    assert not (_runs(home) / "pre").exists()  # a run that never started leaves no folder behind
    assert "Traceback" not in result.stderr


def test_push_to_storage_at_the_end_then_load_by_repo_name(home: Path) -> None:
    result = run_cli(FAST + ["max_steps=2", "training_name=pushed", "push_to_storage=acme/cube"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pushed model to acme/cube@" in result.stderr and "(branch main)" in result.stderr
    from neuracore.ml import Policy
    from neuracore.ml.sim.pick_place import PickPlaceEnv

    local = Policy.from_pretrained(_runs(home) / "pushed" / "model")
    remote = Policy.from_pretrained("acme/cube")
    best = Policy.from_pretrained("acme/cube@best")
    obs = PickPlaceEnv(3).observe()
    observation = {"JOINT_POSITIONS": obs.joint_positions, "RGB_IMAGES": obs.image[None]}
    expected = local.predict(observation)["JOINT_TARGET_POSITIONS"]
    assert np.array_equal(remote.predict(observation)["JOINT_TARGET_POSITIONS"], expected)
    assert best.predict(observation)["JOINT_TARGET_POSITIONS"].shape == expected.shape

    bad = run_cli(FAST + ["max_steps=2", "training_name=badpush", "push_to_storage=../evil"], home)
    assert bad.returncode == 2 and "push_to_storage: repo='../evil'" in bad.stderr

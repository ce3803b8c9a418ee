"""End to end: one run on two datasets of different robots (shared and per-robot statistics), export, resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import FAST, fault_env, run_cli
from tests.ml.datasets.test_mixture import make_second

MIX = [a for a in FAST if not a.startswith("dataset_name=")] + [
    "dataset_name=[demo,second]", "max_steps=4", "checkpoint_frequency=2", "validation_split=0.25",
    "logging_frequency=2", "algorithm.use_pretrained_weights=false",
]


def _run(home: Path, name: str) -> Path:
    return home / "training" / "runs" / name


@pytest.fixture()
def mix_home(home: Path) -> Path:
    make_second(home / "datasets", episodes=4, length=8)
    return home


def test_per_robot_mixture_trains_exports_and_runs_for_each_robot(mix_home: Path) -> None:
    from neuracore.ml.export.policy import Policy

    out = run_cli(MIX + ["training_name=per_robot", "dataset.statistics=per_robot", "dataset_weights=[1,3]"], mix_home)
    assert out.returncode == 0, out.stderr[-3000:]
    log = (_run(mix_home, "per_robot") / "train.log").read_text()
    assert "dataset demo (" in log and "dataset second (" in log and "robots other_arm" in log
    assert "weight 0.7500" in log
    config = json.loads((_run(mix_home, "per_robot") / "model" / "config.json").read_text())
    ds = config["dataset"]
    assert ds["name"] == "demo+second" and ds["statistics"] == "per_robot"
    assert [c["name"] for c in ds["components"]] == ["demo", "second"]
    assert [c["weight"] for c in ds["components"]] == [0.25, 0.75]
    assert ds["components"][1]["train_episodes"] == 3 and ds["components"][1]["validation_episodes"] == 1
    assert ds["robot_items"]["other_arm"]["JOINT_POSITIONS"] == ["other_arm/elbow", "other_arm/wrist"]
    readme = (_run(mix_home, "per_robot") / "model" / "README.md").read_text()
    assert "second" in readme and "per_robot" in readme

    policy = Policy.from_pretrained(_run(mix_home, "per_robot") / "model", robot="other_arm")
    image = np.zeros((64, 64, 3), np.uint8)
    action = policy.predict({"JOINT_POSITIONS": {"elbow": 0.1, "wrist": 0.2}, "RGB_IMAGES": {"top": image}})
    assert action["JOINT_TARGET_POSITIONS"].shape == (5, 2)  # only the robot's own items come back
    assert policy.output_items == {"JOINT_TARGET_POSITIONS": ["elbow", "wrist"]}
    demo_policy = Policy.from_pretrained(_run(mix_home, "per_robot") / "model", robot="planar_arm")
    act = demo_policy.predict({"JOINT_POSITIONS": [0.0, 0.1, 0.2], "RGB_IMAGES": image[None]})
    assert act["JOINT_TARGET_POSITIONS"].shape == (5, 3)


def test_bad_mixture_input_is_one_line(mix_home: Path) -> None:
    from neuracore.ml.config.preflight import preflight
    from neuracore.ml.core.errors import ConfigError, DatasetError
    from neuracore.ml.train import CONFIG_DIR

    out = run_cli(MIX + ["dataset_weights=[1]"], mix_home)  # the CLI: one line, exit 2, no run folder
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "neuracore: error: dataset_weights: 1 weights for 2 datasets (demo, second); give one positive number per dataset")
    assert not (mix_home / "training" / "runs").exists() or not any((mix_home / "training" / "runs").iterdir())
    for extra, error, message in [
        (["input_robot_data_spec={ghost: {}}"], ConfigError, "robot 'ghost' is in none of the datasets demo, second"),
        (["dataset_name=[demo,nothere]"], DatasetError, "dataset_name=[demo, nothere]: 'nothere': no such dataset"),
        (["dataset_name=demo", "dataset_weights=[1,2]"], ConfigError,
         "needs a list of at least two names in dataset_name, got 'demo'"),
        (["dataset_name=[demo,demo]"], ConfigError, "dataset_name: 'demo' is listed twice"),
        (["dataset_weights=[1,-2]"], ConfigError, "weight -2.0 of dataset 'second' must be a positive finite number"),
        (["dataset.statistics=pooled"], ConfigError, "dataset.statistics='pooled': valid: shared, per_robot"),
        (["relative_actions.enabled=true"], ConfigError, "not available with several datasets"),
        (["dataset_name=[demo,s3://bucket/ds]"], ConfigError,
         "dataset_name: 's3://bucket/ds' would be read shard by shard from storage, which takes one dataset per run"),
        (["dataset_name=[demo,org/ds]", "dataset.stream=true"], ConfigError, "'org/ds' would be read shard by shard"),
    ]:
        with pytest.raises(error, match=re.escape(message)):
            preflight(MIX + extra, CONFIG_DIR)
    preflight(MIX + ["dataset.statistics=per_robot", "dataset_weights=[2,1]"], CONFIG_DIR)  # a good one passes


@pytest.mark.slow
def test_shared_mixture_sigkill_then_resume_is_bit_identical(mix_home: Path) -> None:
    args = MIX + ["max_steps=6", "dataset_weights=[2,1]"]
    straight = run_cli(args + ["training_name=straight"], mix_home)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run_cli(args + ["training_name=killed"], mix_home, env=fault_env(kill_after_step=3))
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    # the checkpoint is tied to the mixture: other weights are refused, not silently resumed
    other = run_cli(MIX + ["max_steps=6", "dataset_weights=[1,1]", "training_name=killed",
                           "resume_checkpoint_path=auto"], mix_home)
    assert other.returncode != 0 and "dataset_fingerprint" in other.stderr
    resumed = run_cli(args + ["training_name=killed", "resume_checkpoint_path=auto"], mix_home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(_run(mix_home, "straight") / "model" / "model.safetensors"))
    b = load_file(str(_run(mix_home, "killed") / "model" / "model.safetensors"))
    assert set(a) == set(b)
    assert not [k for k in a if not np.array_equal(a[k], b[k])]

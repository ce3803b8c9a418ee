"""ACT and Diffusion Policy train on imported datasets with more than joint positions and one camera."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from neuracore.ml.datasets import api
from tests.conftest import run_cli
from tests.ml.algorithms.test_act import TINY as ACT_TINY
from tests.ml.algorithms.test_diffusion_policy import TINY as DP_TINY
from tests.ml.datasets.test_import_hdf5 import write_act, write_robomimic

COMMON = ["batch_size=2", "num_workers=0", "max_steps=2", "output_prediction_horizon=4", "training.log_images=false",
          "validation_split=0.34"]
TINY = {"act": ACT_TINY, "diffusion_policy": DP_TINY}
# ACT-style HDF5: 14 joints, joint velocities as a second input, two cameras.
ALOHA = ["input_data_types=[JOINT_POSITIONS,JOINT_VELOCITIES,RGB_IMAGES]", "output_data_types=[JOINT_TARGET_POSITIONS]"]
# robomimic: end-effector pose (xyz + quaternion) and gripper opening as inputs next to the joints.
ROBOMIMIC = ["input_data_types=[JOINT_POSITIONS,END_EFFECTOR_POSES,PARALLEL_GRIPPER_OPEN_AMOUNTS,RGB_IMAGES]",
             "output_data_types=[JOINT_TARGET_POSITIONS]"]


def _override(algorithm: str) -> list[str]:
    def text(v):
        return "[" + ",".join(map(str, v)) + "]" if isinstance(v, list) else str(v).lower() if isinstance(v, bool) else str(v)

    return [f"algorithm={algorithm}", *(f"algorithm.{k}={text(v)}" for k, v in TINY[algorithm].items())]


@pytest.mark.parametrize("algorithm", ["act", "diffusion_policy"])
@pytest.mark.parametrize("source", ["aloha", "robomimic"])
def test_trains_on_imported_dataset(home: Path, tmp_path: Path, algorithm: str, source: str) -> None:
    if source == "aloha":
        write_act(tmp_path / "src", lengths=[9, 8, 10], cams=("top", "left"))
        api.import_dataset("hdf5", tmp_path / "src", "imp", root=home / "datasets", robot="aloha")
        spec = ALOHA
    else:
        write_robomimic(tmp_path / "rm.hdf5", lengths=(9, 8, 10))
        api.import_dataset("hdf5", tmp_path / "rm.hdf5", "imp", root=home / "datasets")
        spec = ROBOMIMIC
    name = f"{algorithm}_{source}"
    result = run_cli([*_override(algorithm), "dataset_name=imp", *COMMON, *spec, f"training_name={name}"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    model = home / "training" / "runs" / name / "model"
    config = json.loads((model / "config.json").read_text())
    inputs = config["data_spec"]["inputs"]
    wanted = spec[0].split("=[", 1)[1].rstrip("]").split(",")
    assert sorted(inputs) == sorted(wanted)
    if source == "aloha":
        assert inputs["RGB_IMAGES"] == ["left", "top"] and len(inputs["JOINT_VELOCITIES"]) == 14
    else:
        assert len(inputs["END_EFFECTOR_POSES"]) == 1 and len(inputs["PARALLEL_GRIPPER_OPEN_AMOUNTS"]) >= 1
    weights = load_file(str(model / "model.safetensors"))
    assert all(v.size == 0 or abs(v).max() < 1e6 for v in weights.values())  # finite, trained weights

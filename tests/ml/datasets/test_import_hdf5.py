"""HDF5 import: ACT episode folders and robomimic files, values equal to the source, bad data."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from neuracore.ml.core.errors import DatasetError
from neuracore.ml.datasets import api
from neuracore.ml.datasets.format import open_dataset

ACT_LENGTHS = [9, 6, 11]


def write_act(folder: Path, lengths=ACT_LENGTHS, cams=("top", "left"), seed: int = 0) -> list[dict[str, np.ndarray]]:
    """ACT-style `episode_<i>.hdf5` files; returns what each holds."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for e, n in enumerate(lengths):
        ep = {
            "observations/qpos": rng.normal(size=(n, 14)).astype(np.float32),
            "observations/qvel": rng.normal(size=(n, 14)),
            "action": rng.normal(size=(n, 14)),
            **{f"observations/images/{c}": rng.integers(0, 256, (n, 12, 16, 3), dtype=np.uint8) for c in cams},
        }
        with h5py.File(folder / f"episode_{e}.hdf5", "w") as f:
            f.attrs["sim"] = True
            for k, v in ep.items():
                f[k] = v
        out.append(ep)
    return out


def write_robomimic(path: Path, lengths=(5, 8), seed: int = 0) -> list[dict[str, np.ndarray]]:
    """A robomimic-style file with data/demo_<i>; returns what each demo holds."""
    rng = np.random.default_rng(seed)
    out = []
    with h5py.File(path, "w") as f:
        for d, n in enumerate(lengths):
            demo = {
                "obs/robot0_joint_pos": rng.normal(size=(n, 7)),
                "obs/robot0_eef_pos": rng.normal(size=(n, 3)),
                "obs/robot0_eef_quat": rng.normal(size=(n, 4)),
                "obs/robot0_gripper_qpos": rng.normal(size=(n, 2)),
                "obs/object": rng.normal(size=(n, 10)),
                "obs/agentview_image": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
                "actions": rng.normal(size=(n, 7)),
            }
            for k, v in demo.items():
                f[f"data/demo_{d}/{k}"] = v
            out.append(demo)
        f["data"].attrs["language"] = "lift the cube"
    return out


def test_act_folder_show_equals_source(tmp_path: Path) -> None:
    src = write_act(tmp_path / "act")
    api.import_dataset("hdf5", tmp_path / "act", "act", root=tmp_path / "root", robot="aloha", language="transfer")
    spec = open_dataset("act", tmp_path / "root").spec
    assert spec.frequency == 50.0
    joints = [f"joint_{i}" for i in range(14)]
    assert spec.robots == {"aloha": {"JOINT_POSITIONS": joints, "JOINT_VELOCITIES": joints,
                                     "JOINT_TARGET_POSITIONS": joints, "RGB_IMAGES": ["left", "top"],
                                     "LANGUAGE": ["instruction"]}}
    for e, t in [(0, 0), (1, 5), (2, 10), (2, 4)]:
        values = api.show_frame("act", e, t, tmp_path / "root")["values"]
        np.testing.assert_array_equal([values["JOINT_POSITIONS"][j] for j in joints], src[e]["observations/qpos"][t])
        np.testing.assert_array_equal([values["JOINT_VELOCITIES"][j] for j in joints],
                                      src[e]["observations/qvel"][t].astype(np.float32))
        np.testing.assert_array_equal([values["JOINT_TARGET_POSITIONS"][j] for j in joints],
                                      src[e]["action"][t].astype(np.float32))
        for cam in ("top", "left"):
            assert values["RGB_IMAGES"][cam]["mean"] == float(src[e][f"observations/images/{cam}"][t].mean())
        assert values["LANGUAGE"] == {"instruction": "transfer"}


def test_robomimic_show_equals_source(tmp_path: Path) -> None:
    src = write_robomimic(tmp_path / "rm.hdf5")
    api.import_dataset("hdf5", tmp_path / "rm.hdf5", "rm", root=tmp_path / "root", workers=2)
    spec = open_dataset("rm", tmp_path / "root").spec
    assert spec.frequency == 20.0
    robot = spec.robots["robot"]
    assert robot["END_EFFECTOR_POSES"] == ["robot0_eef"]
    assert robot["RGB_IMAGES"] == ["agentview"]
    assert robot["CUSTOM_1D"] == [f"object_{i}" for i in range(10)]
    assert robot["JOINT_TARGET_POSITIONS"] == [f"action_{i}" for i in range(7)]
    for d, t in [(0, 4), (1, 0), (1, 7)]:
        values = api.show_frame("rm", d, t, tmp_path / "root")["values"]
        f32 = lambda a: a.astype(np.float32).tolist()
        assert values["END_EFFECTOR_POSES"]["robot0_eef"] == f32(
            np.concatenate([src[d]["obs/robot0_eef_pos"][t], src[d]["obs/robot0_eef_quat"][t]]))
        assert [values["JOINT_POSITIONS"][f"joint_{i}"] for i in range(7)] == f32(src[d]["obs/robot0_joint_pos"][t])
        assert [values["PARALLEL_GRIPPER_OPEN_AMOUNTS"][f"robot0_gripper_qpos_{i}"] for i in range(2)] == f32(
            src[d]["obs/robot0_gripper_qpos"][t])
        assert [values["JOINT_TARGET_POSITIONS"][f"action_{i}"] for i in range(7)] == f32(src[d]["actions"][t])
        assert values["RGB_IMAGES"]["agentview"]["mean"] == float(src[d]["obs/agentview_image"][t].mean())
        assert values["LANGUAGE"] == {"instruction": "lift the cube"}


def test_truncated_hdf5_names_file_and_skip(tmp_path: Path) -> None:
    write_act(tmp_path / "act")
    bad = tmp_path / "act" / "episode_1.hdf5"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(DatasetError, match=r"episode_1.hdf5: unreadable HDF5 file \(truncated or not HDF5"):
        api.import_dataset("hdf5", tmp_path / "act", "a", root=tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == []
    api.import_dataset("hdf5", tmp_path / "act", "a", root=tmp_path / "root", skip_bad_episodes=True)
    spec = open_dataset("a", tmp_path / "root").spec
    assert [e.length for e in spec.episodes] == [ACT_LENGTHS[0], ACT_LENGTHS[2]]
    assert [s["label"] for s in spec.source["skipped_episodes"]] == ["episode_1.hdf5"]


def test_camera_missing_in_one_episode(tmp_path: Path) -> None:
    write_act(tmp_path / "act")
    with h5py.File(tmp_path / "act" / "episode_2.hdf5", "a") as f:
        del f["observations/images/left"]
    with pytest.raises(DatasetError, match=r"^episode 2 \(episode_2.hdf5\): RGB_IMAGES 'observations/images/left' "
                                           r"is missing$"):
        api.import_dataset("hdf5", tmp_path / "act", "a", root=tmp_path / "root")


def test_wrong_joint_width_and_nan_and_empty(tmp_path: Path) -> None:
    write_act(tmp_path / "act", cams=("top",))
    with h5py.File(tmp_path / "act" / "episode_1.hdf5", "a") as f:
        del f["observations/qpos"]
        f["observations/qpos"] = np.zeros((6, 13), np.float32)
    with pytest.raises(DatasetError, match=r"^episode 1 \(episode_1.hdf5\): 'observations/qpos' has 13 values per frame, "
                                           r"expected 14 \(joint_0, .*joint_13\)$"):
        api.import_dataset("hdf5", tmp_path / "act", "a", root=tmp_path / "root")
    write_act(tmp_path / "act2", cams=("top",))
    with h5py.File(tmp_path / "act2" / "episode_2.hdf5", "a") as f:
        f["action"][3, 5] = np.inf
    with pytest.raises(DatasetError, match=r"^episode 2 \(episode_2.hdf5\) frame 3: 'action' value 'joint_5' is NaN or Inf$"):
        api.import_dataset("hdf5", tmp_path / "act2", "a", root=tmp_path / "root")
    write_act(tmp_path / "act3", lengths=[4, 0, 3], cams=("top",))
    with pytest.raises(DatasetError, match=r"^episode 1 \(episode_1.hdf5\): empty episode \(0 frames\)$"):
        api.import_dataset("hdf5", tmp_path / "act3", "a", root=tmp_path / "root")


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file or folder"):
        api.import_dataset("hdf5", tmp_path / "nope", "a", root=tmp_path / "root")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty: no episode_\*.hdf5 files"):
        api.import_dataset("hdf5", tmp_path / "empty", "a", root=tmp_path / "root")

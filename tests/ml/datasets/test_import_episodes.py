"""`episodes` import: multi-rate streams held within max_delay_s, trimming, multi-robot, bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets import api
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.datasets.importers.common import synchronize


def write_episode(folder: Path, robot: str, streams: dict[str, tuple[str, list[str], np.ndarray, np.ndarray]],
                  language: str | None = None) -> None:
    """streams: name -> (DATA_TYPE, items, timestamps, values)."""
    folder.mkdir(parents=True)
    meta = {"robot": robot, "streams": {n: {"data_type": dt, "items": items} for n, (dt, items, _, _) in streams.items()}}
    if language:
        meta["language"] = language
    (folder / "episode.json").write_text(json.dumps(meta))
    for name, (_, _, ts, values) in streams.items():
        np.savez(folder / f"{name}.npz", timestamps=ts, values=values)


def _ramp(ts: np.ndarray, width: int, offset: float = 0.0) -> np.ndarray:
    """Values that encode their own timestamp: row = ts * 1000 + column + offset."""
    return (ts[:, None] * 1000 + np.arange(width) + offset).astype(np.float32)


def test_synchronize_previous_sample_hold_and_trim() -> None:
    a_ts = np.arange(0.0, 1.0, 0.01)  # 100 Hz from 0.00
    b_ts = np.arange(0.05, 0.80, 0.04)  # 25 Hz, starts late, ends early
    out = synchronize({"a": (a_ts, a_ts * 10), "b": (b_ts, b_ts * 10)}, 10.0, max_delay_s=0.05, where="ep")
    # grid starts at b's first sample (0.05); b's last sample 0.77 stays fresh until 0.82 → last frame 0.75
    np.testing.assert_allclose(out["a"], np.arange(0.05, 0.76, 0.1) * 10, atol=1e-9)
    np.testing.assert_allclose(out["b"], [0.5, 1.3, 2.5, 3.3, 4.5, 5.3, 6.5, 7.3], atol=1e-9)


def test_synchronize_gap_and_bad_timestamps() -> None:
    ts = np.array([0.0, 0.1, 0.2, 0.6, 0.7])
    with pytest.raises(DatasetError, match=r"^ep: stream 'b' has no sample within max_delay_s=0.15 at t=0.400s "
                                           r"\(frame 4 of the resampled episode\)$"):
        synchronize({"a": (np.arange(0, 0.8, 0.1), np.zeros(8)), "b": (ts, np.zeros(5))}, 10.0, 0.15, "ep")
    with pytest.raises(DatasetError, match=r"^ep stream 'a' frame 2: timestamps not increasing \(0.100000 then 0.100000\)$"):
        synchronize({"a": (np.array([0.0, 0.1, 0.1]), np.zeros(3))}, 10.0, 0.15, "ep")


@pytest.fixture()
def recordings(tmp_path: Path) -> Path:
    root = tmp_path / "rec"
    for e in range(3):
        j_ts = np.arange(0.0, 2.0, 0.01) + 0.003 * e  # 100 Hz joints
        t_ts = np.arange(0.02, 1.9, 0.05)  # 20 Hz targets, starts late, ends early
        c_ts = np.arange(0.0, 2.0, 1 / 15)  # 15 Hz camera
        cam = (np.arange(len(c_ts))[:, None, None, None] * np.ones((1, 6, 8, 3))).astype(np.uint8)
        write_episode(root / f"ep_{e:03d}", "arm_a", {
            "joints": ("JOINT_POSITIONS", ["j0", "j1", "j2"], j_ts, _ramp(j_ts, 3)),
            "target": ("JOINT_TARGET_POSITIONS", ["j0", "j1", "j2"], t_ts, _ramp(t_ts, 3, 0.5)),
            "wrist": ("RGB_IMAGES", ["wrist"], c_ts, cam),
        }, language="stack" if e == 0 else None)
    # a second robot with other joints and an end-effector pose, same camera name
    ts = np.arange(0.0, 1.0, 0.1)
    write_episode(root / "ep_100", "arm_b", {
        "joints": ("JOINT_POSITIONS", ["k0", "k1"], ts, _ramp(ts, 2)),
        "target": ("JOINT_TARGET_POSITIONS", ["k0", "k1"], ts, _ramp(ts, 2, 0.5)),
        "pose": ("END_EFFECTOR_POSES", ["tool"], ts, _ramp(ts, 7)),
        "wrist": ("RGB_IMAGES", ["wrist"], ts, np.full((10, 6, 8, 3), 7, np.uint8)),
    })
    return root


def test_multi_rate_multi_robot_import(recordings: Path, tmp_path: Path) -> None:
    api.import_dataset("episodes", recordings, "mine", root=tmp_path / "root", frequency=10.0, max_delay_s=0.1,
                       language="default task", workers=2)
    spec = open_dataset("mine", tmp_path / "root").spec
    assert spec.robots["arm_a"]["JOINT_POSITIONS"] == ["j0", "j1", "j2"]
    assert spec.robots["arm_b"] == {"JOINT_POSITIONS": ["k0", "k1"], "JOINT_TARGET_POSITIONS": ["k0", "k1"],
                                    "END_EFFECTOR_POSES": ["tool"], "RGB_IMAGES": ["wrist"], "LANGUAGE": ["instruction"]}
    # arm_a episodes: start at the target stream's first sample (0.02), last frame 1.92, targets stale after 1.87 + 0.1
    assert [e.length for e in spec.episodes] == [20, 20, 20, 10]
    assert [e.language for e in spec.episodes] == ["stack", "default task", "default task", "default task"]
    for e in range(3):
        for frame in (0, 7, 19):
            t = 0.02 + frame * 0.1
            values = api.show_frame("mine", e, frame, tmp_path / "root")["values"]
            j_t = np.floor((t - 0.003 * e) * 100 + 1e-6) / 100 + 0.003 * e  # latest 100 Hz sample at or before t
            t_t = min(0.02 + np.floor((t - 0.02) / 0.05 + 1e-6) * 0.05, 1.87)  # held past the last sample
            c_i = int(np.floor(t * 15 + 1e-6))
            assert values["JOINT_POSITIONS"]["j1"] == pytest.approx(j_t * 1000 + 1, abs=1e-3)
            assert values["JOINT_TARGET_POSITIONS"]["j2"] == pytest.approx(t_t * 1000 + 2.5, abs=1e-3)
            assert values["RGB_IMAGES"]["wrist"]["mean"] == c_i
    values = api.show_frame("mine", 3, 4, tmp_path / "root")["values"]
    assert values["JOINT_POSITIONS"] == {"k0": pytest.approx(400.0), "k1": pytest.approx(401.0)}
    assert values["END_EFFECTOR_POSES"]["tool"] == pytest.approx([400.0 + i for i in range(7)])
    assert "j0" not in values["JOINT_POSITIONS"]


def test_gap_and_timestamps_errors_and_skip(recordings: Path, tmp_path: Path) -> None:
    with np.load(recordings / "ep_001" / "target.npz") as z:
        ts, values = z["timestamps"].copy(), z["values"]
    np.savez(recordings / "ep_001" / "target.npz", timestamps=np.delete(ts, range(10, 20)), values=np.delete(values, range(10, 20), 0))
    ts2 = ts.copy()
    ts2[5] = ts2[4]
    np.savez(recordings / "ep_002" / "target.npz", timestamps=ts2, values=values)
    with pytest.raises(DatasetError, match=r"^episode 1 \(ep_001\): stream 'target' has no sample within max_delay_s=0.1"):
        api.import_dataset("episodes", recordings, "m", root=tmp_path / "root", frequency=10.0, max_delay_s=0.1)
    api.import_dataset("episodes", recordings, "m", root=tmp_path / "root", frequency=10.0, max_delay_s=0.1,
                       skip_bad_episodes=True)
    spec = open_dataset("m", tmp_path / "root").spec
    assert len(spec.episodes) == 2
    errors = [s["error"] for s in spec.source["skipped_episodes"]]
    assert errors[1] == "episode 2 (ep_002) stream 'target' frame 5: timestamps not increasing (0.220000 then 0.220000)"


def test_wrong_width_nan_and_missing_file(tmp_path: Path) -> None:
    ts = np.arange(0.0, 1.0, 0.1)
    write_episode(tmp_path / "r" / "a", "arm", {"q": ("JOINT_POSITIONS", ["j0", "j1"], ts, np.zeros((10, 3)))})
    with pytest.raises(DatasetError, match=r"^episode 0 \(a\): stream 'q' has 3 values per frame, expected 2 \(j0, j1\)$"):
        api.import_dataset("episodes", tmp_path / "r", "m", root=tmp_path / "root", frequency=10.0)
    bad = np.zeros((10, 2))
    bad[4, 1] = np.nan
    write_episode(tmp_path / "r2" / "a", "arm", {"q": ("JOINT_POSITIONS", ["j0", "j1"], ts, bad)})
    with pytest.raises(DatasetError, match=r"^episode 0 \(a\) frame 4: JOINT_POSITIONS item 'j1' is NaN or Inf$"):
        api.import_dataset("episodes", tmp_path / "r2", "m", root=tmp_path / "root", frequency=10.0)
    (tmp_path / "r2" / "a" / "q.npz").unlink()
    with pytest.raises(DatasetError, match=r"q.npz: unreadable stream file"):
        api.import_dataset("episodes", tmp_path / "r2", "m", root=tmp_path / "root", frequency=10.0)
    with pytest.raises(ConfigError, match="--frequency: required"):
        api.import_dataset("episodes", tmp_path / "r2", "m", root=tmp_path / "root")
    assert list((tmp_path / "root").iterdir()) == []

"""LeRobot v3.0 datasets written by LeRobot's own writer (0.4.4) import with values equal to LeRobot's reader.

`lerobot_native_writer.py` records both variants (PNG images in parquet, SVT-AV1 mp4 videos) in a
subprocess and saves what `LeRobotDataset(...)[i]` returns for every frame; the dataset imported
with `tools/dataset.py import lerobot` must show the same values, and train.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from lerobot_native_writer import CAMERAS, FPS, JOINTS, LENGTHS, VECTORS

from neuracore.ml.datasets import api
from neuracore.ml.datasets.format import open_dataset
from tests.conftest import FAST, run_cli, run_group

WRITER = Path(__file__).with_name("lerobot_native_writer.py")
INSTALL = 'LeRobot is not installed: run `.venv/bin/pip install --no-deps "lerobot==0.4.4"` (--no-deps keeps our torch)'
# LeRobot key -> our DataType (the importer's defaults)
DATA_TYPES = {"observation.state": "JOINT_POSITIONS", "action": "JOINT_TARGET_POSITIONS",
              "observation.velocity": "JOINT_VELOCITIES"}
# (episode, frame) pairs: first frames, middle frames, and the last frame of every episode
FRAMES = [(0, 0), (0, LENGTHS[0] - 1), (1, 4), (1, LENGTHS[1] - 1), (2, 0), (2, LENGTHS[2] - 1)]
# Mean |decoded - written| per video frame (SVT-AV1 at LeRobot's crf 30 on 24x32 frames): about 2.5-6.
VIDEO_MEAN_ABS_ERROR = 8.0


@pytest.fixture(scope="module", params=["image", "video"])
def native(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(home, dataset name, LeRobot's reference npz, source folder) for one variant, imported with the CLI."""
    if importlib.util.find_spec("lerobot") is None:
        pytest.fail(INSTALL, pytrace=False)
    variant = request.param
    tmp = tmp_path_factory.mktemp(f"lerobot_native_{variant}")
    src, ref = tmp / "src", tmp / "reference.npz"
    # LeRobot's reader caches parquet through `datasets`: keep that in the temp folder, and stay offline.
    hf = {"HF_HOME": str(tmp / "hf"), "HF_DATASETS_CACHE": str(tmp / "hf" / "datasets"), "HF_HUB_OFFLINE": "1"}
    written = run_group([sys.executable, str(WRITER), str(src), variant, str(ref)], {**os.environ, **hf}, timeout=300)
    assert written.returncode == 0, written.stderr[-3000:]
    home = tmp / "home"
    name = f"lr_{variant}"
    imported = run_cli(["tools/dataset.py", "import", "lerobot", str(src), "--name", name], home, module="", timeout=300)
    assert imported.returncode == 0, imported.stderr[-3000:]
    return home, name, dict(np.load(ref)), src


def _index(ref: dict[str, np.ndarray], episode: int, frame: int) -> int:
    (hits,) = np.nonzero((ref["episode_index"] == episode) & (ref["frame_index"] == frame))
    assert len(hits) == 1, (episode, frame)
    return int(hits[0])


def test_episodes_frames_frequency_names_language(native) -> None:
    home, name, ref, _ = native
    info = api.dataset_info(name, home / "datasets")
    assert (info["episodes"], info["frames"], info["frequency"]) == (int(ref["num_episodes"]), len(ref["task"]),
                                                                      float(ref["fps"]))
    assert (info["episodes"], info["frames"], info["frequency"]) == (len(LENGTHS), sum(LENGTHS), FPS)
    assert info["source"]["codebase_version"] == "v3.0"
    names = {key: list(n) for key, n in zip(VECTORS, ref["names"].tolist())}
    assert names == dict.fromkeys(VECTORS, JOINTS)
    assert info["robots"]["so100"]["data_types"] == {
        **{DATA_TYPES[key]: names[key] for key in VECTORS}, "RGB_IMAGES": CAMERAS, "LANGUAGE": ["instruction"]}
    spec = open_dataset(name, home / "datasets").spec
    assert [e.length for e in spec.episodes] == np.bincount(ref["episode_index"]).tolist()
    assert [e.language for e in spec.episodes] == [str(ref["task"][_index(ref, e, 0)]) for e in range(len(LENGTHS))]


def test_source_file_layout(native) -> None:
    """The image variant keeps LeRobot's default layout (one data file); the video variant rolls data
    files over into a second chunk folder, has two episodes share an mp4 (the second at
    `from_timestamp` > 0) and starts a second mp4 for the last episode."""
    _, name, _, src = native
    rows = pq.read_table(src / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    data_files = [(r["data/chunk_index"], r["data/file_index"]) for r in rows]
    if name == "lr_image":
        assert data_files == [(0, 0)] * len(LENGTHS)
        assert not (src / "videos").exists()
        return
    assert data_files == [(0, 0), (0, 1), (1, 0)]
    for cam in CAMERAS:
        key = f"videos/observation.images.{cam}"
        assert [r[f"{key}/file_index"] for r in rows] == [0, 0, 1]
        assert [r[f"{key}/from_timestamp"] for r in rows] == pytest.approx([0.0, LENGTHS[0] / FPS, 0.0])


@pytest.mark.parametrize("episode,frame", FRAMES)
def test_show_equals_lerobot_reader(native, episode: int, frame: int) -> None:
    home, name, ref, _ = native
    i = _index(ref, episode, frame)
    values = api.show_frame(name, episode, frame, home / "datasets")["values"]
    for key, data_type in DATA_TYPES.items():
        assert ref[key].dtype == np.float32
        assert [values[data_type][j] for j in JOINTS] == ref[key][i].tolist(), key  # exact
    assert values["LANGUAGE"] == {"instruction": str(ref["task"][i])}
    for cam in CAMERAS:
        assert values["RGB_IMAGES"][cam] == {"shape": list(ref[cam][i].shape), "dtype": "uint8",
                                             "mean": float(ref[cam][i].mean())}


def test_show_command_prints_last_frame(native) -> None:
    home, name, ref, _ = native
    episode, frame = len(LENGTHS) - 1, LENGTHS[-1] - 1
    shown = run_cli(["tools/dataset.py", "show", name, "--episode", str(episode), "--frame", str(frame), "--json"],
                    home, module="", timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    values = json.loads(shown.stdout)["values"]
    i = _index(ref, episode, frame)
    assert [values["JOINT_POSITIONS"][j] for j in JOINTS] == ref["observation.state"][i].tolist()
    assert values["RGB_IMAGES"]["wrist"]["mean"] == float(ref["wrist"][i].mean())


def test_pixels_equal_lerobot_reader(native) -> None:
    """Every frame of every camera equals LeRobot's decode (round(x * 255) of its float CHW) exactly."""
    home, name, ref, _ = native
    table = open_dataset(name, home / "datasets").table
    for cam in CAMERAS:
        pixels = table.column(f"RGB_IMAGES.{cam}").combine_chunks().flatten().to_numpy().reshape(ref[cam].shape)
        np.testing.assert_array_equal(pixels, ref[cam])
        written = ref[f"written.{cam}"].astype(np.int16)
        if name == "lr_image":  # PNG is lossless: also equal to what was recorded
            np.testing.assert_array_equal(pixels, written)
        else:  # lossy video: close to what was recorded, and closest to its own frame, not a neighbour
            error = np.abs(pixels[:, None].astype(np.int16) - written[None]).mean(axis=(2, 3, 4))
            assert np.diag(error).max() < VIDEO_MEAN_ABS_ERROR, np.diag(error)
            np.testing.assert_array_equal(error.argmin(axis=1), np.arange(len(pixels)))


def test_trains_on_imported(native) -> None:
    home, name, _, _ = native
    args = [a for a in FAST if not a.startswith(("dataset_name=", "batch_size="))]
    result = run_cli(args + [f"dataset_name={name}", "batch_size=2", "max_steps=2", f"training_name={name}"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    model = home / "training" / "runs" / name / "model"
    assert name in (model / "config.json").read_text()
    assert (model / "model.safetensors").is_file()

"""LeRobot v3.0 import: images-in-parquet and mp4 variants, values equal to the source, bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lerobot_writer import CAMERAS, FPS, JOINTS, TASKS, decode_mp4, write_lerobot

from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets import api
from neuracore.ml.datasets.format import open_dataset

LENGTHS = [7, 12, 5]


@pytest.fixture(scope="module")
def image_variant(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("lerobot_img")
    source = write_lerobot(tmp / "src", LENGTHS, video=False)
    api.import_dataset("lerobot", tmp / "src", "ds", root=tmp / "root")
    return tmp, source


@pytest.fixture(scope="module")
def video_variant(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("lerobot_vid")
    source = write_lerobot(tmp / "src", LENGTHS, video=True, names_as_dict=True)
    api.import_dataset("lerobot", tmp / "src", "ds", root=tmp / "root", workers=2)
    return tmp, source


def test_layout_names_and_language(image_variant) -> None:
    tmp, _ = image_variant
    spec = open_dataset("ds", tmp / "root").spec
    assert spec.frequency == FPS
    assert [e.length for e in spec.episodes] == LENGTHS
    assert spec.robots == {"so100": {
        "JOINT_POSITIONS": JOINTS, "JOINT_TARGET_POSITIONS": JOINTS, "RGB_IMAGES": CAMERAS, "LANGUAGE": ["instruction"],
    }}
    assert [e.language for e in spec.episodes] == [TASKS[0], TASKS[1], TASKS[0]]
    assert "CUSTOM_1D" not in spec.robots["so100"]  # next.reward is not imported unless mapped


@pytest.mark.parametrize("episode,frame", [(0, 0), (1, 11), (2, 3), (1, 5)])
def test_show_equals_source_images_in_parquet(image_variant, episode: int, frame: int) -> None:
    tmp, src = image_variant
    shown = api.show_frame("ds", episode, frame, tmp / "root")
    values = shown["values"]
    assert [values["JOINT_POSITIONS"][j] for j in JOINTS] == src.state[episode][frame].tolist()
    assert [values["JOINT_TARGET_POSITIONS"][j] for j in JOINTS] == src.action[episode][frame].tolist()
    for cam in CAMERAS:
        img = src.images[episode][cam][frame]
        assert values["RGB_IMAGES"][cam] == {"shape": [32, 40, 3], "dtype": "uint8", "mean": float(img.mean())}
    assert values["LANGUAGE"] == {"instruction": src.tasks[episode]}


def test_table_pixels_equal_source(image_variant) -> None:
    tmp, src = image_variant
    ds = open_dataset("ds", tmp / "root")
    col = ds.table.column("RGB_IMAGES.wrist").combine_chunks().flatten().to_numpy().reshape(-1, 32, 40, 3)
    np.testing.assert_array_equal(col, np.concatenate([src.images[e]["wrist"] for e in range(3)]))


@pytest.mark.parametrize("episode,frame", [(0, 6), (1, 0), (2, 4)])
def test_show_equals_source_video(video_variant, episode: int, frame: int) -> None:
    tmp, src = video_variant
    values = api.show_frame("ds", episode, frame, tmp / "root")["values"]
    assert [values["JOINT_POSITIONS"][j] for j in JOINTS] == src.state[episode][frame].tolist()
    global_frame = sum(LENGTHS[:episode]) + frame
    for cam in CAMERAS:
        decoded = decode_mp4(tmp / "src" / "videos" / f"observation.images.{cam}" / "chunk-000" / "file-000.mp4")
        assert values["RGB_IMAGES"][cam]["mean"] == float(decoded[global_frame].mean())
        # lossy codec: close to what was encoded
        assert abs(values["RGB_IMAGES"][cam]["mean"] - src.images[episode][cam][frame].mean()) < 3


def test_video_frames_equal_decoded(video_variant) -> None:
    tmp, _ = video_variant
    ds = open_dataset("ds", tmp / "root")
    col = ds.table.column("RGB_IMAGES.top").combine_chunks().flatten().to_numpy().reshape(-1, 32, 40, 3)
    decoded = decode_mp4(tmp / "src" / "videos" / "observation.images.top" / "chunk-000" / "file-000.mp4")
    np.testing.assert_array_equal(col, decoded)
    assert api.verify_dataset("ds", tmp / "root")["frames"] == sum(LENGTHS)


def test_workers_give_identical_dataset(video_variant, tmp_path: Path) -> None:
    tmp, _ = video_variant
    api.import_dataset("lerobot", tmp / "src", "serial", root=tmp_path, workers=0)
    assert open_dataset("serial", tmp_path).spec.fingerprint == open_dataset("ds", tmp / "root").spec.fingerprint


def test_map_overrides_types_and_drops_keys(tmp_path: Path) -> None:
    write_lerobot(tmp_path / "src", [4, 3], video=False)
    mapping = tmp_path / "map.yaml"
    mapping.write_text("observation.state: JOINT_VELOCITIES\nnext.reward: CUSTOM_1D\nobservation.images.wrist: null\n")
    api.import_dataset("lerobot", tmp_path / "src", "m", root=tmp_path / "root", mapping=mapping, robot="arm")
    robots = open_dataset("m", tmp_path / "root").spec.robots
    assert robots == {"arm": {"JOINT_VELOCITIES": JOINTS, "JOINT_TARGET_POSITIONS": JOINTS, "RGB_IMAGES": ["top"],
                              "CUSTOM_1D": ["next.reward_0"], "LANGUAGE": ["instruction"]}}


def test_map_unknown_key_lists_features(tmp_path: Path) -> None:
    write_lerobot(tmp_path / "src", [4], video=False)
    with pytest.raises(ConfigError, match=r"--map: 'observation.nope' not in meta/info.json features; available: .*action"):
        api.import_dataset("lerobot", tmp_path / "src", "m", root=tmp_path, mapping={"observation.nope": "CUSTOM_1D"})
    with pytest.raises(ConfigError, match="unknown data type 'JOINTS'"):
        api.import_dataset("lerobot", tmp_path / "src", "m", root=tmp_path, mapping={"action": "JOINTS"})


def test_truncated_data_parquet_names_file(tmp_path: Path) -> None:
    write_lerobot(tmp_path / "src", [4, 3], video=False)
    data = tmp_path / "src" / "data" / "chunk-000" / "file-000.parquet"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"file-000.parquet: unreadable parquet file \(truncated or corrupt"):
        api.import_dataset("lerobot", tmp_path / "src", "t", root=tmp_path / "root")
    assert not (tmp_path / "root" / "t").exists()
    assert [p.name for p in (tmp_path / "root").iterdir()] == []  # no temp folder left either


def _rewrite_data(src: Path, edit) -> None:
    path = src / "data" / "chunk-000" / "file-000.parquet"
    rows = pq.read_table(path).to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_wrong_joint_vector_length_names_episode_and_frame(tmp_path: Path) -> None:
    write_lerobot(tmp_path / "src", [4, 3], video=False)
    _rewrite_data(tmp_path / "src", lambda rows: rows[5]["observation.state"].append(1.0))
    with pytest.raises(DatasetError, match=r"episode 1 \(data/chunk-000/file-000.parquet\) frame 1: "
                                           r"'observation.state' has 5 values, expected 4"):
        api.import_dataset("lerobot", tmp_path / "src", "t", root=tmp_path / "root")


def test_nan_and_timestamps_and_skip(tmp_path: Path) -> None:
    write_lerobot(tmp_path / "src", [4, 3, 5], video=False)

    def edit(rows):
        rows[1]["action"][2] = float("nan")  # episode 0 frame 1
        rows[6]["timestamp"] = rows[5]["timestamp"]  # episode 1 frame 2

    _rewrite_data(tmp_path / "src", edit)
    with pytest.raises(DatasetError, match=r"^episode 0 \(data/chunk-000/file-000.parquet\) frame 1: 'action' value "
                                           r"'wrist' is NaN or Inf$"):
        api.import_dataset("lerobot", tmp_path / "src", "t", root=tmp_path / "root")
    api.import_dataset("lerobot", tmp_path / "src", "t", root=tmp_path / "root", skip_bad_episodes=True)
    spec = open_dataset("t", tmp_path / "root").spec
    assert [e.length for e in spec.episodes] == [5]
    skipped = spec.source["skipped_episodes"]
    assert [s["index"] for s in skipped] == [0, 1]
    assert "frame 2: timestamps not increasing" in skipped[1]["error"]
    shown = api.show_frame("t", 0, 0, tmp_path / "root")
    assert shown["values"]["LANGUAGE"]["instruction"] == TASKS[0]  # third source episode


def test_missing_video_file_and_old_version(tmp_path: Path) -> None:
    write_lerobot(tmp_path / "src", [4, 3], video=True)
    (tmp_path / "src" / "videos" / "observation.images.top" / "chunk-000" / "file-000.mp4").unlink()
    with pytest.raises(DatasetError, match=r"episode 0 .*video .*observation.images.top.*file-000.mp4 cannot be decoded"):
        api.import_dataset("lerobot", tmp_path / "src", "t", root=tmp_path / "root")
    info = json.loads((tmp_path / "src" / "meta" / "info.json").read_text())
    info["codebase_version"] = "v2.1"
    (tmp_path / "src" / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="codebase_version 'v2.1'; only LeRobot v3.x"):
        api.import_dataset("lerobot", tmp_path / "src", "t", root=tmp_path / "root")


def test_camera_missing_in_one_episode_and_skip(tmp_path: Path) -> None:
    write_lerobot(tmp_path / "src", [4, 3, 5], video=True)
    meta = tmp_path / "src" / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    rows = pq.read_table(meta).to_pylist()
    rows[1]["videos/observation.images.wrist/chunk_index"] = None
    pq.write_table(pa.Table.from_pylist(rows), meta)
    with pytest.raises(DatasetError, match=r"^episode 1 \(data/chunk-000/file-000.parquet\): camera "
                                           r"'observation.images.wrist' has no video listed in meta/episodes$"):
        api.import_dataset("lerobot", tmp_path / "src", "t", root=tmp_path / "root")
    api.import_dataset("lerobot", tmp_path / "src", "t", root=tmp_path / "root", skip_bad_episodes=True)
    spec = open_dataset("t", tmp_path / "root").spec
    assert [e.length for e in spec.episodes] == [4, 5]
    assert [s["label"] for s in spec.source["skipped_episodes"]] == ["episode_index 1"]

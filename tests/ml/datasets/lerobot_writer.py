"""Writes small LeRobot v3.0 dataset folders for tests (images in parquet, or mp4 videos via PyAV)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FPS = 10
JOINTS = ["shoulder", "elbow", "wrist", "gripper"]
CAMERAS = ["top", "wrist"]
H, W = 32, 40
TASKS = ["pick the red cube", "push the block"]


@dataclass
class Source:
    """What was written: per episode the state/action arrays and per camera the frames."""

    state: list[np.ndarray]
    action: list[np.ndarray]
    images: list[dict[str, np.ndarray]]
    tasks: list[str]


def _frames(rng: np.random.Generator, n: int) -> np.ndarray:
    # Smooth gradients plus a moving square: compressible and distinct per frame.
    y, x = np.mgrid[0:H, 0:W]
    base = rng.integers(0, 200, 3)
    out = np.zeros((n, H, W, 3), np.uint8)
    for t in range(n):
        img = np.stack([(x * 4 + base[0] + t * 3) % 256, (y * 5 + base[1]) % 256, np.full_like(x, base[2])], -1)
        img[(t * 2) % (H - 8):(t * 2) % (H - 8) + 8, 4:12] = 255
        out[t] = img
    return out


def _png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _write_mp4(path: Path, frames: np.ndarray) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "18", "g": "4"}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_lerobot(root: Path, lengths: list[int], video: bool, seed: int = 0, robot_type: str = "so100",
                  names_as_dict: bool = False) -> Source:
    """A LeRobot v3.0 folder with `lengths` episodes in one data file (and one mp4 per camera)."""
    rng = np.random.default_rng(seed)
    states = [rng.normal(size=(n, len(JOINTS))).astype(np.float32) for n in lengths]
    actions = [rng.normal(size=(n, len(JOINTS))).astype(np.float32) for n in lengths]
    images = [{cam: _frames(rng, n) for cam in CAMERAS} for n in lengths]
    ep_tasks = [TASKS[i % len(TASKS)] for i in range(len(lengths))]
    names = {"motors": JOINTS} if names_as_dict else JOINTS
    features = {
        "observation.state": {"dtype": "float32", "shape": [len(JOINTS)], "names": names},
        "action": {"dtype": "float32", "shape": [len(JOINTS)], "names": names},
        **{f"observation.images.{c}": {"dtype": "video" if video else "image", "shape": [H, W, 3],
                                       "names": ["height", "width", "channels"]} for c in CAMERAS},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    info = {
        "codebase_version": "v3.0", "robot_type": robot_type, "total_episodes": len(lengths),
        "total_frames": sum(lengths), "total_tasks": len(TASKS), "chunks_size": 1000, "fps": FPS,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if video else None,
        "features": features,
    }
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=1))
    pq.write_table(pa.table({"task_index": list(range(len(TASKS))), "__index_level_0__": TASKS}),
                   root / "meta" / "tasks.parquet")
    # data: one file holding every episode, rows in episode order
    cols: dict[str, list] = {k: [] for k in ("observation.state", "action", "next.reward", "timestamp",
                                             "frame_index", "episode_index", "index", "task_index")}
    img_cols: dict[str, list] = {c: [] for c in CAMERAS}
    meta_rows = []
    start = 0
    for e, n in enumerate(lengths):
        cols["observation.state"] += states[e].tolist()
        cols["action"] += actions[e].tolist()
        cols["next.reward"] += [0.0] * n
        cols["timestamp"] += (np.arange(n) / FPS).astype(np.float32).tolist()
        cols["frame_index"] += list(range(n))
        cols["episode_index"] += [e] * n
        cols["index"] += list(range(start, start + n))
        cols["task_index"] += [TASKS.index(ep_tasks[e])] * n
        if not video:
            for c in CAMERAS:
                img_cols[c] += [{"bytes": _png(img), "path": None} for img in images[e][c]]
        row = {"episode_index": e, "tasks": [ep_tasks[e]], "length": n, "data/chunk_index": 0, "data/file_index": 0,
               "dataset_from_index": start, "dataset_to_index": start + n, "stats/action/mean": [0.0] * 4}
        if video:
            for c in CAMERAS:
                key = f"observation.images.{c}"
                row |= {f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                        f"videos/{key}/from_timestamp": start / FPS, f"videos/{key}/to_timestamp": (start + n) / FPS}
        meta_rows.append(row)
        start += n
    arrays = {
        "observation.state": pa.array(cols["observation.state"], pa.list_(pa.float32(), len(JOINTS))),
        "action": pa.array(cols["action"], pa.list_(pa.float32(), len(JOINTS))),
        "next.reward": pa.array(cols["next.reward"], pa.float32()),
        "timestamp": pa.array(cols["timestamp"], pa.float32()),
        **{k: pa.array(cols[k], pa.int64()) for k in ("frame_index", "episode_index", "index", "task_index")},
    }
    if not video:
        img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        for c in CAMERAS:
            arrays[f"observation.images.{c}"] = pa.array(img_cols[c], img_type)
    pq.write_table(pa.table(arrays), root / "data" / "chunk-000" / "file-000.parquet", row_group_size=16)
    pq.write_table(pa.Table.from_pylist(meta_rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    if video:
        for c in CAMERAS:
            frames = np.concatenate([images[e][c] for e in range(len(lengths))])
            _write_mp4(root / "videos" / f"observation.images.{c}" / "chunk-000" / "file-000.mp4", frames)
    return Source(states, actions, images, ep_tasks)


def decode_mp4(path: Path) -> np.ndarray:
    """Every frame of an mp4 as [N, H, W, 3] uint8 (the reference for video imports)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

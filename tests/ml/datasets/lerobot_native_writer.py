"""Writes a small LeRobot v3.0 dataset with LeRobot's own `LeRobotDataset` writer, then reads it back.

Run in a subprocess (LeRobot sets up logging and global state on import):

    python lerobot_native_writer.py ROOT {image,video} REFERENCE.npz

writes the dataset to ROOT (images as PNG in parquet, or mp4 videos) and saves to REFERENCE.npz
what LeRobot's own reader, `LeRobotDataset(repo_id, root=ROOT)[i]`, returns for every frame i:
vectors as float32, images as uint8 HWC (`round(x * 255)` of LeRobot's float CHW in [0, 1]), and the
episode/frame indices and task per frame. The video variant also rolls over LeRobot's files: one
data parquet per episode (two per chunk folder, so the last is in chunk-001), episodes 0 and 1 in one
mp4 per camera (episode 1 from `from_timestamp` 0.7 s on), episode 2 in a second mp4.

LeRobot 0.4.4 decodes videos with torchcodec when it is installed, else with torchvision's PyAV
`VideoReader`, which torchvision removed in 0.24. Neither is available here, so `_install_pyav_reader`
puts back a `torchvision.io.VideoReader` with the PyAV semantics LeRobot relies on (seek back to the
key frame at or before the time, then `frame.to_rgb()` per frame); LeRobot's own
`decode_video_frames_torchvision` then picks the frames (its timestamps, tolerance and episode offset
`from_timestamp` in the shared mp4).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO_ID = "neuracore/native"
FPS = 10
JOINTS = ["shoulder", "elbow", "wrist", "gripper"]
CAMERAS = ["top", "wrist"]
H, W = 24, 32
LENGTHS = [7, 9, 6]
TASKS = ["pick the red cube", "push the block", "pick the red cube"]
VECTORS = ["observation.state", "action", "observation.velocity"]


def features(video: bool) -> dict:
    """LeRobot feature spec: three named 4-joint vectors and two small RGB cameras."""
    vec = {"dtype": "float32", "shape": (len(JOINTS),), "names": JOINTS}
    img = {"dtype": "video" if video else "image", "shape": (H, W, 3), "names": ["height", "width", "channels"]}
    return {**{k: dict(vec) for k in VECTORS}, **{f"observation.images.{c}": dict(img) for c in CAMERAS}}


def _image(rng: np.random.Generator, t: int, base: np.ndarray) -> np.ndarray:
    # Smooth gradients that drift with t, plus a little noise: video compression keeps them close.
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([x * 5 + base[0] + t * 4, y * 6 + base[1], (x + y) * 3 + base[2] - t * 2], -1).astype(np.float64)
    img += rng.normal(0, 1.5, img.shape)
    img[4:12, 2 + 3 * t:10 + 3 * t] = 250  # a square moving 3 px a frame: every frame differs
    return np.clip(img, 0, 255).astype(np.uint8)


def write(root: Path, video: bool, split_files: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Record `LENGTHS` episodes with LeRobot's writer (PNG in parquet, or SVT-AV1 mp4); the frames given."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    rng = np.random.default_rng(seed)
    written: dict[str, list[np.ndarray]] = {c: [] for c in CAMERAS}
    ds = LeRobotDataset.create(REPO_ID, fps=FPS, features=features(video), root=root, robot_type="so100",
                               use_videos=video, image_writer_threads=0)
    if split_files:  # a new data file per episode, two files per chunk folder
        ds.meta.update_chunk_settings(chunks_size=2, data_files_size_in_mb=1e-6)
    for ep, n in enumerate(LENGTHS):
        if split_files and ep == len(LENGTHS) - 1:  # the first episodes share each mp4, the last starts a new one
            ds.meta.update_chunk_settings(video_files_size_in_mb=1e-6)
        bases = {c: rng.integers(0, 120, 3) for c in CAMERAS}
        for t in range(n):
            frame = {k: rng.normal(size=len(JOINTS)).astype(np.float32) for k in VECTORS}
            frame |= {f"observation.images.{c}": _image(rng, t, bases[c]) for c in CAMERAS}
            for c in CAMERAS:
                written[c].append(frame[f"observation.images.{c}"])
            ds.add_frame({**frame, "task": TASKS[ep]})
        ds.save_episode()
    ds.finalize()
    return {c: np.stack(v) for c, v in written.items()}


class _PyAVVideoReader:
    """The part of torchvision's removed PyAV `VideoReader` that LeRobot's pyav backend uses."""

    def __init__(self, src: str, stream: str = "video") -> None:
        import av

        self.container = av.open(src)
        self._stream = self.container.streams.video[0]
        self._frames = self.container.decode(self._stream)

    def seek(self, time_s: float, keyframes_only: bool = False) -> _PyAVVideoReader:
        offset = round(max(time_s, 0.0) / self._stream.time_base)
        self.container.seek(offset, backward=True, any_frame=False, stream=self._stream)
        self._frames = self.container.decode(self._stream)
        return self

    def __iter__(self) -> _PyAVVideoReader:
        return self

    def __next__(self) -> dict:
        import torch

        frame = next(self._frames)
        return {"data": torch.from_numpy(frame.to_rgb().to_ndarray()).permute(2, 0, 1),
                "pts": float(frame.pts * frame.time_base)}


def _install_pyav_reader() -> None:
    import torchvision.io

    if not hasattr(torchvision.io, "VideoReader"):
        torchvision.io.VideoReader = _PyAVVideoReader


def read_back(root: Path, out: Path, written: dict[str, np.ndarray]) -> None:
    """Every frame as LeRobot's own reader returns it, saved to `out` (npz)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    _install_pyav_reader()
    ds = LeRobotDataset(REPO_ID, root=root, video_backend="pyav")
    items = [ds[i] for i in range(len(ds))]
    arrays = {k: np.stack([it[k].numpy() for it in items]) for k in VECTORS}
    for c in CAMERAS:
        chw = np.stack([it[f"observation.images.{c}"].numpy() for it in items])  # float32 [0, 1]
        arrays[c] = np.round(chw * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    for k in ("episode_index", "frame_index", "timestamp"):
        arrays[k] = np.array([it[k].item() for it in items])
    arrays["task"] = np.array([it["task"] for it in items])
    arrays["fps"] = np.array(ds.fps)
    arrays["num_episodes"] = np.array(ds.num_episodes)
    arrays["names"] = np.array([ds.features[k]["names"] for k in VECTORS])
    arrays |= {f"written.{c}": frames for c, frames in written.items()}
    np.savez(out, **arrays)


def main(argv: list[str]) -> None:
    root, variant, out = Path(argv[0]), argv[1], Path(argv[2])
    if variant not in ("image", "video"):
        raise SystemExit(f"variant {variant!r}: expected 'image' or 'video'")
    read_back(root, out, write(root, video=variant == "video", split_files=variant == "video"))


if __name__ == "__main__":
    main(sys.argv[1:])

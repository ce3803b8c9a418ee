"""`tools/benchmark.py data large`: a generated recording imported compactly, then read by the loader."""

from __future__ import annotations

import re

import numpy as np

from neuracore.ml.benchmarks.large_dataset import EPISODE_FRAMES, make_episode
from tools.benchmark import main


def test_generated_episodes_are_deterministic_and_drift() -> None:
    a, b = make_episode(3, 2, (12, 16)), make_episode(3, 2, (12, 16))
    frames = a.data["RGB_IMAGES"]["cam_1"]
    assert frames.shape == (EPISODE_FRAMES, 12, 16, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, b.data["RGB_IMAGES"]["cam_1"])
    assert not np.array_equal(frames[0], frames[1])  # the scene moves
    assert not np.array_equal(frames[0], a.data["RGB_IMAGES"]["cam_0"][0])  # cameras differ


def test_large_benchmark_imports_compactly_and_reads(capsys) -> None:
    assert main(["data", "large", "--frames-total", "200", "--cameras", "2", "--source-size", "48x64",
                 "--image-size", "24x32", "--import-workers", "1", "--workers", "0", "--batches", "2",
                 "--horizon", "5", "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "large recording: 200 frames (1 episodes), 2 cameras 48x64 (raw 0.02 MB/frame)" in out
    ratio = float(re.search(r"kB/frame on disk \(0\.00 GB, (\d+)x smaller than raw\)", out).group(1))
    assert ratio > 2  # 24x32 JPEG against 48x64 raw
    assert "'RGB_IMAGES': (1, 2, 3, 24, 32)" in out
    assert re.search(r"workers=0: +[0-9.]+ samples/s", out)


def test_large_benchmark_bad_size_is_one_line(capsys) -> None:
    assert main(["data", "large", "--source-size", "big"]) == 2
    assert capsys.readouterr().err.strip() == "benchmark: error: --source-size 'big': give one HxW, e.g. 480x640"

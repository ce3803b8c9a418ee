"""`tools/benchmark.py data`: samples/s per worker count and peak memory, on a small synthetic dataset."""

from __future__ import annotations

import argparse
import re

import pytest

from neuracore.ml.benchmarks import data_loading
from neuracore.ml.core.errors import ConfigError, DatasetError


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    data_loading.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_data_benchmark_prints_rates_and_memory(capsys: pytest.CaptureFixture) -> None:
    args = _args("--episodes", "2", "--frames", "20", "--batches", "2", "--batch-size", "4", "--workers", "0,1",
                 "--horizon", "10", "--image-encoding", "png")
    assert data_loading.run(args) == 0
    out = capsys.readouterr().out
    assert "synthetic dataset: 2 episodes x 20 frames, 2 cameras 224x224 (png), 14 joints" in out
    assert "inputs {'JOINT_POSITIONS': (1, 14), 'RGB_IMAGES': (1, 2, 3, 224, 224)}, horizon 10" in out
    rates = re.findall(r"workers=(\d): +([\d.]+) samples/s +\((\d+) samples .*peak RSS (\d+) MB", out)
    assert [(w, n) for w, _, n, _ in rates] == [("0", "8"), ("1", "8")]
    assert all(float(r) > 0 and int(m) > 0 for _, r, _, m in rates)


def test_data_benchmark_bad_workers_and_dataset(home) -> None:
    with pytest.raises(ConfigError, match="--workers 'a,b': expected comma-separated integers"):
        data_loading.run(_args("--workers", "a,b"))
    with pytest.raises(DatasetError, match="dataset_name='nope': no dataset under .*; available: demo"):
        data_loading.run(_args("nope"))

"""`tools/benchmark.py autotune` prints the probes, the choice and the exhaustively checked largest size."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import run_cli


def test_autotune_benchmark_against_a_simulated_limit(home: Path) -> None:
    result = run_cli(["tools/benchmark.py", "autotune", "algorithm=cnnmlp", "algorithm.hidden_dim=16",
                      "algorithm.cnn_output_dim=16", "algorithm.image_backbone=resnet18", "output_prediction_horizon=5",
                      "--simulate-limit", "41", "--max-batch-size", "64"], home, module="")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    chosen = int(re.search(r"chosen batch size (\d+) after (\d+) probes", out).group(1))
    largest = int(re.search(r"largest size that fits \(exhaustive check of [\d.]+\): (\d+)", out).group(1))
    assert largest == 41
    assert 0.9 * 41 <= chosen <= 41
    assert "probe    32: fits" in out and "probe    64: out of memory" in out

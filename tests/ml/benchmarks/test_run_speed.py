"""`tools/benchmark.py speed <run>`: medians of the loop's perf scalars after warm-up, from TensorBoard."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from neuracore.ml.benchmarks import run_speed
from neuracore.ml.core.errors import ConfigError
from tests.conftest import FAST, run_cli


def test_medians_after_warm_up_from_a_real_run(home: Path, capsys: pytest.CaptureFixture[str]):
    result = run_cli(FAST + ["max_steps=8", "logging_frequency=2", "training_name=speedy"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    run = home / "training" / "runs" / "speedy"
    speed = run_speed.read_speed(run, skip_steps=2)
    assert speed["windows"] == 3  # windows ending at steps 4, 6, 8
    assert speed["perf/samples_per_second"] > 0 and 0 <= speed["perf/data_wait_fraction"] <= 1
    # step time and samples/s describe the same windows: batch 4 per step
    assert speed["perf/samples_per_second"] == pytest.approx(4 / speed["perf/step_time_s"], rel=0.5)
    assert run_speed.run(argparse.Namespace(run_dir=run, skip_steps=2)) == 0
    line = capsys.readouterr().out.strip()
    assert re.match(r"^speedy: [\d.]+ samples/s, [\d.]+ ms/step, data wait [\d.]+ % \(median of 3 logging windows "
                    r"after step 2\)$", line), line
    with pytest.raises(ConfigError, match="--skip-steps 8: no logging window after it"):
        run_speed.read_speed(run, skip_steps=8)


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"no tensorboard/ folder; give a run folder written by neuracore.ml.train"):
        run_speed.read_speed(tmp_path, 0)

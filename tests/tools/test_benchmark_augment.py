"""`tools/benchmark.py augment`: both sides run on the same batch and the ratio is printed; bad sizes are one line."""

from __future__ import annotations

import re

from tools.benchmark import main


def test_augment_benchmark_prints_both_rates_and_the_ratio(capsys):
    assert main(["augment", "--batch-size", "2", "--cameras", "2", "--size", "16x24", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "batch 2 x 2 camera(s) at 16x24" in out
    rates = re.findall(r"([0-9.]+) samples/s", out)
    assert len(rates) == 2 and all(float(r) > 0 for r in rates)
    assert re.search(r"ratio: [0-9.]+x", out)


def test_augment_benchmark_refuses_a_bad_size(capsys):
    assert main(["augment", "--size", "224"]) == 2
    assert capsys.readouterr().err.strip() == "benchmark: error: --size='224': expected HxW, e.g. 224x224"

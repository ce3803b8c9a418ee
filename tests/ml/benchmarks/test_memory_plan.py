"""`tools/benchmark.py memory`: the analytic memory plan of pi0/pi0.5, checked against one measured step."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuracore.ml.benchmarks import memory_plan as mp

ROOT = Path(__file__).resolve().parents[3]
# The formula's stated tolerance against the bytes one real step saves for backward (measured: within 6 %).
TOLERANCE = 0.25


@pytest.fixture(scope="module")
def targets() -> dict[tuple[str, str], mp.Target]:
    found = {(name, p): mp.resolve([f"algorithm={name}", f"mixed_precision={p}"])[0]
             for name in ("pi0_tiny", "pi05_tiny") for p in ("no", "bf16")}
    found[("pi05_tiny", "bf16-weights")] = mp.resolve(["algorithm=pi05_tiny", "algorithm.weights_dtype=bfloat16"])[0]
    return found


CASES = [
    ("pi0_tiny", "no", mp.Mode("full"), 2, 1),
    ("pi0_tiny", "bf16", mp.Mode("full"), 4, 3),
    ("pi0_tiny", "bf16", mp.Mode("expert"), 3, 2),
    ("pi0_tiny", "bf16", mp.Mode("lora", 4), 2, 2),
    ("pi0_tiny", "no", mp.Mode("full", checkpointing=True), 2, 2),
    ("pi0_tiny", "bf16", mp.Mode("expert", checkpointing=True), 2, 1),
    ("pi05_tiny", "no", mp.Mode("full"), 2, 1),
    ("pi05_tiny", "bf16", mp.Mode("full"), 3, 3),
    ("pi05_tiny", "bf16", mp.Mode("expert"), 3, 2),
    ("pi05_tiny", "no", mp.Mode("lora", 8), 2, 1),
    ("pi05_tiny", "no", mp.Mode("full", checkpointing=True), 2, 1),
    ("pi05_tiny", "bf16", mp.Mode("lora", 4, checkpointing=True), 2, 1),
    ("pi05_tiny", "bf16-weights", mp.Mode("lora", 4), 3, 2),
]


@pytest.mark.parametrize("name, precision, mode, batch, cameras", CASES,
                         ids=[f"{n}-{p}-{m.label.replace(' ', '')}-b{b}-c{c}" for n, p, m, b, c in CASES])
def test_analytic_estimate_matches_one_measured_step(targets, name, precision, mode, batch, cameras):
    target = targets[(name, precision)]
    measured = mp.measure_step(target, mode, batch, cameras)
    est = mp.estimate(target, mode, batch, cameras)
    assert est.activations == pytest.approx(measured["activations"], rel=TOLERANCE)
    # Parameters, gradients and AdamW state are counted exactly from the meta-device model.
    assert (est.params, est.trainable) == (measured["params"], measured["trainable"])
    assert (est.weights, est.gradients, est.optimizer) == (measured["weights"], measured["gradients"],
                                                          measured["optimizer"])


def test_math_attention_saves_the_probabilities(targets):
    target = targets[("pi0_tiny", "bf16")]
    fused, math = (mp.estimate(target, mp.Mode("full"), 4, 3, attention=a).activations for a in ("fused", "math"))
    assert math > fused
    assert math == pytest.approx(mp.measure_step(target, mp.Mode("full"), 4, 3, attention="math")["activations"],
                                 rel=TOLERANCE)


def test_lora_trainable_count_is_what_peft_adds(targets):
    target = targets[("pi05_tiny", "no")]
    real = mp.build(target, 1, mp.Mode("full"), device="cpu")  # the real tiny model, nothing frozen by LoRA
    patterns = real.lora_defaults()["target_modules"]
    expected = sum(8 * (m.in_features + m.out_features) for n, m in real.named_modules()
                   if isinstance(m, torch.nn.Linear) and m.weight.requires_grad and any(re.fullmatch(p, n) for p in patterns))
    assert expected > 0
    meta = mp.build(target, 1, mp.Mode("lora", 8))
    assert mp.adapter_params(meta, 8) == expected
    lora = mp.build(target, 1, mp.Mode("lora", 8), device="cpu")
    mp._inject_lora(lora, 8)  # peft's own adapters
    added = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    assert added == expected
    heads = sum(p.numel() for n, p in lora.named_parameters() if p.requires_grad and "lora_" not in n)
    assert heads > 0 and mp.estimate(target, mp.Mode("lora", 8), 2, 1, model=meta).trainable == added + heads


@pytest.mark.parametrize("name, low, high", [("pi0", 3.2e9, 3.5e9), ("pi05", 3.2e9, 3.6e9)])
def test_full_size_counts_on_the_meta_device(name, low, high):
    target = mp.resolve([f"algorithm={name}"])[0]
    full = mp.estimate(target, mp.Mode("full"), 32, 3)
    expert = mp.estimate(target, mp.Mode("expert"), 32, 3)
    lora = mp.estimate(target, mp.Mode("lora", 16), 32, 3)
    assert low < full.params < high
    assert 2.5e8 < expert.trainable < 5e8  # the 300M expert and the heads
    assert lora.trainable < expert.trainable
    assert full.weights == 4 * full.params and full.optimizer == 2 * full.gradients


def test_fsdp_shards_the_state_not_the_activations(targets):
    target = targets[("pi0_tiny", "bf16")]
    one, four = (mp.estimate(target, mp.Mode("full"), 4, 2, gpus=n) for n in (1, 4))
    assert (four.weights, four.gradients, four.optimizer) == pytest.approx(
        (one.weights / 4, one.gradients / 4, one.optimizer / 4))
    assert four.activations == one.activations
    assert four.gather > 0 == one.gather


def test_checkpointing_and_autocast_save_less(targets):
    target = targets[("pi05_tiny", "no")]
    plain = mp.estimate(target, mp.Mode("full"), 4, 3).activations
    assert mp.estimate(target, mp.Mode("full", checkpointing=True), 4, 3).activations < plain
    assert mp.estimate(targets[("pi05_tiny", "bf16")], mp.Mode("full"), 4, 3).activations < plain


def _main():
    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_prints_the_table_and_a_recommendation(capsys: pytest.CaptureFixture[str]):
    rc = _main()(["memory", "algorithm=pi0_tiny", "output_prediction_horizon=8", "--batch-size", "4",
                  "--cameras", "2", "--gpu-gb", "1.01,2", "--gpus", "2", "--lora-ranks", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert lines[0].startswith("pi0_tiny: 0.000B parameters; batch 4/GPU, 2 camera(s) of 64x64, 56 prefix + 9 suffix")
    assert lines[2].split()[:2] == ["mode", "trainable"] and lines[2].endswith("1.01GB    2GB")
    labels = [line[:22].strip() for line in lines[3:]]
    assert labels[:6] == ["full", "full +ckpt", "expert-only", "expert-only +ckpt", "LoRA r=4", "LoRA r=4 +ckpt"]
    assert "full FSDPx2" in labels
    assert all(line.split()[-2] in ("yes", "no") for line in lines[3:15])
    assert lines[-2].startswith("1.01 GB: ") and lines[-1].startswith("2 GB: full fits batch 4 (largest batch ")


@pytest.mark.parametrize("argv, message", [
    (["algorithm=nope"], "algorithm=nope: unknown algorithm"),
    (["algorithm=act"], "the memory planner models the pi0 family only"),
    (["algorithm=pi0_tiny", "--gpu-gb", "-1"], "--gpu-gb='-1': expected positive sizes in GB"),
    (["algorithm=pi0_tiny", "--batch-size", "0"], "--batch-size='0': expected positive integers"),
])
def test_bad_input_is_exit_2_and_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]):
    assert _main()(["memory", *argv]) == 2
    out, err = capsys.readouterr()
    assert err.strip().count("\n") == 0 and message in err and err.startswith("benchmark: error: "), err
    assert out == ""


def test_the_command_line_exits_2_on_bad_input():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "memory", "algorithm=pi0_tiny",
                             "--gpu-gb", "-1"], check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="max_memory_allocated needs a CUDA device")
def test_cuda_peak_of_one_step_is_near_the_estimate(targets):
    target = targets[("pi05_tiny", "bf16")]
    for mode in (mp.Mode("full"), mp.Mode("lora", 4, checkpointing=True)):
        peak = mp.measure_cuda(target, mode, 8, 2)
        assert peak is not None
        assert peak == pytest.approx(mp.estimate(target, mode, 8, 2).counted, rel=0.5)

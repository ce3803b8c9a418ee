"""`tools/benchmark.py train`: samples/s of full training steps, fp32 and bf16, with the CNNMLP ratio."""

from __future__ import annotations

import argparse
import re

import pytest

from neuracore.ml.benchmarks import training
from neuracore.ml.core.errors import ConfigError

TINY_ACT = ["algorithm.hidden_dim=32", "algorithm.nheads=2", "algorithm.dim_feedforward=64",
            "algorithm.num_encoder_layers=1", "algorithm.num_vae_encoder_layers=1"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    training.add_arguments(parser)
    return parser.parse_args(argv)


def test_prints_samples_per_second_in_fp32_and_bf16_with_the_cnnmlp_ratio(capsys: pytest.CaptureFixture[str]):
    args = parse(["algorithm=act", "batch_size=2", "image_size=32", "horizon=4", "steps=1", "warmup=1", *TINY_ACT,
                  "--device", "cpu"])
    assert training.run(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("device=cpu batch=2 cameras=1 image=32 state=14 action=14 horizon=4")
    pattern = re.compile(r"^act (fp32|bf16) eager: ([\d.]+) samples/s \(([\d.]+) ms/step\), ([\d.]+)M params, peak RSS "
                         r"([\d.]+) GiB; cnnmlp ([\d.]+) samples/s, ratio ([\d.]+)x$")
    matches = [pattern.match(line) for line in out[1:]]
    assert [m.group(1) for m in matches if m] == ["fp32", "bf16"], out
    for m in matches:
        samples, ms = float(m.group(2)), float(m.group(3))
        assert samples > 0 and samples == pytest.approx(2 / (ms / 1000), rel=0.002)
        assert 0.05 < float(m.group(5)) < 64  # the process's peak RSS while stepping (a real, finite number)
        assert float(m.group(7)) == pytest.approx(samples / float(m.group(6)), rel=0.01)


def test_diffusion_policy_gets_two_observation_frames(capsys: pytest.CaptureFixture[str]):
    args = parse(["algorithm=diffusion_policy", "batch_size=2", "image_size=32", "horizon=6", "steps=1", "warmup=1",
                  "algorithm.unet_down_dims=[16,32]", "algorithm.unet_n_groups=4", "--no-baseline", "--device", "cpu"])
    assert training.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("diffusion_policy fp32 eager: ") and "cnnmlp" not in lines[1]


def test_a_configuration_such_as_pi0_tiny_uses_its_yaml(capsys: pytest.CaptureFixture[str]):
    args = parse(["algorithm=pi0_tiny", "batch_size=2", "image_size=32", "steps=1", "warmup=1", "--no-baseline",
                  "--precision", "fp32", "--device", "cpu"])
    assert training.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "horizon=10 " in lines[0]  # pi0_tiny.yaml's output_prediction_horizon
    assert re.match(r"^pi0_tiny fp32 eager: [\d.]+ samples/s .*, 0\.2M params, peak RSS", lines[1]), lines[1]
    assert training.config_variant("pi0_tiny")[0] == "pi0"
    assert training.config_variant("pi0_tiny")[1]["lr"] == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match=r"algorithm='pi0_huge': unknown algorithm; valid: .*pi0_tiny"):
        training.config_variant("pi0_huge")


def test_lora_keys_train_adapters_as_training_would(capsys: pytest.CaptureFixture[str]):
    args = parse(["algorithm=pi05_tiny", "batch_size=2", "image_size=32", "steps=1", "warmup=1", "lora.rank=4",
                  "--no-baseline", "--precision", "fp32", "--device", "cpu"])
    assert training.run(args) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert re.match(r"^pi05_tiny fp32 eager: [\d.]+ samples/s .*M params \(0\.0\d+M trained\), peak RSS", line), line
    with pytest.raises(ConfigError, match=r"lora.rank=-2: must be >= 0"):
        training.run(parse(["algorithm=pi05_tiny", "lora.rank=-2", "--device", "cpu"]))


@pytest.mark.parametrize("argv, message", [
    (["batch_size=2"], "algorithm: missing"),
    (["algorithm=act", "lr=1"], "lr: unknown benchmark key"),
    (["algorithm=act", "batch_size=big"], "batch_size='big': expected a non-negative integer"),
    (["algorithm=nope"], "algorithm='nope': unknown algorithm"),
    (["algorithm=act", "--modes", "eager,fast"], "--modes: 'fast' is not a step program; valid: eager, compiled, graphed"),
    (["algorithm=act", "--modes", "graphed", "--device", "cpu"], "--modes graphed: CUDA graphs need a CUDA device"),
])
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        training.run(parse(argv))


@pytest.mark.slow
def test_compiled_mode_reports_compile_time_and_ratio_to_eager(capsys: pytest.CaptureFixture[str]):
    args = parse(["algorithm=cnnmlp", "batch_size=2", "image_size=32", "horizon=4", "steps=2", "warmup=1",
                  "algorithm.hidden_dim=16", "algorithm.cnn_output_dim=16", "--modes", "eager,compiled",
                  "--precision", "fp32", "--device", "cpu"])
    assert training.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("cnnmlp fp32 eager: ")
    m = re.match(r"^cnnmlp fp32 compiled: ([\d.]+) samples/s .*, compile\+capture ([\d.]+) s, ([\d.]+)x eager$", lines[2])
    assert m, lines[2]
    assert float(m.group(1)) > 0 and float(m.group(2)) > 0 and float(m.group(3)) > 0


def test_dataset_option_feeds_steps_through_the_real_loader_and_reports_data_wait(
        home, capsys: pytest.CaptureFixture[str]):
    args = parse(["algorithm=cnnmlp", "batch_size=4", "horizon=5", "steps=2", "warmup=1", "algorithm.hidden_dim=16",
                  "algorithm.cnn_output_dim=16", "--dataset", "demo", "--workers", "0", "--precision", "fp32",
                  "--device", "cpu"])
    assert training.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("device=cpu batch=4 dataset=demo workers=0 horizon=5")
    m = re.match(r"^cnnmlp fp32 eager: ([\d.]+) samples/s .* data wait ([\d.]+) %$", lines[1])
    assert m, lines[1]
    assert float(m.group(1)) > 0 and 0 <= float(m.group(2)) <= 100
    with pytest.raises(ConfigError, match=r"batch_size=100000: the dataset has \d+ training windows"):
        training.run(parse(["algorithm=cnnmlp", "batch_size=100000", "--dataset", "demo", "--device", "cpu"]))


def test_peers_are_timed_in_the_same_process_with_the_ratio(capsys: pytest.CaptureFixture[str]):
    from neuracore.ml.benchmarks import peers

    reason = peers.peers_available()
    if reason:
        pytest.skip(reason)
    args = parse(["algorithm=act", "batch_size=2", "image_size=32", "horizon=4", "steps=1", "warmup=1", "--peers",
                  "--precision", "fp32", "--no-baseline", "--device", "cpu"])
    assert training.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    ours = re.match(r"^act fp32 eager: ([\d.]+) samples/s", lines[1])
    theirs = re.match(r"^lerobot act fp32 eager: ([\d.]+) samples/s \([\d.]+ ms/step\), 51\.\dM params, horizon 4; "
                      r"neuracore/lerobot ([\d.]+)x$", lines[2])
    assert ours and theirs, lines
    assert float(theirs.group(2)) == pytest.approx(float(ours.group(1)) / float(theirs.group(1)), rel=0.01)
    capsys.readouterr()
    assert training.run(parse(["algorithm=cnnmlp", "steps=1", "warmup=1", "batch_size=2", "image_size=32", "horizon=2",
                               "--peers", "--precision", "fp32", "--device", "cpu"])) == 0
    assert "peers: not measured (LeRobot has no counterpart of cnnmlp here (act, diffusion_policy))" in \
        capsys.readouterr().out

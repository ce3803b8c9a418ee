"""LoRA end to end: pi0.5 from a published-layout checkpoint, adapters trained, exports, exact resume, FSDP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import load_file
from safetensors.torch import save_file

from neuracore.ml.algorithms.pi05 import Pi05
from neuracore.ml.core import build_model
from tests.conftest import REPO, fault_env, run_cli
from tests.ml.algorithms.pi0_helpers import make_tokenizer
from tests.ml.algorithms.test_pi05 import pi05_data
from tests.ml.algorithms.test_pi05_weights import OPENPI, checkpoint

CONFIGS = REPO / "neuracore" / "ml" / "config" / "algorithm"
CLI = ["algorithm=pi05_tiny", "dataset_name=demo", "batch_size=4", "num_workers=0", "training.log_images=false",
       "logging_frequency=2", "checkpoint_frequency=3", "lora.rank=4", "validation_split=0.25"]


def tiny_hyperparameters() -> dict:
    """pi05_tiny's hyper-parameters, read from its yaml (pi05.yaml below it)."""
    hyper: dict = {}
    for name in ("pi05.yaml", "pi05_tiny.yaml"):
        hyper.update(yaml.safe_load((CONFIGS / name).read_text())["algorithm"])
    hyper.pop("_target_")
    return hyper


@pytest.fixture()
def base(home: Path, demo_home: Path, tmp_path: Path) -> list[str]:
    """A pi05_tiny checkpoint in openpi's published layout plus a tokenizer: the `algorithm.*` overrides."""
    torch.manual_seed(11)
    source = build_model(Pi05, pi05_data(demo_home).model_init, tiny_hyperparameters())
    with torch.no_grad():  # non-zero adaRMS weights, so base layers that moved would show
        for name, p in source.named_parameters():
            if ".dense." in name:
                p.normal_(std=0.05)
    folder = tmp_path / "pi05_base"
    folder.mkdir()
    save_file(checkpoint(source, OPENPI, embed=False), str(folder / "model.safetensors"))
    tokenizer = make_tokenizer(tmp_path / "paligemma_tokenizer")
    return [f"algorithm.pretrained_path={folder}", f"algorithm.tokenizer_path={tokenizer}"]


def _run(home: Path, name: str) -> Path:
    return home / "training" / "runs" / name


def test_lora_fine_tune_of_a_published_checkpoint_keeps_the_base_and_exports_merged(home: Path, base: list[str]):
    # with gradient checkpointing, as a 3B fine-tune on one GPU would run (bf16: the FSDP test)
    result = run_cli(CLI + base + ["max_steps=3", "training_name=lora",
                                   "algorithm.gradient_checkpointing=true"], home)
    assert result.returncode == 0, result.stderr[-3000:]
    run = _run(home, "lora")
    log = (run / "train.log").read_text()
    assert "lora: rank 4, alpha 4 on 23 linear layers" in log
    # The frozen base is bit-identical to the published file after training; adapters moved.
    start = load_file(str(Path(base[0].split("=", 1)[1]) / "model.safetensors"))
    trained = load_file(str(run / "checkpoints" / "checkpoint_3" / "model.safetensors"))
    q = "backbone.layers.0.vlm.self_attn.q_proj"
    assert np.array_equal(trained[f"{q}.base_layer.weight"],
                          start[OPENPI + "paligemma.model.language_model.layers.0.self_attn.q_proj.weight"])
    assert np.abs(trained[f"{q}.lora_B.default.weight"]).max() > 0
    vision = OPENPI + "paligemma.model.vision_tower.vision_model.embeddings.patch_embedding.weight"
    assert np.array_equal(trained["backbone.vision.embeddings.patch_embedding.weight"], start[vision])
    # The optimizer holds state for the trained parameters only.
    optimizer = torch.load(run / "checkpoints" / "checkpoint_3" / "optimizer.bin", weights_only=True)
    adapters_and_heads = 2 * 23 + 2 * 4
    assert len(optimizer["state"]) == adapters_and_heads
    # model/ is an ordinary export with merged weights under plain names.
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["lora"]["merged"] is True and config["lora"]["rank"] == 4
    merged = load_file(str(run / "model" / "model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    assert not np.array_equal(merged[f"{q}.weight"], trained[f"{q}.base_layer.weight"])
    from neuracore.ml import Policy
    from neuracore.ml.sim.pick_place import PickPlaceEnv

    obs = PickPlaceEnv(3).observe()
    out = Policy.from_pretrained(run / "model").predict(
        {"JOINT_POSITIONS": obs.joint_positions, "RGB_IMAGES": obs.image[None], "LANGUAGE": obs.language})
    assert np.isfinite(out["JOINT_TARGET_POSITIONS"]).all()


@pytest.mark.slow
def test_lora_with_ema_resumes_bit_identically_and_the_adapter_export_predicts_the_same(home: Path, base: list[str]):
    args = CLI + base + ["max_steps=6", "ema.decay=0.9"]
    straight = run_cli(args + ["training_name=straight"], home)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = run_cli(args + ["training_name=killed"], home, env=fault_env(kill_after_step=5))
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_cli(args + ["training_name=killed", "resume_checkpoint_path=auto"], home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(_run(home, "straight") / "model" / "model.safetensors"))
    b = load_file(str(_run(home, "killed") / "model" / "model.safetensors"))
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert set(a) == set(b) and not different, different[:5]
    with open(_run(home, "killed") / "checkpoints" / "checkpoint_6" / "trainer_state.json") as f:
        assert json.load(f)["extra"]["lora"]["rank"] == 4

    other = run_cli(args + ["training_name=killed", "resume_checkpoint_path=auto", "max_steps=9", "lora.rank=8"], home)
    assert other.returncode == 2
    lines = [line for line in other.stderr.splitlines() if line.startswith("neuracore: error:")]
    assert len(lines) == 1 and "lora.rank=8 but the checkpoint has 4" in lines[0], other.stderr[-2000:]

    adapter = run_cli(args + ["training_name=adapter", "lora.export=adapter"], home)
    assert adapter.returncode == 0, adapter.stderr[-3000:]
    folder = _run(home, "adapter") / "model"
    assert (folder / "adapter.safetensors").is_file() and not (folder / "model.safetensors").exists()
    assert (folder / "adapter.safetensors").stat().st_size < 0.2 * (_run(home, "straight") / "model" /
                                                                    "model.safetensors").stat().st_size
    from neuracore.ml import Policy
    from neuracore.ml.sim.pick_place import PickPlaceEnv

    obs = PickPlaceEnv(5).observe()
    frame = {"JOINT_POSITIONS": obs.joint_positions, "RGB_IMAGES": obs.image[None], "LANGUAGE": obs.language}
    merged = Policy.from_pretrained(_run(home, "straight") / "model").predict(frame)["JOINT_TARGET_POSITIONS"]
    adapted = Policy.from_pretrained(folder).predict(frame)["JOINT_TARGET_POSITIONS"]
    np.testing.assert_allclose(adapted, merged, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_lora_on_act_under_ddp_two_cpu_ranks(home: Path) -> None:
    """Every linear layer but those inside nn.MultiheadAttention: DDP finds no unused adapter."""
    import os
    import shutil
    import socket
    import sys

    from tests.conftest import FAST, run_group

    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    act = ["algorithm=act", *FAST[1:4], "num_workers=0", "training.log_images=false", "algorithm.hidden_dim=32",
           "algorithm.nheads=2", "algorithm.dim_feedforward=64", "algorithm.num_encoder_layers=1",
           "algorithm.num_vae_encoder_layers=1", "algorithm.use_pretrained_weights=false"]
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(port),
           "recipes/train.py", *act, "lora.rank=2", "max_steps=3", "training_name=actlora", "logging_frequency=1"]
    result = run_group(cmd, {**os.environ, "NEURACORE_HOME": str(home), "OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    run = _run(home, "actlora")
    assert "world_size=2" in (run / "train.log").read_text() and "lora: rank 2" in (run / "train.log").read_text()
    from neuracore.ml import Policy

    assert Policy.from_pretrained(run / "model").model.algorithm_name == "act"

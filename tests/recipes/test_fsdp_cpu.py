"""`accelerate launch --config_file accelerate_configs/fsdp.yaml` on 2 CPU ranks: shard, checkpoint, resume, export."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from tests.conftest import REPO, fault_env, run_group

PI0_TINY = ["algorithm=pi0_tiny", "dataset_name=demo", "batch_size=4", "num_workers=0", "max_steps=4",
            "checkpoint_frequency=2", "logging_frequency=2", "training.log_images=false"]


def _launch(home: Path, args: list[str], extra_env: dict[str, str] | None = None):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "NEURACORE_HOME": str(home), "OMP_NUM_THREADS": "1", **(extra_env or {})}
    cmd = [accelerate, "launch", "--config_file", str(REPO / "accelerate_configs" / "fsdp.yaml"),
           "--num_processes", "2", "--main_process_port", str(port), "recipes/train.py", *PI0_TINY, *args]
    return run_group(cmd, env, timeout=600)


@pytest.mark.slow
def test_fsdp_config_shards_on_two_cpu_ranks_resumes_exactly_and_exports_one_file(home: Path) -> None:
    runs = home / "training" / "runs"
    straight = _launch(home, ["training_name=straight"])
    assert straight.returncode == 0, straight.stderr[-4000:]
    first = (runs / "straight" / "train.log").read_text().splitlines()[0]
    assert "world_size=2" in first and "distributed=FSDP" in first and "mixed_precision=bf16" in first
    ckpt = runs / "straight" / "checkpoints" / "checkpoint_4"
    # Sharded state: one DCP folder with a shard per rank, no full model.safetensors in the checkpoint.
    shards = sorted(p.name for p in (ckpt / "pytorch_model_fsdp_0").glob("*.distcp"))
    assert len(shards) == 2, shards
    assert not (ckpt / "model.safetensors").exists()
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2

    killed = _launch(home, ["training_name=killed"], fault_env(kill_after_step=3))
    assert killed.returncode != 0
    assert sorted(p.name for p in (runs / "killed" / "checkpoints").iterdir()) == ["checkpoint_2"]
    resumed = _launch(home, ["training_name=killed", "resume_checkpoint_path=auto"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "at step 2" in (runs / "killed" / "train.log").read_text()

    # One consolidated export, bit-identical after the sharded resume, loadable by a plain model.
    a = load_file(str(runs / "straight" / "model" / "model.safetensors"))
    b = load_file(str(runs / "killed" / "model" / "model.safetensors"))
    assert set(a) == set(b) and len(a) > 20
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"weights differ after the sharded resume: {different[:5]}"
    from neuracore.ml import Policy

    policy = Policy.from_pretrained(runs / "straight" / "model")
    state = policy.model.state_dict()
    assert all(torch.equal(state[k], torch.from_numpy(a[k])) for k in a)


@pytest.mark.slow
def test_fsdp_with_lora_and_ema_trains_adapters_only_and_exports_merged_weights(home: Path) -> None:
    runs = home / "training" / "runs"
    result = _launch(home, ["training_name=lora", "lora.rank=4", "ema.decay=0.9", "max_steps=2"])
    assert result.returncode == 0, result.stderr[-4000:]
    log = (runs / "lora" / "train.log").read_text()
    assert "distributed=FSDP" in log and "lora: rank 4" in log
    merged = load_file(str(runs / "lora" / "model" / "model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    from neuracore.ml import Policy

    policy = Policy.from_pretrained(runs / "lora" / "model")
    state = policy.model.state_dict()
    assert set(state) == set(merged) and all(torch.equal(state[k], torch.from_numpy(merged[k])) for k in merged)

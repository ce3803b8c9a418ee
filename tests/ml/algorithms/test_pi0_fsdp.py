"""pi0 shards with PyTorch FSDP2 on 2 CPU ranks (gloo): wrap units, equal gradients, one consolidated file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neuracore.ml.algorithms.pi0 import Pi0
from tests.ml.algorithms.pi0_helpers import demo_batch, demo_data, tiny_pi0

WORKER = Path(__file__).with_name("pi0_fsdp_worker.py")


@pytest.mark.slow
def test_fsdp2_on_two_cpu_ranks_trains_and_consolidates(demo_home: Path, tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           str(WORKER), str(demo_home), str(tmp_path)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    assert r0["units"] == 2 + 1  # pi0 tiny: 2 joint layers + 1 SigLIP layer
    # Each rank holds about half of every sharded parameter.
    assert r0["local_numel"] + r1["local_numel"] == r0["total_numel"]
    assert abs(r0["local_numel"] - r1["local_numel"]) < 0.05 * r0["total_numel"]
    assert r0["grad_norms"] == pytest.approx(r1["grad_norms"])  # one all-reduced gradient
    assert all(torch.isfinite(torch.tensor(r0["losses"] + r1["losses"])))
    assert r0["frozen_with_state"] == 0 and r0["frozen_changed"] == [] and r0["changed"] > 50
    # The consolidated file is an ordinary full state dict that a fresh model loads strictly.
    data = demo_data(demo_home)
    fresh = tiny_pi0(data, seed=9)
    weights = load_file(str(tmp_path / "model.safetensors"))
    result = fresh.load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    out = fresh.eval().predict(demo_batch(data))["JOINT_TARGET_POSITIONS"]
    assert torch.isfinite(out).all()
    assert set(Pi0._no_split_modules) == {"JointLayer", "SiglipEncoderLayer"}

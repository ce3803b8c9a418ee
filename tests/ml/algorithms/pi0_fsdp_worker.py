"""One rank of the 2-process CPU FSDP2 run of a tiny pi0 (launched by test_pi0_fsdp.py with torchrun)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from neuracore.ml.algorithms.pi0 import Pi0
from tests.ml.algorithms.pi0_helpers import demo_batch, demo_data, tiny_pi0


def main(home: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = demo_data(Path(home))
    model = tiny_pi0(data, seed=0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    mesh = init_device_mesh("cpu", (world,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    units = [m for m in model.modules() if type(m).__name__ in Pi0._no_split_modules]
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    local = sum(p.to_local().numel() for p in model.parameters() if isinstance(p, DTensor))
    total = sum(p.numel() for p in model.parameters())
    optimizer = model.configure_optimizers()[0]
    batch = demo_batch(data, 4)
    torch.manual_seed(rank)
    report = {"units": len(units), "local_numel": local, "total_numel": total, "losses": [], "grad_norms": []}
    for _ in range(2):
        loss = model(batch)["loss"]
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        report["losses"].append(float(loss))
        report["grad_norms"].append(float(norm.full_tensor() if isinstance(norm, DTensor) else norm))
    frozen_ids = {id(p) for p in model.parameters() if not p.requires_grad}
    report["frozen_with_state"] = sum(id(p) in frozen_ids for p in optimizer.state)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        report["frozen_changed"] = [k for k, v in full.items() if k.startswith("backbone.vlm_norm") and not torch.equal(v, initial[k])]
        report["changed"] = sum(not torch.equal(v, initial[k]) for k, v in full.items())
        save_file({k: v.contiguous() for k, v in full.items()}, str(Path(out) / "model.safetensors"))
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

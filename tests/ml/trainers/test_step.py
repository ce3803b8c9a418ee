"""The step program: every registered algorithm's whole step compiles as one graph and matches the eager step.

The compiled programs here use dynamo's `aot_eager` backend: the same capture (dynamo with
`fullgraph=True`, AOTAutograd's joint forward/backward) as inductor without its C++ compile, so
every algorithm is checked in seconds; `test_compile_resume.py` runs inductor end to end.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from neuracore.ml.trainers.accelerator import reset_accelerate_state
from neuracore.ml.trainers.ema import attach_ema
from neuracore.ml.trainers.peft import setup_lora
from neuracore.ml.trainers.step import CompiledStep, EagerStep, build_step, clip_by_global_norm
from tests.ml.algorithms.test_registered_algorithms import ALGORITHMS, Setup

STEPS = 3
EMA_ON = SimpleNamespace(decay=0.9, power=0.75, inv_gamma=1.0, min_decay=0.0)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    reset_accelerate_state()
    torch._dynamo.reset()
    yield
    reset_accelerate_state()


def _run(setup: Setup, compiled: bool, accumulation: int = 1, max_grad_norm: float | None = 1.0, lora=None):
    """STEPS optimizer steps from seed 0 → (losses per micro-batch, final parameters, step object)."""
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    model = setup.model(seed=0)
    if lora is not None:
        setup_lora(lora, model)
    model, *optimizers = accelerator.prepare(model, *model.configure_optimizers())
    attach_ema(accelerator.unwrap_model(model), EMA_ON)  # every algorithm: the EMA update is part of the program
    if compiled:
        step = CompiledStep(accelerator, model, optimizers, max_grad_norm, backend="aot_eager")
    else:
        step = EagerStep(accelerator, model, optimizers, max_grad_norm)
    batch = setup.batch()
    torch.manual_seed(1)  # the same noise draws (dropout, diffusion timesteps, CVAE samples) in both runs
    losses = []
    for _ in range(STEPS * accumulation):
        out, _norm = step(batch)
        losses.append({k: float(v.detach()) for k, v in out.items()})
    core = accelerator.unwrap_model(model)
    params = {n: p.detach().clone() for n, p in core.named_parameters()}
    params.update({f"ema.{n}": s.detach().clone() for n, s in zip(core.weight_ema.names, core.weight_ema.shadows)})
    return losses, params, step


@pytest.mark.parametrize("name", ALGORITHMS)
def test_whole_step_is_one_graph_and_matches_the_eager_step(name: str, demo_home: Path):
    setup = Setup(name, demo_home)
    eager_losses, eager_params, _ = _run(setup, compiled=False)
    torch._dynamo.utils.counters.clear()
    compiled_losses, compiled_params, step = _run(setup, compiled=True)
    counters = torch._dynamo.utils.counters
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])  # forward+backward+clip+AdamW(+EMA)
    assert step.compiled and not step.graphed
    # Same losses at every step and the same weights after STEPS steps (foreach vs fused/default AdamW
    # kernels and a traced backward differ only in float rounding).
    for e, c in zip(eager_losses, compiled_losses, strict=True):
        assert e.keys() == c.keys()
        for key in e:
            assert c[key] == pytest.approx(e[key], rel=1e-4, abs=1e-5), (key, eager_losses, compiled_losses)
    # Adam divides by sqrt(v): where a gradient is ~0, rounding can move a weight by up to one lr per
    # step; everywhere else the weights agree to float precision.
    diff = torch.cat([(eager_params[n] - compiled_params[n]).abs().flatten() for n in eager_params])
    lr = max(float(g["lr"]) for g in step.optimizers[0].param_groups)
    assert diff.max().item() <= STEPS * lr, (diff.max().item(), lr)
    assert diff.mean().item() < 1e-2 * lr, diff.mean().item()
    moved = any(not torch.equal(compiled_params[n], p) for n, p in setup.model(seed=0).named_parameters())
    assert moved
    # the EMA (updated inside the compiled program) moved with the weights, not stuck at the start
    initial = dict(setup.model(seed=0).named_parameters())
    assert any(not torch.equal(compiled_params[f"ema.{n}"], initial[n]) for n in initial)


def test_lora_step_is_one_graph_and_matches_the_eager_step(demo_home: Path):
    """peft's LoRA layers trace into the whole-step program like any module (pi0.5, its default targets)."""
    setup = Setup("pi05", demo_home)
    lora = SimpleNamespace(rank=4, alpha=8.0, dropout=0.0, target_modules="auto", trainable="auto", export="merged")
    eager_losses, eager_params, _ = _run(setup, compiled=False, lora=lora)
    torch._dynamo.utils.counters.clear()
    compiled_losses, compiled_params, step = _run(setup, compiled=True, lora=lora)
    counters = torch._dynamo.utils.counters
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    for e, c in zip(eager_losses, compiled_losses, strict=True):
        assert c["loss"] == pytest.approx(e["loss"], rel=1e-4, abs=1e-5)
    adapters = [n for n in compiled_params if "lora_B" in n and not n.startswith("ema.")]
    assert adapters and all(compiled_params[n].abs().max() > 0 for n in adapters)  # B moved off zero
    lr = max(float(g["lr"]) for g in step.optimizers[0].param_groups)
    assert max((eager_params[n] - compiled_params[n]).abs().max().item() for n in eager_params) <= STEPS * lr


def test_gradient_accumulation_compiled_matches_eager(demo_home: Path):
    setup = Setup("cnnmlp", demo_home)
    eager_losses, eager_params, _ = _run(setup, compiled=False, accumulation=2)
    compiled_losses, compiled_params, _ = _run(setup, compiled=True, accumulation=2)
    assert [d["loss"] for d in compiled_losses] == pytest.approx([d["loss"] for d in eager_losses], rel=1e-5)
    assert max((eager_params[n] - compiled_params[n]).abs().max().item() for n in eager_params) < 1e-6


def test_learning_rate_schedule_reaches_the_compiled_step(demo_home: Path):
    """The LR is a device tensor that the scheduler fills: a zero factor freezes the weights, no recompile."""
    setup = Setup("cnnmlp", demo_home)
    accelerator = Accelerator(cpu=True)
    model = setup.model(seed=0)
    model, optimizer = accelerator.prepare(model, *model.configure_optimizers())
    step = CompiledStep(accelerator, model, [optimizer], 1.0, backend="aot_eager")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, lambda i: 1.0 if i == 0 else 0.0)
    batch = setup.batch()
    step(batch)
    scheduler.step()  # factor 0 from here on
    assert all(float(g["lr"]) == 0.0 for g in optimizer.param_groups)
    before = {n: p.detach().clone() for n, p in accelerator.unwrap_model(model).named_parameters()}
    torch._dynamo.utils.counters.clear()
    step(batch)
    after = dict(accelerator.unwrap_model(model).named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0  # replayed, not recompiled


def test_clip_by_global_norm_matches_torch_and_never_branches():
    torch.manual_seed(0)
    grads = [torch.randn(5, 3) * 10, torch.randn(7)]
    ref = [g.clone() for g in grads]
    norm = clip_by_global_norm(grads, 1.0)
    total = torch.linalg.vector_norm(torch.cat([g.flatten() for g in ref]))
    assert norm.item() == pytest.approx(total.item(), rel=1e-6)
    assert torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item() == pytest.approx(1.0, rel=1e-5)
    small = [torch.full((3,), 0.01)]
    clip_by_global_norm(small, 1.0)
    assert torch.equal(small[0], torch.full((3,), 0.01))  # under the limit: untouched (factor clamps at 1)
    unclipped = [torch.full((3,), 5.0)]
    clip_by_global_norm(unclipped, None)
    assert torch.equal(unclipped[0], torch.full((3,), 5.0))


def test_build_step_is_eager_without_compile_and_refuses_unsupported_optimizers(demo_home: Path):
    from neuracore.ml.core.errors import ConfigError

    setup = Setup("cnnmlp", demo_home)
    accelerator = Accelerator(cpu=True)
    model = setup.model(seed=0)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert isinstance(build_step(accelerator, model, [optimizer], 1.0, compile=False), EagerStep)
    with pytest.raises(ConfigError, match=r"compile=true: .*AdamW/Adam.*configures SGD \(use compile=false\)"):
        build_step(accelerator, model, [optimizer], 1.0, compile=True)


def test_several_processes_keep_the_eager_step_around_a_compiled_model(caplog: pytest.LogCaptureFixture):
    from accelerate.utils import DistributedType

    from neuracore.ml.trainers.step import whole_step_refusal

    ddp = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2, mixed_precision="no")
    assert "all-reduce lives in DDP/FSDP's hooks" in whole_step_refusal(ddp)
    fp16 = SimpleNamespace(distributed_type=DistributedType.NO, num_processes=1, mixed_precision="fp16")
    assert "fp16 needs accelerate's loss scaler" in whole_step_refusal(fp16)
    single = SimpleNamespace(distributed_type=DistributedType.NO, num_processes=1, mixed_precision="bf16")
    assert whole_step_refusal(single) is None

"""The trainer's EMA of the weights (trainers/ema.py): diffusers' schedule, swap for inference, exact state."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from neuracore.ml.benchmarks.training import synthetic_batch
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.trainers.ema import attach_ema, resolve_ema
from tests.ml.algorithms.test_diffusion_policy import CPU, spec, tiny

AUTO = SimpleNamespace(decay="auto", power="auto", inv_gamma=1.0, min_decay=0.0)


def _steps(model, n: int, seed: int = 0):
    batch = synthetic_batch(spec(), 2, 2, CPU)
    (opt,) = model.configure_optimizers()
    torch.manual_seed(seed)
    for _ in range(n):
        model(batch)["loss"].backward()
        opt.step()
        opt.zero_grad()
        model.update_in_step()


def test_update_follows_diffusers_ema_model_exactly():
    from diffusers.training_utils import EMAModel

    model = tiny(spec()).train()
    attach_ema(model, AUTO)
    reference = EMAModel(model.parameters(), decay=0.9999, min_decay=0.0, update_after_step=0, use_ema_warmup=True,
                         inv_gamma=1.0, power=0.75, foreach=True)
    batch = synthetic_batch(spec(), 2, 2, CPU)
    (opt,) = model.configure_optimizers()
    for step in range(1, 6):
        model(batch)["loss"].backward()
        opt.step()
        opt.zero_grad()
        reference.step(model.parameters())
        model.update_in_step()
        worst = max((a - b).abs().max().item() for a, b in zip(model.weight_ema.shadows, reference.shadow_params))
        assert worst < 1e-6, (step, worst)
    assert json.loads(model.checkpoint_state()[1]["ema"])["optimization_step"] == 5 == reference.optimization_step


def test_inference_weights_are_the_ema_and_training_weights_come_back():
    model = tiny(spec()).train()
    attach_ema(model, AUTO)
    _steps(model, 3)
    training = {n: p.detach().clone() for n, p in model.named_parameters()}
    with model.inference_weights():
        ema = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert all(torch.equal(training[n], p) for n, p in model.named_parameters())
    assert any(not torch.equal(training[n], ema[n]) for n in training)
    tensors, _ = model.checkpoint_state()
    assert set(tensors) == {f"ema.{n}" for n in training}
    assert all(torch.equal(tensors[f"ema.{n}"], ema[n]) for n in training)


def test_state_round_trips_exactly_and_mismatches_are_named():
    model = tiny(spec()).train()
    attach_ema(model, AUTO)
    _steps(model, 2)
    tensors, metadata = model.checkpoint_state()
    tensors = {k: v.clone() for k, v in tensors.items()}
    restored = tiny(spec()).train()
    restored.load_state_dict(model.state_dict())
    attach_ema(restored, AUTO)
    restored.load_checkpoint_state(tensors, metadata)
    for m in (model, restored):  # one more identical step: shadows and counter stay bit-identical
        _steps(m, 1, seed=3)
    a, b = model.checkpoint_state(), restored.checkpoint_state()
    assert a[1] == b[1] and json.loads(a[1]["ema"])["optimization_step"] == 3
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])

    fresh = tiny(spec())
    attach_ema(fresh, AUTO)
    with pytest.raises(ValueError, match="no EMA state"):
        fresh.load_checkpoint_state({}, {})
    with pytest.raises(ValueError, match=r"the checkpoint has an EMA of the weights, but this run keeps none"):
        tiny(spec(), use_ema=False).load_checkpoint_state(tensors, metadata)
    name = next(iter(tensors))
    with pytest.raises(ValueError, match="missing"):
        fresh.load_checkpoint_state({k: v for k, v in tensors.items() if k != name}, metadata)
    with pytest.raises(ValueError, match="shape"):
        fresh.load_checkpoint_state({**tensors, name: torch.zeros(1)}, metadata)
    other = tiny(spec())
    attach_ema(other, SimpleNamespace(**{**vars(AUTO), "decay": 0.99}))
    with pytest.raises(ValueError, match=r"ema.decay=0.99 but the checkpoint's EMA used 0.9999"):
        other.load_checkpoint_state(tensors, metadata)


def test_auto_takes_the_algorithms_default_and_any_algorithm_can_have_one(demo_home):
    from tests.ml.algorithms.test_registered_algorithms import Setup

    assert resolve_ema(AUTO, tiny(spec())) == {"decay": 0.9999, "power": 0.75, "inv_gamma": 1.0, "min_decay": 0.0}
    act = Setup("act", demo_home).model()
    assert resolve_ema(AUTO, act) is None  # ACT's paper trains without one
    on = SimpleNamespace(**{**vars(AUTO), "decay": 0.995})
    assert resolve_ema(on, act)["decay"] == 0.995 and resolve_ema(on, act)["power"] == 0.75
    assert resolve_ema(SimpleNamespace(**{**vars(AUTO), "decay": None}), tiny(spec())) is None
    attach_ema(act, on)
    assert act.weight_ema is not None and len(act.weight_ema.shadows) == len(list(act.parameters()))
    with pytest.raises(ConfigError, match=r"ema.decay=1.5: expected a number in \(0, 1\)"):
        resolve_ema(SimpleNamespace(**{**vars(AUTO), "decay": 1.5}), act)

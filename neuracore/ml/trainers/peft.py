"""LoRA through peft for every algorithm: which layers get adapters, what stays trainable, merged weights.

`resolve_lora(config.lora, model)` turns the `lora` group into `LoraSettings` (exact module names, so
a checkpoint or an export records precisely what was adapted); `apply_lora` injects peft's LoRA layers
in place (`peft.inject_adapter_in_model`: module names stay, a targeted `q_proj` becomes
`q_proj.base_layer` + `q_proj.lora_A.default` / `lora_B.default`) and sets what trains:

- adapters of every targeted layer;
- parameters of modules matching `lora.trainable` (e.g. pi0's action/state projections) that trained
  before LoRA (such a module gets no adapter, even when `lora.target_modules` matches it);
- nothing else: the base weights are frozen, so the optimizer holds state for the trained
  parameters only, and the EMA (trainers/ema.py) shadows only those.

Only `nn.Linear` layers whose weight trains without LoRA are targeted: a layer the algorithm froze
(pi0's `train_expert_only`, the unused last VLM projections) gets no adapter, so every adapter has a
gradient under DDP/FSDP. Layers inside `nn.MultiheadAttention` are skipped: its forward reads their
weights directly, so an adapter there would never be used.

`merged_state_dict` folds `W + (alpha/r) * B @ A` into plain names, which is what `model/` holds by
default (it loads with `Policy.from_pretrained` like any model); export/adapter.py writes and reads
the adapter-only alternative.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from neuracore.ml.core.errors import ConfigError

logger = logging.getLogger(__name__)

ADAPTER = "default"  # peft's adapter name; part of every adapter parameter's name
_ADAPTER_PARTS = (f".lora_A.{ADAPTER}.", f".lora_B.{ADAPTER}.")
_BASE = ".base_layer."


@dataclass(frozen=True)
class LoraSettings:
    """A run's LoRA, resolved: rank, alpha, dropout, the exact adapted modules and the fully trained patterns."""

    rank: int
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    trainable: tuple[str, ...]
    export: str = "merged"

    @property
    def scaling(self) -> float:
        """peft's LoRA scaling `alpha / rank`."""
        return self.alpha / self.rank

    def record(self) -> dict[str, Any]:
        """JSON for checkpoints and exports."""
        out = asdict(self)
        out["target_modules"], out["trainable"] = list(self.target_modules), list(self.trainable)
        return out

    @classmethod
    def from_record(cls, data: dict[str, Any], where: str) -> LoraSettings:
        """Read `record()` back; ValueError naming `where` when malformed."""
        try:
            settings = cls(rank=int(data["rank"]), alpha=float(data["alpha"]), dropout=float(data["dropout"]),
                           target_modules=tuple(str(t) for t in data["target_modules"]),
                           trainable=tuple(str(t) for t in data["trainable"]), export=str(data.get("export", "merged")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: malformed lora record ({exc})") from None
        if settings.rank < 1 or not settings.target_modules:
            raise ValueError(f"{where}: lora record needs rank >= 1 and target modules")
        return settings


def _compile(patterns: Iterable[str], key: str) -> list[re.Pattern[str]]:
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"{key}: {pattern!r} is not a valid regular expression ({exc})") from None
    return out


def _matches(name: str, patterns: list[re.Pattern[str]]) -> bool:
    """peft's rule: the whole name matches the expression, or the name ends with `.<pattern>`."""
    return any(p.fullmatch(name) or name.endswith("." + p.pattern) or name == p.pattern for p in patterns)


def candidate_layers(model: nn.Module) -> list[str]:
    """Names of the linear layers LoRA may adapt: trainable weight, not inside nn.MultiheadAttention."""
    inside_mha = {f"{name}.{child}" if name else child
                  for name, module in model.named_modules() if isinstance(module, nn.MultiheadAttention)
                  for child, _ in module.named_children()}
    return [name for name, module in model.named_modules()
            if type(module) is nn.Linear and module.weight.requires_grad and name not in inside_mha]


def resolve_lora(options: Any, model: nn.Module) -> LoraSettings | None:
    """The run's `LoraSettings` from the `lora` group (None when `lora.rank` is null or 0)."""
    if not options.rank:
        return None
    defaults = model.lora_defaults() if hasattr(model, "lora_defaults") else {"target_modules": [r".*"], "trainable": []}
    targets = defaults["target_modules"] if options.target_modules == "auto" else list(options.target_modules)
    trainable = defaults["trainable"] if options.trainable == "auto" else list(options.trainable)
    compiled = _compile(targets, "lora.target_modules")
    full = _compile(trainable, "lora.trainable")
    candidates = candidate_layers(model)
    # a module trained fully gets no adapter (`trainable` wins over `target_modules`)
    names = tuple(n for n in candidates if _matches(n, compiled) and not any(_matches(p, full) for p in _enclosing(n)))
    name = getattr(model, "algorithm_name", type(model).__name__)
    if not names:
        sample = ", ".join(candidates[:4]) or "none"
        raise ConfigError(f"lora.target_modules={targets}: matches no trainable linear layer of {name} "
                          f"(its linear layers include {sample})")
    alpha = float(options.alpha) if options.alpha is not None else float(options.rank)
    return LoraSettings(rank=int(options.rank), alpha=alpha, dropout=float(options.dropout), target_modules=names,
                        trainable=tuple(trainable), export=options.export)


def is_adapter(name: str) -> bool:
    """Whether a parameter name is a LoRA adapter weight."""
    return any(part in name for part in _ADAPTER_PARTS)


def apply_lora(model: nn.Module, settings: LoraSettings) -> None:
    """Inject LoRA layers into `model` in place and set what trains (see the module docstring)."""
    from peft import LoraConfig, inject_adapter_in_model

    trained_before = {name: p.requires_grad for name, p in model.named_parameters()}
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, bias="none",
                        target_modules="^(" + "|".join(re.escape(n) for n in settings.target_modules) + ")$")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    full = _compile(settings.trainable, "lora.trainable")
    for name, param in model.named_parameters():
        if is_adapter(name):
            param.requires_grad_(True)
        elif _BASE in name:
            param.requires_grad_(False)
        else:
            parents = _parents(name)
            param.requires_grad_(trained_before.get(name, False) and any(_matches(p, full) for p in parents))
    model.lora_settings = settings
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    adapters = sum(p.numel() for n, p in model.named_parameters() if is_adapter(n))
    logger.info("lora: rank %d, alpha %g on %d linear layers; %s adapter and %s other trained parameters",
                settings.rank, settings.alpha, len(settings.target_modules), f"{adapters:,}", f"{trained - adapters:,}")


def _parents(name: str) -> list[str]:
    """Module names enclosing a parameter, innermost first (`a.b.weight` -> [`a.b`, `a`])."""
    return _enclosing(name.rsplit(".", 1)[0]) if "." in name else []


def _enclosing(module: str) -> list[str]:
    """A module's name and those of the modules around it, innermost first (`a.b` -> [`a.b`, `a`])."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def lora_settings_of(model: nn.Module) -> LoraSettings | None:
    """The settings `apply_lora` recorded on the model, if any."""
    return getattr(model, "lora_settings", None)


def merged_state_dict(state: dict[str, torch.Tensor], settings: LoraSettings) -> dict[str, torch.Tensor]:
    """Plain names and merged weights: `<m>.weight = W + (alpha/r) * B @ A` (computed in float32, stored in W's
    dtype), `<m>.base_layer.bias` -> `<m>.bias`, adapters dropped. Tensors are detached CPU copies."""
    out: dict[str, torch.Tensor] = {}
    targets = set(settings.target_modules)
    for key, value in state.items():
        if is_adapter(key):
            continue
        if _BASE in key:
            module, param = key.split(_BASE, 1)
            if module not in targets:
                raise ValueError(f"{key}: a LoRA base layer that is not among lora.target_modules")
            if param == "weight":
                a = state[f"{module}.lora_A.{ADAPTER}.weight"].detach().float().cpu()
                b = state[f"{module}.lora_B.{ADAPTER}.weight"].detach().float().cpu()
                merged = value.detach().float().cpu() + settings.scaling * (b @ a)
                out[f"{module}.weight"] = merged.to(value.dtype)
            else:
                out[f"{module}.{param}"] = value.detach().cpu().clone()
            continue
        out[key] = value.detach().cpu().clone()
    return out


def trained_names(model: nn.Module) -> set[str]:
    """Names of the parameters that train (adapters and the `trainable` modules)."""
    return {name for name, p in model.named_parameters() if p.requires_grad}


def frozen_fingerprint(state: dict[str, torch.Tensor], model: nn.Module) -> str:
    """sha256 over the frozen parameters (name, dtype, shape, bytes) in name order: what an adapter's base must be."""
    params = {name for name, _ in model.named_parameters()}
    trained = trained_names(model)
    digest = hashlib.sha256()
    for name in sorted(n for n in state if n in params and n not in trained):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def check_resumable(saved: dict[str, Any] | None, now: dict[str, Any] | None, where: str) -> None:
    """A checkpoint's LoRA record must be this run's: ValueError naming the first setting that differs."""
    if saved == now:
        return
    if saved is None or now is None:
        had = "LoRA adapters" if saved is not None else "no LoRA"
        raise ValueError(f"{where}: the checkpoint was trained with {had}; resume with the same lora settings")
    key = next(k for k in now if saved.get(k) != now[k])
    raise ValueError(f"{where}: lora.{key}={now[key]!r} but the checkpoint has {saved.get(key)!r}; "
                     "resume with the same lora settings")


def setup_lora(options: Any, model: nn.Module) -> LoraSettings | None:
    """Resolve the `lora` group for `model` and inject the adapters (before the optimizers are built)."""
    settings = resolve_lora(options, model)
    if settings is not None:
        from neuracore.ml.export.adapter import check_adapter_export

        check_adapter_export(model, settings)
        apply_lora(model, settings)
    return settings


__all__ = [
    "LoraSettings",
    "apply_lora",
    "candidate_layers",
    "check_resumable",
    "frozen_fingerprint",
    "is_adapter",
    "lora_settings_of",
    "merged_state_dict",
    "resolve_lora",
    "setup_lora",
    "trained_names",
]

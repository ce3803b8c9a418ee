"""LeRobot's own ACT and Diffusion Policy, built at the shapes of `tools/benchmark.py train` and timed the same way.

The peers see the synthetic batch of `training.synthetic_batch` (uint8 images on the device, float vectors,
`is_pad`) mapped to LeRobot's keys. LeRobot 0.4 normalises in its preprocessor pipeline, not in the policy, so
the timed step runs that pipeline on the device too (our models normalise inside the step): uint8 → float in
[0, 1], then `make_<policy>_pre_post_processors`' preprocessor (ImageNet image statistics, as `lerobot-train`
sets them by default; unit statistics for state and action), then forward, backward, gradient clipping at the
preset's `grad_clip_norm`, LeRobot's preset optimizer over `get_optim_params()`, zero_grad — as `lerobot-train`'s
`update_policy` does, less its logging `.item()` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import importlib
import importlib.machinery
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuracore.ml.benchmarks.training import _PeakRss, _sync, model_init, synthetic_batch
from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError, one_line
from neuracore.ml.core.normalization import IMAGENET_MEAN, IMAGENET_STD, images_to_unit_float

# What `lerobot==0.4.4 --no-deps` leaves missing for ACT/Diffusion, at LeRobot's own pins; none of them (nor
# their dependencies) touches torch, so a plain `pip install` of these is safe.
PEER_REQUIREMENTS = ("draccus==0.10.0", "einops>=0.8,<0.9", "imageio>=2.34,<3", "pyserial>=3.5,<4",
                     "deepdiff>=7.0.1,<9")
_PIP_NAMES = {"serial": "pyserial", "cv2": "opencv-python-headless", "yaml": "pyyaml"}

Batch = dict[str, Any]  # LeRobot's keys: observation.*, action, action_is_pad (tensors) and a few scalars


@dataclass(frozen=True)
class _PeerSpec:
    """Where a LeRobot policy lives and how our benchmark's shapes map onto its config."""

    package: str  # lerobot.policies.<package>.{configuration,modeling,processor}_<package>
    prefix: str  # <prefix>Config, <prefix>Policy
    horizon_fields: tuple[str, ...]  # config fields set to the chosen horizon (the first one is reported)
    horizon: Callable[[dict[str, Any], int], int]  # (config defaults, requested) → horizon used
    time_axis: bool  # observations carry an n_obs_steps axis (Diffusion) or not (ACT)
    overrides: tuple[tuple[str, Any], ...]


def _unet_horizon(defaults: dict[str, Any], requested: int) -> int:
    # LeRobot's U-Net halves the horizon once per down stage; any other horizon is rejected, so fall back to
    # LeRobot's default one (16) rather than to a shape it was never run at.
    return requested if requested % 2 ** len(defaults["down_dims"]) == 0 else int(defaults["horizon"])


_PEERS = {
    "act": _PeerSpec("act", "ACT", ("chunk_size", "n_action_steps"), lambda _defaults, h: h, False,
                     (("pretrained_backbone_weights", None),)),
    "diffusion_policy": _PeerSpec("diffusion", "Diffusion", ("horizon",), _unet_horizon, True,
                                  (("pretrained_backbone_weights", None), ("crop_shape", None),
                                   ("resize_shape", None))),
}
PEERS = tuple(_PEERS)


@functools.cache
def _lerobot() -> types.SimpleNamespace:
    """LeRobot's config, policy and processor factories of the peers (imported once)."""
    import lerobot

    if "lerobot.policies" not in sys.modules:
        # `lerobot/policies/__init__.py` imports every policy's config; groot's fails to define under
        # transformers 5 (a dataclass field order error), which would take ACT and Diffusion down with it. A bare
        # package module lets their own modules import, which need none of the others.
        path = Path(lerobot.__file__).parent / "policies"
        package = types.ModuleType("lerobot.policies")
        package.__path__ = [str(path)]
        package.__spec__ = importlib.machinery.ModuleSpec("lerobot.policies", None, is_package=True)
        package.__spec__.submodule_search_locations = [str(path)]
        sys.modules["lerobot.policies"] = package
        lerobot.policies = package  # type: ignore[attr-defined]
    from lerobot.configs.types import FeatureType, PolicyFeature

    found: dict[str, Any] = {"FeatureType": FeatureType, "PolicyFeature": PolicyFeature}
    for spec in _PEERS.values():
        base = f"lerobot.policies.{spec.package}"
        found[f"{spec.prefix}Config"] = getattr(
            importlib.import_module(f"{base}.configuration_{spec.package}"), f"{spec.prefix}Config")
        found[f"{spec.prefix}Policy"] = getattr(
            importlib.import_module(f"{base}.modeling_{spec.package}"), f"{spec.prefix}Policy")
        found[f"{spec.prefix}Processors"] = getattr(
            importlib.import_module(f"{base}.processor_{spec.package}"), f"make_{spec.package}_pre_post_processors")
    return types.SimpleNamespace(**found)


@functools.cache
def peers_available() -> str | None:
    """None when LeRobot's ACT and Diffusion policies import, else a one-line reason with what to install."""
    try:
        _lerobot()
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top == "lerobot":
            return "lerobot is not installed: pip install --no-deps lerobot==0.4.4"
        install = " ".join(f"'{r}'" for r in PEER_REQUIREMENTS)
        return (f"LeRobot's ACT/Diffusion need the module {top!r} (pip name {_PIP_NAMES.get(top, top)}), "
                f"missing after `pip install --no-deps lerobot`: pip install {install}")
    except Exception as exc:  # noqa: BLE001 - any import-time failure means "no peers", said in one line
        return f"LeRobot's ACT/Diffusion policies do not import: {one_line(exc)}"
    return None


def _spec(name: str) -> _PeerSpec:
    if name not in _PEERS:
        raise ConfigError(f"peer {name!r}: unknown; valid: {', '.join(PEERS)}")
    reason = peers_available()
    if reason is not None:
        raise ConfigError(reason)
    return _PEERS[name]


def _stats(args: argparse.Namespace, image_keys: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    # Our benchmark's unit statistics; images get ImageNet's, which `lerobot-train` substitutes by default
    # (`dataset.use_imagenet_stats`), in LeRobot's (C, 1, 1) layout.
    def unit(dim: int) -> dict[str, torch.Tensor]:
        return {"mean": torch.zeros(dim), "std": torch.ones(dim), "min": -torch.ones(dim), "max": torch.ones(dim)}

    image = {"mean": torch.tensor(IMAGENET_MEAN).view(3, 1, 1), "std": torch.tensor(IMAGENET_STD).view(3, 1, 1)}
    return {"observation.state": unit(args.state_dim), "action": unit(args.action_dim),
            **{key: dict(image) for key in image_keys}}


def build_peer(name: str, args: argparse.Namespace, device: torch.device, overrides: dict[str, Any] | None = None,
               ) -> tuple[torch.nn.Module, Callable[[], Batch]]:
    """LeRobot's policy `name` at the benchmark's shapes on `device`, and the in-step batch maker (preprocessor).

    `overrides` sets other fields of LeRobot's config (e.g. a small `down_dims` for tests); LeRobot's defaults
    otherwise, with no pretrained backbone.
    """
    spec = _spec(name)
    lr = _lerobot()
    config_cls = getattr(lr, f"{spec.prefix}Config")
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides or {}) - set(fields))
    if unknown:
        raise ConfigError(f"{name} peer: unknown LeRobot {config_cls.__name__} field(s) {', '.join(unknown)}")
    defaults = {n: f.default for n, f in fields.items() if f.default is not dataclasses.MISSING}
    horizon = spec.horizon({**defaults, **(overrides or {})}, args.horizon)
    if args.cameras < 1:  # LeRobot's ACT/Diffusion need an image or an environment state; ours has neither then
        raise ConfigError(f"{name} peer: cameras={args.cameras}; LeRobot's {spec.prefix} needs at least one camera")
    image_keys = [f"observation.images.cam{i}" for i in range(args.cameras)]
    visual = lr.PolicyFeature(type=lr.FeatureType.VISUAL, shape=(3, args.image_size, args.image_size))
    config = config_cls(
        input_features={"observation.state": lr.PolicyFeature(type=lr.FeatureType.STATE, shape=(args.state_dim,)),
                        **{key: visual for key in image_keys}},
        output_features={"action": lr.PolicyFeature(type=lr.FeatureType.ACTION, shape=(args.action_dim,))},
        device=device.type,
        **{**dict(spec.overrides), **(overrides or {}), **{field: horizon for field in spec.horizon_fields}},
    )
    policy = getattr(lr, f"{spec.prefix}Policy")(config).to(device).train()
    preprocessor, _ = getattr(lr, f"{spec.prefix}Processors")(config, dataset_stats=_stats(args, image_keys))

    history = config.n_obs_steps
    shapes = argparse.Namespace(**{**vars(args), "horizon": horizon})
    ours = synthetic_batch(model_init(shapes), args.batch_size, history, device)
    frames: Callable[[torch.Tensor], torch.Tensor] = (lambda x: x) if spec.time_axis else (lambda x: x[:, -1])
    images = ours[keys.INPUTS][DataType.RGB_IMAGES.value]  # [B, T, N, C, H, W] uint8
    raw = {"observation.state": frames(ours[keys.INPUTS][DataType.JOINT_POSITIONS.value]),
           **{key: frames(images[:, :, i]) for i, key in enumerate(image_keys)},
           "action": ours[keys.OUTPUTS][DataType.JOINT_TARGET_POSITIONS.value],
           "action_is_pad": ours[keys.IS_PAD]}

    def make_batch() -> Batch:
        # LeRobot's loader hands over float images in [0, 1]; ours stay uint8 until the step, so the conversion
        # is part of the timed work on both sides, followed by LeRobot's own normalisation.
        batch: Batch = {**raw, **{key: images_to_unit_float(raw[key]) for key in image_keys}}
        return preprocessor(batch)

    return policy, make_batch


def make_optimizer(policy: torch.nn.Module) -> torch.optim.Optimizer:
    """LeRobot's preset optimizer (`get_optimizer_preset()`) over the policy's `get_optim_params()`."""
    # ACT's preset is AdamW (lr 1e-5, backbone group 1e-5, wd 1e-4); Diffusion's is Adam (betas 0.95/0.999).
    return policy.config.get_optimizer_preset().build(policy.get_optim_params())


def grad_clip_norm(policy: torch.nn.Module) -> float:
    """The gradient-norm limit of LeRobot's preset optimizer (10 for ACT and Diffusion); 0 means no clipping."""
    return float(policy.config.get_optimizer_preset().grad_clip_norm)


def training_step(policy: Callable[[Batch], Any], optimizer: torch.optim.Optimizer, make_batch: Callable[[], Batch],
                  autocast: contextlib.AbstractContextManager[Any], max_grad_norm: float) -> torch.Tensor:
    """One full step as `lerobot-train` runs it (preprocess, forward, backward, clip, optimizer, zero_grad); the loss."""
    batch = make_batch()  # outside autocast, where `lerobot-train` calls its preprocessor
    with autocast:
        loss, _ = policy(batch)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # `lerobot-train` computes the norm even unclipped (it logs it); the same work either way.
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def measure_peer(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype | None,
                 compile: bool = False, overrides: dict[str, Any] | None = None) -> dict[str, float]:
    """Median step time, samples/s, parameters (M), peak memory (GiB) and horizon of LeRobot's `name`."""
    torch.manual_seed(0)
    policy, make_batch = build_peer(name, args, device, overrides)
    optimizer, limit = make_optimizer(policy), grad_clip_norm(policy)
    step_policy = torch.compile(policy) if compile else policy
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss = _PeakRss() if device.type != "cuda" else contextlib.nullcontext()
    times = []
    with rss:
        for i in range(args.warmup + args.steps):
            _sync(device)
            start = time.perf_counter()
            training_step(step_policy, optimizer, make_batch, autocast, limit)
            _sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else rss.peak / 2**30
    median = statistics.median(times)
    return {"params_m": sum(p.numel() for p in policy.parameters()) / 1e6, "step_ms": median * 1e3,
            "samples_per_s": args.batch_size / median, "peak_gib": peak, "horizon": getattr(policy.config, _PEERS[name].horizon_fields[0])}

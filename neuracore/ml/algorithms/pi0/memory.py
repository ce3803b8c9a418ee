"""Memory needs of pi0 at any size, computed on the meta device (nothing is allocated).

Parameters and optimizer state are counted exactly from the real module; activations are the
tensors autograd saves for backward during one real training forward pass (meta tensors carry
shapes and dtypes), with and without gradient checkpointing.

    python -m neuracore.ml.algorithms.pi0.memory --batch-size 32 --cameras 3
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.model_init import FeatureSpec, ModelInitDescription

GIB = 1024**3


def _description(cameras: int, horizon: int, state_dim: int, action_dim: int) -> ModelInitDescription:
    vec = lambda dt, n: FeatureSpec(dt, [f"v{i}" for i in range(n)], [1])
    return ModelInitDescription(
        inputs={
            DataType.JOINT_POSITIONS: vec(DataType.JOINT_POSITIONS, state_dim),
            DataType.RGB_IMAGES: FeatureSpec(DataType.RGB_IMAGES, [f"cam{i}" for i in range(cameras)], [3, 224, 224]),
            DataType.LANGUAGE: FeatureSpec(DataType.LANGUAGE, ["instruction"], [1]),
        },
        outputs={DataType.JOINT_TARGET_POSITIONS: vec(DataType.JOINT_TARGET_POSITIONS, action_dim)},
        output_prediction_horizon=horizon,
    )


@contextlib.contextmanager
def _count_saved(totals: dict[str, int], region: list[str], params: set[int]) -> Iterator[None]:
    seen: dict[int, torch.Tensor] = {}  # keep saved tensors alive so ids are not reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        is_weight = id(t) in params or (t._base is not None and id(t._base) in params)  # counted as weights
        if id(t) not in seen and not is_weight:
            seen[id(t)] = t
            totals[region[-1]] = totals.get(region[-1], 0) + t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def _activations(model: Any, batch: dict[str, Any], image_size: int) -> dict[str, int]:
    """Bytes saved for backward, by region (`outside`, `vision_layer`, `joint_layer`)."""
    totals: dict[str, int] = {}
    region = ["outside"]
    backbone = model.backbone
    handles = []
    for name, layers in (("vision_layer", backbone.vision.encoder.layers), ("joint_layer", backbone.layers)):
        for layer in layers:
            handles.append(layer.register_forward_pre_hook(lambda *_, n=name: region.append(n) and None))
            handles.append(layer.register_forward_hook(lambda *_: region.pop() and None))
    try:
        with _count_saved(totals, region, {id(p) for p in model.parameters()}):
            actions, weight = model._targets(batch)
            b = actions.shape[0]
            t = torch.full((b,), 0.5, device=actions.device)
            x_t = t[:, None, None] * torch.randn_like(actions) + (1 - t[:, None, None]) * actions
            prefix, pad = model._prefix(batch)
            v = model._velocity(prefix, pad, model._state(batch, b), x_t, t)
            ((v - actions).pow(2) * weight).mean()
    finally:
        for h in handles:
            h.remove()
    return totals


def estimate(
    batch_size: int = 32, cameras: int = 3, horizon: int = 50, state_dim: int = 14, action_dim: int = 14,
    **hyperparameters: Any,
) -> dict[str, float]:
    """GiB needed for weights, gradients, AdamW state and activations (per mode) at `batch_size`."""
    from neuracore.ml.algorithms.pi0.model import Pi0

    mid = _description(cameras, horizon, state_dim, action_dim)
    with torch.device("meta"):
        model = Pi0(mid, **hyperparameters)
    model.train()
    size = model.image_size
    batch = {
        keys.INPUTS: {
            DataType.JOINT_POSITIONS.value: torch.zeros(batch_size, 1, state_dim, device="meta"),
            DataType.RGB_IMAGES.value: torch.zeros(batch_size, 1, cameras, 3, size, size, dtype=torch.uint8, device="meta"),
        },
        keys.INPUT_MASKS: {
            DataType.JOINT_POSITIONS.value: torch.ones(batch_size, state_dim, device="meta"),
            DataType.RGB_IMAGES.value: torch.ones(batch_size, cameras, device="meta"),
        },
        keys.OUTPUTS: {DataType.JOINT_TARGET_POSITIONS.value: torch.zeros(batch_size, horizon, action_dim, device="meta")},
        keys.OUTPUT_MASKS: {DataType.JOINT_TARGET_POSITIONS.value: torch.ones(batch_size, action_dim, device="meta")},
        keys.IS_PAD: torch.zeros(batch_size, horizon, dtype=torch.bool, device="meta"),
        keys.LANGUAGE: ["pick up the cube"] * batch_size,
    }
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    grad_bytes = sum(p.numel() * p.element_size() for p in trainable)
    adam_bytes = 2 * grad_bytes  # exp_avg and exp_avg_sq in the parameter dtype
    acts = _activations(model, batch, size)
    # With checkpointing only each layer's inputs stay (the joint layers' prefix+suffix hidden states,
    # each SigLIP layer's input), plus one layer's activations recomputed during backward.
    sizes = model.backbone.sizes
    dtype_bytes = model.state_proj.weight.element_size()
    tokens_prefix = cameras * (size // sizes.patch_size) ** 2 + model.max_token_len
    joint_inputs = sizes.depth * batch_size * (tokens_prefix * sizes.vlm_width + (1 + horizon) * sizes.expert_width)
    vision_trains = any(p.requires_grad for p in model.backbone.vision.parameters())
    vision_inputs = vision_trains * sizes.vision_depth * batch_size * cameras * (size // sizes.patch_size) ** 2 * sizes.vision_width
    one_layer = max(acts.get("joint_layer", 0) / sizes.depth, acts.get("vision_layer", 0) / sizes.vision_depth)
    ckpt = acts.get("outside", 0) + (joint_inputs + vision_inputs) * dtype_bytes + one_layer
    full = sum(acts.values())
    return {
        "parameters": float(sum(p.numel() for p in params)),
        "trainable_parameters": float(sum(p.numel() for p in trainable)),
        "weights_gib": weight_bytes / GIB,
        "gradients_gib": grad_bytes / GIB,
        "adamw_state_gib": adam_bytes / GIB,
        "activations_gib": full / GIB,
        "activations_checkpointed_gib": ckpt / GIB,
        "total_gib": (weight_bytes + grad_bytes + adam_bytes + full) / GIB,
        "total_checkpointed_gib": (weight_bytes + grad_bytes + adam_bytes + ckpt) / GIB,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the table for the paper's configuration and its training modes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cameras", type=int, default=3)
    args = parser.parse_args(argv)
    modes = {
        "full fp32": {},
        "full bf16 weights": {"weights_dtype": "bfloat16"},
        "freeze_vision_encoder bf16": {"weights_dtype": "bfloat16", "freeze_vision_encoder": True},
        "train_expert_only bf16": {"weights_dtype": "bfloat16", "train_expert_only": True},
    }
    print(f"batch {args.batch_size}, {args.cameras} cameras of 224x224, 48 tokens, chunk 50 (GiB)")
    print("mode | params | trainable | weights | grads | AdamW | act | act ckpt | total | total ckpt")
    for name, hyper in modes.items():
        r = estimate(args.batch_size, args.cameras, **hyper)
        print(
            f"{name} | {r['parameters'] / 1e9:.3f}B | {r['trainable_parameters'] / 1e9:.3f}B | {r['weights_gib']:.1f} | "
            f"{r['gradients_gib']:.1f} | {r['adamw_state_gib']:.1f} | {r['activations_gib']:.1f} | "
            f"{r['activations_checkpointed_gib']:.1f} | {r['total_gib']:.1f} | {r['total_checkpointed_gib']:.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Memory planner: `tools/benchmark.py memory algorithm=pi05 [...]` (which training modes fit on which GPU).

    python tools/benchmark.py memory algorithm=pi05 --gpu-gb 24,40,80,141 --batch-size 32 --cameras 3
    python tools/benchmark.py memory algorithm=pi0 algorithm.weights_dtype=bfloat16 --gpus 4 --lora-ranks 16,32

For pi0 and pi0.5 (and their yaml variants such as pi0_tiny), per GPU: weights, gradients, AdamW state,
activations and a stated overhead for full fine-tuning, expert-only (`algorithm.train_expert_only=true`),
LoRA at each rank (the algorithm's `lora_defaults()`), each with and without gradient checkpointing, and
with FSDP over `--gpus`. Parameter counts come from the real module built on the meta device (no memory);
activations from a per-layer formula of the tensors autograd saves (checked against one measured step
of the tiny models: `measure_step`). With CUDA, `--measure` also runs one real step per mode and prints
`torch.cuda.max_memory_allocated` next to the estimate.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import re
import weakref
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from neuracore.ml.core.errors import ConfigError

GIB = 1024**3
# What the estimate adds to the tensors it counts: the CUDA context and cuBLAS/cuDNN workspaces (not seen
# by torch's allocator) and the caching allocator's fragmentation (blocks cached but not reusable).
CUDA_CONTEXT_GIB = 1.0
FRAGMENTATION = 0.10
# The data spec the planner assumes besides cameras and horizon (pi0's padding makes the rest irrelevant).
STATE_DIM = ACTION_DIM = 14
PRECISIONS = ("bf16", "no")
ATTENTION = ("fused", "math")


# ----- what is planned --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """An algorithm configuration as training composes it (`algorithm=<name>` plus overrides)."""

    shown: str
    name: str
    cls: type
    hyper: dict[str, Any]
    horizon: int
    mixed_precision: str  # "bf16" (autocast) or "no"


@dataclass(frozen=True)
class Mode:
    """One training mode: `full`, `expert` (train_expert_only) or `lora` (rank), +/- checkpointing."""

    kind: str
    rank: int = 0
    checkpointing: bool = False

    @property
    def label(self) -> str:
        """`full`, `expert-only`, `LoRA r=16`, with ` +ckpt` under gradient checkpointing."""
        base = {"full": "full", "expert": "expert-only"}.get(self.kind, f"LoRA r={self.rank}")
        return base + (" +ckpt" if self.checkpointing else "")


@dataclass
class Estimate:
    """Bytes per GPU of one mode at one batch size (activations split by part for the report)."""

    mode: Mode
    params: int
    trainable: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    gather: float = 0.0  # FSDP: the unsharded units alive at once
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def counted(self) -> float:
        """Everything torch's allocator holds at the step's peak (what max_memory_allocated reports)."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.gather

    @property
    def total(self) -> float:
        """`counted` plus the stated overhead: what must fit on the GPU."""
        return self.counted * (1 + FRAGMENTATION) + CUDA_CONTEXT_GIB * GIB


def resolve(overrides: list[str]) -> tuple[Target, dict[str, int]]:
    """`algorithm=<name>` plus Hydra-style overrides → the target and shape keys given as overrides."""
    from neuracore.ml.config.preflight import compose_config
    from neuracore.ml.config.schema import resolve_algorithm
    from neuracore.ml.train import CONFIG_DIR

    shapes: dict[str, int] = {}
    passed = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r}: expected key=value (e.g. algorithm=pi05 or algorithm.weights_dtype=bfloat16)")
        if key in ("batch_size", "cameras"):
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"{key}={value!r}: expected a positive integer")
            shapes[key] = int(value)
        else:
            passed.append(item)
    name = next((o.partition("=")[2] for o in passed if o.startswith("algorithm=")), None)
    if not name:
        raise ConfigError("algorithm: missing; e.g. `tools/benchmark.py memory algorithm=pi05`")
    cfg = compose_config(passed, CONFIG_DIR)
    choice = resolve_algorithm(cfg["algorithm"])
    from neuracore.ml.algorithms.pi0.backbone import PaliGemmaWithExpert  # noqa: F401 - the family planned

    if choice.name not in ("pi0", "pi05"):
        raise ConfigError(f"algorithm={name}: the memory planner models the pi0 family only (pi0, pi05 and their yamls)")
    horizon = int(cfg["output_prediction_horizon"])
    if horizon < 1:
        raise ConfigError(f"output_prediction_horizon={horizon}: expected a positive integer")
    precision = cfg.get("mixed_precision") or "bf16"  # null (the accelerate config's) → plan for bf16 autocast
    if precision not in PRECISIONS:
        raise ConfigError(f"mixed_precision={precision}: the planner models {' or '.join(PRECISIONS)}")
    return Target(name, choice.name, choice.cls, dict(choice.hyperparameters), horizon, precision), shapes


def model_init(cameras: int, image_size: int, horizon: int):
    """The data spec the planner builds the model for: 14-dim state/action, `cameras` RGB, an instruction."""
    from neuracore.ml.core.data_types import DataType
    from neuracore.ml.core.model_init import FeatureSpec, ModelInitDescription

    def vector(dt: DataType, n: int) -> FeatureSpec:
        return FeatureSpec(dt, [f"j{i}" for i in range(n)], [1],
                           {"mean": [0.0] * n, "std": [1.0] * n, "min": [-1.0] * n, "max": [1.0] * n,
                            "q01": [-1.0] * n, "q99": [1.0] * n})

    inputs = {DataType.JOINT_POSITIONS: vector(DataType.JOINT_POSITIONS, STATE_DIM),
              DataType.LANGUAGE: FeatureSpec(DataType.LANGUAGE, ["instruction"], [1])}
    if cameras:
        inputs[DataType.RGB_IMAGES] = FeatureSpec(DataType.RGB_IMAGES, [f"cam{i}" for i in range(cameras)],
                                                  [3, image_size, image_size])
    return ModelInitDescription(inputs, {DataType.JOINT_TARGET_POSITIONS: vector(DataType.JOINT_TARGET_POSITIONS,
                                                                                 ACTION_DIM)}, horizon)


def build(target: Target, cameras: int, mode: Mode, device: str | torch.device = "meta") -> nn.Module:
    """The model of `target` for `mode` (frozen parts set; LoRA's freezing applied by `lora_freeze`).

    On the meta device by default: shapes and `requires_grad` only, built in well under a second at 3B.
    """
    from neuracore.ml.core.model import build_model

    hyper = {**target.hyper, "pretrained_path": None, "tokenizer_path": None,
             "train_expert_only": mode.kind == "expert", "gradient_checkpointing": mode.checkpointing}
    with torch.device(device):
        model = build_model(target.cls, model_init(cameras, hyper.get("image_size", 224), target.horizon), hyper)
    if mode.kind == "lora":
        lora_freeze(model)
    return model


# ----- LoRA: which layers get adapters, what trains ----------------------------------------------------


def _matches(name: str, patterns: list[str]) -> bool:
    """peft's rule: a regular expression matching the whole name, or a plain name matching as a suffix."""
    return any(name == p or name.endswith("." + p) or re.fullmatch(p, name) for p in patterns)


def lora_targets(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The `nn.Linear` layers `lora_defaults()["target_modules"]` selects whose weight trains without LoRA."""
    patterns = model.lora_defaults()["target_modules"]
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and m.weight.requires_grad and _matches(n, patterns)]


def lora_freeze(model: nn.Module) -> None:
    """LoRA's freezing: everything off except the modules of `lora_defaults()["trainable"]` (adapters apart).

    The adapter targets are recorded (`model._lora_targets`) before freezing, as peft sees the model.
    """
    model._lora_targets = {n for n, _ in lora_targets(model)}
    trainable = model.lora_defaults()["trainable"]
    keep = {id(p) for n, m in model.named_modules() if n and _matches(n, trainable) for p in m.parameters()
            if p.requires_grad}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)


def adapter_params(model: nn.Module, rank: int) -> int:
    """What LoRA adds: r·(in + out) per target layer (A: r×in, B: out×r)."""
    targets = getattr(model, "_lora_targets", None)
    linears = dict(model.named_modules())
    names = targets if targets is not None else {n for n, _ in lora_targets(model)}
    return sum(rank * (linears[n].in_features + linears[n].out_features) for n in names)


# ----- parameters, gradients, optimizer ----------------------------------------------------------------


def state_bytes(model: nn.Module, mode: Mode) -> dict[str, int]:
    """Parameter counts and the bytes of weights, gradients and AdamW's two moments (in each parameter's dtype).

    LoRA adapters take their base layer's dtype (`inject_adapter_in_model`): `w` bytes each for weight,
    gradient and each moment.
    """
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    adapters = adapter_params(model, mode.rank) if mode.kind == "lora" else 0
    w = model.action_in_proj.weight.element_size()
    grads = sum(p.numel() * p.element_size() for p in trainable) + w * adapters
    return {"params": sum(p.numel() for p in params) + adapters,
            "trainable": sum(p.numel() for p in trainable) + adapters,
            "weights": sum(p.numel() * p.element_size() for p in params) + w * adapters,
            "gradients": grads, "optimizer": 2 * grads}


# ----- activations: the per-layer formula --------------------------------------------------------------


class _Saved:
    """Bytes autograd keeps for backward, accumulated by part (`vision`, `joint`, `outside`, ...)."""

    def __init__(self, c: int, cast_weights: bool) -> None:
        self.c = c  # bytes of the compute dtype (bf16 under autocast, else the weights')
        self.cast_weights = cast_weights  # autocast over float32 weights: every used weight saved as a bf16 copy
        self.parts: dict[str, float] = defaultdict(float)

    def add(self, part: str, elements: float, nbytes: int) -> None:
        self.parts[part] += elements * nbytes


@dataclass
class _Lin:
    """What one linear layer saves depends on whether its weight trains and whether it has an adapter."""

    trains: bool
    lora: bool
    weight: int  # elements of the weight


def _linear_status(model: nn.Module, mode: Mode) -> dict[str, _Lin]:
    targets = getattr(model, "_lora_targets", set()) if mode.kind == "lora" else set()
    return {n: _Lin(m.weight.requires_grad, n in targets, m.weight.numel())
            for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def _linears(s: _Saved, part: str, lins: list[_Lin], n: float, width: int, x_bytes: int, grad_in: bool,
             rank: int) -> bool:
    """Linears fed by one tensor `[n, width]` of `x_bytes` per element; returns whether their outputs need grad.

    A linear saves its input (cast to the compute dtype) when its weight trains or it has an adapter, and
    its weight (a bf16 copy under autocast over float32 weights) when its input needs grad. Under autocast
    each linear casts a float32 input itself, so inputs are shared only when already in the compute dtype.
    """
    shared = x_bytes == s.c
    # Adapters have their base layer's dtype (peft's `inject_adapter_in_model`, as trainers/peft.py uses it);
    # peft casts the input to it, then autocast over float32 weights casts it to bf16: a private copy each.
    # Otherwise the adapter reads the same tensor as the layers beside it.
    private_lora = s.cast_weights
    saving = [lin for lin in lins if lin.trains or (lin.lora and not private_lora)]
    if saving:
        s.add(part, n * width * (1 if shared else len(saving)), s.c)
    for lin in lins:
        if lin.lora:
            if private_lora:
                s.add(part, n * width, s.c)
            s.add(part, n * rank, s.c)  # A's output, saved by B
            if s.cast_weights:
                s.add(part, rank * width * 2, 2)  # adapter weights' bf16 copies (tiny)
        if grad_in and s.cast_weights:
            s.add(part, lin.weight, 2)
    return grad_in or any(lin.trains or lin.lora for lin in lins)


def _rms_norm(s: _Saved, part: str, n: float, width: int, grad_in: bool, weight_trains: bool) -> bool:
    """Gemma's RMSNorm in float32: x (as float32), rsqrt, 1+w for grad of x; x·rsqrt for grad of w."""
    if grad_in:
        s.add(part, n * width + n + width, 4)
    if weight_trains:
        s.add(part, n * width, 4)
    return grad_in or weight_trains


def _ada_rms_norm(s: _Saved, part: str, n: float, batch: int, width: int, grad_in: bool, cond_grad: bool,
                  dense: _Lin, rank: int) -> tuple[bool, bool]:
    """pi0.5's adaRMS: dense(cond) → scale, shift, gate; returns (output needs grad, gate needs grad)."""
    if cond_grad and s.cast_weights:
        s.add(part, dense.weight, 2)
    scale_grad = cond_grad or dense.trains or dense.lora
    if grad_in:
        s.add(part, n * width + n + batch * width, 4)  # x (float32), rsqrt, 1+scale
    if scale_grad:
        s.add(part, n * width, 4)  # x·rsqrt, for the grad of scale
    return grad_in or scale_grad, scale_grad


def _gemma_half(s: _Saved, part: str, lins: dict[str, _Lin], n: float, batch: int, width: int, mlp: int,
                attn: int, h_bytes: int, grad_in: bool, norms_train: bool, adaptive: bool, cond_grad: bool,
                dense: tuple[_Lin, _Lin] | None, rank: int, last: bool) -> tuple[bool, bool]:
    """One stream of a joint layer before attention; returns (q/k/v need grad, residual input needs grad)."""
    if adaptive:
        x_grad, _ = _ada_rms_norm(s, part, n, batch, width, grad_in, cond_grad, dense[0], rank)
    else:
        x_grad = _rms_norm(s, part, n, width, grad_in, norms_train)
    qkv = [lins["self_attn.q_proj"], lins["self_attn.k_proj"], lins["self_attn.v_proj"]]
    return _linears(s, part, qkv, n, width, h_bytes, x_grad, rank), grad_in


def _gemma_rest(s: _Saved, part: str, lins: dict[str, _Lin], n: float, batch: int, width: int, mlp: int,
                attn: int, h_bytes: int, attn_grad: bool, res_grad: bool, norms_train: bool, adaptive: bool,
                cond_grad: bool, dense: tuple[_Lin, _Lin] | None, rank: int) -> bool:
    """The stream after attention: o_proj, residual, post-norm, gated MLP, residual; returns output needs grad."""
    c = s.c
    y_grad = _linears(s, part, [lins["self_attn.o_proj"]], n, attn, c, attn_grad, rank)
    if adaptive:  # h + y·gate from the input norm: y saved for gate's grad, gate for y's
        gate_grad = cond_grad or dense[0].trains
        s.add(part, (n * width if gate_grad else 0) + (batch * width if y_grad else 0), c)
    h_grad = res_grad or y_grad
    if adaptive:
        x_grad, gate_grad = _ada_rms_norm(s, part, n, batch, width, h_grad, cond_grad, dense[1], rank)
    else:
        x_grad, gate_grad = _rms_norm(s, part, n, width, h_grad, norms_train), False
    up_grad = _linears(s, part, [lins["mlp.gate_proj"], lins["mlp.up_proj"]], n, width, h_bytes, x_grad, rank)
    if up_grad:
        s.add(part, 3 * n * mlp, c)  # gelu's input, gelu's output and up's output (saved by the product)
    m_grad = _linears(s, part, [lins["mlp.down_proj"]], n, mlp, c, up_grad, rank)
    if adaptive:
        s.add(part, (n * width if gate_grad else 0) + (batch * width if m_grad else 0), c)
    return h_grad or m_grad


def _siglip_layer(s: _Saved, part: str, lins: dict[str, _Lin], tokens: float, width: int, mlp: int, heads: int,
                  h_bytes: int, grad_in: bool, norms_train: bool, rank: int) -> bool:
    """One SigLIP encoder layer (LayerNorm, fused attention without mask, GELU MLP); returns output needs grad."""
    c = s.c
    ln_out = 4 if s.cast_weights else h_bytes  # autocast runs layer_norm in float32
    x_grad = grad_in or norms_train
    if x_grad:
        s.add(part, tokens * width * h_bytes / 4 + 2 * tokens, 4)  # input, mean, rstd
    qkv = [lins["self_attn.q_proj"], lins["self_attn.k_proj"], lins["self_attn.v_proj"]]
    a_grad = _linears(s, part, qkv, tokens, width, ln_out, x_grad, rank)
    if a_grad:
        s.add(part, 4 * tokens * width, c)  # q, k, v and the output (which is also out_proj's input)
        s.add(part, tokens * heads, 4)  # log-sum-exp
    y_grad = _linears(s, part, [lins["self_attn.out_proj"]], 0, width, c, a_grad, rank)
    h_grad = grad_in or y_grad
    x_grad = h_grad or norms_train
    if x_grad:
        s.add(part, tokens * width * h_bytes / 4 + 2 * tokens, 4)
    f_grad = _linears(s, part, [lins["mlp.fc1"]], tokens, width, ln_out, x_grad, rank)
    if f_grad:
        s.add(part, tokens * mlp, c)  # fc1's output (gelu's input)
    m_grad = _linears(s, part, [lins["mlp.fc2"]], tokens, mlp, c, f_grad, rank)
    return h_grad or m_grad


def _sub(lins: dict[str, _Lin], prefix: str) -> dict[str, _Lin]:
    return {k[len(prefix):]: v for k, v in lins.items() if k.startswith(prefix)}


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def activations(model: nn.Module, mode: Mode, batch: int, precision: str, attention: str = "fused") -> _Saved:
    """Bytes saved for backward by one training step, from the layer formula (see the module docstring).

    Tokens: prefix = cameras·(image_size/patch_size)² + max_token_len, suffix = horizon (+1 state token for
    pi0). `attention="fused"` is a flash/memory-efficient SDPA kernel (q, k, v, output, log-sum-exp and the
    mask as an additive bias saved); `"math"` the reference kernel (k, v expanded to every head and the
    softmax probabilities saved, in float32).
    """
    sizes = model.backbone.sizes
    w = model.action_in_proj.weight.element_size()
    autocast = precision == "bf16"
    c = 2 if autocast else w
    s = _Saved(c, cast_weights=autocast and w == 4)
    lins = _linear_status(model, mode)
    rank = mode.rank
    pi0 = hasattr(model, "state_proj")
    cams, patches = model.num_cameras, (sizes.image_size // sizes.patch_size) ** 2
    prefix_n, suffix_n = batch * (cams * patches + model.max_token_len), batch * (model.horizon + int(pi0))
    seq = prefix_n / batch + suffix_n / batch
    heads, kv, hd = sizes.num_heads, sizes.num_kv_heads, sizes.head_dim
    bb = model.backbone
    ckpt = mode.checkpointing
    layer_parts: list[tuple[str, float]] = []  # per-layer saved bytes (for checkpointing's working set)

    # SigLIP: patch convolution, encoder layers, post-norm, projector.
    vision_grad = _trains(bb.vision)
    tokens = batch * cams * patches
    hv = w
    if cams:
        if vision_grad:  # the convolution saves its input (pixels) and weight whenever it is differentiated
            s.add("outside", batch * cams * 3 * sizes.image_size**2, c)
            if s.cast_weights:
                s.add("outside", bb.vision.embeddings.patch_embedding.weight.numel(), 2)
        g = _trains(bb.vision.embeddings)
        for i in range(sizes.vision_depth):
            before = s.parts["vision"]
            layer = bb.vision.encoder.layers[i]
            g = _siglip_layer(s, "vision", _sub(lins, f"backbone.vision.encoder.layers.{i}."), tokens,
                              sizes.vision_width, sizes.vision_mlp_dim, sizes.vision_num_heads, hv, g,
                              _trains(layer.layer_norm1), rank)
            layer_parts.append(("vision", s.parts["vision"] - before))
            if ckpt and g:  # checkpointing keeps each layer's input instead
                s.parts["vision"] = before + tokens * sizes.vision_width * hv
        if g or _trains(bb.vision.post_layernorm):
            s.add("outside", tokens * sizes.vision_width * hv / 4 + 2 * tokens, 4)
        g_img = _linears(s, "outside", [lins["backbone.projector"]], tokens, sizes.vision_width,
                         4 if s.cast_weights else hv, g or _trains(bb.vision.post_layernorm), rank)
    else:
        g_img = False
    embed_grad = _trains(bb.embed_tokens)
    if embed_grad:
        s.add("outside", batch * model.max_token_len, 8)  # token ids
    prefix_grad = g_img or embed_grad

    # The suffix: pi0's state token and action-time MLP, pi0.5's action projection and time MLP → adaRMS.
    horizon_n = batch * model.horizon
    width_e = sizes.expert_width
    if pi0:
        st = _linears(s, "outside", [lins["state_proj"]], batch, model.max_state_dim, c, False, rank)
        ai = _linears(s, "outside", [lins["action_in_proj"]], horizon_n, model.max_action_dim, c, False, rank)
        mi = _linears(s, "outside", [lins["action_time_mlp_in"]], horizon_n, 2 * width_e, c, ai, rank)
        if mi:
            s.add("outside", horizon_n * width_e, c)  # silu's input
        mo = _linears(s, "outside", [lins["action_time_mlp_out"]], horizon_n, width_e, c, mi, rank)
        suffix_grad, cond_grad = st or mo, False
    else:
        suffix_grad = _linears(s, "outside", [lins["action_in_proj"]], horizon_n, model.max_action_dim, c, False,
                               rank)
        ti = _linears(s, "outside", [lins["time_mlp_in"]], batch, width_e, c, False, rank)
        to = _linears(s, "outside", [lins["time_mlp_out"]], batch, width_e, c, ti, rank)
        cond_grad = to
        s.add("outside", (2 * batch * width_e if ti else 0) + (batch * width_e if to else 0), c)  # silus, cond
    hp, hs = w, c  # the prefix stream stays in the weights' dtype, the suffix in the compute dtype

    # The joint layers.
    rope_counted = False
    for i, layer in enumerate(bb.layers):
        before = s.parts["joint"]
        vl, ex = _sub(lins, f"backbone.layers.{i}.vlm."), _sub(lins, f"backbone.layers.{i}.expert.")
        adaptive = not pi0
        dense = ((ex["input_layernorm.dense"], ex["post_attention_layernorm.dense"]) if adaptive else None)
        p_attn, p_res = _gemma_half(s, "joint", vl, prefix_n, batch, sizes.vlm_width, sizes.vlm_mlp_dim,
                                    heads * hd, hp, prefix_grad, _trains(layer.vlm.input_layernorm), False, False,
                                    None, rank, layer.last)
        s_attn, s_res = _gemma_half(s, "joint", ex, suffix_n, batch, width_e, sizes.expert_mlp_dim, heads * hd, hs,
                                    suffix_grad, _trains(layer.expert.input_layernorm) if not adaptive else False,
                                    adaptive, cond_grad, dense, rank, False)
        if p_attn or s_attn:  # the joint attention over prefix + suffix
            if not rope_counted:  # cos, sin: one pair for all layers, saved by the rotary multiplications
                s.add("joint", 2 * batch * seq * hd, hp)
                rope_counted = True
            if attention == "fused":
                s.add("joint", batch * seq * hd * (2 * heads + 2 * kv) + batch * seq * seq, c)  # q, k, v, out, bias
                s.add("joint", batch * heads * seq, 4)  # log-sum-exp
            else:
                s.add("joint", batch * heads * seq * (3 * hd + seq), 4)  # q, expanded k, v; probabilities
        if not layer.last:
            prefix_grad = _gemma_rest(s, "joint", vl, prefix_n, batch, sizes.vlm_width, sizes.vlm_mlp_dim,
                                      heads * hd, hp, p_attn or s_attn, p_res, _trains(layer.vlm.input_layernorm),
                                      False, False, None, rank)
        suffix_grad = _gemma_rest(s, "joint", ex, suffix_n, batch, width_e, sizes.expert_mlp_dim, heads * hd, hs,
                                  p_attn or s_attn, s_res, _trains(layer.expert.input_layernorm) if not adaptive
                                  else False, adaptive, cond_grad, dense, rank)
        layer_parts.append(("joint", s.parts["joint"] - before))
        if ckpt:  # only the layer's inputs stay: prefix and suffix hidden states (mask, cos, sin once)
            s.parts["joint"] = before + prefix_n * sizes.vlm_width * hp + suffix_n * width_e * hs
            if i == 0:  # the boolean mask, cos and sin: inputs of every layer, one storage each
                s.add("joint", batch * seq * seq + 2 * batch * seq * hd * hp, 1)

    # Final expert norm, action head, loss.
    if pi0:
        _rms_norm(s, "outside", suffix_n, width_e, suffix_grad, _trains(bb.expert_norm))
    else:
        _ada_rms_norm(s, "outside", suffix_n, batch, width_e, suffix_grad, cond_grad, lins["backbone.expert_norm.dense"],
                      rank)
    _linears(s, "outside", [lins["action_out_proj"]], horizon_n, width_e, c, suffix_grad, rank)
    s.add("outside", 2 * horizon_n * model.max_action_dim + 1, 4)  # (v - target) for the square, the loss weight
    if ckpt:  # one layer recomputed during backward at a time
        s.add("recompute", max(b for _, b in layer_parts), 1)
    return s


# ----- estimates ---------------------------------------------------------------------------------------


def fsdp_gather(model: nn.Module) -> float:
    """Bytes of unsharded parameters alive at once under FSDP2: the root's own plus two wrap units (prefetch)."""
    units = [*model.backbone.layers, *model.backbone.vision.encoder.layers]
    in_units = {id(p) for u in units for p in u.parameters()}
    root = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in in_units)
    largest = max(sum(p.numel() * p.element_size() for p in u.parameters()) for u in units)
    return root + 2 * largest


def estimate(target: Target, mode: Mode, batch: int, cameras: int, gpus: int = 1, attention: str = "fused",
             model: nn.Module | None = None) -> Estimate:
    """Bytes per GPU of `mode` at `batch` samples per GPU; with `gpus` > 1, FSDP shards the state."""
    model = model if model is not None else build(target, cameras, mode)
    state = state_bytes(model, mode)
    acts = activations(model, mode, batch, target.mixed_precision, attention)
    shard = max(gpus, 1)
    return Estimate(mode, state["params"], state["trainable"], state["weights"] / shard, state["gradients"] / shard,
                    state["optimizer"] / shard, sum(acts.parts.values()),
                    fsdp_gather(model) if shard > 1 else 0.0, dict(acts.parts))


def largest_batch(target: Target, mode: Mode, cameras: int, limit_bytes: float, gpus: int = 1,
                  attention: str = "fused", model: nn.Module | None = None, cap: int = 4096) -> int:
    """The largest per-GPU batch whose estimate fits in `limit_bytes` (0 when not even one sample does)."""
    model = model if model is not None else build(target, cameras, mode)
    fits = lambda b: estimate(target, mode, b, cameras, gpus, attention, model).total <= limit_bytes
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= cap and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, cap + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def modes(ranks: list[int]) -> list[Mode]:
    """Full, expert-only and LoRA at each rank, each without then with gradient checkpointing."""
    kinds = [Mode("full"), Mode("expert"), *(Mode("lora", r) for r in ranks)]
    return [replace(m, checkpointing=ck) for m in kinds for ck in (False, True)]


# ----- measurement (the check of the formula) ----------------------------------------------------------


class _SavedCounter:
    """Unique storages saved for backward during a forward pass, by region; parameters' own storages are the
    weights, not activations. Only storages the graph still holds when the forward ends count (a node nobody
    differentiates, e.g. a checkpoint over frozen layers, drops what it packed)."""

    def __init__(self, skip: set[int], region: list[str]) -> None:
        self.skip, self.region = skip, region
        self.packed: dict[int, tuple[str, int, list[torch.Tensor]]] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in self.skip:  # held strongly until `count`, so no address is reused meanwhile
            self.packed.setdefault(key, (self.region[-1], t.untyped_storage().nbytes(), []))[2].append(t)
        return t

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        with torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t):
            yield

    def count(self) -> dict[str, int]:
        """Bytes by region of the storages still referenced by the graph (call once the forward is done)."""
        refs = {k: (r, n, [weakref.ref(t) for t in ts]) for k, (r, n, ts) in self.packed.items()}
        self.packed.clear()
        gc.collect()
        by_region: dict[str, int] = defaultdict(int)
        for region, nbytes, ts in refs.values():
            if any(ref() is not None for ref in ts):
                by_region[region] += nbytes
        return by_region


def measure_step(target: Target, mode: Mode, batch: int, cameras: int, attention: str = "fused",
                 seed: int = 0) -> dict[str, float]:
    """One real training step on the CPU: bytes saved for backward, and weights/gradients/AdamW state bytes.

    Saved bytes are the unique storages autograd holds when the forward ends (`saved_tensors_hooks`), which
    with checkpointing includes each checkpointed layer's inputs; with checkpointing, the largest that one
    layer saves without it is added (that layer's recomputation during backward).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(seed)
    model = build(target, cameras, mode, device="cpu")
    if mode.kind == "lora":
        _inject_lora(model, mode.rank)
    model.train()
    data = model.prepare_batch(_batch(model, batch, torch.device("cpu")))
    region = ["outside"]
    counter = _SavedCounter({p.untyped_storage().data_ptr() for p in model.parameters()}, region)
    handles = []
    for layer in [*model.backbone.vision.encoder.layers, *model.backbone.layers]:
        handles.append(layer.register_forward_pre_hook(lambda m, *_: region.append(f"layer{id(m)}") and None))
        handles.append(layer.register_forward_hook(lambda *_: region.pop() and None))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=target.mixed_precision == "bf16")

    def kernel() -> contextlib.AbstractContextManager:
        return sdpa_kernel(SDPBackend.MATH) if attention == "math" else contextlib.nullcontext()

    try:
        with counter.hooks(), autocast, kernel():
            loss = model.training_step(data)["loss"]
    finally:
        for h in handles:
            h.remove()
    by_region = counter.count()
    saved = sum(by_region.values())
    largest = max((v for k, v in by_region.items() if k != "outside"), default=0)
    if mode.checkpointing:
        saved += measure_step(target, replace(mode, checkpointing=False), batch, cameras, attention,
                              seed)["largest_layer"]
    with kernel():  # checkpointed layers are recomputed here: with the same kernel
        loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    optimizer.step()
    optim = sum(t.numel() * t.element_size() for st in optimizer.state.values() for k, t in st.items()
                if k in ("exp_avg", "exp_avg_sq"))
    return {"params": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in trainable),
            "weights": sum(p.numel() * p.element_size() for p in model.parameters()), "gradients": grads,
            "optimizer": optim, "activations": saved, "largest_layer": largest}


def _batch(model: nn.Module, batch: int, device: torch.device) -> dict[str, Any]:
    """A synthetic batch of the planner's data spec (uint8 images, vectors, masks, an instruction)."""
    from neuracore.ml.benchmarks.training import synthetic_batch
    from neuracore.ml.core import batch as keys

    data = synthetic_batch(model.model_init_description, batch, 1, device)
    return {**data, keys.LANGUAGE: ["pick up the red cube and place it in the bin"] * batch}


def _inject_lora(model: nn.Module, rank: int) -> None:
    """peft's LoRA adapters on the planner's targets (dropout 0), the `trainable` modules left training."""
    from peft import LoraConfig, inject_adapter_in_model

    keep = {n for n, p in model.named_parameters() if p.requires_grad}
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=sorted(model._lora_targets))
    inject_adapter_in_model(config, model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n or n in keep)


def measure_cuda(target: Target, mode: Mode, batch: int, cameras: int) -> float | None:
    """`torch.cuda.max_memory_allocated` of one real step (forward, backward, AdamW) on this GPU; None on OOM."""
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    model = optimizer = None
    try:
        model = build(target, cameras, mode, device=device)
        if mode.kind == "lora":
            _inject_lora(model, mode.rank)
            model.to(device)
        model.train()
        data = model.prepare_batch(_batch(model, batch, device))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
        for _ in range(2):  # the second step has the optimizer state allocated
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=target.mixed_precision == "bf16"):
                loss = model.training_step(data)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device))
    except torch.OutOfMemoryError:
        return None
    finally:
        del model, optimizer
        torch.cuda.empty_cache()


# ----- the command -------------------------------------------------------------------------------------


def _int_list(text: str, what: str, positive: bool = True) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}={text!r}: expected comma-separated integers") from None
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"{what}={text!r}: expected positive integers")
    return values


def _float_list(text: str, what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what}={text!r}: expected comma-separated numbers") from None
    if not values or any(not v > 0 or math.isinf(v) for v in values):
        raise ConfigError(f"{what}={text!r}: expected positive sizes in GB")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of `tools/benchmark.py memory`."""
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="algorithm=<pi0|pi05|pi0_tiny|...> (required) and Hydra-style overrides: "
                             "algorithm.<key>=<value>, output_prediction_horizon=50, mixed_precision=bf16|no")
    parser.add_argument("--gpu-gb", default="24,40,80,141", help="GPU memory sizes to plan for (GiB)")
    parser.add_argument("--batch-size", default=None, help="samples per GPU (default 32)")
    parser.add_argument("--cameras", default=None, help="RGB cameras (default 3)")
    parser.add_argument("--gpus", default="1", help="GPUs: with more than one, FSDP rows shard the state over them")
    parser.add_argument("--lora-ranks", default="16,32", help="LoRA ranks to plan for")
    parser.add_argument("--attention", choices=("auto", *ATTENTION), default="auto",
                        help="SDPA kernel of the joint attention: fused (flash/memory-efficient) or math "
                             "(softmax probabilities saved); auto = what this CUDA device dispatches, else fused")
    parser.add_argument("--measure", action="store_true",
                        help="CUDA only: run one real step per mode and print max_memory_allocated next to the estimate")


def cuda_attention(target: Target, batch: int, cameras: int) -> str:
    """The kernel CUDA dispatches the joint attention to (masked, grouped-query), asked of torch itself."""
    if not torch.cuda.is_available():
        return "fused"
    from torch.backends.cuda import SDPAParams, can_use_cudnn_attention, can_use_efficient_attention

    model = build(target, cameras, Mode("full"))
    s = model.backbone.sizes
    seq = cameras * (s.image_size // s.patch_size) ** 2 + model.max_token_len + model.horizon + int(
        hasattr(model, "state_proj"))
    dtype = torch.bfloat16 if target.mixed_precision == "bf16" else model.action_in_proj.weight.dtype
    q = torch.empty(1, s.num_heads, seq, s.head_dim, device="cuda", dtype=dtype, requires_grad=True)
    kv = torch.empty(1, s.num_kv_heads, seq, s.head_dim, device="cuda", dtype=dtype, requires_grad=True)
    mask = torch.ones(1, 1, seq, seq, device="cuda", dtype=torch.bool)
    params = SDPAParams(q, kv, kv, mask, 0.0, False, True)
    return "fused" if can_use_efficient_attention(params) or can_use_cudnn_attention(params) else "math"


def run(args: argparse.Namespace) -> int:
    """Print, per GPU size, whether each training mode fits, and a recommendation."""
    target, shapes = resolve(args.overrides)
    batch = shapes.get("batch_size") or _int_list(args.batch_size or "32", "--batch-size")[0]
    cameras = shapes.get("cameras") or (0 if args.cameras == "0" else _int_list(args.cameras or "3", "--cameras")[0])
    sizes = _float_list(args.gpu_gb, "--gpu-gb")
    gpus = _int_list(args.gpus, "--gpus")[0]
    ranks = _int_list(args.lora_ranks, "--lora-ranks")
    if args.measure and not torch.cuda.is_available():
        raise ConfigError("--measure: needs a CUDA device (this machine has none); the estimate alone is printed "
                          "without it")
    attention = cuda_attention(target, batch, cameras) if args.attention == "auto" else args.attention
    all_modes = modes(ranks)
    models = {m: build(target, cameras, m) for m in all_modes}
    full = models[all_modes[0]]
    s = full.backbone.sizes
    pi0 = hasattr(full, "state_proj")
    prefix = cameras * (s.image_size // s.patch_size) ** 2 + full.max_token_len
    w = "bfloat16" if full.action_in_proj.weight.element_size() == 2 else "float32"
    print(f"{target.shown}: {state_bytes(full, Mode('full'))['params'] / 1e9:.3f}B parameters; batch {batch}/GPU, "
          f"{cameras} camera(s) of {s.image_size}x{s.image_size}, {prefix} prefix + {target.horizon + int(pi0)} suffix "
          f"tokens; weights {w}, mixed_precision {target.mixed_precision}, {attention} attention")
    print(f"GiB per GPU; total = (weights + grads + AdamW + activations) x {1 + FRAGMENTATION:.2f} + "
          f"{CUDA_CONTEXT_GIB:.1f} (CUDA context, allocator fragmentation)")
    layouts = [1] + ([gpus] if gpus > 1 else [])
    head = f"{'mode':<22} {'trainable':>10} {'weights':>8} {'grads':>7} {'AdamW':>7} {'activ.':>7} {'total':>7}"
    head += "".join(f" {f'{g:g}GB':>6}" for g in sizes)
    if args.measure:
        head += f" {'measured':>9}"
    print(head)
    table: dict[tuple[Mode, int], Estimate] = {}
    for n in layouts:
        for mode in all_modes:
            e = estimate(target, mode, batch, cameras, n, attention, models[mode])
            table[(mode, n)] = e
            label = mode.label + (f" FSDPx{n}" if n > 1 else "")
            line = (f"{label:<22} {e.trainable / 1e9:>9.3f}B {e.weights / GIB:>8.1f} {e.gradients / GIB:>7.1f} "
                    f"{e.optimizer / GIB:>7.1f} {(e.activations + e.gather) / GIB:>7.1f} {e.total / GIB:>7.1f}")
            line += "".join(f" {'yes' if e.total <= g * GIB else 'no':>6}" for g in sizes)
            if args.measure and n == 1:
                peak = measure_cuda(target, mode, batch, cameras)
                line += f" {'OOM' if peak is None else f'{peak / GIB:.1f}':>9}"
            print(line, flush=True)
    for g in sizes:
        print(recommendation(target, all_modes, models, table, layouts, batch, cameras, g, attention))
    return 0


# Preference when several modes fit: closest to full fine-tuning first, no checkpointing (faster) first.
def _preference(mode: Mode) -> tuple[int, int, int]:
    return ({"full": 0, "lora": 1, "expert": 2}[mode.kind], -mode.rank, int(mode.checkpointing))


def recommendation(target: Target, all_modes: list[Mode], models: dict[Mode, nn.Module],
                   table: dict[tuple[Mode, int], Estimate], layouts: list[int], batch: int, cameras: int,
                   gib: float, attention: str) -> str:
    """One line for a GPU size: the mode to use at this batch, the largest batch it allows, the FSDP way out."""
    limit = gib * GIB
    for n in layouts:
        fitting = sorted((m for m in all_modes if table[(m, n)].total <= limit), key=_preference)
        if fitting:
            best = fitting[0]
            most = largest_batch(target, best, cameras, limit, n, attention, models[best])
            where = f" with FSDP over {n} GPUs" if n > 1 else ""
            line = f"{gib:g} GB: {best.label}{where} fits batch {batch} (largest batch {most})"
            if best.kind != "full" or best.checkpointing:
                full = next((m for m in fitting if m.kind == "full"), None)
                line += "" if full else f"; full fine-tuning does not fit at batch {batch}"
            return line
    full_ckpt = Mode("full", checkpointing=True)
    need = next((n for n in range(2, 65) if estimate(target, full_ckpt, batch, cameras, n, attention,
                                                      models[full_ckpt]).total <= limit), None)
    tail = f"full fine-tuning +ckpt needs FSDP over {need} GPUs" if need else "full fine-tuning does not fit"
    smallest = min(all_modes, key=lambda m: table[(m, 1)].total)
    most = largest_batch(target, smallest, cameras, limit, 1, attention, models[smallest])
    return (f"{gib:g} GB: nothing fits batch {batch}; {smallest.label} fits batch {most}" if most else
            f"{gib:g} GB: nothing fits even batch 1") + f"; {tail}"

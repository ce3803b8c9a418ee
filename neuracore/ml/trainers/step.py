"""The training step as one program: eager, or compiled whole (forward, backward, clip, AdamW, EMA).

`build_step` returns a callable `step(batch) -> (losses, grad_norm)` that the loop runs once per
micro-batch. Two implementations share that contract:

- `EagerStep`: accelerate's `accumulate` / `backward` / `clip_grad_norm_` and the optimizers' own
  `step()`. Used with `compile=false`, and under DDP/FSDP (accelerate compiles the model alone there).
- `CompiledStep`: one function — forward and loss, `torch.autograd.grad`, the global grad-norm clip
  as tensor ops, torch's functional AdamW (`foreach`, `capturable`, learning rate as a device tensor
  that the schedulers `fill_`), and the algorithm's `update_in_step` (e.g. its EMA) — compiled with
  `fullgraph=True`, so there is no graph break and no host sync between one batch and the next.
  On CUDA it is compiled with `mode="reduce-overhead"`, i.e. captured once as a CUDA graph and
  replayed. Gradient accumulation runs a second program (forward + gradients added into persistent
  buffers) for the micro-batches that do not step.

Shapes are static: the training loader drops the last partial batch of each epoch (see `data.py`),
so a compiled program sees one batch shape for the whole run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from neuracore.ml.core import batch as keys
from neuracore.ml.core.augment import PARAMS_KEY, ImageAugmenter, with_images
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.trainers.accelerator import core_model

logger = logging.getLogger(__name__)

Losses = dict[str, torch.Tensor]
StepFn = Callable[[dict[str, Any]], tuple[Losses, torch.Tensor | None]]

# The AdamW/Adam options the functional update reproduces exactly; anything else is refused.
_ADAM_TYPES = (torch.optim.AdamW, torch.optim.Adam)


class EagerStep:
    """One micro-batch through accelerate: forward, backward, and on the last micro-batch clip + step."""

    compiled = False

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, optimizers: list[Any],
                 max_grad_norm: float | None, augmenter: ImageAugmenter | None = None) -> None:
        self.accelerator = accelerator
        self.augmenter = augmenter
        self.model = model
        self.optimizers = optimizers
        self.core = core_model(accelerator, model)
        self.limit = max_grad_norm if max_grad_norm else float("inf")
        self.stepping = False  # true while the optimizers write the weights (a failure there leaves them half-updated)

    def __call__(self, batch: dict[str, Any]) -> tuple[Losses, torch.Tensor | None]:
        accelerator = self.accelerator
        self.stepping = False
        batch = self.core.prepare_batch(batch)
        if self.augmenter is not None:
            batch = self.augmenter(batch)
        grad_norm = None
        with accelerator.accumulate(self.model):
            losses = self.model(batch)
            accelerator.backward(losses["loss"])
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), self.limit)
            self.stepping = accelerator.sync_gradients  # accelerate's wrapper skips non-final micro-batches
            for optimizer in self.optimizers:
                optimizer.step()
            if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                with torch.no_grad():
                    self.core.update_in_step()
            self.stepping = False
            for optimizer in self.optimizers:
                optimizer.zero_grad(set_to_none=True)
        return losses, grad_norm


class CompiledStep:
    """The whole step as one `torch.compile(fullgraph=True)` program (CUDA-graphed on CUDA)."""

    compiled = True

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, optimizers: list[Any],
                 max_grad_norm: float | None, cuda_graphs: bool = True, backend: str = "inductor",
                 augmenter: ImageAugmenter | None = None) -> None:
        self.accelerator = accelerator
        self.augmenter = augmenter
        self.core = core_model(accelerator, model)
        self.optimizers = [getattr(o, "optimizer", o) for o in optimizers]  # accelerate's wrapper → torch's
        self.limit = float(max_grad_norm) if max_grad_norm else None
        self.accumulation = max(int(accelerator.gradient_accumulation_steps), 1)
        self.stepping = False
        device = accelerator.device
        self.device_type, self.bf16 = device.type, accelerator.mixed_precision == "bf16"
        self.core.prepare_training_state()
        self.groups = _functional_adam_groups(self.optimizers, device)
        for optimizer in self.optimizers:
            optimizer._opt_called = True  # the LR schedulers' "step() before optimizer.step()" check: it does step
        self.params = [p for group in self.groups for p in group["params"]]
        # Gradients are summed here across the micro-batches of one optimizer step (accumulation > 1 only).
        self.grad_sums = [torch.zeros_like(p) for p in self.params] if self.accumulation > 1 else None
        self.graphed = cuda_graphs and device.type == "cuda"
        options: dict[str, Any] = {"fullgraph": True, "backend": backend}
        if backend == "inductor":
            options["mode"] = "reduce-overhead" if self.graphed else None
        _enable_autograd_tracing()
        self._apply = torch.compile(self._apply_step, **options)
        self._accumulate = torch.compile(self._accumulate_step, **options) if self.grad_sums is not None else None

    # --- the compiled bodies -------------------------------------------------------------------
    def _loss_and_grads(self, batch: dict[str, Any]) -> tuple[Losses, list[torch.Tensor]]:
        if self.augmenter is not None and PARAMS_KEY in batch:  # parameters were drawn outside the graph
            params = batch[PARAMS_KEY]
            batch = {k: v for k, v in batch.items() if k != PARAMS_KEY}
            batch = with_images(batch, self.augmenter.apply(batch[keys.INPUTS][DataType.RGB_IMAGES.value], params))
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            # training_step, not the module call: prepare() patched forward with its own autocast wrapper.
            losses = self.core.training_step(batch)
        scaled = losses["loss"] / self.accumulation  # as accelerate's backward scales it
        grads = torch.autograd.grad(scaled, self.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params, strict=True)]
        return {k: v.detach().float() for k, v in losses.items()}, grads

    def _accumulate_step(self, batch: dict[str, Any]) -> Losses:
        losses, grads = self._loss_and_grads(batch)
        torch._foreach_add_(self.grad_sums, grads)
        return losses

    def _apply_step(self, batch: dict[str, Any]) -> tuple[Losses, torch.Tensor]:
        losses, grads = self._loss_and_grads(batch)
        if self.grad_sums is not None:
            torch._foreach_add_(self.grad_sums, grads)
            grads = [g.clone() for g in self.grad_sums]
            for g in self.grad_sums:
                g.zero_()
        grad_norm = clip_by_global_norm(grads, self.limit)
        with torch.no_grad():
            offset = 0
            for group in self.groups:
                n = len(group["params"])
                _functional_adam(group, grads[offset : offset + n])
                offset += n
            self.core.update_in_step()
        return losses, grad_norm

    def _owned(self, losses: Losses) -> Losses:
        # Only CUDA-graph outputs are overwritten by the next replay; other programs return fresh tensors.
        return {k: v.clone() for k, v in losses.items()} if self.graphed else losses

    # --- the call the loop makes ---------------------------------------------------------------
    def __call__(self, batch: dict[str, Any]) -> tuple[Losses, torch.Tensor | None]:
        accelerator = self.accelerator
        self.stepping = False
        batch = _tensors_only(self.core.prepare_batch(batch))
        images = batch[keys.INPUTS].get(DataType.RGB_IMAGES.value) if self.augmenter is not None else None
        if images is not None:
            # drawn eagerly from the global RNG (checkpointed, so resume stays exact), applied in the graph
            batch = {**batch, PARAMS_KEY: self.augmenter.sample(images)}
        with accelerator.accumulate(self.core):  # keeps accelerate's sync_gradients bookkeeping
            if not accelerator.sync_gradients:
                return self._owned(self._accumulate(batch)), None
            self.stepping = True
            losses, grad_norm = self._apply(batch)
            self.stepping = False
        return self._owned(losses), grad_norm.clone() if self.graphed else grad_norm


def _tensors_only(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without Python-object entries (prompt strings): dynamo would guard on their values and
    recompile every batch. `prepare_batch` has already turned what the model needs into tensors."""
    return {k: v for k, v in batch.items() if not (isinstance(v, (list, tuple)) and v and isinstance(v[0], str))}





def clip_by_global_norm(grads: list[torch.Tensor], limit: float | None) -> torch.Tensor:
    """Scale `grads` in place so their global L2 norm is at most `limit`; returns the norm before (no host sync)."""
    norms = torch._foreach_norm(grads, 2.0)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2.0)
    if limit is not None:
        # torch.nn.utils.clip_grad_norm_'s formula: a factor of at most 1, never a branch on the value.
        factor = torch.clamp(limit / (total + 1e-6), max=1.0)
        torch._foreach_mul_(grads, factor.to(grads[0].dtype) if grads else factor)
    return total


def _functional_adam_groups(optimizers: list[torch.optim.Optimizer], device: torch.device) -> list[dict[str, Any]]:
    """Per param group: its tensors and hyper-parameters, with the state torch's Adam would create.

    The group's learning rate becomes a device tensor (schedulers `fill_` it), so a schedule takes
    effect inside a compiled/graphed step without recompiling; the state is torch's own (checkpoints
    and resume are unchanged).
    """
    groups = []
    for optimizer in optimizers:
        if type(optimizer) not in _ADAM_TYPES:
            raise ConfigError(
                f"compile=true: the whole-step program runs AdamW/Adam; this algorithm configures "
                f"{type(optimizer).__name__} (use compile=false)"
            )
        decoupled = isinstance(optimizer, torch.optim.AdamW) or bool(optimizer.defaults.get("decoupled_weight_decay"))
        for group in optimizer.param_groups:
            for option in ("amsgrad", "maximize", "differentiable"):
                if group.get(option):
                    raise ConfigError(f"compile=true: {type(optimizer).__name__}({option}=True) is not supported; "
                                      "use compile=false")
            params = [p for p in group["params"] if p.requires_grad]
            for p in params:
                state = optimizer.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                else:  # resumed (or built by an eager step): capturable Adam keeps `step` on the device
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
            group["capturable"] = True
            beta1, beta2 = group["betas"]
            groups.append({
                "params": params,
                "group": group,
                "exp_avg": [optimizer.state[p]["exp_avg"] for p in params],
                "exp_avg_sq": [optimizer.state[p]["exp_avg_sq"] for p in params],
                "step": [optimizer.state[p]["step"] for p in params],
                "beta1": float(beta1), "beta2": float(beta2), "eps": float(group["eps"]),
                "weight_decay": float(group["weight_decay"]), "decoupled": decoupled,
            })
    return groups


def _functional_adam(entry: dict[str, Any], grads: list[torch.Tensor]) -> None:
    """torch's own (foreach, capturable) Adam/AdamW update of one param group."""
    from torch.optim.adam import adam

    if not entry["params"]:
        return
    adam(entry["params"], grads, entry["exp_avg"], entry["exp_avg_sq"], [], entry["step"],
         foreach=True, capturable=True, differentiable=False, fused=None, grad_scale=None, found_inf=None,
         has_complex=False, decoupled_weight_decay=entry["decoupled"], amsgrad=False,
         beta1=entry["beta1"], beta2=entry["beta2"], lr=entry["group"]["lr"],
         weight_decay=entry["weight_decay"], eps=entry["eps"], maximize=False)


def _enable_autograd_tracing() -> None:
    # Dynamo traces `torch.autograd.grad` into the graph (AOTAutograd then compiles forward and
    # backward together) only with this switch; without it the backward is a graph break.
    import torch._dynamo

    torch._dynamo.config.trace_autograd_ops = True


def whole_step_refusal(accelerator: Accelerator) -> str | None:
    """Why this launch cannot run the whole-step program (None when it can)."""
    kind = accelerator.distributed_type
    if accelerator.num_processes > 1 or kind not in (DistributedType.NO,):
        return (f"{kind.value} with {accelerator.num_processes} processes: the gradient all-reduce lives in "
                "DDP/FSDP's hooks, outside a compiled whole step")
    if accelerator.mixed_precision == "fp16":
        return "mixed_precision=fp16 needs accelerate's loss scaler (use bf16)"
    return None


def build_step(accelerator: Accelerator, model: torch.nn.Module, optimizers: list[Any], max_grad_norm: float | None,
               compile: bool, cuda_graphs: bool = True, augmenter: ImageAugmenter | None = None) -> EagerStep | CompiledStep:
    """The step the loop runs: compiled whole when `compile` and the launch allows it, else eager.

    Under DDP/FSDP, `compile=true` compiles the model (accelerate's `dynamo_backend`) and the step
    stays eager around it; the first log line of the loop says which program runs.
    """
    if compile:
        refusal = whole_step_refusal(accelerator)
        if refusal is None:
            logger.info("training step: one compiled program (forward, backward, clip, AdamW, EMA)%s",
                        "; CUDA graph replay" if cuda_graphs and accelerator.device.type == "cuda" else "")
            return CompiledStep(accelerator, model, optimizers, max_grad_norm, cuda_graphs=cuda_graphs,
                                augmenter=augmenter)
        logger.info("training step: model compiled, step eager (%s)", refusal)
    return EagerStep(accelerator, model, optimizers, max_grad_norm, augmenter=augmenter)

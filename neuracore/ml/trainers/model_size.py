"""Refuse a model configuration that cannot fit in memory, before allocating any of it.

The model is first built on PyTorch's `meta` device (shapes only, no storage) with the class's
`rebuild_overrides` (no pretrained weights are read), its parameter and buffer bytes are summed,
and the total is compared with the host memory available now (the model is always built on the
host first; `accelerator.prepare` moves it to the GPU afterwards). A configuration whose weights
alone exceed that is one line naming the algorithm, the hyper-parameters changed from its defaults
and both sizes, instead of an allocation that swaps the machine to a halt or dies with SIGKILL.
Optimizer state and activations are the memory planner's business (`tools/benchmark.py memory`)
and `batch_size=auto`'s.
"""

from __future__ import annotations

import logging
from typing import Any

import psutil
import torch

from neuracore.ml.core.errors import ConfigError, one_line
from neuracore.ml.core.model import NeuracoreModel
from neuracore.ml.core.model_init import ModelInitDescription

logger = logging.getLogger(__name__)


def meta_model_bytes(cls: type[NeuracoreModel], mid: ModelInitDescription, hyperparameters: dict[str, Any]) -> int | None:
    """Bytes of the model's parameters and buffers, from a build on the meta device; None if that build fails.

    A failed meta build (an algorithm that computes with real tensors in its constructor) is not an
    error here: the real build that follows reports whatever is wrong.
    """
    defaults = cls.hyperparameter_defaults()
    hyper = {**hyperparameters, **{k: v for k, v in cls.rebuild_overrides.items() if k in defaults}}
    try:
        with torch.device("meta"):
            model = cls(mid, **hyper)
    except Exception as exc:  # noqa: BLE001 - see docstring
        logger.debug("meta-device build of %s failed (%s); memory check skipped", cls.__name__, one_line(exc))
        return None
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def check_model_fits(
    cls: type[NeuracoreModel], mid: ModelInitDescription, hyperparameters: dict[str, Any],
    available_bytes: int | None = None,
) -> int | None:
    """Raise a one-line `ConfigError` when the model's weights exceed the host memory available.

    Returns the model's bytes (None when they could not be measured).
    """
    needed = meta_model_bytes(cls, mid, hyperparameters)
    if needed is None:
        return None
    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    if needed > available:
        defaults = cls.hyperparameter_defaults()
        changed = [f"algorithm.{k}={v!r}" for k, v in sorted(hyperparameters.items())
                   if k in defaults and v != defaults[k] and not isinstance(v, str)]
        name = cls.algorithm_name or cls.__name__
        raise ConfigError(
            f"algorithm={name}: its weights alone need {_gib(needed)} but this machine has {_gib(available)} "
            f"of memory available{' (' + ', '.join(changed[:6]) + ')' if changed else ''}; use smaller sizes"
        )
    return needed


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"

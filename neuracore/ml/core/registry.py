"""The one registry of algorithms: Hydra config groups, export, loading and tests all read it."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from neuracore.ml.core.errors import ConfigError

if TYPE_CHECKING:
    from neuracore.ml.core.model import NeuracoreModel

_REGISTRY: dict[str, type[NeuracoreModel]] = {}


def register_algorithm(name: str) -> Callable[[type[NeuracoreModel]], type[NeuracoreModel]]:
    """Class decorator registering an algorithm under `name` (the Hydra `algorithm=` value)."""

    def decorator(cls: type[NeuracoreModel]) -> type[NeuracoreModel]:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and _qualname(existing) != _qualname(cls):
            raise ConfigError(f"algorithm name {name!r} is already registered by {_qualname(existing)}")
        _REGISTRY[name] = cls
        cls.algorithm_name = name
        return cls

    return decorator


def _load_builtins() -> None:
    importlib.import_module("neuracore.ml.algorithms")


def registered_algorithms() -> dict[str, type[NeuracoreModel]]:
    """All registered algorithms by name (built-ins are imported on first call)."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def get_algorithm(name: str) -> type[NeuracoreModel]:
    """The class registered under `name`, or a one-line error listing the valid names."""
    algorithms = registered_algorithms()
    if name not in algorithms:
        raise ConfigError(f"algorithm={name!r}: unknown algorithm; valid: {', '.join(algorithms)}")
    return algorithms[name]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def class_path(cls: type) -> str:
    """Dotted import path of a class (what a yaml `_target_` names)."""
    return _qualname(cls)

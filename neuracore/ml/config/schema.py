"""Typed view of the Hydra config, validated at start-up with one-line errors naming the key."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import numbers
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from neuracore.ml.core.augment import parse_augmentation
from neuracore.ml.core.errors import ConfigError, one_line
from neuracore.ml.core.hyperparameters import check_hyperparameters
from neuracore.ml.core.model import NeuracoreModel
from neuracore.ml.core.registry import get_algorithm, register_algorithm, registered_algorithms
from neuracore.ml.core.relative_actions import parse_pairs

MIXED_PRECISION = ("no", "fp16", "bf16")
DEVICES = ("cpu", "cuda", "mps")
# report_to: tracker name -> (module it imports, what to pip install when it is missing)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow-skinny")}


@dataclass
class LoopOptions:
    """`training.*` keys."""

    max_grad_norm: float | None = 1.0
    validation_frequency: int | None = None
    log_images: bool = True
    cuda_graphs: bool = True  # with compile=true on CUDA: capture the compiled step once and replay it
    augmentation: Any = None  # `training.augmentation.*`: core/augment.py AugmentationOptions (parsed there)


@dataclass
class LoaderOptions:
    """`dataset.*` keys."""

    prefetch_factor: int = 2
    pin_memory: bool = True
    persistent_workers: bool = True
    default_language: str = "perform the task"
    statistics: str = "shared"  # several datasets: shared (pooled per item name) | per_robot (<robot>/<item> dims)
    stream: bool = False  # org/name[@rev] read from storage shard by shard (datasets/remote.py), not pulled whole
    cache_max_gb: float = 20.0  # bound of the local shard cache of a streamed / URL dataset
    cache_dir: str | None = None  # shard cache folder; null = $NEURACORE_HOME/cache/shards


@dataclass
class AutotuneOptions:
    """`autotune.*` keys (batch_size=auto)."""

    strategy: Literal["auto", "memory", "throughput"] = "auto"
    max_batch_size: int = 1024
    memory_margin: float = 0.10
    cpu_max_step_seconds: float = 2.0
    cpu_time_budget_s: float = 60.0


@dataclass
class MemoryMonitorOptions:
    """`memory_monitor.*` keys."""

    enabled: bool = True
    check_interval: int = 50
    gpu_fraction: float = 0.95
    host_fraction: float = 0.90


@dataclass
class EmaOptions:
    """`ema.*` keys: the EMA of the weights (trainers/ema.py)."""

    decay: float | str | None = "auto"  # auto: the algorithm's own (Diffusion Policy: on); null: off
    power: float | str = "auto"  # warm-up exponent; auto: the algorithm's, else 0.75
    inv_gamma: float = 1.0
    min_decay: float = 0.0


@dataclass
class LoraOptions:
    """`lora.*` keys: LoRA adapters through peft (trainers/peft.py); `rank` null or 0 is off."""

    rank: int | None = None
    alpha: float | None = None  # null = rank (scaling 1)
    dropout: float = 0.0
    target_modules: list[str] | str = "auto"  # auto: the algorithm's `lora_defaults()`
    trainable: list[str] | str = "auto"  # modules trained fully besides the adapters; auto: the algorithm's
    export: str = "merged"  # merged | adapter


LORA_EXPORTS = ("merged", "adapter")


@dataclass
class RelativeActionsOptions:
    """`relative_actions.*` keys: outputs learnt as deltas to an input (core/relative_actions.py)."""

    enabled: bool = False
    pairs: dict[str, str] | str = "auto"  # {OUTPUT_DATA_TYPE: INPUT_DATA_TYPE}; auto: JOINT_TARGET_POSITIONS -> JOINT_POSITIONS
    absolute_items: list[str] = field(default_factory=list)  # output items kept absolute (e.g. grippers)


@dataclass
class EvalOptions:
    """`eval.*` keys: closed-loop rollouts in a simulated task during training (trainers/rollouts.py)."""

    env: str | None = None  # null = off; demo | aloha_transfer_cube | aloha_insertion | pusht
    every_n_steps: int | None = None  # null = only once, at the end
    episodes: int = 10
    execute_steps: int = 8  # actions executed from each predicted chunk (as tools/evaluate.py --execute-steps)
    temporal_ensemble: float | None = None  # ACT's temporal ensembling coefficient (e.g. 0.01); replaces execute_steps
    seed: int = 0  # first evaluation episode; env seeds are 100000 + seed + i
    resize_mode: str = "letterbox"  # how rendered frames are resized to the model's image size (as on import)
    match_items: str = "name"  # env items to the model's: by name, or by position (data imported under other names)


def _eval_options(node: Any) -> EvalOptions:
    """`eval.*` with ranges; the env name is checked here, the env against the model at start-up."""
    options = _section("eval", node, EvalOptions)
    if options.env is not None:
        from neuracore.ml.sim.envs import env_names

        if options.env not in env_names():
            raise ConfigError(f"eval.env={options.env!r}: unknown{_close(options.env, env_names())}; "
                              f"valid: null (off), {', '.join(env_names())}")
    _positive("eval.every_n_steps", options.every_n_steps)
    _positive("eval.episodes", options.episodes)
    _at_most("eval.episodes", options.episodes, 10_000)
    _positive("eval.execute_steps", options.execute_steps)
    if options.temporal_ensemble is not None and options.temporal_ensemble < 0:
        raise ConfigError(f"eval.temporal_ensemble={options.temporal_ensemble}: must be >= 0 (or null: chunks)")
    if not 0 <= options.seed < 2**31:
        raise ConfigError(f"eval.seed={options.seed}: must be in [0, 2**31 - 1]")
    from neuracore.ml.datasets.images import RESIZE_MODES

    if options.resize_mode not in RESIZE_MODES:
        raise ConfigError(f"eval.resize_mode={options.resize_mode!r}: valid: {', '.join(RESIZE_MODES)}")
    from neuracore.ml.sim.evaluation import MATCH_ITEMS

    if options.match_items not in MATCH_ITEMS:
        raise ConfigError(f"eval.match_items={options.match_items!r}: valid: {', '.join(MATCH_ITEMS)}")
    return options


@dataclass
class AlgorithmChoice:
    """The resolved `algorithm` group: registered name, class and hyper-parameters."""

    name: str
    cls: type[NeuracoreModel]
    hyperparameters: dict[str, Any]


@dataclass
class TrainConfig:
    """The whole validated configuration."""

    algorithm: AlgorithmChoice
    dataset_name: str | list[str]  # one dataset, or several trained as a mixture (datasets/mixture.py)
    dataset_weights: list[float] | None = None  # sampling proportions of a mixture; null = by training windows
    input_data_types: list[str] | None = None
    output_data_types: list[str] | None = None
    input_robot_data_spec: dict[str, Any] | None = None
    output_robot_data_spec: dict[str, Any] | None = None
    seed: int = 42
    epochs: int = 100
    max_steps: int | None = None
    output_prediction_horizon: int = 100
    validation_split: float = 0.2
    logging_frequency: int = 50
    checkpoint_frequency: int = 1000
    keep_last_n_checkpoints: int = 5
    device: str | None = None
    batch_size: int | str = "auto"
    effective_batch_size: int | None = None
    mixed_precision: str | None = None
    gradient_accumulation_steps: int = 1
    compile: bool = False
    num_workers: int = 2
    training_name: str | None = None
    local_output_dir: str | None = None
    resume_checkpoint_path: str | None = None
    push_to_storage: str | None = None
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    tracker_project: str | None = None
    training: LoopOptions = field(default_factory=LoopOptions)
    dataset: LoaderOptions = field(default_factory=LoaderOptions)
    autotune: AutotuneOptions = field(default_factory=AutotuneOptions)
    memory_monitor: MemoryMonitorOptions = field(default_factory=MemoryMonitorOptions)
    ema: EmaOptions = field(default_factory=EmaOptions)
    lora: LoraOptions = field(default_factory=LoraOptions)
    relative_actions: RelativeActionsOptions = field(default_factory=RelativeActionsOptions)
    eval: EvalOptions = field(default_factory=EvalOptions)
    raw: dict[str, Any] = field(default_factory=dict)  # the resolved config as plain data


def _close(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, 1)
    return f" (did you mean {match[0]}?)" if match else ""


def _check(key: str, value: Any, annotation: Any) -> Any:
    """Coerce/validate `value` against a simple type annotation, or raise a one-line error."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}={value!r}: expected {_type_name(annotation)}")
    if annotation is Any:
        return value
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}={value!r}: valid: {', '.join(map(str, args))}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if annotation is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if annotation is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}={value!r}: expected a finite number")
            return float(value)
        raise ConfigError(f"{key}={value!r}: expected a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r}: expected a string")
    if origin is list or annotation is list:
        if isinstance(value, (list, tuple)):
            inner = args[0] if args else Any
            return [_check(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
        raise ConfigError(f"{key}={value!r}: expected a list like [a, b]")
    if origin is dict or annotation is dict:
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{key}={value!r}: expected a mapping like {{a: 1}}")
    return value


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "").replace("NoneType", "null")


def _positive(key: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise ConfigError(f"{key}={value}: must be >= {minimum}")


def _at_most(key: str, value: int | None, maximum: int) -> None:
    if value is not None and value > maximum:
        raise ConfigError(f"{key}={value}: must be <= {maximum}")


def resolve_algorithm(node: Any) -> AlgorithmChoice:
    """Find the algorithm class of the `algorithm` group and check its hyper-parameters."""
    if not node:
        names = ", ".join(registered_algorithms())
        raise ConfigError(f"algorithm: required; add algorithm=<name> with one of: {names}")
    if not isinstance(node, dict) or "_target_" not in node:
        raise ConfigError("algorithm: expected a mapping with _target_ and hyper-parameters (see config/algorithm/)")
    target = str(node["_target_"])
    cls = _class_for_target(target)
    name = next((n for n, c in registered_algorithms().items() if c is cls), None)
    if name is None:  # a user's own algorithm named by `_target_`: register it under its class name
        name = cls.algorithm_name or cls.__name__.lower()
        register_algorithm(name)(cls)
    valid = cls.hyperparameter_defaults()
    annotations = typing.get_type_hints(cls.__init__)
    hyper: dict[str, Any] = {}
    for key, value in node.items():
        if key == "_target_":
            continue
        if key not in valid:
            raise ConfigError(
                f"algorithm.{key}: unknown hyper-parameter for {name}{_close(key, list(valid))}; "
                f"valid: {', '.join(sorted(valid))}"
            )
        hyper[key] = _check(f"algorithm.{key}", value, annotations.get(key, Any))
    check_hyperparameters(cls, hyper)
    return AlgorithmChoice(name=name, cls=cls, hyperparameters=hyper)


def _class_for_target(target: str) -> type[NeuracoreModel]:
    """Import the yaml's `_target_` (training configs are the user's own, so importing is intended)."""
    module_name, _, attr = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"algorithm._target_={target!r}: cannot import ({one_line(exc)})") from None
    if not (isinstance(cls, type) and issubclass(cls, NeuracoreModel)):
        raise ConfigError(f"algorithm._target_={target!r}: not a subclass of neuracore.ml.core.NeuracoreModel")
    return cls


def _section(key: str, node: Any, cls: type) -> Any:
    node = dict(node or {})
    names = [f.name for f in fields(cls)]
    hints = typing.get_type_hints(cls)
    for k in node:
        if k not in names:
            raise ConfigError(f"{key}.{k}: unknown key{_close(k, names)}; valid: {', '.join(names)}")
    return cls(**{k: _check(f"{key}.{k}", v, hints[k]) for k, v in node.items()})


def _report_to(value: Any) -> list[str]:
    """`report_to`: known tracker names, each installed; a single name or `none` is accepted too."""
    if value is None or value == "none":
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"report_to={value!r}: expected a list like [tensorboard, wandb, mlflow] ([] for none)")
    names: list[str] = []
    for name in value:
        if not isinstance(name, str) or name not in TRACKERS:
            hint = _close(name, list(TRACKERS)) if isinstance(name, str) else ""
            raise ConfigError(f"report_to: unknown tracker {name!r}{hint}; valid: {', '.join(TRACKERS)}")
        if name not in names:
            names.append(name)
    for name in names:
        module, package = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"report_to: {name} is not installed; pip install {package} "
                              "(or pip install 'neuracore[trackers]')")
    return names


def _lora_options(node: Any) -> LoraOptions:
    """`lora.*` with ranges: rank >= 0, alpha > 0, dropout in [0, 1), patterns as lists or auto."""
    lora = _section("lora", node, LoraOptions)
    _positive("lora.rank", lora.rank, 0)
    if lora.alpha is not None and lora.alpha <= 0:
        raise ConfigError(f"lora.alpha={lora.alpha}: must be > 0 (or null: the rank)")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"lora.dropout={lora.dropout}: must be in [0, 1)")
    for key in ("target_modules", "trainable"):
        value = getattr(lora, key)
        if isinstance(value, str) and value != "auto":
            raise ConfigError(f"lora.{key}={value!r}: expected auto or a list of module-name patterns like [q_proj, v_proj]")
    if lora.export not in LORA_EXPORTS:
        raise ConfigError(f"lora.export={lora.export!r}: valid: {', '.join(LORA_EXPORTS)}")
    return lora


def validate_config(cfg: dict[str, Any]) -> TrainConfig:
    """Check every key and value of a resolved config (plain dict) and return a `TrainConfig`."""
    cfg = {k: v for k, v in cfg.items() if k != "hydra"}
    top = {f.name: f for f in fields(TrainConfig)}
    settable = [k for k in top if k not in ("raw",)]
    for key in cfg:
        if key not in settable:
            raise ConfigError(f"{key}: unknown config key{_close(key, settable)}")
    hints = typing.get_type_hints(TrainConfig)
    values: dict[str, Any] = {}
    for key, value in cfg.items():
        if key in ("algorithm", "training", "dataset", "autotune", "memory_monitor", "ema", "lora", "relative_actions",
                   "eval"):
            continue
        if key == "batch_size":
            if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                values[key] = value
                continue
            raise ConfigError(f"batch_size={value!r}: expected a positive integer or auto")
        if key == "report_to":
            values[key] = _report_to(value)
            continue
        values[key] = _check(key, value, hints[key])
    if isinstance(values.get("dataset_name"), list) and len(values["dataset_name"]) == 1:
        values["dataset_name"] = values["dataset_name"][0]  # a list of one is that dataset, exactly as before
    if not values.get("dataset_name"):
        from neuracore.ml.datasets.format import available_datasets

        names = available_datasets() + ([] if "demo" in available_datasets() else ["demo"])
        raise ConfigError(f"dataset_name: required; available: {', '.join(names)}")
    for key in ("epochs", "logging_frequency", "checkpoint_frequency", "keep_last_n_checkpoints",
                "gradient_accumulation_steps", "output_prediction_horizon"):
        _positive(key, values.get(key))
    _positive("max_steps", values.get("max_steps"))
    _positive("effective_batch_size", values.get("effective_batch_size"))
    _positive("num_workers", values.get("num_workers"), 0)
    _at_most("num_workers", values.get("num_workers"), 512)
    seed = values.get("seed", 0)
    if not 0 <= seed < 2**32:
        raise ConfigError(f"seed={seed}: must be in [0, 2**32 - 1] (what numpy and torch seeding accept)")
    _at_most("output_prediction_horizon", values.get("output_prediction_horizon"), 100_000)
    _at_most("gradient_accumulation_steps", values.get("gradient_accumulation_steps"), 1 << 20)
    if isinstance(values.get("batch_size"), int):
        _at_most("batch_size", values["batch_size"], 1 << 20)
    _at_most("effective_batch_size", values.get("effective_batch_size"), 1 << 24)
    split = values.get("validation_split", 0.2)
    if not 0.0 <= split < 1.0:
        raise ConfigError(f"validation_split={split}: must be in [0, 1)")
    mp = values.get("mixed_precision")
    if mp is not None and mp not in MIXED_PRECISION:
        raise ConfigError(f"mixed_precision={mp!r}: valid: null, {', '.join(MIXED_PRECISION)}")
    device = values.get("device")
    if device is not None and device.split(":")[0] not in DEVICES:
        raise ConfigError(f"device={device!r}: valid: null (auto), {', '.join(DEVICES)}")
    for key in ("input_data_types", "output_data_types"):
        from neuracore.ml.core.data_types import DataType

        for dt in values.get(key) or []:
            DataType.parse(dt, key)
    training = _section("training", cfg.get("training"), LoopOptions)
    training.augmentation = parse_augmentation(training.augmentation)
    _positive("training.validation_frequency", training.validation_frequency)
    if training.max_grad_norm is not None and training.max_grad_norm <= 0:
        raise ConfigError(f"training.max_grad_norm={training.max_grad_norm}: must be > 0 (or null: no clipping)")
    loader = _section("dataset", cfg.get("dataset"), LoaderOptions)
    _positive("dataset.prefetch_factor", loader.prefetch_factor)
    if not loader.cache_max_gb > 0:
        raise ConfigError(f"dataset.cache_max_gb={loader.cache_max_gb}: must be > 0 (GB of local shard cache)")
    from neuracore.ml.datasets.mixture import STATISTICS_MODES, check_names_and_weights, dataset_names

    if loader.statistics not in STATISTICS_MODES:
        raise ConfigError(f"dataset.statistics={loader.statistics!r}: valid: {', '.join(STATISTICS_MODES)}")
    check_names_and_weights(dataset_names(values["dataset_name"]), values.get("dataset_weights"))
    autotune = _section("autotune", cfg.get("autotune"), AutotuneOptions)
    _positive("autotune.max_batch_size", autotune.max_batch_size)
    if not 0.0 <= autotune.memory_margin < 1.0:
        raise ConfigError(f"autotune.memory_margin={autotune.memory_margin}: must be in [0, 1)")
    for key in ("cpu_max_step_seconds", "cpu_time_budget_s"):
        if getattr(autotune, key) <= 0:
            raise ConfigError(f"autotune.{key}={getattr(autotune, key)}: must be > 0")
    monitor = _section("memory_monitor", cfg.get("memory_monitor"), MemoryMonitorOptions)
    _positive("memory_monitor.check_interval", monitor.check_interval)
    for key in ("gpu_fraction", "host_fraction"):
        if not 0.0 < getattr(monitor, key) <= 1.0:
            raise ConfigError(f"memory_monitor.{key}={getattr(monitor, key)}: must be in (0, 1]")
    ema = _section("ema", cfg.get("ema"), EmaOptions)
    if not (ema.decay in (None, "auto") or (not isinstance(ema.decay, str) and 0.0 < ema.decay < 1.0)):
        raise ConfigError(f"ema.decay={ema.decay!r}: expected a number in (0, 1), auto (the algorithm's default) "
                          "or null (off)")
    if not (ema.power == "auto" or (not isinstance(ema.power, str) and ema.power > 0)):
        raise ConfigError(f"ema.power={ema.power!r}: expected a positive number or auto")
    if ema.inv_gamma <= 0 or not 0.0 <= ema.min_decay < 1.0:
        raise ConfigError(f"ema.inv_gamma={ema.inv_gamma}, ema.min_decay={ema.min_decay}: need inv_gamma > 0 and "
                          "min_decay in [0, 1)")
    lora = _lora_options(cfg.get("lora"))
    relative = _section("relative_actions", cfg.get("relative_actions"), RelativeActionsOptions)
    parse_pairs(relative.pairs)  # names and types now; items against the dataset in preflight and build_data
    config = TrainConfig(
        algorithm=resolve_algorithm(cfg.get("algorithm")),
        ema=ema,
        lora=lora,
        relative_actions=relative,
        eval=_eval_options(cfg.get("eval")),
        training=training,
        dataset=loader,
        autotune=autotune,
        memory_monitor=monitor,
        raw=cfg,
        **values,
    )
    from neuracore.ml.datasets.remote import check_url, is_url, wants_remote
    from neuracore.ml.storage.names import looks_like_repo
    from neuracore.ml.utils.paths import check_name

    names = dataset_names(config.dataset_name)
    streamed = [n for n in names if wants_remote(n, config.dataset)] if len(names) > 1 else []
    if streamed:
        raise ConfigError(f"dataset_name: {streamed[0]!r} would be read shard by shard from storage, which takes one "
                          "dataset per run for now; train on it alone, or pull it first (tools/dataset.py pull, or "
                          "org/name without dataset.stream=true) to mix it with others")
    for name in names:
        if is_url(name):  # s3://, gs://, hf://, file://: read shard by shard (datasets/remote.py)
            check_url(name)
        elif not looks_like_repo(name):  # org/name[@revision] is pulled from storage at start
            check_name(name, "dataset_name")
    if config.training_name is not None:
        check_name(config.training_name, "training_name")
    if config.push_to_storage is not None and config.lora.rank and config.lora.export == "adapter":
        raise ConfigError("push_to_storage: lora.export=adapter names base files on this machine; push a merged "
                          "export (lora.export=merged, the default)")
    if config.push_to_storage is not None:
        from neuracore.ml.storage.names import parse_repo

        try:
            parse_repo(config.push_to_storage, allow_revision=False)
        except ConfigError as exc:
            raise ConfigError(f"push_to_storage: {exc}") from None
    if config.resume_checkpoint_path not in (None, "auto") and not Path(config.resume_checkpoint_path).expanduser().is_dir():
        raise ConfigError(
            f"resume_checkpoint_path={config.resume_checkpoint_path!r}: not a checkpoint folder; "
            "give <run>/checkpoints/checkpoint_<step> or auto"
        )
    if config.resume_checkpoint_path == "auto" and not (config.training_name or config.local_output_dir):
        raise ConfigError("resume_checkpoint_path=auto: also give training_name or local_output_dir (the run to resume)")
    return config


__all__ = ["TrainConfig", "get_algorithm", "resolve_algorithm", "validate_config"]

"""One place that builds the Accelerator and decides the run folder (rank 0 decides, all agree)."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast_object_list

from neuracore.ml.config.schema import TrainConfig
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.trainers.tracking import build_trackers
from neuracore.ml.utils.paths import check_name, runs_root

logger = logging.getLogger(__name__)


def has_accelerator() -> bool:
    """True when a CUDA, MPS or XPU device is usable."""
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(xpu and xpu.is_available())


def _use_cpu(config: TrainConfig) -> bool:
    # Without a GPU, accelerate must be told `cpu=True`, or `--multi_gpu` launches silently become
    # independent single-process runs racing on the same files instead of one gloo group.
    if config.device == "cpu" or not has_accelerator():
        if config.device and config.device.split(":")[0] in ("cuda", "mps"):
            raise ConfigError(f"device={config.device!r}: no such device on this machine; use device=cpu or null")
        return True
    return False


def start_distributed(config: TrainConfig) -> PartialState:
    """Initialise the process group (gloo on CPU) before anything is written."""
    use_cpu = _use_cpu(config)
    if use_cpu:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    if config.mixed_precision == "fp16" and use_cpu:
        raise ConfigError("mixed_precision=fp16: needs a GPU; use bf16 or no on CPU")
    return PartialState(cpu=use_cpu)


def choose_run_dir(config: TrainConfig, state: PartialState, job_num: int | None = None) -> Path:
    """The run folder, chosen by rank 0 (a single `now`) and broadcast so every rank agrees."""
    chosen = [None]
    if state.is_main_process:
        if config.local_output_dir:
            run_dir = Path(config.local_output_dir).expanduser()
        elif config.resume_checkpoint_path not in (None, "auto"):
            run_dir = Path(config.resume_checkpoint_path).expanduser().resolve().parent.parent
        else:
            name = config.training_name
            if name is None:
                stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
                data = config.dataset_name if isinstance(config.dataset_name, str) else "+".join(config.dataset_name)
                data = re.sub(r"[/:@]+", "_", data).strip("_")  # org/name@rev, s3://bucket/ds: one folder name
                name = f"{config.algorithm.name}_{data}_{stamp}"
                if job_num is not None:
                    name += f"_job{job_num}"
                base, n = name, 1
                while (runs_root() / name).exists():
                    n += 1
                    name = f"{base}-{n}"
            run_dir = runs_root() / check_name(name, "training_name")
        chosen = [str(run_dir.resolve())]
    if state.num_processes > 1:
        broadcast_object_list(chosen, from_process=0)
    return Path(chosen[0])


def accelerator_defaults_bf16(config: TrainConfig) -> bool:
    """True when neither the config nor the accelerate launch chose a precision and the GPU runs bf16."""
    if config.mixed_precision is not None or os.environ.get("ACCELERATE_MIXED_PRECISION"):
        return False
    return not _use_cpu(config) and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def apply_gpu_defaults() -> None:
    """TF32 matmuls/convolutions and cuDNN autotuning: what every peer sets on Ampere and later."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # static shapes (full batches): the tuned kernels are reused


def make_accelerator(config: TrainConfig, run_dir: Path) -> Accelerator:
    """The Accelerator: devices, DDP, mixed precision, accumulation and the `report_to` trackers of `run_dir`."""
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir), automatic_checkpoint_naming=False)
    if not _use_cpu(config):
        apply_gpu_defaults()
    accelerator = Accelerator(
        cpu=_use_cpu(config),
        mixed_precision="bf16" if accelerator_defaults_bf16(config) else config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=build_trackers(config, run_dir),  # started by tracking.start_tracking (rank 0)
        project_config=project,
        step_scheduler_with_optimizer=False,
        # One process: trainers/step.py compiles the whole step. Several: accelerate compiles the model in
        # prepare() (DDP's all-reduce hooks stay outside the graph). None leaves ACCELERATE_DYNAMO_BACKEND in charge.
        dynamo_backend="inductor" if config.compile and PartialState().num_processes > 1 else None,
    )
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    if wants_fsdp and accelerator.distributed_type != DistributedType.FSDP:
        if accelerator.distributed_type != DistributedType.MULTI_CPU:
            raise ConfigError(
                f"accelerate config requests FSDP, but this is not a distributed launch "
                f"({accelerator.distributed_type.value}); start it with `accelerate launch --config_file ...` or torchrun"
            )
        _enable_cpu_fsdp(accelerator)
    return accelerator


def _enable_cpu_fsdp(accelerator: Accelerator) -> None:
    """Turn a multi-process CPU (gloo) launch into accelerate's FSDP2 path.

    accelerate 1.15 enables FSDP only for GPU-like devices and otherwise silently runs DDP, yet
    PyTorch's FSDP2 (`fully_shard`) runs on CPU ranks too. The plugin is built from the launch
    config exactly as on GPUs, and the shared state is switched to FSDP so that prepare(),
    save_state/load_state and get_state_dict take their FSDP code paths.
    """
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables `accelerate launch` sets
    if plugin.fsdp_version != 2:
        raise ConfigError(f"fsdp_version={plugin.fsdp_version}: on CPU only FSDP2 runs; set fsdp_version: 2")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # AcceleratorState() re-reads it
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def core_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The algorithm itself under accelerate's wrappers (DDP, FSDP, torch.compile): the object whose
    hooks (EMA, checkpoint state, inference weights, schedulers) and plain state dict the trainer uses."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide singletons so the next `--multirun` job starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()

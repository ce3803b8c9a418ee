"""Training-step throughput: `tools/benchmark.py train algorithm=<name> [key=value ...]` (samples/s, fp32 and bf16).

Builds the algorithm at its default config (plus `algorithm.<key>=value` overrides) for synthetic
batches of real shapes — by default one 224x224 camera and 14-dim state/action — and times full
training steps after warm-up, through the step programs training runs (`trainers/step.py`):
`eager`, `compiled` (forward, backward, clip, AdamW and EMA as one compiled graph) and, on CUDA,
`graphed` (that program captured as a CUDA graph and replayed). The first steps of a compiled mode
(compile + capture) are reported apart. CNNMLP is measured in the same process as the baseline;
with `--peers`, LeRobot's own ACT and Diffusion policies too (`benchmarks/peers.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Self

import torch

from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.model import build_model
from neuracore.ml.core.model_init import FeatureSpec, ModelInitDescription
from neuracore.ml.core.registry import get_algorithm

BASELINE = "cnnmlp"


HORIZON_DEFAULT = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of `tools/benchmark.py train`."""
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="algorithm=<name> (required), algorithm.<hyper-parameter>=<value>, and shape keys "
                             "such as batch_size=256 (same as the options)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--state-dim", type=int, default=14)
    parser.add_argument("--action-dim", type=int, default=14)
    parser.add_argument("--horizon", type=int, default=HORIZON_DEFAULT,
                        help="output_prediction_horizon (default 100, or the yaml's for a configuration such as pi0_tiny)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu | cuda | mps (default: best available)")
    parser.add_argument("--no-baseline", action="store_true", help=f"skip the {BASELINE} comparison")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="feed the steps from this materialised dataset through the real loader (workers, pinned "
                             "batches, device prefetch, GPU JPEG decode) and report the data wait; default: one synthetic batch")
    parser.add_argument("--workers", type=int, default=4, help="with --dataset: DataLoader workers")
    parser.add_argument("--peers", action="store_true",
                        help="also time LeRobot's own policy of the same kind (act, diffusion_policy) in this process")
    parser.add_argument("--modes", default="eager",
                        help="comma-separated step programs: eager, compiled, graphed (CUDA only), or all")
    parser.add_argument("--compile", action="store_true", help="same as --modes eager,compiled")
    parser.add_argument("--precision", choices=("both", "fp32", "bf16"), default="both",
                        help="fp32, bf16 autocast, or both (bf16 only where the device supports it)")


_SHAPE_KEYS = ("batch_size", "image_size", "cameras", "state_dim", "action_dim", "horizon", "steps", "warmup")


def _parse_overrides(items: list[str], args: argparse.Namespace | None = None) -> tuple[str, dict[str, Any]]:
    """`algorithm=<name>`, `algorithm.<key>=<value>` and shape keys (`batch_size=256`) → (name, hyper)."""
    import yaml

    name, hyper = None, {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{item!r}: expected key=value (e.g. algorithm=act or algorithm.hidden_dim=256)")
        parsed = yaml.safe_load(value)
        if key == "algorithm":
            name = str(parsed)
        elif key.startswith("algorithm."):
            hyper[key.split(".", 1)[1]] = parsed
        elif key.startswith("lora.") and args is not None:  # LoRA adapters, as `lora.*` in training
            args.lora = {**getattr(args, "lora", {}), key.split(".", 1)[1]: parsed}
        elif key in _SHAPE_KEYS and args is not None:
            if not isinstance(parsed, int) or parsed < 0:
                raise ConfigError(f"{key}={value!r}: expected a non-negative integer")
            setattr(args, key, parsed)
        else:
            raise ConfigError(
                f"{key}: unknown benchmark key; valid: algorithm, algorithm.<hyper-parameter>, lora.<key>, "
                f"{', '.join(_SHAPE_KEYS)}"
            )
    if name is None:
        raise ConfigError("algorithm: missing; e.g. `tools/benchmark.py train algorithm=act`")
    return name, hyper


def config_variant(name: str) -> tuple[str, dict[str, Any], int]:
    """A yaml of `config/algorithm/` that is not a registered name (e.g. `pi0_tiny`) → the registered
    algorithm it configures, its hyper-parameters and its horizon, composed as training would."""
    from neuracore.ml.config.preflight import compose_config
    from neuracore.ml.config.schema import resolve_algorithm
    from neuracore.ml.core.registry import registered_algorithms
    from neuracore.ml.train import CONFIG_DIR

    folder = Path(CONFIG_DIR) / "algorithm"
    if not (folder / f"{name}.yaml").is_file():
        known = sorted({*registered_algorithms(), *(p.stem for p in folder.glob("*.yaml"))})
        raise ConfigError(f"algorithm={name!r}: unknown algorithm; valid: {', '.join(known)}")
    cfg = compose_config([f"algorithm={name}"], CONFIG_DIR)
    choice = resolve_algorithm(cfg["algorithm"])
    return choice.name, dict(choice.hyperparameters), int(cfg["output_prediction_horizon"])


def model_init(args: argparse.Namespace) -> ModelInitDescription:
    """A data spec of the benchmark's shapes with unit statistics."""
    def vector(dt: DataType, dim: int) -> FeatureSpec:
        return FeatureSpec(dt, [f"j{i}" for i in range(dim)], [1],
                           {"mean": [0.0] * dim, "std": [1.0] * dim, "min": [-1.0] * dim, "max": [1.0] * dim})

    inputs = {DataType.JOINT_POSITIONS: vector(DataType.JOINT_POSITIONS, args.state_dim)}
    if args.cameras:
        inputs[DataType.RGB_IMAGES] = FeatureSpec(
            DataType.RGB_IMAGES, [f"cam{i}" for i in range(args.cameras)], [3, args.image_size, args.image_size]
        )
    outputs = {DataType.JOINT_TARGET_POSITIONS: vector(DataType.JOINT_TARGET_POSITIONS, args.action_dim)}
    return ModelInitDescription(inputs, outputs, args.horizon)


def synthetic_batch(mid: ModelInitDescription, batch: int, history: int, device: torch.device) -> dict[str, Any]:
    """A batch of the real layout: uint8 images, float vectors, masks, is_pad."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {keys.INPUTS: {}, keys.INPUT_MASKS: {}, keys.OUTPUTS: {}, keys.OUTPUT_MASKS: {}}
    for dt, f in mid.inputs.items():
        if dt.modality == Modality.IMAGE:
            out[keys.INPUTS][dt.value] = torch.randint(0, 256, (batch, history, len(f.items), *f.shape), generator=g,
                                                       dtype=torch.uint8)
            out[keys.INPUT_MASKS][dt.value] = torch.ones(batch, len(f.items))
        else:
            out[keys.INPUTS][dt.value] = torch.randn(batch, history, f.dim, generator=g)
            out[keys.INPUT_MASKS][dt.value] = torch.ones(batch, f.dim)
    for dt, f in mid.outputs.items():
        out[keys.OUTPUTS][dt.value] = torch.randn(batch, mid.output_prediction_horizon, f.dim, generator=g)
        out[keys.OUTPUT_MASKS][dt.value] = torch.ones(batch, f.dim)
    out[keys.IS_PAD] = torch.zeros(batch, mid.output_prediction_horizon, dtype=torch.bool)
    out[keys.IS_PAD][:, -mid.output_prediction_horizon // 10 :] = True
    return _to(out, device)


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


MODES = ("eager", "compiled", "graphed")


def measure(name: str, hyper: dict[str, Any], args: argparse.Namespace, device: torch.device,
            dtype: torch.dtype | None, mode: str = "eager") -> dict[str, float]:
    """Median samples/s, peak memory and compile/capture seconds of full training steps of `name`."""
    from accelerate import Accelerator

    from neuracore.ml.trainers.accelerator import apply_gpu_defaults, reset_accelerate_state
    from neuracore.ml.trainers.step import CompiledStep, EagerStep

    cls = get_algorithm(name)
    history = max(int(getattr(cls, "observation_history", 1)), 1)
    torch.manual_seed(0)
    params = {"use_pretrained_weights": False, **hyper} if "use_pretrained_weights" in cls.hyperparameter_defaults() \
        else dict(hyper)
    loader = _real_loader(name, cls, params, args, device) if args.dataset else None
    mid = loader.dataset_model_init if loader is not None else model_init(args)
    reset_accelerate_state()
    if device.type == "cuda":
        apply_gpu_defaults()
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16" if dtype is not None else "no")
    model = build_model(cls, mid, params)
    if getattr(args, "lora", None):
        _with_lora(model, args.lora)
    model, *optimizers = accelerator.prepare(model, *model.configure_optimizers())
    if mode == "eager":
        step = EagerStep(accelerator, model, optimizers, 1.0)
    else:
        torch._dynamo.reset()
        step = CompiledStep(accelerator, model, optimizers, 1.0, cuda_graphs=mode == "graphed")
    batches = loader.batches(accelerator.device) if loader is not None else \
        _repeat(synthetic_batch(mid, args.batch_size, history, accelerator.device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss = _PeakRss() if device.type != "cuda" else contextlib.nullcontext()
    times: list[float] = []
    waits: list[float] = []
    with rss:
        _steps(args, step, batches, accelerator.device, times, waits)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else rss.peak / 2**30
    timed = times[args.warmup:]
    median = statistics.median(timed)
    core = accelerator.unwrap_model(model)
    reset_accelerate_state()
    return {"params_m": sum(p.numel() for p in core.parameters()) / 1e6,
            "trainable_m": sum(p.numel() for p in core.parameters() if p.requires_grad) / 1e6, "step_ms": median * 1e3,
            "samples_per_s": args.batch_size / median, "peak_gib": peak,
            # what the first steps cost beyond steady-state steps: compile + CUDA-graph capture
            "warmup_overhead_s": max(sum(times[: args.warmup]) - args.warmup * median, 0.0),
            # time waiting for the next batch, as a fraction of the whole step (real loader only)
            "data_wait": sum(waits[args.warmup:]) / max(sum(timed), 1e-9) if loader is not None else None}


def _with_lora(model: torch.nn.Module, keys: dict[str, Any]) -> None:
    """Inject LoRA adapters as training's `lora` group would (the same validation and defaults)."""
    from neuracore.ml.config.schema import _lora_options
    from neuracore.ml.trainers.peft import apply_lora, resolve_lora

    settings = resolve_lora(_lora_options(keys), model)
    if settings is not None:
        apply_lora(model, settings)


def _repeat(batch: dict[str, Any]):
    while True:
        yield batch


class _RealLoader:
    """The training loader of a materialised dataset, as `train.py` builds it, cycled over epochs."""

    def __init__(self, loader: Any, dataset_model_init: ModelInitDescription) -> None:
        self.loader = loader
        self.dataset_model_init = dataset_model_init

    def batches(self, device: torch.device):
        from neuracore.ml.trainers.prefetch import DevicePrefetcher

        epoch = 0
        while True:
            self.loader.sampler.set_epoch(epoch)
            yield from DevicePrefetcher(self.loader, device)
            epoch += 1


def _real_loader(name: str, cls: type, params: dict[str, Any], args: argparse.Namespace,
                 device: torch.device) -> _RealLoader:
    from neuracore.ml.config.schema import AlgorithmChoice, TrainConfig
    from neuracore.ml.datasets.format import open_dataset
    from neuracore.ml.trainers.data import build_data, check_full_batches, device_decode_collate, make_loader

    config = TrainConfig(algorithm=AlgorithmChoice(name, cls, params), dataset_name=args.dataset,
                         output_prediction_horizon=args.horizon, validation_split=0.0, num_workers=args.workers)
    data = build_data(config, open_dataset(args.dataset))
    check_full_batches(len(data.train), args.batch_size, 1)
    loader = make_loader(data.train, args.batch_size, config, shuffle=True, pin_memory=device.type == "cuda",
                         drop_last=True, collate_fn=device_decode_collate(data, device))
    return _RealLoader(loader, data.model_init)


class _PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 5 ms; for CPU runs)."""

    def __enter__(self) -> Self:
        import psutil

        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _steps(args, step, batches, device, times, waits) -> None:
    """Warm-up then timed full training steps (the step program: forward, backward, clip, optimizer, EMA),
    each from fetching its batch to the device finishing it."""
    for _ in range(args.warmup + args.steps):
        _sync(device)
        start = time.perf_counter()
        batch = next(batches)
        waits.append(time.perf_counter() - start)
        step(batch)
        _sync(device)
        times.append(time.perf_counter() - start)


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def run(args: argparse.Namespace) -> int:
    """Print samples/s of the chosen algorithm (and the CNNMLP baseline) in fp32 and bf16 autocast."""
    name, hyper = _parse_overrides(args.overrides, args)
    shown = name
    from neuracore.ml.core.registry import registered_algorithms

    if name not in registered_algorithms():  # a configuration such as pi0_tiny: its yaml's values
        base, yaml_hyper, yaml_horizon = config_variant(name)
        explicit = any(o.startswith("horizon=") for o in args.overrides) or args.horizon != HORIZON_DEFAULT
        if not explicit:
            args.horizon = yaml_horizon
        name, hyper = base, {**yaml_hyper, **hyper}
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    modes = _modes(args, device)
    precisions: list[tuple[str, torch.dtype | None]] = []
    if args.precision in ("both", "fp32"):
        precisions.append(("fp32", None))
    if args.precision in ("both", "bf16") and _bf16_supported(device):
        precisions.append(("bf16", torch.bfloat16))
    peer_reason = None
    if args.peers:
        from neuracore.ml.benchmarks import peers

        peer_reason = peers.peers_available() or (None if name in peers.PEERS else
                                                  f"LeRobot has no counterpart of {name} here ({', '.join(peers.PEERS)})")
    shapes = (f"dataset={args.dataset} workers={args.workers}" if args.dataset else
              f"cameras={args.cameras} image={args.image_size} state={args.state_dim} action={args.action_dim}")
    print(f"device={device} batch={args.batch_size} {shapes} horizon={args.horizon} steps={args.steps} (median)")
    if peer_reason:
        print(f"peers: not measured ({peer_reason})")
    for label, dtype in precisions:
        eager = None
        for mode in modes:
            result = measure(name, hyper, args, device, dtype, mode)
            eager = eager or result
            line = (f"{shown} {label} {mode}: {result['samples_per_s']:.5g} samples/s ({result['step_ms']:.5g} ms/step), "
                    f"{result['params_m']:.1f}M params"
                    + (f" ({result['trainable_m']:.3g}M trained)" if getattr(args, "lora", None) else "")
                    + ", "
                    f"{'peak GPU memory' if device.type == 'cuda' else 'peak RSS'} {result['peak_gib']:.2f} GiB")
            if result["data_wait"] is not None:
                line += f", data wait {100 * result['data_wait']:.1f} %"
            if mode != "eager":
                line += f", compile+capture {result['warmup_overhead_s']:.1f} s"
                if eager is not result:
                    line += f", {result['samples_per_s'] / eager['samples_per_s']:.3g}x eager"
            if not args.no_baseline and name != BASELINE:
                base = measure(BASELINE, {}, args, device, dtype, mode)
                ratio = result["samples_per_s"] / base["samples_per_s"]
                line += f"; {BASELINE} {base['samples_per_s']:.5g} samples/s, ratio {ratio:.3g}x"
            print(line, flush=True)
            if args.peers and not peer_reason:
                from neuracore.ml.benchmarks import peers

                peer = peers.measure_peer(name, args, device, dtype, compile=mode != "eager")
                print(f"lerobot {name} {label} {'eager' if mode == 'eager' else 'compiled'}: "
                      f"{peer['samples_per_s']:.5g} samples/s ({peer['step_ms']:.5g} ms/step), "
                      f"{peer['params_m']:.1f}M params, horizon {peer['horizon']}; "
                      f"neuracore/lerobot {result['samples_per_s'] / peer['samples_per_s']:.3g}x", flush=True)
    return 0


def _modes(args: argparse.Namespace, device: torch.device) -> list[str]:
    """The step programs to time, in order (graphed needs CUDA: refused elsewhere with one line)."""
    text = "eager,compiled,graphed" if args.modes == "all" else args.modes
    if args.compile and args.modes == "eager":
        text = "eager,compiled"
    modes = [m.strip() for m in text.split(",") if m.strip()]
    for mode in modes:
        if mode not in MODES:
            raise ConfigError(f"--modes: {mode!r} is not a step program; valid: {', '.join(MODES)} or all")
    if "graphed" in modes and device.type != "cuda":
        if args.modes == "all":
            modes.remove("graphed")
        else:
            raise ConfigError(f"--modes graphed: CUDA graphs need a CUDA device (this run is on {device.type})")
    return modes

"""Entry point: `python -m neuracore.ml.train algorithm=<name> dataset_name=<name> [key=value ...]`.

The same `main` runs under `accelerate launch recipes/train.py ...`. The training sequence is
`train()` below: accelerator → data → model → optimizer → prepare/resume → loop → export.
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from neuracore.ml.config.schema import TrainConfig, validate_config
from neuracore.ml.core.errors import NeuracoreError, expected_failure

logger = logging.getLogger("neuracore.ml.train")
CONFIG_DIR = str(Path(__file__).parent / "config")


def train(config: TrainConfig, job_num: int | None = None) -> dict[str, Any]:
    """Run one training job described by a validated config; returns the summary."""
    from neuracore.ml.trainers.guards import PreemptionHandler

    # SIGTERM/SIGUSR1 are caught from the start: one sent during set-up stops the run after its first step
    with PreemptionHandler() as preemption:
        return _train(config, job_num, preemption)


def _train(config: TrainConfig, job_num: int | None, preemption: Any) -> dict[str, Any]:
    from accelerate.utils import set_seed

    from neuracore.ml.core.augment import build_augmenter
    from neuracore.ml.core.data_types import DataType
    from neuracore.ml.core.model import build_model
    from neuracore.ml.core.relative_actions import pairs_to_json
    from neuracore.ml.datasets.mixture import open_datasets
    from neuracore.ml.datasets.remote import open_remote_dataset, wants_remote
    from neuracore.ml.trainers.accelerator import (
        accelerator_defaults_bf16,
        choose_run_dir,
        core_model,
        make_accelerator,
        start_distributed,
    )
    from neuracore.ml.trainers.batch_plan import decide_batch_size, write_resolved_config
    from neuracore.ml.trainers.best_model import best_model_hooks
    from neuracore.ml.trainers.checkpoint import TrainerState, load_checkpoint, resolve_resume_path
    from neuracore.ml.trainers.data import build_data, check_full_batches, device_decode_collate, make_loader
    from neuracore.ml.trainers.ema import attach_ema
    from neuracore.ml.trainers.loop import LoopParts, fit
    from neuracore.ml.trainers.model_size import check_model_fits
    from neuracore.ml.trainers.peft import setup_lora
    from neuracore.ml.trainers.rollouts import build_rollouts
    from neuracore.ml.trainers.run_folder import (
        discard_unstarted_run,
        export_run,
        prepare_run_folder,
        setup_logging,
    )
    from neuracore.ml.trainers.step import build_step
    from neuracore.ml.trainers.tracking import count_parameters, start_tracking

    state = start_distributed(config)
    run_dir = choose_run_dir(config, state, job_num)
    # A fresh run folder that never reaches the training loop (bad data spec, model that cannot be
    # built, unreadable checkpoint) is removed again: a failed start leaves nothing behind.
    created = state.is_main_process and not run_dir.exists()
    prepare_run_folder(run_dir, config, state)
    try:
        accelerator = make_accelerator(config, run_dir)
        setup_logging(run_dir, accelerator.is_main_process)
        logger.info(
            "world_size=%d device=%s mixed_precision=%s%s distributed=%s run_dir=%s",
            accelerator.num_processes, accelerator.device, accelerator.mixed_precision,
            " (the default on this GPU; mixed_precision=no for fp32)" if accelerator_defaults_bf16(config) else "",
            accelerator.distributed_type.value, run_dir,
        )
        set_seed(config.seed)

        with accelerator.main_process_first():
            if wants_remote(config.dataset_name, config.dataset):  # shard by shard from storage (datasets/remote.py)
                dataset = open_remote_dataset(config.dataset_name, config.dataset)
            else:
                dataset = open_datasets(config.dataset_name, config.dataset_weights, config.dataset.statistics,
                                        _local_dataset_name)
        data = build_data(config, dataset)
        # sizes that cannot fit are one line before anything is allocated (a meta-device build)
        check_model_fits(config.algorithm.cls, data.model_init, config.algorithm.hyperparameters)
        model = build_model(config.algorithm.cls, data.model_init, config.algorithm.hyperparameters)
        lora = setup_lora(config.lora, model)  # adapters in, base weights frozen: before the optimizers exist
        total_params, trainable = count_parameters(model)
        logger.info("%s: %s parameters (%s trainable); inputs %s; outputs %s", config.algorithm.name, f"{total_params:,}",
                    f"{trainable:,}", _items(data.model_init.inputs), _items(data.model_init.outputs))
        logger.info("episodes: %d train, %d validation (split by episode); %d training windows",
                    len(data.train_episodes), len(data.validation_episodes), len(data.train))
        cameras = data.model_init.inputs[DataType.RGB_IMAGES].items if DataType.RGB_IMAGES in data.model_init.inputs else []
        augmenter = build_augmenter(config.training.augmentation, cameras)
        if augmenter is not None:
            logger.info("image augmentation on the device, per sample: %s%s",
                        ", ".join((["crop/affine"] if augmenter.geometric else []) + augmenter.colour),
                        f" (cameras: {', '.join(c for c, on in zip(cameras, augmenter.active) if on)})")
        optimizers = model.configure_optimizers()
        prepared = accelerator.prepare(model, *optimizers)
        model, optimizers = prepared[0], list(prepared[1:])

        resume_path = resolve_resume_path(config.resume_checkpoint_path, run_dir) if config.resume_checkpoint_path else None
        batch_size, accumulation = decide_batch_size(config, accelerator, model, optimizers, data, resume_path)
        accelerator.gradient_accumulation_steps = accumulation
        write_resolved_config(accelerator, run_dir, config, batch_size, accumulation)

        pin = accelerator.device.type == "cuda"
        # JPEG frames travel encoded and are decoded on the GPU, a batch at a time (CPU: in the workers).
        collate_fn = device_decode_collate(data, accelerator.device)
        check_full_batches(len(data.train), batch_size, accelerator.num_processes)
        train_loader = make_loader(data.train, batch_size, config, shuffle=True, pin_memory=pin, drop_last=True,
                                   collate_fn=collate_fn)
        val_loader = make_loader(data.validation, batch_size, config, shuffle=False, pin_memory=pin,
                                 collate_fn=collate_fn) if data.validation else None
        sampler = train_loader.sampler
        steps_per_epoch = math.ceil(math.ceil(len(train_loader) / accelerator.num_processes) / accumulation)
        total_steps = config.max_steps or config.epochs * steps_per_epoch
        schedulers = core_model(accelerator, model).configure_schedulers([o.optimizer for o in optimizers], total_steps)
        loaders = [train_loader] + ([val_loader] if val_loader else [])
        # The loop's DevicePrefetcher owns the host-to-device copy (side stream, one batch ahead).
        prepared = accelerator.prepare(*schedulers, *loaders,
                                       device_placement=[True] * len(schedulers) + [False] * len(loaders))
        schedulers = list(prepared[: len(schedulers)])
        train_loader, val_loader = (list(prepared[len(schedulers):]) + [None])[:2]
        attach_ema(core_model(accelerator, model), config.ema)  # after autotune's probe steps, before resume
        trainer_state = TrainerState(
            algorithm=config.algorithm.name,
            dataset_fingerprint=data.fingerprint,  # a mixture: its names, fingerprints and weights
            world_size=accelerator.num_processes,
            batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            extra={"seed": config.seed,  # the data order depends on it: a resume keeps it
                   "lora": lora.record() if lora else None,
                   "relative_actions": pairs_to_json(relative) if (relative := data.model_init.relative_actions)
                   else None},
        )
        if resume_path is not None:
            trainer_state = load_checkpoint(accelerator, resume_path, trainer_state, core_model(accelerator, model))
            logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_path, trainer_state.step,
                        trainer_state.epoch, trainer_state.batches_in_epoch)

        start_tracking(accelerator, config, run_dir)
        accelerator.log({"model/num_parameters": float(total_params), "model/trainable_parameters": float(trainable)},
                        step=trainer_state.step)
        step = build_step(accelerator, model, optimizers, config.training.max_grad_norm, config.compile,
                          cuda_graphs=config.training.cuda_graphs, augmenter=augmenter)
        parts = LoopParts(model, optimizers, schedulers, train_loader, val_loader, sampler, total_steps,
                          steps_per_epoch, batch_size, step)
        dataset_info = data.info
        command = _reproduce_command()
        rollouts = build_rollouts(config, accelerator, core_model(accelerator, model))  # None unless eval.env

        def export_best(st: TrainerState, losses: dict[str, float], report: dict[str, Any] | None) -> None:
            export_run(accelerator, model, run_dir / "best_model", st, {}, losses, dataset_info, command, report)

        on_validation, on_step = best_model_hooks(export_best, rollouts)
    except BaseException:
        if created:
            discard_unstarted_run(run_dir)
        raise
    try:
        result = fit(accelerator, parts, config, run_dir, trainer_state, preemption, on_validation, on_step)
    finally:
        if rollouts is not None:
            rollouts.close()
    final_rollout = rollouts.last if rollouts is not None else None
    export_run(accelerator, model, run_dir / "model", result.state, result.train_losses,
               result.validation_losses, dataset_info, command, final_rollout)
    pushed = {}
    if config.push_to_storage and accelerator.is_main_process:
        from neuracore.ml.storage import push_run

        pushed = push_run(run_dir, config.push_to_storage, message=f"{run_dir.name}: {result.state.step} steps")
        for name, info in pushed.items():
            logger.info("pushed %s to %s@%s (branch %s)", name, info.repo, info.revision[:12], info.branch)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    summary = {
        "run_dir": str(run_dir),
        "model_dir": str(run_dir / "model"),
        "steps": result.state.step,
        "train_losses": result.train_losses,
        "validation_losses": result.validation_losses,
        "best_validation_loss": result.state.best_validation_loss,
        **({"rollouts": final_rollout, "best_success_rate": result.state.best_success_rate} if final_rollout else {}),
        "seconds": round(result.seconds, 1),
        "samples_per_second": round(result.samples_per_second, 1),
        "batch_size": batch_size,
        "world_size": accelerator.num_processes,
    }
    if config.compile:
        summary["compile"] = _compile_report(model, parts.step)
        logger.info("torch.compile: %s", summary["compile"])
    logger.info(
        "done: %d steps in %.0f s (%.1f samples/s); train loss %s; validation loss %s; model at %s",
        summary["steps"], result.seconds, result.samples_per_second,
        _num(result.train_losses.get("loss")), _num(result.validation_losses.get("loss")), summary["model_dir"],
    )
    return summary


def _compile_report(model: Any, step: Any) -> dict[str, Any]:
    """What torch.compile did in this process: the whole step or the model alone, graphs and breaks."""
    import torch._dynamo

    counters = torch._dynamo.utils.counters
    return {
        "whole_step": bool(step.compiled),
        "cuda_graphs": bool(getattr(step, "graphed", False)),
        "compiled_module": isinstance(model, torch._dynamo.eval_frame.OptimizedModule),
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def _local_dataset_name(name: str) -> str:
    """`org/name[@revision]` is pulled from storage once (sha256-verified) as dataset `org.name`."""
    from neuracore.ml.storage.names import looks_like_repo, parse_repo

    if not looks_like_repo(name):
        return name
    from neuracore.ml.storage import pull_dataset

    ref = parse_repo(name)
    local = f"{ref.org}.{ref.name}" + (f".{ref.revision}" if ref.revision else "")
    path = pull_dataset(name, local_name=local)
    logger.info("dataset %s pulled from storage as %s", name, path)
    return local


def _items(features: dict) -> str:
    return "; ".join(f"{dt.value}[{', '.join(f.items)}]" for dt, f in features.items())


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _reproduce_command() -> str:
    return "python -m neuracore.ml.train " + " ".join(shlex.quote(a) for a in sys.argv[1:] if not a.startswith("-"))


# --------------------------------------------------------------------------- CLI (Hydra)


def _run_job(cfg: Any) -> dict[str, Any] | None:
    """Hydra task function: validate, train, and turn our errors into one line + exit code 2."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from neuracore.ml.trainers.accelerator import reset_accelerate_state

    job_num = None
    try:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode.name == "MULTIRUN":
            job_num = hydra_cfg.job.num
    except ValueError:
        pass
    try:
        config = validate_config(OmegaConf.to_container(cfg, resolve=True))
        return train(config, job_num)
    except Exception as exc:  # expected failures are one line; a bug keeps its traceback
        if expected_failure(exc) is None:
            print("neuracore: internal error (a bug in neuracore: please report it with the traceback below)",
                  file=sys.stderr, flush=True)
            raise
        _fail(exc)
    finally:
        reset_accelerate_state()
    return None


def _fail(exc: BaseException) -> None:
    """One line on stderr; exit code 2 for bad input, the error's own code (e.g. 3 for memory) otherwise."""
    print(f"neuracore: error: {expected_failure(exc)}", file=sys.stderr, flush=True)
    raise SystemExit(getattr(exc, "exit_code", 2))


def main(argv: list[str] | None = None) -> None:
    """CLI: check every override before Hydra runs, then hand over to Hydra (runs or sweeps)."""
    import hydra

    from neuracore.ml.config.preflight import preflight

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        preflight(args, CONFIG_DIR)
    except (NeuracoreError, OSError) as exc:
        _fail(exc)
    sys.argv = [sys.argv[0], *args]
    hydra.main(config_path=CONFIG_DIR, config_name="config", version_base=None)(_run_job)()


if __name__ == "__main__":
    main()

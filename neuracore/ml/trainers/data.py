"""Dataset → data spec → windows → DataLoaders with a resumable, seed-determined order."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from neuracore.ml.config.schema import TrainConfig
from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.model_init import FeatureSpec, ModelInitDescription
from neuracore.ml.core.relative_actions import RelativePair, merge_statistics, resolve_relative_actions
from neuracore.ml.datasets.data_spec import ResolvedFeature, resolve_model_data_spec
from neuracore.ml.datasets.format import MaterializedDataset
from neuracore.ml.datasets.mixture import (
    RELATIVE_ACTIONS_UNSUPPORTED,
    Mixture,
    MixtureWindows,
    check_robot_spec,
    mixture_info,
)
from neuracore.ml.datasets.remote import is_sharded, shard_sampler
from neuracore.ml.datasets.statistics import relative_statistics
from neuracore.ml.datasets.windows import WindowDataset, split_episodes

logger = logging.getLogger(__name__)


class EpochSampler(torch.utils.data.Sampler[int]):
    """A permutation that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of `epoch`."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(rng.permutation(self.num_samples).tolist())

    def __len__(self) -> int:
        return self.num_samples


@dataclass
class DataBundle:
    """Everything the loop needs from the data side."""

    train: WindowDataset | MixtureWindows
    validation: WindowDataset | MixtureWindows | None
    inputs: dict[DataType, ResolvedFeature]
    outputs: dict[DataType, ResolvedFeature]
    model_init: ModelInitDescription
    train_episodes: list[Any]  # one dataset: episode indices; a mixture: (dataset name, episode) pairs
    validation_episodes: list[Any]
    fingerprint: str = ""  # what a checkpoint must have been trained on (a mixture: names, fingerprints, weights)
    info: dict[str, Any] = field(default_factory=dict)  # the `dataset` section of the export


def build_data(config: TrainConfig, dataset: MaterializedDataset | Mixture) -> DataBundle:
    """Split by episode, build train/validation windows and the model's init description.

    `dataset` is one opened dataset or a `Mixture` of several (datasets/mixture.py).
    """
    if isinstance(dataset, Mixture):
        return _build_mixture_data(config, dataset)
    inputs, outputs = resolve_model_data_spec(
        dataset.spec,
        config.algorithm.cls,
        config.input_data_types,
        config.output_data_types,
        config.input_robot_data_spec,
        config.output_robot_data_spec,
    )
    history = int(getattr(config.algorithm.cls, "observation_history", 1))
    train_eps, val_eps = split_episodes(len(dataset.spec.episodes), config.validation_split, config.seed)
    horizon = config.output_prediction_horizon
    language = config.dataset.default_language
    relative = run_relative_actions(config, inputs, outputs)
    train = WindowDataset(dataset, inputs, outputs, train_eps, history, horizon, language, relative_actions=relative)
    validation = WindowDataset(dataset, inputs, outputs, val_eps, history, horizon, language,
                               relative_actions=relative) if val_eps else None
    model_init = ModelInitDescription(
        inputs={dt: f.feature_spec(dataset.spec) for dt, f in inputs.items()},
        outputs=_output_specs(dataset, inputs, outputs, relative, train_eps, horizon),
        output_prediction_horizon=horizon,
        frequency=dataset.spec.frequency,
        default_language=language,
        relative_actions=relative,
    )
    info = {"name": dataset.spec.name, "fingerprint": dataset.spec.fingerprint,
            "episodes": len(dataset.spec.episodes), "frames": dataset.spec.num_frames}
    return DataBundle(train, validation, inputs, outputs, model_init, train_eps, val_eps,
                      dataset.spec.fingerprint, info)


def _build_mixture_data(config: TrainConfig, mixture: Mixture) -> DataBundle:
    """`build_data` for several datasets: union items, each dataset split by episode on its own (seeded)."""
    check_robot_spec(mixture, config.input_robot_data_spec, "input_robot_data_spec")
    check_robot_spec(mixture, config.output_robot_data_spec, "output_robot_data_spec")
    inputs, outputs = resolve_model_data_spec(
        mixture.spec, config.algorithm.cls, config.input_data_types, config.output_data_types,
        config.input_robot_data_spec, config.output_robot_data_spec,
    )
    if config.relative_actions.enabled:
        raise ConfigError(RELATIVE_ACTIONS_UNSUPPORTED)
    history = int(getattr(config.algorithm.cls, "observation_history", 1))
    horizon = config.output_prediction_horizon
    language = config.dataset.default_language
    splits = [split_episodes(len(ds.spec.episodes), config.validation_split, config.seed) for ds in mixture.datasets]
    train_eps, val_eps = [t for t, _ in splits], [v for _, v in splits]
    train = MixtureWindows(mixture, inputs, outputs, train_eps, history, horizon, language)
    validation = MixtureWindows(mixture, inputs, outputs, val_eps, history, horizon, language) \
        if any(val_eps) else None
    model_init = ModelInitDescription(
        inputs={dt: f.feature_spec(mixture.spec) for dt, f in inputs.items()},
        outputs={dt: f.feature_spec(mixture.spec) for dt, f in outputs.items()},
        output_prediction_horizon=horizon,
        frequency=mixture.spec.frequency,
        default_language=language,
    )
    components = mixture_info(mixture, train_eps, val_eps, train.lengths)
    for c in components:
        logger.info("dataset %s (%s): %d train / %d validation episodes, %d windows, weight %.4f, robots %s",
                    c["name"], c["fingerprint"][:12], c["train_episodes"], c["validation_episodes"], c["windows"],
                    c["weight"], ", ".join(c["robots"]))
    robot_items = robot_item_names(mixture.spec.robots, {**inputs, **outputs})
    info = {"name": mixture.spec.name, "fingerprint": mixture.fingerprint,
            "episodes": sum(len(d.spec.episodes) for d in mixture.datasets),
            "frames": sum(d.spec.num_frames for d in mixture.datasets),
            "statistics": mixture.statistics, "components": components, "robot_items": robot_items}
    names = [ds.spec.name for ds in mixture.datasets]
    flat = lambda eps: [(n, e) for n, es in zip(names, eps) for e in es]
    return DataBundle(train, validation, inputs, outputs, model_init, flat(train_eps), flat(val_eps),
                      mixture.fingerprint, info)


def robot_item_names(robots: Any, features: dict[DataType, ResolvedFeature]) -> dict[str, dict[str, list[str]]]:
    """Robot -> DataType -> the model items that robot has (unmasked), for the export and inference."""
    out: dict[str, dict[str, list[str]]] = {}
    for robot in robots:
        for dt, f in features.items():
            if robot not in f.robot_masks:
                continue
            width = dt.item_width if dt.modality == Modality.VECTOR else 1
            out.setdefault(robot, {})[dt.value] = [i for p, i in enumerate(f.items) if f.robot_masks[robot][p * width] > 0]
    return out


def run_relative_actions(
    config: TrainConfig, inputs: dict[DataType, ResolvedFeature], outputs: dict[DataType, ResolvedFeature]
) -> list[RelativePair]:
    """The run's relative (delta) output items from `relative_actions.*` ([] when disabled); one-line errors."""
    options = config.relative_actions
    return resolve_relative_actions(
        options.enabled, options.pairs, options.absolute_items,
        {dt: f.items for dt, f in outputs.items()}, {dt: f.items for dt, f in inputs.items()},
    )


def _output_specs(
    dataset: MaterializedDataset, inputs: dict[DataType, ResolvedFeature], outputs: dict[DataType, ResolvedFeature],
    relative: list[RelativePair], train_episodes: list[int], horizon: int,
) -> dict[DataType, FeatureSpec]:
    """Output feature specs; relative items carry the statistics of their deltas over the training windows."""
    specs = {dt: f.feature_spec(dataset.spec) for dt, f in outputs.items()}
    if relative:
        deltas = relative_statistics(dataset, inputs, outputs, relative, train_episodes, horizon)
        for pair in relative:
            spec = specs[pair.output]
            if pair.output in deltas:
                spec.stats = merge_statistics(spec.stats, pair, deltas[pair.output])
    return specs


def device_decode_collate(data: DataBundle, device: torch.device) -> Callable[[list[Any]], Any] | None:
    """On CUDA, switch the windows to ship JPEG frames undecoded and return the collate that batches them.

    The loop's `DevicePrefetcher` then decodes a whole batch with nvJPEG; CPU JPEG decode costs
    ~1.6-3.5 ms of a core per 2-camera sample, more than a GPU step at large batch. Elsewhere (or
    without JPEG columns) the workers decode as before and the default collate is used (None).
    """
    from neuracore.ml.datasets.encoded import collate, has_jpeg_images

    if device.type != "cuda" or not has_jpeg_images(data.train):
        return None
    for windows in (data.train, data.validation):
        if windows is not None:
            windows.encoded_images = True
    logger.info("JPEG frames are decoded on %s (nvJPEG), a batch at a time", device)
    return collate


def check_full_batches(windows: int, batch_size: int, processes: int) -> None:
    """Refuse a batch size with not even one full training batch per process (partial batches are dropped)."""
    if windows < batch_size * processes:
        raise ConfigError(
            f"batch_size={batch_size}: the dataset has {windows} training windows, fewer than one full batch "
            f"for each of {processes} process(es); use batch_size<={max(windows // processes, 1)} or batch_size=auto"
        )


def make_loader(
    windows: WindowDataset, batch_size: int, config: TrainConfig, shuffle: bool, pin_memory: bool,
    *, drop_last: bool = False, collate_fn: Callable[[list[Any]], Any] | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose order comes from `EpochSampler` and never touches the global RNG.

    Training loaders drop the last partial batch of an epoch (`drop_last=True`): every step then has
    the same shapes, which a compiled/CUDA-graphed step needs; the dropped windows differ every epoch
    (the permutation changes), and resume counts batches, so it stays exact.

    `collate_fn=None` is torch's `default_collate`; windows made with `encoded_images=True` need
    `neuracore.ml.datasets.encoded.collate`.
    """
    workers = config.num_workers
    return torch.utils.data.DataLoader(
        windows,
        batch_size=batch_size,
        sampler=windows.make_sampler(config.seed, shuffle) if isinstance(windows, MixtureWindows)
        else shard_sampler(windows, batch_size, config) if shuffle and is_sharded(windows)  # datasets/remote.py
        else EpochSampler(len(windows), config.seed, shuffle=shuffle),
        num_workers=workers,
        pin_memory=pin_memory and config.dataset.pin_memory,
        drop_last=drop_last,
        collate_fn=collate_fn,
        persistent_workers=workers > 0 and config.dataset.persistent_workers,
        prefetch_factor=config.dataset.prefetch_factor if workers > 0 else None,
        # Worker seeds come from this generator, so creating an iterator leaves torch's global
        # RNG (dropout, augmentation) untouched: required for bit-exact resume.
        generator=torch.Generator().manual_seed(config.seed),
    )

"""Dataset → data spec → windows → DataLoaders with a resumable, seed-determined order."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from neuracore.ml.config.schema import TrainConfig
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.core.model_init import FeatureSpec, ModelInitDescription
from neuracore.ml.core.relative_actions import RelativePair, merge_statistics, resolve_relative_actions
from neuracore.ml.datasets.data_spec import ResolvedFeature, resolve_model_data_spec
from neuracore.ml.datasets.format import MaterializedDataset
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

    train: WindowDataset
    validation: WindowDataset | None
    inputs: dict[DataType, ResolvedFeature]
    outputs: dict[DataType, ResolvedFeature]
    model_init: ModelInitDescription
    train_episodes: list[int]
    validation_episodes: list[int]


def build_data(config: TrainConfig, dataset: MaterializedDataset) -> DataBundle:
    """Split by episode, build train/validation windows and the model's init description."""
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
    return DataBundle(train, validation, inputs, outputs, model_init, train_eps, val_eps)


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
        sampler=EpochSampler(len(windows), config.seed, shuffle=shuffle),
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

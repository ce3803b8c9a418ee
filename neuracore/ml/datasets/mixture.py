"""Several datasets (and robots) in one run: a merged spec view, pooled statistics, weighted windows.

`dataset_name=[a,b]` opens each dataset on its own; the model sees the union of their items (in
spec order, dataset by dataset) and the existing per-item masks mark what a sample's robot lacks.
Each dataset keeps its own `WindowDataset` (its own Arrow columns); `MixtureWindows` scatters a
component's values into the union layout. `MixtureSampler` draws datasets in the given
proportions with an order that depends only on (seed, epoch), so resume stays exact.

Statistics (`dataset.statistics`):
- `shared`: an item with the same name in several datasets gets pooled statistics: mean and std
  exactly from the per-dataset mean/std and frame counts, min/max exact, q01/q99 the
  count-weighted mean of the per-dataset quantiles (an approximation: quantiles do not pool).
- `per_robot`: every robot's items are separate model dimensions named `<robot>/<item>`, each with
  its own statistics (pooled as above over the datasets holding that robot), masked for the others.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.core.relative_actions import RelativePair, to_delta
from neuracore.ml.datasets.data_spec import ResolvedFeature
from neuracore.ml.datasets.format import ColumnSpec, DatasetSpec, MaterializedDataset, column_name
from neuracore.ml.datasets.windows import WindowDataset

STATISTICS_MODES = ("shared", "per_robot")
RELATIVE_ACTIONS_UNSUPPORTED = (
    "relative_actions.enabled=true: not available with several datasets in dataset_name yet (the delta statistics "
    "are computed per dataset); train on one dataset or set relative_actions.enabled=false")


def dataset_names(value: str | Sequence[str]) -> list[str]:
    """`dataset_name` as a list of names (a single string is a list of one)."""
    return [value] if isinstance(value, str) else [str(v) for v in value]


def check_names_and_weights(names: Sequence[str], weights: Sequence[float] | None) -> None:
    """One-line errors for a name given twice and a weight list that is not one positive finite number per name."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"dataset_name: {name!r} is listed twice; give each dataset once "
                              "(use dataset_weights to sample one more often)")
        seen.add(name)
    if weights is None:
        return
    if len(names) < 2:
        raise ConfigError(f"dataset_weights={list(weights)}: needs a list of at least two names in dataset_name, "
                          f"got {list(names) if len(names) != 1 else names[0]!r}")
    if len(weights) != len(names):
        raise ConfigError(f"dataset_weights: {len(weights)} weights for {len(names)} datasets "
                          f"({', '.join(names)}); give one positive number per dataset")
    for name, w in zip(names, weights):
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w <= 0:
            raise ConfigError(f"dataset_weights: weight {w!r} of dataset {name!r} must be a positive finite number")


def pool_statistics(parts: Sequence[tuple[dict[str, list[float]], int]]) -> dict[str, list[float]]:
    """Statistics of the union of several sets from each set's statistics and count.

    mean and std are exact (from the counts, means and second moments), min/max exact; q01/q99 are
    the count-weighted mean of the parts' quantiles (an approximation).
    """
    parts = [(s, n) for s, n in parts if n > 0] or list(parts[:1])
    if len(parts) == 1:
        return {k: list(v) for k, v in parts[0][0].items()}
    counts = np.array([n for _, n in parts], np.float64)
    frac = (counts / counts.sum())[:, None]

    def stack(key: str) -> np.ndarray:
        return np.array([s[key] for s, _ in parts], np.float64)

    mean = (frac * stack("mean")).sum(0)
    second = (frac * (np.square(stack("std")) + np.square(stack("mean")))).sum(0)
    out = {"mean": mean, "std": np.sqrt(np.maximum(second - np.square(mean), 0.0)),
           "min": stack("min").min(0), "max": stack("max").max(0)}
    for key in ("q01", "q99"):
        out[key] = (frac * stack(key)).sum(0)
    return {k: v.tolist() for k, v in out.items()}


def _item_frames(spec: DatasetSpec, data_type: str, item: str, robot: str | None = None) -> int:
    """Frames of the episodes whose robot records `item` (of `robot` only, when given)."""
    return sum(e.length for e in spec.episodes if (robot is None or e.robot == robot)
               and item in spec.robots.get(e.robot, {}).get(data_type, []))


@dataclass
class Mixture:
    """Several opened datasets seen as one: the merged spec and where each union item comes from."""

    datasets: list[MaterializedDataset]
    weights: list[float] | None
    statistics: str
    spec: DatasetSpec  # merged view: union robots/items/columns and pooled statistics (no episodes)
    # (DataType value, union item) -> {component index: that dataset's item name}
    sources: dict[tuple[str, str], dict[int, str]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Dataset names in the order given."""
        return [d.spec.name for d in self.datasets]

    @property
    def fingerprint(self) -> str:
        """sha256 over (name, fingerprint, weight) of every component and the statistics mode."""
        data = [[d.spec.name, d.spec.fingerprint, None if self.weights is None else self.weights[i]]
                for i, d in enumerate(self.datasets)]
        return hashlib.sha256(json.dumps([data, self.statistics]).encode()).hexdigest()


def build_mixture(datasets: Sequence[MaterializedDataset], weights: Sequence[float] | None,
                  statistics: str = "shared") -> Mixture:
    """The merged spec of `datasets`; one-line errors for frequencies, widths or camera shapes that differ."""
    if statistics not in STATISTICS_MODES:
        raise ConfigError(f"dataset.statistics={statistics!r}: valid: {', '.join(STATISTICS_MODES)}")
    check_names_and_weights([d.spec.name for d in datasets], weights)
    first = datasets[0].spec
    for ds in datasets[1:]:
        if not math.isclose(ds.spec.frequency, first.frequency, rel_tol=1e-6):
            raise DatasetError(f"dataset_name: {first.name!r} is recorded at {first.frequency:g} Hz and "
                               f"{ds.spec.name!r} at {ds.spec.frequency:g} Hz; a mixture needs one frequency")
    per_robot = statistics == "per_robot"
    robots: dict[str, dict[str, list[str]]] = {}
    columns: dict[str, ColumnSpec] = {}
    sources: dict[tuple[str, str], dict[int, str]] = {}
    stat_parts: dict[tuple[str, str], list[tuple[dict[str, list[float]], int]]] = {}
    shapes: dict[tuple[str, str], tuple[list[int], str]] = {}  # (DataType, local item) -> (shape, first dataset)
    for ci, ds in enumerate(datasets):
        spec = ds.spec
        for robot, types in spec.robots.items():
            for dtv, items in types.items():
                dt = DataType(dtv)
                for item in items:
                    if dt.modality != Modality.LANGUAGE:
                        col = spec.columns[column_name(dt, item)]
                        shape = list(col.item_shape)
                        seen = shapes.setdefault((dtv, item), (shape, spec.name))
                        if seen[0] != shape:
                            what = "camera" if dt.modality == Modality.IMAGE else "item"
                            raise DatasetError(
                                f"dataset_name: {dtv} {what} {item!r} has shape {seen[0]} in dataset {seen[1]!r} "
                                f"but {shape} in {spec.name!r}; resize on import (--image-size) or drop the item")
                    union = f"{robot}/{item}" if per_robot and dt.modality != Modality.LANGUAGE else item
                    lst = robots.setdefault(robot, {}).setdefault(dtv, [])
                    if union not in lst:
                        lst.append(union)
                    sources.setdefault((dtv, union), {})[ci] = item
                    if dt.modality == Modality.LANGUAGE:
                        continue
                    name = column_name(dt, union)
                    if dt.modality == Modality.VECTOR:
                        vec = columns.setdefault(name, ColumnSpec(dtv, [], list(col.item_shape), "float32"))
                        if union not in vec.items:
                            vec.items.append(union)
                    else:  # decoded in the workers: the merged view never ships JPEG bytes to the device
                        columns.setdefault(name, ColumnSpec(dtv, [union], list(col.item_shape), col.dtype, "raw"))
                    item_stats = spec.statistics.get(dtv, {}).get(item)
                    if item_stats:
                        frames = _item_frames(spec, dtv, item, robot if per_robot else None)
                        parts = stat_parts.setdefault((dtv, union), [])
                        if not any(p is item_stats for p, _ in parts):
                            parts.append((item_stats, frames))
    stats: dict[str, dict[str, dict[str, list[float]]]] = {}
    for (dtv, union), parts in stat_parts.items():
        stats.setdefault(dtv, {})[union] = pool_statistics(parts)
    merged = DatasetSpec(name="+".join(d.spec.name for d in datasets), frequency=first.frequency, robots=robots,
                         columns=columns, episodes=[], statistics=stats)
    return Mixture(list(datasets), None if weights is None else [float(w) for w in weights], statistics, merged,
                   sources)


def open_datasets(name: str | Sequence[str], weights: Sequence[float] | None, statistics: str,
                  local_name: Callable[[str], str] = lambda n: n) -> MaterializedDataset | Mixture:
    """`dataset_name` opened: one dataset as before, or a `Mixture` of several (`local_name` pulls `org/name`)."""
    from neuracore.ml.datasets.format import open_dataset

    names = dataset_names(name)
    check_names_and_weights(names, weights)
    if len(names) == 1:
        return open_dataset(local_name(names[0]))
    datasets = [open_dataset(local_name(n)) for n in names]
    return build_mixture(datasets, weights, statistics)


def check_robot_spec(mixture: Mixture, robot_spec: Any, key: str) -> None:
    """An `*_robot_data_spec` naming a robot that is in none of the datasets is a one-line error."""
    if not robot_spec or not hasattr(robot_spec, "keys"):
        return
    for robot in robot_spec:
        if robot not in mixture.spec.robots:
            owners = {r: n for d in mixture.datasets for r, n in [(r, d.spec.name) for r in d.spec.robots]}
            raise ConfigError(f"{key}: robot {robot!r} is in none of the datasets {', '.join(mixture.names)}; robots: "
                              + ", ".join(f"{r} ({n})" for r, n in owners.items()))


@dataclass
class _Local:
    """One union feature as a component dataset holds it."""

    feature: ResolvedFeature | None  # the component's own columns (None: it has none of the items)
    scatter: np.ndarray  # vectors: union value positions; images: union camera positions
    masks: dict[str, np.ndarray]  # robot of this component -> union-layout mask


def _localise(mixture: Mixture, ci: int, union: dict[DataType, ResolvedFeature]) -> dict[DataType, _Local]:
    spec = mixture.datasets[ci].spec
    out: dict[DataType, _Local] = {}
    for dt, feature in union.items():
        dtv = dt.value
        present = [(pos, mixture.sources.get((dtv, u), {}).get(ci)) for pos, u in enumerate(feature.items)]
        present = [(pos, local) for pos, local in present if local is not None]
        if dt.modality == Modality.LANGUAGE:
            out[dt] = _Local(ResolvedFeature(dt, list(feature.items), [], np.zeros(0, np.int64), {}, []),
                             np.zeros(0, np.int64), {})
            continue
        width = dt.item_width if dt.modality == Modality.VECTOR else 1
        masks = {}
        for robot, types in spec.robots.items():
            has = set(types.get(dtv, []))
            union_mask = feature.robot_masks.get(robot, np.zeros(len(feature.items) * width, np.float32))
            m = np.zeros(len(feature.items) * width, np.float32)
            for pos, local in present:
                if local in has and union_mask[pos * width] > 0:
                    m[pos * width:(pos + 1) * width] = 1.0
            masks[robot] = m
        if not present:
            out[dt] = _Local(None, np.zeros(0, np.int64), masks)
            continue
        locals_ = [local for _, local in present]
        if dt.modality == Modality.VECTOR:
            col = spec.columns[column_name(dt)]
            index = np.array([col.items.index(i) * width + k for i in locals_ for k in range(width)], np.int64)
            scatter = np.array([pos * width + k for pos, _ in present for k in range(width)], np.int64)
            local = ResolvedFeature(dt, locals_, [column_name(dt)], index, masks, [width])
        else:
            scatter = np.array([pos for pos, _ in present], np.int64)
            local = ResolvedFeature(dt, locals_, [column_name(dt, c) for c in locals_], np.zeros(0, np.int64), masks,
                                    list(feature.item_shape))
        out[dt] = _Local(local, scatter, masks)
    return out


class MixtureWindows(torch.utils.data.Dataset):
    """Windows of several datasets, one after another, each sample in the union layout with its robot's masks."""

    def __init__(self, mixture: Mixture, inputs: dict[DataType, ResolvedFeature],
                 outputs: dict[DataType, ResolvedFeature], episodes: Sequence[Sequence[int]], history: int,
                 horizon: int, default_language: str = "", relative_actions: Sequence[RelativePair] = ()) -> None:
        self.mixture = mixture
        self.spec = mixture.spec
        self.inputs, self.outputs = inputs, outputs
        self.history, self.horizon = int(history), int(horizon)
        self.encoded_images = False  # JPEG columns are decoded in the workers (their layouts differ per dataset)
        self.relative_actions = list(relative_actions)
        self.components: list[WindowDataset | None] = []
        self._local: list[tuple[dict[DataType, _Local], dict[DataType, _Local]]] = []
        for ci, (ds, eps) in enumerate(zip(mixture.datasets, episodes)):
            local_in, local_out = _localise(mixture, ci, inputs), _localise(mixture, ci, outputs)
            self._local.append((local_in, local_out))
            feats_in = {dt: lo.feature for dt, lo in local_in.items() if lo.feature is not None}
            feats_out = {dt: lo.feature for dt, lo in local_out.items() if lo.feature is not None}
            self.components.append(WindowDataset(ds, feats_in, feats_out, list(eps), history, horizon,
                                                 default_language) if eps else None)
        self.lengths = [len(c) if c is not None else 0 for c in self.components]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def make_sampler(self, seed: int, shuffle: bool) -> MixtureSampler:
        """The sampler that draws the components in the mixture's proportions."""
        return MixtureSampler(self.lengths, self.mixture.weights, seed, shuffle)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ci = int(np.searchsorted(self.offsets, index, side="right") - 1)
        comp = self.components[ci]
        assert comp is not None
        local = int(index - self.offsets[ci])
        sample = comp[local]
        robot = comp.spec.episodes[int(comp.episode_ids[local])].robot
        for (values_key, masks_key, union, steps), locs in zip(
            ((keys.INPUTS, keys.INPUT_MASKS, self.inputs, self.history),
             (keys.OUTPUTS, keys.OUTPUT_MASKS, self.outputs, self.horizon)), self._local[ci]):
            for dt, feature in union.items():
                if dt.modality == Modality.LANGUAGE:
                    continue
                lo = locs[dt]
                have = sample[values_key].get(dt.value)
                if dt.modality == Modality.VECTOR:
                    full = np.zeros((steps, len(feature.items) * dt.item_width), np.float32)
                    if have is not None:
                        full[:, lo.scatter] = have
                else:
                    h, w, c = feature.item_shape
                    dtype = have.dtype if have is not None else np.dtype(self.spec.columns[feature.columns[0]].dtype)
                    full = np.zeros((steps, len(feature.items), c, h, w), dtype)
                    if have is not None:
                        full[:, lo.scatter] = have
                sample[values_key][dt.value] = full
                sample[masks_key][dt.value] = lo.masks[robot]
        if self.relative_actions:
            sample[keys.OUTPUTS] = to_delta(sample[keys.OUTPUTS], sample[keys.INPUTS], self.relative_actions)
        return sample


def allocate(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split in proportion to `weights` (largest remainder; ties to the earlier dataset)."""
    w = np.asarray(weights, np.float64)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    rest = total - int(counts.sum())
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[:rest]:
        counts[i] += 1
    return counts.tolist()


class MixtureSampler(torch.utils.data.Sampler[int]):
    """A weighted order over concatenated components that depends only on (seed, epoch).

    An epoch has as many windows as the concatenation; component i contributes its share by weight.
    Within a component windows are drawn without replacement from a permutation that continues
    across epochs, a fresh one (seeded by its cycle number) when it is exhausted, so a small
    dataset weighted up cycles through all its windows before repeating any. Which component each
    position takes is a seeded shuffle. Without `shuffle` (validation): the concatenation in order.
    """

    def __init__(self, lengths: Sequence[int], weights: Sequence[float] | None, seed: int, shuffle: bool = True) -> None:
        self.lengths = [int(n) for n in lengths]
        self.num_samples = sum(self.lengths)
        self.weights = list(weights) if weights is not None else list(self.lengths)
        self.counts = allocate(self.num_samples, self.weights)
        for n, c, w in zip(self.lengths, self.counts, self.weights):
            if c > 0 and n == 0:
                raise DatasetError(f"dataset_weights: a dataset with weight {w} has no training windows")
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of `epoch`."""
        self.epoch = epoch

    def _draw(self, i: int) -> np.ndarray:
        n, c = self.lengths[i], self.counts[i]
        start = self.epoch * c  # windows of component i drawn before this epoch
        out = np.empty(c, np.int64)
        j = 0
        while j < c:
            cycle, pos = divmod(start + j, n)
            perm = np.random.default_rng([self.seed, i, cycle]).permutation(n)
            take = min(n - pos, c - j)
            out[j:j + take] = perm[pos:pos + take]
            j += take
        return out + self.offsets[i]

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        labels = np.repeat(np.arange(len(self.lengths)), self.counts)
        labels = np.random.default_rng([self.seed, self.epoch]).permutation(labels)
        order = np.empty(self.num_samples, np.int64)
        for i in range(len(self.lengths)):
            order[labels == i] = self._draw(i)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.num_samples


def mixture_info(mixture: Mixture, train_episodes: Sequence[Sequence[int]], val_episodes: Sequence[Sequence[int]],
                 train_windows: Sequence[int]) -> list[dict[str, Any]]:
    """Per dataset: name, fingerprint, episodes train/validation, training windows, sampling share, robots."""
    weights = mixture.weights if mixture.weights is not None else [float(n) for n in train_windows]
    total = sum(weights) or 1.0
    return [{"name": ds.spec.name, "fingerprint": ds.spec.fingerprint, "train_episodes": len(tr),
             "validation_episodes": len(va), "windows": int(n), "weight": round(w / total, 6),
             "robots": list(ds.spec.robots)}
            for ds, tr, va, n, w in zip(mixture.datasets, train_episodes, val_episodes, train_windows, weights)]


__all__ = ["RELATIVE_ACTIONS_UNSUPPORTED", "STATISTICS_MODES", "Mixture", "MixtureSampler", "MixtureWindows", "allocate", "build_mixture",
           "check_names_and_weights", "check_robot_spec", "dataset_names", "mixture_info", "pool_statistics"]

"""Training windows: inputs at t (with history), outputs t..t+H-1 clamped with `is_pad`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import DatasetError
from neuracore.ml.core.relative_actions import RelativePair, to_delta
from neuracore.ml.datasets.data_spec import ResolvedFeature
from neuracore.ml.datasets.encoded import EncodedImages, is_jpeg_feature
from neuracore.ml.datasets.format import MaterializedDataset, decode_images


def split_episodes(num_episodes: int, validation_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Split episode indices (never frames) into train/validation, deterministically from `seed`."""
    order = np.random.default_rng(seed).permutation(num_episodes)
    n_val = round(num_episodes * validation_split) if num_episodes > 1 else 0
    if validation_split > 0 and num_episodes > 1:
        n_val = min(max(n_val, 1), num_episodes - 1)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def _read_rows(table: pa.Table, column: str, start: int, length: int, width: int, dtype: str) -> np.ndarray:
    """One contiguous slice of a fixed-size-list column as `[length, width]` (zero-copy when possible)."""
    chunked = table.column(column).slice(start, length)
    chunks = chunked.chunks
    arr = chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(length, width).astype(dtype, copy=False)


class WindowDataset(torch.utils.data.Dataset):
    """Map-style dataset of windows over the selected episodes of a materialised dataset.

    With `encoded_images=True`, image features stored as JPEG are not decoded here (in the loader
    workers) but served as `EncodedImages`, for `encoded.collate` and a device-side decode
    (`trainers.prefetch`); PNG and raw images are read as always.

    With `relative_actions` (core/relative_actions.py), the pairs' output items are served as deltas
    to the paired input at the window's last observation t (here, in the loader workers), so the
    batch format and every algorithm's step stay as they are.
    """

    def __init__(
        self,
        dataset: MaterializedDataset,
        inputs: dict[DataType, ResolvedFeature],
        outputs: dict[DataType, ResolvedFeature],
        episodes: Sequence[int],
        history: int,
        horizon: int,
        default_language: str = "",
        encoded_images: bool = False,
        relative_actions: Sequence[RelativePair] = (),
    ) -> None:
        self.table = dataset.table
        self.spec = dataset.spec
        self.inputs = inputs
        self.outputs = outputs
        self.history = int(history)
        self.horizon = int(horizon)
        self.default_language = default_language
        eps = [self.spec.episodes[e] for e in episodes]
        self.episode_ids = np.repeat(np.asarray(list(episodes), np.int64), [e.length for e in eps])
        self.frame_ids = np.concatenate([np.arange(e.length) for e in eps]) if eps else np.zeros(0, np.int64)
        self._widths = {name: col.row_width for name, col in self.spec.columns.items()}
        self.encoded_images = encoded_images
        self.relative_actions = list(relative_actions)

    def __len__(self) -> int:
        return len(self.frame_ids)

    def _vector(self, feature: ResolvedFeature, start: int, n: int) -> np.ndarray:
        col = feature.columns[0]
        rows = _read_rows(self.table, col, start, n, self._widths[col], "float32")
        return rows[:, feature.value_index]

    def _images(self, feature: ResolvedFeature, start: int, n: int) -> np.ndarray:
        h, w, c = feature.item_shape
        cams = []
        for col in feature.columns:
            if self.spec.columns[col].encoding == "raw":
                cams.append(_read_rows(self.table, col, start, n, h * w * c, self.spec.columns[col].dtype)
                            .reshape(n, h, w, c))
            else:  # PNG/JPEG bytes: decoded here, i.e. in the DataLoader workers
                frames = self.table.column(col).slice(start, n).to_pylist()
                cams.append(decode_images(frames, [h, w, c], f"column {col} row {start}"))
        return np.ascontiguousarray(np.stack(cams, 1).transpose(0, 1, 4, 2, 3))  # [n, N_cam, C, H, W]

    def _encoded(self, feature: ResolvedFeature, start: int, n: int, rows: np.ndarray) -> EncodedImages:
        """The JPEG bytes of frames `start + rows` (of the `n` from `start`), undecoded, as `[T, N_cam, C, H, W]`."""
        h, w, c = feature.item_shape
        cams = [self.table.column(col).slice(start, n).to_pylist() for col in feature.columns]
        frames = [cam[r] for r in rows.tolist() for cam in cams]  # row-major over [T, N_cam]
        if any(not f for f in frames):
            raise DatasetError(f"columns {feature.columns} rows {start}..{start + n - 1}: a frame has no JPEG bytes")
        return EncodedImages.from_frames(frames, (len(rows), len(cams), c, h, w))

    def __getitem__(self, index: int) -> dict[str, Any]:
        ep_id = int(self.episode_ids[index])
        t = int(self.frame_ids[index])
        ep = self.spec.episodes[ep_id]
        length = ep.length
        in_steps = np.clip(np.arange(t - self.history + 1, t + 1), 0, length - 1)
        out_range = np.arange(t, t + self.horizon)
        out_steps = np.minimum(out_range, length - 1)
        sample: dict[str, Any] = {keys.INPUTS: {}, keys.INPUT_MASKS: {}, keys.OUTPUTS: {}, keys.OUTPUT_MASKS: {}}
        # One contiguous slice covers every row a vector feature needs.
        lo = int(in_steps[0])
        hi = int(max(in_steps[-1], out_steps[-1])) + 1
        vector_cache: dict[str, np.ndarray] = {}
        for side, features, steps in (
            ("in", self.inputs, in_steps),
            ("out", self.outputs, out_steps),
        ):
            values_key = keys.INPUTS if side == "in" else keys.OUTPUTS
            masks_key = keys.INPUT_MASKS if side == "in" else keys.OUTPUT_MASKS
            for dt, feature in features.items():
                if dt.modality == Modality.LANGUAGE:
                    continue
                if dt.modality == Modality.VECTOR:
                    cache_key = f"{dt.value}:{','.join(feature.items)}"
                    if cache_key not in vector_cache:
                        vector_cache[cache_key] = self._vector(feature, ep.start + lo, hi - lo)
                    values = vector_cache[cache_key][steps - lo]
                else:  # images are only read for the input rows
                    first, n = ep.start + int(steps[0]), int(steps[-1] - steps[0]) + 1
                    if self.encoded_images and is_jpeg_feature(self.spec, feature):
                        values = self._encoded(feature, first, n, steps - steps[0])
                    else:
                        values = self._images(feature, first, n)[steps - steps[0]]
                sample[values_key][dt.value] = values
                sample[masks_key][dt.value] = feature.robot_masks[ep.robot]
        if self.relative_actions:
            sample[keys.OUTPUTS] = to_delta(sample[keys.OUTPUTS], sample[keys.INPUTS], self.relative_actions)
        sample[keys.IS_PAD] = out_range >= length
        if DataType.LANGUAGE in self.inputs:
            sample[keys.LANGUAGE] = ep.language or self.default_language
        return sample

"""JPEG frames that travel from the loader workers still encoded and are decoded on the device.

A `WindowDataset(..., encoded_images=True)` puts an `EncodedImages` where the uint8 image tensor
of a JPEG-stored DataType would be; `collate` batches it beside `default_collate` for the rest;
`decode_encoded` (used by `neuracore.ml.trainers.prefetch.to_device`) turns it into the usual
`[B, T, N_cam, C, H, W]` uint8 tensor in one batched torchvision call.

Pixels. On the CPU, torchvision's `decode_jpeg` and the workers' Pillow decoder
(`format.decode_images`) are both libjpeg-turbo (3.1.3 bundled with torchvision 0.29.1, 3.2.0 with
Pillow 13.0) with its default integer IDCT; on frames written by `format.encode_image` (quality 95,
4:4:4, so no chroma upsampling) they were measured bit-identical (max abs difference 0), and the
tests assert equality. On CUDA the frames go through nvJPEG, whose IDCT and colour conversion are
NVIDIA's own, so expect small differences, not equality; we have no measurement of our own, and
the bound we use is the one torchvision's own test (`test_decode_jpegs_cuda`) asserts against its
CPU decoder: a mean absolute difference below 2 grey levels. The CUDA test here asserts that bound
and reports the measured maximum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import default_collate

from neuracore.ml.core.data_types import Modality
from neuracore.ml.core.errors import DatasetError, one_line
from neuracore.ml.datasets.data_spec import ResolvedFeature
from neuracore.ml.datasets.format import DatasetSpec

if TYPE_CHECKING:
    from neuracore.ml.datasets.windows import WindowDataset


@dataclass(frozen=True, eq=False)  # tensors: no elementwise `==` by accident
class EncodedImages:
    """JPEG frames of one image DataType, to be decoded into a uint8 tensor of `shape`.

    The frames lie back to back in one 1-D uint8 tensor (frame i is `data[offsets[i]:offsets[i+1]]`),
    in row-major order of `shape[:-3]`, so that a batch crosses from a worker process as one
    shared-memory tensor rather than one per frame. `shape` ends in `(C, H, W)`: `(T, N_cam, C, H, W)`
    for a sample, `(B, T, N_cam, C, H, W)` for a batch. No `pin_memory`/`to` methods on purpose:
    nvJPEG reads the bytes from ordinary host memory, so the loader and `send_to_device` leave them be.
    """

    data: torch.Tensor
    offsets: tuple[int, ...]
    shape: tuple[int, ...]

    @classmethod
    def from_frames(cls, frames: Sequence[bytes], shape: Sequence[int]) -> EncodedImages:
        """Pack encoded frames (row-major over `shape[:-3]`) into one buffer."""
        offsets = tuple(np.concatenate([[0], np.cumsum([len(f) for f in frames])]).tolist())
        # bytearray.join copies once, into a writable buffer that torch.frombuffer can share.
        data = torch.frombuffer(bytearray().join(frames), dtype=torch.uint8) if offsets[-1] else \
            torch.empty(0, dtype=torch.uint8)
        return cls(data, offsets, tuple(int(s) for s in shape))

    @property
    def frames(self) -> list[torch.Tensor]:
        """One 1-D uint8 view per frame (no copies), the input `torchvision.io.decode_jpeg` takes."""
        return [self.data[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    @classmethod
    def stack(cls, items: Sequence[EncodedImages]) -> EncodedImages:
        """The batch of per-sample `items`: a leading batch dimension, frames in sample order."""
        shapes = {item.shape for item in items}
        if len(shapes) != 1:
            raise DatasetError(f"encoded images of different shapes in one batch: {sorted(shapes)}")
        offsets, base = [0], 0
        for item in items:
            offsets.extend(base + o for o in item.offsets[1:])
            base += item.offsets[-1]
        return cls(torch.cat([item.data for item in items]), tuple(offsets), (len(items), *items[0].shape))


def is_jpeg_feature(spec: DatasetSpec, feature: ResolvedFeature) -> bool:
    """Whether every camera column of `feature` is stored as JPEG (then it can be decoded on the device)."""
    if feature.data_type.modality != Modality.IMAGE or not feature.columns:
        return False
    return all(spec.columns[c].encoding == "jpeg" for c in feature.columns)


def has_jpeg_images(windows: WindowDataset) -> bool:
    """Whether `windows` has a JPEG-stored image feature (so `encoded_images=True` would change anything)."""
    return any(is_jpeg_feature(windows.spec, f) for f in [*windows.inputs.values(), *windows.outputs.values()])


def collate(samples: Sequence[Any]) -> Any:
    """`default_collate`, except that the samples' `EncodedImages` are gathered into one `EncodedImages`."""
    first = samples[0]
    if isinstance(first, EncodedImages):
        return EncodedImages.stack(samples)
    if isinstance(first, Mapping):  # the batch is nested dicts (core.batch); recurse to find the images
        return {key: collate([sample[key] for sample in samples]) for key in first}
    return default_collate(samples)


def decode_encoded(images: EncodedImages, device: torch.device) -> torch.Tensor:
    """Decode every frame in one batched `torchvision.io.decode_jpeg` call: uint8 `images.shape` on `device`.

    On CUDA (nvJPEG) it runs on, and first drains, the current stream: torchvision's decoder
    allocates its outputs on the current stream but writes them from a private stream that is not
    ordered after it (pytorch/vision#9606), so a block the caching allocator recycled from work still
    queued on the current stream could be overwritten. Call it on a side stream (as
    `trainers.prefetch.DevicePrefetcher` does) so that draining costs only that stream's copies.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    c, h, w = images.shape[-3:]
    if len(images.offsets) == 1:
        return torch.empty(images.shape, dtype=torch.uint8, device=device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.current_stream(device).synchronize()
    mode = ImageReadMode.RGB if c == 3 else ImageReadMode.GRAY
    try:
        decoded = decode_jpeg(images.frames, mode=mode, device=device if on_gpu else "cpu")
    except RuntimeError as exc:
        raise DatasetError(f"JPEG frames cannot be decoded ({one_line(exc)})") from None
    for i, frame in enumerate(decoded):
        if frame.shape != (c, h, w):  # host-side metadata: no device sync
            raise DatasetError(f"JPEG frame {i} decodes to shape {list(frame.shape)}, expected {[c, h, w]}")
    return torch.stack(decoded).view(images.shape).to(device)

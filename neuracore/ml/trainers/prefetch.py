"""Batches on the device one step ahead: copied on a side CUDA stream, JPEG frames decoded there.

`DevicePrefetcher(loader, device)` yields what iterating `loader` yields, in the same order, with
every tensor on `device` and every `EncodedImages` (windows made with `encoded_images=True`,
loader with `collate_fn=encoded.collate`) decoded to its `[B, T, N_cam, C, H, W]` uint8 tensor.
It owns the host-to-device copy, so a loader passed through `accelerator.prepare` must not also
place batches: prepare it with `accelerator.prepare_data_loader(loader, device_placement=False)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from accelerate.utils import send_to_device

from neuracore.ml.datasets.encoded import EncodedImages, decode_encoded

_END = object()


def to_device(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """`batch` with every tensor on `device` and every `EncodedImages` decoded there (other values as they are)."""
    device = torch.device(device)
    if isinstance(batch, EncodedImages):
        return decode_encoded(batch, device)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device, non_blocking) for k, v in batch.items()})
    return send_to_device(batch, device, non_blocking=non_blocking)  # tensors, lists (of strings), ...


def _record_stream(value: Any, stream: torch.cuda.Stream) -> None:
    """Mark every CUDA tensor in `value` as used by `stream`."""
    if isinstance(value, torch.Tensor):
        if value.is_cuda:
            value.record_stream(stream)
    elif isinstance(value, Mapping):
        for item in value.values():
            _record_stream(item, stream)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _record_stream(item, stream)


class DevicePrefetcher:
    """Iterate `loader` with each batch already on `device`: copied (and JPEG-decoded) one step ahead."""

    def __init__(self, loader: Iterable[Any], device: torch.device | str) -> None:
        self.loader = loader
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self._stream: torch.cuda.Stream | None = None

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        if self.device.type != "cuda":  # nothing to overlap with: copy (decode) in line
            for batch in self.loader:
                yield to_device(batch, self.device)
            return
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        side = self._stream
        batches = iter(self.loader)
        pending = self._load(batches, side)
        while pending is not _END:
            current = torch.cuda.current_stream(self.device)
            # The step's stream waits for this batch's copy only (recorded before the next copy is queued).
            current.wait_stream(side)
            # The batch was allocated on the side stream; without this the caching allocator could hand
            # its memory to the next copy as soon as Python drops it, while the step still reads it.
            _record_stream(pending, current)
            batch = pending
            # Queue the next copy now, so that it runs while the step on `batch` runs. Its pinned host
            # source may be dropped at once: the caching host allocator keeps a pinned block until the
            # copy that reads it has finished.
            pending = self._load(batches, side)
            yield batch

    def _load(self, batches: Iterator[Any], side: torch.cuda.Stream) -> Any:
        """The next batch of `batches` queued for the device on `side`, or `_END`."""
        host = next(batches, _END)
        if host is _END:
            return _END
        with torch.cuda.stream(side):
            return to_device(host, self.device, non_blocking=True)

"""Compact imports: `--image-size` (area interpolation, letterbox or centre crop) and `--jpeg-quality`.

Resizing. Frames are resized with Pillow's `Image.BOX` filter (area interpolation as Pillow does
it, not OpenCV's `INTER_AREA`): each output pixel is the plain mean of the source pixels whose
centres lie inside its footprint. At integer factors (480x640 -> 240x320) that is exact area
averaging, identical to `Image.reduce` and to `INTER_AREA`; at other factors a source pixel on a
footprint's edge counts whole or not at all where `INTER_AREA` would weight it by its overlap (a
row straddling two colours averages the two pixels it holds). Enlarging repeats source pixels.
The aspect ratio is kept:

- `letterbox` (the default): the whole frame is scaled to fit inside `H x W` and centred; the rows
  or columns left over are black (zero). 480x640 -> 224x224 gives a 168x224 picture with 28 black
  rows above and below. Nothing of the scene is lost.
- `crop`: the largest centred region of the source with the target's aspect ratio is cut out and
  scaled to `H x W`. 480x640 -> 224x224 keeps source columns 80..559. Every output pixel is scene.

Both run in the import's worker processes (`--workers`), before encoding, so the stored frames,
the spec's image shapes and the image statistics all describe the resized frames.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuracore.ml.core.errors import ConfigError

RESIZE_MODES = ("letterbox", "crop")
INTERPOLATION = "area (PIL Image.BOX)"
MAX_IMAGE_SIDE = 8192  # a larger target is surely a typo (and would be huge on disk)
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
_USAGE = "give HxW for every camera (e.g. 224x224) or CAMERA=HxW,... (e.g. top=224x224,wrist=128x128)"


def _parse_hw(text: str, value: str) -> tuple[int, int]:
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(f"--image-size {value!r}: {text.strip()!r} is not HxW; {_USAGE}")
    h, w = int(m[1]), int(m[2])
    if not (0 < h <= MAX_IMAGE_SIDE and 0 < w <= MAX_IMAGE_SIDE):
        raise ConfigError(f"--image-size {value!r}: height and width must be integers from 1 to {MAX_IMAGE_SIDE}, "
                          f"got {h}x{w}")
    return h, w


def parse_image_size(value: str | Mapping[str, Any] | tuple[int, int] | None) -> dict[str, tuple[int, int]] | None:
    """`--image-size` as `{camera: (H, W)}`; the key `"*"` means every camera. None: keep sizes.

    Accepts `"224x224"`, `"top=224x224,wrist=128x128"`, `(224, 224)` or a `{camera: "HxW" | (H, W)}`
    mapping; anything else is a one-line `ConfigError` naming the option and the value.
    """
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        value = "x".join(str(v) for v in value)
    if isinstance(value, Mapping):
        value = ",".join(f"{k}={'x'.join(map(str, v)) if isinstance(v, (tuple, list)) else v}" for k, v in value.items())
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"--image-size {value!r}: {_USAGE}")
    if "=" not in value:
        return {"*": _parse_hw(value, value)}
    out: dict[str, tuple[int, int]] = {}
    for part in value.split(","):
        camera, eq, size = part.partition("=")
        camera = camera.strip()
        if not eq or not camera:
            raise ConfigError(f"--image-size {value!r}: {part.strip()!r} is not CAMERA=HxW; {_USAGE}")
        if camera in out:
            raise ConfigError(f"--image-size {value!r}: camera {camera!r} is given twice")
        out[camera] = _parse_hw(size, value)
    return out


def check_resize_mode(mode: str) -> str:
    """`--resize-mode`, or a one-line error."""
    if mode not in RESIZE_MODES:
        raise ConfigError(f"--resize-mode {mode!r}: valid: {', '.join(RESIZE_MODES)}")
    return mode


def check_jpeg_quality(quality: Any, encoding: str) -> int | None:
    """`--jpeg-quality` as an int 1..100, only with `--image-encoding jpeg`; None: the default (95)."""
    if quality is None:
        return None
    text = str(quality).strip()
    if isinstance(quality, bool) or not re.fullmatch(r"\d+", text) or not 1 <= int(text) <= 100:
        raise ConfigError(f"--jpeg-quality {quality!r}: must be an integer from 1 to 100")
    if encoding != "jpeg":
        raise ConfigError(f"--jpeg-quality {text}: only applies to --image-encoding jpeg (this import stores "
                          f"{encoding!r} frames)")
    return int(text)


def plan_resize(item_shapes: dict[Any, dict[str, list[int]]], sizes: Mapping[str, tuple[int, int]] | None,
                mode: str, jpeg_quality: int | None) -> tuple[ImageProcessing, dict[str, list[int]]]:
    """Apply `--image-size` to a layout's `item_shapes` ({DataType: {camera: [H, W, C]}}, changed in place).

    Returns the processing the workers apply (per camera column its target) and the source shapes
    of the resized columns. A camera named in `sizes` that no image stream has is a one-line error.
    """
    from neuracore.ml.core.data_types import Modality
    from neuracore.ml.datasets.format import column_name

    processing = ImageProcessing(mode=check_resize_mode(mode), jpeg_quality=jpeg_quality)
    source: dict[str, list[int]] = {}
    if not sizes:
        return processing, source
    cameras = sorted({cam for dt, per in item_shapes.items() if dt.modality == Modality.IMAGE for cam in per})
    unknown = [c for c in sizes if c != "*" and c not in cameras]
    if unknown:
        raise ConfigError(f"--image-size: camera {unknown[0]!r} is not in the source; cameras: "
                          f"{', '.join(cameras) or 'none'}")
    for dt, per in item_shapes.items():
        if dt.modality != Modality.IMAGE:
            continue
        for cam, shape in per.items():
            hw = sizes.get(cam, sizes.get("*"))
            if hw is None:
                continue
            col = column_name(dt, cam)
            processing.sizes[col] = (int(hw[0]), int(hw[1]))
            source[col] = list(shape)
            per[cam] = [int(hw[0]), int(hw[1]), *shape[2:]]
    return processing, source


@dataclass
class ImageProcessing:
    """What happens to camera frames on import: per camera column its target `[H, W]`, and how."""

    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # column name -> (H, W); absent: as is
    mode: str = "letterbox"
    jpeg_quality: int | None = None  # None: format.JPEG_QUALITY

    def describe(self, source_shapes: Mapping[str, list[int]]) -> dict[str, Any]:
        """The JSON record kept in `spec.source["images"]` (and shown by `info`)."""
        from neuracore.ml.datasets.format import JPEG_QUALITY

        out: dict[str, Any] = {}
        if self.sizes:  # every resized camera column: its source and stored [H, W]
            out.update(resize_mode=self.mode, interpolation=INTERPOLATION,
                       resized={c: {"from": list(source_shapes[c][:2]), "to": list(hw)} for c, hw in self.sizes.items()})
        out["jpeg_quality"] = self.jpeg_quality or JPEG_QUALITY
        return out


def fit(src_hw: tuple[int, int], dst_hw: tuple[int, int], mode: str) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Where a `src_hw` frame goes in a `dst_hw` one: (source box, destination box), boxes as (top, left, h, w).

    letterbox: the whole source into the largest centred destination box of the same aspect ratio.
    crop: the largest centred source box with the destination's aspect ratio into the whole destination.
    """
    sh, sw = src_hw
    dh, dw = dst_hw
    if mode == "letterbox":
        scale = min(dh / sh, dw / sw)
        h, w = max(1, min(dh, round(sh * scale))), max(1, min(dw, round(sw * scale)))
        return (0, 0, sh, sw), ((dh - h) // 2, (dw - w) // 2, h, w)
    scale = max(dh / sh, dw / sw)
    h, w = max(1, min(sh, round(dh / scale))), max(1, min(sw, round(dw / scale)))
    return ((sh - h) // 2, (sw - w) // 2, h, w), (0, 0, dh, dw)


def resize_frames(frames: np.ndarray, dst_hw: tuple[int, int], mode: str) -> np.ndarray:
    """`[T, H, W, C]` frames (uint8 RGB or float32 depth, C = 1) resized to `[T, *dst_hw, C]`.

    Area interpolation (`Image.BOX`), aspect ratio kept by `mode` (module docstring); letterbox
    padding is zero. Frames already of size `dst_hw` are returned unchanged (no copy).
    """
    from PIL import Image

    t, sh, sw, c = frames.shape
    if (sh, sw) == tuple(dst_hw):
        return frames
    (st, sl, shh, sww), (dt, dl, dh, dw) = fit((sh, sw), dst_hw, mode)
    out = np.zeros((t, dst_hw[0], dst_hw[1], c), frames.dtype)
    box = (sl, st, sl + sww, st + shh)
    for i in range(t):
        frame = frames[i]
        if frames.dtype == np.uint8:
            img = Image.fromarray(frame[..., 0] if c == 1 else frame)
        else:  # depth: one float32 channel ("F" mode), resized with the same filter
            img = Image.fromarray(np.ascontiguousarray(frame[..., 0], dtype=np.float32))
        small = np.asarray(img.resize((dw, dh), Image.BOX, box=box))
        out[i, dt:dt + dh, dl:dl + dw] = small.reshape(dh, dw, c).astype(frames.dtype, copy=False)
    return out

"""Batched on-device image augmentation with per-sample parameters (`training.augmentation.*`).

torchvision's v2 transforms draw one set of parameters per call, so on a batched tensor every sample
gets the same crop and the same colour change; a policy then sees only B distinct augmentations per
epoch instead of one per sample. Here parameters are drawn per (sample, camera) from torch's global
RNG on the batch's device — the run's RNG, saved in every checkpoint — so training stays exactly
resumable, and the same parameters apply to every history frame of a sample (motion stays coherent).

What runs, in this order, each only when its range is not the identity:

- geometry, one `grid_sample` per batch: a random resized crop (`crop_scale`: fraction of the area
  kept, `crop_ratio`: aspect ratio of the crop relative to the image's), a rotation of up to
  `rotation_degrees` and a translation of up to `translate` (fraction of width/height); the output has
  the input's size, bilinear, zeros outside the image (as torchvision's `RandomAffine`);
- colour, as torchvision's functional ops with a factor per sample (tests compare sample by sample):
  brightness, contrast, saturation, hue, sharpness — LeRobot's set and its default ranges.

Images come in as uint8 `[B, T, N_cam, C, H, W]` (or floats in [0, 1]) and leave as float32 in [0, 1],
which every algorithm's `images_to_unit_float` takes as is. The ops are differentiable in the pixels.
Augmentation runs in the training step only: validation, export and inference never see it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F

from neuracore.ml.core import batch as keys
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError

GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
CPU_CHUNK = 4  # images per pass of the colour ops on a CPU
PARAMS_KEY = "augmentation_params"  # where the compiled step carries the parameters drawn outside its graph
RANGE_KEYS = ("crop_scale", "crop_ratio", "brightness", "contrast", "saturation", "hue", "sharpness")
IDENTITY: dict[str, tuple[float, float]] = {
    "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "brightness": (1.0, 1.0), "contrast": (1.0, 1.0),
    "saturation": (1.0, 1.0), "hue": (0.0, 0.0), "sharpness": (1.0, 1.0),
}


@dataclass
class AugmentationOptions:
    """`training.augmentation.*` keys (ranges are [low, high]; the identity range turns an op off)."""

    enabled: bool = False
    crop_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [1.0, 1.0])
    rotation_degrees: float = 0.0
    translate: float = 0.0
    brightness: list[float] = field(default_factory=lambda: [0.8, 1.2])
    contrast: list[float] = field(default_factory=lambda: [0.8, 1.2])
    saturation: list[float] = field(default_factory=lambda: [0.5, 1.5])
    hue: list[float] = field(default_factory=lambda: [-0.05, 0.05])
    sharpness: list[float] = field(default_factory=lambda: [0.5, 1.5])
    cameras: dict[str, Any] = field(default_factory=dict)  # camera -> {key: value} overrides, or false (none)


_VALID = {  # key -> (low bound, high bound) each end of its range must lie in
    "crop_scale": (1e-3, 1.0), "crop_ratio": (1e-2, 1e2), "brightness": (0.0, 10.0), "contrast": (0.0, 10.0),
    "saturation": (0.0, 10.0), "hue": (-0.5, 0.5), "sharpness": (0.0, 10.0),
}


def parse_augmentation(node: Any, key: str = "training.augmentation") -> AugmentationOptions:
    """Validate the `training.augmentation` mapping (one-line errors naming the key and the valid range)."""
    if node is None:
        return AugmentationOptions()
    if not isinstance(node, dict):
        raise ConfigError(f"{key}={node!r}: expected a mapping like {{enabled: true, brightness: [0.8, 1.2]}}")
    options = _options(dict(node), key, AugmentationOptions())
    cameras: dict[str, Any] = {}
    for camera, override in (options.cameras or {}).items():
        where = f"{key}.cameras.{camera}"
        if override is False or override is None:
            cameras[str(camera)] = False
        elif isinstance(override, dict):
            if "cameras" in override or "enabled" in override and override["enabled"] is not False:
                raise ConfigError(f"{where}: per-camera overrides take the range keys (and enabled: false) only")
            if override.get("enabled") is False:
                cameras[str(camera)] = False
            else:
                cameras[str(camera)] = _options(dict(override), where, replace(options, cameras={}))
        else:
            raise ConfigError(f"{where}={override!r}: expected a mapping of overrides or false (no augmentation)")
    options.cameras = cameras
    return options


def _options(node: dict[str, Any], key: str, base: AugmentationOptions) -> AugmentationOptions:
    names = [f.name for f in fields(AugmentationOptions)]
    values: dict[str, Any] = {}
    for name, value in node.items():
        if name not in names:
            raise ConfigError(f"{key}.{name}: unknown key; valid: {', '.join(names)}")
        where = f"{key}.{name}"
        if name == "enabled":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}={value!r}: expected true or false")
        elif name == "cameras":
            value = {} if value is None else value
            if not isinstance(value, dict):
                raise ConfigError(f"{where}={value!r}: expected a mapping {{camera: {{key: value}} or false}}")
        elif name in RANGE_KEYS:
            value = _range(where, value, *_VALID[name])
        else:  # rotation_degrees, translate
            limit = 180.0 if name == "rotation_degrees" else 1.0
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= limit:
                raise ConfigError(f"{where}={value!r}: expected a number in [0, {limit:g}]")
            value = float(value)
        values[name] = value
    return replace(base, **values)


def _range(key: str, value: Any, low: float, high: float) -> list[float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)):
        raise ConfigError(f"{key}={value!r}: expected [low, high]")
    lo, hi = float(value[0]), float(value[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and low <= lo <= hi <= high):
        raise ConfigError(f"{key}={value!r}: need {low:g} <= low <= high <= {high:g}")
    return [lo, hi]


class ImageAugmenter:
    """Draws per-(sample, camera) parameters and applies them to a batch's RGB images (see module doc)."""

    def __init__(self, options: AugmentationOptions, cameras: list[str]) -> None:
        unknown = sorted(set(options.cameras) - set(cameras))
        if unknown:
            raise ConfigError(f"training.augmentation.cameras: {', '.join(unknown)} not among the model's cameras "
                              f"({', '.join(cameras) or 'none'})")
        per_camera = [options.cameras.get(c, options) for c in cameras]
        self.cameras = list(cameras)
        self.active = [o is not False for o in per_camera]
        resolved = [o if o is not False else _identity(options) for o in per_camera]
        # [N, 2] ranges per key, kept on the host; moved to the device with the first batch
        self.ranges = {k: torch.tensor([getattr(o, k) for o in resolved], dtype=torch.float32) for k in RANGE_KEYS}
        self.rotation = torch.tensor([math.radians(o.rotation_degrees) for o in resolved], dtype=torch.float32)
        self.translate = torch.tensor([o.translate for o in resolved], dtype=torch.float32)
        # Static choices (Python branches decided once, so a compiled step has one graph)
        self.geometric = any(getattr(o, k) != list(IDENTITY[k]) for o in resolved for k in ("crop_scale", "crop_ratio")) \
            or bool(self.rotation.any()) or bool(self.translate.any())
        self.colour = [k for k in ("brightness", "contrast", "saturation", "hue", "sharpness")
                       if any(list(getattr(o, k)) != list(IDENTITY[k]) for o in resolved)]
        self._device: torch.device | None = None

    @property
    def does_anything(self) -> bool:
        """False when every op is the identity for every camera."""
        return any(self.active) and (self.geometric or bool(self.colour))

    def _on(self, device: torch.device) -> None:
        if self._device != device:
            self.ranges = {k: v.to(device) for k, v in self.ranges.items()}
            self.rotation, self.translate = self.rotation.to(device), self.translate.to(device)
            self._device = device

    def sample(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameters for `[B, T, N, C, H, W]` images: `[B, N]` tensors drawn from the global RNG on their device."""
        b, n = images.shape[0], images.shape[2]
        if n != len(self.cameras):
            raise ValueError(f"images have {n} cameras, the augmenter was built for {len(self.cameras)}")
        device = images.device
        self._on(device)

        def uniform(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
            return low + (high - low) * torch.rand(b, n, device=device)

        params = {k: uniform(self.ranges[k][:, 0], self.ranges[k][:, 1]) for k in RANGE_KEYS}
        if self.geometric:
            params["angle"] = uniform(-self.rotation, self.rotation)
            params["shift_x"] = uniform(-self.translate, self.translate)
            params["shift_y"] = uniform(-self.translate, self.translate)
            params["center_x"] = torch.rand(b, n, device=device) * 2 - 1  # where the crop sits, in its free range
            params["center_y"] = torch.rand(b, n, device=device) * 2 - 1
        return params

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[B, T, N, C, H, W]` uint8 or [0, 1] floats → augmented float32 in [0, 1] (same shape)."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        b, t, n, c, h, w = x.shape
        flat = x.permute(0, 2, 1, 3, 4, 5).reshape(b * n, t * c, h, w)  # one image stack per (sample, camera)
        per = {k: v.reshape(b * n) for k, v in params.items()}
        if self.geometric:
            flat = _geometry(flat, per, h, w)
        if self.colour:
            imgs = flat.reshape(b * n * t, c, h, w)
            rep = {k: v.repeat_interleave(t) for k, v in per.items()}
            ops = [op for op in self.colour if c == 3 or op in ("brightness", "contrast", "sharpness")]  # grey: no hue
            # On a CPU a few images at a time stay in cache across the ops (2x faster at 224x224); a GPU takes all.
            step = imgs.shape[0] if imgs.is_cuda else CPU_CHUNK
            parts = []
            for i in range(0, imgs.shape[0], step):
                part = imgs[i : i + step]
                for op in ops:
                    part = _COLOUR_OPS[op](part, rep[op][i : i + step])
                parts.append(part)
            flat = (parts[0] if len(parts) == 1 else torch.cat(parts)).reshape(b * n, t * c, h, w)
        out = flat.reshape(b, n, t, c, h, w).permute(0, 2, 1, 3, 4, 5)
        if not all(self.active):  # cameras switched off keep their pixels
            keep = torch.tensor(self.active, device=out.device).view(1, 1, n, 1, 1, 1)
            out = torch.where(keep, out, x)
        return out.contiguous()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with its RGB images augmented (a new dict; the input batch is left as it was)."""
        images = batch[keys.INPUTS].get(DataType.RGB_IMAGES.value)
        if images is None or not self.does_anything:
            return batch
        return with_images(batch, self.apply(images, self.sample(images)))


def with_images(batch: dict[str, Any], images: torch.Tensor) -> dict[str, Any]:
    """A shallow copy of `batch` whose RGB images are `images`."""
    inputs = dict(batch[keys.INPUTS])
    inputs[DataType.RGB_IMAGES.value] = images
    return {**batch, keys.INPUTS: inputs}


def build_augmenter(options: AugmentationOptions, cameras: list[str]) -> ImageAugmenter | None:
    """The augmenter for the model's cameras, or None when augmentation is off or does nothing."""
    if not options.enabled or not cameras:
        return None
    augmenter = ImageAugmenter(options, cameras)
    return augmenter if augmenter.does_anything else None


def _identity(options: AugmentationOptions) -> AugmentationOptions:
    return replace(options, rotation_degrees=0.0, translate=0.0, cameras={},
                   **{k: list(v) for k, v in IDENTITY.items()})


def _geometry(x: torch.Tensor, p: dict[str, torch.Tensor], h: int, w: int) -> torch.Tensor:
    """Random resized crop + rotation + translation as one affine `grid_sample` (output size = input size)."""
    # crop half-extent in normalised units: area fraction s, aspect r (relative to the image's)
    sw = torch.sqrt(p["crop_scale"] * p["crop_ratio"]).clamp(max=1.0)
    sh = torch.sqrt(p["crop_scale"] / p["crop_ratio"]).clamp(max=1.0)
    cx = p["center_x"] * (1 - sw) + p["shift_x"] * 2
    cy = p["center_y"] * (1 - sh) + p["shift_y"] * 2
    cos, sin = torch.cos(p["angle"]), torch.sin(p["angle"])
    aspect = h / w  # a rotation in pixel space, written in normalised coordinates
    theta = torch.stack([
        torch.stack([cos * sw, -sin * sh * aspect, cx], dim=-1),
        torch.stack([sin * sw / aspect, cos * sh, cy], dim=-1),
    ], dim=1)  # [M, 2, 3]: input coordinate = theta @ (output x, output y, 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * a + (1 - f) * b).clamp(0.0, 1.0)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GRAY[0] * r + GRAY[1] * g + GRAY[2] * b).unsqueeze(1)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness, one factor per image."""
    return _blend(x, torch.zeros_like(x), factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_contrast (blend with the mean grey level), one factor per image."""
    mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_saturation (blend with the grey image), one factor per image."""
    return _blend(x, _gray(x), factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_sharpness (blend with a 3x3 smoothing, borders unchanged), one factor per image."""
    # the kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 is a 3x3 box sum plus 4x the centre: a pooling, not a conv
    inner = x[..., 1:-1, 1:-1]
    blurred = (F.avg_pool2d(x, 3, stride=1) * 9.0 + 4.0 * inner) / 13.0
    degenerate = F.pad(blurred - inner, (1, 1, 1, 1)) + x  # borders keep their pixels
    return _blend(x, degenerate, factor)


def hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue (shift in HSV, in turns of the colour wheel), one shift per image."""
    h, s, v = _rgb_to_hsv(x)
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(h, s, v)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.remainder((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    choices = torch.stack([  # [6 sextants, 3 channels, ...] selected by i
        torch.stack([v, q, p, p, t, v]), torch.stack([t, v, v, q, p, p]), torch.stack([p, p, t, v, v, q]),
    ], dim=1)
    index = i.unsqueeze(0).unsqueeze(0).expand(1, 3, *i.shape)
    return torch.gather(choices, 0, index).squeeze(0).permute(1, 0, 2, 3)


_COLOUR_OPS = {"brightness": brightness, "contrast": contrast, "saturation": saturation, "hue": hue,
               "sharpness": sharpness}

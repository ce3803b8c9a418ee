"""`view`: look at a dataset: one episode as a video, or the whole dataset as a contact sheet.

- `render_episode`: per frame, the episode's cameras side by side (each scaled to `CAMERA_HEIGHT`,
  aspect kept) above one line plot per vector DataType (every item a coloured line over the whole
  episode, a black cursor at the current frame, legend and value range labelled). MP4 through
  PyAV (libx264, else mpeg4; yuv420p) or GIF through Pillow (adaptive palette, loops).
- `contact_sheet`: a PNG, one row per episode (label + `frames_per_episode` thumbnails of
  `THUMB_HEIGHT` pixels, evenly spaced through the episode, from one camera).

Only the rows shown are read (an episode's row range in blocks, or a sheet's sampled rows);
JPEG/PNG frames are decoded with `format.decode_images`. Plots are drawn with Pillow's
ImageDraw. Outputs are written to a temp file in the target folder, fsynced and renamed into
place, and never replace an existing file without `overwrite`; every bad input is a one-line
error raised before anything is written.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.format import ColumnSpec, DatasetSpec, column_name, decode_images, open_dataset
from neuracore.ml.utils.atomic import fsync_dir

CAMERA_HEIGHT = 240  # video: every camera scaled to this height, aspect kept
MIN_VIDEO_WIDTH = 640  # video: the plots get at least this width even with one small camera (or none)
THUMB_HEIGHT = 96  # contact sheet: thumbnail height, aspect kept
MAX_FPS = 1000.0
MAX_FRAMES_PER_EPISODE = 64
MAX_SHEET_EPISODES = 1000
_BLOCK = 32  # video frames read, decoded and rendered together (bounds memory on long episodes)
_FONT_SIZE = 12
_LINE = 16  # text line height
_PAD = 4
_LABEL_WIDTH = 200  # contact sheet: the episode label column
_PLOT_HEIGHT = 80
_PLOT_MARGIN = 60  # left of each plot: the value range labels
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
_MUTED = (120, 120, 120)
_GRID = (215, 215, 215)
_CURSOR = (0, 0, 0)
_PLACEHOLDER = (200, 200, 200)
# Matplotlib's "tab10": ten colours told apart easily, cycled over the items of a plot.
_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
VIDEO_SUFFIXES = (".mp4", ".gif")


# --- reading rows ---------------------------------------------------------------------------------------------


def _flat(column: pa.ChunkedArray) -> np.ndarray:
    """The values of a (sliced) fixed-size-list column, flattened, copying only those rows."""
    parts = [c.flatten().to_numpy(zero_copy_only=False) for c in column.chunks if len(c)]
    return np.concatenate(parts) if len(parts) != 1 else parts[0]


def _frames(table: pa.Table, name: str, col: ColumnSpec, start: int, count: int, where: str) -> np.ndarray:
    """`[count, H, W, 3]` uint8 RGB frames of rows `start..start+count` of camera column `name`."""
    column = table.slice(start, count).column(name)
    if col.encoding == "raw":
        frames = _flat(column).reshape(count, *col.item_shape)
    else:
        frames = decode_images(column.to_pylist(), col.item_shape, where)
    if frames.dtype != np.uint8:  # float frames in [0, 1]
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return frames


def _resize(frame: np.ndarray, height: int) -> np.ndarray:
    """One `[H, W, 3]` frame scaled to `height` rows, aspect kept (Pillow bilinear, antialiased when shrinking)."""
    from PIL import Image

    h, w = frame.shape[:2]
    width = max(1, round(w * height / h))
    if (h, w) == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))


def _scaled_width(shape: list[int], height: int) -> int:
    return max(1, round(shape[1] * height / shape[0]))


def _cameras(spec: DatasetSpec, robot: str) -> list[str]:
    return list(spec.robots[robot].get(DataType.RGB_IMAGES.value, []))


def _all_cameras(spec: DatasetSpec) -> list[str]:
    return list(dict.fromkeys(c for robot in spec.robots for c in _cameras(spec, robot)))


# --- text -------------------------------------------------------------------------------------------------------


def _font() -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    """`text` on one line (whitespace collapsed), cut with an ellipsis to fit `width` pixels."""
    text = " ".join(text.split())
    if draw.textlength(text, font=font) <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid] + "…", font=font) <= width:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + "…"


def _wrap(draw: Any, text: str, font: Any, width: int, lines: int) -> list[str]:
    """`text` in at most `lines` lines of `width` pixels (words kept whole where they fit; the last cut)."""
    out: list[str] = []
    words = text.split() if lines > 0 else []
    while words and len(out) < lines:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
            line = f"{line} {words.pop(0)}"
        out.append(line)
    if words:  # more than fits: the last line ends in an ellipsis
        out[-1] = _fit(draw, f"{out[-1]} {' '.join(words)}", font, width)
    return [_fit(draw, line, font, width) for line in out]


# --- arguments --------------------------------------------------------------------------------------------------


@dataclass
class _Series:
    """One plot: a vector DataType's chosen items over the whole episode."""

    title: str
    labels: list[str]  # one per line
    values: np.ndarray  # [frames, lines] float64


def _check_episode(spec: DatasetSpec, name: str, episode: int) -> None:
    if not spec.episodes:
        raise DatasetError(f"dataset {name!r} has no episodes")
    if isinstance(episode, bool) or not isinstance(episode, int) or not 0 <= episode < len(spec.episodes):
        raise DatasetError(f"--episode {episode}: dataset {name!r} has episodes 0..{len(spec.episodes) - 1}")


def _check_count(value: Any, key: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        valid = f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}"
        raise ConfigError(f"{key} {value!r}: must be {valid}")
    return value


def _check_fps(fps: Any) -> float:
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(fps, bool) or not math.isfinite(value) or not 0 < value <= MAX_FPS:
        raise ConfigError(f"--fps {fps!r}: must be a number of frames per second above 0 and at most {MAX_FPS:g}")
    return value


def _check_out(out: str | Path, suffixes: tuple[str, ...], overwrite: bool) -> Path:
    """The output path, checked before any work: suffix, an existing folder we may write, no clobbering."""
    path = Path(out).expanduser()
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"--out {str(out)!r}: must end in {' or '.join(suffixes)}")
    folder = path.parent.resolve()
    path = folder / path.name
    if not folder.is_dir():
        raise ConfigError(f"--out {str(out)!r}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {str(out)!r}: folder {folder} is not writable")
    if path.is_dir():
        raise ConfigError(f"--out {str(out)!r}: {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise ConfigError(f"--out {str(out)!r}: {path} already exists; pass --overwrite to replace it")
    return path


def _choose_cameras(spec: DatasetSpec, episode: int, cameras: str | list[str] | None) -> list[str]:
    robot = spec.episodes[episode].robot
    have = _cameras(spec, robot)
    if cameras is None:
        return have
    chosen = [c.strip() for c in cameras.split(",")] if isinstance(cameras, str) else list(cameras)
    for cam in chosen:
        if cam not in have:
            raise ConfigError(f"--camera {cam!r}: episode {episode} (robot {robot!r}) has cameras "
                              f"{', '.join(have) or 'none'}")
    return list(dict.fromkeys(chosen))


def _vector_types(spec: DatasetSpec, robot: str) -> list[DataType]:
    return [DataType(dt) for dt, items in spec.robots[robot].items()
            if DataType(dt).modality == Modality.VECTOR and items and column_name(DataType(dt)) in spec.columns]


def _choose_items(spec: DatasetSpec, episode: int, items: str | list[str] | None) -> list[tuple[DataType, list[str]]]:
    """`[(DataType, [item, ...])]` to plot: all vector DataTypes by default, else `DT` or `DT.item` entries."""
    robot = spec.episodes[episode].robot
    types = _vector_types(spec, robot)
    if items is None:
        return [(dt, list(spec.robots[robot][dt.value])) for dt in types]
    entries = [e.strip() for e in items.split(",")] if isinstance(items, str) else [str(e).strip() for e in items]
    valid = ", ".join(dt.value for dt in types) or "none"
    chosen: dict[DataType, list[str]] = {}
    for entry in entries:
        dt_name, _, item = entry.partition(".")
        dt = DataType.__members__.get(dt_name.upper())
        if dt is None or dt not in types:
            raise ConfigError(f"--items {entry!r}: not a vector data type of episode {episode} (robot {robot!r}); "
                              f"valid: {valid} (or DATA_TYPE.item)")
        have = spec.robots[robot][dt.value]
        if item and item not in have:
            raise ConfigError(f"--items {entry!r}: robot {robot!r} has no {dt.value} item {item!r}; "
                              f"items: {', '.join(have)}")
        picked = chosen.setdefault(dt, [])
        picked.extend(i for i in ([item] if item else have) if i not in picked)
    return [(dt, [i for i in spec.robots[robot][dt.value] if i in picked]) for dt, picked in chosen.items()]


def _series(table: pa.Table, spec: DatasetSpec, start: int, length: int,
            chosen: list[tuple[DataType, list[str]]]) -> list[_Series]:
    """The chosen items' values over the episode's rows only."""
    out = []
    for dt, items in chosen:
        col = spec.columns[column_name(dt)]
        width = int(np.prod(col.item_shape))
        values = _flat(table.slice(start, length).column(column_name(dt))).reshape(length, len(col.items), width)
        lines, labels = [], []
        for item in items:
            j = col.items.index(item)
            for k in range(width):
                lines.append(values[:, j, k])
                labels.append(item if width == 1 else f"{item}[{k}]")
        out.append(_Series(dt.value, labels, np.stack(lines, axis=1).astype(np.float64)))
    return out


# --- drawing ----------------------------------------------------------------------------------------------------


def _legend_rows(draw: Any, labels: list[str], font: Any, width: int) -> list[list[tuple[int, str]]]:
    """Legend entries `(x offset, label)` flowed into rows of `width` pixels."""
    rows: list[list[tuple[int, str]]] = [[]]
    x = 0
    for label in labels:
        label = _fit(draw, label, font, width - 16)
        w = 14 + int(draw.textlength(label, font=font)) + 12
        if x and x + w > width:
            rows.append([])
            x = 0
        rows[-1].append((x, label))
        x += w
    return rows


def _draw_plots(width: int, series: list[_Series], frames: int, frequency: float,
                font: Any) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The static plot panel `[h, width, 3]` and each plot's area `(x0, y0, x1, y1)` (inclusive) for the cursor."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    inner = width - _PLOT_MARGIN - 2 * _PAD
    legends = [_legend_rows(probe, s.labels, font, inner) for s in series]
    heights = [_LINE + _LINE * len(rows) + _PLOT_HEIGHT + _LINE + _PAD for rows in legends]
    img = Image.new("RGB", (width, sum(heights)), _BACKGROUND)
    draw = ImageDraw.Draw(img)
    areas = []
    y = 0
    last = max(frames - 1, 1)
    for s, rows, h in zip(series, legends, heights):
        draw.text((_PAD, y + 2), s.title, fill=_TEXT, font=font)
        for r, row in enumerate(rows):
            ly = y + _LINE * (r + 1) + 2
            for i, (dx, label) in enumerate(row):
                colour = _COLOURS[(sum(len(rr) for rr in rows[:r]) + i) % len(_COLOURS)]
                lx = _PLOT_MARGIN + _PAD + dx
                draw.rectangle((lx, ly + 3, lx + 9, ly + 10), fill=colour)
                draw.text((lx + 14, ly), label, fill=_TEXT, font=font)
        x0, x1 = _PLOT_MARGIN + _PAD, width - _PAD - 1
        y0 = y + _LINE * (len(rows) + 1) + 2
        y1 = y0 + _PLOT_HEIGHT - 1
        finite = s.values[np.isfinite(s.values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            lo, hi = lo - 0.5, hi + 0.5
        span = hi - lo
        draw.rectangle((x0, y0, x1, y1), outline=_GRID)
        if lo < 0 < hi:  # the zero line
            zy = y1 - round((0 - lo) / span * (y1 - y0))
            draw.line((x0, zy, x1, zy), fill=_GRID)
        for text, ty in ((f"{hi:.4g}", y0), (f"{lo:.4g}", y1 - _LINE + 4)):
            draw.text((_PLOT_MARGIN - int(draw.textlength(text, font=font)), ty), text, fill=_MUTED, font=font)
        xs = x0 + np.arange(frames) * (x1 - x0) / last
        for j in range(s.values.shape[1]):
            v = s.values[:, j]
            ys = y1 - (np.where(np.isfinite(v), v, lo) - lo) / span * (y1 - y0)
            points = list(zip(xs.tolist(), ys.tolist()))
            colour = _COLOURS[j % len(_COLOURS)]
            if len(points) == 1:
                px, py = points[0]
                draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=colour)
            else:
                draw.line(points, fill=colour, width=1)
        end = f"{(frames - 1) / frequency:.2f} s (frame {frames - 1})"
        draw.text((x0, y1 + 1), "0 s", fill=_MUTED, font=font)
        draw.text((x1 - int(draw.textlength(end, font=font)), y1 + 1), end, fill=_MUTED, font=font)
        areas.append((x0, y0, x1, y1))
        y += h
    return np.asarray(img).copy(), areas


@dataclass
class _VideoLayout:
    width: int
    height: int
    cameras: dict[str, tuple[int, int, int, int]]  # camera -> (x, y, w, h)
    panel: tuple[int, int, int, int]  # (x, y, w, h)
    plots: dict[str, tuple[int, int, int, int]]  # DataType -> plot area (x, y, w, h)


class _EpisodeRenderer:
    """Frames of one episode's video: header line, cameras side by side, plot panel with a moving cursor."""

    def __init__(self, name: str, spec: DatasetSpec, table: pa.Table, episode: int, cameras: list[str],
                 series: list[_Series]) -> None:
        from PIL import Image, ImageDraw

        self.name, self.spec, self.table, self.episode = name, spec, table, episode
        self.ep = spec.episodes[episode]
        self.cameras = cameras
        self.font = _font()
        widths = [_scaled_width(spec.columns[column_name(DataType.RGB_IMAGES, c)].item_shape, CAMERA_HEIGHT)
                  for c in cameras]
        width = max(sum(widths), MIN_VIDEO_WIDTH)
        width += width % 2  # yuv420p: even sizes
        header = 2 * _LINE if cameras else _LINE
        cam_h = CAMERA_HEIGHT if cameras else 0
        panel, areas = _draw_plots(width, series, self.ep.length, spec.frequency, self.font) if series else (
            np.zeros((0, width, 3), np.uint8), [])
        height = header + cam_h + panel.shape[0]
        height += height % 2
        base = Image.new("RGB", (width, height), _BACKGROUND)
        draw = ImageDraw.Draw(base)
        x = 0
        boxes = {}
        for cam, w in zip(cameras, widths):
            draw.text((x + _PAD, _LINE + 2), _fit(draw, cam, self.font, w - 2 * _PAD), fill=_MUTED, font=self.font)
            boxes[cam] = (x, header, w, CAMERA_HEIGHT)
            x += w
        self.base = np.asarray(base).copy()
        py = header + cam_h
        self.base[py:py + panel.shape[0]] = panel
        self.areas = [(x0, y0 + py, x1, y1 + py) for x0, y0, x1, y1 in areas]
        self.layout = _VideoLayout(width, height, boxes, (0, py, width, panel.shape[0]),
                                   {s.title: (a[0], a[1], a[2] - a[0] + 1, a[3] - a[1] + 1)
                                    for s, a in zip(series, self.areas)})
        self.last = max(self.ep.length - 1, 1)
        language = f"  “{self.ep.language}”" if self.ep.language else ""
        self.title = f"{name} episode {episode} (robot {self.ep.robot}){language}"

    def frames(self, count: int) -> Iterator[np.ndarray]:
        """The first `count` frames, `[height, width, 3]` uint8, read and decoded `_BLOCK` rows at a time."""
        from PIL import Image, ImageDraw

        strip = Image.new("RGB", (self.layout.width, _LINE), _BACKGROUND)
        draw = ImageDraw.Draw(strip)
        for start in range(0, count, _BLOCK):
            n = min(_BLOCK, count - start)
            blocks = {cam: _frames(self.table, column_name(DataType.RGB_IMAGES, cam),
                                   self.spec.columns[column_name(DataType.RGB_IMAGES, cam)], self.ep.start + start, n,
                                   f"dataset {self.name!r} camera {cam!r} episode {self.episode}")
                      for cam in self.cameras}
            for i in range(n):
                f = start + i
                canvas = self.base.copy()
                for cam, (x, y, w, h) in self.layout.cameras.items():
                    canvas[y:y + h, x:x + w] = _resize(blocks[cam][i], h)
                for x0, y0, x1, y1 in self.areas:
                    cx = round(x0 + f * (x1 - x0) / self.last)
                    canvas[y0:y1 + 1, max(x0, cx - 1):min(x1, cx + 1) + 1] = _CURSOR
                stamp = f"frame {f}/{self.ep.length - 1}  t={f / self.spec.frequency:.2f} s"
                sw = int(draw.textlength(stamp, font=self.font))
                draw.rectangle((0, 0, self.layout.width, _LINE), fill=_BACKGROUND)
                draw.text((_PAD, 2), _fit(draw, self.title, self.font, self.layout.width - sw - 4 * _PAD),
                          fill=_TEXT, font=self.font)
                draw.text((self.layout.width - sw - _PAD, 2), stamp, fill=_TEXT, font=self.font)
                canvas[:_LINE] = np.asarray(strip)
                yield canvas


# --- writing ----------------------------------------------------------------------------------------------------


def _write_atomic(path: Path, overwrite: bool, write: Callable[[str], None]) -> int:
    """`write(tmp)` into a temp file beside `path`, fsync, rename into place; returns the size in bytes.

    Without `overwrite` the rename is a hard link that fails on an existing file (appeared meanwhile).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # the permissions of a file written plainly (mkstemp's are 0600)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        size = os.path.getsize(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise ConfigError(f"--out {str(path)!r}: {path} already exists; pass --overwrite to replace it") from None
            except OSError:  # a file system without hard links
                if path.exists():
                    raise ConfigError(f"--out {str(path)!r}: {path} already exists; pass --overwrite to replace it") \
                        from None
                os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    fsync_dir(path.parent)
    return size


def video_codec(preferred: str | None = None) -> str:
    """`preferred`, else libx264 where PyAV's FFmpeg has it, else mpeg4."""
    import av

    for codec in ([preferred] if preferred else ["libx264", "mpeg4"]):
        try:
            av.codec.Codec(codec, "w")
            return codec
        except Exception:  # noqa: BLE001 - av raises UnknownCodecError (a ValueError) or FFmpegError
            if preferred:
                raise ConfigError(f"codec {preferred!r}: not an encoder of this PyAV build; try libx264 or mpeg4") \
                    from None
    raise ConfigError("PyAV has neither libx264 nor mpeg4 encoders; write a .gif instead")


def _write_mp4(tmp: str, frames: Iterator[np.ndarray], fps: float, width: int, height: int, codec: str) -> int:
    import av

    count = 0
    with av.open(tmp, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:  # mpeg4 (FFmpeg without x264): a generous bit rate, about 2 bits per pixel
            stream.bit_rate = int(min(2 * width * height * fps, 50e6))
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            count += 1
        for packet in stream.encode():
            container.mux(packet)
    return count


def _write_gif(tmp: str, frames: Iterator[np.ndarray], fps: float) -> int:
    from PIL import Image

    # Each frame gets its own adaptive palette; kept as 1 byte per pixel until saved.
    images = [Image.fromarray(f).quantize(256, method=Image.Quantize.FASTOCTREE) for f in frames]
    duration = max(20, round(1000 / fps / 10) * 10)  # GIF delays are in 1/100 s; browsers slow < 20 ms to 100 ms
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], loop=0, duration=duration,
                   optimize=False, disposal=1)
    return len(images)


def render_episode(name: str, episode: int, *, out: str | Path | None = None, fps: float | None = None,
                   items: str | list[str] | None = None, cameras: str | list[str] | None = None,
                   max_frames: int | None = None, overwrite: bool = False, codec: str | None = None,
                   root: Path | None = None) -> dict[str, Any]:
    """Write episode `episode` of dataset `name` as an MP4 or GIF video (cameras above joint plots).

    `items`: comma-separated vector DataTypes or `DATA_TYPE.item` entries to plot (default: every
    vector DataType of the episode's robot); `cameras`: comma-separated cameras (default: all);
    `max_frames`: render only the first K frames (the plots still span the whole episode).
    Returns `{"path", "format", "frames", "bytes", "width", "height", "fps", "codec", "layout"}`.
    """
    ds = open_dataset(name, root)
    spec = ds.spec
    _check_episode(spec, name, episode)
    chosen_cams = _choose_cameras(spec, episode, cameras)
    chosen_items = _choose_items(spec, episode, items)
    rate = _check_fps(spec.frequency if fps is None else fps)
    ep = spec.episodes[episode]
    count = ep.length if max_frames is None else min(ep.length, _check_count(max_frames, "--max-frames", 1))
    if not chosen_cams and not chosen_items:
        raise DatasetError(f"episode {episode} of {name!r} (robot {ep.robot!r}) has no cameras and no vector "
                           "items: nothing to draw")
    path = _check_out(out if out is not None else f"{name}_episode{episode}.mp4", VIDEO_SUFFIXES, overwrite)
    kind = path.suffix.lower()[1:]
    codec = video_codec(codec) if kind == "mp4" else None
    renderer = _EpisodeRenderer(name, spec, ds.table, episode, chosen_cams,
                                _series(ds.table, spec, ep.start, ep.length, chosen_items))
    lay = renderer.layout
    written = 0

    def write(tmp: str) -> None:
        nonlocal written
        frames = renderer.frames(count)
        written = (_write_mp4(tmp, frames, rate, lay.width, lay.height, codec) if kind == "mp4"
                   else _write_gif(tmp, frames, rate))

    size = _write_atomic(path, overwrite, write)
    return {"path": str(path), "format": kind, "frames": written, "bytes": size, "width": lay.width,
            "height": lay.height, "fps": rate, "codec": codec or "gif", "episode_frames": ep.length,
            "layout": {"cameras": lay.cameras, "panel": lay.panel, "plots": lay.plots}}


# --- contact sheet ----------------------------------------------------------------------------------------------


def _sheet_camera(spec: DatasetSpec, robot: str, camera: str | None) -> str | None:
    have = _cameras(spec, robot)
    if camera is not None:
        return camera if camera in have else None
    return have[0] if have else None


def contact_sheet(name: str, *, out: str | Path | None = None, frames_per_episode: int = 4, max_episodes: int = 64,
                  camera: str | None = None, overwrite: bool = False, root: Path | None = None) -> dict[str, Any]:
    """Write a PNG of dataset `name`: one row per episode (label, then evenly spaced thumbnails of one camera).

    `camera`: default each episode's robot's first camera. Beyond `max_episodes` episodes, that
    many are shown, evenly spaced, and the header says so. Returns `{"path", "frames", "bytes",
    "width", "height", "episodes", "rows", "columns", "grid", "cameras"}`.
    """
    from PIL import Image, ImageDraw

    ds = open_dataset(name, root)
    spec = ds.spec
    if not spec.episodes:
        raise DatasetError(f"dataset {name!r} has no episodes")
    columns = _check_count(frames_per_episode, "--frames-per-episode", 1, MAX_FRAMES_PER_EPISODE)
    limit = _check_count(max_episodes, "--max-episodes", 1, MAX_SHEET_EPISODES)
    all_cams = _all_cameras(spec)
    if not all_cams:
        raise DatasetError(f"dataset {name!r} has no cameras (RGB_IMAGES): a contact sheet shows camera frames; "
                           "use view --episode N for its plots")
    if camera is not None and camera not in all_cams:
        raise ConfigError(f"--camera {camera!r}: dataset {name!r} has cameras {', '.join(all_cams)}")
    path = _check_out(out if out is not None else f"{name}_sheet.png", (".png",), overwrite)
    total = len(spec.episodes)
    shown = (sorted(set(np.linspace(0, total - 1, limit).round().astype(int).tolist())) if total > limit
             else list(range(total)))
    cams = {i: _sheet_camera(spec, spec.episodes[i].robot, camera) for i in shown}
    used = list(dict.fromkeys(c for c in cams.values() if c is not None))
    thumb_w = max(_scaled_width(spec.columns[column_name(DataType.RGB_IMAGES, c)].item_shape, THUMB_HEIGHT)
                  for c in used) if used else THUMB_HEIGHT
    font = _font()
    header = [(f"{name}: {total} episodes, {spec.num_frames} frames at {spec.frequency:g} Hz; "
               f"camera {', '.join(used) if used else camera}; {columns} frames per episode, evenly spaced")]
    if len(shown) < total:
        header.append(f"showing {len(shown)} of {total} episodes, evenly spaced (--max-episodes {limit})")
    cell_w, cell_h = thumb_w + _PAD, THUMB_HEIGHT + _PAD
    x0, y0 = _PAD + _LABEL_WIDTH + _PAD, _PAD + _LINE * len(header) + _PAD
    width, height = x0 + columns * cell_w, y0 + len(shown) * cell_h
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for k, line in enumerate(header):
        draw.text((_PAD, _PAD + _LINE * k), _fit(draw, line, font, width - 2 * _PAD), fill=_TEXT, font=font)
    frames_read = 0
    for r, i in enumerate(shown):
        ep = spec.episodes[i]
        y = y0 + r * cell_h
        picks = np.linspace(0, ep.length - 1, columns).round().astype(int).tolist()
        cam = cams[i]
        label = [f"episode {i}", f"robot {ep.robot}" + (f", {cam}" if cam and len(used) > 1 else ""),
                 f"{ep.length} frames, {ep.length / spec.frequency:.1f} s",
                 "frames " + ", ".join(map(str, dict.fromkeys(picks)))]
        if cam is None:
            label.append(f"no camera {camera!r}" if camera else "no camera")
        if ep.language:
            label.extend(_wrap(draw, f"“{ep.language}”", font, _LABEL_WIDTH, (THUMB_HEIGHT // _LINE) - len(label)))
        for k, line in enumerate(label[:THUMB_HEIGHT // _LINE]):
            draw.text((_PAD, y + _LINE * k), _fit(draw, line, font, _LABEL_WIDTH), fill=_TEXT if k == 0 else _MUTED,
                      font=font)
        for c, f in enumerate(picks):
            x = x0 + c * cell_w
            if cam is None:
                draw.rectangle((x, y, x + thumb_w - 1, y + THUMB_HEIGHT - 1), fill=_PLACEHOLDER)
                continue
            col_name = column_name(DataType.RGB_IMAGES, cam)
            frame = _frames(ds.table, col_name, spec.columns[col_name], ep.start + f, 1,
                            f"dataset {name!r} camera {cam!r} episode {i} frame {f}")[0]
            thumb = _resize(frame, THUMB_HEIGHT)
            sheet.paste(Image.fromarray(thumb), (x, y))
            frames_read += 1

    size = _write_atomic(path, overwrite, lambda tmp: sheet.save(tmp, format="PNG"))
    return {"path": str(path), "format": "png", "frames": frames_read, "bytes": size, "width": width, "height": height,
            "episodes": total, "rows": shown, "columns": columns, "cameras": used,
            "grid": {"x0": x0, "y0": y0, "cell_w": cell_w, "cell_h": cell_h, "thumb_w": thumb_w,
                     "thumb_h": THUMB_HEIGHT}}


# --- command line (tools/dataset.py view) -----------------------------------------------------------------------


def add_view_parser(sub: Any) -> None:
    """`view NAME --episode N | --sheet` for `tools/dataset.py`."""
    p = sub.add_parser("view", help="render an episode as a video (cameras above joint plots) or a contact sheet PNG")
    p.add_argument("input", metavar="NAME")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--episode", type=int, help="render this episode as a video (.mp4 or .gif)")
    what.add_argument("--sheet", action="store_true", help="write a contact sheet of the dataset (.png)")
    p.add_argument("--out", help="output file (default <NAME>_episode<N>.mp4 or <NAME>_sheet.png here)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--camera", help="video: comma-separated cameras (default all); sheet: one camera "
                                    "(default each robot's first)")
    p.add_argument("--fps", type=float, help="video frame rate (default the dataset's frequency)")
    p.add_argument("--items", metavar="DT[.item],...", help="video: vector data types (or DATA_TYPE.item) to plot, "
                   "e.g. JOINT_POSITIONS,JOINT_TARGET_POSITIONS (default every vector data type)")
    p.add_argument("--max-frames", type=int, help="video: render only the first K frames")
    p.add_argument("--frames-per-episode", type=int, help="sheet: thumbnails per episode (default 4)")
    p.add_argument("--max-episodes", type=int,
                   help="sheet: at most this many rows; more episodes are evenly subsampled (default 64)")


def run_view(args: Any) -> int:
    """Run `view` from parsed arguments; prints one line: what was written, frames, bytes."""
    misplaced = ("fps", "items", "max_frames") if args.sheet else ("frames_per_episode", "max_episodes")
    for key in misplaced:
        if getattr(args, key) is not None:
            option = "--" + key.replace("_", "-")
            raise ConfigError(f"{option} is for videos (--episode N), not --sheet" if args.sheet
                              else f"{option} is for --sheet, not videos (--episode N)")
    if args.sheet:
        r = contact_sheet(args.input, out=args.out, camera=args.camera, overwrite=args.overwrite,
                          frames_per_episode=4 if args.frames_per_episode is None else args.frames_per_episode,
                          max_episodes=64 if args.max_episodes is None else args.max_episodes)
        print(f"wrote {r['path']}: contact sheet of {len(r['rows'])} of {r['episodes']} episodes x {r['columns']} "
              f"frames ({r['frames']} frames, {r['width']}x{r['height']}), {r['bytes']} bytes")
        return 0
    r = render_episode(args.input, args.episode, out=args.out, fps=args.fps, items=args.items, cameras=args.camera,
                       max_frames=args.max_frames, overwrite=args.overwrite)
    print(f"wrote {r['path']}: episode {args.episode}, {r['frames']} frames ({r['width']}x{r['height']}, "
          f"{r['fps']:g} fps, {r['codec']}), {r['bytes']} bytes")
    return 0


__all__ = ["CAMERA_HEIGHT", "THUMB_HEIGHT", "add_view_parser", "contact_sheet", "render_episode", "run_view",
           "video_codec"]

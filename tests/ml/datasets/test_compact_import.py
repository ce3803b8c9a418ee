"""Compact imports: `--image-size` (letterbox/crop, per camera), `--jpeg-quality`, the size estimate and
disk-space refusal, resize/encode in the workers (byte-identical to workers=0), one-line bad input."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections import namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_import_episodes import write_episode

from neuracore.ml.datasets import api, importers
from neuracore.ml.datasets.format import DATA_DIR, decode_images, open_dataset
from neuracore.ml.datasets.images import fit, resize_frames

REPO = Path(__file__).resolve().parents[3]
WHITE, GREEN, RED, BLUE = (255, 255, 255), (0, 255, 0), (255, 0, 0), (0, 0, 255)


def _load_tool() -> Any:
    spec = importlib.util.spec_from_file_location("dataset_tool_compact", REPO / "tools" / "dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TOOL = _load_tool()


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    (h / "datasets").mkdir(parents=True)
    monkeypatch.setenv("NEURACORE_HOME", str(h))
    return h


def blocks() -> np.ndarray:
    """A 480x640 frame of known blocks: columns 0..79 white; right of them rows 0..199 green, below
    red left of column 320 and blue right of it."""
    f = np.zeros((480, 640, 3), np.uint8)
    f[:200] = GREEN
    f[200:, :320] = RED
    f[200:, 320:] = BLUE
    f[:, :80] = WHITE
    return f


def textured(n: int, h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    """Camera-like frames: gradients plus sensor noise (so JPEG quality matters)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (h + w)], -1)
    return np.clip(base[None] + rng.integers(-20, 20, (n, h, w, 3)), 0, 255).astype(np.uint8)


def make_source(root: Path, episodes: int = 3, frames: int = 6, cams: tuple[str, ...] = ("top", "wrist"),
                image=None) -> Path:
    for e in range(episodes):
        ts = np.arange(frames) / 10.0
        streams = {"q": ("JOINT_POSITIONS", ["a", "b"], ts, np.random.default_rng(e).normal(size=(frames, 2)))}
        for c, cam in enumerate(cams):
            values = np.repeat(image[None], frames, 0) if image is not None else textured(frames, seed=10 * e + c)
            streams[cam] = ("RGB_IMAGES", [cam], ts, values)
        write_episode(root / f"ep{e}", "arm", streams)
    return root


def cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    code = TOOL.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def do_import(src: Path, name: str, capsys: pytest.CaptureFixture, *extra: str) -> str:
    code, out, err = cli(["import", "episodes", str(src), "--name", name, "--frequency", "10", *extra], capsys)
    assert code == 0, err
    return out


def frames_of(name: str, column: str) -> np.ndarray:
    ds = open_dataset(name)
    col = ds.spec.columns[column]
    if col.encoding == "raw":
        return ds.table.column(column).combine_chunks().flatten().to_numpy().reshape(-1, *col.item_shape)
    return decode_images(ds.table.column(column).to_pylist(), col.item_shape, column)


def test_letterbox_and_crop_exact_pixels() -> None:
    frame = blocks()[None]
    # letterbox: 480x640 * 0.35 = 168x224, centred: 28 black rows above and below
    assert fit((480, 640), (224, 224), "letterbox") == ((0, 0, 480, 640), (28, 0, 168, 224))
    out = resize_frames(frame, (224, 224), "letterbox")[0]
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert not out[:28].any() and not out[196:].any()
    np.testing.assert_array_equal(out[28:98, :28], np.broadcast_to(WHITE, (70, 28, 3)))
    np.testing.assert_array_equal(out[28:98, 28:], np.broadcast_to(GREEN, (70, 196, 3)))
    np.testing.assert_array_equal(out[98:196, :28], np.broadcast_to(WHITE, (98, 28, 3)))
    np.testing.assert_array_equal(out[98:196, 28:112], np.broadcast_to(RED, (98, 84, 3)))
    np.testing.assert_array_equal(out[98:196, 112:], np.broadcast_to(BLUE, (98, 112, 3)))
    # crop: source columns 80..559 (the white band is cut away) scaled by 224/480, no padding
    assert fit((480, 640), (224, 224), "crop") == ((0, 80, 480, 480), (0, 0, 224, 224))
    out = resize_frames(frame, (224, 224), "crop")[0]
    np.testing.assert_array_equal(out[:93], np.broadcast_to(GREEN, (93, 224, 3)))  # rows 0..199 * 224/480 = 93.3
    np.testing.assert_array_equal(out[94:, :112], np.broadcast_to(RED, (130, 112, 3)))
    np.testing.assert_array_equal(out[94:, 112:], np.broadcast_to(BLUE, (130, 112, 3)))
    # PIL's box filter: output row 93 spans source rows 199.3..201.4 and averages the pixels whose
    # centres it holds (row 199 green, row 200 red), not weighted by overlap as cv2.INTER_AREA would
    assert (out[93, 50] == (128, 128, 0)).all(), out[93, 50]
    # at an integer factor it is exact area averaging: each 2x2 block's mean
    half = resize_frames(blocks()[None], (240, 320), "letterbox")[0]
    assert (half[99, 100] == GREEN).all() and (half[100, 100] == RED).all() and (half[99, 39] == WHITE).all()
    noise = np.random.default_rng(0).integers(0, 256, (1, 4, 6, 3)).astype(np.uint8)
    expected = noise.reshape(2, 2, 3, 2, 3).astype(float).mean((1, 3))
    np.testing.assert_allclose(resize_frames(noise, (2, 3), "letterbox")[0], expected, atol=1)  # PIL's rounding
    # depth (float, one channel) uses the same geometry; frames already of the target size are untouched
    depth = resize_frames(np.ones((2, 480, 640, 1), np.float32), (224, 224), "letterbox")
    assert depth.shape == (2, 224, 224, 1) and depth[:, :28].max() == 0 and depth[:, 28:196].min() == 1
    same = np.zeros((1, 224, 224, 3), np.uint8)
    assert resize_frames(same, (224, 224), "crop") is same


@pytest.mark.parametrize("mode", ["letterbox", "crop"])
def test_import_resizes_spec_shapes_and_statistics(home: Path, tmp_path: Path, capsys, mode: str) -> None:
    src = make_source(tmp_path / "src", episodes=2, frames=5, image=blocks())
    out = do_import(src, "small", capsys, "--image-size", "224x224", "--resize-mode", mode)
    assert "estimated size on disk:" in out
    spec = open_dataset("small").spec
    for cam in ("top", "wrist"):
        assert spec.columns[f"RGB_IMAGES.{cam}"].item_shape == [224, 224, 3]
        stored = frames_of("small", f"RGB_IMAGES.{cam}")
        expected = resize_frames(blocks()[None], (224, 224), mode)[0]
        assert stored.shape == (10, 224, 224, 3)
        assert (stored == expected).all()  # raw storage: the resized pixels exactly
        # statistics describe the stored (resized, padded) frames, as before in [0, 1]
        mean = spec.statistics["RGB_IMAGES"][cam]["mean"]
        np.testing.assert_allclose(mean, expected.reshape(-1, 3).mean(0) / 255, atol=0.02)
    images = spec.source["images"]
    assert images["resize_mode"] == mode and images["interpolation"].startswith("area")
    assert images["resized"]["RGB_IMAGES.top"] == {"from": [480, 640], "to": [224, 224]}
    code, text, _ = cli(["info", "small"], capsys)
    assert code == 0 and f"resized ({mode}, area (PIL Image.BOX)): top 480x640->224x224" in text


def test_per_camera_sizes_and_jpeg_quality(home: Path, tmp_path: Path, capsys) -> None:
    src = make_source(tmp_path / "src", episodes=2, frames=4)
    sizes = {}
    for quality in ("30", "95"):
        do_import(src, f"q{quality}", capsys, "--image-size", "top=224x224,wrist=96x128",
                  "--image-encoding", "jpeg", "--jpeg-quality", quality)
        info = json.loads(cli(["info", f"q{quality}", "--json"], capsys)[1])
        assert info["image_shapes"] == {"top": [224, 224, 3], "wrist": [96, 128, 3]}
        assert info["images"]["jpeg_quality"] == int(quality)
        sizes[quality] = info["size_bytes"]
        assert frames_of(f"q{quality}", "RGB_IMAGES.wrist").shape == (8, 96, 128, 3)
    assert sizes["30"] < 0.7 * sizes["95"], sizes
    text = cli(["info", "q30"], capsys)[1]
    assert "images: jpeg quality 30; resized (letterbox" in text and "wrist 480x640->96x128" in text
    # only the named camera is resized
    do_import(src, "one", capsys, "--image-size", "wrist=48x64")
    assert open_dataset("one").spec.columns["RGB_IMAGES.top"].item_shape == [480, 640, 3]


def test_workers_give_byte_identical_datasets(home: Path, tmp_path: Path, capsys) -> None:
    src = make_source(tmp_path / "src", episodes=4, frames=5)
    for workers in ("0", "2"):
        do_import(src, f"w{workers}", capsys, "--image-size", "224x224", "--image-encoding", "jpeg",
                  "--workers", workers)
    a, b = open_dataset("w0"), open_dataset("w2")
    assert a.spec.fingerprint == b.spec.fingerprint
    assert a.spec.statistics == b.spec.statistics and a.spec.columns == b.spec.columns
    for f in sorted((a.path / DATA_DIR).glob("*.arrow")):
        assert f.read_bytes() == (b.path / DATA_DIR / f.name).read_bytes()


def test_size_estimate_raw_is_exact_and_jpeg_close(home: Path, tmp_path: Path, capsys) -> None:
    src = make_source(tmp_path / "src", episodes=3, frames=6)
    for name, extra in (("raw", []), ("jpg", ["--image-size", "224x224", "--image-encoding", "jpeg"])):
        do_import(src, name, capsys, *extra)
        ds = open_dataset(name)
        estimate = ds.spec.source["estimated_bytes"]
        arrow = sum(f.stat().st_size for f in (ds.path / DATA_DIR).glob("*.arrow"))
        tolerance = 0.02 if name == "raw" else 0.2  # arrow file framing / the JPEG sample
        assert abs(estimate - arrow) <= tolerance * arrow, (name, estimate, arrow)


def test_refused_when_the_disk_is_too_small(home: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    src = make_source(tmp_path / "src", episodes=2, frames=6)
    seen = []
    real = shutil.disk_usage

    def small(path: Any) -> Any:
        seen.append(Path(path))
        usage = real(path)
        return namedtuple("usage", "total used free")(usage.total, usage.total - 10_000_000, 10_000_000)

    monkeypatch.setattr(shutil, "disk_usage", small)
    monkeypatch.setattr(importers, "DISK_MARGIN_BYTES", 0)  # the 10 % margin only, so that small data can fit
    code, out, err = cli(["import", "episodes", str(src), "--name", "big", "--frequency", "10"], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("dataset: error: dataset 'big': not enough disk space: the import needs about 22.1 MB")
    assert "10 MB free; nothing was written" in err
    assert "estimated size on disk: 22.1 MB (12 frames x 1.84 MB per frame, raw; frame counts from metadata)" in out
    assert seen and seen[0] == home / "datasets"
    assert sorted(p.name for p in (home / "datasets").iterdir()) == []
    # the same import stored compactly fits
    do_import(src, "big", capsys, "--image-size", "112x112", "--image-encoding", "jpeg")


@pytest.mark.parametrize(("extra", "names"), [
    (["--image-size", "0x5"], ["--image-size '0x5'", "1 to 8192", "0x5"]),
    (["--image-size", "abc"], ["--image-size 'abc'", "'abc' is not HxW"]),
    (["--image-size", "224x224x3"], ["--image-size '224x224x3'", "not HxW"]),
    (["--image-size", "top=224x224,side=96x96"], ["--image-size", "camera 'side' is not in the source",
                                                  "cameras: top, wrist"]),
    (["--image-size", "top=224x224,top=96x96"], ["camera 'top' is given twice"]),
    (["--image-size", "=224x224"], ["'=224x224' is not CAMERA=HxW"]),
    (["--resize-mode", "stretch"], ["--resize-mode 'stretch'", "letterbox, crop"]),
    (["--jpeg-quality", "90"], ["--jpeg-quality 90", "only applies to --image-encoding jpeg"]),
    (["--image-encoding", "jpeg", "--jpeg-quality", "0"], ["--jpeg-quality '0'", "1 to 100"]),
    (["--image-encoding", "jpeg", "--jpeg-quality", "101"], ["--jpeg-quality '101'"]),
    (["--image-encoding", "jpeg", "--jpeg-quality", "abc"], ["--jpeg-quality 'abc'"]),
])
def test_bad_options_are_one_line(home: Path, tmp_path: Path, capsys, extra: list[str], names: list[str]) -> None:
    src = make_source(tmp_path / "src", episodes=1, frames=2)
    code, out, err = cli(["import", "episodes", str(src), "--name", "bad", "--frequency", "10", *extra], capsys)
    assert code == 2 and "Traceback" not in err
    assert out == ""  # refused before the size estimate (and before any frame is read)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dataset: error: "), lines
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert list((home / "datasets").iterdir()) == []


def test_api_accepts_tuples_and_mappings(home: Path, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", episodes=1, frames=2)
    api.import_dataset("episodes", src, "t", frequency=10.0, image_size=(60, 80), on_estimate=lambda _: None)
    api.import_dataset("episodes", src, "m", frequency=10.0, image_size={"top": (30, 40)}, resize_mode="crop",
                       on_estimate=lambda _: None)
    assert open_dataset("t").spec.columns["RGB_IMAGES.wrist"].item_shape == [60, 80, 3]
    cols = open_dataset("m").spec.columns
    assert cols["RGB_IMAGES.top"].item_shape == [30, 40, 3] and cols["RGB_IMAGES.wrist"].item_shape == [480, 640, 3]


@pytest.mark.parametrize("kind", ["hdf5", "lerobot"])
def test_estimate_from_other_importers_metadata(home: Path, tmp_path: Path, kind: str) -> None:
    from lerobot_writer import write_lerobot
    from test_import_hdf5 import write_act

    if kind == "hdf5":
        write_act(tmp_path / "src", lengths=[4, 5, 6])
    else:
        write_lerobot(tmp_path / "src", [4, 5, 6], video=False)
    lines: list[str] = []
    api.import_dataset(kind, tmp_path / "src", "d", image_size="16x16", on_estimate=lines.append)
    ds = open_dataset("d")
    arrow = sum(f.stat().st_size for f in (ds.path / DATA_DIR).glob("*.arrow"))
    assert "15 frames" in lines[0] and "frame counts from metadata" in lines[0], lines
    assert abs(ds.spec.source["estimated_bytes"] - arrow) <= 0.1 * arrow  # small rows: Arrow framing weighs more
    assert all(c.item_shape[:2] == [16, 16] for c in ds.spec.columns.values() if c.data_type == "RGB_IMAGES")

"""`render_episode` / `contact_sheet`: videos and contact sheets that show the stored frames and values."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageSequence

from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.format import decode_images, open_dataset
from neuracore.ml.datasets.tools import contact_sheet, merge_datasets, render_episode
from neuracore.ml.datasets.tools import view as view_module
from tests.ml.datasets.tools.edit_data import make_dataset

CAMS = {"top": (48, 64), "side": (40, 40)}


def _stored_frame(root: Path, name: str, camera: str, episode: int, frame: int) -> np.ndarray:
    """The frame as stored (decoded for JPEG/PNG datasets): what a view must show."""
    ds = open_dataset(name, root)
    col = ds.spec.columns[f"RGB_IMAGES.{camera}"]
    row = ds.spec.episodes[episode].start + frame
    cell = ds.table.column(f"RGB_IMAGES.{camera}").slice(row, 1)
    if col.encoding == "raw":
        return cell.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(col.item_shape)
    return decode_images(cell.to_pylist(), col.item_shape, "test")[0]


def _bilinear(frame: np.ndarray, height: int) -> np.ndarray:
    h, w = frame.shape[:2]
    return np.asarray(Image.fromarray(frame).resize((round(w * height / h), height), Image.Resampling.BILINEAR))


def _decode_mp4(path: Path) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, stream


def _crop(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    return frame[y:y + h, x:x + w]


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_mp4_shows_the_stored_frames_and_a_moving_cursor(tmp_path: Path, encoding: str) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(5, 12), cams=CAMS, encoding=encoding)
    out = tmp_path / "ep1.mp4"
    r = render_episode("d", 1, out=out, root=root)
    assert (r["path"], r["format"], r["frames"], r["fps"], r["codec"]) == (str(out), "mp4", 12, 10.0, "libx264")
    assert r["bytes"] == out.stat().st_size > 0
    assert r["width"] % 2 == 0 and r["height"] % 2 == 0
    lay = r["layout"]
    assert lay["cameras"]["top"][2:] == (320, 240) and lay["cameras"]["side"][2:] == (240, 240)  # common height
    assert list(lay["plots"]) == ["JOINT_POSITIONS", "JOINT_TARGET_POSITIONS"]  # every vector type by default

    frames, stream = _decode_mp4(out)
    assert len(frames) == 12 and frames[0].shape == (r["height"], r["width"], 3)
    assert stream.average_rate == 10
    for cam in CAMS:
        shown = _crop(frames[0], lay["cameras"][cam]).astype(np.int16)
        expected = _bilinear(_stored_frame(root, "d", cam, 1, 0), 240).astype(np.int16)
        assert np.abs(shown - expected).mean() < 12, cam  # codec error only
        other = _bilinear(_stored_frame(root, "d", cam, 1, 5), 240).astype(np.int16)
        assert np.abs(shown - other).mean() > 30  # ... and not just any frame
    first, last = (_crop(f, lay["panel"]).astype(np.int16) for f in (frames[0], frames[-1]))
    assert np.abs(first - last).max() > 100  # the cursor moved
    # the cursor: dark columns at the start of each plot in frame 0, at its end in the last frame
    for x, y, w, h in lay["plots"].values():
        assert frames[0][y + h // 2, x:x + 2].mean() < 60 and frames[-1][y + h // 2, x + w - 2:x + w].mean() < 60


def test_mpeg4_codec_and_fps(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(6,), cams={"top": (32, 32)})
    r = render_episode("d", 0, out=tmp_path / "x.mp4", root=root, codec="mpeg4", fps=25)
    frames, stream = _decode_mp4(tmp_path / "x.mp4")
    assert r["codec"] == "mpeg4" and stream.codec_context.name == "mpeg4" and stream.average_rate == 25
    assert len(frames) == 6 and frames[0].shape == (r["height"], r["width"], 3)
    shown = _crop(frames[0], r["layout"]["cameras"]["top"]).astype(np.int16)
    assert np.abs(shown - _bilinear(_stored_frame(root, "d", "top", 0, 0), 240)).mean() < 12


def test_gif_frames_duration_and_cursor(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(9,), cams=CAMS, encoding="jpeg")
    out = tmp_path / "ep.gif"
    r = render_episode("d", 0, out=out, root=root, max_frames=4, fps=5)
    assert (r["format"], r["frames"], r["episode_frames"], r["bytes"]) == ("gif", 4, 9, out.stat().st_size)
    with Image.open(out) as gif:
        assert gif.format == "GIF" and gif.size == (r["width"], r["height"])
        assert gif.info["loop"] == 0 and gif.info["duration"] == 200  # 5 fps
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]
    assert len(frames) == 4
    panels = [_crop(f, r["layout"]["panel"]).astype(np.int16) for f in frames]
    assert all(np.abs(a - b).max() > 100 for a, b in itertools.pairwise(panels))  # the cursor moves every frame
    shown = _crop(frames[0], r["layout"]["cameras"]["side"]).astype(np.int16)
    assert np.abs(shown - _bilinear(_stored_frame(root, "d", "side", 0, 0), 240)).mean() < 12  # palette error only


def test_no_cameras_gives_the_plot_video_and_items_choose_plots(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(7,), cams={})
    r = render_episode("d", 0, out=tmp_path / "p.mp4", root=root)
    assert r["layout"]["cameras"] == {} and r["width"] == view_module.MIN_VIDEO_WIDTH
    assert len(_decode_mp4(tmp_path / "p.mp4")[0]) == 7
    r = render_episode("d", 0, out=tmp_path / "q.gif", root=root, items="joint_target_positions.b")
    assert list(r["layout"]["plots"]) == ["JOINT_TARGET_POSITIONS"]
    assert r["height"] < render_episode("d", 0, out=tmp_path / "r.gif", root=root)["height"]  # one plot, not two


def test_camera_subset(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(3,), cams=CAMS)
    r = render_episode("d", 0, out=tmp_path / "s.gif", root=root, cameras="side")
    assert list(r["layout"]["cameras"]) == ["side"]


def test_plot_traces_span_the_value_range() -> None:
    # One line rising 0 -> 1 over 11 frames: it starts at the plot's bottom-left corner and ends at its top right.
    series = [view_module._Series("JOINT_POSITIONS", ["a"], np.linspace(0, 1, 11)[:, None])]
    panel, [(x0, y0, x1, y1)] = view_module._draw_plots(400, series, 11, 10.0, view_module._font())
    colour = np.array(view_module._COLOURS[0])
    assert (panel[y1, x0] == colour).all() and (panel[y0, x1] == colour).all()
    mid = panel[(y0 + y1) // 2 - 1:(y0 + y1) // 2 + 2, (x0 + x1) // 2 - 1:(x0 + x1) // 2 + 2]
    assert (mid == colour).all(axis=-1).any()
    assert not (panel[y0 + 2:y1 - 1, x0 + 1] == colour).all(axis=-1).any()  # nowhere else in the first column


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_contact_sheet_rows_columns_and_thumbnails(tmp_path: Path, encoding: str) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(5, 6, 7, 8), cams={"top": (30, 40), "side": (16, 16)}, encoding=encoding,
                 languages=["pick up the red cube and place it in the bowl on the left", None, "push", "wipe"])
    out = tmp_path / "sheet.png"
    r = contact_sheet("d", out=out, frames_per_episode=3, root=root)
    g = r["grid"]
    assert (r["rows"], r["columns"], r["cameras"], r["frames"]) == ([0, 1, 2, 3], 3, ["top"], 12)
    assert (g["thumb_w"], g["thumb_h"]) == (128, 96)  # 30x40 at height 96, aspect kept
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (r["width"], r["height"])
        sheet = np.asarray(png.convert("RGB"))
    assert r["width"] == g["x0"] + 3 * g["cell_w"] and r["height"] == g["y0"] + 4 * g["cell_h"]
    assert r["bytes"] == out.stat().st_size
    for row, col, frame in ((2, 1, 3), (3, 2, 7), (0, 0, 0)):  # episode 2 has 7 frames: 0, 3, 6
        x, y = g["x0"] + col * g["cell_w"], g["y0"] + row * g["cell_h"]
        thumb = sheet[y:y + 96, x:x + 128]
        np.testing.assert_array_equal(thumb, _bilinear(_stored_frame(root, "d", "top", row, frame), 96))


def test_contact_sheet_subsamples_episodes_and_picks_a_camera(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(3, 4, 5, 6, 7), cams={"top": (16, 16), "side": (20, 10)})
    full = contact_sheet("d", out=tmp_path / "full.png", root=root, frames_per_episode=2)
    r = contact_sheet("d", out=tmp_path / "sub.png", root=root, max_episodes=3, frames_per_episode=2, camera="side")
    assert r["rows"] == [0, 2, 4] and r["episodes"] == 5 and r["cameras"] == ["side"]
    assert r["grid"]["thumb_w"] == 48 and r["grid"]["y0"] == full["grid"]["y0"] + view_module._LINE  # + the note
    assert r["height"] == r["grid"]["y0"] + 3 * r["grid"]["cell_h"]
    with Image.open(tmp_path / "sub.png") as png:
        sheet = np.asarray(png.convert("RGB"))
    g = r["grid"]
    x, y = g["x0"] + g["cell_w"], g["y0"] + 2 * g["cell_h"]  # episode 4's last frame
    np.testing.assert_array_equal(sheet[y:y + 96, x:x + 48], _bilinear(_stored_frame(root, "d", "side", 4, 6), 96))


def test_contact_sheet_of_robots_without_the_camera(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "a", lengths=(3,), cams={"top": (16, 16)})
    make_dataset(root, "b", robot="bot", lengths=(4,), cams={"wrist": (16, 32)}, seed=1)
    merge_datasets(["a", "b"], "ab", root=root)
    r = contact_sheet("ab", out=tmp_path / "ab.png", root=root, frames_per_episode=2)
    assert r["cameras"] == ["top", "wrist"] and r["frames"] == 4  # each robot's first camera
    r = contact_sheet("ab", out=tmp_path / "top.png", root=root, frames_per_episode=2, camera="top")
    assert r["cameras"] == ["top"] and r["frames"] == 2
    with Image.open(tmp_path / "top.png") as png:
        sheet = np.asarray(png.convert("RGB"))
    g = r["grid"]
    gray = sheet[g["y0"] + g["cell_h"]:g["y0"] + g["cell_h"] + 96, g["x0"]:g["x0"] + g["thumb_w"]]
    assert (gray == view_module._PLACEHOLDER).all()  # bot has no top camera: a placeholder


_BAD_INPUTS = [
    (lambda r, o: render_episode("d", 2, out=o, root=r), "--episode 2: dataset 'd' has episodes 0..1"),
    (lambda r, o: render_episode("d", -1, out=o, root=r), "--episode -1: dataset 'd' has episodes 0..1"),
    (lambda r, o: render_episode("nope", 0, out=o, root=r), "dataset_name='nope': no dataset under"),
    (lambda r, o: render_episode("d", 0, out=o, root=r, cameras="top,front"),
     "--camera 'front': episode 0 (robot 'arm') has cameras top, side"),
    (lambda r, o: render_episode("d", 0, out=o, root=r, items="JOINT_POSITIONS,FOO"),
     ("--items 'FOO': not a vector data type of episode 0 (robot 'arm'); valid: JOINT_POSITIONS, "
      "JOINT_TARGET_POSITIONS (or DATA_TYPE.item)")),
    (lambda r, o: render_episode("d", 0, out=o, root=r, items="RGB_IMAGES"), "--items 'RGB_IMAGES': not a vector"),
    (lambda r, o: render_episode("d", 0, out=o, root=r, items="JOINT_POSITIONS.z"),
     "--items 'JOINT_POSITIONS.z': robot 'arm' has no JOINT_POSITIONS item 'z'; items: a, b"),
    (lambda r, o: render_episode("d", 0, out=o, root=r, fps=0), "--fps 0: must be a number of frames per second above 0"),
    (lambda r, o: render_episode("d", 0, out=o, root=r, fps=float("nan")), "--fps nan: must be a number"),
    (lambda r, o: render_episode("d", 0, out=o, root=r, fps=5000), "--fps 5000: must be a number"),
    (lambda r, o: render_episode("d", 0, out=o, root=r, max_frames=0), "--max-frames 0: must be an integer of at least 1"),
    (lambda r, o: render_episode("d", 0, out=o.with_suffix(".avi"), root=r), "x.avi': must end in .mp4 or .gif"),
    (lambda r, o: render_episode("d", 0, out=o.parent / "missing" / "x.mp4", root=r), "/missing does not exist"),
    (lambda r, o: render_episode("d", 0, out=o.parent / "sub.mp4", root=r), "sub.mp4 is a folder; give a file name"),
    (lambda r, o: render_episode("d", 0, out=o, root=r, codec="nocodec"), "codec 'nocodec': not an encoder"),
    (lambda r, o: contact_sheet("d", out=o.with_suffix(".png"), root=r, camera="front"),
     "--camera 'front': dataset 'd' has cameras top, side"),
    (lambda r, o: contact_sheet("d", out=o.with_suffix(".png"), root=r, frames_per_episode=0),
     "--frames-per-episode 0: must be an integer from 1 to 64"),
    (lambda r, o: contact_sheet("d", out=o.with_suffix(".png"), root=r, max_episodes=0),
     "--max-episodes 0: must be an integer from 1 to 1000"),
    (lambda r, o: contact_sheet("d", out=o, root=r), "x.mp4': must end in .png"),
    (lambda r, o: contact_sheet("plots", out=o.with_suffix(".png"), root=r),
     "dataset 'plots' has no cameras (RGB_IMAGES)"),

]


@pytest.mark.parametrize("call,message", _BAD_INPUTS, ids=[m.split(":")[0][:30] for _, m in _BAD_INPUTS])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, call, message: str) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(3, 4), cams=CAMS)
    make_dataset(root, "plots", lengths=(3,), cams={})
    folder = tmp_path / "out"
    (folder / "sub.mp4").mkdir(parents=True)
    with pytest.raises((ConfigError, DatasetError)) as info:
        call(root, folder / "x.mp4")
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert _files(folder) == ["sub.mp4"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_unwritable_folder(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(3,), cams=CAMS)
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="is not writable"):
            render_episode("d", 0, out=folder / "x.mp4", root=root)
    finally:
        folder.chmod(0o755)


def test_an_existing_output_is_kept_without_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "datasets"
    make_dataset(root, "d", lengths=(3,), cams=CAMS)
    out = tmp_path / "out"
    out.mkdir()
    for name in ("x.mp4", "x.gif", "x.png"):
        (out / name).write_bytes(b"old")
    for call in (lambda: render_episode("d", 0, out=out / "x.mp4", root=root),
                 lambda: render_episode("d", 0, out=out / "x.gif", root=root),
                 lambda: contact_sheet("d", out=out / "x.png", root=root)):
        with pytest.raises(ConfigError, match="already exists; pass --overwrite to replace it"):
            call()
    assert all((out / n).read_bytes() == b"old" for n in ("x.mp4", "x.gif", "x.png"))

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(view_module, "_write_mp4", broken)  # a failure while writing: the old file stays whole
    with pytest.raises(OSError):
        render_episode("d", 0, out=out / "x.mp4", root=root, overwrite=True)
    assert (out / "x.mp4").read_bytes() == b"old" and _files(out) == ["x.gif", "x.mp4", "x.png"]
    monkeypatch.undo()

    r = render_episode("d", 0, out=out / "x.mp4", root=root, overwrite=True)
    assert len(_decode_mp4(out / "x.mp4")[0]) == 3 and r["bytes"] == (out / "x.mp4").stat().st_size
    contact_sheet("d", out=out / "x.png", root=root, overwrite=True)
    assert Image.open(out / "x.png").format == "PNG"
    assert _files(out) == ["x.gif", "x.mp4", "x.png"]  # no temp files left

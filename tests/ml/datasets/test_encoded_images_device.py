"""JPEG images left encoded by the workers (`encoded_images=True`), batched by `collate`, decoded by torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from neuracore.ml.core import batch as keys
from neuracore.ml.core.errors import DatasetError
from neuracore.ml.datasets.encoded import EncodedImages, collate, decode_encoded, has_jpeg_images
from neuracore.ml.datasets.format import decode_images, encode_image, open_dataset

H, W = 16, 24  # tests/ml/conftest.py: IMAGE_HW of the `image_datasets` fixture
CPU = torch.device("cpu")


def test_torchvision_cpu_decode_is_bit_identical_to_pillow_on_our_jpegs() -> None:
    # Measured: torchvision 0.29.1 (libjpeg-turbo 3.1.3) and Pillow 13.0 (libjpeg-turbo 3.2.0) agree to
    # the bit (max abs difference 0) on encode_image's JPEGs (quality 95, 4:4:4) of every kind tried.
    rng = np.random.default_rng(0)
    worst = 0
    for trial, (h, w) in enumerate([(8, 8), (16, 24), (37, 53), (64, 64), (120, 160), (224, 224)]):
        y, x = np.mgrid[0:h, 0:w]
        smooth = np.stack([(x * 3 + trial) % 256, (y * 5) % 256, ((x + y) * 2) % 256], -1)
        frames = np.stack([rng.integers(0, 256, (h, w, 3)), smooth, np.clip(smooth + rng.integers(-20, 20, (h, w, 3)),
                                                                              0, 255), np.zeros((h, w, 3))])
        encoded = [encode_image(f.astype(np.uint8), "jpeg") for f in frames]
        pillow = decode_images(encoded, [h, w, 3], "test")  # the workers' path, [N, H, W, C]
        tv = decode_encoded(EncodedImages.from_frames(encoded, (len(encoded), 3, h, w)), CPU)
        assert tv.dtype == torch.uint8 and tv.shape == (len(encoded), 3, h, w)
        worst = max(worst, int(np.abs(tv.permute(0, 2, 3, 1).numpy().astype(int) - pillow.astype(int)).max()))
    assert worst == 0


def test_encoded_sample_holds_the_jpeg_bytes_in_time_camera_order(image_datasets, image_windows, assert_same) -> None:
    enc, plain = image_windows("jpeg", True), image_windows("jpeg", False)
    ds = open_dataset("jpeg", image_datasets)
    column = {c: ds.table.column(f"RGB_IMAGES.{c}").to_pylist() for c in ("top", "side")}
    for index, rows in [(0, [0, 0]), (3, [2, 3]), (5, [5, 5]), (10, [9, 10])]:  # window -> its table rows
        sample, reference = enc[index], plain[index]
        images = sample[keys.INPUTS]["RGB_IMAGES"]
        assert isinstance(images, EncodedImages) and images.shape == (2, 2, 3, H, W)
        assert images.data.dtype == torch.uint8 and images.data.dim() == 1
        # history 2 at an episode start repeats frame 0; frames are [T, N_cam] row-major
        assert [bytes(f.numpy()) for f in images.frames] == [column[c][s] for s in rows for c in ("top", "side")], index
        assert_same(decode_encoded(images, CPU), torch.from_numpy(reference[keys.INPUTS]["RGB_IMAGES"]))
        sample[keys.INPUTS]["RGB_IMAGES"] = reference[keys.INPUTS]["RGB_IMAGES"]
        assert_same(sample, reference)  # every other key untouched


def test_collate_batches_encoded_frames_and_default_collates_the_rest(image_windows, assert_same) -> None:
    enc, plain = image_windows("jpeg", True, history=3), image_windows("jpeg", False, history=3)
    picks = [0, 4, 5, 8, 14]  # both robots, episode starts (clamped history) and ends
    batch = collate([enc[i] for i in picks])
    reference = default_collate([plain[i] for i in picks])
    images = batch[keys.INPUTS]["RGB_IMAGES"]
    assert isinstance(images, EncodedImages) and images.shape == (5, 3, 2, 3, H, W)
    assert len(images.frames) == 5 * 3 * 2 and images.offsets[-1] == images.data.numel()
    decoded = decode_encoded(images, CPU)
    assert decoded.dtype == torch.uint8 and decoded.shape == (5, 3, 2, 3, H, W)
    batch[keys.INPUTS]["RGB_IMAGES"] = decoded
    assert_same(batch, reference)  # bit-identical images, same tensors, masks, is_pad and language
    assert batch[keys.LANGUAGE] == ["task 0", "task 0", "default task", "default task", "task 2"]
    assert not decoded[2, :, 1].any()  # mono's missing side camera: zeros, as in the worker path
    # without encoded frames `collate` is `default_collate`
    assert_same(collate([plain[i] for i in picks]), reference)


def test_png_and_raw_are_decoded_in_workers_even_with_encoded_images(image_windows, assert_same) -> None:
    assert has_jpeg_images(image_windows("jpeg", False))
    for name in ("png", "raw"):
        w = image_windows(name, True)
        assert not has_jpeg_images(w)
        images = w[7][keys.INPUTS]["RGB_IMAGES"]
        assert isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape == (2, 2, 3, H, W)
        assert_same(w[7], image_windows(name, False)[7])
    # the device-path decode of JPEG lands as close to the raw pixels as the worker path does
    raw = torch.from_numpy(image_windows("raw", False)[7][keys.INPUTS]["RGB_IMAGES"]).int()
    jpeg = decode_encoded(image_windows("jpeg", True)[7][keys.INPUTS]["RGB_IMAGES"], CPU).int()
    assert (raw - jpeg).abs().float().mean() < 4


def test_decode_errors_name_the_frame() -> None:
    frame = encode_image(np.zeros((H, W, 3), np.uint8), "jpeg")
    with pytest.raises(DatasetError, match=r"JPEG frame 1 decodes to shape \[3, 16, 24\], expected \[3, 8, 24\]"):
        decode_encoded(EncodedImages.from_frames([encode_image(np.zeros((8, W, 3), np.uint8), "jpeg"), frame],
                                                 (2, 3, 8, W)), CPU)
    with pytest.raises(DatasetError, match="JPEG frames cannot be decoded"):
        decode_encoded(EncodedImages.from_frames([frame, b"not a jpeg"], (2, 3, H, W)), CPU)
    with pytest.raises(DatasetError, match="different shapes in one batch"):
        EncodedImages.stack([EncodedImages.from_frames([frame], (1, 3, H, W)),
                             EncodedImages.from_frames([frame, frame], (2, 3, H, W))])
    empty = decode_encoded(EncodedImages.from_frames([], (0, 1, 3, H, W)), CPU)
    assert empty.shape == (0, 1, 3, H, W) and empty.dtype == torch.uint8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA device")
def test_nvjpeg_decode_close_to_pillow(image_windows) -> None:
    # nvJPEG is not libjpeg-turbo: the bound is the one torchvision's own CUDA test asserts against
    # its CPU decoder (mean absolute difference < 2); the maximum is printed for the record.
    enc, plain = image_windows("jpeg", True), image_windows("jpeg", False)
    picks = list(range(len(enc)))
    gpu = decode_encoded(collate([enc[i] for i in picks])[keys.INPUTS]["RGB_IMAGES"], torch.device("cuda"))
    cpu = default_collate([plain[i] for i in picks])[keys.INPUTS]["RGB_IMAGES"]
    assert gpu.is_cuda and gpu.dtype == torch.uint8 and gpu.shape == cpu.shape
    diff = (gpu.cpu().int() - cpu.int()).abs()
    print(f"nvJPEG vs Pillow: max abs difference {int(diff.max())}, mean {float(diff.float().mean()):.4f}")
    assert float(diff.float().mean()) < 2

"""DevicePrefetcher: the plain loader's batches, in its order, on the device, JPEG frames decoded there."""

from __future__ import annotations

import pytest
import torch

from neuracore.ml.algorithms.cnnmlp import CNNMLP
from neuracore.ml.config.schema import AlgorithmChoice, TrainConfig
from neuracore.ml.core import batch as keys
from neuracore.ml.datasets.encoded import EncodedImages, collate
from neuracore.ml.trainers.data import make_loader
from neuracore.ml.trainers.prefetch import DevicePrefetcher, to_device


def _config(num_workers: int) -> TrainConfig:
    return TrainConfig(algorithm=AlgorithmChoice("cnnmlp", CNNMLP, {}), dataset_name="jpeg", seed=7,
                       num_workers=num_workers)


def _loaders(image_windows, num_workers: int, pin_memory: bool = False):
    """(plain loader: JPEG decoded in workers, loader of encoded frames), same order, batch 4 of 15 windows."""
    config = _config(num_workers)
    plain = make_loader(image_windows("jpeg", False), 4, config, shuffle=True, pin_memory=pin_memory)
    encoded = make_loader(image_windows("jpeg", True), 4, config, shuffle=True, pin_memory=pin_memory,
                          collate_fn=collate)
    return plain, encoded


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_batches_in_the_same_order_as_the_plain_loader(image_windows, assert_same, num_workers: int) -> None:
    plain, encoded = _loaders(image_windows, num_workers)
    assert isinstance(next(iter(encoded))[keys.INPUTS]["RGB_IMAGES"], EncodedImages)
    prefetched = DevicePrefetcher(encoded, "cpu")
    assert len(prefetched) == len(plain) == 4  # ceil(15 / 4)
    for epoch in (0, 1):  # a fresh iterator per epoch; the sampler's new permutation reaches both
        plain.sampler.set_epoch(epoch)
        encoded.sampler.set_epoch(epoch)
        expected = list(plain)
        got = list(prefetched)
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            assert_same(a, b)  # keys, dtypes, shapes, values: decoded images bit-identical to Pillow's
    # over a plain loader it is the identity on CPU (compared with the stored epoch: a loader with
    # persistent workers has one iterator, so the two must not be iterated at once)
    for a, b in zip(DevicePrefetcher(plain, torch.device("cpu")), expected, strict=True):
        assert_same(a, b)


def test_decoded_images_language_and_lengths(image_windows) -> None:
    _, encoded = _loaders(image_windows, 0)
    batches = list(DevicePrefetcher(encoded, "cpu"))
    assert [b[keys.IS_PAD].shape[0] for b in batches] == [4, 4, 4, 3]
    for batch in batches:
        images = batch[keys.INPUTS]["RGB_IMAGES"]
        assert images.dtype == torch.uint8 and images.shape[1:] == (2, 2, 3, 16, 24)  # [B, T, N_cam, C, H, W]
        assert batch[keys.INPUTS]["JOINT_POSITIONS"].dtype == torch.float32
        language = batch[keys.LANGUAGE]
        assert isinstance(language, list) and all(isinstance(s, str) for s in language)
        assert set(language) <= {"task 0", "task 2", "default task"}
    assert sorted(s for b in batches for s in b[keys.LANGUAGE]) == sorted(["task 0"] * 5 + ["default task"] * 4 +
                                                                          ["task 2"] * 6)


def test_to_device_passes_other_values_through() -> None:
    batch = {"a": {"x": torch.arange(3)}, "language": ["pick", "place"], "n": 3, "t": (torch.ones(1), "s")}
    moved = to_device(batch, "cpu", non_blocking=True)
    assert moved["language"] == ["pick", "place"] and moved["n"] == 3 and moved["t"][1] == "s"
    assert torch.equal(moved["a"]["x"], torch.arange(3))


class _Sized:
    """An iterable with a length that is not a DataLoader."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def test_any_iterable_of_batches() -> None:
    items = [{"x": torch.full((2,), i)} for i in range(3)]
    prefetched = DevicePrefetcher(_Sized(items), "cpu")
    assert len(prefetched) == 3
    assert [int(b["x"][0]) for b in prefetched] == [0, 1, 2]
    assert list(DevicePrefetcher([], "cpu")) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_prefetch_matches_plain_loader(image_windows, assert_same) -> None:
    plain, encoded = _loaders(image_windows, 2, pin_memory=True)
    device = torch.device("cuda")
    expected = list(plain)
    # plain batches: exactly the loader's tensors, on the device
    for got, want in zip(DevicePrefetcher(plain, device), expected, strict=True):
        assert got[keys.INPUTS]["RGB_IMAGES"].is_cuda
        assert_same(to_device(got, "cpu"), want)
    # encoded batches: nvJPEG pixels within torchvision's own CUDA-vs-CPU bound, everything else exact
    worst, sums = 0, []
    for got, want in zip(DevicePrefetcher(encoded, device), expected, strict=True):
        images = got[keys.INPUTS]["RGB_IMAGES"]
        assert images.is_cuda and images.dtype == torch.uint8 and images.shape == want[keys.INPUTS]["RGB_IMAGES"].shape
        diff = (images.cpu().int() - want[keys.INPUTS]["RGB_IMAGES"].int()).abs()
        worst = max(worst, int(diff.max()))
        assert float(diff.float().mean()) < 2
        sums.append([float(images.double().sum()), float(got[keys.INPUTS]["JOINT_POSITIONS"].double().sum())])
        got[keys.INPUTS]["RGB_IMAGES"] = want[keys.INPUTS]["RGB_IMAGES"].to(device)
        assert_same(to_device(got, "cpu"), want)
    print(f"nvJPEG vs Pillow through the prefetcher: max abs difference {worst}")
    # Stream safety: the step's stream is kept busy, then reads the batch, while the prefetcher queues
    # the next copies and decodes and Python drops the batch; without record_stream (or with an nvJPEG
    # write into a recycled block) the late reads would see another batch's bytes. No host sync inside.
    late = []
    for got in DevicePrefetcher(encoded, device):
        torch.cuda._sleep(100_000_000)  # ~50 ms on the step's stream
        late.append(torch.stack([got[keys.INPUTS]["RGB_IMAGES"].double().sum(),
                                 got[keys.INPUTS]["JOINT_POSITIONS"].double().sum()]))
    assert [t.tolist() for t in late] == sums

"""On-device augmentation: torchvision's ops per sample, exact geometry, RNG-determined, training step only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torchvision.transforms.v2 import functional as TF

from neuracore.ml.core import augment
from neuracore.ml.core import batch as keys
from neuracore.ml.core.augment import AugmentationOptions, ImageAugmenter, build_augmenter, parse_augmentation
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.trainers.accelerator import reset_accelerate_state
from neuracore.ml.trainers.step import CompiledStep, EagerStep
from tests.ml.algorithms.test_registered_algorithms import Setup

RGB = DataType.RGB_IMAGES.value
COLOUR_ONLY = {"crop_scale": [1.0, 1.0], "rotation_degrees": 0.0, "translate": 0.0}


def _images(b=3, t=2, n=2, h=12, w=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, n, 3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("op,tv,low,high", [
    ("brightness", TF.adjust_brightness, 0.3, 1.8),
    ("contrast", TF.adjust_contrast, 0.3, 1.8),
    ("saturation", TF.adjust_saturation, 0.0, 2.0),
    ("hue", TF.adjust_hue, -0.5, 0.5),
    ("sharpness", TF.adjust_sharpness, 0.0, 2.0),
])
def test_each_colour_op_is_torchvisions_with_a_factor_per_sample(op, tv, low, high):
    x = torch.rand(6, 3, 9, 11)
    factors = torch.linspace(low, high, 6)
    out = augment._COLOUR_OPS[op](x, factors)
    for i in range(6):
        expected = tv(x[i], float(factors[i]))
        torch.testing.assert_close(out[i], expected, atol=2e-5, rtol=0)
    assert not torch.allclose(out[0], out[-1])


def test_identity_geometry_keeps_pixels_and_a_quarter_turn_is_rot90():
    x = torch.rand(2, 3, 8, 8)
    zeros = torch.zeros(2)
    params = {"crop_scale": torch.ones(2), "crop_ratio": torch.ones(2), "angle": zeros, "shift_x": zeros,
              "shift_y": zeros, "center_x": zeros, "center_y": zeros}
    torch.testing.assert_close(augment._geometry(x, params, 8, 8), x, atol=1e-5, rtol=0)
    turned = augment._geometry(x, {**params, "angle": torch.full((2,), math.pi / 2)}, 8, 8)
    assert any(torch.allclose(turned, torch.rot90(x, k, dims=(-2, -1)), atol=1e-5) for k in (1, -1))
    # a shift of a quarter of the width moves the content by 4 of 16 pixels and fills zeros
    wide = torch.rand(1, 1, 4, 16)
    one = {k: v[:1] for k, v in params.items()}
    shifted = augment._geometry(wide, {**one, "shift_x": torch.tensor([0.25])}, 4, 16)
    left, right = shifted[..., :12], shifted[..., 12:]
    torch.testing.assert_close(left, wide[..., 4:], atol=1e-5, rtol=0)
    assert right.abs().max() == 0


def test_a_half_area_crop_is_resized_crop_of_the_window():
    x = torch.rand(1, 3, 16, 16)
    zeros = torch.zeros(1)
    # area 1/4 (half width, half height), pushed to the top-left corner
    params = {"crop_scale": torch.tensor([0.25]), "crop_ratio": torch.ones(1), "angle": zeros, "shift_x": zeros,
              "shift_y": zeros, "center_x": -torch.ones(1), "center_y": -torch.ones(1)}
    out = augment._geometry(x, params, 16, 16)
    expected = torch.nn.functional.interpolate(x[..., :8, :8], size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_parameters_are_per_sample_and_camera_shared_over_history_and_seeded():
    options = parse_augmentation({"enabled": True, "crop_scale": [0.6, 1.0], "rotation_degrees": 10})
    aug = ImageAugmenter(options, ["top", "wrist"])
    same = _images(b=1).expand(4, -1, -1, -1, -1, -1).clone()  # four copies of one sample
    torch.manual_seed(3)
    out = aug.apply(same, aug.sample(same))
    assert out.shape == same.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert len({out[i].sum().item() for i in range(4)}) == 4  # every sample its own parameters
    # two history frames that are identical stay identical (one set of parameters per sample and camera)
    twin = _images(b=2, t=1).repeat(1, 2, 1, 1, 1, 1)
    twin_out = aug.apply(twin, aug.sample(twin))
    torch.testing.assert_close(twin_out[:, 0], twin_out[:, 1])
    torch.manual_seed(3)
    again = aug.apply(same, aug.sample(same))
    torch.testing.assert_close(out, again, atol=0, rtol=0)  # the run's RNG decides: a resume replays it
    torch.manual_seed(4)
    assert not torch.allclose(out, aug.apply(same, aug.sample(same)))


def test_a_camera_switched_off_keeps_its_pixels_and_overrides_apply_per_camera():
    options = parse_augmentation({"enabled": True, "cameras": {"wrist": False, "top": {"brightness": [2.0, 2.0]}},
                                  **COLOUR_ONLY, "contrast": [1, 1], "saturation": [1, 1], "hue": [0, 0],
                                  "sharpness": [1, 1]})
    aug = ImageAugmenter(options, ["top", "wrist"])
    x = _images()
    out = aug.apply(x, aug.sample(x))
    torch.testing.assert_close(out[:, :, 1], x[:, :, 1].float() / 255)
    torch.testing.assert_close(out[:, :, 0], (x[:, :, 0].float() / 255 * 2).clamp(0, 1), atol=1e-6, rtol=0)


def test_gradients_flow_to_the_pixels():
    aug = ImageAugmenter(parse_augmentation({"enabled": True, "crop_scale": [0.5, 0.9], "rotation_degrees": 20}),
                         ["top"])
    x = torch.rand(2, 1, 1, 3, 10, 10, requires_grad=True)
    aug.apply(x, aug.sample(x)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("node,message", [
    ({"brightnes": [0.8, 1.2]}, "training.augmentation.brightnes: unknown key"),
    ({"brightness": [1.2, 0.8]}, "training.augmentation.brightness=[1.2, 0.8]: need 0 <= low <= high <= 10"),
    ({"hue": [-0.7, 0.0]}, "training.augmentation.hue=[-0.7, 0.0]: need -0.5 <= low <= high <= 0.5"),
    ({"crop_scale": 0.9}, "training.augmentation.crop_scale=0.9: expected [low, high]"),
    ({"rotation_degrees": 270}, "training.augmentation.rotation_degrees=270: expected a number in [0, 180]"),
    ({"enabled": "yes"}, "training.augmentation.enabled='yes': expected true or false"),
    ({"cameras": {"top": 3}}, "training.augmentation.cameras.top=3: expected a mapping of overrides or false"),
    ({"cameras": {"top": {"sharpnes": [1, 1]}}}, "training.augmentation.cameras.top.sharpnes: unknown key"),
])
def test_bad_options_are_one_line_naming_the_key(node, message):
    with pytest.raises(ConfigError) as err:
        parse_augmentation(node)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_camera_and_off_states():
    with pytest.raises(ConfigError, match=r"cameras: side not among the model's cameras \(top\)"):
        ImageAugmenter(parse_augmentation({"enabled": True, "cameras": {"side": False}}), ["top"])
    assert build_augmenter(AugmentationOptions(), ["top"]) is None  # off by default
    assert build_augmenter(parse_augmentation({"enabled": True}), []) is None  # no cameras
    identity = {"enabled": True, "brightness": [1, 1], "contrast": [1, 1], "saturation": [1, 1], "hue": [0, 0],
                "sharpness": [1, 1]}
    assert build_augmenter(parse_augmentation(identity), ["top"]) is None  # nothing to do


@pytest.fixture()
def _fresh_accelerate_state():
    reset_accelerate_state()
    torch._dynamo.reset()
    yield
    reset_accelerate_state()


def _recording_step(setup: Setup, compiled: bool, augmenter: ImageAugmenter | None):
    accelerator = Accelerator(cpu=True)
    model = setup.model(seed=0)
    model, *optimizers = accelerator.prepare(model, *model.configure_optimizers())
    core = accelerator.unwrap_model(model)
    seen: list[torch.Tensor] = []
    original = core.training_step

    def record(batch):
        seen.append(batch[keys.INPUTS][RGB].detach().clone())
        return original(batch)

    core.training_step = record
    cls = CompiledStep if compiled else EagerStep
    extra = {"backend": "aot_eager"} if compiled else {}
    return cls(accelerator, model, optimizers, 1.0, augmenter=augmenter, **extra), core, seen


@pytest.mark.usefixtures("_fresh_accelerate_state")
def test_the_step_augments_and_validation_does_not(demo_home: Path):
    setup = Setup("cnnmlp", demo_home)
    batch = setup.batch()
    raw = batch[keys.INPUTS][RGB]
    aug = build_augmenter(parse_augmentation({"enabled": True, "crop_scale": [0.7, 1.0]}), ["top"])
    step, core, seen = _recording_step(setup, False, aug)
    torch.manual_seed(5)
    step(batch)
    torch.manual_seed(5)
    expected = aug.apply(raw, aug.sample(raw))  # what the step drew from the same RNG state
    torch.testing.assert_close(seen[-1], expected)
    assert not torch.allclose(seen[-1], raw.float() / 255)
    torch.testing.assert_close(batch[keys.INPUTS][RGB], raw)  # the loader's batch is left as it was
    core.eval()
    with torch.no_grad():
        core(batch)  # validation and inference call the model, not the step: no augmentation
    torch.testing.assert_close(seen[-1], raw)


@pytest.mark.usefixtures("_fresh_accelerate_state")
def test_the_compiled_step_augments_as_the_eager_step(demo_home: Path):
    setup = Setup("cnnmlp", demo_home)
    batch = setup.batch()
    aug = build_augmenter(parse_augmentation({"enabled": True, "crop_scale": [0.5, 1.0], "rotation_degrees": 15}),
                          ["top"])
    losses = {}
    for name, compiled, augmenter in (("eager", False, aug), ("compiled", True, aug), ("plain", False, None)):
        reset_accelerate_state()
        step, _core, _seen = _recording_step(setup, compiled, augmenter)
        torch.manual_seed(5)
        losses[name] = [float(step(batch)[0]["loss"].detach()) for _ in range(2)]
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4, abs=1e-5)
    assert losses["plain"] != pytest.approx(losses["eager"], rel=1e-4, abs=1e-5)


def test_the_readme_overrides_compose(home: Path):
    from neuracore.ml.config.preflight import compose_config
    from neuracore.ml.config.schema import validate_config
    from neuracore.ml.train import CONFIG_DIR

    default = validate_config(compose_config(["algorithm=act", "dataset_name=demo"], CONFIG_DIR))
    assert default.training.augmentation == AugmentationOptions()  # off, LeRobot's ranges
    config = validate_config(compose_config([
        "algorithm=act", "dataset_name=demo", "training.augmentation.enabled=true",
        "training.augmentation.crop_scale=[0.8,1.0]",
        "training.augmentation.cameras={wrist: {brightness: [0.9, 1.1]}, top: false}"], CONFIG_DIR))
    options = config.training.augmentation
    assert options.enabled and options.crop_scale == [0.8, 1.0]
    assert options.cameras["top"] is False
    assert options.cameras["wrist"].brightness == [0.9, 1.1] and options.cameras["wrist"].crop_scale == [0.8, 1.0]

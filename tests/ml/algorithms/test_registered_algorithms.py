"""Every registered algorithm trains, predicts, round-trips its state and overfits a few demo windows.

Parametrised over `registered_algorithms()`, so a newly registered algorithm is covered automatically;
give it small width-like hyper-parameters in `SMALL` to keep this file fast.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from neuracore.ml.config.schema import AlgorithmChoice, TrainConfig
from neuracore.ml.core import DataType, Modality, build_model, registered_algorithms
from neuracore.ml.core import batch as keys
from neuracore.ml.core.normalization import IMAGENET_MEAN, IMAGENET_STD
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.trainers.data import build_data

HORIZON = 5
BATCH = 8
OVERFIT_STEPS = 150

# Small widths per algorithm (keyed by registered name); unknown algorithms use their defaults.
SMALL: dict[str, dict] = {
    "cnnmlp": {"hidden_dim": 32, "cnn_output_dim": 32, "num_layers": 1},
    "act": {"hidden_dim": 32, "nheads": 2, "dim_feedforward": 64, "num_encoder_layers": 1, "num_vae_encoder_layers": 1,
            "latent_dim": 4, "dropout": 0.0, "lr_backbone": 1e-4},
    "diffusion_policy": {"unet_down_dims": [16, 32], "unet_diffusion_step_embed_dim": 16, "unet_n_groups": 4,
                         "spatial_softmax_num_keypoints": 8, "hidden_dim": 16, "num_train_timesteps": 20,
                         "num_inference_steps": 5, "crop_ratio": 1.0, "lr_scheduler_num_warmup_steps": 0,
                         "prediction_type": "sample"},
    "pi0": {"image_size": 64, "patch_size": 16, "vision_width": 32, "vision_depth": 1, "vision_mlp_dim": 64,
            "vision_num_heads": 2, "vocab_size": 260, "vlm_width": 64, "vlm_mlp_dim": 128, "expert_width": 64,
            "expert_mlp_dim": 128, "depth": 2, "num_heads": 2, "num_kv_heads": 1, "head_dim": 32, "max_token_len": 24},
    "pi05": {"image_size": 64, "patch_size": 16, "vision_width": 32, "vision_depth": 1, "vision_mlp_dim": 64,
             "vision_num_heads": 2, "vocab_size": 260, "vlm_width": 64, "vlm_mlp_dim": 128, "expert_width": 64,
             "expert_mlp_dim": 128, "depth": 2, "num_heads": 2, "num_kv_heads": 1, "head_dim": 32,
             "max_token_len": 96},
}

ALGORITHMS = sorted(registered_algorithms())


def tiny_hyperparameters(name: str) -> dict:
    cls = registered_algorithms()[name]
    hyper = {**cls.hyperparameter_defaults(), **SMALL.get(name, {})}
    if "use_pretrained_weights" in hyper:
        hyper["use_pretrained_weights"] = False  # tests never download weights
    return hyper


class Setup:
    def __init__(self, name: str, demo_home: Path) -> None:
        self.name = name
        self.cls = registered_algorithms()[name]
        self.hyper = tiny_hyperparameters(name)
        config = TrainConfig(
            algorithm=AlgorithmChoice(name, self.cls, self.hyper),
            dataset_name="demo",
            output_prediction_horizon=HORIZON,
            validation_split=0.2,
        )
        dataset = open_dataset("demo", root=demo_home / "datasets")
        self.data = build_data(config, dataset)
        windows = self.data.train
        # 8 fixed windows spread over the training episodes (start, middle and end of episodes).
        self.indices = np.linspace(0, len(windows) - 1, BATCH).round().astype(int).tolist()
        self.samples = [windows[i] for i in self.indices]

    def batch(self) -> dict:
        return default_collate(self.samples)

    def model(self, seed: int = 0):
        torch.manual_seed(seed)
        return build_model(self.cls, self.data.model_init, dict(self.hyper))


@pytest.fixture(scope="module", params=ALGORITHMS)
def setup(request: pytest.FixtureRequest, demo_home: Path) -> Setup:
    return Setup(request.param, demo_home)


def test_registry_lists_builtins():
    assert "cnnmlp" in ALGORITHMS
    for name, cls in registered_algorithms().items():
        assert cls.algorithm_name == name
        assert cls.supported_input_data_types and cls.supported_output_data_types


def test_batch_is_real_demo_data(setup: Setup):
    batch = setup.batch()
    for dt, feature in setup.data.model_init.inputs.items():
        if dt.modality == Modality.IMAGE:
            images = batch[keys.INPUTS][dt.value]
            assert images.dtype == torch.uint8
            assert images.shape[0] == BATCH and images.shape[-3:] == (3, 64, 64)
            assert images.float().std() > 5  # real pictures, not blank frames
    for dt, feature in setup.data.model_init.outputs.items():
        assert batch[keys.OUTPUTS][dt.value].shape == (BATCH, HORIZON, feature.dim)
    assert batch[keys.IS_PAD].shape == (BATCH, HORIZON)


def test_step_updates_every_trainable_parameter(setup: Setup):
    model = setup.model()
    model.train()
    batch = setup.batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizers = model.configure_optimizers()
    assert optimizers, "configure_optimizers returned nothing"
    losses = model(batch)  # forward is the DDP-visible entry point
    assert set(losses) >= {"loss"}
    for key, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), (key, value)
    assert losses["loss"].item() > 0
    losses["loss"].backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    without_grad = [n for n, p in trainable.items() if p.grad is None]
    assert without_grad == [], f"unused trainable parameters (DDP would fail): {without_grad[:5]}"
    for n, p in trainable.items():
        assert torch.isfinite(p.grad).all(), n
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
    unchanged = [n for n, p in trainable.items() if torch.equal(p.detach(), before[n])]
    assert unchanged == [], f"parameters not updated by the optimizer step: {unchanged[:5]}"
    frozen_changed = [n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p, before[n])]
    assert frozen_changed == []


def test_predict_shapes_and_units(setup: Setup):
    model = setup.model().eval()
    batch = setup.batch()
    out = model.predict(batch)
    outputs = setup.data.model_init.outputs
    assert set(out) == {dt.value for dt in outputs}
    for dt, feature in outputs.items():
        pred = out[dt.value]
        assert pred.shape == (BATCH, HORIZON, feature.dim), dt
        assert pred.dtype == torch.float32 and torch.isfinite(pred).all()
        assert not pred.requires_grad
    # Different windows give different chunks, and in eval mode a sample's chunk does not depend
    # on the rest of the batch (reversing the batch reverses the predictions).
    some = next(iter(out))
    assert not torch.allclose(out[some][0], out[some][-1])
    reversed_out = model.predict(default_collate(setup.samples[::-1]))
    for k in out:
        torch.testing.assert_close(reversed_out[k].flip(0), out[k], rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_gives_identical_predictions(setup: Setup, tmp_path: Path):
    trained = setup.model(seed=0)
    # Move away from the initialisation so the round trip carries trained values (and BN stats).
    trained.train()
    opt = trained.configure_optimizers()
    trained(setup.batch())["loss"].backward()
    for o in opt:
        o.step()
    trained.eval()
    path = tmp_path / "state.pt"
    torch.save(trained.state_dict(), path)
    fresh = setup.model(seed=123).eval()
    batch = setup.batch()
    a = trained.predict(batch)
    b_before = fresh.predict(batch)
    assert any(not torch.equal(a[k], b_before[k]) for k in a), "different seeds should give different models"
    result = fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    b = fresh.predict(batch)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_overfits_eight_windows(setup: Setup):
    model = setup.model(seed=0)
    model.train()
    batch = setup.batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(OVERFIT_STEPS):
        loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    final = float(np.mean(losses[-5:]))
    assert final < 0.2 * losses[0], f"{setup.name}: loss {losses[0]:.4f} -> {final:.4f} after {OVERFIT_STEPS} steps"


def _first_image_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3:
            return module
    pytest.skip("algorithm has no RGB convolution")


def test_images_reach_the_backbone_imagenet_normalised(setup: Setup):
    if DataType.RGB_IMAGES not in setup.data.model_init.inputs:
        pytest.skip("algorithm does not take RGB images")
    model = setup.model().eval()
    conv = _first_image_conv(model)
    seen: list[torch.Tensor] = []
    handle = conv.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    try:
        batch = setup.batch()
        model.predict(batch)
    finally:
        handle.remove()
    assert seen, "the first image convolution never ran"
    x = torch.cat([s.reshape(-1, *s.shape[-3:]) for s in seen])
    assert x.dtype == torch.float32 and x.shape[1] == 3
    # ImageNet statistics unless the model declares its own (pi0's SigLIP: mean 0.5, std 0.5).
    image_mean, image_std = getattr(model, "image_normalization", (IMAGENET_MEAN, IMAGENET_STD))
    mean = torch.tensor(image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_std).view(1, 3, 1, 1)
    unit = x * std + mean
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5, "not ImageNet-normalised [0, 1] images"
    assert unit.std() > 0.02, "images reaching the backbone are (nearly) constant"
    # Each image is uint8/255 of one of the batch's images (any time step / camera).
    raw = batch[keys.INPUTS][DataType.RGB_IMAGES.value]
    refs = raw.reshape(-1, *raw.shape[-3:]).float() / 255.0
    assert unit.shape[-2:] == refs.shape[-2:]
    for img in unit:
        best = (refs - img).abs().flatten(1).amax(1).min()
        assert best < 1e-5, f"an image at the backbone matches no batch image (max abs diff {best:.3g})"
    # Every sample of the batch reaches the backbone (last observation of each camera at least).
    last = raw[:, -1].reshape(-1, *raw.shape[-3:]).float() / 255.0
    for ref in last:
        assert ((unit - ref).abs().flatten(1).amax(1).min()) < 1e-5

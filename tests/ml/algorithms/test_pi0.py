"""pi0: attention structure, flow matching, language, training modes, schedule, configs, end-to-end CLI."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from neuracore.ml.algorithms.pi0 import Pi0
from neuracore.ml.algorithms.pi0.backbone import attention_mask_2d
from neuracore.ml.algorithms.pi0.model import resize_with_pad
from neuracore.ml.algorithms.pi0.tokenizer import ByteTokenizer, load_tokenizer
from neuracore.ml.core import batch as keys
from neuracore.ml.core.errors import ConfigError
from tests.ml.algorithms.pi0_helpers import (
    HORIZON,
    demo_batch,
    demo_data,
    make_tokenizer,
    tiny_pi0,
)

CONFIG_DIR = Path(__file__).resolve().parents[3] / "neuracore" / "ml" / "config" / "algorithm"


@pytest.fixture(scope="module")
def data(demo_home: Path):
    return demo_data(demo_home)


def test_attention_mask_is_prefix_bidirectional_and_blockwise_causal():
    # 3 prefix tokens (last one padding), state, 2 actions.
    pad = torch.tensor([[True, True, False, True, True, True]])
    blocks = torch.tensor([[False, False, False, True, True, False]])
    m = attention_mask_2d(pad, blocks)[0].int()
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],  # prefix sees prefix (bidirectional), never the suffix
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],  # padding sees only itself (no empty softmax row)
            [1, 1, 0, 1, 0, 0],  # state sees prefix and itself, not the actions
            [1, 1, 0, 1, 1, 1],  # actions see everything real, each other included
            [1, 1, 0, 1, 1, 1],
        ]
    )
    assert torch.equal(m, expected)


def test_cached_prefix_inference_matches_the_joint_training_pass(data):
    model = tiny_pi0(data).eval()
    batch = demo_batch(data)
    with torch.no_grad():
        prefix, prefix_pad = model._prefix(batch)
        b, p = prefix_pad.shape
        state = model._state(batch, b)
        x = torch.randn(b, HORIZON, 32)
        t = torch.full((b,), 0.7)
        joint = model._velocity(prefix, prefix_pad, state, x, t)
        _, cache = model.backbone(prefix, None, attention_mask_2d(prefix_pad, torch.zeros_like(prefix_pad)),
                                  torch.cumsum(prefix_pad.long(), 1) - 1)
        pad = torch.cat([prefix_pad, torch.ones(b, 1 + HORIZON, dtype=torch.bool)], 1)
        blocks = torch.cat([torch.zeros_like(prefix_pad), model._suffix_blocks(b, prefix.device)], 1)
        out, _ = model.backbone(None, model._suffix(state, x, t), attention_mask_2d(pad, blocks)[:, p:],
                                (torch.cumsum(pad.long(), 1) - 1)[:, p:], past=cache)
        cached = model.action_out_proj(out[:, 1:])
    torch.testing.assert_close(cached, joint, rtol=1e-4, atol=1e-5)


def test_padding_tokens_and_missing_cameras_do_not_change_the_actions(data):
    model = tiny_pi0(data).eval()
    batch = demo_batch(data)
    base = model.predict(batch)["JOINT_TARGET_POSITIONS"]
    # A camera the robot lacks (mask 0) contributes nothing, whatever its pixels.
    masked = dict(batch, input_masks=dict(batch[keys.INPUT_MASKS]))
    masked[keys.INPUT_MASKS]["RGB_IMAGES"] = torch.zeros_like(batch[keys.INPUT_MASKS]["RGB_IMAGES"])
    noisy = dict(masked, inputs=dict(batch[keys.INPUTS]))
    noisy[keys.INPUTS]["RGB_IMAGES"] = torch.randint_like(batch[keys.INPUTS]["RGB_IMAGES"], 0, 255)
    a = model.predict(masked)["JOINT_TARGET_POSITIONS"]
    b = model.predict(noisy)["JOINT_TARGET_POSITIONS"]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a, base)
    # 10 Euler steps by default; fewer steps give a different integration.
    assert model.num_inference_steps == 10
    model.num_inference_steps = 2
    assert not torch.allclose(model.predict(batch)["JOINT_TARGET_POSITIONS"], base)


def test_language_changes_the_prediction_and_tokens_are_padded(data):
    model = tiny_pi0(data).eval()
    batch = demo_batch(data)
    a = model.predict(batch)["JOINT_TARGET_POSITIONS"]
    other = dict(batch, language=["put the green cube away"] * len(batch[keys.LANGUAGE]))
    b = model.predict(other)["JOINT_TARGET_POSITIONS"]
    assert not torch.allclose(a, b)
    ids, mask = ByteTokenizer()(["hi", "x" * 100], 24)
    assert ids.shape == (2, 24) and ids[0, :4].tolist() == [1, ord("h") + 3, ord("i") + 3, ord("\n") + 3]
    assert mask[0].sum() == 4 and mask[1].all() and ids[0, 4:].eq(0).all()


def test_no_language_uses_the_default_prompt_said_once(demo_home: Path, caplog: pytest.LogCaptureFixture):
    data = demo_data(demo_home, ["JOINT_POSITIONS", "RGB_IMAGES"])
    with caplog.at_level(logging.INFO, logger="neuracore.ml.algorithms.pi0.model"):
        model = tiny_pi0(data, default_prompt="stack the cubes").eval()
        batch = demo_batch(data)
        assert keys.LANGUAGE not in batch
        out = model.predict(batch)["JOINT_TARGET_POSITIONS"]
        model.train()
        model(batch)
    said = [r.getMessage() for r in caplog.records if "stack the cubes" in r.getMessage()]
    assert said == ["pi0: the data spec has no LANGUAGE; every sample is prompted with 'stack the cubes'"]
    assert out.shape == (4, HORIZON, 3) and torch.isfinite(out).all()
    assert tiny_pi0(data).default_prompt == data.model_init.default_language == "perform the task"


def test_hf_tokenizer_from_a_local_folder(data, tmp_path: Path):
    folder = make_tokenizer(tmp_path / "tok")
    tok = load_tokenizer(str(folder), 260)
    ids, mask = tok(["pick up the red_cube"], 8)
    assert ids[0].tolist() == [1, 4, 5, 6, 7, 11, 0, 0]  # <bos> pick up the red cube <pad> <pad>
    assert mask[0].tolist() == [True] * 6 + [False] * 2
    model = tiny_pi0(data, tokenizer_path=str(folder)).eval()
    assert model.predict(demo_batch(data))["JOINT_TARGET_POSITIONS"].shape == (4, HORIZON, 3)
    with pytest.raises(ConfigError, match=r"algorithm.tokenizer_path='/nope': not a folder"):
        load_tokenizer("/nope", 260)
    with pytest.raises(ConfigError, match=r"algorithm.vocab_size=10: smaller than"):
        load_tokenizer(str(folder), 10)


def _step(model: Pi0, batch: dict, steps: int = 2) -> torch.optim.Optimizer:
    opt = model.configure_optimizers()[0]
    model.train()
    for _ in range(steps):
        loss = model(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return opt


@pytest.mark.parametrize(
    "mode, frozen_prefixes",
    [
        ({"train_expert_only": True}, ("backbone.vision.", "backbone.projector.", "backbone.embed_tokens.",
                                       "backbone.layers.0.vlm.", "backbone.layers.1.vlm.")),
        ({"freeze_vision_encoder": True}, ("backbone.vision.",)),
        ({}, ()),
    ],
)
def test_frozen_parts_are_bit_identical_and_have_no_optimizer_state(data, mode, frozen_prefixes):
    model = tiny_pi0(data, lr=1e-2, **mode)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = _step(model, demo_batch(data))
    # The prefix's last-layer output never reaches the actions: always frozen (no unused grads).
    always = ("backbone.vlm_norm.", "backbone.layers.1.vlm.mlp.", "backbone.layers.1.vlm.self_attn.o_proj.",
              "backbone.layers.1.vlm.self_attn.q_proj.",
              "backbone.layers.1.vlm.post_attention_layernorm.")
    stateful = {id(p) for p in opt.state}
    for name, p in model.named_parameters():
        frozen = name.startswith(frozen_prefixes + always)
        assert p.requires_grad == (not frozen), name
        if frozen:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
            assert p.grad is None and id(p) not in stateful, name
        else:
            assert not torch.equal(p, before[name]), f"trainable {name} did not change"
            assert id(p) in stateful, name
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(data):
    batch = demo_batch(data)
    grads = []
    for ckpt in (False, True):
        model = tiny_pi0(data, gradient_checkpointing=ckpt).train()
        torch.manual_seed(5)
        loss = model(batch)["loss"]
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert grads[0][1].keys() == grads[1][1].keys()
    for name in grads[0][1]:
        torch.testing.assert_close(grads[0][1][name], grads[1][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_weights_train_and_predict_float32(data):
    model = tiny_pi0(data, weights_dtype="bfloat16")
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert set(dtypes.values()) == {torch.bfloat16}
    assert model.output_norms["JOINT_TARGET_POSITIONS"].scale.dtype == torch.float32
    batch = demo_batch(data)
    _step(model, batch)
    out = model.eval().predict(batch)["JOINT_TARGET_POSITIONS"]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_schedule_warms_up_then_cosine_decays_in_optimizer_steps(data):
    model = tiny_pi0(data, warmup_steps=10, lr=2.5e-5, decay_lr=2.5e-6)
    opt = model.configure_optimizers()[0]
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["weight_decay"] == 0.01
    (sched,) = model.configure_schedulers([opt], num_training_steps=110)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2.5e-5 / 11)
    assert lrs[9] == pytest.approx(2.5e-5 * 10 / 11) and lrs[10] == pytest.approx(2.5e-5)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[60] == pytest.approx(2.5e-6 + (2.5e-5 - 2.5e-6) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-6)  # after the run's last optimizer step


def test_resize_with_pad_keeps_aspect_ratio():
    img = torch.ones(1, 3, 32, 64)
    out = resize_with_pad(img, 224)
    assert out.shape == (1, 3, 224, 224)
    rows = out[0, 0].amax(1)
    assert rows[:56].eq(0).all() and rows[56:168].gt(0.99).all() and rows[168:].eq(0).all()


def test_yaml_configs_match_the_constructor():
    full = yaml.safe_load((CONFIG_DIR / "pi0.yaml").read_text())
    defaults = Pi0.hyperparameter_defaults()
    algo = {k: v for k, v in full["algorithm"].items() if k != "_target_"}
    assert algo.keys() == defaults.keys()
    assert {k: (float(v) if isinstance(defaults[k], float) else v) for k, v in algo.items()} == defaults
    assert full["output_prediction_horizon"] == 50
    assert (defaults["lr"], defaults["beta1"], defaults["beta2"], defaults["weight_decay"]) == (2.5e-5, 0.9, 0.95, 0.01)
    assert (defaults["max_state_dim"], defaults["max_token_len"], defaults["image_size"]) == (32, 48, 224)
    tiny = yaml.safe_load((CONFIG_DIR / "pi0_tiny.yaml").read_text())
    assert tiny["defaults"] == ["pi0", "_self_"] and set(tiny["algorithm"]) <= set(defaults)


def test_full_size_has_pi0s_parameter_count():
    with torch.device("meta"):
        data_free = _meta_pi0()
    total = sum(p.numel() for p in data_free.parameters())
    assert 3.2e9 < total < 3.5e9, total
    expert = sum(p.numel() for layer in data_free.backbone.layers for p in layer.expert.parameters())
    assert 2.5e8 < expert < 3.5e8, expert


def _meta_pi0() -> Pi0:
    from neuracore.ml.core.data_types import DataType
    from neuracore.ml.core.model_init import FeatureSpec, ModelInitDescription

    mid = ModelInitDescription(
        inputs={
            DataType.JOINT_POSITIONS: FeatureSpec(DataType.JOINT_POSITIONS, ["a"] * 14, [1]),
            DataType.RGB_IMAGES: FeatureSpec(DataType.RGB_IMAGES, ["top"], [3, 224, 224]),
            DataType.LANGUAGE: FeatureSpec(DataType.LANGUAGE, ["instruction"], [1]),
        },
        outputs={DataType.JOINT_TARGET_POSITIONS: FeatureSpec(DataType.JOINT_TARGET_POSITIONS, ["a"] * 14, [1])},
        output_prediction_horizon=50,
    )
    return Pi0(mid)


TINY_CLI = [
    "algorithm=pi0_tiny",
    "dataset_name=demo",
    "batch_size=4",
    "num_workers=0",
    "training.log_images=false",
    "logging_frequency=1",
    "checkpoint_frequency=2",
]


@pytest.mark.slow
def test_pi0_tiny_trains_checkpoints_resumes_exports_and_predicts(home: Path):
    import json

    from tests.conftest import run_cli

    first = run_cli(TINY_CLI + ["max_steps=3", "training_name=pi0run"], home)
    assert first.returncode == 0, first.stderr[-3000:]
    run = home / "training" / "runs" / "pi0run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint_2", "checkpoint_3"]
    resumed = run_cli(TINY_CLI + ["max_steps=5", "training_name=pi0run", "resume_checkpoint_path=auto"], home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "at step 3" in resumed.stderr
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["algorithm"]["name"] == "pi0" and config["training"]["steps"] == 5
    hyper = config["algorithm"]["hyperparameters"]
    assert hyper["vlm_width"] == 64 and hyper["depth"] == 2 and hyper["lr"] == 1e-3
    assert config["data_spec"]["inputs"]["LANGUAGE"] == ["instruction"]

    from neuracore.ml import Policy
    from neuracore.ml.sim.pick_place import PickPlaceEnv

    policy = Policy.from_pretrained(run / "model")
    obs = PickPlaceEnv(7).observe()
    base = {"JOINT_POSITIONS": obs.joint_positions, "RGB_IMAGES": obs.image[None]}
    out = policy.predict({**base, "LANGUAGE": obs.language})["JOINT_TARGET_POSITIONS"]
    assert out.shape == (10, 3) and np.isfinite(out).all()  # pi0_tiny's chunk of 10
    policy.reset()
    again = policy.predict({**base, "LANGUAGE": obs.language})["JOINT_TARGET_POSITIONS"]
    np.testing.assert_array_equal(out, again)  # fixed inference noise: same observation, same chunk
    policy.reset()
    other = policy.predict({**base, "LANGUAGE": "put the yellow cube away"})["JOINT_TARGET_POSITIONS"]
    assert not np.allclose(out, other)


@pytest.mark.slow
def test_pi0_tiny_ddp_two_cpu_ranks_with_accumulation_counts_optimizer_steps(home: Path):
    import json
    import os
    import shutil
    import socket
    import subprocess
    import sys

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.conftest import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    env = {**os.environ, "NEURACORE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", str(port),
           "recipes/train.py", *TINY_CLI, "max_steps=4", "gradient_accumulation_steps=2", "training_name=pi0ddp",
           "logging_frequency=2"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    run = home / "training" / "runs" / "pi0ddp"
    state = json.loads((run / "checkpoints" / "checkpoint_4" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4
    assert (run / "model" / "model.safetensors").is_file()
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    lrs = {e.step: e.value for e in acc.Scalars("lr/optimizer0_group0")}
    # pi0_tiny: lr 1e-3, 10 warm-up steps; after n optimizer steps the factor is (n + 1) / 11, whatever
    # the number of ranks (2) and micro-batches per step (2).
    assert lrs[2] == pytest.approx(1e-3 * 3 / 11, rel=1e-5) and lrs[4] == pytest.approx(1e-3 * 5 / 11, rel=1e-5)

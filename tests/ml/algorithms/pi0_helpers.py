"""Tiny pi0 models, demo batches and test-made tokenizers shared by the pi0 tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import default_collate

from neuracore.ml.algorithms.pi0 import Pi0
from neuracore.ml.config.schema import AlgorithmChoice, TrainConfig
from neuracore.ml.core import build_model
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.trainers.data import DataBundle, build_data

HORIZON = 4
TINY = {
    "image_size": 64, "patch_size": 16, "vision_width": 32, "vision_depth": 1, "vision_mlp_dim": 64,
    "vision_num_heads": 2, "vocab_size": 260, "vlm_width": 32, "vlm_mlp_dim": 64, "expert_width": 32,
    "expert_mlp_dim": 64, "depth": 2, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16, "max_token_len": 24,
}  # fmt: skip
WORDS = ["pick", "up", "the", "red", "blue", "green", "yellow", "cube", "and", "put", "it", "in", "zone"]


def demo_data(demo_home: Path, input_data_types: list[str] | None = None) -> DataBundle:
    """Windows of the session's demo dataset for pi0 (horizon 4)."""
    config = TrainConfig(
        algorithm=AlgorithmChoice("pi0", Pi0, {}),
        dataset_name="demo",
        input_data_types=input_data_types,
        output_prediction_horizon=HORIZON,
        validation_split=0.2,
    )
    return build_data(config, open_dataset("demo", root=demo_home / "datasets"))


def demo_batch(data: DataBundle, n: int = 4) -> dict:
    """`n` windows spread over the training episodes."""
    idx = np.linspace(0, len(data.train) - 1, n).round().astype(int).tolist()
    return default_collate([data.train[i] for i in idx])


def tiny_pi0(data: DataBundle, seed: int = 0, **overrides) -> Pi0:
    """A randomly initialised tiny pi0 for the demo spec."""
    torch.manual_seed(seed)
    return build_model(Pi0, data.model_init, {**TINY, **overrides})


def make_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer saved with transformers (tiny vocabulary, bos/pad/unk), as a local folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(str(folder))
    return folder

"""Prompt tokenisation for pi0 and pi0.5: the PaliGemma tokenizer from a local folder, or a byte-level one.

pi0's prompt is `<bos>` + the cleaned instruction + `\\n`, padded (right) or cut to `max_len` tokens.
pi0.5 assembles its prompt from pieces (`encode`, `bos_id`, `pad_id`; see `pi05.prompt`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from neuracore.ml.core.errors import ConfigError

BYTE_VOCAB = 259  # pad 0, bos 1, eos 2, then the 256 byte values


class PromptTokenizer(Protocol):
    """What pi0 needs from a tokenizer."""

    vocab_size: int
    bos_id: int
    pad_id: int

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text as written: no bos, no cleaning, no padding."""

    def __call__(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(ids [B, max_len] int64, real-token mask [B, max_len] bool)`."""


def clean_prompt(text: str) -> str:
    """openpi's prompt cleaning: strip, underscores and newlines to spaces."""
    return text.strip().replace("_", " ").replace("\n", " ")


def pad_rows(rows: list[list[int]], max_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids, cut to `max_len` and right-padded: `(ids [B, max_len], real-token mask [B, max_len])`."""
    ids = torch.full((len(rows), max_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), max_len), dtype=torch.bool)
    for i, row in enumerate(rows):
        row = row[:max_len]
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask


class ByteTokenizer:
    """UTF-8 bytes as tokens: needs no files, for randomly initialised models (e.g. `pi0_tiny`)."""

    vocab_size = BYTE_VOCAB
    bos_id = 1
    pad_id = 0

    def encode(self, texts: list[str]) -> list[list[int]]:
        """UTF-8 bytes shifted past the three special ids."""
        return [[b + 3 for b in t.encode("utf-8")] for t in texts]

    def __call__(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise a batch of prompts."""
        rows = [[self.bos_id, *row] for row in self.encode([clean_prompt(t) + "\n" for t in texts])]
        return pad_rows(rows, max_len, self.pad_id)


class HFTokenizer:
    """A transformers tokenizer loaded from a local folder (never downloaded)."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"algorithm.tokenizer_path={path!r}: not a folder (a saved tokenizer, e.g. PaliGemma's)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable folder is the same user error
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"algorithm.tokenizer_path={path!r}: cannot load a tokenizer ({first})") from None
        if self.tokenizer.bos_token_id is None:
            raise ConfigError(f"algorithm.tokenizer_path={path!r}: the tokenizer has no bos token")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.bos_id = int(self.tokenizer.bos_token_id)
        self.vocab_size = len(self.tokenizer)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids without special tokens."""
        return [list(row) for row in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def __call__(self, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenise a batch of prompts (bos added here so every tokenizer behaves alike)."""
        encoded = self.encode([clean_prompt(t) + "\n" for t in texts])
        return pad_rows([[self.bos_id, *row] for row in encoded], max_len, self.pad_id)


def load_tokenizer(path: str | None, vocab_size: int) -> PromptTokenizer:
    """The tokenizer at `path` (or the byte tokenizer when None), checked against the embedding size."""
    tokenizer: PromptTokenizer = ByteTokenizer() if path is None else HFTokenizer(path)
    if tokenizer.vocab_size > vocab_size:
        source = "the byte tokenizer (tokenizer_path=null)" if path is None else repr(path)
        raise ConfigError(
            f"algorithm.vocab_size={vocab_size}: smaller than {source}'s {tokenizer.vocab_size} tokens"
        )
    return tokenizer

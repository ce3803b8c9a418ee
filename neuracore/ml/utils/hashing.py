"""sha256 of files, streamed in blocks (weights, dataset shards, storage blobs)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

_BLOCK = 1 << 22


def update_with_file(digest: Any, path: Path) -> None:
    """Feed a file's bytes into a hashlib digest without reading it whole."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    update_with_file(digest, path)
    return digest.hexdigest()

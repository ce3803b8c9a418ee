"""sha256 of files, streamed in blocks (weights, dataset shards, storage blobs)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, BinaryIO

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


def sha256_stream(src: BinaryIO) -> tuple[str, int]:
    """Hex sha256 and byte count of everything left in a binary stream."""
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: src.read(_BLOCK), b""):
        digest.update(block)
        size += len(block)
    return digest.hexdigest(), size


def copy_hashing(src: BinaryIO, dst: BinaryIO) -> tuple[str, int]:
    """Copy `src` to `dst` in blocks; sha256 and size of exactly the bytes written (hash what is copied)."""
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: src.read(_BLOCK), b""):
        digest.update(block)
        dst.write(block)
        size += len(block)
    return digest.hexdigest(), size

"""Storage errors: one-line messages naming the repository, revision, file or URL."""

from __future__ import annotations

from neuracore.ml.core.errors import NeuracoreError


class StorageError(NeuracoreError):
    """A repository, revision or blob cannot be read or written."""


class StorageConflictError(StorageError):
    """Another push moved the branch (or created the tag) first; nothing of this push is visible."""


class IntegrityError(StorageError):
    """Downloaded bytes do not match the sha256 recorded in the manifest."""


class SourceChangedError(StorageError):
    """A local file changed between hashing and upload; its bytes were not stored under the old hash."""

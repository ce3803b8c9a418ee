"""Writes that readers see whole or not at all: files, folder replaces and folder deletes.

One mechanism for every replace in the project (datasets, exported models, checkpoints, the
run's resolved config), so a kill at any instant leaves the old or the new version under the
name, never nothing and never half:

- `write_text_atomic`: temp file in the same folder, fsync, `os.replace`, fsync of the folder.
- `replace_dir(new, final)`: where the kernel can swap two folders in one step (Linux
  `renameat2(RENAME_EXCHANGE)`), it does. Elsewhere the old folder is renamed to
  `.<name>.replaced` first; `recover_replace(final)` (called by readers before they look)
  finishes a replace killed between the two renames by putting the old folder back.
- `remove_dir(path)`: renamed to `.<name>.deleting` in one step, then deleted, so a kill during
  the delete leaves a hidden leftover (cleaned by `sweep_deleted`) rather than a half-deleted
  folder under the real name.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import tempfile
from pathlib import Path

_EXCHANGE_UNSUPPORTED = (22, 38, 95)  # EINVAL, ENOSYS, EOPNOTSUPP: this filesystem/kernel cannot swap


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old or the new content, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def aside_path(path: Path) -> Path:
    """Where `replace_dir` keeps the old folder while the new one is renamed into place."""
    return path.parent / f".{path.name}.replaced"


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in _EXCHANGE_UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(b))


def _rmtree(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(new: Path, final: Path) -> None:
    """Put folder `new` at `final`, replacing what is there; `final` never holds nothing (see module doc)."""
    new, final = Path(new), Path(final)
    if not os.path.lexists(final):
        os.replace(new, final)
        fsync_dir(final.parent)
        return
    if final.is_dir() and not final.is_symlink() and exchange(new, final):
        fsync_dir(final.parent)
        _rmtree(new)  # the old folder, swapped out
        return
    aside = aside_path(final)
    if os.path.lexists(aside):
        _rmtree(aside)
    os.replace(final, aside)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(aside, final)
        raise
    fsync_dir(final.parent)
    _rmtree(aside)


def recover_replace(path: Path, complete_marker: str | None = None) -> None:
    """Finish a replace of `path` that was killed halfway (see `replace_dir`).

    The old folder set aside and nothing under the name: the old one is put back (when it holds
    `complete_marker`, if given). Both present: the new one is in place and the old copy is removed.
    """
    aside = aside_path(Path(path))
    try:
        if not os.path.lexists(aside):
            return
        if not os.path.lexists(path):
            if complete_marker is None or (aside / complete_marker).is_file():
                os.replace(aside, path)
            return
        _rmtree(aside)
    except OSError:
        pass  # e.g. a read-only folder: readers still get their own one-line "not found" later


def remove_dir(path: Path) -> None:
    """Delete a folder so that its name disappears in one step (hidden rename first, then the delete)."""
    path = Path(path)
    doomed = path.parent / f".{path.name}.deleting"
    if os.path.lexists(doomed):
        _rmtree(doomed)
    os.replace(path, doomed)
    fsync_dir(path.parent)
    _rmtree(doomed)


def sweep_deleted(folder: Path) -> None:
    """Finish deletes that were killed halfway (`.<name>.deleting` leftovers in `folder`)."""
    try:
        for leftover in Path(folder).glob(".*.deleting"):
            _rmtree(leftover)
    except OSError:
        pass

"""Exceptions whose message is a complete one-line explanation for the user, and how entry points report them."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn


class NeuracoreError(Exception):
    """Base class: the message names the key, file or value and what would be valid."""


class ConfigError(NeuracoreError):
    """A configuration key or value is invalid."""


class DatasetError(NeuracoreError):
    """A dataset is missing, corrupt or does not match the requested data spec."""


class CheckpointError(NeuracoreError):
    """A checkpoint or exported model cannot be written or loaded."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """`Type: message` with whitespace (newlines, tabs) collapsed, cut to `limit` characters."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"


INTERNAL_ERROR_EXIT_CODE = 70  # EX_SOFTWARE


def expected_failure(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a genuine internal bug.

    Expected: the project's own errors (bad key, file or value), the file system's (`OSError`: a
    full disk, a permission, a file where a folder is expected, a file too large) and running out
    of host memory. Everything else is a bug and keeps its traceback.
    """
    if isinstance(exc, NeuracoreError):
        return " ".join(str(exc).split())
    if isinstance(exc, OSError):
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        what = exc.strerror or one_line(exc)
        return f"{where}: {what}" if where else what
    if isinstance(exc, MemoryError):
        return "out of host memory (MemoryError); use a smaller batch_size, fewer workers or a smaller model"
    return None


class CliParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose usage errors never echo URL credentials.

    argparse quotes the offending argument (`invalid choice: 's3://KEY:secret@bucket/p'`); here every
    URL in the message loses its `user:password@` part first, as storage messages do."""

    def error(self, message: str) -> NoReturn:
        import re

        from neuracore.ml.storage.backend import redact

        super().error(re.sub(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+", lambda m: redact(m.group()), message))


def run_cli(prog: str, func: Any, *args: Any, exit_code: int = 2) -> int:
    """Call `func(*args)` for a command-line entry point: expected failures become one line on stderr
    (`<prog>: error: ...`) and a non-zero status (the error's own `exit_code`, else `exit_code`);
    an internal bug keeps its traceback and says so (status 70)."""
    import sys
    import traceback

    try:
        return int(func(*args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - sorted into expected (one line) and bugs (traceback) below
        message = expected_failure(exc)
        if message is None:
            traceback.print_exc()
            print(f"{prog}: internal error (a bug in neuracore: please report it with the traceback above)",
                  file=sys.stderr, flush=True)
            return INTERNAL_ERROR_EXIT_CODE
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return int(getattr(exc, "exit_code", exit_code))

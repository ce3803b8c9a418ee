"""Exceptions whose message is a complete one-line explanation for the user."""


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

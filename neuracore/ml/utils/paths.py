"""Where Neuracore keeps datasets, runs and storage, and safe names inside them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from neuracore.ml.core.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def neuracore_home() -> Path:
    """`$NEURACORE_HOME`, default `~/.neuracore`."""
    return Path(os.environ.get("NEURACORE_HOME") or Path.home() / ".neuracore").expanduser()


def datasets_root() -> Path:
    """Folder holding one sub-folder per materialised dataset."""
    return neuracore_home() / "datasets"


def runs_root() -> Path:
    """Default parent folder of training runs."""
    return neuracore_home() / "training" / "runs"


def check_name(name: str, key: str) -> str:
    """A dataset/run name that cannot escape its parent folder, or a one-line error."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ConfigError(
            f"{key}={name!r}: invalid name; use 1-128 letters, digits, '.', '_' or '-' "
            "starting with a letter or digit (no '/' or '..')"
        )
    return name

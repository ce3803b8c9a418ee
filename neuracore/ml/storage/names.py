"""Validation of repository ids, revision names and manifest file paths (nothing may escape a folder)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from neuracore.ml.core.errors import ConfigError

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION_HASH = re.compile(r"^[0-9a-f]{7,64}$")
_FULL_REVISION = re.compile(r"^[0-9a-f]{64}$")
_FILE_SEGMENT = re.compile(r"^[A-Za-z0-9_.+=@-][A-Za-z0-9_.+=@ -]{0,254}$")
DEFAULT_BRANCH = "main"


def check_segment(value: str, what: str) -> str:
    """An org, repository, branch or tag name: letters, digits, '.', '_', '-'; never '.' or '..'."""
    if not isinstance(value, str) or not _SEGMENT.match(value) or value in (".", "..") or ".." in value:
        raise ConfigError(
            f"{what}={value!r}: invalid name; use 1-96 letters, digits, '.', '_' or '-' starting with a "
            "letter or digit (no '/', '..' or absolute paths)"
        )
    return value


@dataclass(frozen=True)
class RepoRef:
    """`org/name` plus an optional revision (branch, tag or revision hash)."""

    org: str
    name: str
    revision: str | None = None

    @property
    def repo(self) -> str:
        """`org/name`."""
        return f"{self.org}/{self.name}"

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "")


def parse_repo(spec: str, allow_revision: bool = True) -> RepoRef:
    """Parse `org/name` or `org/name@revision`, rejecting anything that could escape a folder."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"repo={spec!r}: expected 'org/name' or 'org/name@revision'")
    repo, sep, revision = spec.partition("@")
    if sep and not allow_revision:
        raise ConfigError(f"repo={spec!r}: a revision ('@...') is not allowed here; pass --revision instead")
    parts = repo.split("/")
    if len(parts) != 2:
        raise ConfigError(f"repo={spec!r}: expected exactly 'org/name' (two names joined by one '/')")
    for value, what in ((parts[0], "org"), (parts[1], "name"), *(((revision, "revision"),) if sep else ())):
        try:
            check_segment(value, what)
        except ConfigError as exc:
            raise ConfigError(f"repo={spec!r}: {exc}") from None
    return RepoRef(parts[0], parts[1], revision or None)


def looks_like_repo(spec: str) -> bool:
    """True when `spec` parses as `org/name[@revision]`."""
    try:
        parse_repo(spec)
    except ConfigError:
        return False
    return True


def is_revision_hash(value: str) -> bool:
    """A full or abbreviated (>= 7 hex digits) revision id."""
    return bool(_REVISION_HASH.match(value))


def is_full_revision(value: object) -> bool:
    """A complete revision id: 64 lowercase hex digits (the only form stored in refs and cache paths)."""
    return isinstance(value, str) and bool(_FULL_REVISION.fullmatch(value))


def check_file_path(path: str, where: str) -> str:
    """A relative POSIX path of a file inside a revision: no '..', '.', empty, absolute or backslash parts."""
    bad = (
        not isinstance(path, str)
        or not path
        or path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or (len(path) > 1 and path[1] == ":")
        or len(path) > 1024
    )
    if not bad:
        segments = path.split("/")
        bad = any(s in ("", ".", "..") or not _FILE_SEGMENT.match(s) for s in segments)
    if bad:
        raise ConfigError(
            f"{where}: file name {path!r} is not a safe relative path (no absolute paths, '..', '.', "
            "backslashes or empty parts)"
        )
    return path

"""A storage root on an fsspec filesystem with the three primitives a hub needs.

`write_atomic` (readers see the old or the new bytes, never half), `create_exclusive`
(compare-and-swap by "create if absent": local `os.link` of a finished temp file, S3
`If-None-Match: *`), and blob upload/download. Only `file://` and `s3://` are accepted
because only they give a real exclusive create; a check-then-write fallback would let two
concurrent pushes both win.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from neuracore.ml.core.errors import ConfigError, one_line
from neuracore.ml.storage.errors import SourceChangedError, StorageError
from neuracore.ml.utils.hashing import copy_hashing, sha256_stream
from neuracore.ml.utils.paths import neuracore_home

STORAGE_ENV = "NEURACORE_STORAGE_URL"
ENDPOINT_ENVS = ("NEURACORE_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def default_storage_url() -> str:
    """`$NEURACORE_STORAGE_URL`, else `file://$NEURACORE_HOME/storage`."""
    return os.environ.get(STORAGE_ENV) or f"file://{neuracore_home() / 'storage'}"


def _changed(local: Path, expected: str, got: str) -> SourceChangedError:
    return SourceChangedError(
        f"{local}: changed while it was being pushed (sha256 {expected[:12]} when hashed, {got[:12]} when "
        "uploaded); it was not stored and nothing was published; push again once it stops changing"
    )


def _fsync_dir(path: Path) -> None:
    """Make a rename/link inside `path` durable (best effort: some file systems refuse directory fsync)."""
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


def redact(url: str) -> str:
    """The URL without any `user:password@` part (credentials never reach messages or logs).

    Secrets are often not URL-encoded (an S3 secret key may hold `/` or `@`), so the userinfo runs to
    the last `@` whenever it holds a `:` or comes before the first `/`; an `@` only in the path
    (`s3://bucket/a@b`) is left alone.
    """
    match = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)(.*)$", url, flags=re.DOTALL)
    if not match:
        return url
    scheme, rest = match.groups()
    last_at = rest.rfind("@")
    if last_at < 0:
        return url
    slash, first_at = rest.find("/"), rest.find("@")
    if ":" in rest[:last_at] or slash < 0 or first_at < slash:
        return f"{scheme}***@{rest[last_at + 1:]}"
    return url


class Store:
    """Paths relative to a storage root; subclasses implement the primitives."""

    url: str

    def describe(self, path: str = "") -> str:
        """Printable location of `path` (credentials redacted)."""
        return redact(self.url.rstrip("/") + ("/" + path if path else ""))

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def size(self, path: str) -> int | None:
        """Bytes of a stored object, or None when it is absent."""
        raise NotImplementedError

    def read_bytes(self, path: str) -> bytes:
        raise NotImplementedError

    def list_names(self, path: str) -> list[str]:
        """Base names directly under `path` (files and folders); [] when absent."""
        raise NotImplementedError

    def write_atomic(self, path: str, data: bytes) -> None:
        raise NotImplementedError

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Write `data` at `path` only if nothing is there; False when something already was."""
        raise NotImplementedError

    def upload_verified(self, local: Path, path: str, sha256: str) -> None:
        """Stream a local file to `path`, hashing exactly the bytes sent; the object appears whole or not at all.

        When the streamed bytes do not hash to `sha256` (the file changed since it was hashed) nothing is
        stored at `path` and SourceChangedError is raised. An object already at `path` is replaced, so a
        damaged blob is repaired by the next push of its content.
        """
        raise NotImplementedError

    def sha256(self, path: str) -> str | None:
        """Hex sha256 of a stored object's bytes (read back in full), or None when it is absent."""
        raise NotImplementedError

    def download(self, path: str, local: Path) -> None:
        """Copy the object at `path` to a local file."""
        raise NotImplementedError

    def root_exists(self) -> bool:
        """Whether the root (folder or bucket) exists, so an empty listing is not a typo in disguise."""
        raise NotImplementedError


class LocalStore(Store):
    """A folder on a local or network file system (`file://`)."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = url

    def _p(self, path: str) -> Path:
        return self.root / path

    def _tmp(self) -> Path:
        tmp = self.root / ".tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / f"{uuid.uuid4().hex}.part"

    def exists(self, path: str) -> bool:
        return self._p(path).exists()

    def size(self, path: str) -> int | None:
        p = self._p(path)
        return p.stat().st_size if p.is_file() else None

    def read_bytes(self, path: str) -> bytes:
        return self._p(path).read_bytes()

    def list_names(self, path: str) -> list[str]:
        p = self._p(path)
        return sorted(c.name for c in p.iterdir() if not c.name.startswith(".")) if p.is_dir() else []

    def write_atomic(self, path: str, data: bytes) -> None:
        tmp = self._tmp()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._p(path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, self._p(path))
            _fsync_dir(self._p(path).parent)
        finally:
            tmp.unlink(missing_ok=True)

    def create_exclusive(self, path: str, data: bytes) -> bool:
        tmp = self._tmp()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._p(path).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(tmp, self._p(path))  # atomic, fails if the name exists, content already complete
            except FileExistsError:
                return False
            _fsync_dir(self._p(path).parent)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def upload_verified(self, local: Path, path: str, sha256: str) -> None:
        tmp = self._tmp()
        try:
            with open(local, "rb") as src, open(tmp, "wb") as dst:
                got, _ = copy_hashing(src, dst)
                dst.flush()
                os.fsync(dst.fileno())  # on disk before it gets the blob's name
            if got != sha256:
                raise _changed(local, sha256, got)
            self._p(path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, self._p(path))
            _fsync_dir(self._p(path).parent)
        finally:
            tmp.unlink(missing_ok=True)

    def sha256(self, path: str) -> str | None:
        p = self._p(path)
        if not p.is_file():
            return None
        with open(p, "rb") as f:
            return sha256_stream(f)[0]

    def download(self, path: str, local: Path) -> None:
        shutil.copyfile(self._p(path), local)

    def root_exists(self) -> bool:
        return self.root.is_dir()


class FsspecStore(Store):
    """An object store through fsspec (`s3://bucket/prefix` via s3fs)."""

    def __init__(self, fs: Any, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url

    def _p(self, path: str) -> str:
        return f"{self.root}/{path}"

    def exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._p(path)))

    def size(self, path: str) -> int | None:
        try:
            info = self.fs.info(self._p(path))
        except FileNotFoundError:
            return None
        return int(info["size"]) if info.get("type") == "file" else None

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(self._p(path))

    def list_names(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(self._p(path), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries} - {""})

    def write_atomic(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(self._p(path), data)  # a single PUT is atomic on S3

    def create_exclusive(self, path: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self._p(path), data, mode="create")  # PUT with If-None-Match: *
        except FileExistsError:
            return False
        return True

    def upload_verified(self, local: Path, path: str, sha256: str) -> None:
        # Not autocommitted: the (multipart) upload becomes the object only at commit(), after the check.
        dst = self.fs.open(self._p(path), "wb", autocommit=False)
        committed = False
        try:
            with open(local, "rb") as src:
                got, _ = copy_hashing(src, dst)
            dst.close()  # sends the last part; nothing visible yet
            if got != sha256:
                raise _changed(local, sha256, got)
            dst.commit()
            committed = True
        finally:
            if not committed:
                dst.discard()  # aborts the multipart upload

    def sha256(self, path: str) -> str | None:
        try:
            with self.fs.open(self._p(path), "rb", cache_type="none") as f:
                return sha256_stream(f)[0]
        except FileNotFoundError:
            return None

    def download(self, path: str, local: Path) -> None:
        self.fs.get_file(self._p(path), str(local))

    def root_exists(self) -> bool:
        return bool(self.fs.exists(self.root.split("/", 1)[0]))  # the bucket; prefixes are implicit


def _s3_store(url: str) -> Store:
    try:
        import s3fs
    except ImportError:
        raise ConfigError(f"storage {redact(url)}: s3:// needs s3fs; pip install 'neuracore[s3]'") from None
    kwargs: dict[str, Any] = {"use_listings_cache": False, "skip_instance_cache": True}
    endpoint = next((os.environ[k] for k in ENDPOINT_ENVS if os.environ.get(k)), None)
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["client_kwargs"] = {"region_name": region}
    # Keys come from the usual AWS variables / profiles through botocore; never passed or printed here.
    fs = s3fs.S3FileSystem(**kwargs)
    root = url.split("://", 1)[1].strip("/")
    if not root:
        raise ConfigError(f"storage {redact(url)}: expected s3://bucket[/prefix]")
    return FsspecStore(fs, root, url)


def check_storage_url(url: str | None) -> str | None:
    """`url` unchanged, or a one-line `ConfigError` when it carries credentials (`s3://KEY:SECRET@bucket/...`).

    Keys written into a URL end up in the S3 client's own error messages (as a bucket name) and in shell
    history; they belong in the AWS variables or a profile. The message shows the URL redacted.
    """
    if url and redact(url) != url:
        raise ConfigError(
            f"storage {redact(url)}: credentials in the URL are not accepted (they would be echoed); use "
            "s3://bucket/prefix with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    return url


def open_store(url: str | None = None) -> Store:
    """The storage at `url` (default: `$NEURACORE_STORAGE_URL` or `file://$NEURACORE_HOME/storage`).

    Every push and pull (models, runs, datasets) opens its storage here, so a URL with credentials is
    refused here, before any client sees it."""
    url = check_storage_url(url or default_storage_url())
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if protocol in ("file", "local"):
        path = url.split("://", 1)[1] if "://" in url else url
        if not path:
            raise ConfigError(f"storage {url!r}: empty path")
        root = Path(path).expanduser()
        return LocalStore(root, f"file://{root.resolve()}")
    if protocol in ("s3", "s3a"):
        return _s3_store(url)
    raise ConfigError(
        f"storage {redact(url)}: protocol {protocol!r} is not supported; use file://PATH or s3://bucket/prefix "
        "(they provide the atomic create that keeps concurrent pushes safe)"
    )


def storage_call(store: Store, what: str, fn: Any, *args: Any) -> Any:
    """Run a storage operation, turning transport errors into a one-line StorageError."""
    try:
        return fn(*args)
    except StorageError:
        raise
    except FileNotFoundError:
        raise StorageError(f"storage {store.describe()}: {what} failed: object not found") from None
    except Exception as exc:  # noqa: BLE001 - botocore/aiohttp/OS errors of many kinds
        raise StorageError(f"storage {store.describe()}: {what} failed ({one_line(exc)})") from None


def local_temp_dir(parent: Path, name: str) -> Path:
    """A fresh temp folder beside its final place (same file system, so os.replace works)."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))

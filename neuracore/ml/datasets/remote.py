"""Training straight from object storage: shards fetched on demand into a bounded, verified local cache.

A dataset is read where it lies, shard by shard (the Arrow files under `data/`):

- `dataset_name=org/name[@rev] dataset.stream=true`: a revision pushed with `tools/dataset.py push`
  (hub storage, `$NEURACORE_STORAGE_URL`); every shard's sha256 comes from the revision's manifest.
- `dataset_name=s3://bucket/prefix/my_ds` (also `gs://`, `hf://`, `file://`, through fsspec): any folder
  in our format; its `shards.json` hash list (`tools/dataset.py shards NAME`) gives each shard's sha256,
  size and row count. A folder without one is refused; a shard is never used unverified.

Shards land in `dataset.cache_dir` (default `$NEURACORE_HOME/cache/shards`), named by their sha256, so
several datasets, DataLoader workers and ranks on one machine share one cache. A download goes to a
temp file, is hashed, and is renamed into place under a per-shard `fcntl` lock (one download per shard);
eviction (least recently used by mtime, touched on every use) runs under the cache-wide lock and keeps
the cache within `dataset.cache_max_gb`. A shard that is evicted while another process has it mapped
stays readable there (POSIX unlink); its space is freed when that process closes it.

`ShardedTable` serves the reads `WindowDataset` makes of `dataset.table` (`column(c).slice(start, n)`)
from memory-mapped cached shards; episodes may straddle shards. `ShardSampler` (chosen by
`trainers.data.make_loader`) orders the windows shard-group by shard-group, deterministically from
(seed, epoch), with each DDP rank reading its own shards.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from neuracore.ml.core.errors import ConfigError, DatasetError, one_line
from neuracore.ml.datasets.format import DATA_DIR, SPEC_FILE, MaterializedDataset, read_spec
from neuracore.ml.utils import atomic
from neuracore.ml.utils.hashing import copy_hashing
from neuracore.ml.utils.paths import neuracore_home

logger = logging.getLogger(__name__)

SHARDS_FILE = "shards.json"
SHARDS_FORMAT = "neuracore-shards/1"
URL_SCHEMES = ("s3", "gs", "hf", "file")
GB = 1 << 30
RECHECK_S = 1.0  # how often a process re-checks that a shard it keeps mapped is still in the cache


@dataclass(frozen=True)
class ShardInfo:
    """One Arrow file of a dataset: its path under the dataset folder, sha256, bytes and rows."""

    path: str
    sha256: str
    size: int
    rows: int


# --------------------------------------------------------------------------- names


def is_url(name: Any) -> bool:
    """True for `scheme://...` dataset names (`check_url` refuses schemes other than `URL_SCHEMES` by name)."""
    return isinstance(name, str) and "://" in name and name.split("://", 1)[0].replace("+", "").isalnum()


def wants_remote(name: Any, options: Any) -> bool:
    """Whether `dataset_name` (with the `dataset.*` options) is read from object storage shard by shard."""
    from neuracore.ml.storage.names import looks_like_repo

    return is_url(name) or (bool(getattr(options, "stream", False)) and isinstance(name, str)
                            and looks_like_repo(name))


def check_url(name: str) -> str:
    """A dataset URL, or a one-line ConfigError naming what is valid."""
    if "://" not in name:
        raise ConfigError(f"dataset_name={name!r}: not a URL; use s3://bucket/path, gs://, hf:// or file:///path")
    scheme, rest = name.split("://", 1)
    if scheme.lower() not in URL_SCHEMES:
        raise ConfigError(f"dataset_name={name!r}: scheme {scheme!r} is not supported; valid: "
                          f"{', '.join(s + '://' for s in URL_SCHEMES)}")
    if not rest.strip("/") or any(p in ("..", ".") for p in rest.split("/")):
        where = "/path/to/dataset" if scheme.lower() == "file" else "bucket/path/to/dataset"
        raise ConfigError(f"dataset_name={name!r}: expected {scheme}://{where} (no '..')")
    from neuracore.ml.storage.backend import check_storage_url

    check_storage_url(name)  # credentials in the URL are refused (they would be echoed)
    return name.rstrip("/")


# --------------------------------------------------------------------------- hash list


def _shard_rows(path: Path) -> int:
    """Rows of one Arrow IPC stream file (HF `save_to_disk` shard), memory-mapped."""
    with pa.memory_map(str(path)) as source:
        return sum(batch.num_rows for batch in pa.ipc.open_stream(source))


def shard_list(folder: Path) -> list[ShardInfo]:
    """The `ShardInfo` of every Arrow file under `folder/data/`, hashed now."""
    from neuracore.ml.utils.hashing import sha256_file

    files = sorted((Path(folder) / DATA_DIR).glob("*.arrow"))
    if not files:
        raise DatasetError(f"{folder / DATA_DIR}: no Arrow shards (*.arrow)")
    return [ShardInfo(f"{DATA_DIR}/{f.name}", sha256_file(f), f.stat().st_size, _shard_rows(f)) for f in files]


def write_shard_list(folder: Path, shard_mb: float | None = None) -> list[ShardInfo]:
    """Write `folder/shards.json` (sha256, bytes, rows per shard); with `shard_mb`, first re-shard `data/`.

    Re-sharding rewrites `data/` into shards of at most about `shard_mb` MB (the same rows in the same
    order; the spec's fingerprint is recomputed) in a copy of the folder that replaces it atomically.
    """
    from neuracore.ml.datasets.format import fingerprint_files

    folder = Path(folder)
    spec = read_spec(folder)
    if shard_mb is not None:
        if not shard_mb > 0:
            raise ConfigError(f"--shard-mb={shard_mb}: must be > 0")
        import datasets as hf_datasets

        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-reshard-", dir=folder.parent))
        try:
            for p in folder.iterdir():
                if p.name not in (DATA_DIR, SHARDS_FILE) and p.is_file():
                    shutil.copy2(p, staging / p.name)
            hf_datasets.disable_progress_bars()
            hf = hf_datasets.load_from_disk(str(folder / DATA_DIR))
            hf.save_to_disk(str(staging / DATA_DIR), max_shard_size=int(shard_mb * (1 << 20)))
            spec.fingerprint = fingerprint_files(staging / DATA_DIR)
            (staging / SPEC_FILE).write_text(json.dumps(spec.to_json(), indent=1))
            shards = shard_list(staging)
            (staging / SHARDS_FILE).write_text(_shards_json(shards))
            atomic.replace_dir(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return shards
    shards = shard_list(folder)
    atomic.write_text_atomic(folder / SHARDS_FILE, _shards_json(shards))
    return shards


def _shards_json(shards: Sequence[ShardInfo]) -> str:
    return json.dumps({"format": SHARDS_FORMAT, "shards": [s.__dict__ for s in shards]}, indent=1)


def parse_shard_list(data: bytes, where: str) -> list[ShardInfo]:
    """A `shards.json`'s shards, or a one-line DatasetError naming `where` and the problem."""
    from neuracore.ml.storage.names import check_file_path

    try:
        doc = json.loads(data)
        if doc.get("format") != SHARDS_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {SHARDS_FORMAT!r}")
        shards = []
        for s in doc["shards"]:
            path = check_file_path(str(s["path"]), where)
            if not (path.startswith(f"{DATA_DIR}/") and path.endswith(".arrow") and path.count("/") == 1):
                raise ValueError(f"shard {path!r} is not data/<file>.arrow")
            sha = str(s["sha256"])
            if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                raise ValueError(f"shard {path!r}: sha256 {sha!r} is not 64 hex digits")
            size, rows = int(s["size"]), int(s["rows"])
            if size <= 0 or rows < 0:
                raise ValueError(f"shard {path!r}: size {size}, rows {rows}")
            shards.append(ShardInfo(path, sha, size, rows))
        if not shards:
            raise ValueError("no shards")
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise DatasetError(f"{where}: unreadable hash list ({one_line(exc)})") from None
    return shards


# --------------------------------------------------------------------------- sources


class Source:
    """Where a dataset's files are: reads small files whole, downloads shards to a local path."""

    url: str

    def read(self, rel: str) -> bytes:
        """Bytes of a small file (spec.json, shards.json) of the dataset."""
        raise NotImplementedError

    def download(self, shard: ShardInfo, dst: Any) -> str:
        """Copy `shard` into the binary file `dst` (opened by path); returns the sha256 of the bytes written."""
        raise NotImplementedError

    def shards(self) -> list[ShardInfo]:
        """The dataset's shards with their expected sha256 (a one-line error when there is no hash list)."""
        raise NotImplementedError


class FsspecSource(Source):
    """A dataset folder at an fsspec URL (`s3://`, `gs://`, `hf://`, `file://`)."""

    def __init__(self, url: str) -> None:
        self.url = check_url(url)
        self._fs: Any = None
        self._pid = -1

    @property
    def fs(self) -> Any:
        """The filesystem, opened per process (async clients do not survive a fork)."""
        if self._fs is None or self._pid != os.getpid():
            import fsspec

            kwargs: dict[str, Any] = {}
            if self.url.lower().startswith("s3://"):
                from neuracore.ml.storage.backend import ENDPOINT_ENVS

                endpoint = next((os.environ[k] for k in ENDPOINT_ENVS if os.environ.get(k)), None)
                kwargs = {"skip_instance_cache": True, **({"endpoint_url": endpoint} if endpoint else {})}
            try:
                self._fs, self._root = fsspec.core.url_to_fs(self.url, **kwargs)
            except (ImportError, ValueError) as exc:
                raise ConfigError(f"dataset_name={self.url!r}: cannot open ({one_line(exc)}); s3:// needs s3fs, "
                                  "gs:// gcsfs, hf:// huggingface_hub") from None
            self._pid = os.getpid()
        return self._fs

    def _path(self, rel: str) -> str:
        _ = self.fs
        return f"{self._root.rstrip('/')}/{rel}"

    def read(self, rel: str) -> bytes:
        """Bytes of `rel` under the folder."""
        try:
            return self.fs.cat_file(self._path(rel))
        except FileNotFoundError:
            raise DatasetError(f"{self.url}/{rel}: not found") from None
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{self.url}/{rel}: cannot read ({one_line(exc)})") from None

    def download(self, shard: ShardInfo, dst: Any) -> str:
        """Stream the shard into `dst`, hashing as it goes."""
        try:
            with self.fs.open(self._path(shard.path), "rb") as src:
                return copy_hashing(src, dst)[0]
        except FileNotFoundError:
            raise DatasetError(f"{self.url}/{shard.path}: listed in {SHARDS_FILE} but not found") from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # writing the cache copy: the cache reports it
                raise
            raise DatasetError(f"{self.url}/{shard.path}: cannot download ({one_line(exc)})") from None

    def shards(self) -> list[ShardInfo]:
        """From `shards.json`; refused with the command that writes it when there is none."""
        try:
            data = self.fs.cat_file(self._path(SHARDS_FILE))
        except FileNotFoundError:
            raise DatasetError(
                f"{self.url}: no {SHARDS_FILE} (the sha256 of every shard, needed to verify them); write it with "
                f"`python tools/dataset.py shards NAME` before uploading, or upload a folder pushed with it"
            ) from None
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{self.url}/{SHARDS_FILE}: cannot read ({one_line(exc)})") from None
        shards = parse_shard_list(data, f"{self.url}/{SHARDS_FILE}")
        try:
            present = {p.rsplit("/", 1)[-1] for p in self.fs.glob(self._path(f"{DATA_DIR}/*.arrow"))}
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{self.url}/{DATA_DIR}: cannot list ({one_line(exc)})") from None
        listed = {s.path.rsplit("/", 1)[-1] for s in shards}
        if present != listed:
            raise DatasetError(f"{self.url}: {SHARDS_FILE} lists {sorted(listed - present) or 'no missing'} not in "
                               f"{DATA_DIR}/ and misses {sorted(present - listed) or 'none'}; rewrite it with "
                               "`python tools/dataset.py shards NAME` and upload again")
        return shards


class HubSource(Source):
    """A dataset revision in hub storage (`org/name[@rev]`); sha256 from its manifest."""

    def __init__(self, spec: str, storage_url: str | None = None) -> None:
        from neuracore.ml.storage import Hub
        from neuracore.ml.storage.datasets import DATASET_KIND
        from neuracore.ml.storage.names import RepoRef, parse_repo

        ref = parse_repo(spec)
        self._storage_url = storage_url
        self._hub: Any = Hub(storage_url)
        self._pid = os.getpid()
        revision = self._hub.revision(ref)
        if revision.manifest.get("kind") != DATASET_KIND:
            raise DatasetError(f"{ref}: revision {revision.id[:12]} is a {revision.manifest.get('kind')!r}, "
                               "not a dataset")
        self.ref = RepoRef(ref.org, ref.name, revision.id)
        self.files = revision.files
        self.url = f"{ref.org}/{ref.name}@{revision.id[:12]}"

    @property
    def hub(self) -> Any:
        """The hub client, opened per process."""
        if self._pid != os.getpid():
            from neuracore.ml.storage import Hub

            self._hub, self._pid = Hub(self._storage_url), os.getpid()
        return self._hub

    def _blob(self, rel: str) -> str:
        if rel not in self.files:
            raise DatasetError(f"{self.url}: has no file {rel!r}")
        return self.hub._blob(self.ref, self.files[rel]["sha256"])

    def read(self, rel: str) -> bytes:
        """A small file, checked against the manifest's sha256."""
        data = self.hub._call(f"reading {rel}", self.hub.store.read_bytes, self._blob(rel))
        got = hashlib.sha256(data).hexdigest()
        if got != self.files[rel]["sha256"]:
            raise DatasetError(f"{self.url}: {rel} has sha256 {got}, the manifest says {self.files[rel]['sha256']}")
        return data

    def download(self, shard: ShardInfo, dst: Any) -> str:
        """Download the blob to a temp file beside `dst`, then copy-hash it in."""
        with tempfile.TemporaryDirectory(dir=Path(dst.name).parent) as tmp:
            local = Path(tmp) / "blob"
            self.hub._call(f"downloading {shard.path}", self.hub.store.download, self._blob(shard.path), local)
            with open(local, "rb") as src:
                return copy_hashing(src, dst)[0]

    def shards(self) -> list[ShardInfo]:
        """Rows from the revision's `shards.json`, sha256 and size from its manifest (which must agree)."""
        if SHARDS_FILE not in self.files:
            raise DatasetError(
                f"{self.url}: the revision has no {SHARDS_FILE} (row counts of its shards); run "
                f"`python tools/dataset.py shards NAME` and push again, or train without dataset.stream"
            )
        shards = parse_shard_list(self.read(SHARDS_FILE), f"{self.url}/{SHARDS_FILE}")
        arrows = {rel for rel in self.files if rel.startswith(f"{DATA_DIR}/") and rel.endswith(".arrow")}
        for s in shards:
            entry = self.files.get(s.path)
            if entry is None or entry["sha256"] != s.sha256:
                raise DatasetError(f"{self.url}: {SHARDS_FILE} says {s.path} has sha256 {s.sha256}, the manifest "
                                   f"{entry['sha256'] if entry else 'has no such file'}; rewrite it and push again")
        if arrows != {s.path for s in shards}:
            raise DatasetError(f"{self.url}: {SHARDS_FILE} does not list every shard of {DATA_DIR}/; rewrite it "
                               "with `python tools/dataset.py shards NAME` and push again")
        return shards


def open_source(name: str) -> Source:
    """The source of a remote `dataset_name` (URL, or hub `org/name[@rev]`)."""
    return FsspecSource(name) if "://" in name else HubSource(name)


# --------------------------------------------------------------------------- cache


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive `fcntl` lock on `path` (created), held for the block; shared by processes and ranks."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # a read-only or vanished cache folder: one line, not a traceback
        raise DatasetError(f"dataset.cache_dir={str(path.parent.parent)!r}: cannot write the lock {path.name} "
                           f"({exc.strerror or one_line(exc)}); give a writable dataset.cache_dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def default_cache_dir() -> Path:
    """`$NEURACORE_HOME/cache/shards`."""
    return neuracore_home() / "cache" / "shards"


_STATS = ("hits", "misses", "downloaded_bytes")
_last_stamp = 0


def _stamp(path: Path) -> None:
    """Mark `path` as just used: an explicit nanosecond mtime, increasing within a process.

    The kernel's own "now" for `utime(path)` is coarse (a clock tick), so shards used in quick
    succession would tie and eviction would not follow the order of use.
    """
    global _last_stamp
    _last_stamp = max(time.time_ns(), _last_stamp + 1)
    os.utime(path, ns=(_last_stamp, _last_stamp))


class ShardCache:
    """A bounded folder of verified shards named by sha256, with LRU eviction (see the module doc).

    `stats()` counts, over this process and its DataLoader workers (shared memory, inherited on
    fork), the shards a process loaded (mapped; reads of a shard it keeps mapped are not counted):
    `hits` (found in the cache), `misses` (downloaded) and `downloaded_bytes`.
    """

    def __init__(self, folder: Path | str | None, max_bytes: int) -> None:
        self.folder = Path(folder).expanduser() if folder else default_cache_dir()
        self.max_bytes = int(max_bytes)
        self._stats: Any = multiprocessing.Array("q", len(_STATS))
        try:
            (self.folder / ".locks").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatasetError(f"dataset.cache_dir={str(self.folder)!r}: cannot create "
                               f"({exc.strerror or one_line(exc)}); give a writable dataset.cache_dir") from None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if multiprocessing.context.get_spawning_popen() is None:  # plain pickling: a copy of the counts
            state["_stats"] = list(self._stats)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state["_stats"], list):
            state["_stats"] = multiprocessing.Array("q", state["_stats"])
        self.__dict__.update(state)

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats.get_lock():
            self._stats[_STATS.index(key)] += n

    def stats(self) -> dict[str, int]:
        """`hits`, `misses` and `downloaded_bytes` so far (this process and its workers)."""
        with self._stats.get_lock():
            return dict(zip(_STATS, self._stats[:]))

    @property
    def hits(self) -> int:
        """Shards needed and found in the cache."""
        return self.stats()["hits"]

    @property
    def misses(self) -> int:
        """Shards downloaded."""
        return self.stats()["misses"]

    def path(self, sha256: str) -> Path:
        """Where the shard with this sha256 lives in the cache."""
        return self.folder / sha256[:2] / f"{sha256}.arrow"

    def entries(self) -> list[Path]:
        """Every cached shard."""
        return list(self.folder.glob("??/*.arrow"))

    def used_bytes(self) -> int:
        """Bytes of the cached shards."""
        total = 0
        for p in self.entries():
            try:
                total += p.stat().st_size
            except FileNotFoundError:  # evicted meanwhile by another process
                pass
        return total

    def still_cached(self, path: Path, inode: int, stamp: bool = True) -> bool:
        """Whether the file a process mapped (`inode`) is still the cached one; stamps it as used if so."""
        try:
            if path.stat().st_ino != inode:
                return False
            if stamp:
                _stamp(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise DatasetError(f"dataset.cache_dir={str(self.folder)!r}: cannot use {path.name} "
                               f"({exc.strerror or one_line(exc)})") from None
        return True

    def _hit(self, path: Path, shard: ShardInfo) -> bool:
        try:
            if path.stat().st_size != shard.size:
                return False
            _stamp(path)  # the LRU stamp
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise DatasetError(f"dataset.cache_dir={str(self.folder)!r}: cannot use {path.name} "
                               f"({exc.strerror or one_line(exc)})") from None
        return True

    def get(self, source: Source, shard: ShardInfo) -> Path:
        """Local path of a verified copy of `shard`: from the cache, else downloaded, hashed and renamed in."""
        path = self.path(shard.sha256)
        if self._hit(path, shard):
            self._count("hits")
            return path
        if shard.size > self.max_bytes:  # it could never be cached within the bound
            raise DatasetError(
                f"dataset.cache_max_gb={self.max_bytes / GB:g}: smaller than shard {source.url}/{shard.path} "
                f"({_size(shard.size)}); use dataset.cache_max_gb>={_ceil_gb(shard.size)}")
        with _locked(self.folder / ".locks" / f"{shard.sha256}.lock"):
            if self._hit(path, shard):  # another worker or rank fetched it meanwhile
                self._count("hits")
                return path
            self._fetch(source, shard, path)
            self._count("misses")
            self._count("downloaded_bytes", shard.size)
        return path

    def _fetch(self, source: Source, shard: ShardInfo, path: Path) -> None:
        with _locked(self.folder / ".locks" / "cache.lock"):
            self._evict(shard.size, keep=path)
        tmp: str | None = None
        try:
            free = shutil.disk_usage(self.folder).free
            if free < shard.size:
                raise DatasetError(self._full(shard, free))
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{shard.sha256[:16]}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            with open(tmp, "wb") as dst:  # opened by name: `dst.name` is its path (HubSource downloads beside it)
                got = source.download(shard, dst)
                dst.flush()
                os.fsync(dst.fileno())
            if got != shard.sha256:
                raise DatasetError(f"shard {source.url}/{shard.path}: sha256 {got}, expected {shard.sha256}; "
                                   "the stored file or the download is damaged (nothing was cached)")
            os.replace(tmp, path)
            tmp = None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DatasetError(self._full(shard, shutil.disk_usage(self.folder).free)) from None
            raise DatasetError(f"shard {source.url}/{shard.path}: cannot write into dataset.cache_dir="
                               f"{str(self.folder)!r} ({exc.strerror or one_line(exc)}); give a writable "
                               "dataset.cache_dir") from None
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    def _full(self, shard: ShardInfo, free: int) -> str:
        return (f"dataset.cache_dir={str(self.folder)!r}: disk full ({free / GB:.2f} GB free) while fetching a "
                f"{_size(shard.size)} shard ({shard.path}); free space there or lower dataset.cache_max_gb")

    def _evict(self, incoming: int, keep: Path) -> None:
        """Remove least recently used shards until `incoming` more bytes fit within `max_bytes`."""
        entries = []
        for p in self.entries():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime_ns, st.st_size, p))
        used = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if used + incoming <= self.max_bytes:
                break
            if p != keep:
                p.unlink(missing_ok=True)  # a process with it mapped keeps reading it (POSIX)
                used -= size


# --------------------------------------------------------------------------- lazy table


class _LazyColumn:
    """One column of a `ShardedTable`: `slice(start, n)` (a ChunkedArray) and `.chunks` (every shard)."""

    def __init__(self, table: ShardedTable, name: str) -> None:
        self._table, self._name = table, name

    def slice(self, start: int, length: int) -> pa.ChunkedArray:
        """Rows `start..start+length-1`, from the shards that hold them."""
        return self._table.slice_column(self._name, start, length)

    @property
    def chunks(self) -> list[pa.Array]:
        """The whole column (fetches every shard: used by statistics over all windows)."""
        return self.slice(0, self._table.num_rows).chunks

    def to_pylist(self) -> list[Any]:
        """The whole column as Python values."""
        return self.slice(0, self._table.num_rows).to_pylist()

    def __len__(self) -> int:
        return self._table.num_rows


@dataclass
class _Mapped:
    """A shard this process has memory-mapped: the table, the cached file's inode, when it was last checked."""

    table: pa.Table
    inode: int
    checked: float


class ShardedTable:
    """The reads `WindowDataset` makes of a `pa.Table`, served from cached, memory-mapped shards.

    A process keeps the shards it reads mapped (up to half the cache bound, least recently used
    dropped first) instead of mapping and parsing one again for every window. About once a second
    per shard it checks that the file is still the cached one, which also stamps it as used for
    the cache's LRU; a map whose file was evicted is dropped (freeing its disk space) and the
    shard is fetched again when next needed.
    """

    def __init__(self, source: Source, shards: Sequence[ShardInfo], cache: ShardCache, columns: Sequence[str]) -> None:
        self.source = source
        self.shards = list(shards)
        self.cache = cache
        self.column_names = list(columns)
        self.offsets = np.concatenate([[0], np.cumsum([s.rows for s in self.shards])]).astype(np.int64)
        self.num_rows = int(self.offsets[-1])
        self._open: OrderedDict[int, _Mapped] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # maps are per process
        return state

    def __len__(self) -> int:
        return self.num_rows

    def shard_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """Index of the shard holding each table row."""
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def shard_table(self, i: int) -> pa.Table:
        """Shard `i` memory-mapped (fetched into the cache first when needed)."""
        mapped = self._open.get(i)
        if mapped is not None:
            now = time.monotonic()
            fresh = now - mapped.checked < RECHECK_S
            if fresh or self.cache.still_cached(self.cache.path(self.shards[i].sha256), mapped.inode):
                if not fresh:
                    mapped.checked = now
                self._open.move_to_end(i)
                return mapped.table
            del self._open[i]  # evicted meanwhile: let its space go, fetch it again
        shard = self.shards[i]
        for attempt in range(3):
            path = self.cache.get(self.source, shard)
            try:
                with pa.memory_map(str(path)) as mm:
                    table = pa.ipc.open_stream(mm).read_all()
                inode = path.stat().st_ino
                break
            except FileNotFoundError:  # evicted by another process between the lookup and the map
                if attempt == 2:
                    raise DatasetError(f"shard {self.source.url}/{shard.path}: evicted from dataset.cache_dir "
                                       f"before it could be read, 3 times; raise dataset.cache_max_gb") from None
            except (OSError, pa.ArrowInvalid) as exc:
                raise DatasetError(f"shard {self.source.url}/{shard.path}: unreadable Arrow "
                                   f"({one_line(exc)})") from None
        if table.num_rows != shard.rows:
            raise DatasetError(f"shard {self.source.url}/{shard.path}: {table.num_rows} rows, the hash list says "
                               f"{shard.rows}")
        missing = [c for c in self.column_names if c not in table.column_names]
        if missing:
            raise DatasetError(f"shard {self.source.url}/{shard.path}: columns {missing} of spec.json are missing")
        self._open[i] = _Mapped(table, inode, time.monotonic())
        self._trim(keep=i)
        return table

    def _trim(self, keep: int) -> None:
        """Drop maps of evicted files, then the least recently used beyond half the cache bound."""
        for j, mapped in list(self._open.items()):
            if j != keep and not self.cache.still_cached(self.cache.path(self.shards[j].sha256), mapped.inode,
                                                         stamp=False):
                del self._open[j]
        mapped_bytes = sum(self.shards[j].size for j in self._open)
        while len(self._open) > 1 and mapped_bytes > self.cache.max_bytes // 2:
            j, _ = self._open.popitem(last=False)
            mapped_bytes -= self.shards[j].size

    def slice_column(self, name: str, start: int, length: int) -> pa.ChunkedArray:
        """Rows `start..start+length-1` of column `name`, across shard boundaries."""
        if start < 0 or length < 0 or start + length > self.num_rows:
            raise DatasetError(f"rows {start}..{start + length - 1} are outside the table ({self.num_rows} rows)")
        chunks: list[pa.Array] = []
        row, end = start, start + length
        i = int(self.shard_of_rows(np.asarray([start]))[0]) if length else 0
        while row < end:
            lo = int(self.offsets[i])
            take = min(end, int(self.offsets[i + 1])) - row
            if take > 0:
                chunks.extend(self.shard_table(i).column(name).slice(row - lo, take).chunks)
                row += take
            i += 1
        if not chunks:
            return pa.chunked_array([], type=self.shard_table(0).schema.field(name).type)
        return pa.chunked_array(chunks)

    def column(self, name: str) -> _LazyColumn:
        """A lazy column (the `pa.Table.column` reads WindowDataset makes)."""
        if name not in self.column_names:
            raise KeyError(name)
        return _LazyColumn(self, name)


# --------------------------------------------------------------------------- opening


def cache_bytes(options: Any) -> int:
    """`dataset.cache_max_gb` in bytes."""
    return int(float(getattr(options, "cache_max_gb", 20.0)) * GB)


def open_remote_dataset(name: str, options: Any) -> MaterializedDataset:
    """Open a dataset in object storage (URL or hub `org/name[@rev]`) for shard-by-shard reading.

    The spec and hash list are read now (small files); shards are fetched when windows need them.
    A cache too small for the shards one episode spans is a one-line error naming the size needed.
    """
    source = open_source(name)
    shards = source.shards()
    cache = ShardCache(getattr(options, "cache_dir", None), cache_bytes(options))
    data = source.read(SPEC_FILE)
    spec_dir = cache.folder / "specs" / hashlib.sha256(data).hexdigest()
    try:
        spec_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text_atomic(spec_dir / SPEC_FILE, data.decode("utf-8", errors="replace"))
    except OSError as exc:
        raise DatasetError(f"dataset.cache_dir={str(cache.folder)!r}: cannot write {SPEC_FILE} there "
                           f"({exc.strerror or one_line(exc)}); give a writable dataset.cache_dir") from None
    spec = read_spec(spec_dir)
    table = ShardedTable(source, shards, cache, list(spec.columns))
    if table.num_rows != spec.num_frames:
        raise DatasetError(f"{source.url}: the shards hold {table.num_rows} rows but spec.json lists "
                           f"{spec.num_frames} frames; rewrite {SHARDS_FILE} (tools/dataset.py shards NAME)")
    needed = needed_cache_bytes(table, spec)
    if needed > cache.max_bytes:
        raise DatasetError(
            f"dataset.cache_max_gb={cache.max_bytes / GB:g}: too small for {source.url}; the shards one episode "
            f"spans need {_size(needed)} at once; use dataset.cache_max_gb>={_ceil_gb(needed)}")
    logger.info("dataset %s: %d shards, %.2f GB, read on demand into %s (at most %.2f GB)", source.url,
                len(shards), sum(s.size for s in shards) / GB, cache.folder, cache.max_bytes / GB)
    return MaterializedDataset(path=cache.folder, spec=spec, table=table)  # type: ignore[arg-type]


def _size(n: int) -> str:
    """Bytes as GB, or MB below 0.1 GB."""
    return f"{n / GB:.3f} GB" if n >= GB // 10 else f"{n / 2**20:.2f} MB"


def _ceil_gb(n: int) -> str:
    return f"{np.ceil(n / GB * 1000) / 1000:.3f}"


def needed_cache_bytes(table: ShardedTable, spec: Any) -> int:
    """Bytes of the shards that must be cached at once: the largest over episodes of the shards it spans."""
    sizes = np.asarray([s.size for s in table.shards], np.int64)
    prefix = np.concatenate([[0], np.cumsum(sizes)])
    starts = np.asarray([e.start for e in spec.episodes], np.int64)
    ends = starts + np.asarray([e.length for e in spec.episodes], np.int64) - 1
    if not len(starts):
        return int(sizes.max())
    first, last = table.shard_of_rows(starts), table.shard_of_rows(ends)
    return int(max(sizes.max(), (prefix[last + 1] - prefix[first]).max()))


# --------------------------------------------------------------------------- order


class ShardSampler(torch.utils.data.Sampler[int]):
    """A shard-aware epoch order that depends only on (seed, epoch), for exact resume.

    Per epoch: the shards, in row order, are rotated by a random offset and cut into one contiguous
    part per rank (balanced by windows), so DDP ranks read disjoint shards. Each rank's part is cut
    into groups of consecutive shards whose footprint (the shards their windows read, history and
    horizon included: a window near a shard's end reads the next one) fits half its share of the
    cache, so the group being read and the next one that DataLoader workers start on fit together.
    Groups are read in random order, windows shuffled within a group: every shard is downloaded
    about once per epoch whatever the cache size, and with a cache as large as the dataset the
    order is one shuffle of everything. accelerate's `BatchSamplerShard` gives rank r the global
    batches r, r+N, ..., so the global order interleaves the ranks' batches. Every epoch has the same
    length: each rank serves `len(self) // (N * batch_size)` batches, a rank short of windows
    repeating its own from the start.
    """

    def __init__(self, windows: Any, batch_size: int, processes: int, seed: int, cache_bytes: int) -> None:
        table: ShardedTable = windows.table
        episodes = windows.spec.episodes
        starts = np.asarray([e.start for e in episodes], np.int64)
        lengths = np.asarray([e.length for e in episodes], np.int64)
        ep, t = np.asarray(windows.episode_ids, np.int64), np.asarray(windows.frame_ids, np.int64)
        rows = starts[ep] + t if len(t) else np.zeros(0, np.int64)
        history, horizon = int(getattr(windows, "history", 1)), int(getattr(windows, "horizon", 1))
        first = table.shard_of_rows(starts[ep] + np.maximum(t - history + 1, 0)) if len(t) else rows
        last = table.shard_of_rows(starts[ep] + np.minimum(t + horizon - 1, lengths[ep] - 1)) if len(t) else rows
        self.shard_of_window = table.shard_of_rows(rows)
        n_shards = len(table.shards)
        self.shard_sizes = np.asarray([s.size for s in table.shards], np.int64)
        # the shards each shard's windows read: first[s]..last[s] (itself when it starts no window)
        self._reach_lo, self._reach_hi = np.arange(n_shards), np.arange(n_shards)
        np.minimum.at(self._reach_lo, self.shard_of_window, first)
        np.maximum.at(self._reach_hi, self.shard_of_window, last)
        self.batch_size = int(batch_size)
        self.processes = max(int(processes), 1)
        self.seed = seed
        # ranks on one machine share the cache; half of a share: the group being read and the next
        self.budget = max(int(cache_bytes) // self.processes // 2, 1)
        self.epoch = 0
        self.per_rank_batches = len(rows) // (self.processes * self.batch_size)
        self._by_shard = [np.flatnonzero(self.shard_of_window == i) for i in range(n_shards)]
        self.cache = table.cache
        self._logged = self.cache.stats()

    def set_epoch(self, epoch: int) -> None:
        """Select the order of `epoch`."""
        self.epoch = epoch

    def groups(self) -> list[list[list[int]]]:
        """Each rank's shard groups for this epoch, in reading order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.shard_sizes)
        seq = np.roll(np.arange(n), -int(rng.integers(n))) if n else np.zeros(0, np.int64)
        before = np.concatenate([[0], np.cumsum([len(self._by_shard[s]) for s in seq])])
        # contiguous parts with about total/N windows each (cut where the running count is closest)
        cuts = [0] + [int(np.argmin(np.abs(before - before[-1] * r / self.processes)))
                      for r in range(1, self.processes)] + [n]
        ranks = []
        for r in range(self.processes):
            groups: list[list[int]] = []
            touched: set[int] = set()
            used = 0
            for s in seq[cuts[r]:cuts[r + 1]].tolist():
                reach = set(range(int(self._reach_lo[s]), int(self._reach_hi[s]) + 1)) - touched
                more = int(self.shard_sizes[sorted(reach)].sum())
                if groups and used + more <= self.budget:
                    groups[-1].append(s)
                    touched |= reach
                    used += more
                else:
                    groups.append([s])
                    touched = set(range(int(self._reach_lo[s]), int(self._reach_hi[s]) + 1))
                    used = int(self.shard_sizes[sorted(touched)].sum())
            ranks.append([groups[i] for i in rng.permutation(len(groups))])
        return ranks

    def rank_orders(self) -> list[np.ndarray]:
        """Each rank's windows for this epoch, in reading order (before equalising the lengths)."""
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        orders = []
        for groups in self.groups():
            parts = []
            for group in groups:
                idx = np.concatenate([self._by_shard[s] for s in group])
                parts.append(idx[rng.permutation(len(idx))])
            orders.append(np.concatenate(parts) if parts else np.zeros(0, np.int64))
        return orders

    def __iter__(self) -> Iterator[int]:
        n, b = self.per_rank_batches, self.batch_size
        per_rank = []
        for order in self.rank_orders():
            if len(order) < n * b:  # a rank short of windows repeats its own (never another rank's shards)
                order = np.resize(order, n * b) if len(order) else np.zeros(n * b, np.int64)
            per_rank.append(order[: n * b].reshape(n, b))
        if not per_rank or n == 0:
            return
        glob = np.stack(per_rank, 1).reshape(-1)  # batch k of rank r at global batch k*N + r
        yield from glob.tolist()
        self._log_cache()

    def _log_cache(self) -> None:
        """The shard cache's hits, misses and downloads since the last epoch's line (this rank and its workers)."""
        now = self.cache.stats()
        hits, misses, down = (now[k] - self._logged[k] for k in ("hits", "misses", "downloaded_bytes"))
        self._logged = now
        logger.info("shard cache, epoch %d: %d hits, %d misses (hit rate %.1f%%), %.1f MB downloaded (%.2fx the "
                    "dataset); %.1f MB cached (at most %.1f MB)", self.epoch, hits, misses,
                    hit_rate(hits, misses), down / 2**20, down / max(int(self.shard_sizes.sum()), 1),
                    self.cache.used_bytes() / 2**20, self.cache.max_bytes / 2**20)

    def __len__(self) -> int:
        return self.per_rank_batches * self.processes * self.batch_size


def hit_rate(hits: int, misses: int) -> float:
    """Percent of shard loads served from the cache (100 when nothing had to be loaded)."""
    return 100.0 * hits / (hits + misses) if hits + misses else 100.0


def shard_sampler(windows: Any, batch_size: int, config: Any) -> ShardSampler:
    """The training sampler for windows over a `ShardedTable` (processes from accelerate's state)."""
    from accelerate import PartialState

    return ShardSampler(windows, batch_size, PartialState().num_processes, config.seed, cache_bytes(config.dataset))


def is_sharded(windows: Any) -> bool:
    """Whether `windows` reads a `ShardedTable`."""
    return isinstance(getattr(windows, "table", None), ShardedTable)


"""Reading a dataset straight from object storage (datasets/remote.py), against file:// and a loopback S3 server.

One small dataset (4 episodes, 115 frames, a 24x32 camera) is re-sharded by `tools/dataset.py shards
--shard-mb 0.02` into 13 shards of ~22 KB, then copied to a folder (file://) or uploaded to moto (s3://).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, skip_first_batches

from neuracore.ml.config.schema import LoaderOptions
from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets import remote
from neuracore.ml.datasets.data_spec import resolve_features
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.datasets.remote import (
    GB,
    SHARDS_FILE,
    FsspecSource,
    ShardCache,
    ShardSampler,
    check_url,
    open_remote_dataset,
    wants_remote,
)
from neuracore.ml.datasets.windows import WindowDataset
from tests.conftest import REPO
from tests.ml.datasets.tools.edit_data import make_dataset, vector

LENGTHS = (20, 30, 25, 40)
JP = DataType.JOINT_POSITIONS
SHARD_MB = 0.02


def _load_tool():
    spec = importlib.util.spec_from_file_location("dataset_tool_remote", REPO / "tools" / "dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Local:
    """The source dataset on this machine: its folder, the shards CLI's output, its shard list."""

    root: Path
    folder: Path
    cli_out: str
    shards: list[dict]
    episodes: list


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Local:
    home = tmp_path_factory.mktemp("remote_home")
    episodes = make_dataset(home / "datasets", "small", lengths=LENGTHS, cams={"top": (24, 32)}, seed=3)
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv("NEURACORE_HOME", str(home))
        assert _load_tool().main(["shards", "small", "--shard-mb", str(SHARD_MB)]) == 0
    folder = home / "datasets" / "small"
    return Local(home / "datasets", folder, out.getvalue(), json.loads((folder / SHARDS_FILE).read_text())["shards"],
                 episodes)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one bucket (started here, stopped at the end)."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from tests.ml.storage.storage_helpers import start_moto

    server, endpoint = start_moto()
    yield endpoint
    server.stop()


@dataclass
class Remote:
    """A copy of the dataset in storage: its URL and a way to change or delete its files there."""

    url: str
    write: Callable[[str, bytes], None]
    read: Callable[[str], bytes]
    delete: Callable[[str], None]


@pytest.fixture(params=["file", "s3"])
def stored(request: pytest.FixtureRequest, local: Local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Remote:
    """A fresh copy of `local` in a folder (file://) or under a unique prefix of the loopback bucket (s3://)."""
    if request.param == "file":
        dst = tmp_path / "bucket" / "small"
        shutil.copytree(local.folder, dst)
        return Remote(f"file://{dst}", lambda rel, b: (dst / rel).write_bytes(b), lambda rel: (dst / rel).read_bytes(),
                      lambda rel: (dst / rel).unlink())
    import s3fs

    from tests.ml.storage.storage_helpers import BUCKET, S3_ENV

    endpoint = request.getfixturevalue("s3_endpoint")
    for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key=S3_ENV["AWS_ACCESS_KEY_ID"],
                           secret=S3_ENV["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
    prefix = f"{BUCKET}/{uuid.uuid4().hex}/small"
    for p in local.folder.rglob("*"):
        if p.is_file():
            fs.pipe_file(f"{prefix}/{p.relative_to(local.folder).as_posix()}", p.read_bytes())
    return Remote(f"s3://{prefix}", lambda rel, b: fs.pipe_file(f"{prefix}/{rel}", b),
                  lambda rel: fs.cat_file(f"{prefix}/{rel}"), lambda rel: fs.rm_file(f"{prefix}/{rel}"))


def _options(tmp_path: Path, max_bytes: float = GB, **kw) -> LoaderOptions:
    return LoaderOptions(cache_dir=str(tmp_path / "cache"), cache_max_gb=max_bytes / GB, **kw)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def _assert_same(x, y) -> None:
    """Equal nested samples: same keys, same tensor/array values and dtypes."""
    assert type(x) is type(y)
    if isinstance(x, dict):
        assert list(x) == list(y)
        for k in x:
            _assert_same(x[k], y[k])
    elif isinstance(x, torch.Tensor):
        assert x.dtype == y.dtype and torch.equal(x, y)
    elif isinstance(x, np.ndarray):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    else:
        assert x == y


def _cache_files(folder: Path) -> list[Path]:
    """Everything under the cache's shard folders: cached shards and in-flight temp files."""
    return [p for p in folder.glob("??/*") if p.is_file()]


# --------------------------------------------------------------------------- hash list and reads


def test_shards_cli_reshards_and_writes_the_hash_list(local: Local) -> None:
    from neuracore.ml.utils.hashing import sha256_file

    shards = local.shards
    assert len(shards) == 13 and f"small: 13 shards, largest 0.0 MB; wrote {local.folder / SHARDS_FILE}" in local.cli_out
    files = sorted((local.folder / "data").glob("*.arrow"))
    assert [s["path"] for s in shards] == [f"data/{f.name}" for f in files]
    assert [s["sha256"] for s in shards] == [sha256_file(f) for f in files]
    assert [s["size"] for s in shards] == [f.stat().st_size for f in files]
    assert sum(s["rows"] for s in shards) == sum(LENGTHS) and max(s["size"] for s in shards) <= SHARD_MB * 2**20 * 1.1
    items, q = vector(local.root, "small")  # re-sharding kept the rows and their order, and the spec verifies
    assert items == ["a", "b"]
    np.testing.assert_array_equal(q, np.concatenate([np.stack([e.data[JP]["a"], e.data[JP]["b"]], -1)
                                                     for e in local.episodes]))


def test_table_reads_give_the_local_values(stored: Remote, local: Local, tmp_path: Path) -> None:
    ds = open_remote_dataset(stored.url, _options(tmp_path))
    here = open_dataset("small", local.root)
    assert ds.spec.to_json() == here.spec.to_json()
    table = ds.table
    assert table.num_rows == len(table) == here.table.num_rows == sum(LENGTHS)
    offsets = [int(o) for o in table.offsets]
    assert offsets == list(np.cumsum([0] + [s["rows"] for s in local.shards]))
    slices = [(0, table.num_rows), (5, 0), (offsets[1] - 1, offsets[4] - offsets[1] + 2), (offsets[-2], offsets[-1] -
                                                                                          offsets[-2])]
    slices += [(o - 2, 5) for o in offsets[1:-1]]  # every shard boundary straddled
    for column in here.spec.columns:
        for start, n in slices:
            assert table.column(column).slice(start, n).to_pylist() == \
                here.table.column(column).slice(start, n).to_pylist(), (column, start, n)
        assert table.column(column).to_pylist() == here.table.column(column).to_pylist()
        assert len(table.column(column).chunks) == len(local.shards)
    with pytest.raises(KeyError):
        table.column("NOPE")
    with pytest.raises(DatasetError, match=r"rows 110\.\.119 are outside the table \(115 rows\)"):
        table.column("JOINT_POSITIONS").slice(110, 10)
    stats = ds.table.cache.stats()  # each shard downloaded once; re-opened from the cache after that
    assert stats["misses"] == 13 and stats["downloaded_bytes"] == sum(s["size"] for s in local.shards)

    # Training samples are the same bytes, images included, from either table.
    def windows(d) -> WindowDataset:
        inputs = resolve_features(d.spec, ["RGB_IMAGES", "JOINT_POSITIONS", "LANGUAGE"], None, "input_data_types")
        outputs = resolve_features(d.spec, ["JOINT_TARGET_POSITIONS"], None, "output_data_types")
        return WindowDataset(d, inputs, outputs, range(len(LENGTHS)), history=2, horizon=6)

    a, b = windows(ds), windows(here)
    for i in [0, 8, 9, 19, 20, 56, len(a) - 1]:
        _assert_same(a[i], b[i])

    again = open_remote_dataset(stored.url, _options(tmp_path))  # a second process: all from the cache
    assert again.table.column("JOINT_POSITIONS").to_pylist() == here.table.column("JOINT_POSITIONS").to_pylist()
    assert again.table.cache.stats() == {"hits": 13, "misses": 0, "downloaded_bytes": 0}


def test_changed_shard_is_refused_and_not_cached(stored: Remote, local: Local, tmp_path: Path) -> None:
    bad = local.shards[5]
    data = bytearray(stored.read(bad["path"]))
    data[len(data) // 2] ^= 0xFF  # same size, one byte different
    stored.write(bad["path"], bytes(data))
    ds = open_remote_dataset(stored.url, _options(tmp_path))  # the hash list and spec are fine: opens
    start = sum(s["rows"] for s in local.shards[:5])
    assert ds.table.column("JOINT_POSITIONS").slice(0, start).to_pylist()  # shards before it read fine
    for _ in range(2):  # and the second try fails the same way: nothing was kept
        with pytest.raises(DatasetError) as exc:
            ds.table.column("JOINT_POSITIONS").slice(start, 3)
        message = _one_line(exc)
        assert message.startswith(f"shard {stored.url}/{bad['path']}: sha256 ")
        assert f", expected {bad['sha256']}; the stored file or the download is damaged (nothing was cached)" in message
    cache = ds.table.cache
    assert not cache.path(bad["sha256"]).exists()
    assert not [p for p in _cache_files(cache.folder) if bad["sha256"][:16] in p.name]  # no temp file either
    assert len(_cache_files(cache.folder)) == 5


def test_folder_without_a_valid_hash_list_is_one_line(stored: Remote, local: Local, tmp_path: Path) -> None:
    good = stored.read(SHARDS_FILE)
    doc = json.loads(good)
    stored.write(SHARDS_FILE, json.dumps({**doc, "shards": doc["shards"][:-1]}).encode())
    with pytest.raises(DatasetError) as exc:
        open_remote_dataset(stored.url, _options(tmp_path))
    assert f"{stored.url}: {SHARDS_FILE} lists no missing not in data/ and misses " \
           f"['{Path(local.shards[-1]['path']).name}']" in _one_line(exc)
    stored.write(SHARDS_FILE, b"{not json")
    with pytest.raises(DatasetError, match=rf"^{stored.url}/{SHARDS_FILE}: unreadable hash list \(JSONDecodeError"):
        open_remote_dataset(stored.url, _options(tmp_path))
    stored.delete(SHARDS_FILE)
    with pytest.raises(DatasetError) as exc:
        open_remote_dataset(stored.url, _options(tmp_path))
    assert _one_line(exc) == (
        f"{stored.url}: no {SHARDS_FILE} (the sha256 of every shard, needed to verify them); write it with "
        "`python tools/dataset.py shards NAME` before uploading, or upload a folder pushed with it")
    assert not (tmp_path / "cache").exists() or not _cache_files(tmp_path / "cache")


def test_missing_folder_and_bad_urls_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as exc:
        open_remote_dataset(f"file://{tmp_path}/nothing", _options(tmp_path))
    assert _one_line(exc).startswith(f"file://{tmp_path}/nothing: no {SHARDS_FILE} ")
    for url, message in [
        ("ftp://host/ds", "scheme 'ftp' is not supported; valid: s3://, gs://, hf://, file://"),
        ("s3://", "expected s3://bucket/path/to/dataset (no '..')"),
        ("file:///data/../etc", "expected file:///path/to/dataset (no '..')"),
        ("s3://key:secret@bucket/ds", "credentials in the URL are not accepted"),
    ]:
        with pytest.raises(ConfigError) as exc:
            check_url(url)
        assert message in _one_line(exc), (url, str(exc.value))
    assert "key:secret" not in str(exc.value)
    assert wants_remote("s3://b/ds", LoaderOptions()) and wants_remote("ftp://b/ds", LoaderOptions())
    assert wants_remote("org/ds", LoaderOptions(stream=True)) and not wants_remote("org/ds", LoaderOptions())
    assert not wants_remote("demo", LoaderOptions(stream=True))


# --------------------------------------------------------------------------- the cache


def _source(stored: Remote) -> tuple[FsspecSource, list]:
    source = FsspecSource(stored.url)
    return source, source.shards()


def test_cache_stays_within_its_bound_and_evicts_least_recently_used(local: Local, tmp_path: Path) -> None:
    folder = tmp_path / "bucket" / "small"
    shutil.copytree(local.folder, folder)
    source, shards = _source(Remote(f"file://{folder}", None, None, None))  # type: ignore[arg-type]
    size = max(s.size for s in shards)
    cache = ShardCache(tmp_path / "cache", int(3.5 * size))
    in_flight = []
    download = source.download

    def watched(shard, dst):  # the cache folder while a shard is on its way in (the temp file included)
        got = download(shard, dst)
        dst.flush()
        in_flight.append(sum(p.stat().st_size for p in _cache_files(cache.folder)))
        return got

    source.download = watched  # type: ignore[method-assign]
    order = [0, 1, 2, 0, 3, 4, 0, 5, 1]
    present = []
    for i in order:
        path = cache.get(source, shards[i])
        assert path == cache.path(shards[i].sha256) and path.stat().st_size == shards[i].size
        present.append(sorted(shards.index(next(s for s in shards if s.sha256 == p.stem))
                              for p in cache.entries()))
        assert cache.used_bytes() <= cache.max_bytes
    assert max(in_flight) <= cache.max_bytes + size
    # Three shards fit; shard 0, used again and again, is never the one evicted.
    assert present == [[0], [0, 1], [0, 1, 2], [0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 3, 4], [0, 4, 5], [0, 1, 5]]
    assert cache.stats() == {"hits": 2, "misses": 7, "downloaded_bytes": sum(shards[i].size for i in order[:3] +
                                                                            order[4:6] + order[7:])}

    # Reading the whole dataset through a cache half its size: the bound holds, the values are right.
    total = sum(s.size for s in shards)
    ds = open_remote_dataset(f"file://{folder}", LoaderOptions(cache_dir=str(tmp_path / "half"),
                                                               cache_max_gb=total / 2 / GB))
    here = open_dataset("small", local.root)
    for i in range(len(shards)):
        rows = slice(int(ds.table.offsets[i]), int(ds.table.offsets[i + 1]))
        assert ds.table.column("RGB_IMAGES.top").slice(rows.start, rows.stop - rows.start).to_pylist() == \
            here.table.column("RGB_IMAGES.top").slice(rows.start, rows.stop - rows.start).to_pylist()
        assert ds.table.cache.used_bytes() <= ds.table.cache.max_bytes
    assert ds.table.cache.misses == len(shards) and len(ds.table.cache.entries()) < len(shards)


def test_cache_smaller_than_a_shard_is_one_line(stored: Remote, local: Local, tmp_path: Path) -> None:
    smallest = min(s["size"] for s in local.shards)
    with pytest.raises(DatasetError) as exc:
        open_remote_dataset(stored.url, _options(tmp_path, smallest - 1))
    message = _one_line(exc)
    assert message.startswith(f"dataset.cache_max_gb={(smallest - 1) / GB:g}: too small for {stored.url}; the shards "
                              "one episode spans need ")
    assert re.search(r"need \d+\.\d\d MB at once", message)
    assert message.endswith("; use dataset.cache_max_gb>=0.001")
    source, shards = _source(stored)
    with pytest.raises(DatasetError) as exc:  # the cache itself refuses too (never over its bound)
        ShardCache(tmp_path / "cache", smallest - 1).get(source, shards[0])
    assert _one_line(exc).startswith(f"dataset.cache_max_gb={(smallest - 1) / GB:g}: smaller than shard "
                                     f"{stored.url}/{shards[0].path} ")
    assert not _cache_files(tmp_path / "cache")


def test_unwritable_or_full_cache_is_one_line(local: Local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "bucket" / "small"
    shutil.copytree(local.folder, folder)
    url = f"file://{folder}"
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(DatasetError) as exc:  # the cache folder cannot be made
        open_remote_dataset(url, LoaderOptions(cache_dir=str(blocker / "cache")))
    assert _one_line(exc).startswith(f"dataset.cache_dir='{blocker / 'cache'}': cannot create (")

    source, shards = _source(Remote(url, None, None, None))  # type: ignore[arg-type]
    cache = ShardCache(tmp_path / "cache", GB)
    cache.path(shards[0].sha256).parent.write_text("")  # a file where the shard's sub-folder goes
    with pytest.raises(DatasetError) as exc:
        cache.get(source, shards[0])
    assert _one_line(exc) == (f"dataset.cache_dir='{cache.folder}': cannot use {shards[0].sha256}.arrow "
                              "(Not a directory)")

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as mp:  # a read-only cache folder (root ignores permission bits, so simulated)
        mp.setattr(remote.tempfile, "mkstemp", refuse)
        with pytest.raises(DatasetError) as exc:
            cache.get(source, shards[1])
    assert _one_line(exc) == (f"shard {url}/{shards[1].path}: cannot write into dataset.cache_dir='{cache.folder}' "
                              "(Read-only file system); give a writable dataset.cache_dir")
    with monkeypatch.context() as mp:
        mp.setattr(remote.os, "open", refuse)  # not even the lock can be written
        with pytest.raises(DatasetError) as exc:
            cache.get(source, shards[1])
    assert _one_line(exc).startswith(f"dataset.cache_dir='{cache.folder}': cannot write the lock ")

    class Usage:
        free = 1000

    with monkeypatch.context() as mp:  # not enough free space for the shard
        mp.setattr(remote.shutil, "disk_usage", lambda _: Usage)
        with pytest.raises(DatasetError) as exc:
            cache.get(source, shards[1])
    assert _one_line(exc) == (
        f"dataset.cache_dir='{cache.folder}': disk full (0.00 GB free) while fetching a "
        f"{shards[1].size / 2**20:.2f} MB shard ({shards[1].path}); free space there or lower dataset.cache_max_gb")

    download = source.download

    def fills_up(shard, dst):  # the disk fills up half-way through the download
        dst.write(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    source.download = fills_up  # type: ignore[method-assign]
    with pytest.raises(DatasetError, match=r"disk full \(.* GB free\) while fetching"):
        cache.get(source, shards[1])
    source.download = download  # type: ignore[method-assign]
    assert not _cache_files(cache.folder)  # no shard, no temp file left behind
    assert cache.get(source, shards[1]).is_file()  # and it works once there is room


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_folder_is_one_line(local: Local, tmp_path: Path) -> None:
    source, shards = _source(Remote(f"file://{local.folder}", None, None, None))  # type: ignore[arg-type]
    cache = ShardCache(tmp_path / "cache", GB)
    os.chmod(cache.folder, 0o555)
    os.chmod(cache.folder / ".locks", 0o555)
    try:
        with pytest.raises(DatasetError) as exc:
            cache.get(source, shards[0])
        assert "give a writable dataset.cache_dir" in _one_line(exc)
    finally:
        os.chmod(cache.folder / ".locks", 0o755)
        os.chmod(cache.folder, 0o755)


def test_a_shard_evicted_before_it_is_mapped_is_fetched_again(local: Local, tmp_path: Path) -> None:
    ds = open_remote_dataset(f"file://{local.folder}", _options(tmp_path))
    table = ds.table
    table.shard_table(2)
    table._open.clear()
    get = table.cache.get

    evicted = []

    def evicted_meanwhile(source, shard):  # another process evicts it right after the (first) lookup
        path = get(source, shard)
        if not evicted:
            evicted.append(path)
            path.unlink()
        return path

    table.cache.get = evicted_meanwhile  # type: ignore[method-assign]
    assert table.shard_table(2).num_rows == local.shards[2]["rows"]
    assert table.cache.stats()["misses"] == 2


def test_mapped_shards_are_reused_bounded_and_dropped_once_evicted(local: Local, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    size = max(s["size"] for s in local.shards)
    table = open_remote_dataset(f"file://{local.folder}", _options(tmp_path, 6.5 * size)).table
    for i in range(len(table.shards)):
        table.shard_table(i)
        assert sum(table.shards[j].size for j in table._open) <= table.cache.max_bytes // 2
        for j, mapped in table._open.items():  # no map outlives its cached file (its disk space is freed)
            assert table.cache.path(table.shards[j].sha256).stat().st_ino == mapped.inode
    assert table.cache.stats()["misses"] == len(table.shards)
    last = len(table.shards) - 1
    before = table.cache.stats()
    for _ in range(50):  # windows of a mapped shard: no lookup, no load
        table.column("JOINT_POSITIONS").slice(int(table.offsets[last]), 3)
    assert table.cache.stats() == before
    monkeypatch.setattr(remote, "RECHECK_S", 0.0)
    table.cache.path(table.shards[last].sha256).unlink()  # another process evicted it
    assert table.column("JOINT_POSITIONS").slice(int(table.offsets[last]), 3).to_pylist() == \
        open_dataset("small", local.root).table.column("JOINT_POSITIONS").slice(int(table.offsets[last]), 3).to_pylist()
    assert table.cache.stats()["misses"] == before["misses"] + 1  # fetched again, not read from the orphan


# --------------------------------------------------------------------------- the sampler


@pytest.fixture()
def windows(local: Local, tmp_path: Path) -> WindowDataset:
    ds = open_remote_dataset(f"file://{local.folder}", _options(tmp_path))
    inputs = resolve_features(ds.spec, ["JOINT_POSITIONS"], None, "input_data_types")
    outputs = resolve_features(ds.spec, ["JOINT_TARGET_POSITIONS"], None, "output_data_types")
    return WindowDataset(ds, inputs, outputs, range(len(LENGTHS)), history=1, horizon=4)


def _epoch(sampler: ShardSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def _touched(windows: WindowDataset, i: int) -> range:
    """The shards window `i` reads: its history rows and its horizon rows, clamped to the episode."""
    ep = windows.spec.episodes[int(windows.episode_ids[i])]
    t = int(windows.frame_ids[i])
    lo, hi = ep.start + max(t - windows.history + 1, 0), ep.start + min(t + windows.horizon - 1, ep.length - 1)
    first, last = windows.table.shard_of_rows(np.asarray([lo, hi])).tolist()
    return range(first, last + 1)


def _downloads(windows: WindowDataset, order: list[int], capacity: int) -> int:
    """Shards an LRU cache of `capacity` bytes fetches serving `order` (what ShardCache does)."""
    sizes = [s.size for s in windows.table.shards]
    lru: OrderedDict[int, int] = OrderedDict()
    fetched = 0
    for i in order:
        for s in _touched(windows, i):
            if s in lru:
                lru.move_to_end(s)
                continue
            fetched += 1
            lru[s] = sizes[s]
            while sum(lru.values()) > capacity:
                lru.popitem(last=False)
    return fetched


def test_sampler_is_a_function_of_seed_and_epoch_and_serves_every_window_once(windows: WindowDataset) -> None:
    shards = windows.table.shards
    shard = max(s.size for s in shards)
    make = lambda seed, cache=8 * shard: ShardSampler(windows, 1, 1, seed, cache)
    a = _epoch(make(7), 0)
    assert sorted(a) == list(range(len(windows))) == list(range(sum(LENGTHS)))
    assert a == _epoch(make(7), 0) and a != _epoch(make(7), 1) and a != _epoch(make(8), 0)
    for epoch in range(4):
        sampler = make(7)
        sampler.set_epoch(epoch)
        groups = sampler.groups()[0]
        assert sorted(s for g in groups for s in g) == list(range(len(shards)))
        assert 3 <= len(groups) < len(shards)  # groups of consecutive shards within half the cache
        for g in groups:
            reach = sorted({s for i in np.concatenate([sampler._by_shard[s] for s in g]) for s in _touched(windows, i)})
            assert sum(shards[s].size for s in reach) <= sampler.budget or len(g) == 1
        order = list(sampler)
        assert sorted(order) == list(range(len(windows)))
        # Read group by group: every shard is downloaded once, plus at most one neighbour per group
        # (a window near a group's last shard reads the first rows of the next shard).
        assert len(shards) <= _downloads(windows, order, 8 * shard) <= len(shards) + len(groups)
    whole = make(7, 1 << 30)  # a cache the size of the dataset: one shuffle of everything
    assert [len(g) for g in whole.groups()[0]] == [len(shards)]
    assert _downloads(windows, list(whole), 1 << 30) == len(shards)
    assert len(make(7)) == len(windows)
    assert len(ShardSampler(windows, 4, 1, 7, 3 * shard)) == len(windows) // 4 * 4  # full batches only


def test_sampler_gives_ranks_disjoint_shards_covering_everything(windows: WindowDataset) -> None:
    batch = 3
    sampler = ShardSampler(windows, batch, 2, 5, 1 << 30)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders = sampler.rank_orders()
        shard_sets = [set(windows.table.shard_of_rows(np.asarray(o)).tolist()) for o in orders]
        assert not shard_sets[0] & shard_sets[1]
        assert shard_sets[0] | shard_sets[1] == set(range(len(windows.table.shards)))
        assert sorted(np.concatenate(orders).tolist()) == list(range(len(windows)))
        # What accelerate hands each rank (global batches r, r+2, ...): only its own shards, equal lengths.
        batches = torch.utils.data.BatchSampler(sampler, batch, drop_last=True)
        ranks = [[i for b in BatchSamplerShard(batches, num_processes=2, process_index=r) for i in b] for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == len(windows) // (2 * batch) * batch
        for r in (0, 1):
            assert set(windows.table.shard_of_rows(np.asarray(ranks[r])).tolist()) <= shard_sets[r]
        # Equal epochs: the rank with fewer windows repeats some of its own; the other drops a few.
        assert len(set(ranks[0]) | set(ranks[1])) >= len(windows) - max(len(w) for w in sampler._by_shard) - batch
    assert sampler.set_epoch(0) is None and list(sampler) == list(ShardSampler(windows, batch, 2, 5, 1 << 30))


def test_resuming_mid_epoch_continues_the_same_order(windows: WindowDataset) -> None:
    def loader() -> torch.utils.data.DataLoader:
        sampler = ShardSampler(windows, 4, 1, 11, 1 << 30)  # a fresh process: a fresh sampler
        sampler.set_epoch(2)
        return torch.utils.data.DataLoader(list(range(len(windows))), batch_size=4, sampler=sampler, drop_last=True)

    full = [b.tolist() for b in loader()]
    assert len(full) == len(windows) // 4
    for k in (1, 5, len(full) - 1):
        assert [b.tolist() for b in skip_first_batches(loader(), k)] == full[k:]


def test_sampler_logs_cache_hits_and_misses_each_epoch(windows: WindowDataset, caplog: pytest.LogCaptureFixture) -> None:
    sampler = ShardSampler(windows, 5, 1, 3, 1 << 30)
    caplog.set_level(logging.INFO, logger=remote.__name__)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for i in sampler:
            windows[i]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shard cache")]
    size = sum(s.size for s in windows.table.shards) / 2**20
    assert len(lines) == 2
    assert lines[0].startswith("shard cache, epoch 0: ") and "13 misses" in lines[0]
    assert f"{size:.1f} MB downloaded (1.00x the dataset)" in lines[0]
    assert lines[1].startswith("shard cache, epoch 1: ") and " 0 misses (hit rate 100.0%), 0.0 MB downloaded (0.00x " \
        f"the dataset); {size:.1f} MB cached (at most 1024.0 MB)" in lines[1]


def test_cache_counts_are_shared_with_dataloader_workers(windows: WindowDataset) -> None:
    loader = torch.utils.data.DataLoader(windows, batch_size=8, num_workers=2,
                                         sampler=ShardSampler(windows, 8, 1, 0, 1 << 30))
    assert sum(len(b["is_pad"]) for b in loader) == len(windows) // 8 * 8
    stats = windows.table.cache.stats()
    assert stats["misses"] == len(windows.table.shards) and stats["hits"] >= 1  # the other worker found them


# --------------------------------------------------------------------------- hub revisions


def test_hub_revision_streamed_with_dataset_stream(local: Local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from neuracore.ml.storage import push_dataset

    monkeypatch.setenv("NEURACORE_STORAGE_URL", f"file://{tmp_path / 'storage'}")
    push_dataset("small", "lab/small", root=local.root, tag="v1")
    options = _options(tmp_path, stream=True)
    assert wants_remote("lab/small@v1", options)
    ds = open_remote_dataset("lab/small@v1", options)
    here = open_dataset("small", local.root)
    assert ds.spec.to_json() == here.spec.to_json()
    assert ds.table.column("RGB_IMAGES.top").to_pylist() == here.table.column("RGB_IMAGES.top").to_pylist()
    assert ds.table.cache.misses == len(local.shards)

    bare = tmp_path / "bare"
    shutil.copytree(local.folder, bare / "small")
    (bare / "small" / SHARDS_FILE).unlink()
    push_dataset("small", "lab/bare", root=bare)
    with pytest.raises(DatasetError) as exc:
        open_remote_dataset("lab/bare", options)
    assert _one_line(exc).endswith(f": the revision has no {SHARDS_FILE} (row counts of its shards); run "
                                   "`python tools/dataset.py shards NAME` and push again, or train without "
                                   "dataset.stream")


# --------------------------------------------------------------------------- benchmark


def test_data_benchmark_reads_a_url_through_the_cache(local: Local, capsys: pytest.CaptureFixture) -> None:
    import argparse

    from neuracore.ml.benchmarks import data_loading

    def args(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        data_loading.add_arguments(parser)
        return parser.parse_args(list(argv))

    total = sum(s["size"] for s in local.shards)
    url = f"file://{local.folder}"
    assert data_loading.run(args(url, "--workers", "0,1", "--batches", "20", "--batch-size", "8", "--horizon", "4",
                                 "--cache-gb", str(total / 2 / GB))) == 0
    out = capsys.readouterr().out
    assert f"{url}: 115 windows, inputs {{'JOINT_POSITIONS': (1, 2), 'RGB_IMAGES': (1, 1, 3, 24, 32)}}" in out
    rates = re.findall(r"workers=(\d): +[\d.]+ samples/s +\((\d+) samples", out)
    assert rates == [("0", "160"), ("1", "160")]
    caches = re.findall(r"shard cache \(at most [\d.e-]+ GB, dataset 0\.000 GB\): (\d+) hits, (\d+) misses "
                        r"\(hit rate [\d.]+%\), ([\d.]+) MB downloaded \(([\d.]+)x the dataset\)", out)
    assert len(caches) == 2  # each worker count from an empty cache: 184 windows, about 1.6 epochs
    assert all(13 <= int(m) <= 2 * 13 + 8 and 1.0 <= float(x) <= 2.0 for _, m, _, x in caches), caches
    with pytest.raises(ConfigError, match=r"--cache-gb 0\.0: must be > 0"):
        data_loading.run(args(url, "--cache-gb", "0"))

"""End to end: training straight from a dataset URL (file://, and s3:// on a loopback server), export, exact resume."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from neuracore.ml.datasets.format import read_spec
from neuracore.ml.datasets.remote import GB, SHARDS_FILE
from tests.conftest import FAST, REPO, fault_env, run_cli

ARGS = [a for a in FAST if not a.startswith("dataset_name=")] + [
    "validation_split=0.25", "logging_frequency=2", "algorithm.use_pretrained_weights=false",
]


def _run(home: Path, name: str) -> Path:
    return home / "training" / "runs" / name


def _shard_tool(home: Path, name: str) -> str:
    """`tools/dataset.py shards NAME --shard-mb 0.2` in this process (NEURACORE_HOME is `home`); its output."""
    spec = importlib.util.spec_from_file_location("dataset_tool_remote_e2e", REPO / "tools" / "dataset.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert tool.main(["shards", name, "--shard-mb", "0.2"]) == 0
    return out.getvalue()


@pytest.fixture()
def demo_copy(home: Path) -> Path:
    """A copy of the demo dataset re-sharded into ~0.2 MB shards with its shards.json (19 shards)."""
    folder = home / "datasets" / "demo_copy"
    shutil.copytree(home / "datasets" / "demo", folder)
    assert "demo_copy: 19 shards" in _shard_tool(home, "demo_copy")
    return folder


@pytest.fixture()
def s3_copy(demo_copy: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The re-sharded copy uploaded to a loopback S3 server: (URL, environment for the training process)."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    import s3fs

    from tests.ml.storage.storage_helpers import BUCKET, S3_ENV, start_moto

    server, endpoint = start_moto()
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key=S3_ENV["AWS_ACCESS_KEY_ID"],
                           secret=S3_ENV["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
    prefix = f"{BUCKET}/{uuid.uuid4().hex}/demo"
    for p in demo_copy.rglob("*"):
        if p.is_file():
            fs.pipe_file(f"{prefix}/{p.relative_to(demo_copy).as_posix()}", p.read_bytes())
    yield f"s3://{prefix}", {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
    server.stop()


def _half_the_dataset(folder: Path) -> tuple[str, int]:
    """`dataset.cache_max_gb=` half the dataset's shard bytes, and that bound in bytes."""
    total = sum(s["size"] for s in json.loads((folder / SHARDS_FILE).read_text())["shards"])
    gb = total / 2 / GB
    return f"dataset.cache_max_gb={gb!r}", int(gb * GB)


def test_training_loader_for_a_url_serves_the_local_windows_in_shard_order(home: Path, demo_copy: Path) -> None:
    """What train.py builds for dataset_name=<URL> (in this process): the same windows, the shard-aware order."""
    import torch

    from neuracore.ml.config.preflight import compose_config
    from neuracore.ml.config.schema import validate_config
    from neuracore.ml.datasets.format import open_dataset
    from neuracore.ml.datasets.remote import ShardedTable, ShardSampler, open_remote_dataset, wants_remote
    from neuracore.ml.train import CONFIG_DIR
    from neuracore.ml.trainers.data import build_data, make_loader

    bound, max_bytes = _half_the_dataset(demo_copy)
    url = f"file://{demo_copy}"
    config = validate_config(compose_config(ARGS + [f"dataset_name={url}", bound,
                                                    f"dataset.cache_dir={home / 'shard_cache'}"], CONFIG_DIR))
    assert wants_remote(config.dataset_name, config.dataset)
    remote = build_data(config, open_remote_dataset(config.dataset_name, config.dataset))
    local = build_data(config, open_dataset("demo_copy"))
    assert isinstance(remote.train.table, ShardedTable)
    assert remote.fingerprint == local.fingerprint and remote.train_episodes == local.train_episodes
    assert remote.model_init.inputs.keys() == local.model_init.inputs.keys()
    loader = make_loader(remote.train, 8, config, shuffle=True, pin_memory=False, drop_last=True)
    assert isinstance(loader.sampler, ShardSampler) and len(loader) == len(remote.train) // 8
    order = list(loader.sampler)
    for k, batch in enumerate(loader):
        idx = order[8 * k: 8 * k + 8]
        expected = torch.utils.data.default_collate([local.train[i] for i in idx])
        for part in ("inputs", "outputs"):
            for key, value in expected[part].items():
                assert torch.equal(batch[part][key], value), (k, part, key)
        assert torch.equal(batch["is_pad"], expected["is_pad"])
        if k == 3:
            break
    assert 0 < sum(p.stat().st_size for p in (home / "shard_cache").glob("??/*.arrow")) <= max_bytes
    validation = make_loader(remote.validation, 8, config, shuffle=False, pin_memory=False)
    assert not isinstance(validation.sampler, ShardSampler)  # validation reads in order


@pytest.mark.slow
def test_train_from_a_url_exports_and_logs_the_dataset(home: Path, demo_copy: Path) -> None:
    url = f"file://{demo_copy}"
    cache = home / "shard_cache"
    bound, max_bytes = _half_the_dataset(demo_copy)
    out = run_cli(ARGS + [f"dataset_name={url}", "batch_size=32", "max_steps=8", "checkpoint_frequency=4",
                          "training_name=remote", f"dataset.cache_dir={cache}", bound], home)
    assert out.returncode == 0, out.stderr[-3000:]
    run = _run(home, "remote")
    log = (run / "train.log").read_text()
    assert re.search(rf"dataset {re.escape(url)}: 19 shards, 0\.00 GB, read on demand into {re.escape(str(cache))}",
                     log), log[:2000]
    epoch = re.search(r"shard cache, epoch 0: (\d+) hits, (\d+) misses \(hit rate [\d.]+%\), ([\d.]+) MB downloaded "
                      r"\(([\d.]+)x the dataset\); ([\d.]+) MB cached", log)
    assert epoch, log[-3000:]
    # Half the dataset cached, yet each shard is downloaded about once per epoch (groups of consecutive shards).
    assert 0 < float(epoch[3]) and float(epoch[4]) <= 1.1 and int(epoch[2]) <= 19 + 2
    assert float(epoch[5]) <= max_bytes / 2**20 + 0.05
    used = sum(p.stat().st_size for p in cache.glob("??/*.arrow"))
    assert 0 < used <= max_bytes
    config = json.loads((run / "model" / "config.json").read_text())
    spec = read_spec(home / "datasets" / "demo")
    assert config["dataset"]["name"] == "demo" and config["dataset"]["fingerprint"] == read_spec(demo_copy).fingerprint
    assert config["dataset"]["episodes"] == len(spec.episodes) and config["dataset"]["frames"] == spec.num_frames
    resolved = (run / "config.yaml").read_text() if (run / "config.yaml").exists() else ""
    assert not resolved or url in resolved

    from neuracore.ml.export.policy import Policy

    policy = Policy.from_pretrained(run / "model")
    action = policy.predict({"JOINT_POSITIONS": [0.0, 0.1, 0.2], "RGB_IMAGES": np.zeros((1, 64, 64, 3), np.uint8)})
    assert action["JOINT_TARGET_POSITIONS"].shape == (5, 3) and np.isfinite(action["JOINT_TARGET_POSITIONS"]).all()


def test_bad_remote_input_is_one_line(home: Path, tmp_path: Path) -> None:
    from neuracore.ml.config.preflight import preflight
    from neuracore.ml.core.errors import ConfigError
    from neuracore.ml.train import CONFIG_DIR

    missing = f"file://{tmp_path}/nothing_here"
    out = run_cli(ARGS + [f"dataset_name={missing}", "max_steps=2", "training_name=missing"], home)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == (
        f"neuracore: error: {missing}: no {SHARDS_FILE} (the sha256 of every shard, needed to verify them); write it "
        "with `python tools/dataset.py shards NAME` before uploading, or upload a folder pushed with it")
    assert not _run(home, "missing").exists()
    for extra, message in [
        (["dataset_name=ftp://host/ds"], ("dataset_name='ftp://host/ds': scheme 'ftp' is not supported; valid: "
                                         "s3://, gs://, hf://, file://")),
        (["dataset_name=file:///data/ds", "dataset.cache_max_gb=0"],
         "dataset.cache_max_gb=0.0: must be > 0 (GB of local shard cache)"),
        (["dataset_name=gs://", "dataset.stream=true"], "dataset_name='gs://': expected gs://bucket/path/to/dataset"),
        (["dataset_name=file:///data/../ds"], "dataset_name='file:///data/../ds': expected file:///path/to/dataset"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            preflight(ARGS + extra, CONFIG_DIR)
    assert not (home / "training" / "runs").exists() or not any((home / "training" / "runs").iterdir())


@pytest.mark.slow
def test_sigkill_then_resume_from_a_url_is_bit_identical(home: Path, demo_copy: Path,
                                                          s3_copy: tuple[str, dict[str, str]]) -> None:
    url, s3_env = s3_copy
    bound, _ = _half_the_dataset(demo_copy)
    args = ARGS + ["max_steps=8", "checkpoint_frequency=3", "keep_last_n_checkpoints=2", bound,
                   f"dataset.cache_dir={home / 'shard_cache'}"]
    # The straight run reads the S3 copy; the killed and resumed runs the file:// one: the same bytes, the same order.
    straight = run_cli(args + [f"dataset_name={url}", "training_name=straight"], home, env=s3_env)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert f"dataset {url}: 19 shards" in (_run(home, "straight") / "train.log").read_text()
    local = args + [f"dataset_name=file://{demo_copy}", "training_name=killed"]
    killed = run_cli(local, home, env=fault_env(kill_after_step=5))
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    assert sorted(p.name for p in (_run(home, "killed") / "checkpoints").iterdir()) == ["checkpoint_3"]
    resumed = run_cli(local + ["resume_checkpoint_path=auto"], home)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "at step 3" in resumed.stderr
    a = load_file(str(_run(home, "straight") / "model" / "model.safetensors"))
    b = load_file(str(_run(home, "killed") / "model" / "model.safetensors"))
    assert set(a) == set(b)
    assert not [k for k in a if not np.array_equal(a[k], b[k])]

"""Hub semantics on file:// and a loopback S3 server: push/pull/list/log, dedup, cache, tags, branches."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
from storage_helpers import export_tiny, make_model, observation

from neuracore.ml.core import DataType
from neuracore.ml.core.errors import CheckpointError, ConfigError
from neuracore.ml.export import Policy
from neuracore.ml.storage import (
    Hub,
    StorageConflictError,
    StorageError,
    pull_model,
    push_model,
    push_run,
)
from neuracore.ml.storage.backend import default_storage_url, open_store, redact

ACTIONS = DataType.JOINT_TARGET_POSITIONS.value


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir() if not p.name.startswith(".")) and all(
        filecmp.cmp(a / n, b / n, shallow=False) for n in names
    )


def test_push_pull_list_log(storage_url: str, tmp_path: Path) -> None:
    v1 = export_tiny(tmp_path / "v1", seed=1, steps=10)
    v2 = export_tiny(tmp_path / "v2", seed=2, steps=20)
    r1 = push_model(v1, "acme/arm", message="first", tag="v1", storage_url=storage_url)
    r2 = push_model(v2, "acme/arm", message="second", storage_url=storage_url)
    push_model(v1, "acme/other", storage_url=storage_url)
    push_model(v1, "beta/x", storage_url=storage_url)
    hub = Hub(storage_url)

    assert r1.files == 3 and r1.tag == "v1" and r1.bytes_uploaded == r1.bytes_total > 0
    log = hub.log("acme/arm")
    assert [e.revision for e in log] == [r2.revision, r1.revision]  # newest first
    assert [e.message for e in log] == ["second", "first"]
    assert log[0].parent == r1.revision and log[1].parent is None
    assert log[1].tags == ["v1"] and log[0].tags == [] and log[0].kind == "model"
    assert hub.list_repos() == ["acme/arm", "acme/other", "beta/x"]
    assert hub.list_repos("acme") == ["acme/arm", "acme/other"]
    meta = hub.revision("acme/arm").manifest["metadata"]
    assert meta["algorithm"] == "cnnmlp" and meta["training"]["steps"] == 20 and meta["dataset"]["episodes"] == 3

    assert same_files(v2, hub.pull("acme/arm"))
    assert same_files(v1, hub.pull("acme/arm@v1"))
    assert same_files(v1, hub.pull(f"acme/arm@{r1.revision[:10]}"))
    assert hub.pull("acme/arm").name == r2.revision
    assert hub.resolve("acme/arm@main") == r2.revision
    with pytest.raises(StorageError, match="no branch, tag or revision 'v9'"):
        hub.resolve("acme/arm@v9")
    with pytest.raises(StorageError, match="repository acme/none not found"):
        hub.pull("acme/none")
    with pytest.raises(StorageConflictError, match="tag 'v1' already exists"):
        push_model(v2, "acme/arm", tag="v1", storage_url=storage_url)
    assert len(hub.log("acme/arm")) == 2  # the refused push changed nothing


def test_round_trip_prediction_equality(storage_url: str, tmp_path: Path) -> None:
    model = make_model(seed=3, camera=True)
    from neuracore.ml.export import export_model

    export_model(model, tmp_path / "model")
    push_model(tmp_path / "model", "acme/cam", storage_url=storage_url)
    obs = observation(camera=True)
    expected = Policy(model, {}).predict(obs)[ACTIONS]
    got = Policy.from_pretrained("acme/cam", storage_url=storage_url).predict(obs)[ACTIONS]
    assert got.shape == (4, 3)
    np.testing.assert_array_equal(got, expected)


def test_unchanged_blobs_not_uploaded(storage_url: str, model_dir: Path) -> None:
    first = push_model(model_dir, "acme/arm", storage_url=storage_url)
    again = push_model(model_dir, "acme/arm", message="same files", storage_url=storage_url)
    assert again.bytes_uploaded == 0 and again.revision != first.revision
    (model_dir / "README.md").write_text("# edited card\n")
    edited = push_model(model_dir, "acme/arm", storage_url=storage_url)
    assert edited.bytes_uploaded == len("# edited card\n")


def test_pull_downloads_once(storage_url: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    push_model(model_dir, "acme/arm", storage_url=storage_url)
    hub = Hub(storage_url)
    calls: list[str] = []
    real = hub.store.download
    monkeypatch.setattr(hub.store, "download", lambda path, local: (calls.append(path), real(path, local)))
    first = hub.pull("acme/arm")
    second = hub.pull("acme/arm")
    assert first == second and len(calls) == 3
    assert str(first).startswith(str(Path(default_storage_url()[7:]).parent / "cache" / "hub" / "acme" / "arm"))


def test_push_run_branches_and_best(storage_url: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    final, best = make_model(seed=5), make_model(seed=6)
    from neuracore.ml.export import export_model

    export_model(final, run / "model")
    export_model(best, run / "best_model")
    results = push_run(run, "acme/run", storage_url=storage_url, tag="r1")
    assert set(results) == {"model", "best_model"}
    assert results["model"].branch == "main" and results["best_model"].branch == "best"
    hub = Hub(storage_url)
    assert hub.tags("acme/run") == {"r1": results["model"].revision, "r1-best": results["best_model"].revision}
    obs = observation()
    for spec, model in (("acme/run", final), ("acme/run@best", best), ("acme/run@r1-best", best)):
        got = Policy.from_pretrained(spec, storage_url=storage_url).predict(obs)[ACTIONS]
        np.testing.assert_array_equal(got, Policy(model, {}).predict(obs)[ACTIONS])
    with pytest.raises(ConfigError, match="not a run folder"):
        push_run(tmp_path / "nothing", "acme/run", storage_url=storage_url)


def test_push_refuses_mismatched_weights(tmp_path: Path, model_dir: Path) -> None:
    url = f"file://{tmp_path / 's'}"
    data = bytearray((model_dir / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (model_dir / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 does not match config.json; refusing to push"):
        push_model(model_dir, "acme/arm", storage_url=url)
    assert not (tmp_path / "s" / "repos").exists()  # nothing uploaded


def test_pull_model_of_a_dataset_revision_is_an_error(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 's'}"
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_text("x")
    Hub(url).push_folder(tmp_path / "files", "acme/files")
    with pytest.raises(CheckpointError, match="holds no exported model"):
        pull_model("acme/files", storage_url=url)


def test_storage_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURACORE_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("NEURACORE_STORAGE_URL", raising=False)
    assert default_storage_url() == f"file://{tmp_path / 'h' / 'storage'}"
    monkeypatch.setenv("NEURACORE_STORAGE_URL", f"file://{tmp_path / 'elsewhere'}")
    assert open_store().describe() == f"file://{(tmp_path / 'elsewhere').resolve()}"
    with pytest.raises(ConfigError, match="protocol 'gs' is not supported"):
        open_store("gs://bucket/x")
    assert redact("https://user:secret@host/x") == "https://***@host/x"


@pytest.mark.parametrize("url, shown", [
    ("s3://KEY:se/cret@bucket/p", "s3://***@bucket/p"),
    ("s3://KEY:se@cr/et@bucket/p", "s3://***@bucket/p"),
    ("https://token@host/x", "https://***@host/x"),
    ("s3://bucket/a@b", "s3://bucket/a@b"),
    ("file:///tmp/store", "file:///tmp/store"),
])
def test_redact_hides_userinfo_even_when_the_secret_holds_slashes(url: str, shown: str):
    assert redact(url) == shown

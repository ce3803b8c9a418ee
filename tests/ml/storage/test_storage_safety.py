"""Integrity and safety: flipped bytes, tampered manifests, malicious names, concurrent pushes."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
from storage_helpers import export_tiny

from neuracore.ml.core.errors import ConfigError
from neuracore.ml.storage import Hub, IntegrityError, StorageConflictError, push_model
from neuracore.ml.storage.hub import MANIFEST_FORMAT, hub_cache_root
from neuracore.ml.storage.names import check_file_path, parse_repo


def _blob_of(hub: Hub, repo: str, name: str) -> str:
    entry = hub.revision(repo).files[name]
    return f"repos/{repo}/blobs/{entry['sha256'][:2]}/{entry['sha256']}"


def test_flipped_byte_in_stored_blob_is_detected(storage_url: str, model_dir: Path) -> None:
    push_model(model_dir, "acme/arm", storage_url=storage_url)
    hub = Hub(storage_url)
    blob = _blob_of(hub, "acme/arm", "model.safetensors")
    data = bytearray(hub.store.read_bytes(blob))
    data[len(data) // 2] ^= 0x01
    hub.store.write_atomic(blob, bytes(data))
    with pytest.raises(IntegrityError, match=r"model.safetensors is corrupt \(sha256"):
        hub.pull("acme/arm")
    repo_cache = hub_cache_root() / "acme" / "arm"
    assert not repo_cache.exists() or list(repo_cache.iterdir()) == []  # no half or corrupt folder is left


def test_flipped_byte_during_download_is_detected(storage_url: str, model_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    push_model(model_dir, "acme/arm", storage_url=storage_url)
    hub = Hub(storage_url)
    real = hub.store.download

    def flipping(path: str, local: Path) -> None:
        real(path, local)
        if local.name == "config.json":
            data = bytearray(local.read_bytes())
            data[3] ^= 0x20
            local.write_bytes(bytes(data))

    monkeypatch.setattr(hub.store, "download", flipping)
    with pytest.raises(IntegrityError, match="config.json is corrupt"):
        hub.download("acme/arm", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # temp folder removed


def test_tampered_manifest_is_detected(storage_url: str, model_dir: Path) -> None:
    result = push_model(model_dir, "acme/arm", storage_url=storage_url)
    hub = Hub(storage_url)
    path = f"repos/acme/arm/revisions/{result.revision}.json"
    manifest = json.loads(hub.store.read_bytes(path))
    manifest["message"] = "rewritten history"
    hub.store.write_atomic(path, json.dumps(manifest).encode())
    with pytest.raises(IntegrityError, match="manifest bytes do not match revision id"):
        hub.pull("acme/arm")


@pytest.mark.parametrize("spec", ["../x", "/abs", "a/../../b", "org/..", "../../etc/passwd", "org/name/extra",
                                  "org/.hidden", "org/na me", "org", "org/name@../../x", "org/name@", "org\\name"])
def test_malicious_repo_names_are_rejected(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="repo|revision"):
        parse_repo(spec)
    with pytest.raises(ConfigError):
        Hub(f"file://{tmp_path / 's'}").pull(spec)
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").rglob("*.json"))


def test_malicious_tag_is_rejected(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="revision tag='../t'"):
        push_model(model_dir, "acme/arm", tag="../t", storage_url=f"file://{tmp_path / 's'}")
    with pytest.raises(ConfigError, match="a revision"):
        push_model(model_dir, "acme/arm@v1", storage_url=f"file://{tmp_path / 's'}")


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\..\\b", "C:/x", "a/", ""])
def test_unsafe_file_paths_are_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match="not a safe relative path"):
        check_file_path(name, "manifest")


@pytest.mark.parametrize("evil", ["../escaped.txt", "/tmp/abs.txt", "sub/../../escaped.txt"])
def test_manifest_entries_escaping_the_folder_are_rejected(storage_url: str, model_dir: Path, tmp_path: Path,
                                                           evil: str) -> None:
    push_model(model_dir, "acme/arm", storage_url=storage_url)
    hub = Hub(storage_url)
    payload = b"owned"
    sha = hashlib.sha256(payload).hexdigest()
    hub.store.write_atomic(f"repos/acme/arm/blobs/{sha[:2]}/{sha}", payload)
    manifest = {"format": MANIFEST_FORMAT, "repo": "acme/arm", "kind": "model", "parent": None, "time": "t",
                "message": "evil", "metadata": {}, "files": {evil: {"sha256": sha, "size": len(payload)}}}
    data = json.dumps(manifest).encode()
    rev = hashlib.sha256(data).hexdigest()
    hub.store.write_atomic(f"repos/acme/arm/revisions/{rev}.json", data)  # a hostile storage writer
    assert hub.store.create_exclusive("repos/acme/arm/refs/tags/evil.json", json.dumps({"revision": rev}).encode())
    with pytest.raises(ConfigError, match="not a safe relative path"):
        hub.pull("acme/arm@evil")
    with pytest.raises(ConfigError, match="not a safe relative path"):
        hub.download("acme/arm@evil", tmp_path / "dl" / "out")
    assert not list(tmp_path.rglob("escaped.txt")) and not Path("/tmp/abs.txt").exists()


def test_symlinks_are_not_pushed(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    (folder / "secret").symlink_to(Path.home())
    with pytest.raises(ConfigError, match="symbolic links are not pushed"):
        Hub(f"file://{tmp_path / 's'}").push_folder(folder, "acme/f")


def test_rival_push_between_upload_and_ref_update(storage_url: str, tmp_path: Path) -> None:
    base = push_model(export_tiny(tmp_path / "base", seed=0), "acme/arm", storage_url=storage_url)
    mine, theirs = export_tiny(tmp_path / "mine", seed=1), export_tiny(tmp_path / "theirs", seed=2)
    hub, rival = Hub(storage_url), Hub(storage_url)
    won: list[str] = []
    hub._before_ref_update = lambda: won.append(push_model(theirs, "acme/arm", hub=rival).revision) if not won else None
    with pytest.raises(StorageConflictError, match="branch 'main' moved to revision .* changed nothing visible"):
        push_model(mine, "acme/arm", hub=hub)
    assert [e.revision for e in hub.log("acme/arm")] == [won[0], base.revision]
    # With retries the loser re-bases its (already uploaded) files on top of the winner.
    won.clear()
    result = hub.push_folder(mine, "acme/arm", retries=1)
    log = hub.log("acme/arm")
    assert [e.revision for e in log[:2]] == [result.revision, won[0]] and log[0].parent == won[0]
    assert result.bytes_uploaded == 0  # blobs were uploaded by the failed attempt already


def test_concurrent_pushes_one_wins(storage_url: str, tmp_path: Path) -> None:
    n = 4
    folders = [export_tiny(tmp_path / f"m{i}", seed=i) for i in range(n)]
    barrier = threading.Barrier(n)
    outcomes: dict[int, object] = {}

    def push(i: int) -> None:
        hub = Hub(storage_url)
        hub._before_ref_update = lambda: barrier.wait(timeout=60)  # all race for the same branch entry
        try:
            outcomes[i] = push_model(folders[i], "acme/race", hub=hub).revision
        except StorageConflictError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=push, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    winners = [v for v in outcomes.values() if isinstance(v, str)]
    losers = [v for v in outcomes.values() if isinstance(v, StorageConflictError)]
    assert len(outcomes) == n and len(winners) == 1 and len(losers) == n - 1
    hub = Hub(storage_url)
    assert [e.revision for e in hub.log("acme/race")] == winners
    assert hub.pull("acme/race").name == winners[0]

"""Hostile or unlucky input to storage: bad refs, tampered caches, files changing under a push, damaged
blobs, interrupted pushes, half-published runs, and the CLI's one-line errors for all of them."""

from __future__ import annotations

import filecmp
import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest
from storage_helpers import export_tiny

from neuracore.ml.core.errors import CheckpointError
from neuracore.ml.storage import (
    Hub,
    IntegrityError,
    SourceChangedError,
    StorageError,
    push_model,
    push_run,
)
from neuracore.ml.storage import hub as hub_module
from neuracore.ml.storage.hub import MANIFEST_FORMAT, REVISION_MARKER, hub_cache_root
from tests.conftest import REPO

REPO_ID = "acme/arm"
BRANCH = "repos/acme/arm/refs/heads"


def load_tool():
    """tools/hub.py as a module, to call main(argv) in-process."""
    spec = importlib.util.spec_from_file_location("hub_tool_hostile", REPO / "tools" / "hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line(exc: pytest.ExceptionInfo) -> str:
    """The exception's message, asserted to be a single line."""
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def cli_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI in-process, assert exit 1 and exactly one stderr line; return it."""
    assert load_tool().main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("hub: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def blob_names(hub: Hub, repo: str = REPO_ID) -> set[str]:
    base = f"repos/{repo}/blobs"
    return {n for d in hub.store.list_names(base) for n in hub.store.list_names(f"{base}/{d}")}


def stored_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture()
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A file:// storage URL with NEURACORE_HOME under tmp_path."""
    monkeypatch.setenv("NEURACORE_HOME", str(tmp_path / "home"))
    return f"file://{tmp_path / 'storage'}"


@pytest.fixture()
def pushed(local: str, model_dir: Path) -> Hub:
    """A local store holding one revision of acme/arm on main."""
    push_model(model_dir, REPO_ID, storage_url=local)
    return Hub(local)


def _add_branch_entry(hub: Hub, data: bytes, branch: str = "main") -> str:
    seq = hub.head(REPO_ID, branch)[0] + 1
    path = f"{BRANCH}/{branch}/{seq:012d}.json"
    assert hub.store.create_exclusive(path, data)
    return path


# ----- item 3: refs must name full revision hashes; cache hits are verified -----

def test_branch_revision_with_dotdot_reads_nothing_outside_the_cache(pushed: Hub, tmp_path: Path) -> None:
    # Where the old code would have looked: <cache>/acme/arm/<revision>, i.e. outside the cache.
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "model.safetensors").write_bytes(b"evil")
    evil = os.path.relpath(planted, hub_cache_root() / "acme" / "arm")
    path = _add_branch_entry(pushed, json.dumps({"revision": evil, "parent": None}).encode())
    with pytest.raises(StorageError) as exc:
        pushed.pull(REPO_ID)
    msg = one_line(exc)
    assert path in msg and "key 'revision'" in msg and repr(evil) in msg and "full 64-hex-digit" in msg
    assert (planted / "model.safetensors").read_bytes() == b"evil" and sorted(os.listdir(planted)) == ["model.safetensors"]
    assert not hub_cache_root().exists() or not any(hub_cache_root().rglob("*.safetensors"))


def test_branch_revision_that_is_only_a_prefix_is_refused(pushed: Hub) -> None:
    rev = pushed.head(REPO_ID)[1]
    _add_branch_entry(pushed, json.dumps({"revision": rev[:12], "parent": rev}).encode())
    with pytest.raises(StorageError, match=rf"key 'revision' is '{rev[:12]}', not a full") as exc:
        pushed.resolve(REPO_ID)
    one_line(exc)


def test_tag_with_traversal_revision_is_refused(pushed: Hub) -> None:
    assert pushed.store.create_exclusive("repos/acme/arm/refs/tags/v9.json", b'{"revision": "../../../../etc"}')
    with pytest.raises(StorageError, match=r"refs/tags/v9.json: corrupt tag: key 'revision' is '../../../../etc'") as exc:
        pushed.pull(f"{REPO_ID}@v9")
    one_line(exc)


def test_bad_parent_in_branch_entry_is_refused(pushed: Hub) -> None:
    rev = pushed.head(REPO_ID)[1]
    _add_branch_entry(pushed, json.dumps({"revision": rev, "parent": "../x"}).encode())
    with pytest.raises(StorageError, match=r"key 'parent' is '../x'") as exc:
        pushed.log(REPO_ID)
    one_line(exc)


@pytest.mark.parametrize(
    "data, detail",
    [
        (b"{not json", "corrupt branch entry (Expecting property name"),
        (b"[1, 2]", "corrupt branch entry (not a JSON object)"),
        (b'{"parent": null}', "key 'revision' is None"),
        (b'{"revision": 5}', "key 'revision' is 5"),
        (b"\xff\xfe", "corrupt branch entry ("),
    ],
)
@pytest.mark.parametrize("command", [["pull", REPO_ID], ["log", REPO_ID], ["list"]])
def test_cli_malformed_branch_json_is_one_line(pushed: Hub, capsys: pytest.CaptureFixture, local: str,
                                               data: bytes, detail: str, command: list[str]) -> None:
    path = _add_branch_entry(pushed, data)
    err = cli_error(capsys, [*command, "--storage", local])
    assert path in err and detail in err
    assert not hub_cache_root().exists()  # nothing was downloaded


def test_tampered_cache_folder_is_verified_and_repaired(pushed: Hub, caplog: pytest.LogCaptureFixture,
                                                        model_dir: Path) -> None:
    folder = pushed.pull(REPO_ID)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="neuracore.ml.storage.hub"):
        again = pushed.pull(REPO_ID)
    assert again == folder
    assert filecmp.cmp(again / "model.safetensors", model_dir / "model.safetensors", shallow=False)
    warning = [r.getMessage() for r in caplog.records if "cached copy is damaged" in r.getMessage()]
    assert len(warning) == 1 and "'model.safetensors' has sha256" in warning[0] and "\n" not in warning[0]
    assert sorted(os.listdir(folder.parent)) == [folder.name]  # no temp or damaged copy left beside it


@pytest.mark.parametrize("tamper", ["extra_file", "missing_file", "symlink", "planted", "a_file"])
def test_pre_existing_cache_entries_are_never_returned_unverified(pushed: Hub, model_dir: Path, tmp_path: Path,
                                                                  tamper: str) -> None:
    rev = pushed.head(REPO_ID)[1]
    folder = hub_cache_root() / "acme" / "arm" / rev
    if tamper == "planted":  # a folder someone put there before any pull: right names, wrong weights
        folder.mkdir(parents=True)
        for name in ("config.json", "README.md"):
            (folder / name).write_bytes((model_dir / name).read_bytes())
        (folder / "model.safetensors").write_bytes(b"\0" * (model_dir / "model.safetensors").stat().st_size)
    elif tamper == "a_file":
        folder.parent.mkdir(parents=True)
        folder.write_text("not a folder")
    else:
        pushed.pull(REPO_ID)
        if tamper == "extra_file":
            (folder / "sitecustomize.py").write_text("import os")
        elif tamper == "missing_file":
            (folder / "README.md").unlink()
        else:
            outside = tmp_path / "outside.safetensors"
            outside.write_bytes((folder / "model.safetensors").read_bytes())
            (folder / "model.safetensors").unlink()
            (folder / "model.safetensors").symlink_to(outside)
    got = pushed.pull(REPO_ID)
    assert got == folder and not (got / "model.safetensors").is_symlink()
    assert stored_files(got) == {"config.json", "model.safetensors", "README.md", REVISION_MARKER}
    assert filecmp.cmp(got / "model.safetensors", model_dir / "model.safetensors", shallow=False)
    assert sorted(os.listdir(folder.parent)) == [rev]


# ----- item 4: what is uploaded is what was hashed; existence by hash; bad blobs repaired -----

def test_file_changed_between_hashing_and_upload(storage_url: str, model_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = hub_module._hash_entry
    weights = model_dir / "model.safetensors"
    original = weights.read_bytes()

    def hash_then_change(path: Path) -> dict:
        entry = real(path)
        if path.name == "model.safetensors":  # another process rewrites the file after it was hashed
            path.write_bytes(original[::-1])
        return entry

    monkeypatch.setattr(hub_module, "_hash_entry", hash_then_change)
    hub = Hub(storage_url)
    with pytest.raises(SourceChangedError) as exc:
        hub.push_folder(model_dir, REPO_ID)
    msg = one_line(exc)
    old_sha = hashlib.sha256(original).hexdigest()
    assert str(weights) in msg and "changed while it was being pushed" in msg and old_sha[:12] in msg
    assert old_sha not in blob_names(hub)  # never stored under the old hash
    assert hashlib.sha256(original[::-1]).hexdigest() not in blob_names(hub)
    assert hub.branches(REPO_ID) == [] and hub.store.list_names("repos/acme/arm/revisions") == []
    if storage_url.startswith("file://"):
        assert hub.store.list_names(".tmp") == [] and not any((hub.store.root / ".tmp").iterdir())


def test_blob_with_right_size_but_wrong_bytes_is_repaired_by_a_clean_push(storage_url: str, model_dir: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    first = push_model(model_dir, REPO_ID, storage_url=storage_url)
    hub = Hub(storage_url)
    sha = hub.revision(REPO_ID).files["model.safetensors"]["sha256"]
    blob = f"repos/acme/arm/blobs/{sha[:2]}/{sha}"
    good = hub.store.read_bytes(blob)
    hub.store.write_atomic(blob, bytes(len(good)))  # poisoned: right size, zero bytes
    with pytest.raises(IntegrityError, match="model.safetensors is corrupt"):
        hub.pull(REPO_ID)
    with caplog.at_level(logging.WARNING, logger="neuracore.ml.storage.hub"):
        again = push_model(model_dir, REPO_ID, storage_url=storage_url)
    assert again.bytes_uploaded == len(good)  # only the damaged blob was sent again
    assert any("damaged" in r.getMessage() and sha[:12] in r.getMessage() for r in caplog.records)
    assert hub.store.read_bytes(blob) == good
    assert filecmp.cmp(hub.pull(f"{REPO_ID}@{first.revision}") / "model.safetensors",
                       model_dir / "model.safetensors", shallow=False)  # the old revision reads again too


def test_upload_that_reads_back_wrong_publishes_nothing(local: str, model_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    hub = Hub(local)
    real = hub.store.upload_verified

    def torn(src: Path, path: str, sha: str) -> None:  # the storage keeps other bytes than it was sent
        real(src, path, sha)
        if src.name == "model.safetensors":
            target = hub.store.root / path
            target.write_bytes(target.read_bytes()[:-1] + b"\0")

    monkeypatch.setattr(hub.store, "upload_verified", torn)
    with pytest.raises(IntegrityError, match=r"model.safetensors reads back as sha256 .* after upload") as exc:
        push_model(model_dir, REPO_ID, hub=hub)
    one_line(exc)
    assert hub.branches(REPO_ID) == []
    monkeypatch.undo()
    push_model(model_dir, REPO_ID, storage_url=local)
    assert filecmp.cmp(Hub(local).pull(REPO_ID) / "model.safetensors", model_dir / "model.safetensors", shallow=False)


def test_push_interrupted_between_blobs_then_rerun(storage_url: str, tmp_path: Path) -> None:
    old = push_model(export_tiny(tmp_path / "old", seed=1), REPO_ID, storage_url=storage_url)
    new = export_tiny(tmp_path / "new", seed=2)
    hub = Hub(storage_url)

    def interrupt(n: int) -> None:
        if n >= 2:
            raise KeyboardInterrupt  # Ctrl-C after the second blob

    hub._after_blob = interrupt
    with pytest.raises(KeyboardInterrupt):
        push_model(new, REPO_ID, hub=hub)
    assert [e.revision for e in hub.log(REPO_ID)] == [old.revision]
    assert len(hub.store.list_names("repos/acme/arm/revisions")) == 1  # no manifest of the interrupted push
    rerun = push_model(new, REPO_ID, storage_url=storage_url)
    assert rerun.bytes_uploaded < rerun.bytes_total  # the blobs that did arrive are reused (after a hash check)
    assert [e.revision for e in hub.log(REPO_ID)] == [rerun.revision, old.revision]
    assert filecmp.cmp(hub.pull(REPO_ID) / "model.safetensors", new / "model.safetensors", shallow=False)


def test_unreadable_folder_is_not_skipped(local: str, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_walk(top, onerror=None, **kw):  # os.walk's default silently skips what it cannot list
        assert onerror is not None
        onerror(PermissionError(13, "Permission denied", str(model_dir / "sub")))
        return iter(())

    monkeypatch.setattr(hub_module.os, "walk", failing_walk)
    with pytest.raises(Exception, match=r"sub: cannot list \(Permission denied\); nothing was pushed") as exc:
        push_model(model_dir, REPO_ID, storage_url=local)
    one_line(exc)
    assert not (Path(local[7:]) / "repos").exists()


# ----- item 10: a run push moves main and best together, or says exactly what moved -----

def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    export_tiny(run / "model", seed=1)
    export_tiny(run / "best_model", seed=2)
    return run


def test_run_push_best_branch_fails_after_main_moved(local: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path)
    hub = Hub(local)
    real = hub.store.create_exclusive
    monkeypatch.setattr(hub.store, "create_exclusive",
                        lambda path, data: (_ for _ in ()).throw(OSError(28, "No space left on device"))
                        if "/refs/heads/best/" in path else real(path, data))
    with pytest.raises(StorageError) as exc:
        push_run(run, REPO_ID, tag="v1", hub=hub)
    msg = one_line(exc)
    main_rev = hub.head(REPO_ID, "main")[1]
    assert f"moved branch 'main' to {main_rev[:12]}, but branch 'best' (best_model/) was not moved" in msg
    assert "No space left on device" in msg and "push the run again" in msg
    assert hub.tags(REPO_ID) == {}  # no tag points at a half-published run
    assert hub.head(REPO_ID, "best") == (0, None)
    monkeypatch.undo()
    results = push_run(run, REPO_ID, tag="v1", storage_url=local)  # the re-run repairs
    assert hub.head(REPO_ID, "main")[1] == results["model"].revision
    assert hub.head(REPO_ID, "best")[1] == results["best_model"].revision
    assert hub.tags(REPO_ID) == {"v1": results["model"].revision, "v1-best": results["best_model"].revision}
    assert results["model"].bytes_uploaded == 0 and results["best_model"].bytes_uploaded == 0


def test_run_push_uploads_nothing_when_best_model_is_invalid(local: str, tmp_path: Path) -> None:
    run = _run(tmp_path)
    config = json.loads((run / "best_model" / "config.json").read_text())
    config["weights_sha256"] = "0" * 64
    (run / "best_model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="best_model/model.safetensors: sha256 does not match config.json"):
        push_run(run, REPO_ID, storage_url=local)
    assert not (Path(local[7:]) / "repos").exists()  # not even model/'s blobs


def test_run_push_main_conflict_moves_nothing(local: str, tmp_path: Path) -> None:
    run = _run(tmp_path)
    base = push_model(export_tiny(tmp_path / "base", seed=5), REPO_ID, storage_url=local)
    hub, rival = Hub(local), Hub(local)
    done: list[str] = []
    hub._before_ref_update = lambda: done.append(push_model(tmp_path / "base", REPO_ID, hub=rival).revision) if not done else None
    with pytest.raises(StorageError, match="changed nothing visible") as exc:
        push_run(run, REPO_ID, tag="v2", hub=hub)
    one_line(exc)
    assert hub.head(REPO_ID, "best") == (0, None) and hub.tags(REPO_ID) == {}
    assert [e.revision for e in hub.log(REPO_ID)] == [done[0], base.revision]


# ----- item 9: CLI failures are one line and a non-zero exit -----

def test_cli_pull_to_an_existing_file(pushed: Hub, local: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target = tmp_path / "policy.bin"
    target.write_text("keep me")
    err = cli_error(capsys, ["pull", REPO_ID, "--to", str(target), "--storage", local])
    assert f"--to {target}: exists and is not a folder" in err
    assert target.read_text() == "keep me" and not list(tmp_path.glob(".policy.bin.tmp-*"))


def test_cli_pull_to_below_a_file(pushed: Hub, local: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "afile").write_text("x")
    err = cli_error(capsys, ["pull", REPO_ID, "--to", str(tmp_path / "afile" / "out"), "--storage", local])
    assert str(tmp_path / "afile") in err and "a file is where a folder is expected" in err


def test_cli_pull_cache_where_a_file_blocks_the_folder(pushed: Hub, local: str, capsys: pytest.CaptureFixture) -> None:
    cache = hub_cache_root()
    cache.parent.mkdir(parents=True)
    cache.write_text("not a folder")  # $NEURACORE_HOME/cache/hub is a file
    err = cli_error(capsys, ["pull", REPO_ID, "--storage", local])
    assert str(cache) in err and "a file is where a folder is expected" in err
    assert cache.read_text() == "not a folder"


def test_cli_pull_unknown_revision_leaves_empty_target(pushed: Hub, local: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "out").mkdir()
    err = cli_error(capsys, ["pull", f"{REPO_ID}@nope", "--to", str(tmp_path / "out"), "--storage", local])
    assert "no branch, tag or revision 'nope'" in err and (tmp_path / "out").is_dir()


def test_cli_manifest_with_bad_metadata_type(pushed: Hub, local: str, capsys: pytest.CaptureFixture) -> None:
    manifest = {"format": MANIFEST_FORMAT, "repo": REPO_ID, "kind": "model", "parent": None, "time": "t",
                "message": "m", "metadata": ["not", "a", "dict"], "files": {}}
    data = json.dumps(manifest).encode()
    rev = hashlib.sha256(data).hexdigest()
    pushed.store.write_atomic(f"repos/acme/arm/revisions/{rev}.json", data)
    pushed.store.create_exclusive("repos/acme/arm/refs/tags/odd.json", json.dumps({"revision": rev}).encode())
    err = cli_error(capsys, ["pull", f"{REPO_ID}@odd", "--storage", local])
    assert f"revisions/{rev}.json: unreadable manifest" in err and "'metadata' is not a dict" in err


def test_cli_keeps_the_traceback_of_internal_bugs(pushed: Hub, local: str, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    tool = load_tool()
    monkeypatch.setattr(tool.Hub, "log", lambda *a, **k: 1 / 0)
    assert tool.main(["log", REPO_ID, "--storage", local]) == 70  # EX_SOFTWARE: a bug, not a user error
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and "hub: internal error" in err


def test_production_code_reads_no_fault_injection_switch() -> None:
    for path in (REPO / "neuracore" / "ml" / "storage").glob("*.py"):
        assert "NEURACORE_STORAGE_TEST" not in path.read_text(), path

"""pi0 exports carry their tokenizer: copied into assets/, hashed, confined to the folder, loadable anywhere."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from neuracore.ml.core.errors import CheckpointError
from neuracore.ml.export import Policy, export_model, load_model_folder
from neuracore.ml.sim.pick_place import PickPlaceEnv
from tests.conftest import edit_config
from tests.ml.algorithms.pi0_helpers import demo_data, make_tokenizer, tiny_pi0

ACTIONS = "JOINT_TARGET_POSITIONS"
PROMPT = "pick up the red cube and put it in the green zone"
OTHER = "put the yellow cube in the blue zone"
ASSET = "assets/tokenizer_path"


def observation(language: str) -> dict:
    obs = PickPlaceEnv(7).observe()
    return {"JOINT_POSITIONS": obs.joint_positions, "RGB_IMAGES": obs.image[None], "LANGUAGE": language}


def chunk(policy: Policy, language: str) -> np.ndarray:
    policy.reset()
    return policy.predict(observation(language))[ACTIONS]


@pytest.fixture(scope="module")
def exported(demo_home: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny pi0 with a test-made tokenizer, exported, then moved away from a deleted tokenizer folder."""
    base = tmp_path_factory.mktemp("pi0_export")
    tok = make_tokenizer(base / "training_machine" / "paligemma_tokenizer")
    tok_files = {p.name: p.read_bytes() for p in tok.iterdir()}
    model = tiny_pi0(demo_data(demo_home), tokenizer_path=str(tok)).eval()
    written = export_model(model, base / "run" / "model")
    config_text = (written / "config.json").read_text()
    card = (written / "README.md").read_text()
    original = Policy(model, {})
    expected = {p: chunk(original, p) for p in (PROMPT, OTHER)}
    # "Another machine": the tokenizer folder is gone and the export lives somewhere else.
    shutil.rmtree(tok)
    folder = base / "elsewhere" / "model"
    folder.parent.mkdir()
    shutil.move(str(written), str(folder))
    shutil.rmtree(base / "run")
    return SimpleNamespace(model=model, folder=folder, tok=tok, tok_files=tok_files, config_text=config_text,
                           card=card, expected=expected, base=base)


@pytest.fixture()
def folder_copy(exported: SimpleNamespace, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(exported.folder, dst)
    return dst


def _error(folder: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        Policy.from_pretrained(folder)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_export_embeds_the_tokenizer_and_records_no_outside_path(exported):
    folder, config = exported.folder, json.loads(exported.config_text)
    embedded = folder / ASSET
    assert {p.name: p.read_bytes() for p in embedded.iterdir()} == exported.tok_files
    assert not any(p.is_symlink() for p in embedded.iterdir())
    assert config["format_version"] == 2
    assert config["algorithm"]["hyperparameters"]["tokenizer_path"] == ASSET
    entry = config["assets"]["tokenizer_path"]
    assert entry["path"] == ASSET and sorted(entry["sha256"]) == sorted(exported.tok_files)
    import hashlib

    for name, sha in entry["sha256"].items():
        assert hashlib.sha256(exported.tok_files[name]).hexdigest() == sha
    for text in (exported.config_text, exported.card):
        assert str(exported.tok) not in text and str(exported.tok.parent) not in text
    assert f"`algorithm.tokenizer_path` is this export's folder `{ASSET}/`" in exported.card
    # A storage push carries the nested files (the manifest is built from this scan).
    from neuracore.ml.storage.hub import scan_folder

    assert {f"{ASSET}/{n}" for n in exported.tok_files} <= set(scan_folder(folder))


def test_without_a_tokenizer_nothing_is_embedded(demo_home, tmp_path):
    folder = export_model(tiny_pi0(demo_data(demo_home)), tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    assert "assets" not in config and config["format_version"] == 1
    assert config["algorithm"]["hyperparameters"]["tokenizer_path"] is None
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_loaded_policy_predicts_like_the_original_without_the_original_folder(exported):
    assert not exported.tok.exists()
    policy = Policy.from_pretrained(exported.folder)
    got = {p: chunk(policy, p) for p in (PROMPT, OTHER)}
    np.testing.assert_array_equal(got[PROMPT], exported.expected[PROMPT])
    np.testing.assert_array_equal(got[OTHER], exported.expected[OTHER])
    assert not np.allclose(got[PROMPT], got[OTHER])  # the prompt (hence the tokenizer) matters


def test_loaded_tokenizer_gives_the_original_ids(exported):
    loaded, _ = load_model_folder(exported.folder)
    assert Path(loaded.tokenizer_path) == (exported.folder / ASSET).resolve()
    ids, mask = loaded.tokenizer([PROMPT, "pick up the cube"], 16)
    want_ids, want_mask = exported.model.tokenizer([PROMPT, "pick up the cube"], 16)
    assert ids.tolist() == want_ids.tolist() and mask.tolist() == want_mask.tolist()
    assert ids[1].tolist()[:6] == [1, 4, 5, 6, 11, 0]  # <bos> pick up the cube <pad>: the word-level vocabulary


def test_a_loaded_model_re_exports_self_contained(exported, tmp_path):
    loaded, _ = load_model_folder(exported.folder)
    again = export_model(loaded, tmp_path / "again")
    assert {p.name: p.read_bytes() for p in (again / ASSET).iterdir()} == exported.tok_files
    assert str(exported.folder) not in (again / "config.json").read_text()
    np.testing.assert_array_equal(chunk(Policy.from_pretrained(again), PROMPT), exported.expected[PROMPT])


@pytest.mark.parametrize("path", ["../../etc", "/etc", "assets/../..", "assets/tokenizer_path/../../../x"])
def test_asset_path_outside_the_folder_is_refused(folder_copy, path):
    edit_config(folder_copy, lambda c: c["assets"]["tokenizer_path"].__setitem__("path", path))
    msg = _error(folder_copy)
    assert str(folder_copy / "config.json") in msg
    assert f"assets.tokenizer_path.path={path!r} points outside the model folder" in msg


def test_asset_file_outside_its_folder_is_refused(folder_copy):
    edit_config(folder_copy, lambda c: c["assets"]["tokenizer_path"]["sha256"].__setitem__("../../config.json", "0"))
    assert "file '../../config.json' points outside" in _error(folder_copy)


@pytest.mark.parametrize("name", ["../x", "tokenizer path", ""])
def test_asset_key_that_is_not_a_hyperparameter_name_is_refused(folder_copy, name):
    edit_config(folder_copy, lambda c: c["assets"].__setitem__(name, c["assets"]["tokenizer_path"]))
    assert f"malformed assets entry {name!r}" in _error(folder_copy)


def test_missing_assets_folder_is_a_one_line_error_naming_it(folder_copy):
    shutil.rmtree(folder_copy / "assets")
    msg = _error(folder_copy)
    assert msg.startswith(f"{(folder_copy / ASSET).resolve()}: missing asset folder for algorithm.tokenizer_path")


def test_missing_corrupt_or_extra_asset_files_are_refused(folder_copy):
    embedded = folder_copy / ASSET
    target = embedded / "tokenizer.json"
    original = target.read_bytes()
    target.write_bytes(original.replace(b'"cube"', b'"cuba"'))
    assert _error(folder_copy).startswith(f"{target.resolve()}: sha256 does not match config.json")
    target.unlink()
    assert _error(folder_copy).startswith(f"{target.resolve()}: missing file of the asset folder")
    target.write_bytes(original)
    (embedded / "added_tokens.json").write_text('{"zone": 5}')
    assert "files not recorded in config.json: added_tokens.json" in _error(folder_copy)
    (embedded / "added_tokens.json").unlink()
    Policy.from_pretrained(folder_copy)  # restored: loads again


def test_push_and_pull_carry_the_tokenizer(exported, tmp_path, monkeypatch):
    from neuracore.ml.storage import push_model

    monkeypatch.setenv("NEURACORE_HOME", str(tmp_path / "home"))
    url = f"file://{tmp_path / 'storage'}"
    result = push_model(exported.folder, "acme/pi0", storage_url=url)
    assert result.files == 3 + len(exported.tok_files)
    policy = Policy.from_pretrained("acme/pi0", storage_url=url)
    np.testing.assert_array_equal(chunk(policy, PROMPT), exported.expected[PROMPT])
    pulled = next((tmp_path / "home" / "cache" / "hub" / "acme" / "pi0").iterdir())
    assert sorted(p.name for p in (pulled / ASSET).iterdir()) == sorted(exported.tok_files)


def test_hugging_face_cache_layout_is_copied_as_regular_files(demo_home, tmp_path):
    """A snapshot folder of symlinks into blobs/ (how the HF cache stores a download), plus hidden files."""
    blobs = make_tokenizer(tmp_path / "hub" / "blobs")
    snapshot = tmp_path / "hub" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for blob in blobs.iterdir():
        (snapshot / blob.name).symlink_to(os.path.relpath(blob, snapshot))
    (snapshot / ".gitattributes").write_text("*.json text\n")
    (snapshot / ".cache").mkdir()
    (snapshot / ".cache" / "lock").write_text("")
    model = tiny_pi0(demo_data(demo_home), tokenizer_path=str(snapshot)).eval()
    folder = export_model(model, tmp_path / "model")
    embedded = folder / ASSET
    assert sorted(p.name for p in embedded.iterdir()) == sorted(p.name for p in blobs.iterdir())
    assert all(p.is_file() and not p.is_symlink() for p in embedded.iterdir())
    shutil.rmtree(tmp_path / "hub")
    loaded, _ = load_model_folder(folder)
    assert loaded.tokenizer([PROMPT], 16)[0].tolist() == model.tokenizer([PROMPT], 16)[0].tolist()


def test_unembeddable_folder_fails_the_export_and_keeps_the_previous_one(demo_home, tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    model = tiny_pi0(demo_data(demo_home), tokenizer_path=str(tok)).eval()
    folder = export_model(model, tmp_path / "out" / "model")
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    (tmp_path / "elsewhere").mkdir()
    (tok / "extra").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match=r"extra: symlinked folder in algorithm.tokenizer_path"):
        export_model(model, folder)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]  # no temp folder left
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before

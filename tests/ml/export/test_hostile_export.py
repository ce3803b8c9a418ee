"""Exported models against hostile or unlucky input: every failure is one line, nothing is left behind,
nothing is read from outside the export, no secret is printed.

Library calls (`Policy.from_pretrained`, `export_model`) must raise a `NeuracoreError` whose message is
one line naming the file, key or value; the CLIs (`tools/hub.py`: exit 1, `tools/evaluate.py`: exit 2)
must print exactly one `<prog>: error: ...` line and no traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from neuracore.ml.algorithms.pi0 import Pi0
from neuracore.ml.core import build_model
from neuracore.ml.core.errors import CheckpointError, NeuracoreError
from neuracore.ml.export import Policy, export_model, model_folder
from tests.conftest import REPO, edit_config, run_cli
from tests.ml.algorithms.pi0_helpers import TINY, make_tokenizer
from tests.ml.storage.storage_helpers import export_tiny, make_mid

SECRET = "se/cret"
CREDENTIAL_URL = f"s3://KEY:{SECRET}@bucket/p"
ENV_SECRETS = {"AWS_ACCESS_KEY_ID": "AKIDNEVERPRINTED", "AWS_SECRET_ACCESS_KEY": "env-secret-never-printed",
               "AWS_SESSION_TOKEN": "session-token-never-printed"}

# --------------------------------------------------------------------------- what the code opens

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _OPENED is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # cheap when not recording; audit hooks cannot be removed


@contextlib.contextmanager
def recording_opens() -> Iterator[list[str]]:
    """Every path Python opens inside the block (builtins.open, io.open, os.open)."""
    global _OPENED
    _OPENED = []
    try:
        yield _OPENED
    finally:
        _OPENED = None


def opened_under(opened: list[str], folder: Path) -> list[str]:
    root = str(folder.resolve())
    return [p for p in opened if str(Path(p).resolve()).startswith(root)]


# --------------------------------------------------------------------------- helpers


def one_line_error(call: Callable[[], object], exc_type: type[BaseException] = CheckpointError) -> str:
    """The message of the `exc_type` that `call()` raises, asserted to be a single line."""
    with pytest.raises(exc_type) as info:
        call()
    msg = str(info.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def load_error(folder: Path) -> str:
    return one_line_error(lambda: Policy.from_pretrained(folder))


def listing(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` with its content (to show a failed call changed nothing)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temp or half-replaced folders a failed write could leave behind."""
    return sorted(p.name for p in folder.rglob(".*") if ".tmp-" in p.name or p.name.endswith((".replaced", ".old")))


def load_tool(name: str):
    """tools/<name>.py as a module, to call main(argv) in-process (the same code path after argv)."""
    spec = importlib.util.spec_from_file_location(f"{name}_tool_hostile_export", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli_error(capsys: pytest.CaptureFixture, tool: str, argv: list[str], code: int) -> str:
    """Run a CLI in-process; assert its exit code and exactly one `<tool>: error:` line on stderr."""
    capsys.readouterr()
    assert load_tool(tool).main(argv) == code
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith(f"{tool}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err + captured.out


def rewrite_header(weights: Path, edit: Callable[[dict], None]) -> None:
    """Edit the JSON header of a safetensors file in place (tensor data unchanged)."""
    data = weights.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    weights.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


def reseal(folder: Path) -> None:
    """Record the weights' current sha256 in config.json: a forged export that is self-consistent."""
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    edit_config(folder, lambda c: c.__setitem__("weights_sha256", sha))


@pytest.fixture()
def no_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the real model is built (the check must refuse before allocating)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built (allocated) before the bad input was refused")

    monkeypatch.setattr(model_folder, "build_model", refuse)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cnnmlp_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CNNMLP export (3 joints in and out, no camera)."""
    return export_tiny(tmp_path_factory.mktemp("hostile_cnnmlp") / "model")


@pytest.fixture()
def folder_copy(cnnmlp_export: Path, tmp_path: Path) -> Path:
    """A private copy of the CNNMLP export that a test may damage."""
    dst = tmp_path / "model"
    shutil.copytree(cnnmlp_export, dst)
    return dst


@pytest.fixture(scope="module")
def pi0_export(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A tiny pi0 whose tokenizer is embedded (assets/tokenizer_path), and that tokenizer's original folder."""
    base = tmp_path_factory.mktemp("hostile_pi0")
    tok = make_tokenizer(base / "training_machine" / "tokenizer")
    model = build_model(Pi0, make_mid(camera=True), {**TINY, "tokenizer_path": str(tok)})
    return SimpleNamespace(folder=export_model(model.eval(), base / "export" / "model"), tok=tok, model=model)


@pytest.fixture()
def pi0_copy(pi0_export: SimpleNamespace, tmp_path: Path) -> Path:
    dst = tmp_path / "pi0"
    shutil.copytree(pi0_export.folder, dst)
    return dst


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("NEURACORE_HOME", str(h))
    monkeypatch.delenv("NEURACORE_STORAGE_URL", raising=False)
    return h


# =========================================================================== item 8: self-contained exports


def _drop_embedded_tokenizer(folder: Path, value: str) -> None:
    """An export as made before assets were embedded: tokenizer_path names a folder of some machine."""
    shutil.rmtree(folder / "assets")

    def edit(c: dict) -> None:
        c.pop("assets")
        c["algorithm"]["hyperparameters"]["tokenizer_path"] = value

    edit_config(folder, edit)


def test_path_hyperparameter_to_a_training_machine_folder_is_refused_and_not_read(pi0_export, pi0_copy):
    tok = pi0_export.tok  # still present on "this" machine: it must not be read all the same
    _drop_embedded_tokenizer(pi0_copy, str(tok))
    with recording_opens() as opened:
        msg = load_error(pi0_copy)
    assert msg.startswith(f"{pi0_copy / 'config.json'}: algorithm.tokenizer_path={str(tok)!r} is a path outside")
    assert "re-export" in msg
    assert opened_under(opened, tok) == []


@pytest.mark.parametrize("value", ["/etc", "~/.ssh", "assets/tokenizer_path"])
def test_path_hyperparameter_without_an_assets_entry_is_refused(pi0_copy, value):
    _drop_embedded_tokenizer(pi0_copy, value)
    with recording_opens() as opened:
        msg = load_error(pi0_copy)
    assert f"algorithm.tokenizer_path={value!r}" in msg and "re-export" in msg
    assert [p for p in opened if p.startswith(("/etc/", str(Path.home() / ".ssh")))] == []


def test_symlink_out_of_the_asset_folder_fails_the_export_and_copies_nothing(tmp_path):
    secret = tmp_path / "private" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("PRIVATE KEY MATERIAL")
    tok = make_tokenizer(tmp_path / "tok")
    model = build_model(Pi0, make_mid(camera=True), {**TINY, "tokenizer_path": str(tok)}).eval()
    folder = export_model(model, tmp_path / "out" / "model")
    before = listing(folder)
    (tok / "tokenizer_config.json").unlink()
    (tok / "tokenizer_config.json").symlink_to(secret)
    msg = one_line_error(lambda: export_model(model, folder))
    assert msg.startswith(f"{tok / 'tokenizer_config.json'}: symlink to {secret}, outside the asset folder")
    assert "algorithm.tokenizer_path" in msg
    assert listing(folder) == before and leftovers(tmp_path / "out") == []
    assert not any(b"PRIVATE KEY" in data for data in listing(tmp_path / "out").values())


def test_symlink_to_etc_in_a_hugging_face_snapshot_is_refused(tmp_path):
    repo = tmp_path / "hub" / "models--google--paligemma"
    blobs = make_tokenizer(repo / "blobs")
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    for blob in blobs.iterdir():  # the HF cache layout: links into ../../blobs (allowed)
        (snapshot / blob.name).symlink_to(os.path.relpath(blob, snapshot))
    model = build_model(Pi0, make_mid(camera=True), {**TINY, "tokenizer_path": str(snapshot)}).eval()
    folder = export_model(model, tmp_path / "ok")
    assert all(p.is_file() and not p.is_symlink() for p in (folder / "assets" / "tokenizer_path").iterdir())
    (snapshot / "added_tokens.json").symlink_to("/etc/hostname")  # outside the repository's blobs/
    msg = one_line_error(lambda: export_model(model, tmp_path / "bad"))
    assert f"{snapshot / 'added_tokens.json'}: symlink to /etc/hostname, outside the asset folder" in msg
    assert not (tmp_path / "bad").exists() and leftovers(tmp_path) == []


def test_symlink_inside_the_asset_folder_is_copied_as_a_file(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    (tok / "alias.json").symlink_to("tokenizer.json")  # stays inside the folder: fine
    model = build_model(Pi0, make_mid(camera=True), {**TINY, "tokenizer_path": str(tok)}).eval()
    embedded = export_model(model, tmp_path / "model") / "assets" / "tokenizer_path"
    assert (embedded / "alias.json").read_bytes() == (tok / "tokenizer.json").read_bytes()
    assert not (embedded / "alias.json").is_symlink()


def test_symlink_planted_in_an_exported_asset_folder_is_not_followed(pi0_copy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = pi0_copy / "assets" / "tokenizer_path" / "tokenizer.json"
    shutil.move(target, outside / "tokenizer.json")  # same bytes, same sha256, but outside the export
    target.symlink_to(outside / "tokenizer.json")
    with recording_opens() as opened:
        msg = load_error(pi0_copy)
    assert msg.startswith(f"{(pi0_copy / 'assets' / 'tokenizer_path').resolve()}: symlink 'tokenizer.json' in the asset")
    assert opened_under(opened, outside) == []


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_top_level_file_linked_outside_the_export_is_not_read(folder_copy, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(folder_copy / name, outside / name)  # an identical file, so only the link is wrong
    (folder_copy / name).symlink_to(outside / name)
    with recording_opens() as opened:
        msg = load_error(folder_copy)
    assert msg.startswith(f"{folder_copy / name}: symlink to {outside / name}, outside the model folder")
    assert opened_under(opened, outside) == []


# --------------------------------------------------------------------------- item 8: sizes checked before allocating


def test_weights_header_declaring_a_tensor_far_larger_than_the_file(folder_copy, no_allocation):
    weights = folder_copy / "model.safetensors"
    rewrite_header(weights, lambda h: h["mlp.0.weight"].__setitem__("shape", [1_000_000, 1_000_000]))
    reseal(folder_copy)
    msg = load_error(folder_copy)
    assert msg.startswith(f"{weights}: cannot load weights: tensor 'mlp.0.weight' declares shape [1000000, 1000000]")
    assert "forged or truncated header" in msg


def test_weights_header_with_offsets_past_the_end_of_the_file(folder_copy, no_allocation):
    weights = folder_copy / "model.safetensors"
    rewrite_header(weights, lambda h: h["mlp.0.weight"].__setitem__("data_offsets", [0, 10**12]))
    reseal(folder_copy)
    msg = load_error(folder_copy)
    assert f"{weights}: cannot load weights: tensor 'mlp.0.weight'" in msg


def test_weights_larger_than_the_memory_available(folder_copy, monkeypatch, no_allocation):
    monkeypatch.setattr(model_folder, "available_memory", lambda: 100)
    msg = load_error(folder_copy)
    assert msg.startswith(f"{folder_copy / 'model.safetensors'}: cannot load weights: its tensors need")
    assert "more than the 100 bytes available" in msg


def test_hyperparameter_out_of_range_is_refused_before_building(folder_copy, no_allocation):
    edit_config(folder_copy, lambda c: c["algorithm"]["hyperparameters"].__setitem__("hidden_dim", 10**9))
    msg = load_error(folder_copy)
    assert msg.startswith(f"{folder_copy / 'config.json'}: cannot rebuild cnnmlp")
    assert "algorithm.hidden_dim=1000000000" in msg


def test_hyperparameters_needing_more_memory_than_exists(folder_copy, no_allocation):
    edit_config(folder_copy, lambda c: c["algorithm"]["hyperparameters"].update(hidden_dim=65536, num_layers=1024))
    msg = load_error(folder_copy)
    assert msg.startswith(f"{folder_copy / 'config.json'}: cnnmlp with these hyper-parameters")
    assert "algorithm.hidden_dim=65536" in msg and "of host memory available" in msg


def test_hyperparameters_that_do_not_match_the_weights_file(folder_copy, no_allocation):
    edit_config(folder_copy, lambda c: c["algorithm"]["hyperparameters"].update(hidden_dim=4096, num_layers=8))
    msg = load_error(folder_copy)
    assert "algorithm.hidden_dim=4096" in msg and "config.json does not belong to these weights" in msg


@pytest.mark.parametrize("horizon", [10**9, -3, 0, "4"])
def test_absurd_prediction_horizon_is_refused_before_building(folder_copy, no_allocation, horizon):
    edit_config(folder_copy, lambda c: c["model_init_description"].__setitem__("output_prediction_horizon", horizon))
    msg = load_error(folder_copy)
    assert f"model_init_description.output_prediction_horizon={json.dumps(horizon)}" in msg


# =========================================================================== item 9: malformed exports, one line


def _set(path: str, value):
    """An edit setting config[...path...] = value (path dotted; list indices not needed here)."""

    def edit(c: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            c = c[key]
        c[last] = value

    return edit


MALFORMED: dict[str, tuple[Callable[[Path], None], str]] = {
    "not_json": (lambda f: (f / "config.json").write_text("{oops"), "not a neuracore model config (JSONDecodeError"),
    "binary": (lambda f: (f / "config.json").write_bytes(b"\xff\xfe\x00"), "(UnicodeDecodeError"),
    "top_level_list": (lambda f: (f / "config.json").write_text("[1, 2]"), "the top level is a JSON list"),
    "deeply_nested": (lambda f: (f / "config.json").write_text("[" * 100_000 + "]" * 100_000), "(RecursionError"),
    "missing_algorithm": (lambda f: edit_config(f, lambda c: c.pop("algorithm")), "'algorithm' is null"),
    "algorithm_name_number": (lambda f: edit_config(f, _set("algorithm.name", 5)), "algorithm.name is 5"),
    "hyperparameters_list": (lambda f: edit_config(f, _set("algorithm.hyperparameters", [1])),
                             "algorithm.hyperparameters is [1]"),
    "format_version_string": (lambda f: edit_config(f, _set("format_version", "2")), 'format_version is "2"'),
    "weights_sha256_number": (lambda f: edit_config(f, _set("weights_sha256", 5)), "weights_sha256 is 5"),
    "inputs_not_mapping": (lambda f: edit_config(f, _set("model_init_description.inputs", "x")),
                           'model_init_description.inputs="x"'),
    "items_a_string": (lambda f: edit_config(f, _set("model_init_description.inputs.JOINT_POSITIONS.items", "abc")),
                       'model_init_description.inputs.JOINT_POSITIONS.items="abc"'),
    "shape_of_strings": (lambda f: edit_config(f, _set("model_init_description.inputs.JOINT_POSITIONS.shape", ["x"])),
                         'model_init_description.inputs.JOINT_POSITIONS.shape=["x"]'),
    "stats_nan": (lambda f: edit_config(f, _set("model_init_description.inputs.JOINT_POSITIONS.stats.mean",
                                                [float("nan")] * 3)),
                  "model_init_description.inputs.JOINT_POSITIONS.stats.mean=[NaN, NaN, NaN]: expected a list of finite"),
    "stats_wrong_length": (lambda f: edit_config(f, _set("model_init_description.outputs.JOINT_TARGET_POSITIONS.stats.std",
                                                         [1.0, 2.0])),
                           "stats.std=[1.0, 2.0]: expected 3 values"),
    "frequency_infinite": (lambda f: edit_config(f, _set("model_init_description.frequency", float("inf"))),
                           "model_init_description.frequency=Infinity"),
    "unknown_data_type": (lambda f: edit_config(f, lambda c: c["model_init_description"]["inputs"].__setitem__(
        "BOGUS", c["model_init_description"]["inputs"]["JOINT_POSITIONS"])), "unknown data type 'BOGUS'"),
    "unregistered_algorithm": (lambda f: edit_config(f, _set("algorithm.name", "evil_algo")),
                               "algorithm 'evil_algo' is not registered"),
    "unknown_hyperparameter": (lambda f: edit_config(f, _set("algorithm.hyperparameters.bogus", 1)),
                               "algorithm.bogus: unknown hyper-parameter"),
    "missing_weights": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors: missing weights file"),
    "weights_a_folder": (lambda f: ((f / "model.safetensors").unlink(), (f / "model.safetensors").mkdir()),
                         "model.safetensors: a folder, not a weights file"),
    "truncated_weights": (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:100]),
                          "model.safetensors: sha256 does not match config.json"),
    "lora_not_mapping": (lambda f: edit_config(f, _set("lora", [1])), "'lora' is [1]"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_export_is_one_line_naming_file_and_key(folder_copy, case):
    damage, expected = MALFORMED[case]
    damage(folder_copy)
    before = listing(folder_copy)
    msg = load_error(folder_copy)
    assert msg.startswith(str(folder_copy)) and expected in msg, msg
    assert listing(folder_copy) == before and leftovers(folder_copy.parent) == []  # a load writes nothing


def test_weights_of_a_truncated_file_without_checksum_name_the_file(folder_copy, no_allocation):
    weights = folder_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    edit_config(folder_copy, lambda c: c.pop("weights_sha256"))
    assert load_error(folder_copy).startswith(f"{weights}: cannot load weights:")


@pytest.mark.parametrize("make", ["missing", "file"])
def test_from_pretrained_of_a_missing_folder_or_a_file(tmp_path, make):
    path = tmp_path / ("nothing" if make == "missing" else "config.json")
    if make == "file":
        path.write_text("{}")
    msg = load_error(path)
    assert msg.startswith(f"{path}: {'no such folder' if make == 'missing' else 'not a folder'}")


def test_load_finishes_an_export_replace_killed_between_its_renames(cnnmlp_export, tmp_path):
    shutil.copytree(cnnmlp_export, tmp_path / ".model.replaced")  # old set aside, new never renamed in
    policy = Policy.from_pretrained(tmp_path / "model")
    assert policy.config["algorithm"]["name"] == "cnnmlp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# =========================================================================== tools/evaluate.py (exit 2)


def test_evaluate_cli_on_bad_targets(folder_copy, tmp_path, capsys, home):
    (folder_copy / "config.json").write_text("[1]")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "nope"): f"{tmp_path / 'nope'}: no such folder",
        str(tmp_path / "afile"): f"{tmp_path / 'afile'}: not a folder",
        str(tmp_path / "empty"): f"{tmp_path / 'empty'}: not an exported model folder (no config.json)",
        str(folder_copy): f"{folder_copy / 'config.json'}: not a neuracore model config",
    }
    for target, expected in cases.items():
        assert expected in cli_error(capsys, "evaluate", [target, "--episodes", "1"], 2)


@pytest.mark.parametrize("argv, expected", [
    (["--device", "warp9"], "device='warp9': not a torch device"),
    (["--device", "cuda:7"], "device='cuda:7': no such CUDA device"),
    (["--episodes", "0"], "--episodes 0: must be at least 1"),
    (["--temporal-ensemble", "nan"], "temporal_ensemble_coeff=nan: must be a finite number >= 0"),
])
def test_evaluate_cli_bad_options(cnnmlp_export, capsys, home, argv, expected):
    assert expected in cli_error(capsys, "evaluate", [str(cnnmlp_export), *argv], 2)


def test_evaluate_script_as_a_user_runs_it(tmp_path):
    """The real script in a subprocess: one line, exit 2, no traceback."""
    p = run_cli(["tools/evaluate.py", str(tmp_path / "missing_model"), "--episodes", "1"], tmp_path / "home",
                timeout=120, module="")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"evaluate: error: {tmp_path / 'missing_model'}: no such folder")


# =========================================================================== tools/hub.py (exit 1)


@pytest.fixture()
def pushed(cnnmlp_export: Path, home: Path, capsys: pytest.CaptureFixture) -> str:
    """acme/arm pushed to the default local storage; returns its storage URL."""
    url = f"file://{home / 'storage'}"
    assert load_tool("hub").main(["push", str(cnnmlp_export), "--repo", "acme/arm", "--storage", url]) == 0
    capsys.readouterr()
    return url


def test_hub_pull_to_an_existing_file(pushed, tmp_path, capsys):
    target = tmp_path / "policy.bin"
    target.write_text("keep me")
    err = cli_error(capsys, "hub", ["pull", "acme/arm", "--to", str(target), "--storage", pushed], 1)
    assert f"--to {target}: exists and is not a folder" in err
    assert target.read_text() == "keep me" and leftovers(tmp_path) == []


@pytest.mark.parametrize("pre_existing", [False, True])
def test_hub_pull_into_a_read_only_parent(pushed, tmp_path, capsys, monkeypatch, pre_existing):
    from neuracore.ml.storage import backend

    parent = tmp_path / "readonly"
    parent.mkdir()
    if pre_existing:
        (parent / "policy").mkdir()  # an empty target folder is fine, and is still there afterwards

    def denied(*args, **kwargs):  # what a read-only parent does (tests may run as root, which chmod cannot stop)
        raise PermissionError(13, "Permission denied", str(parent))

    monkeypatch.setattr(backend.tempfile, "mkdtemp", denied)
    err = cli_error(capsys, "hub", ["pull", "acme/arm", "--to", str(parent / "policy"), "--storage", pushed], 1)
    assert str(parent) in err and "ermission denied" in err
    assert sorted(p.name for p in parent.iterdir()) == (["policy"] if pre_existing else [])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_hub_pull_into_a_really_read_only_parent(pushed, tmp_path, capsys):
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        err = cli_error(capsys, "hub", ["pull", "acme/arm", "--to", str(parent / "policy"), "--storage", pushed], 1)
        assert str(parent) in err and list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_hub_push_of_a_folder_that_is_not_an_export(tmp_path, home, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("train a policy")
    err = cli_error(capsys, "hub", ["push", str(folder), "--repo", "acme/arm"], 1)
    assert f"{folder}: neither an exported model folder" in err
    assert not (home / "storage" / "repos").exists()


@pytest.mark.parametrize("damage, expected", [
    (lambda f: (f / "config.json").write_text("[1]"), "config.json: not a neuracore model config"),
    (lambda f: edit_config(f, _set("training", ["steps"])), "'training' is a list, expected a mapping"),
    (lambda f: edit_config(f, _set("weights_sha256", 7)), "weights_sha256 is a int"),
])
def test_hub_push_of_a_malformed_export_publishes_nothing(folder_copy, home, capsys, damage, expected):
    damage(folder_copy)
    err = cli_error(capsys, "hub", ["push", str(folder_copy), "--repo", "acme/arm"], 1)
    assert str(folder_copy / "config.json") in err and expected in err
    assert not (home / "storage" / "repos" / "acme" / "arm" / "refs").exists()


@pytest.mark.parametrize("argv", [["list"], ["log", "acme/arm"], ["pull", "acme/arm"], ["push", "MODEL", "--repo", "a/b"]])
def test_hub_storage_url_with_credentials_is_refused_without_printing_them(cnnmlp_export, home, capsys, argv):
    argv = [str(cnnmlp_export) if a == "MODEL" else a for a in argv]
    out = cli_error(capsys, "hub", [*argv, "--storage", CREDENTIAL_URL], 1)
    assert "storage s3://***@bucket/p: credentials in the URL are not accepted" in out
    for part in (SECRET, "cret", "KEY:"):
        assert part not in out


def test_storage_url_with_credentials_from_the_environment_or_the_api(cnnmlp_export, home, capsys, monkeypatch):
    monkeypatch.setenv("NEURACORE_STORAGE_URL", CREDENTIAL_URL)
    out = cli_error(capsys, "hub", ["list"], 1)
    assert SECRET not in out and "s3://***@bucket/p" in out
    monkeypatch.delenv("NEURACORE_STORAGE_URL")
    msg = one_line_error(lambda: Policy.from_pretrained("acme/arm", storage_url=CREDENTIAL_URL), NeuracoreError)
    assert SECRET not in msg and "credentials in the URL" in msg


def test_hub_never_echoes_credential_environment_variables(tmp_path, home, capsys, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: every S3 call fails
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pytest.importorskip("s3fs")
    for k, v in {**ENV_SECRETS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}.items():
        monkeypatch.setenv(k, v)
    out = cli_error(capsys, "hub", ["list", "--storage", "s3://bucket/p"], 1)
    assert "storage s3://bucket/p: listing failed" in out
    for value in ENV_SECRETS.values():
        assert value not in out

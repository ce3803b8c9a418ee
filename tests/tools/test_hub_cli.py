"""`python tools/hub.py push|pull|list|log` end to end, on file:// and on a loopback S3 server."""

from __future__ import annotations

import filecmp
import importlib.util
import re
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.ml.storage.storage_helpers import BUCKET, S3_ENV, export_tiny, start_moto


def hub_cli(args: list[str], home: Path, env: dict[str, str] | None = None):
    """Run the real script in a subprocess."""
    return run_cli(["tools/hub.py", *args], home, timeout=180, env=env, module="")


def load_tool():
    """tools/hub.py as a module, to call main(argv) in-process (fast; same code path after argv)."""
    spec = importlib.util.spec_from_file_location("hub_tool", REPO / "tools" / "hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_push_list_log_pull(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("NEURACORE_HOME", str(home))
    tool = load_tool()
    run = tmp_path / "run"
    export_tiny(run / "model", seed=1)
    export_tiny(run / "best_model", seed=2)
    other = export_tiny(tmp_path / "other", seed=3)

    p = hub_cli(["push", str(run / "model"), "--repo", "acme/arm", "--revision", "v1", "--message", "first"], home)
    assert p.returncode == 0, p.stderr
    assert re.search(r"pushed model -> acme/arm@[0-9a-f]{12} \(branch main, tag v1\): 3 files, .* MB/s", p.stdout)
    p = hub_cli(["push", str(run), "--repo", "acme/arm"], home)  # a run folder: model -> main, best_model -> best
    assert p.returncode == 0, p.stderr
    assert "pushed model -> acme/arm@" in p.stdout and "(branch best)" in p.stdout
    assert tool.main(["push", str(other), "--repo", "beta/x"]) == 0
    assert (home / "storage" / "repos" / "acme" / "arm").is_dir()

    p = hub_cli(["list"], home)
    assert p.returncode == 0 and [line.split()[0] for line in p.stdout.splitlines()] == ["acme/arm", "beta/x"]
    capsys.readouterr()
    assert tool.main(["list", "beta"]) == 0 and capsys.readouterr().out.split()[0] == "beta/x"
    p = hub_cli(["log", "acme/arm"], home)
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and "run: model" in lines[0] and lines[1].endswith("first  [v1]")
    assert tool.main(["log", "acme/arm", "--branch", "best"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1

    p = hub_cli(["pull", "acme/arm@v1", "--to", str(tmp_path / "out")], home)
    assert p.returncode == 0 and "sha256 verified" in p.stdout, p.stderr
    assert filecmp.cmp(tmp_path / "out" / "model.safetensors", run / "model" / "model.safetensors", shallow=False)
    assert tool.main(["pull", "acme/arm@best"]) == 0
    cached = Path(capsys.readouterr().out.split(" -> ")[1].split(":")[0])
    assert cached.parent == home / "cache" / "hub" / "acme" / "arm"
    assert filecmp.cmp(cached / "config.json", run / "best_model" / "config.json", shallow=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["pull", "../x", "--to", "o"], "repo='../x': org='..': invalid name"),
        (["pull", "acme/nothing"], "repository acme/nothing not found"),
        (["push", "/nonexistent", "--repo", "acme/a"], "neither an exported model folder"),
        (["log", "a/../../b"], "expected exactly 'org/name'"),
        (["list", "--storage", "ftp://host/x"], "protocol 'ftp' is not supported"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURACORE_HOME", str(tmp_path / "home"))
    assert load_tool().main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("hub: error: ")


def test_pull_refuses_non_empty_target(tmp_path: Path, capsys: pytest.CaptureFixture,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEURACORE_HOME", str(tmp_path / "home"))
    tool = load_tool()
    assert tool.main(["push", str(export_tiny(tmp_path / "m")), "--repo", "acme/arm"]) == 0
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert tool.main(["pull", "acme/arm", "--to", str(tmp_path / "out")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert [f.name for f in (tmp_path / "out").iterdir()] == ["keep.txt"]


def test_s3_push_pull_without_printing_credentials(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    server, endpoint = start_moto()
    try:
        env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint, "NEURACORE_STORAGE_URL": f"s3://{BUCKET}/cli"}
        home = tmp_path / "home"
        model = export_tiny(tmp_path / "m")
        outputs = [hub_cli(["push", str(model), "--repo", "acme/arm", "--revision", "v1"], home, env)]
        outputs.append(hub_cli(["pull", "acme/arm@v1", "--to", str(tmp_path / "out")], home, env))
        outputs.append(hub_cli(["log", "acme/arm"], home, env))
        assert [p.returncode for p in outputs] == [0, 0, 0], [p.stderr for p in outputs]
        assert filecmp.cmp(tmp_path / "out" / "model.safetensors", model / "model.safetensors", shallow=False)
        assert "[v1]" in outputs[2].stdout
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        tool = load_tool()
        assert tool.main(["list", "--storage", f"s3://{BUCKET}/missing-prefix"]) == 0
        assert tool.main(["list", "--storage", "s3://no-such-bucket-xyz/p"]) == 1
        captured = capsys.readouterr()
        assert "no repositories" in captured.out
        assert captured.err.startswith("hub: error: storage s3://no-such-bucket-xyz/p: listing failed")
        for text in [p.stdout + p.stderr for p in outputs] + [captured.out + captured.err]:
            assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in text and S3_ENV["AWS_ACCESS_KEY_ID"] not in text
    finally:
        server.stop()

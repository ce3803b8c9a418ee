"""argparse usage errors of every tool never echo credentials of a URL the user mistyped into a position."""

from __future__ import annotations

import importlib

import pytest

SECRET = "s3://AKIAKEY:se/cret@bucket/p"


@pytest.mark.parametrize(("tool", "argv"), [
    ("hub", [SECRET, "list"]),                    # --storage's value where the command belongs
    ("dataset", [SECRET]),
    ("evaluate", ["--episodes", SECRET]),          # a type error quotes the value too
    ("benchmark", [SECRET]),
])
def test_usage_errors_redact_url_userinfo(tool: str, argv: list[str], capsys: pytest.CaptureFixture) -> None:
    main = importlib.import_module(f"tools.{tool}").main
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "s3://***@bucket/p" in err
    assert "AKIAKEY" not in err and "se/cret" not in err and "cret@" not in err

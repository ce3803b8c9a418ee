"""Storage fixtures: a loopback S3 server (moto), storage URLs for file:// and s3://, tiny exports."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_helpers import BUCKET, S3_ENV, export_tiny, start_moto


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (started here, stopped at the end) with one bucket."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    server, endpoint = start_moto()
    yield endpoint
    server.stop()


@pytest.fixture()
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment pointing s3fs at the loopback server (what subprocesses need too)."""
    env = {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture(params=["file", "s3"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty storage root: a local folder or a unique prefix in the loopback S3 bucket."""
    monkeypatch.setenv("NEURACORE_HOME", str(tmp_path / "home"))
    if request.param == "file":
        return f"file://{tmp_path / 'storage'}"
    request.getfixturevalue("s3_env")
    return f"s3://{BUCKET}/{uuid.uuid4().hex}"


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A freshly exported tiny model folder."""
    return export_tiny(tmp_path / "run" / "model")

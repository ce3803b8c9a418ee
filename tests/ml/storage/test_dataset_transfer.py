"""Datasets travel through storage: push a materialised dataset, pull it elsewhere, open it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from neuracore.ml.core.errors import DatasetError, NeuracoreError
from neuracore.ml.datasets.format import open_dataset, read_spec
from neuracore.ml.storage import Hub, pull_dataset, push_dataset, push_model


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_push_pull_dataset(home: Path, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "s3":
        request.getfixturevalue("s3_env")
        url = f"s3://neuracore-test/{tmp_path.name}"
    else:
        url = f"file://{tmp_path / 'storage'}"
    result = push_dataset("demo", "acme/demo-data", tag="v1", storage_url=url)
    original = open_dataset("demo")
    meta = Hub(url).revision("acme/demo-data@v1").manifest["metadata"]
    assert meta["fingerprint"] == original.spec.fingerprint and meta["episodes"] == 12
    assert meta["frames"] == original.spec.num_frames and result.files >= 3

    path = pull_dataset("acme/demo-data@v1", local_name="team_demo", storage_url=url)
    assert path == home / "datasets" / "team_demo"
    pulled = open_dataset("team_demo")
    assert pulled.spec.fingerprint == original.spec.fingerprint
    assert pulled.table.equals(original.table)
    assert pull_dataset("acme/demo-data", local_name="team_demo", storage_url=url) == path  # reused

    shutil.rmtree(path)
    (path / "data").mkdir(parents=True)
    (path / "spec.json").write_text((original.path / "spec.json").read_text().replace(
        original.spec.fingerprint, "0" * 64))
    with pytest.raises(DatasetError, match="already exists with other contents"):
        pull_dataset("acme/demo-data", local_name="team_demo", storage_url=url)
    assert read_spec(path).fingerprint == "0" * 64  # never replaced


def test_dataset_errors(home: Path, tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'storage'}"
    with pytest.raises(DatasetError, match="dataset 'missing'"):
        push_dataset("missing", "acme/x", storage_url=url)
    from storage_helpers import export_tiny

    push_model(export_tiny(tmp_path / "m"), "acme/model", storage_url=url)
    with pytest.raises(DatasetError, match="is a 'model', not a dataset"):
        pull_dataset("acme/model", storage_url=url)
    assert not (home / "datasets" / "model").exists()


def test_bad_local_name_fails_before_storage_is_contacted(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    contacted = []
    monkeypatch.setattr(Hub, "revision", lambda self, ref: contacted.append(ref))
    with pytest.raises(NeuracoreError, match="dataset_name") as err:
        pull_dataset("acme/demo-data", local_name="../escape", storage_url="file:///nonexistent/storage")
    assert contacted == [] and "\n" not in str(err.value)
    assert not (home / "escape").exists()

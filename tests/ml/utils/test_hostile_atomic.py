"""Faults during replaces, rotations and file writes, and how every entry point reports a failure.

A kill can land between any two system calls; these tests stop the mechanism at each of them and
check that the name always holds the old or the new version (never nothing, never half), that the
next reader finishes or undoes the interrupted step, and that entry points report expected
failures as one line while a genuine bug keeps its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from neuracore.ml.core.errors import INTERNAL_ERROR_EXIT_CODE, DatasetError, run_cli
from neuracore.ml.utils import atomic
from tests.conftest import REPO


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "marker.txt").write_text(text)
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_replace_dir_swaps_in_one_step(tmp_path: Path) -> None:
    old, new = _folder(tmp_path / "model", "old"), _folder(tmp_path / "new", "new")
    atomic.replace_dir(new, old)
    assert (old / "marker.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_replace_killed_between_the_two_renames_is_undone_by_the_next_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final, new = _folder(tmp_path / "model", "old"), _folder(tmp_path / "new", "new")
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)  # a filesystem without RENAME_EXCHANGE
    calls = []
    real_replace = os.replace

    def killed_on_second(src, dst):  # the process "dies" right after setting the old folder aside
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        atomic.replace_dir(new, final)
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    # The in-process handler put the old one back; a real kill leaves it aside, which readers undo:
    assert (final / "marker.txt").read_text() == "old"
    real_replace(final, atomic.aside_path(final))  # the state a SIGKILL at that instant leaves
    assert not final.exists()
    atomic.recover_replace(final, "marker.txt")
    assert (final / "marker.txt").read_text() == "old" and _leftovers(tmp_path) == []


def test_recover_replace_removes_the_old_copy_when_the_new_one_is_in(tmp_path: Path) -> None:
    final = _folder(tmp_path / "model", "new")
    _folder(atomic.aside_path(final), "old")
    atomic.recover_replace(final, "marker.txt")
    assert (final / "marker.txt").read_text() == "new" and _leftovers(tmp_path) == []


def test_remove_dir_killed_midway_leaves_no_half_folder_under_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doomed = _folder(tmp_path / "checkpoint_2", "x")
    monkeypatch.setattr(atomic, "_rmtree", lambda p: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        atomic.remove_dir(doomed)
    assert not doomed.exists() and _leftovers(tmp_path) == [".checkpoint_2.deleting"]
    monkeypatch.undo()
    atomic.sweep_deleted(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_listing_finishes_interrupted_rotations_and_resaves(tmp_path: Path) -> None:
    from neuracore.ml.trainers.checkpoint import STATE_FILE, checkpoints_dir, list_checkpoints

    root = checkpoints_dir(tmp_path)
    for step in (2, 4):
        _folder(root / f"checkpoint_{step}", "x")
        (root / f"checkpoint_{step}" / STATE_FILE).write_text("{}")
    _folder(root / ".checkpoint_1.deleting", "half-deleted")  # a rotation killed during its delete
    aside = _folder(root / ".checkpoint_6.replaced", "old copy")  # a re-save killed between its renames
    (aside / STATE_FILE).write_text("{}")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 4, 6]
    assert _leftovers(root) == []


def test_write_text_atomic_failure_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "resolved_config.yaml"
    target.write_text("old: 1\n")
    monkeypatch.setattr(atomic.os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        atomic.write_text_atomic(target, "new: 2\n")
    assert target.read_text() == "old: 1\n" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    monkeypatch.undo()
    atomic.write_text_atomic(target, "new: 2\n")
    assert target.read_text() == "new: 2\n"


@pytest.mark.parametrize("exc,expected,code", [
    pytest.param(DatasetError("dataset_name='x': not found"), "tool: error: dataset_name='x': not found", 2, id="own"),
    pytest.param(IsADirectoryError(21, "Is a directory", "/data/x"), "tool: error: /data/x: Is a directory", 2,
                 id="oserror_names_the_file"),
    pytest.param(OSError(28, "No space left on device", "/a", None, "/b"), "tool: error: /a -> /b: No space left on "
                 "device", 2, id="oserror_two_paths"),
    pytest.param(PermissionError(13, "Permission denied"), "tool: error: Permission denied", 2, id="oserror_no_path"),
    pytest.param(MemoryError(), "tool: error: out of host memory (MemoryError)", 2, id="memory"),
])
def test_entry_points_report_expected_failures_as_one_line(
    exc: BaseException, expected: str, code: int, capsys: pytest.CaptureFixture
) -> None:
    def fail() -> None:
        raise exc

    assert run_cli("tool", fail) == code
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(expected) and "Traceback" not in err


def test_an_internal_bug_keeps_its_traceback_and_says_so(capsys: pytest.CaptureFixture) -> None:
    assert run_cli("tool", lambda: {}["missing"]) == INTERNAL_ERROR_EXIT_CODE
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'missing'" in err
    assert err.rstrip().splitlines()[-1].startswith("tool: internal error (a bug in neuracore")


def test_production_code_reads_no_fault_injection_switch() -> None:
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "neuracore").rglob("*.py")
                 if any(s in p.read_text() for s in ("NEURACORE_DEBUG_", "NEURACORE_TEST_"))]
    assert offenders == []

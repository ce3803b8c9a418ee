"""The real CLI (`python -m neuracore.ml.train`) turns every bad input into one line and exit code 2."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FAST, run_cli

ERROR_PREFIX = "neuracore: error: "
NO_ALGORITHM = [a for a in FAST if not a.startswith("algorithm")]


def _runs(home: Path) -> list[str]:
    runs = home / "training" / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


def error_line(proc, *, only_line: bool = True) -> str:
    """The single `neuracore: error:` line of a failed run (checked: exit 2, no traceback)."""
    assert proc.returncode == 2, f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, f"expected one error line, stderr:\n{proc.stderr}"
    if only_line:
        assert lines == errors, f"stderr has more than the error line:\n{proc.stderr}"
    assert "\n" not in errors[0].strip()
    return errors[0][len(ERROR_PREFIX):]


# (id, extra args, substrings the message must contain, regexes it must match)
PRE_START_CASES = [
    ("misspelt_top_level_key", FAST + ["epoch=5"], ["did you mean epochs?"], [r"^epoch\b", r"valid keys: .*\bepochs\b"]),
    ("misspelt_algorithm_key", FAST + ["algorithm.lrr=1"], ["lrr"],
     [r"did you mean (algorithm\.)?lr\?", r"valid algorithm keys: .*\blr\b"]),
    ("algorithm_value_of_wrong_type", FAST + ["algorithm.hidden_dim=abc"], ["algorithm.hidden_dim", "'abc'", "integer"], []),
    ("misspelt_training_key", FAST + ["training.log_imagez=true"], ["training.log_imagez", "did you mean training.log_images?"], []),
    ("epochs_not_a_number", FAST + ["epochs=abc"], ["epochs", "abc", "expected an integer"], []),
    ("epochs_negative", FAST + ["epochs=-1"], ["epochs=-1", "must be >= 1"], []),
    ("batch_size_not_a_number", FAST + ["batch_size=abc"], ["batch_size", "abc", "positive integer or auto"], []),
    ("validation_split_out_of_range", FAST + ["validation_split=1.5"], ["validation_split=1.5", "[0, 1)"], []),
    ("mixed_precision_unknown", FAST + ["mixed_precision=fp8"], ["mixed_precision", "fp8"],
     [r"valid: .*\bno\b.*\bfp16\b.*\bbf16\b"]),
    ("unknown_algorithm", FAST + ["algorithm=nope"], ["algorithm=nope", "unknown algorithm"], [r"valid: .*\bcnnmlp\b"]),
    ("missing_algorithm", NO_ALGORITHM, ["algorithm", "required", "algorithm=<name>"], [r"\bcnnmlp\b"]),
    ("unknown_dataset", FAST + ["dataset_name=nope"], ["dataset_name='nope'"], [r"available: .*\bdemo\b"]),
    ("dataset_name_escapes", FAST + ["dataset_name=../x"], ["dataset_name='../x'", "invalid name", "letters, digits"], []),
    ("training_name_escapes", FAST + ["training_name=../x"], ["training_name='../x'", "invalid name"], []),
    ("absent_joint", FAST + ["input_robot_data_spec={planar_arm: {JOINT_POSITIONS: [nope]}}"],
     ["'nope'", "available: shoulder, elbow, gripper"], [r"^input_robot_data_spec\.planar_arm\.JOINT_POSITIONS\b"]),
    ("absent_robot", FAST + ["input_robot_data_spec={nobot: {JOINT_POSITIONS: [elbow]}}"],
     ["'nobot'", "robots: planar_arm"], [r"^input_robot_data_spec\b"]),
    ("unrecorded_data_type", FAST + ["input_robot_data_spec={planar_arm: {JOINT_VELOCITIES: [elbow]}}"],
     ["JOINT_VELOCITIES", "planar_arm"], [r"^input_robot_data_spec\b", r"available: .*JOINT_POSITIONS"]),
    ("unknown_data_type", FAST + ["input_data_types=[FOO]"], ["input_data_types", "'FOO'"], [r"valid: .*JOINT_POSITIONS"]),
    ("unsupported_output_type", FAST + ["output_data_types=[RGB_IMAGES]"],
     ["output_data_types", "cnnmlp does not support RGB_IMAGES"], [r"it supports .*JOINT_TARGET_POSITIONS"]),
    ("unquoted_spec", FAST + ["input_robot_data_spec={planar_arm: {JOINT_POSITIONS: [elbow"],
     ["cannot parse overrides", "quote the whole override"], []),
    ("sweep_without_multirun", FAST + ["algorithm.lr=1e-4,1e-3"], ["--multirun"], []),
    ("resume_from_missing_folder", FAST + ["resume_checkpoint_path=/does/not/exist"],
     ["resume_checkpoint_path='/does/not/exist'", "not a checkpoint folder"], [r"checkpoint_<step>|auto"]),
    ("lora_adapter_export_pushed", FAST + ["lora.rank=4", "lora.export=adapter", "push_to_storage=org/policy"],
     ["push_to_storage", "lora.export=adapter", "lora.export=merged"], []),
    ("augmentation_bad_range", FAST + ["training.augmentation.brightness=[1.5,0.5]"],
     ["training.augmentation.brightness=[1.5, 0.5]", "need 0 <= low <= high <= 10"], []),
    ("key_under_an_empty_mapping", FAST + ["training.augmentation.cameras.top=false"],
     ["training.augmentation.cameras.top: training.augmentation.cameras is empty",
      "'training.augmentation.cameras={top: false}'"], []),
    ("key_under_the_data_spec", FAST + ["input_robot_data_spec.planar_arm.JOINT_POSITIONS=[wrist]"],
     ["input_robot_data_spec is empty", "'input_robot_data_spec={planar_arm: {JOINT_POSITIONS: [wrist]}}'"], []),
    ("resume_auto_without_run", FAST + ["resume_checkpoint_path=auto"],
     ["resume_checkpoint_path=auto", "training_name"], []),
]


def in_process_error(args: list[str], capsys: pytest.CaptureFixture) -> str:
    """The CLI's `main` run in this process (refusals before Hydra starts): exit 2, one line; its message."""
    from neuracore.ml.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    proc = subprocess.CompletedProcess(args, exit_info.value.code, captured.out, captured.err)
    return error_line(proc)


@pytest.mark.parametrize("args,contains,patterns", [pytest.param(*c[1:], id=c[0]) for c in PRE_START_CASES])
def test_bad_input_is_one_line_and_exit_2(home: Path, args, contains, patterns, capsys):
    msg = in_process_error(args, capsys)
    for text in contains:
        assert text in msg, f"{text!r} not in: {msg}"
    for pattern in patterns:
        assert re.search(pattern, msg), f"{pattern!r} does not match: {msg}"
    # Nothing started: no run folder, nothing written under NEURACORE_HOME.
    assert _runs(home) == []
    assert sorted(p.name for p in home.iterdir()) == ["datasets"]


def test_unknown_backbone_is_one_line_refused_before_start(home: Path, capsys):
    msg = in_process_error(FAST + ["algorithm.image_backbone=vgg"], capsys)
    assert "algorithm.image_backbone='vgg'" in msg
    assert "resnet18" in msg
    assert _runs(home) == []


def test_resume_auto_without_checkpoints_fails_after_start(home: Path):
    proc = run_cli(FAST + ["resume_checkpoint_path=auto", "training_name=fresh"], home, timeout=300)
    msg = error_line(proc, only_line=False)  # start-up log lines come first
    assert msg.startswith("resume_checkpoint_path=auto")
    assert "no checkpoint" in msg
    assert str(home / "training" / "runs" / "fresh" / "checkpoints") in msg
    assert "drop resume_checkpoint_path" in msg
    # It never silently started a fresh training: no checkpoints and no exported model.
    run = home / "training" / "runs" / "fresh"
    assert not (run / "checkpoints").exists()
    assert not (run / "model").exists()


def test_documented_robot_data_spec_form_trains_and_exports_in_that_order(home: Path):
    spec = "input_robot_data_spec={planar_arm: {JOINT_POSITIONS: [elbow, shoulder], RGB_IMAGES: [top]}}"
    proc = run_cli(FAST + ["max_steps=2", "training_name=spec", spec], home, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    model_dir = home / "training" / "runs" / "spec" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["data_spec"]["inputs"] == {"JOINT_POSITIONS": ["elbow", "shoulder"], "RGB_IMAGES": ["top"]}
    assert config["data_spec"]["outputs"] == {"JOINT_TARGET_POSITIONS": ["shoulder", "elbow", "gripper"]}
    assert config["data_spec"]["output_prediction_horizon"] == 5
    assert config["training"]["steps"] == 2
    # The statistics follow the requested item order.
    dataset_spec = json.loads((home / "datasets" / "demo" / "spec.json").read_text())
    stats = dataset_spec["statistics"]["JOINT_POSITIONS"]
    joint = config["model_init_description"]["inputs"]["JOINT_POSITIONS"]
    assert joint["items"] == ["elbow", "shoulder"]
    assert joint["stats"]["mean"] == pytest.approx(stats["elbow"]["mean"] + stats["shoulder"]["mean"])

"""Every training command in the README composes and validates as printed; every printed error is the one it prints.

Commands are read from the README's code blocks (`python -m neuracore.ml.train ...` and
`... recipes/train.py ...`, continuation lines joined). A command followed by a `neuracore: error:`
line must fail validation with that line (up to its `...`), or pass validation when its error comes
later (from the dataset). Commands with placeholders (`...`, `$var`) or launcher flags are skipped.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from neuracore.ml.config.preflight import compose_config
from neuracore.ml.config.schema import validate_config
from neuracore.ml.core.errors import NeuracoreError

README = Path(__file__).resolve().parents[1] / "README.md"
ENTRY_POINTS = ("neuracore.ml.train", "recipes/train.py")
ERROR = "neuracore: error: "


def _blocks(text: str) -> list[list[str]]:
    blocks, current = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _commands() -> list[tuple[str, str | None]]:
    """(command, the error line printed after it or None) for each training command of the README."""
    found = []
    for block in _blocks(README.read_text()):
        lines = "\n".join(block).replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            command = line.strip().removeprefix("$ ").split("  #")[0].split(" # ")[0].strip()
            words = command.split()
            if not any(w.endswith(ENTRY_POINTS) for w in words) or words[0] not in ("python", "accelerate"):
                continue
            following = lines[i + 1] if i + 1 < len(lines) else ""
            found.append((command, following.removeprefix(ERROR) if following.startswith(ERROR) else None))
    return found


COMMANDS = _commands()


def test_the_readme_has_training_commands():
    assert len(COMMANDS) > 40
    assert any("algorithm=act_small" in c for c, _ in COMMANDS)
    assert any("algorithm=diffusion_policy_small" in c for c, _ in COMMANDS)


@pytest.mark.parametrize(("command", "error"), COMMANDS, ids=[c[:90] for c, _ in COMMANDS])
def test_readme_command_validates_as_printed(home: Path, command: str, error: str | None):
    from neuracore.ml.train import CONFIG_DIR

    words = shlex.split(command)
    start = max(i for i, w in enumerate(words) if w.endswith(ENTRY_POINTS)) + 1
    overrides = words[start:]
    if "..." in overrides or any("$" in w for w in overrides) or any(w.startswith("-") for w in overrides):
        pytest.skip("placeholder or launcher flags")
    if any(w.startswith("resume_checkpoint_path=") and w != "resume_checkpoint_path=auto" for w in overrides):
        pytest.skip("names a checkpoint folder of the reader's")
    if error is None:
        validate_config(compose_config(overrides, CONFIG_DIR))
        return
    expected = error.split("...")[0].strip()
    try:
        validate_config(compose_config(overrides, CONFIG_DIR))
    except NeuracoreError as exc:
        assert str(exc).startswith(expected), (str(exc), expected)
    # else: the printed error comes from a later stage (the dataset or the model), not validation

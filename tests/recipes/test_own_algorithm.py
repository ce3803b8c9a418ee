"""The README's own-algorithm example, extracted from the README and trained as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import REPO


def _readme_example(name: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- example: {re.escape(name)} -->\n```\w+\n(.*?)```", text, re.DOTALL)
    assert match, f"README example {name} not found"
    return match.group(1)


def test_readme_own_algorithm_trains_exports_and_loads(home: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "my_configs" / "algorithm").mkdir(parents=True)
    (work / "my_policy.py").write_text(_readme_example("my_policy.py"))
    (work / "my_configs" / "algorithm" / "state_mlp.yaml").write_text(
        _readme_example("my_configs/algorithm/state_mlp.yaml")
    )
    env = {"NEURACORE_HOME": str(home), "PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(work)}
    cmd = [sys.executable, "-m", "neuracore.ml.train", "--config-dir", "my_configs", "algorithm=state_mlp",
           "dataset_name=demo", "max_steps=60", "batch_size=16", "output_prediction_horizon=5", "num_workers=0",
           "training_name=mine", "algorithm.hidden_dim=64", "logging_frequency=10"]
    result = subprocess.run(cmd, check=False, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = home / "training" / "runs" / "mine"
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["algorithm"]["name"] == "state_mlp"
    assert config["algorithm"]["hyperparameters"] == {"hidden_dim": 64, "lr": 1e-3}

    # Training reduced the loss: last logged train loss is below the first.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert losses[-1] < 0.8 * losses[0], losses

    # A misspelt hyper-parameter of the user's algorithm is caught like a built-in one.
    bad = subprocess.run(cmd[:-1] + ["algorithm.hiden_dim=3"], check=False, cwd=work, env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "algorithm.hiden_dim" in bad.stderr and "hidden_dim" in bad.stderr

    # Loading: after importing the module the policy loads and predicts in the data's units.
    probe = (
        "import sys, json; sys.path.insert(0, sys.argv[2]); import my_policy; "
        "from neuracore.ml import Policy; p = Policy.from_pretrained(sys.argv[1]); "
        "out = p.predict({'JOINT_POSITIONS': [1.5, -1.0, 0.0]}); "
        "print(json.dumps(out['JOINT_TARGET_POSITIONS'].tolist()))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe, str(run / "model"), str(work)], env=env,
                            capture_output=True, text=True, check=False)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    chunk = np.array(json.loads(loaded.stdout))
    assert chunk.shape == (5, 3) and np.isfinite(chunk).all()
    # Without the module, the algorithm is not registered: a clear error, no import from the file.
    unknown = subprocess.run(
        [sys.executable, "-c", "import sys; from neuracore.ml import Policy; Policy.from_pretrained(sys.argv[1])",
         str(run / "model")], env={**env, "PYTHONPATH": ""}, capture_output=True, text=True, check=False,
    )
    assert unknown.returncode != 0 and "'state_mlp' is not registered" in unknown.stderr

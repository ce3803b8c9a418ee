"""Write and read `<run>/model/`: config.json, model.safetensors, README.md. Never unpickles."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import safetensors.torch

from neuracore.ml.core.errors import CheckpointError, NeuracoreError, one_line
from neuracore.ml.core.model import NeuracoreModel, build_model
from neuracore.ml.core.model_init import ModelInitDescription
from neuracore.ml.core.registry import class_path, registered_algorithms
from neuracore.ml.utils.hashing import sha256_file

EXPORT_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
_VERSIONED = ("neuracore", "torch", "torchvision", "accelerate", "datasets", "safetensors", "transformers", "diffusers")


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a trained model."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def export_model(
    model: NeuracoreModel,
    out_dir: Path,
    *,
    training: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    state_dict: dict[str, Any] | None = None,
) -> Path:
    """Write `out_dir` atomically (temp folder, then rename); an existing export is replaced.

    `state_dict` (e.g. gathered from FSDP shards) replaces the module's own tensors in the file.
    """
    out_dir = Path(out_dir)
    mid: ModelInitDescription = model.model_init_description
    config = {
        "format_version": EXPORT_FORMAT_VERSION,
        "algorithm": {
            "name": model.algorithm_name,
            "class": class_path(type(model)),
            "hyperparameters": _json_safe(getattr(model, "hyperparameters", {})),
        },
        "model_init_description": mid.to_json(),
        "data_spec": {
            "inputs": {dt.value: f.items for dt, f in mid.inputs.items()},
            "outputs": {dt.value: f.items for dt, f in mid.outputs.items()},
            "output_prediction_horizon": mid.output_prediction_horizon,
            "observation_history": model.observation_history,
        },
        "preprocessing": {
            "images": "uint8 [0, 255] -> float [0, 1] -> ImageNet mean/std, inside the model",
            "vectors": "normalised inside the model with the statistics in model_init_description",
        },
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "dataset": _json_safe(dataset or {}),
        "training": _json_safe(training or {}),
        "versions": package_versions(),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        if state_dict is None:
            safetensors.torch.save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        else:  # one consolidated file
            tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
            safetensors.torch.save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        config["weights_sha256"] = sha256_file(tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
        (tmp / CARD_FILE).write_text(model_card(config))
        tmp.chmod(0o755)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            if old is not None:  # put the previous export back
                os.replace(old, out_dir)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def model_card(config: dict[str, Any]) -> str:
    """A README.md describing the model, its data, training and how to reproduce it."""
    algo = config["algorithm"]
    ds = config.get("dataset", {})
    tr = config.get("training", {})
    spec = config["data_spec"]
    lines = [
        f"# {algo['name']} policy",
        "",
        f"Trained with neuracore {config['versions'].get('neuracore', '?')}; "
        f"{config['num_parameters']:,} parameters.",
        "",
        "## Data",
        f"- dataset: `{ds.get('name', '?')}` (fingerprint `{str(ds.get('fingerprint', '?'))[:16]}`, "
        f"{ds.get('episodes', '?')} episodes, {ds.get('frames', '?')} frames)",
        "- inputs: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in spec["inputs"].items()),
        "- outputs: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in spec["outputs"].items()),
        f"- prediction horizon: {spec['output_prediction_horizon']} steps",
        "",
        "## Training",
        f"- steps: {tr.get('steps', '?')}",
    ]
    for key in ("train_losses", "validation_losses", "best_validation_loss"):
        if key in tr:
            lines.append(f"- {key.replace('_', ' ')}: {tr[key]}")
    lines += [
        "",
        "## Hyper-parameters",
        "",
        "```json",
        json.dumps(algo["hyperparameters"], indent=1),
        "```",
        "",
        "## Reproduce",
        "",
        "```bash",
        str(tr.get("command", "python -m neuracore.ml.train ...")),
        "```",
        "",
        "## Use",
        "",
        "```python",
        "from neuracore.ml import Policy",
        "policy = Policy.from_pretrained('path/to/this/folder')",
        "chunk = policy.predict(observation)  # {DataType: [horizon, D] numpy array}",
        "```",
        "",
        "## Versions",
        "",
        ", ".join(f"{k} {v}" for k, v in config["versions"].items()),
        "",
    ]
    return "\n".join(lines)


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of an exported model, with a one-line error naming the file."""
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
        if not isinstance(config["algorithm"]["name"], str) or not isinstance(config["model_init_description"], dict):
            raise TypeError("algorithm.name must be a string and model_init_description a mapping")
        int(config.get("format_version", 0))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a neuracore model config ({type(exc).__name__}: {exc})") from None
    if int(config.get("format_version", 0)) > EXPORT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {config['format_version']} is newer than supported; upgrade neuracore")
    return config


def load_model_folder(
    folder: str | Path, trusted_algorithms: dict[str, type[NeuracoreModel]] | None = None
) -> tuple[NeuracoreModel, dict[str, Any]]:
    """Rebuild the model of an exported folder and load its safetensors weights (strict).

    The class comes from the registry by name (or from `trusted_algorithms`); the class path in
    config.json is informational and never imported.
    """
    folder = Path(folder)
    config = read_config(folder)
    name = config["algorithm"]["name"]
    known = {**registered_algorithms(), **(trusted_algorithms or {})}
    if name not in known:
        raise CheckpointError(
            f"{folder / CONFIG_FILE}: algorithm {name!r} is not registered; import the module that registers it "
            f"or pass trusted_algorithms={{{name!r}: YourClass}} (registered: {', '.join(sorted(known))})"
        )
    cls = known[name]
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing weights file")
    expected_sha = config.get("weights_sha256")
    if expected_sha and sha256_file(weights) != expected_sha:
        raise CheckpointError(f"{weights}: sha256 does not match config.json (corrupt or replaced weights)")
    try:
        mid = ModelInitDescription.from_json(config["model_init_description"])
        hyper = dict(config["algorithm"].get("hyperparameters", {}))
        # The exported weights replace any pretrained ones: never fetch them again when loading.
        hyper.update({k: v for k, v in cls.rebuild_overrides.items() if k in hyper})
        model = build_model(cls, mid, hyper)
    except (KeyError, TypeError, ValueError, AttributeError, NeuracoreError) as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: cannot rebuild {name} ({one_line(exc)})") from None
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(weights), strict=False)
    except Exception as exc:  # noqa: BLE001 - unreadable, corrupt or mismatched file
        raise CheckpointError(f"{weights}: cannot load weights ({one_line(exc)})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: weights do not match {name} (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    model.eval()
    return model, config

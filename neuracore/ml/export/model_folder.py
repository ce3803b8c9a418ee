"""Write and read `<run>/model/`: config.json, model.safetensors, README.md (+ assets/). Never unpickles.

A model's `export_assets()` folders (e.g. pi0's tokenizer) are copied to `assets/<hyper-parameter>/`
with every file's sha256 in config.json, so an export never refers to a path outside itself.
"""

from __future__ import annotations

import json
import logging
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

EXPORT_FORMAT_VERSION = 2  # the newest readable; 2 = embeds asset folders (written only when there are any)
_FORMAT_WITHOUT_ASSETS = 1  # exports without assets stay readable by older neuracore versions
ASSETS_DIR = "assets"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
log = logging.getLogger(__name__)
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


def _export_assets(model: NeuracoreModel) -> dict[str, Path]:
    """The model's asset folders, checked: each key is one of its hyper-parameters and a folder."""
    assets = dict(model.export_assets())
    valid = type(model).hyperparameter_defaults()
    for name, src in assets.items():
        if not (isinstance(name, str) and name.isidentifier() and name in valid):
            raise CheckpointError(
                f"{type(model).__name__}.export_assets(): {name!r} is not one of its hyper-parameters"
            )
        if not Path(src).is_dir():
            raise CheckpointError(f"algorithm.{name}={str(src)!r}: not a folder, so it cannot be embedded in the export")
    return {name: Path(src).resolve() for name, src in assets.items()}


def _asset_files(src: Path, name: str) -> list[tuple[str, Path]]:
    """Files of an asset folder by relative POSIX path; hidden entries are skipped (storage pushes skip them).

    A symlink to a regular file is copied as that file (Hugging Face cache snapshots are made of
    them); symlinked folders and special files are refused.
    """
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(src):  # does not descend into symlinked folders
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if os.path.islink(os.path.join(dirpath, d)):
                raise CheckpointError(
                    f"{os.path.join(dirpath, d)}: symlinked folder in algorithm.{name}; copy its contents in"
                )
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            if fname.startswith("."):
                continue
            if not path.is_file():
                raise CheckpointError(f"{path}: not a regular file (algorithm.{name} is embedded in the export)")
            out.append((path.relative_to(src).as_posix(), path))
    if not out:
        raise CheckpointError(f"algorithm.{name}={str(src)!r}: empty folder, nothing to embed in the export")
    return out


def _copy_assets(assets: dict[str, Path], dest: Path) -> dict[str, dict[str, Any]]:
    """Copy each asset folder to `dest/assets/<name>/`; returns config.json's `assets` entries."""
    entries: dict[str, dict[str, Any]] = {}
    for name, src in assets.items():
        rel_dir = f"{ASSETS_DIR}/{name}"
        hashes: dict[str, str] = {}
        for rel, path in _asset_files(src, name):
            target = dest / rel_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            hashes[rel] = sha256_file(target)
        entries[name] = {"path": rel_dir, "sha256": hashes}
    return entries


def export_model(
    model: NeuracoreModel,
    out_dir: Path,
    *,
    training: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    state_dict: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    weights_file: str = WEIGHTS_FILE,
) -> Path:
    """Write `out_dir` atomically (temp folder, then rename); an existing export is replaced.

    `state_dict` (e.g. gathered from FSDP shards, or LoRA-merged) replaces the module's own tensors in
    the file; `extra` adds (or overrides) top-level config.json keys; `weights_file` names the weights
    (export/adapter.py writes `adapter.safetensors`).
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
        **_json_safe(extra or {}),
    }
    assets = _export_assets(model)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        if assets:
            config["assets"] = _copy_assets(assets, tmp)
            # The hyper-parameter names the embedded copy (relative), never the training machine's path.
            config["algorithm"]["hyperparameters"].update({k: v["path"] for k, v in config["assets"].items()})
        config["format_version"] = EXPORT_FORMAT_VERSION if assets else _FORMAT_WITHOUT_ASSETS
        if state_dict is None:
            safetensors.torch.save_model(model, str(tmp / weights_file), metadata={"format": "pt"})
        else:  # one consolidated file
            tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
            safetensors.torch.save_file(tensors, str(tmp / weights_file), metadata={"format": "pt"})
        config["weights_sha256"] = sha256_file(tmp / weights_file)
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
        (f"Trained with neuracore {config['versions'].get('neuracore', '?')}; "
        f"{config['num_parameters']:,} parameters."),
        "",
        "## Data",
        (f"- dataset: `{ds.get('name', '?')}` (fingerprint `{str(ds.get('fingerprint', '?'))[:16]}`, "
        f"{ds.get('episodes', '?')} episodes, {ds.get('frames', '?')} frames)"),
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
        *(f"\n`algorithm.{name}` is this export's folder `{entry['path']}/` ({len(entry['sha256'])} files)."
          for name, entry in config.get("assets", {}).items()),
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
        raise CheckpointError(f"{path}: not a neuracore model config ({one_line(exc)})") from None
    if int(config.get("format_version", 0)) > EXPORT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {config['format_version']} is newer than supported; upgrade neuracore")
    return config


def _resolve_assets(folder: Path, config: dict[str, Any]) -> dict[str, str]:
    """Hyper-parameter -> absolute path of its embedded folder, confined to `folder` and sha256-checked."""
    where = folder / CONFIG_FILE
    assets = config.get("assets", {})
    if not isinstance(assets, dict):
        raise CheckpointError(f"{where}: 'assets' must be a mapping")
    root = folder.resolve()
    out: dict[str, str] = {}
    for name, entry in assets.items():
        ok = (
            isinstance(name, str) and name.isidentifier() and isinstance(entry, dict)
            and isinstance(entry.get("path"), str) and isinstance(entry.get("sha256"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in entry["sha256"].items())
        )  # fmt: skip
        if not ok:
            raise CheckpointError(f"{where}: malformed assets entry {name!r} (needs a path and a sha256 mapping)")
        target = (root / entry["path"]).resolve()
        if root not in target.parents:
            raise CheckpointError(f"{where}: assets.{name}.path={entry['path']!r} points outside the model folder")
        if not target.is_dir():
            raise CheckpointError(
                f"{target}: missing asset folder for algorithm.{name} (copy the whole model folder, assets/ included)"
            )
        for rel, expected in sorted(entry["sha256"].items()):
            path = (target / rel).resolve()
            if target not in path.parents:
                raise CheckpointError(f"{where}: assets.{name} file {rel!r} points outside {target}")
            if not path.is_file():
                raise CheckpointError(f"{path}: missing file of the asset folder for algorithm.{name}")
            if sha256_file(path) != expected:
                raise CheckpointError(f"{path}: sha256 does not match config.json (corrupt or replaced asset)")
        unlisted = sorted(
            rel for p in target.rglob("*")
            if not p.is_dir() and not (rel := p.relative_to(target).as_posix()).startswith(".")
            and "/." not in rel and rel not in entry["sha256"]
        )  # fmt: skip
        if unlisted:
            raise CheckpointError(f"{target}: files not recorded in config.json: {', '.join(unlisted[:5])}")
        out[name] = str(target)
    return out


def verified_weights(folder: Path, config: dict[str, Any], weights_file: str) -> Path:
    """The export's weights file, present and matching config.json's sha256."""
    weights = folder / weights_file
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing weights file")
    expected_sha = config.get("weights_sha256")
    if expected_sha and sha256_file(weights) != expected_sha:
        raise CheckpointError(f"{weights}: sha256 does not match config.json (corrupt or replaced weights)")
    return weights


def rebuild_model(folder: Path, config: dict[str, Any], cls: type[NeuracoreModel], pretrained: bool) -> NeuracoreModel:
    """The export's model with its recorded hyper-parameters, assets read from the folder.

    `pretrained=False` (a full export) applies the class's `rebuild_overrides`: the exported weights
    replace any pretrained ones, which are never fetched again. An adapter export keeps them (the base).
    """
    name = config["algorithm"]["name"]
    embedded = _resolve_assets(folder, config)
    try:
        mid = ModelInitDescription.from_json(config["model_init_description"])
        hyper = dict(config["algorithm"].get("hyperparameters", {}))
        if not pretrained:
            hyper.update({k: v for k, v in cls.rebuild_overrides.items() if k in hyper})
        hyper.update(embedded)  # embedded folders (e.g. a tokenizer) are read from this export
        model = build_model(cls, mid, hyper)
    except (KeyError, TypeError, ValueError, AttributeError, NeuracoreError) as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: cannot rebuild {name} ({one_line(exc)})") from None
    outside = sorted(set(model.export_assets()) - set(embedded))
    if outside:  # an export made before asset folders were embedded
        log.warning("%s: %s read from outside the model folder (%s); re-export to embed it",
                    folder, ", ".join(f"algorithm.{k}" for k in outside), ", ".join(str(hyper[k]) for k in outside))
    return model


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
    lora = config.get("lora")
    if isinstance(lora, dict) and lora.get("merged") is False:  # adapters only, on top of a referenced base
        from neuracore.ml.export.adapter import load_adapter_folder

        return load_adapter_folder(folder, config, cls)
    weights = verified_weights(folder, config, WEIGHTS_FILE)
    model = rebuild_model(folder, config, cls, pretrained=False)
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

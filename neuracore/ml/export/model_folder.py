"""Write and read `<run>/model/`: config.json, model.safetensors, README.md (+ assets/). Never unpickles.

A model's `export_assets()` folders (e.g. pi0's tokenizer) are copied to `assets/<hyper-parameter>/`
with every file's sha256 in config.json, so an export never refers to a path outside itself.

Loading trusts nothing in the folder: config.json is checked key by key (one line naming the key),
a path hyper-parameter that is not an embedded asset is refused (it would be read from this
machine), nothing is read through a symlink leaving the folder, and the memory the model needs
(its safetensors header, its hyper-parameters built on the meta device) is compared with the file
and with the host memory available before anything is allocated.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import platform
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import safetensors.torch

from neuracore.ml.core.data_types import Modality
from neuracore.ml.core.errors import CheckpointError, NeuracoreError, one_line
from neuracore.ml.core.hyperparameters import check_hyperparameters
from neuracore.ml.core.model import NeuracoreModel, build_model
from neuracore.ml.core.model_init import ModelInitDescription
from neuracore.ml.core.registry import class_path, registered_algorithms
from neuracore.ml.trainers.model_size import meta_model_bytes
from neuracore.ml.utils.atomic import recover_replace, replace_dir
from neuracore.ml.utils.hashing import sha256_file

EXPORT_FORMAT_VERSION = 2  # the newest readable; 2 = embeds asset folders (written only when there are any)
_FORMAT_WITHOUT_ASSETS = 1  # exports without assets stay readable by older neuracore versions
ASSETS_DIR = "assets"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
# Hyper-parameters named like these hold a local path: on load each must be an embedded asset (or null).
PATH_HYPERPARAMETER_SUFFIXES = ("_path", "_dir", "_file", "_folder")
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "C64": 8, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
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


def _link_roots(src: Path) -> list[Path]:
    """Folders a symlink inside asset folder `src` may point into: `src` itself, and for a folder of a
    Hugging Face hub cache snapshot (`<repo>/snapshots/<rev>[/...]`) that repository's `blobs/`."""
    roots = [src]
    for folder in (src, *src.parents):
        if folder.parent.name == "snapshots" and folder.parent.parent != folder.parent:
            roots.append(folder.parent.parent / "blobs")
            break
    return roots


def _asset_files(src: Path, name: str) -> list[tuple[str, Path]]:
    """Files of an asset folder by relative POSIX path; hidden entries are skipped (storage pushes skip them).

    Only what lies inside the folder is embedded: a symlink is followed (and its target copied as a
    regular file) only when the target resolves inside the folder's own tree. The one exception is a
    Hugging Face hub cache snapshot (`.../models--ORG--NAME/snapshots/<rev>/file -> ../../blobs/<hash>`,
    or a folder below the snapshot), whose files may point into that repository's `blobs/` folder.
    Any other symlink (to /etc, to the home folder, to a sibling folder), a symlinked folder and a
    special file are refused, so an export (and then a push) never carries a file from elsewhere.
    """
    roots = _link_roots(src)
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
            if path.is_symlink():
                target = path.resolve()
                if not any(root == target or root in target.parents for root in roots):
                    raise CheckpointError(
                        f"{path}: symlink to {target}, outside the asset folder algorithm.{name}={str(src)!r}; "
                        "an export embeds only files inside it (copy the file in instead of linking it)"
                    )
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
        replace_dir(tmp, out_dir)  # one swap where the kernel can: never no export under the name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _mixture_lines(ds: dict[str, Any]) -> list[str]:
    """Model-card lines of a run on several datasets: statistics mode, then one line per dataset."""
    if not ds.get("components"):
        return []
    lines = [(f"- a mixture of {len(ds['components'])} datasets, statistics `{ds.get('statistics', '?')}`; "
             "`Policy.from_pretrained(folder, robot=NAME)` serves one robot's items:")]
    for c in ds["components"]:
        lines.append(f"  - `{c.get('name')}` (fingerprint `{str(c.get('fingerprint', ''))[:12]}`): "
                     f"{c.get('train_episodes')} train / {c.get('validation_episodes')} validation episodes, "
                     f"{c.get('windows')} windows, weight {c.get('weight')}, robots {', '.join(c.get('robots', []))}")
    return lines


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
        *_mixture_lines(ds),
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
    if tr.get("rollouts"):
        r = tr["rollouts"]
        lines.append(f"- rollouts in `{r.get('env')}` at step {tr.get('steps', '?')}: success rate "
                     f"{r.get('success_rate', 0):.0%} ({r.get('successes')}/{r.get('episodes')} episodes, env seeds "
                     f"{'..'.join(map(str, r.get('seeds', [])))}), mean episode length {r.get('mean_steps', 0):.1f} steps")
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


_MAX_CONFIG_BYTES = 64 << 20  # config.json holds names, statistics and hashes: kilobytes, not gigabytes


def _inside(folder: Path, path: Path) -> Path:
    """`path` (a file the loader reads), refused when a symlink takes it outside `folder`."""
    target = path.resolve()
    if folder.resolve() not in target.parents:
        raise CheckpointError(f"{path}: symlink to {target}, outside the model folder; copy the file into the export")
    return target


def _shown(value: Any) -> str:
    """A JSON value for a message: short, and its type when it is long."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else f"a {type(value).__name__} ({text[:50]}...)"


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of an exported model, its top-level structure checked, with a one-line error naming the file."""
    path = Path(folder) / CONFIG_FILE
    _inside(Path(folder), path)  # before reading: a link to /etc/... is not read
    try:
        if path.is_file() and path.stat().st_size > _MAX_CONFIG_BYTES:
            raise ValueError(f"{path.stat().st_size:,} bytes, more than a model config can hold")
        config = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise CheckpointError(f"{path}: not a neuracore model config ({one_line(exc)})") from None

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a neuracore model config ({why})")

    if not isinstance(config, dict):
        raise bad(f"the top level is a JSON {type(config).__name__}, not an object")
    algorithm = config.get("algorithm")
    if not isinstance(algorithm, dict):
        raise bad(f"'algorithm' is {_shown(algorithm)}; expected a mapping with 'name' and 'hyperparameters'")
    if not isinstance(algorithm.get("name"), str) or not algorithm["name"]:
        raise bad(f"algorithm.name is {_shown(algorithm.get('name'))}; expected an algorithm name")
    if not isinstance(algorithm.get("hyperparameters", {}), dict):
        raise bad(f"algorithm.hyperparameters is {_shown(algorithm['hyperparameters'])}; expected a mapping")
    if not isinstance(config.get("model_init_description"), dict):
        raise bad(f"model_init_description is {_shown(config.get('model_init_description'))}; expected a mapping")
    version = config.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad(f"format_version is {_shown(version)}; expected an integer")
    sha = config.get("weights_sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise bad(f"weights_sha256 is {_shown(sha)}; expected 64 hex digits")
    if version > EXPORT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version} is newer than supported; upgrade neuracore")
    return config


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def read_description(where: Path, data: dict[str, Any]) -> ModelInitDescription:
    """config.json's `model_init_description`, checked key by key: a malformed entry is one line naming it."""

    def bad(key: str, value: Any, expected: str) -> CheckpointError:
        return CheckpointError(f"{where}: model_init_description.{key}={_shown(value)}: expected {expected}")

    for side in ("inputs", "outputs"):
        features = data.get(side)
        if not isinstance(features, dict) or not features:
            raise bad(side, features, "a non-empty mapping DataType -> feature")
        for dt, feature in features.items():
            key = f"{side}.{dt}"
            if not isinstance(feature, dict):
                raise bad(key, feature, "a mapping with items, shape and stats")
            items = feature.get("items")
            if not (isinstance(items, list) and all(isinstance(i, str) and i for i in items)
                    and len(set(items)) == len(items)):
                raise bad(f"{key}.items", items, "a list of distinct names")
            shape = feature.get("shape")
            if not (isinstance(shape, list)
                    and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1 << 16 for n in shape)):
                raise bad(f"{key}.shape", shape, "a list of integers in [1, 65536]")
            stats = feature.get("stats", {})
            if not isinstance(stats, dict):
                raise bad(f"{key}.stats", stats, "a mapping statistic -> list of numbers")
            for stat, values in stats.items():
                if not (isinstance(values, list) and all(_is_number(v) for v in values)):
                    raise bad(f"{key}.stats.{stat}", values, "a list of finite numbers")
    horizon = data.get("output_prediction_horizon")
    if not (isinstance(horizon, int) and not isinstance(horizon, bool) and 1 <= horizon <= 1 << 20):
        raise bad("output_prediction_horizon", horizon, "an integer in [1, 1048576]")
    frequency = data.get("frequency", 10.0)
    if not (_is_number(frequency) and frequency > 0):
        raise bad("frequency", frequency, "a finite number > 0 (Hz)")
    if data.get("default_language") is not None and not isinstance(data["default_language"], str):
        raise bad("default_language", data["default_language"], "a string or null")
    try:
        mid = ModelInitDescription.from_json(data)
    except (NeuracoreError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where}: malformed model_init_description ({one_line(exc)})") from None
    for side, features in (("inputs", mid.inputs), ("outputs", mid.outputs)):
        for dt, f in features.items():
            key = f"{side}.{dt.value}"
            rank = {Modality.VECTOR: 1, Modality.IMAGE: 3}.get(dt.modality)
            if rank is not None and len(f.shape) != rank:
                raise bad(f"{key}.shape", f.shape, f"{rank} dimension(s) for {dt.value}")
            if rank is not None and not f.items:
                raise bad(f"{key}.items", f.items, f"at least one name for {dt.value}")
            for stat, values in f.stats.items():
                if dt.modality == Modality.VECTOR and len(values) != f.dim:
                    raise bad(f"{key}.stats.{stat}", values, f"{f.dim} values (one per item of {dt.value})")
    return mid


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
        links = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_symlink())
        if links:  # an export writes regular files only; a link would read from elsewhere
            raise CheckpointError(f"{target}: symlink {links[0]!r} in the asset folder of algorithm.{name} "
                                  "(an export holds regular files only)")
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
    """The export's weights file: present, inside the folder and matching config.json's sha256."""
    weights = folder / weights_file
    if not weights.is_file():
        raise CheckpointError(f"{weights}: {'a folder, not a weights file' if weights.is_dir() else 'missing weights file'}")
    _inside(folder, weights)
    expected_sha = config.get("weights_sha256")
    if expected_sha and sha256_file(weights) != expected_sha:
        raise CheckpointError(f"{weights}: sha256 does not match config.json (corrupt or replaced weights)")
    return weights


def available_memory() -> int:
    """Host memory available now, in bytes (what a model being loaded can still allocate)."""
    return int(psutil.virtual_memory().available)


def _size(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{int(n)} bytes"


def safetensors_bytes(path: Path) -> int:
    """Bytes of the tensors a safetensors file declares, checked against the file before any is read.

    The header must be a JSON object; every tensor's dtype and shape must match the bytes its
    `data_offsets` span, and those must lie inside the file; the total must fit in the host memory
    available. A forged header (a tensor declared far larger than the file) is one line, not an allocation.
    """

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: cannot load weights: {why}")

    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise bad(f"{size} bytes, too short for a safetensors file")
            n = int.from_bytes(prefix, "little")
            if n > min(size - 8, _MAX_HEADER_BYTES):
                raise bad(f"header length {n:,} exceeds the file ({size:,} bytes) or safetensors' limit")
            header = json.loads(f.read(n))
    except (ValueError, RecursionError) as exc:  # invalid UTF-8 or JSON
        raise bad(f"the header is not valid JSON ({one_line(exc, 80)})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_bytes = size - 8 - n
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool) for o in info["data_offsets"]))
        if not ok:
            raise bad(f"tensor {name!r} has a malformed header entry (dtype, shape, data_offsets)")
        begin, end = info["data_offsets"]
        itemsize = _DTYPE_BYTES.get(info["dtype"])  # None: a dtype newer than this table, offsets still checked
        declared = math.prod(info["shape"]) * (itemsize or 0)
        if declared > data_bytes:
            raise bad(f"tensor {name!r} declares shape {info['shape']} of {info['dtype']} ({_size(declared)}), more "
                      f"than the {_size(data_bytes)} of data in the file (a forged or truncated header)")
        if not 0 <= begin <= end <= data_bytes:
            raise bad(f"tensor {name!r} has data_offsets {info['data_offsets']} outside the file's "
                      f"{data_bytes:,} bytes of data (truncated or forged)")
        if itemsize is not None and declared != end - begin:
            raise bad(f"tensor {name!r} declares shape {info['shape']} of {info['dtype']} ({declared:,} bytes) "
                      f"but its data_offsets span {end - begin:,} bytes")
        total += end - begin
    available = available_memory()
    if total > available:
        raise bad(f"its tensors need {_size(total)} of memory, more than the {_size(available)} available on "
                  "this machine")
    return total


def _refuse_outside_paths(where: Path, hyper: dict[str, Any], embedded: dict[str, str],
                          base_files: list[Path]) -> None:
    """A path hyper-parameter (`*_path`, `*_dir`, ...) must name an embedded asset or be null: anything else
    would be read from this machine (a path of the training machine, /etc, ...). An adapter export's
    base weights (`lora.base.files`, sha256-checked) are the one outside reference allowed."""
    for key, value in sorted(hyper.items()):
        if not key.endswith(PATH_HYPERPARAMETER_SUFFIXES) or value is None or key in embedded:
            continue
        if isinstance(value, str) and base_files:
            target = Path(value).expanduser().resolve()
            if any(target == f or target in f.parents for f in base_files):
                continue
        raise CheckpointError(
            f"{where}: algorithm.{key}={value!r} is a path outside this export (config.json embeds no asset "
            f"for it), so loading would read it from this machine; re-export the model with a current "
            f"neuracore (it copies the folder into assets/{key}/) or set it to null"
        )


def _oversized(cls: type[NeuracoreModel], hyper: dict[str, Any]) -> str:
    """The integer hyper-parameters above the algorithm's defaults (the likely cause of a huge model)."""
    defaults = cls.hyperparameter_defaults()
    big = [f"algorithm.{k}={v}" for k, v in sorted(hyper.items())
           if isinstance(v, int) and not isinstance(v, bool) and isinstance(defaults.get(k), int)
           and not isinstance(defaults.get(k), bool) and v > defaults[k]]
    return f" ({', '.join(big[:4])})" if big else ""


def _check_model_size(where: Path, cls: type[NeuracoreModel], mid: ModelInitDescription, hyper: dict[str, Any],
                      weights: Path | None, weights_bytes: int | None) -> None:
    """Before allocating: the model these hyper-parameters describe (built on the meta device) must fit in
    host memory and, for a full export, be about the size of the weights file it is loaded from."""
    needed = meta_model_bytes(cls, mid, hyper)
    if needed is None:  # this algorithm cannot be built on the meta device: the real build reports errors
        return
    name = cls.algorithm_name or cls.__name__
    available = available_memory()
    if needed > available:
        raise CheckpointError(
            f"{where}: {name} with these hyper-parameters{_oversized(cls, hyper)} needs {_size(needed)} for its "
            f"weights, more than the {_size(available)} of host memory available; config.json does not describe "
            "a model this machine can load"
        )
    # Non-persistent buffers are not in the file, hence the slack; a real mismatch is far larger.
    if weights is not None and weights_bytes is not None and needed > 2 * weights_bytes + (64 << 20):
        raise CheckpointError(
            f"{where}: {name} with these hyper-parameters{_oversized(cls, hyper)} has {_size(needed)} of weights "
            f"but {weights.name} holds {_size(weights_bytes)}; config.json does not belong to these weights"
        )


def rebuild_model(folder: Path, config: dict[str, Any], cls: type[NeuracoreModel], pretrained: bool,
                  weights: Path | None = None, weights_bytes: int | None = None) -> NeuracoreModel:
    """The export's model with its recorded hyper-parameters, assets read from the folder.

    `pretrained=False` (a full export) applies the class's `rebuild_overrides`: the exported weights
    replace any pretrained ones, which are never fetched again. An adapter export keeps them (its base,
    `lora.base.files`). Path hyper-parameters must be embedded assets, and the model's size is checked
    (against host memory and, given `weights_bytes`, the weights file) before it is allocated.
    """
    name = config["algorithm"]["name"]
    where = folder / CONFIG_FILE
    embedded = _resolve_assets(folder, config)
    mid = read_description(where, config["model_init_description"])
    hyper = dict(config["algorithm"].get("hyperparameters", {}))
    if not pretrained:
        hyper.update({k: v for k, v in cls.rebuild_overrides.items() if k in hyper})
    hyper.update(embedded)  # embedded folders (e.g. a tokenizer) are read from this export
    base = ((config.get("lora") or {}).get("base") or {}) if pretrained else {}
    files = base.get("files") if isinstance(base, dict) else None
    base_files = [Path(f).resolve() for f in files if isinstance(f, str)] if isinstance(files, dict) else []
    _refuse_outside_paths(where, hyper, embedded, base_files)
    try:
        check_hyperparameters(cls, hyper)  # ranges (e.g. hidden_dim=10**9) name the key before any build
        _check_model_size(where, cls, mid, hyper, weights, weights_bytes)
        model = build_model(cls, mid, hyper)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, NeuracoreError) as exc:
        raise CheckpointError(f"{where}: cannot rebuild {name} ({one_line(exc)})") from None
    outside = sorted(set(model.export_assets()) - set(embedded))
    if outside:  # an asset under a name without a path suffix: never read from outside silently either
        raise CheckpointError(
            f"{where}: {', '.join(f'algorithm.{k}={hyper.get(k)!r}' for k in outside)} is read from outside the "
            "model folder; re-export the model to embed it"
        )
    return model


def recover_export(folder: Path) -> None:
    """Finish an export replace killed between its two renames (the previous export is put back)."""
    recover_replace(Path(folder), complete_marker=CONFIG_FILE)


def load_model_folder(
    folder: str | Path, trusted_algorithms: dict[str, type[NeuracoreModel]] | None = None
) -> tuple[NeuracoreModel, dict[str, Any]]:
    """Rebuild the model of an exported folder and load its safetensors weights (strict).

    The class comes from the registry by name (or from `trusted_algorithms`); the class path in
    config.json is informational and never imported. Every expected failure (a malformed or foreign
    config.json, missing or corrupt weights, a model too large for this machine) is a one-line
    `CheckpointError` naming the file and key, raised before the model is allocated.
    """
    folder = Path(folder)
    recover_export(folder)
    if not folder.is_dir():
        what = "not a folder" if folder.exists() else "no such folder"
        raise CheckpointError(f"{folder}: {what} (an exported model folder holds {CONFIG_FILE} and {WEIGHTS_FILE})")
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
    if lora is not None and not isinstance(lora, dict):
        raise CheckpointError(f"{folder / CONFIG_FILE}: 'lora' is {_shown(lora)}; expected a mapping")
    if isinstance(lora, dict) and lora.get("merged") is False:  # adapters only, on top of a referenced base
        from neuracore.ml.export.adapter import load_adapter_folder

        return load_adapter_folder(folder, config, cls)
    weights = verified_weights(folder, config, WEIGHTS_FILE)
    declared = safetensors_bytes(weights)
    model = rebuild_model(folder, config, cls, pretrained=False, weights=weights, weights_bytes=declared)
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

"""Check command-line overrides before Hydra runs, so mistakes are one line and exit code 2."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from neuracore.ml.core.errors import ConfigError

_QUOTING = "quote the whole override for the shell, e.g. 'input_robot_data_spec={robot: {JOINT_POSITIONS: [j1]}}'"


def _flatten_keys(data: Any, prefix: str = "") -> list[str]:
    if not isinstance(data, dict):
        return [prefix.rstrip(".")]
    out = []
    for key, value in data.items():
        out.append(f"{prefix}{key}")
        if isinstance(value, dict) and key not in ("input_robot_data_spec", "output_robot_data_spec"):
            out.extend(_flatten_keys(value, f"{prefix}{key}."))
    return out


def _expand(overrides: list[str]) -> list[list[str]]:
    """One override list per sweep value (each value checked once, others at their first value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # noqa: BLE001 - Hydra's grammar errors are multi-line
        raise ConfigError(f"cannot parse overrides: {str(exc).splitlines()[0]}; {_QUOTING}") from None
    choices: list[list[str]] = []
    for override, text in zip(parsed, overrides):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            choices.append([text])
    combos = [[c[0] for c in choices]]
    for i, values in enumerate(choices):
        for value in values[1:]:
            combo = [c[0] for c in choices]
            combo[i] = value
            combos.append(combo)
    return combos


def _translate(exc: Exception, overrides: list[str], config_dir: str) -> ConfigError:
    """Turn a Hydra composition error into a one-line `ConfigError`."""
    message = str(exc)
    missing = re.search(r"Could not find '(\w+)/([^']+)'", message)
    if missing:
        group, value = missing.groups()
        if group == "algorithm":
            # `algorithm=<name>` selects a yaml of the algorithm group: list those (importing every
            # algorithm module to read the registry would cost seconds for a one-line error).
            options = sorted(_group_options(config_dir, group))
            hint = difflib.get_close_matches(value, options, 1)
            return ConfigError(
                f"algorithm={value}: unknown algorithm{f' (did you mean {hint[0]}?)' if hint else ''}; "
                f"valid: {', '.join(options)}"
            )
        return ConfigError(f"{group}={value}: unknown option; valid: {', '.join(_group_options(config_dir, group))}")
    key = re.search(r"Could not (?:override|append to|delete from) '([^']+)'", message) or re.search(
        r"Key '([^']+)' (?:is not in struct|not in)", message
    )
    if key:
        name = key.group(1)
        valid = _known_keys(config_dir, overrides)
        hint = difflib.get_close_matches(name, valid, 1)
        section = name.rsplit(".", 1)[0] + "." if "." in name else ""
        siblings = sorted(k[len(section):] for k in valid if k.startswith(section) and "." not in k[len(section):])
        anchor = next((k for k in sorted(valid, key=len, reverse=True) if name.startswith(k + ".")), None)
        if not siblings and anchor:  # under a key that is empty (null or {}): there is nothing to override
            return _set_whole(name, anchor, overrides)
        return ConfigError(
            f"{name}: unknown config key{f' (did you mean {hint[0]}?)' if hint else ''}; "
            f"valid {'keys' if not section else section.rstrip('.') + ' keys'}: {', '.join(siblings)}"
        )
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return ConfigError(f"invalid overrides: {first}")


def _set_whole(name: str, anchor: str, overrides: list[str]) -> ConfigError:
    """`a.b.c=v` where `a` is empty: say so, and show `a` set whole (`'a={b: {c: v}}'`)."""
    value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == name), "...")
    nested = value
    for part in reversed(name[len(anchor) + 1 :].split(".")):
        nested = f"{{{part}: {nested}}}"
    return ConfigError(
        f"{name}: {anchor} is empty, so it has no keys to override; set it whole, e.g. '{anchor}={nested}'"
    )


def _group_options(config_dir: str, group: str) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir) / group).glob("*.yaml"))


def _known_keys(config_dir: str, overrides: list[str]) -> list[str]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    group_overrides = [o for o in overrides if re.match(r"^(algorithm|training|dataset|hydra\.searchpath)=", o)]
    try:
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            cfg = compose("config", overrides=group_overrides)
        return _flatten_keys(OmegaConf.to_container(cfg, resolve=False))
    except Exception:  # noqa: BLE001
        return []


def compose_config(overrides: list[str], config_dir: str) -> dict[str, Any]:
    """Compose the config for `overrides` (no sweeps) as a plain dict, or raise `ConfigError`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
            # `${hydra:job.num}` (e.g. training_name=sweep_${hydra:job.num}) resolves as in a job (None here)
            HydraConfig.instance().set_config(cfg)
            with open_dict(cfg):
                del cfg["hydra"]
            data = OmegaConf.to_container(cfg, resolve=True)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - Hydra/OmegaConf errors become one line
        raise _translate(exc, overrides, config_dir) from None
    finally:
        GlobalHydra.instance().clear()
    return data


_FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                     "--experimental-rerun")
_INFO_TOPICS = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
# Hydra's own config groups that select plugins: `hydra/launcher=slurm` (SLURM sweeps, see
# config/hydra/launcher/) and `hydra/launcher=submitit_local` need Hydra's submitit launcher.
_SUBMITIT_LAUNCHERS = ("slurm", "submitit_slurm", "submitit_local")


def _split_argv(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """(overrides, extra config dirs, multirun) from a Hydra command line; `hydra/<group>=...` are checked here."""
    overrides: list[str] = []
    config_dirs: list[str] = []
    launcher_groups: list[str] = []
    inspect = False  # --cfg/--info print the config instead of running it
    multirun = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("-cd", "--config-dir"):
            if i + 1 >= len(argv):
                raise ConfigError(f"{arg}: expects a folder of extra configs (e.g. {arg} my_configs)")
            config_dirs.append(argv[i + 1])
            i += 1
        elif arg.startswith("--config-dir="):
            config_dirs.append(arg.split("=", 1)[1])
        elif arg in _FLAGS_WITH_VALUE:
            inspect = inspect or arg in ("--cfg", "-c")
            i += 1  # Hydra's to handle, with its value (`--cfg hydra`, `-p hydra.launcher`)
        elif arg in ("--info", "-i"):
            inspect = True
            if i + 1 < len(argv) and argv[i + 1] in _INFO_TOPICS:
                i += 1
        elif arg.startswith("-"):
            pass  # other Hydra flags (--resolve, --help, ...) are Hydra's to handle
        elif arg.startswith("hydra/"):
            launcher_groups.append(arg)
        elif "=" not in arg:
            raise ConfigError(f"{arg!r}: expected key=value (e.g. algorithm=cnnmlp dataset_name=demo)")
        elif not arg.startswith("hydra."):
            overrides.append(arg)
        i += 1
    for folder in config_dirs:
        if not Path(folder).is_dir():
            raise ConfigError(f"--config-dir {folder}: no such folder")
    _check_hydra_groups(launcher_groups, multirun or inspect)
    return overrides, config_dirs, multirun


def _check_hydra_groups(groups: list[str], sweeps: bool) -> None:
    """`hydra/launcher=slurm|submitit_*` needs the submitit plugin and --multirun; Hydra checks the rest."""
    for text in groups:
        group, _, value = text.lstrip("+~").partition("=")
        if group != "hydra/launcher" or value not in _SUBMITIT_LAUNCHERS:
            continue
        import importlib.util

        if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
            raise ConfigError(f"{text}: needs Hydra's submitit launcher; pip install 'neuracore[slurm]' "
                              "(hydra-submitit-launcher)")
        if not sweeps:
            raise ConfigError(f"{text}: a launcher runs sweeps; add --multirun (one job per configuration), "
                              "or submit a single multi-node run with tools/slurm/train.sbatch")


def preflight(argv: list[str], config_dir: str) -> None:
    """Validate every job a command line would run before Hydra starts any of them."""
    from neuracore.ml.config.schema import validate_config

    overrides, extra_dirs, multirun = _split_argv(argv)
    combos = _expand(overrides)
    if len(combos) > 1 and not multirun:
        raise ConfigError(
            "a sweep (comma-separated values) needs --multirun; e.g. "
            "python -m neuracore.ml.train --multirun algorithm.lr=1e-4,5e-4 ..."
        )
    if multirun:
        _refuse_distributed_sweep()
    searchpath = [f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in extra_dirs)}]"] if extra_dirs else []
    for combo in combos:
        config = validate_config(compose_config(searchpath + combo, config_dir))
        # Dataset and data-spec errors are cheap to find from spec.json alone: find them now.
        check_dataset_and_spec(config)


def _refuse_distributed_sweep() -> None:
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "--multirun inside a multi-process launch: sweeps run their jobs one after another in one "
            "process; launch one `accelerate launch` per configuration instead (see README, Sweeps)"
        )


def check_dataset_and_spec(config: Any) -> None:
    """The dataset(s) exist (or are the generated demo) and the data spec names only what they have.

    A list in `dataset_name` is checked as the mixture the run will train on (datasets/mixture.py):
    every name exists, robots and shapes agree, the robot data specs name robots of the datasets.
    """
    from neuracore.ml.core.errors import DatasetError
    from neuracore.ml.datasets.data_spec import resolve_model_data_spec
    from neuracore.ml.datasets.format import (
        SPEC_FILE,
        MaterializedDataset,
        available_datasets,
        dataset_path,
        read_spec,
    )
    from neuracore.ml.datasets.mixture import (
        RELATIVE_ACTIONS_UNSUPPORTED,
        build_mixture,
        check_robot_spec,
        dataset_names,
    )
    from neuracore.ml.storage.names import looks_like_repo

    names = dataset_names(config.dataset_name)
    specs = []
    for name in names:
        if looks_like_repo(name) or "://" in name:  # storage / URL (datasets/remote.py): checked at start
            return  # pulled (and its spec checked) when the run starts
        path = dataset_path(name)
        if not (path / SPEC_FILE).is_file():
            if name == "demo":
                return  # generated on first use
            have = available_datasets()
            have += [] if "demo" in have else ["demo"]
            shown = repr(config.dataset_name) if len(names) == 1 else f"[{', '.join(names)}]: {name!r}"
            raise DatasetError(f"dataset_name={shown}: no such dataset in {path.parent}; available: {', '.join(have)}")
        specs.append(read_spec(path))
    if len(specs) == 1:
        spec = specs[0]
    else:  # the merged view only needs the specs (no table is opened here)
        mixture = build_mixture([MaterializedDataset(Path(), s, None) for s in specs],  # type: ignore[arg-type]
                                config.dataset_weights, config.dataset.statistics)
        check_robot_spec(mixture, config.input_robot_data_spec, "input_robot_data_spec")
        check_robot_spec(mixture, config.output_robot_data_spec, "output_robot_data_spec")
        spec = mixture.spec
        if config.relative_actions.enabled:
            raise ConfigError(RELATIVE_ACTIONS_UNSUPPORTED)
    inputs, outputs = resolve_model_data_spec(
        spec,
        config.algorithm.cls,
        config.input_data_types,
        config.output_data_types,
        config.input_robot_data_spec,
        config.output_robot_data_spec,
    )
    from neuracore.ml.core.relative_actions import resolve_relative_actions

    relative = config.relative_actions  # checked against the run's items now, resolved again in build_data
    resolve_relative_actions(relative.enabled, relative.pairs, relative.absolute_items,
                             {dt: f.items for dt, f in outputs.items()}, {dt: f.items for dt, f in inputs.items()})

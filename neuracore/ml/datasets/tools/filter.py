"""`filter`: a new dataset holding the episodes of one dataset that pass every given criterion.

Criteria (all must hold for an episode to be kept):

- `drop_episodes`: indices and inclusive ranges to drop, e.g. `"3,5-7"`;
- `min_length` / `max_length`: inclusive bounds in frames (`50`) or seconds (`"2.5s"`; the
  episode's length in seconds is frames / frequency);
- `robots`: keep only these robots' episodes; the output's robots and columns are cut down to
  theirs (a camera or item that only a dropped robot had is gone);
- `language`: keep episodes whose instruction matches this regular expression (`re.search`;
  an episode without an instruction never matches); `exclude_language` drops those that match.

An empty result is refused. Rows are copied as Arrow buffers (encoded frames are not re-encoded).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.format import ColumnSpec
from neuracore.ml.datasets.tools._write import Part, check_output, input_record, open_inputs, write
from neuracore.ml.datasets.tools.split import parse_episodes

_LENGTH = re.compile(r"^\s*(?:(?P<frames>\d+)|(?P<seconds>\d+(?:\.\d*)?|\.\d+)\s*s)\s*$")


def parse_length(value: str | int, option: str) -> tuple[float, str]:
    """`50` → (50, "frames"); `"2.5s"` → (2.5, "seconds"); anything else is a one-line `ConfigError`."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return float(value), "frames"
    m = _LENGTH.match(value) if isinstance(value, str) else None
    if not m:
        raise ConfigError(f"{option} {value!r}: give a number of frames (e.g. 50) or of seconds ending in s "
                          "(e.g. 2.5s)")
    return (float(m["frames"]), "frames") if m["frames"] is not None else (float(m["seconds"]), "seconds")


def _regex(pattern: str, option: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{option} {pattern!r}: not a valid regular expression ({exc})") from None


def _keep_columns(columns: dict[str, ColumnSpec], robots: dict[str, dict[str, list[str]]]) -> dict[str, ColumnSpec]:
    """The columns (and vector items) that the kept robots still have."""
    out: dict[str, ColumnSpec] = {}
    for name, col in columns.items():
        used = {i for types in robots.values() for i in types.get(col.data_type, [])}
        items = [i for i in col.items if i in used]
        if not items:
            continue
        if DataType(col.data_type).modality == Modality.VECTOR:
            out[name] = ColumnSpec(col.data_type, items, list(col.item_shape), col.dtype, col.encoding)
        else:
            out[name] = col
    return out


def filter_dataset(
    name: str,
    out: str,
    *,
    drop_episodes: str | None = None,
    min_length: str | int | None = None,
    max_length: str | int | None = None,
    robots: list[str] | None = None,
    language: str | None = None,
    exclude_language: str | None = None,
    root: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the episodes of `name` that pass every criterion as `out`; returns kept and dropped episodes.

    Every dropped episode is listed with all the reasons it failed (`{"episode": i, "reasons": [...]}`).
    """
    given = [drop_episodes, min_length, max_length, robots, language, exclude_language]
    if all(v is None for v in given):
        raise ConfigError("filter: give at least one of --drop-episodes, --min-length, --max-length, --robot, "
                          "--language, --exclude-language")
    (ds,) = open_inputs([name], root, "filter")
    spec = ds.spec
    count = len(spec.episodes)
    check_output(out, [name], root, overwrite)
    drop = set(parse_episodes(drop_episodes, count, "--drop-episodes")) if drop_episodes is not None else set()
    bounds = {opt: parse_length(v, opt) for opt, v in (("--min-length", min_length), ("--max-length", max_length))
              if v is not None}
    if len(bounds) == 2:
        (lo, lo_unit), (hi, hi_unit) = bounds["--min-length"], bounds["--max-length"]
        lo_s = lo if lo_unit == "seconds" else lo / spec.frequency
        hi_s = hi if hi_unit == "seconds" else hi / spec.frequency
        if lo_s > hi_s:
            raise ConfigError(f"--min-length {min_length} is longer than --max-length {max_length}; no episode "
                              "can pass both")
    keep_robots = list(dict.fromkeys(robots)) if robots is not None else None
    if keep_robots is not None:
        unknown = [r for r in keep_robots if r not in spec.robots] if keep_robots else [""]
        if unknown:
            raise ConfigError(f"--robot {unknown[0]!r}: not a robot of dataset {name!r}; robots: "
                              f"{', '.join(spec.robots)}")
    match = _regex(language, "--language") if language is not None else None
    exclude = _regex(exclude_language, "--exclude-language") if exclude_language is not None else None

    kept: list[int] = []
    dropped: list[dict[str, Any]] = []
    for i, ep in enumerate(spec.episodes):
        reasons = []
        if i in drop:
            reasons.append("--drop-episodes")
        if keep_robots is not None and ep.robot not in keep_robots:
            reasons.append(f"robot {ep.robot!r} not in --robot")
        for opt, (amount, unit) in bounds.items():
            have = ep.length if unit == "frames" else ep.length / spec.frequency
            short = opt == "--min-length" and have < amount
            if short or (opt == "--max-length" and have > amount):
                shown = f"{ep.length} frames" if unit == "frames" else f"{have:g} s"
                reasons.append(f"{shown} {'<' if short else '>'} {opt} {amount:g} {unit}")
        if match is not None and (ep.language is None or not match.search(ep.language)):
            reasons.append("no instruction" if ep.language is None else f"instruction {ep.language!r} does not "
                           "match --language")
        if exclude is not None and ep.language is not None and exclude.search(ep.language):
            reasons.append(f"instruction {ep.language!r} matches --exclude-language")
        if reasons:
            dropped.append({"episode": i, "reasons": reasons})
        else:
            kept.append(i)
    if not kept:
        first = dropped[0]
        raise DatasetError(f"filter: no episode of {name!r} is left ({count} dropped; episode {first['episode']}: "
                           f"{'; '.join(first['reasons'])}); loosen the criteria")
    out_robots = spec.robots if keep_robots is None else {r: t for r, t in spec.robots.items() if r in keep_robots}
    columns = spec.columns if keep_robots is None else _keep_columns(spec.columns, out_robots)
    criteria = {k: v for k, v in (("drop_episodes", drop_episodes), ("min_length", min_length),
                                  ("max_length", max_length), ("robots", keep_robots), ("language", language),
                                  ("exclude_language", exclude_language)) if v is not None}
    source = {"kind": "filter", "input": input_record(ds), "criteria": criteria, "episodes": kept,
              "dropped": dropped}
    if "images" in spec.source:
        source["images"] = spec.source["images"]
    path = write(out, [Part(ds, i) for i in kept], columns=columns, robots=out_robots, frequency=spec.frequency,
                 source=source, root=root, overwrite=overwrite, inputs=[name])
    return {"input": name, "output": out, "path": str(path), "episodes": count, "kept": kept, "dropped": dropped,
            "frames": sum(spec.episodes[i].length for i in kept), "input_frames": spec.num_frames}


__all__ = ["filter_dataset", "parse_length"]

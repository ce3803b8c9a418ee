"""`split`: a dataset's episodes into one or two new datasets, by episode ranges or a seeded fraction.

Always by episode, never by frame (neighbouring frames of one episode would leak across the
parts). `--fraction F --seed S` permutes the episode indices with `numpy.random.default_rng(S)`
and gives the first `floor(F * N + 0.5)` of them to `--name`, the others to `--rest-name`;
both parts keep the input's episode order. The same input and seed always give the same parts
(and the same fingerprints). Robots and columns are the input's in both parts.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.tools._write import (
    Part,
    check_output,
    discard,
    input_record,
    open_inputs,
    publish,
    stage,
)

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_episodes(text: str, count: int, option: str = "--episodes") -> list[int]:
    """Episode indices from `"0-9,20"` (inclusive ranges and single indices), sorted and unique.

    Anything else, a reversed range or an index outside `0..count-1` is a one-line `ConfigError`.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{option} {text!r}: give episode indices and inclusive ranges, e.g. 0-9,20")
    chosen: set[int] = set()
    for token in text.split(","):
        m = _RANGE.match(token)
        if not m:
            raise ConfigError(f"{option} {text!r}: {token.strip()!r} is not an index or a range A-B "
                              "(e.g. 0-9,20; indices start at 0)")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if hi < lo:
            raise ConfigError(f"{option} {text!r}: range {lo}-{hi} runs backwards; write {hi}-{lo}")
        if hi >= count:
            raise ConfigError(f"{option} {text!r}: episode {hi} does not exist; the dataset has episodes "
                              f"0..{count - 1}")
        chosen.update(range(lo, hi + 1))
    return sorted(chosen)


def fraction_split(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(chosen, rest) episode indices: the first `floor(fraction * count + 0.5)` of a seeded permutation."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"--fraction {fraction!r}: must be a number between 0 and 1 (exclusive), e.g. 0.8")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed {seed!r}: must be a non-negative integer")
    order = np.random.default_rng(seed).permutation(count)
    k = math.floor(fraction * count + 0.5)
    return sorted(order[:k].tolist()), sorted(order[k:].tolist())


def split_dataset(
    name: str,
    out: str,
    *,
    episodes: str | list[int] | None = None,
    fraction: float | None = None,
    seed: int = 0,
    rest_name: str | None = None,
    root: Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the chosen episodes of `name` as `out` (and, with `rest_name`, the others as `rest_name`).

    Choose with `episodes` (`"0-9,20"` or a list of indices) or with `fraction` + `seed`. Both
    outputs are staged completely before either is published. Returns what was written.
    """
    if (episodes is None) == (fraction is None):
        raise ConfigError("split: give exactly one of --episodes (e.g. 0-9,20) or --fraction (e.g. 0.8 --seed 0)")
    (ds,) = open_inputs([name], root, "split")
    count = len(ds.spec.episodes)
    if episodes is not None:
        if isinstance(episodes, str):
            chosen = parse_episodes(episodes, count)
        else:
            chosen = parse_episodes(",".join(str(int(e)) for e in episodes), count)
        rest = [i for i in range(count) if i not in set(chosen)]
        selection: dict[str, Any] = {"episodes": episodes if isinstance(episodes, str) else list(episodes)}
    else:
        chosen, rest = fraction_split(count, fraction, seed)  # type: ignore[arg-type]
        selection = {"fraction": fraction, "seed": seed}
    if not chosen:
        raise DatasetError(f"split: --fraction {fraction} of {count} episodes selects none for {out!r}; "
                           "use a larger fraction")
    outputs = [(out, chosen, "chosen")]
    if rest_name is not None:
        if rest_name == out:
            raise ConfigError(f"--rest-name {rest_name!r} is the same as --name; give two names")
        if not rest:
            raise DatasetError(f"split: every episode of {name!r} goes to {out!r}; --rest-name {rest_name!r} "
                               "would be empty")
        outputs.append((rest_name, rest, "rest"))
    for target, _, _ in outputs:  # refused before anything is written
        check_output(target, [name], root, overwrite, "--name" if target == out else "--rest-name")
    staged = []
    try:
        for target, indices, part in outputs:
            source = {"kind": "split", "input": input_record(ds), "selection": selection, "part": part,
                      "episodes": indices}
            if "images" in ds.spec.source:
                source["images"] = ds.spec.source["images"]
            staged.append(stage(target, [Part(ds, i) for i in indices], columns=ds.spec.columns,
                                robots=ds.spec.robots, frequency=ds.spec.frequency, source=source, root=root,
                                overwrite=overwrite, inputs=[name]))
    except BaseException:
        for s in staged:
            discard(s)
        raise
    written = []
    try:
        for s in staged:  # both complete: published one after the other
            written.append({"name": s.name, "path": str(publish(s)), "episodes": s.spec.source["episodes"],
                            "frames": s.spec.num_frames})
    finally:
        for s in staged[len(written):]:
            discard(s)
    return {"input": name, "episodes": count, "selection": selection, "outputs": written}


__all__ = ["fraction_split", "parse_episodes", "split_dataset"]

"""Relative (delta) actions for every algorithm: which items are deltas, to_delta, to_absolute.

With `relative_actions.enabled=true` an output item (e.g. a joint target) is learnt as
`target[t + k] - state[t]`, the value of the same-named item of its paired input type (e.g.
JOINT_POSITIONS) at the window's last observation t, for every k of the horizon (openpi's
`DeltaActions`/`AbsoluteActions`, LeRobot's relative actions). Items without a same-named input
item, and those in `absolute_items` (typically grippers), stay absolute.

The mechanism is data-side and algorithm-agnostic:

- training windows carry deltas (`to_delta` in `datasets.windows.WindowDataset`, in the loader
  workers), so every algorithm's step, compiled program and DDP wrapping are unchanged;
- the output type's normalisation statistics are those of the deltas for the relative items
  (`datasets.statistics.relative_statistics`, merged with `merge_statistics`), so every
  algorithm's own normalisation fits the values it sees;
- predictions become absolute again in one place, `export.policy.Policy.predict` (`to_absolute`),
  which `select_action`, tools/evaluate.py and the simulator rollouts all go through;
- the resolved pairs are part of `ModelInitDescription` (its JSON goes into an export's
  config.json as `model_init_description.relative_actions`; exports without it are absolute).

Functions here are pure and work on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError

KEY = "relative_actions"
# What `pairs: auto` means: joint targets relative to the measured joint positions.
AUTO_PAIRS: dict[DataType, DataType] = {DataType.JOINT_TARGET_POSITIONS: DataType.JOINT_POSITIONS}
STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")

Array = TypeVar("Array")  # np.ndarray or torch.Tensor


@dataclass(frozen=True)
class RelativePair:
    """An output DataType whose `items` are deltas to the same-named items of the `input` DataType.

    `output_index`/`input_index` are the positions of those items in the model's output and input
    vectors (one value per item: only width-1 vector types can be relative).
    """

    output: DataType
    input: DataType
    items: tuple[str, ...]
    output_index: tuple[int, ...]
    input_index: tuple[int, ...]


def _relative_type(value: Any, key: str) -> DataType:
    """A DataType that can take part in a pair: a vector type of one value per item."""
    dt = DataType.parse(value, key)
    if dt.modality != Modality.VECTOR or dt.item_width != 1:
        valid = ", ".join(d.value for d in DataType if d.modality == Modality.VECTOR and d.item_width == 1)
        why = "a pose (xyz + quaternion) is not made relative by subtraction" if dt.modality == Modality.VECTOR \
            else "not a vector data type"
        raise ConfigError(f"{key}: {dt.value} cannot be relative ({why}); valid: {valid}")
    return dt


def parse_pairs(pairs: str | Mapping[str, Any], key: str = f"{KEY}.pairs") -> dict[DataType, DataType]:
    """`auto` or `{OUTPUT_DATA_TYPE: INPUT_DATA_TYPE}` → DataType mapping (names checked, one-line errors)."""
    if isinstance(pairs, str):
        if pairs != "auto":
            raise ConfigError(f"{key}={pairs!r}: expected auto or a mapping {{OUTPUT_DATA_TYPE: INPUT_DATA_TYPE}}, "
                              "e.g. {JOINT_TARGET_POSITIONS: JOINT_POSITIONS}")
        return dict(AUTO_PAIRS)
    if not isinstance(pairs, Mapping) or not pairs:
        raise ConfigError(f"{key}={pairs!r}: expected auto or a non-empty mapping {{OUTPUT_DATA_TYPE: INPUT_DATA_TYPE}}")
    out: dict[DataType, DataType] = {}
    for output, state in pairs.items():
        out_type = _relative_type(output, f"{key}.{output}")
        if not isinstance(state, (str, DataType)):
            raise ConfigError(f"{key}.{output}={state!r}: expected one input data type, e.g. JOINT_POSITIONS")
        out[out_type] = _relative_type(state, f"{key}.{output}={state}")
    return out


def make_pair(output: DataType, state: DataType, items: Sequence[str],
              output_items: Sequence[str], input_items: Sequence[str]) -> RelativePair:
    """The pair for `items` (present in both item lists, in output order), with their vector positions."""
    items = [i for i in output_items if i in set(items)]
    return RelativePair(output, state, tuple(items), tuple(output_items.index(i) for i in items),
                        tuple(input_items.index(i) for i in items))


def resolve_relative_actions(
    enabled: bool,
    pairs: str | Mapping[str, Any],
    absolute_items: Sequence[str],
    outputs: Mapping[DataType, Sequence[str]],
    inputs: Mapping[DataType, Sequence[str]],
) -> list[RelativePair]:
    """The relative items of a run (`[]` when disabled), from the config and the run's item lists.

    `outputs`/`inputs` map each DataType of the run to its items in model order. Refuses, in one
    line naming the key: a pair whose output or input type is not among the run's outputs/inputs,
    an `absolute_items` entry that names no output item, and `enabled` with nothing relative.
    """
    if not enabled:
        return []
    wanted = parse_pairs(pairs)
    auto = isinstance(pairs, str)
    shown = f"{KEY}.pairs=auto ({', '.join(f'{o.value}: {i.value}' for o, i in AUTO_PAIRS.items())})" if auto else ""
    output_items = [i for dt, items in outputs.items() if dt in wanted for i in items]
    unknown = [i for i in absolute_items if i not in output_items]
    if unknown:
        raise ConfigError(f"{KEY}.absolute_items: {', '.join(map(repr, unknown))} not an item of a relative output "
                          f"({', '.join(dt.value for dt in wanted)}); its items: {', '.join(output_items) or 'none'}")
    result: list[RelativePair] = []
    for output, state in wanted.items():
        where = shown or f"{KEY}.pairs.{output.value}"
        if output not in outputs:
            if auto:
                continue  # auto pairs only what the run predicts; nothing at all is refused below
            raise ConfigError(f"{where}: {output.value} is not among the run's outputs "
                              f"({', '.join(dt.value for dt in outputs)}); add it to output_data_types or drop the pair")
        if state not in inputs:
            raise ConfigError(f"{where}: the paired input {state.value} is not among the run's inputs "
                              f"({', '.join(dt.value for dt in inputs)}); add it to input_data_types or pair "
                              "another input type")
        items = [i for i in outputs[output] if i in inputs[state] and i not in absolute_items]
        if items:
            result.append(make_pair(output, state, items, list(outputs[output]), list(inputs[state])))
    if not result:
        described = "; ".join(
            f"{o.value} [{', '.join(outputs.get(o, []))}] vs {i.value} [{', '.join(inputs.get(i, []))}]"
            for o, i in wanted.items()
        )
        raise ConfigError(f"{KEY}.enabled=true: no output item can be made relative (no same-named input item, "
                          f"or all in absolute_items): {described}; set {KEY}.enabled=false or change "
                          f"{KEY}.pairs/absolute_items")
    return result


def _shifted(values: Mapping[str, Array], inputs: Mapping[str, Any], pairs: Sequence[RelativePair],
             sign: int) -> dict[str, Array]:
    """`values` with each pair's items shifted by -state (sign -1) or +state (sign +1); new arrays, inputs kept."""
    out = dict(values)
    for pair in pairs:
        key = pair.output.value
        x = out[key]
        x = x.clone() if hasattr(x, "clone") else np.array(x, copy=True)
        cols, state_cols = list(pair.output_index), list(pair.input_index)
        state = inputs[pair.input.value][..., -1, :][..., state_cols][..., None, :]  # last observation t
        x[..., cols] = x[..., cols] + state if sign > 0 else x[..., cols] - state
        out[key] = x
    return out


def to_delta(outputs: Mapping[str, Array], inputs: Mapping[str, Any], pairs: Sequence[RelativePair]) -> dict[str, Array]:
    """Absolute targets `[..., H, D]` → deltas to the state at the last input step (`inputs[...][..., -1, :]`).

    `outputs`/`inputs` are keyed by DataType value as in a batch or a window (`[..., T_in, D]` inputs);
    outputs without a pair, and items of no pair, are returned unchanged.
    """
    return _shifted(outputs, inputs, pairs, -1)


def to_absolute(outputs: Mapping[str, Array], inputs: Mapping[str, Any],
                pairs: Sequence[RelativePair]) -> dict[str, Array]:
    """Inverse of `to_delta`: predicted deltas `[..., H, D]` + the state at the last input step."""
    return _shifted(outputs, inputs, pairs, +1)


def merge_statistics(stats: Mapping[str, Sequence[float]], pair: RelativePair,
                     delta_stats: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    """An output's per-value statistics with the pair's items replaced by the deltas' (`delta_stats` per item)."""
    merged = {k: list(v) for k, v in stats.items()}
    for key in STAT_KEYS:
        if key not in merged:
            continue
        for j, position in enumerate(pair.output_index):
            merged[key][position] = float(delta_stats[key][j])
    return merged


def window_steps(window_rows: np.ndarray, window_ends: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Table rows of every target step of windows starting at rows `window_rows`, and each one's window.

    `window_ends[i]` is one past the last row of window i's episode: steps at or past it are padding
    (clamped in training and masked by `is_pad`) and left out. Returns `(target_rows, window)`, both
    `[M]`: delta m is `target[target_rows[m]] - state[window_rows[window[m]]]` (k = 0 .. horizon-1).
    """
    rows = window_rows[:, None] + np.arange(horizon)[None, :]
    valid = rows < window_ends[:, None]
    window = np.broadcast_to(np.arange(len(window_rows))[:, None], rows.shape)[valid]
    return rows[valid], window


def pairs_to_json(pairs: Sequence[RelativePair]) -> dict[str, Any]:
    """`{OUTPUT: {"input": INPUT, "items": [...]}}` for config.json (positions follow from the item lists)."""
    return {p.output.value: {"input": p.input.value, "items": list(p.items)} for p in pairs}


def pairs_from_json(data: Mapping[str, Any], outputs: Mapping[DataType, Sequence[str]],
                    inputs: Mapping[DataType, Sequence[str]]) -> list[RelativePair]:
    """Inverse of `pairs_to_json` against the model's item lists; raises ValueError when they do not fit."""
    pairs = []
    for output, entry in data.items():
        out_type, in_type = DataType.parse(output), DataType.parse(entry["input"])
        items = [str(i) for i in entry["items"]]
        missing = [i for i in items if i not in outputs.get(out_type, ()) or i not in inputs.get(in_type, ())]
        if missing or not items:
            raise ValueError(f"relative_actions.{output}: items {missing or items} are not both an output "
                             f"{out_type.value} and an input {in_type.value} item")
        pairs.append(make_pair(out_type, in_type, items, list(outputs[out_type]), list(inputs[in_type])))
    return pairs

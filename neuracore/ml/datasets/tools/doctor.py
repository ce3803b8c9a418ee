"""`doctor`: read a dataset and report what would hurt training, each finding with a suggested fix.

Checks, per robot (the rows of its episodes, the items it has):

- `constant`: a vector item whose every dimension is exactly constant, or whose std is below
  `NEAR_CONSTANT` x max(1, |mean|) (an item with only some constant dimensions, e.g. a pose that
  never turns, is `info`) -> the `input_robot_data_spec`/`output_robot_data_spec` override without it;
- `outliers`: values more than `outlier_margin` (default 3) q01..q99 spans outside [q01, q99]
  (stored statistics where spec.json has them, else computed) -> frames, episodes, the worst
  frames, and the `filter --drop-episodes` line;
- `idle`, `idle_start`, `idle_end`: stretches longer than `idle_seconds` (default 2 s) in which
  every moving dimension of the joint state (JOINT_POSITIONS and PARALLEL_GRIPPER_OPEN_AMOUNTS)
  changes per step by at most `IDLE_STEP_FRACTION` of its typical step (the 90th percentile of
  its |per-step change|); those at the start/end of an episode are reported apart (trim them);
- `action_lag`: for items in both an action type and its state type (JOINT_TARGET_POSITIONS /
  JOINT_POSITIONS, PARALLEL_GRIPPER_TARGET_OPEN_AMOUNTS / PARALLEL_GRIPPER_OPEN_AMOUNTS), the lag
  in frames at the peak of the cross-correlation of their per-step changes, pooled over episodes.
  A positive lag L means the state follows the action L frames later (1 is a usual controller
  delay); a typical lag other than 0 is `info`, more than `LAG_WARN_FRAMES` frames a `warning`;
  an item whose lag differs from the typical one by more than that is a finding of its own, a
  `warning` when its peak is sharp (correlation >= `LAG_SHARP_CORRELATION`: shifted timestamps)
  and `info` when broad (a rate-limited actuator such as a gripper);
- `episode_length`: episodes shorter than 25 % or longer than 400 % of the robot's median length
  (`warning`), or further than `LENGTH_MADS` robust deviations (1.4826 MAD, at least 20 % of the
  median) from it (`info`);
- `black_frames`, `frozen_frames`: in a sample of each episode's frames (one every 0.5 s, at most
  `MAX_CAMERA_SAMPLES` per episode, decoded as training decodes them) RGB frames whose mean
  intensity is below `BLACK_MEAN` (0-255), and runs of identical consecutive samples longer than
  `idle_seconds` while the joint state moves (a still robot in front of a still scene is `idle`).

Everything is read, nothing is written. Vector columns are read once, as numpy, and every check
is vectorised over frames; only the sampled camera frames are decoded.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from neuracore.ml.core.data_types import DataType, Modality
from neuracore.ml.core.errors import ConfigError
from neuracore.ml.datasets.format import ColumnSpec, DatasetSpec, column_name, decode_images, open_dataset
from neuracore.ml.datasets.tools.stats import _Rows

IDLE_SECONDS = 2.0
OUTLIER_MARGIN = 3.0
NEAR_CONSTANT = 1e-3  # std below this x max(1, |mean|): the item carries no information
IDLE_STEP_FRACTION = 0.05  # a step "still" when |change| <= this x the dimension's typical step
TYPICAL_STEP_PERCENTILE = 90  # typical step: robust to long idle phases (a median would be 0 there)
LAG_WARN_FRAMES = 2  # |typical lag| above this many frames is a warning
LAG_MIN_CORRELATION = 0.2  # below this peak correlation an item has no measurable lag
LAG_SHARP_CORRELATION = 0.5  # an item's own lag is a warning when its peak is at least this (a shift, not a slow joint)
LAG_SEARCH_S = 0.5  # lags searched: +-max(10 frames, this many seconds)
LENGTH_MADS = 3.0
LENGTH_MIN_SCALE = 0.2  # of the median: the robust scale's floor (equal lengths give MAD 0)
LENGTH_SHORT, LENGTH_LONG = 0.25, 4.0  # of the median length
BLACK_MEAN = 8.0
CAMERA_SAMPLE_S = 0.5
MAX_CAMERA_SAMPLES = 64
MOTION_TYPES = (DataType.JOINT_POSITIONS, DataType.PARALLEL_GRIPPER_OPEN_AMOUNTS)
LAG_PAIRS = ((DataType.JOINT_TARGET_POSITIONS, DataType.JOINT_POSITIONS),
             (DataType.PARALLEL_GRIPPER_TARGET_OPEN_AMOUNTS, DataType.PARALLEL_GRIPPER_OPEN_AMOUNTS))
CHECKS = ("constant", "outliers", "idle_start", "idle", "idle_end", "action_lag", "episode_length",
          "black_frames", "frozen_frames")
_DECODE_THREADS = 4
_SHOWN = 6  # episodes/stretches spelled out in a detail line


@dataclass
class Finding:
    """One problem: which check, how bad, where, what was seen and what to do about it."""

    check: str
    severity: str  # "warning" or "info"
    robot: str
    data_type: str | None
    item: str | None
    episodes: list[int]
    detail: str
    suggestion: str
    data: dict[str, Any] = field(default_factory=dict)  # the numbers behind `detail`

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


def parse_positive(value: Any, option: str, example: str) -> float:
    """A positive finite number from a CLI string or number; anything else is a one-line `ConfigError`."""
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{option} {value!r}: must be a positive number, e.g. {example}")
    return number


def episode_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the syntax of `filter --drop-episodes`)."""
    runs: list[list[int]] = []
    for i in sorted(set(indices)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _drop_line(name: str, episodes: list[int]) -> str:
    return f"python tools/dataset.py filter {name} --name {name}_clean --drop-episodes {episode_ranges(episodes)}"


_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _hydra_name(name: str) -> str:
    """An item or robot name as Hydra reads it inside a single-quoted shell argument."""
    # Words Hydra would read as a bool, null or number are quoted too.
    plain = _PLAIN.match(name) and name.lower() not in ("true", "false", "null", "none", "inf", "nan")
    return name if plain else json.dumps(name)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _n(count: int, word: str) -> str:
    """'1 episode', '3 episodes'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def _vec(values: np.ndarray) -> str:
    return _fmt(values[0]) if len(values) == 1 else "[" + ", ".join(_fmt(v) for v in values) + "]"


class _Robot:
    """One robot's rows: table rows, episode of each row, frame within it, and which steps stay in an episode."""

    def __init__(self, spec: DatasetSpec, robot: str) -> None:
        self.name = robot
        self.items = spec.robots[robot]
        self.episodes = [i for i, ep in enumerate(spec.episodes) if ep.robot == robot]
        starts = np.array([spec.episodes[i].start for i in self.episodes], np.int64)
        self.lengths = np.array([spec.episodes[i].length for i in self.episodes], np.int64)
        offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        n = int(self.lengths.sum())
        self.local_episode = np.repeat(np.arange(len(self.episodes)), self.lengths)
        self.frame = np.arange(n) - np.repeat(offsets, self.lengths)
        self.rows = np.repeat(starts, self.lengths) + self.frame
        self.all_rows = n == spec.num_frames  # the only robot: its rows are the table, no gather needed
        self.episode = np.asarray(self.episodes, np.int64)[self.local_episode]
        self.step_ok = self.local_episode[1:] == self.local_episode[:-1]  # step t: row t -> row t+1
        self.offsets = offsets

    def take(self, values: np.ndarray) -> np.ndarray:
        """This robot's rows of a whole-table array."""
        return values if self.all_rows else values[self.rows]


def _vector_columns(table: pa.Table, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """Every vector column as `[rows, items, width]` float32, read once."""
    out = {}
    for name, col in spec.columns.items():
        if DataType(col.data_type).modality == Modality.VECTOR:
            chunks = [c.flatten().to_numpy(zero_copy_only=False) for c in table.column(name).chunks]
            flat = chunks[0] if len(chunks) == 1 else np.concatenate([np.zeros(0, np.float32), *chunks])
            out[name] = flat.reshape(table.num_rows, len(col.items), col.item_shape[0])
    return out


def _robot_items(spec: DatasetSpec, robot: _Robot, dt: DataType) -> list[str]:
    """The robot's items of vector type `dt` (in its own order)."""
    col = spec.columns.get(column_name(dt))
    return [i for i in robot.items.get(dt.value, []) if col is not None and i in col.items]


def _block(spec: DatasetSpec, robot: _Robot, vectors: dict[str, np.ndarray], dt: DataType,
           items: list[str]) -> np.ndarray:
    """`[robot rows, len(items), width]` float64 values of `items` of vector type `dt`."""
    col_items = spec.columns[column_name(dt)].items
    return robot.take(vectors[column_name(dt)])[:, [col_items.index(i) for i in items]].astype(np.float64)


def _spec_line(robot: str, dt: DataType, kept: list[str], other_types: list[str]) -> str:
    """The data-spec override that keeps `kept` of `dt` (and every item of `other_types`)."""
    output = "TARGET" in dt.value
    if not kept:
        return (f"leave {dt.value} out of the model's data types ({'output' if output else 'input'}_data_types "
                f"or {'output' if output else 'input'}_robot_data_spec): none of its items varies")
    parts = [f"{dt.value}: [{', '.join(map(_hydra_name, kept))}]", *(f"{t}: []" for t in other_types)]
    line = f"'{'output' if output else 'input'}_robot_data_spec={{{_hydra_name(robot)}: {{{', '.join(parts)}}}}}'"
    return line + (" (list every data type the model takes: a robot data spec replaces the algorithm's defaults"
                   + (")" if output else "; output_robot_data_spec if it is an output)"))


def _check_constant(spec: DatasetSpec, robot: _Robot, vectors: dict[str, np.ndarray]) -> list[Finding]:
    out = []
    images = [t for t in robot.items if DataType(t).modality == Modality.IMAGE]
    for name in vectors:
        dt = DataType(spec.columns[name].data_type)
        items = _robot_items(spec, robot, dt)
        if not items:
            continue
        block = _block(spec, robot, vectors, dt, items)
        mean, std = block.mean(0), block.std(0)  # [items, width]
        lo, hi = block.min(0), block.max(0)
        exact = hi == lo
        const = exact | (std <= NEAR_CONSTANT * np.maximum(1.0, np.abs(mean)))
        dropped = [i for j, i in enumerate(items) if const[j].all()]
        kept = [i for i in items if i not in dropped]
        for j, item in enumerate(items):
            if not const[j].any():
                continue
            dims = [int(d) for d in np.flatnonzero(const[j])]
            whole = bool(const[j].all())
            if const[j].size == 1:
                what = (f"constant at {_fmt(lo[j, 0])}" if exact[j, 0] else
                        f"near-constant: std {_fmt(std[j, 0])} around {_fmt(mean[j, 0])}")
            else:
                what = (f"dimensions {dims} of {const[j].size} (near-)constant "
                        f"(std {', '.join(_fmt(std[j, d]) for d in dims)})")
            others = [d for d in dropped if d != item]
            fix = ("drop it" + (f" (and {', '.join(others)})" if others else "") + ": "
                   + _spec_line(robot.name, dt, kept, images if "TARGET" not in dt.value else [])) if whole else (
                "nothing to drop (its other dimensions vary); the constant ones only add a fixed input")
            out.append(Finding(
                "constant", "warning" if whole else "info", robot.name, dt.value, item, [],
                f"{what} in all {len(block)} frames", fix,
                {"dims": dims, "exact": bool(exact[j][dims].all()), "std": std[j].tolist(), "mean": mean[j].tolist(),
                 "min": lo[j].tolist(), "max": hi[j].tolist()}))
    return out


def _check_outliers(spec: DatasetSpec, robot: _Robot, vectors: dict[str, np.ndarray],
                    margin: float) -> list[Finding]:
    out = []
    for name in vectors:
        dt = DataType(spec.columns[name].data_type)
        items = _robot_items(spec, robot, dt)
        if not items:
            continue
        block = _block(spec, robot, vectors, dt, items)  # [n, items, width]
        stored = spec.statistics.get(dt.value, {})
        width = block.shape[2]
        q01 = np.empty((len(items), width))
        q99 = np.empty((len(items), width))
        missing = []
        for j, item in enumerate(items):
            s = stored.get(item, {})
            if len(s.get("q01", [])) == width and len(s.get("q99", [])) == width:
                q01[j], q99[j] = s["q01"], s["q99"]
            else:
                missing.append(j)
        if missing:
            q01[missing], q99[missing] = np.quantile(block[:, missing], [0.01, 0.99], axis=0)
        # A (near-)constant item's span is floored, so that a glitch in a joint that never moves still shows.
        span = np.maximum(q99 - q01, NEAR_CONSTANT * np.maximum(1.0, np.maximum(np.abs(q01), np.abs(q99))))
        excess = np.maximum(np.maximum(q01 - block, block - q99) / span, 0.0)  # spans outside [q01, q99]
        worst_dim = excess.argmax(2)  # [n, items]
        worst = np.take_along_axis(excess, worst_dim[..., None], 2)[..., 0]
        bad = worst > margin
        for j in np.flatnonzero(bad.any(0)):
            rows = np.flatnonzero(bad[:, j])
            order = rows[np.argsort(-worst[rows, j], kind="stable")][:5]
            episodes = sorted({int(e) for e in robot.episode[rows]})
            shown = [{"episode": int(robot.episode[r]), "frame": int(robot.frame[r]), "dim": int(worst_dim[r, j]),
                      "value": float(block[r, j, worst_dim[r, j]]), "spans_outside": float(worst[r, j])}
                     for r in order]
            item = items[j]
            bounds = f"{_vec(q01[j])}..{_vec(q99[j])}"
            worst_text = "; ".join(f"episode {w['episode']} frame {w['frame']}: {_fmt(w['value'])}"
                                   + (f" (dim {w['dim']})" if width > 1 else "")
                                   + f", {w['spans_outside']:.1f} spans out" for w in shown[:3])
            out.append(Finding(
                "outliers", "warning", robot.name, dt.value, item, episodes,
                f"{_n(len(rows), 'frame')} in {_n(len(episodes), 'episode')} more than {margin:g}x the q01..q99 span "
                f"outside q01..q99 {bounds}; worst: {worst_text}",
                f"inspect them (python tools/dataset.py show {spec.name} --episode {shown[0]['episode']} "
                f"--frame {shown[0]['frame']}), then drop the episodes: {_drop_line(spec.name, episodes)}",
                {"frames": len(rows), "q01": q01[j].tolist(), "q99": q99[j].tolist(),
                 "quantiles": "computed" if j in missing else "spec.json", "worst": shown}))
    return out


def _still_steps(spec: DatasetSpec, robot: _Robot, vectors: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray | None]:
    """(motion data types used, per step: is the joint state still), or None without a moving joint state.

    Still: every moving (not near-constant) dimension of JOINT_POSITIONS / PARALLEL_GRIPPER_OPEN_AMOUNTS
    changed by at most `IDLE_STEP_FRACTION` of its typical step; a step across episodes is never still.
    """
    parts, used = [], []
    for dt in MOTION_TYPES:
        items = _robot_items(spec, robot, dt)
        if items:
            block = _block(spec, robot, vectors, dt, items)
            parts.append(block.reshape(len(block), -1))
            used.append(dt.value)
    if not parts or not robot.step_ok.any():
        return used, None
    values = np.concatenate(parts, 1)
    delta = np.abs(np.diff(values, axis=0))
    typical = np.percentile(delta[robot.step_ok], TYPICAL_STEP_PERCENTILE, axis=0)
    # (Near-)constant dimensions (the `constant` check's) do not count: their noise is no motion.
    moving = (typical > 0) & (values.std(0) > NEAR_CONSTANT * np.maximum(1.0, np.abs(values.mean(0))))
    if not moving.any():
        return used, None
    return used, (delta[:, moving] <= IDLE_STEP_FRACTION * typical[moving]).all(1) & robot.step_ok


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends exclusive) of the runs of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _check_idle(spec: DatasetSpec, robot: _Robot, used: list[str], still: np.ndarray | None,
                idle_seconds: float) -> list[Finding]:
    if still is None:
        return []
    freq = spec.frequency
    starts, ends = _runs(still)
    steps = ends - starts
    long = steps / freq > idle_seconds
    kinds: dict[str, list[dict[str, Any]]] = {"idle_start": [], "idle": [], "idle_end": []}
    for s, e in zip(starts[long], ends[long]):  # steps s..e-1 still: frames frame[s]..frame[s] + (e - s)
        local = robot.local_episode[s]
        first = int(robot.frame[s])
        last = first + int(e - s)
        length = int(robot.lengths[local])
        kind = "idle_start" if first == 0 else "idle_end" if last == length - 1 else "idle"
        kinds[kind].append({"episode": int(robot.episode[s]), "start_frame": first, "end_frame": last,
                            "start_s": first / freq, "end_s": last / freq, "seconds": (last - first) / freq,
                            "episode_s": length / freq})
    out = []
    what = {"idle_start": "still at the start", "idle": "still in the middle", "idle_end": "still at the end"}
    for kind, stretches in kinds.items():
        if not stretches:
            continue
        episodes = sorted({s["episode"] for s in stretches})
        shown = ", ".join(f"{s['episode']} ({s['start_s']:.2f}-{s['end_s']:.2f} s)" for s in stretches[:_SHOWN])
        more = f" and {len(stretches) - _SHOWN} more" if len(stretches) > _SHOWN else ""
        total = sum(s["seconds"] for s in stretches)
        if kind == "idle":
            fix = ("a policy trained on pauses learns to stall: re-record or cut these stretches, or drop the "
                   f"episodes: {_drop_line(spec.name, episodes)}")
        else:
            side = "first" if kind == "idle_start" else "last"
            fix = (f"trim the {side} frames of these episodes before import (the importers take trimmed sources; "
                   f"there is no trim tool yet), or drop them: {_drop_line(spec.name, episodes)}")
        out.append(Finding(
            kind, "warning" if kind == "idle" else "info", robot.name, "+".join(used), None, episodes,
            f"{what[kind]} for more than {idle_seconds:g} s in {_n(len(episodes), 'episode')} ({total:.1f} s in all): "
            f"episode (time) {shown}{more}",
            fix, {"stretches": stretches, "threshold": f"every moving dimension's |step| <= {IDLE_STEP_FRACTION:g}x "
                                                          f"its {TYPICAL_STEP_PERCENTILE}th-percentile step"}))
    return out


def _padded_steps(values: np.ndarray, robot: _Robot, gap: int) -> np.ndarray:
    """Per-step changes `[n_steps + gaps, D]` with `gap` zero rows after each episode (no cross-episode products).

    Changes are clipped at 10x their typical |change| (`TYPICAL_STEP_PERCENTILE`): one glitch (the
    `outliers` check's) would otherwise outweigh every other step in the correlation.
    """
    delta = np.diff(values, axis=0)[robot.step_ok]
    if len(delta):
        magnitude = np.abs(delta)
        typical = np.percentile(magnitude, TYPICAL_STEP_PERCENTILE, axis=0)
        bound = np.where(typical > 0, 10 * typical, magnitude.max(0))
        delta = np.clip(delta, -bound, bound)
    steps = robot.lengths - 1
    out = np.zeros((int(steps.sum()) + gap * len(steps), values.shape[1]), np.float64)
    where = np.repeat(np.arange(len(steps)) * gap, steps) + np.arange(int(steps.sum()))
    out[where] = delta
    return out


def cross_correlation_lag(action: np.ndarray, state: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Per column of `[M, D]` per-step changes: (lag at the peak, peak correlation) over lags -max_lag..max_lag.

    A positive lag L means `state[t + L]` moves like `action[t]`.
    """
    m = len(action)
    lags = np.arange(-max_lag, max_lag + 1)
    corr = np.empty((len(lags), action.shape[1]))
    for k, lag in enumerate(lags):
        if lag >= 0:
            corr[k] = np.einsum("ij,ij->j", action[:m - lag], state[lag:])
        else:
            corr[k] = np.einsum("ij,ij->j", action[-lag:], state[:m + lag])
    norm = np.sqrt(np.einsum("ij,ij->j", action, action) * np.einsum("ij,ij->j", state, state))
    corr /= np.where(norm > 0, norm, np.inf)
    best = corr.argmax(0)
    return lags[best], corr[best, np.arange(action.shape[1])]


def _lag_fix(typical: int) -> str:
    """What to do about a typical action-state lag of `typical` frames (not 0)."""
    if typical > LAG_WARN_FRAMES:
        return (f"the state reaches the action {typical} frames later: a slow controller, or action timestamps "
                "early; check the recording's clocks and re-import with them fixed")
    if typical < -LAG_WARN_FRAMES:
        return (f"the state moves {-typical} frames before its action: actions recorded late; fix their timestamps "
                "at the source and re-import (a policy trained on this learns stale actions)")
    if typical > 0:
        return f"{_n(typical, 'frame')} is a usual controller delay: nothing to do"
    return (f"the state moves {_n(-typical, 'frame')} before its action: actions may be stamped slightly late; "
            "check the recording's clocks")


def _check_lag(spec: DatasetSpec, robot: _Robot, vectors: dict[str, np.ndarray]) -> list[Finding]:
    out = []
    if len(robot.lengths) == 0 or robot.lengths.max() < 3:
        return out
    max_lag = int(min(max(10, math.ceil(LAG_SEARCH_S * spec.frequency)), robot.lengths.max() - 2))
    for action_dt, state_dt in LAG_PAIRS:
        items = [i for i in _robot_items(spec, robot, action_dt) if i in _robot_items(spec, robot, state_dt)]
        if not items:
            continue
        width = action_dt.item_width
        a = _block(spec, robot, vectors, action_dt, items).reshape(len(robot.rows), -1)
        s = _block(spec, robot, vectors, state_dt, items).reshape(len(robot.rows), -1)
        lags, peaks = cross_correlation_lag(_padded_steps(a, robot, max_lag), _padded_steps(s, robot, max_lag),
                                            max_lag)
        per_item = {}
        for j, item in enumerate(items):
            cols = slice(j * width, (j + 1) * width)
            best = int(np.argmax(peaks[cols]))
            if peaks[cols][best] >= LAG_MIN_CORRELATION:
                per_item[item] = {"lag": int(lags[cols][best]), "correlation": float(peaks[cols][best])}
        if not per_item:
            continue
        typical = int(np.round(np.median([v["lag"] for v in per_item.values()])))
        pair = f"{action_dt.value}/{state_dt.value}"
        lag_set = {v["lag"] for v in per_item.values()}
        shown = (f"all {len(per_item)} {lag_set.pop():+d}" if len(lag_set) == 1 and len(per_item) > 1 else
                 ", ".join(f"{i} {v['lag']:+d}" for i, v in per_item.items()))
        meaning = "the state follows the action" if typical > 0 else "the state moves before the action"
        if typical != 0:
            out.append(Finding(
                "action_lag", "warning" if abs(typical) > LAG_WARN_FRAMES else "info", robot.name, pair, None, [],
                f"typical lag {typical:+d} frame{'' if abs(typical) == 1 else 's'} ({typical / spec.frequency * 1000:+.0f} ms): {meaning}; per item "
                f"(frames): {shown}",
                _lag_fix(typical),
                {"typical_lag": typical, "items": per_item, "max_lag_searched": max_lag}))
        for item, v in per_item.items():
            if abs(v["lag"] - typical) <= LAG_WARN_FRAMES:
                continue
            sharp = v["correlation"] >= LAG_SHARP_CORRELATION
            out.append(Finding(
                "action_lag", "warning" if sharp else "info", robot.name, pair, item, [],
                f"lag {v['lag']:+d} frames against the typical {typical:+d} (correlation {v['correlation']:.2f})",
                "this item's action and state streams are out of step with the others: check its timestamps and "
                "item mapping at the source" if sharp else "a broad, weak peak: a slow or rate-limited actuator (a "
                "gripper moving at a bounded speed) looks like this, a timestamp offset gives a sharp one; check "
                "if unexpected", {"lag": v["lag"], "typical_lag": typical, "correlation": v["correlation"]}))
    return out


def _check_lengths(spec: DatasetSpec, robot: _Robot) -> list[Finding]:
    lengths = robot.lengths.astype(np.float64)
    if len(lengths) < 3:
        return []
    median = float(np.median(lengths))
    scale = max(1.4826 * float(np.median(np.abs(lengths - median))), LENGTH_MIN_SCALE * median)
    far = {"short": lengths < LENGTH_SHORT * median, "long": lengths > LENGTH_LONG * median}
    odd = {"short": lengths < median - LENGTH_MADS * scale, "long": lengths > median + LENGTH_MADS * scale}
    out = []
    for kind in ("short", "long"):
        for severity, mask in (("warning", far[kind]), ("info", odd[kind] & ~far[kind])):
            if not mask.any():
                continue
            episodes = [int(robot.episodes[k]) for k in np.flatnonzero(mask)]
            shown = ", ".join(f"{e} ({spec.episodes[e].length})" for e in episodes[:_SHOWN])
            more = f" and {len(episodes) - _SHOWN} more" if len(episodes) > _SHOWN else ""
            how = (f"{'under' if kind == 'short' else 'over'} {(LENGTH_SHORT if kind == 'short' else LENGTH_LONG):.0%} "
                   "of" if severity == "warning" else f"much {'shorter' if kind == 'short' else 'longer'} than")
            out.append(Finding(
                "episode_length", severity, robot.name, None, None, episodes,
                f"{_n(len(episodes), 'episode')} {how} the median {median:g} frames ({median / spec.frequency:.1f} s): "
                f"episode (frames) {shown}{more}",
                f"check them (aborted or never-ending recordings?), then: {_drop_line(spec.name, episodes)}",
                {"median": median, "robust_scale": scale,
                 "lengths": {str(e): spec.episodes[e].length for e in episodes}}))
    return out


def _sample_rows(spec: DatasetSpec, robot: _Robot) -> tuple[np.ndarray, np.ndarray]:
    """(table rows, robot-local rows) of the sampled frames of every episode, ascending."""
    stride = np.maximum(max(1, math.ceil(CAMERA_SAMPLE_S * spec.frequency)),
                        np.ceil(robot.lengths / MAX_CAMERA_SAMPLES).astype(np.int64))
    counts = (robot.lengths + stride - 1) // stride
    first = np.repeat(robot.offsets, counts)
    within = (np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)) * np.repeat(stride, counts)
    local = first + within
    return robot.rows[local], local


def _binary_rows(column: pa.ChunkedArray, rows: np.ndarray) -> list[bytes]:
    """The encoded frames (bytes) of the ascending table rows `rows`, sliced from each chunk's buffers.

    One `take` per chunk (`stats._encoded_rows`) costs about 2 ms, which a table of thousands of
    small chunks multiplies into seconds; slicing the offsets and data buffers costs nothing per chunk.
    """
    lengths = np.array([len(c) for c in column.chunks], np.int64)
    ends = np.cumsum(lengths)
    chunk_of = np.searchsorted(ends, rows, side="right")
    out: list[bytes] = []
    for c in np.unique(chunk_of):
        chunk = column.chunks[c]
        if chunk.null_count:  # never in a dataset `materialize` wrote; the slow, general way
            out.extend(chunk.take(pa.array(rows[chunk_of == c] - (ends[c] - lengths[c]))).to_pylist())
            continue
        wide = pa.types.is_large_binary(chunk.type) or pa.types.is_large_string(chunk.type)
        _, offsets_buf, data_buf = chunk.buffers()
        offsets = np.frombuffer(offsets_buf, np.int64 if wide else np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
        data = memoryview(data_buf)
        for i in (rows[chunk_of == c] - (ends[c] - lengths[c])).tolist():
            out.append(bytes(data[offsets[i]:offsets[i + 1]]))
    return out


def _frame_blocks(table: pa.Table, spec: DatasetSpec, name: str, col: ColumnSpec,
                  rows: np.ndarray) -> Iterator[np.ndarray]:
    """`[<=256, H, W, C]` frames of the ascending table rows `rows`, in order, decoded as training decodes them.

    Encoded frames are decoded by a few threads (Pillow releases the GIL), a bounded number of blocks ahead.
    """
    blocks = np.array_split(rows, max(1, math.ceil(len(rows) / 256)))
    if col.encoding == "raw":
        read = _Rows(table.column(name), int(np.prod(col.item_shape)))
        for block in blocks:
            yield read(block).reshape(len(block), *col.item_shape)
        return
    column = table.column(name)

    def decode(block: np.ndarray) -> np.ndarray:
        return decode_images(_binary_rows(column, block), col.item_shape, f"dataset {spec.name!r} column {name!r}")

    threads = max(1, min(_DECODE_THREADS, os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[np.ndarray]] = deque()
        for block in blocks:
            pending.append(pool.submit(decode, block))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _black_and_same(blocks: Iterator[np.ndarray], count: int, uint8: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per sampled frame: (black, identical to the previous sample), one block of frames in memory at a time."""
    black = np.zeros(count, bool)
    same = np.zeros(count, bool)
    previous = None
    at = 0
    for frames in blocks:
        flat = frames.reshape(len(frames), -1)
        if uint8:  # integer sums: a float mean of every pixel would cost more than the comparison below
            black[at:at + len(flat)] = flat.sum(1, dtype=np.uint64) < BLACK_MEAN * flat.shape[1]
        before = flat[:-1] if previous is None else np.concatenate([previous[None], flat[:-1]])
        same[at + (previous is None):at + len(flat)] = ~(flat[previous is None:] != before).any(1)
        previous = flat[-1].copy()
        at += len(flat)
    return black, same


def _check_cameras(table: pa.Table, spec: DatasetSpec, robot: _Robot, still: np.ndarray | None,
                   idle_seconds: float) -> list[Finding]:
    out = []
    rows, local = _sample_rows(spec, robot)
    # Moving steps before each robot-local row: a frozen run counts only where the joint state moved.
    moved = None if still is None else np.concatenate([[0], np.cumsum(~still & robot.step_ok)])
    sampled = {int(e): int(c) for e, c in zip(*np.unique(robot.episode[local], return_counts=True))}
    for dt in (DataType.RGB_IMAGES, DataType.DEPTH_IMAGES):
        for cam in robot.items.get(dt.value, []):
            name = column_name(dt, cam)
            col = spec.columns.get(name)
            if col is None:
                continue
            black, same = _black_and_same(_frame_blocks(table, spec, name, col, rows), len(rows), col.dtype == "uint8")
            if black.any():
                per = {int(e): int(c) for e, c in zip(*np.unique(robot.episode[local[black]], return_counts=True))}
                shown = ", ".join(f"{e} ({c}/{sampled[e]})" for e, c in list(per.items())[:_SHOWN])
                more = f" and {len(per) - _SHOWN} more" if len(per) > _SHOWN else ""
                episodes = sorted(per)
                out.append(Finding(
                    "black_frames", "warning", robot.name, dt.value, cam, episodes,
                    f"{int(black.sum())} of {len(rows)} sampled frames are black (mean < {BLACK_MEAN:g}/255) in "
                    f"{_n(len(per), 'episode')}: episode (black/sampled) {shown}{more}",
                    f"check the camera's exposure and cabling, and the camera mapping; drop the episodes: "
                    f"{_drop_line(spec.name, episodes)}", {"black": per, "sampled": sampled}))
            same[1:] &= robot.local_episode[local[1:]] == robot.local_episode[local[:-1]]
            same[1:] &= ~black[1:] & ~black[:-1]  # black frames are reported above
            stretches = []
            for s, e in zip(*_runs(same)):  # samples s-1 .. e-1 identical
                a, b = local[s - 1], local[e - 1]
                if (b - a) / spec.frequency <= idle_seconds or (moved is not None and moved[b] == moved[a]):
                    continue
                first = int(robot.frame[a])
                stretches.append({"episode": int(robot.episode[a]), "start_frame": first,
                                  "end_frame": first + int(b - a), "start_s": first / spec.frequency,
                                  "end_s": (first + int(b - a)) / spec.frequency})
            if stretches:
                episodes = sorted({s["episode"] for s in stretches})
                shown = ", ".join(f"{s['episode']} ({s['start_s']:.2f}-{s['end_s']:.2f} s)"
                                  for s in stretches[:_SHOWN])
                more = f" and {len(stretches) - _SHOWN} more" if len(stretches) > _SHOWN else ""
                out.append(Finding(
                    "frozen_frames", "warning", robot.name, dt.value, cam, episodes,
                    f"identical sampled frames for more than {idle_seconds:g} s while the joint state moves, in "
                    f"{_n(len(episodes), 'episode')}: episode (time) {shown}{more}",
                    f"the camera stream stalled: drop the episodes: {_drop_line(spec.name, episodes)}",
                    {"stretches": stretches}))
    return out


def diagnose_dataset(name: str, *, idle_seconds: float | str = IDLE_SECONDS,
                     outlier_margin: float | str = OUTLIER_MARGIN, root: Path | None = None) -> dict[str, Any]:
    """Run every check on dataset `name`; returns `{"name", "episodes", "frames", "frequency", "findings", "counts"}`.

    `findings` are `Finding`s in `CHECKS` order, per robot; nothing is written.
    """
    idle_seconds = parse_positive(idle_seconds, "--idle-seconds", "2")
    outlier_margin = parse_positive(outlier_margin, "--outlier-margin", "3")
    ds = open_dataset(name, root)
    spec = ds.spec
    vectors = _vector_columns(ds.table, spec)
    findings: list[Finding] = []
    for robot_name in spec.robots:
        robot = _Robot(spec, robot_name)
        if not robot.episodes:
            continue
        used, still = _still_steps(spec, robot, vectors)
        findings += _check_constant(spec, robot, vectors)
        findings += _check_outliers(spec, robot, vectors, outlier_margin)
        findings += _check_idle(spec, robot, used, still, idle_seconds)
        findings += _check_lag(spec, robot, vectors)
        findings += _check_lengths(spec, robot)
        findings += _check_cameras(ds.table, spec, robot, still, idle_seconds)
    findings.sort(key=lambda f: CHECKS.index(f.check))  # stable: robots and items keep their order per check
    counts = {s: sum(f.severity == s for f in findings) for s in ("warning", "info")}
    return {"name": name, "episodes": len(spec.episodes), "frames": spec.num_frames, "frequency": spec.frequency,
            "robots": list(spec.robots), "idle_seconds": idle_seconds, "outlier_margin": outlier_margin,
            "findings": findings, "counts": counts}


_TITLES = {
    "constant": "constant or near-constant items",
    "outliers": "outliers",
    "idle_start": "idle at the start of episodes",
    "idle": "idle in the middle of episodes",
    "idle_end": "idle at the end of episodes",
    "action_lag": "action-state lag",
    "episode_length": "episode lengths",
    "black_frames": "black camera frames",
    "frozen_frames": "frozen camera frames",
}


def format_report(result: dict[str, Any]) -> str:
    """The human report: findings grouped by check, each with its severity and a fix line, then a summary."""
    head = (f"doctor {result['name']!r}: {result['episodes']} episodes, {result['frames']} frames at "
            f"{result['frequency']:g} Hz, robots {', '.join(result['robots'])}")
    lines = [head]
    findings: list[Finding] = result["findings"]
    for check in CHECKS:
        group = [f for f in findings if f.check == check]
        if not group:
            continue
        lines.append(f"{_TITLES[check]} ({len(group)}):")
        for f in group:
            where = " ".join(x for x in (f.robot, f.data_type, f.item) if x)
            lines.append(f"  [{f.severity}] {where}: {f.detail}")
            lines.append(f"    fix: {f.suggestion}")
    c = result["counts"]
    lines.append(f"summary: {_n(c['warning'], 'warning')}, {c['info']} info" if findings else
                 "summary: no findings (constant items, outliers, idle stretches, action lag, episode lengths, "
                 "black and frozen frames checked)")
    return "\n".join(lines)


__all__ = ["CHECKS", "Finding", "cross_correlation_lag", "diagnose_dataset", "episode_ranges", "format_report",
           "parse_positive"]

"""`diagnose_dataset`: each check on a tiny dataset that triggers it, and nothing on a clean one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError, DatasetError
from neuracore.ml.datasets.format import open_dataset
from neuracore.ml.datasets.materialize import DatasetLayout, Episode, materialize
from neuracore.ml.datasets.tools import diagnose_dataset
from neuracore.ml.datasets.tools.doctor import (
    CHECKS,
    _hydra_name,
    cross_correlation_lag,
    episode_ranges,
    format_report,
)

JP, JTP, RGB = DataType.JOINT_POSITIONS, DataType.JOINT_TARGET_POSITIONS, DataType.RGB_IMAGES
JOINTS = ("a", "b", "c")
FREQ = 10.0


def walk(n: int, seed: int, dims: int = len(JOINTS)) -> np.ndarray:
    """A random walk (white per-step changes): no idle steps, no outliers, a sharp cross-correlation peak."""
    return np.cumsum(np.random.default_rng(seed).normal(0, 0.1, (n, dims)), 0).astype(np.float32)


def noise(n: int, seed: int, size: int = 16, high: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (n, size, size, 3), dtype=np.uint8)


def build(root: Path, name: str, states: list[np.ndarray], actions: list[np.ndarray] | None = None,
          frames: list[np.ndarray] | None = None, encoding: str = "raw", robot: str = "arm",
          joints: tuple[str, ...] = JOINTS) -> None:
    """Materialise `states` (and `actions`, default = states; `frames` of camera `top`) as episodes."""
    actions = states if actions is None else actions
    types = {JP: list(joints), JTP: list(joints)}
    shapes = {}
    if frames is not None:
        types[RGB] = ["top"]
        shapes = {RGB: {"top": list(frames[0].shape[1:])}}
    episodes = []
    for e, (q, a) in enumerate(zip(states, actions)):
        data = {JP: {j: q[:, k] for k, j in enumerate(joints)}, JTP: {j: a[:, k] for k, j in enumerate(joints)}}
        if frames is not None:
            data[RGB] = {"top": frames[e]}
        episodes.append(Episode(robot=robot, data=data))
    materialize(name, episodes, DatasetLayout(robots={robot: types}, item_shapes=shapes, image_encoding=encoding),
                FREQ, root=root)


def clean(n: int = 4) -> list[np.ndarray]:
    return [walk(length, seed) for seed, length in enumerate((40, 40, 42, 38, 40, 41)[:n])]


def found(result: dict) -> list[tuple]:
    """(check, severity, robot, data_type, item, episodes) of every finding, in report order."""
    return [(f.check, f.severity, f.robot, f.data_type, f.item, f.episodes) for f in result["findings"]]


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_clean_dataset_has_no_findings(tmp_path: Path, encoding: str) -> None:
    root = tmp_path / "datasets"
    states = clean()
    build(root, "ok", states, frames=[noise(len(q), 10 + e) for e, q in enumerate(states)], encoding=encoding)
    before = {p: p.stat().st_mtime_ns for p in (root / "ok").rglob("*")}
    result = diagnose_dataset("ok", root=root)
    assert found(result) == []
    assert result["counts"] == {"warning": 0, "info": 0}
    assert (result["episodes"], result["frames"], result["frequency"]) == (4, 160, 10.0)
    assert format_report(result).splitlines() == [
        "doctor 'ok': 4 episodes, 160 frames at 10 Hz, robots arm",
        ("summary: no findings (constant items, outliers, idle stretches, action lag, episode lengths, black and "
         "frozen frames checked)")]
    assert {p: p.stat().st_mtime_ns for p in (root / "ok").rglob("*")} == before  # it only reads


def test_constant_and_near_constant_items(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    states = clean()
    for e, q in enumerate(states):
        q[:, 1] = 0.2 + np.random.default_rng(e).normal(0, 1e-5, len(q))  # b: sensor noise around 0.2
        q[:, 2] = 0.5  # c: exactly constant
    build(root, "const", states, frames=[noise(len(q), e) for e, q in enumerate(states)])
    result = diagnose_dataset("const", root=root)
    assert found(result) == [
        ("constant", "warning", "arm", "JOINT_POSITIONS", "b", []),
        ("constant", "warning", "arm", "JOINT_POSITIONS", "c", []),
        ("constant", "warning", "arm", "JOINT_TARGET_POSITIONS", "b", []),
        ("constant", "warning", "arm", "JOINT_TARGET_POSITIONS", "c", []),
    ]
    b, c = result["findings"][:2]
    assert c.detail == "constant at 0.5 in all 160 frames" and c.data["exact"] is True
    assert b.detail.startswith("near-constant: std ") and b.data["exact"] is False
    assert c.suggestion == ("drop it (and b): 'input_robot_data_spec={arm: {JOINT_POSITIONS: [a], RGB_IMAGES: []}}' "
                            "(list every data type the model takes: a robot data spec replaces the algorithm's "
                            "defaults; output_robot_data_spec if it is an output)")
    assert result["findings"][3].suggestion.startswith(
        "drop it (and b): 'output_robot_data_spec={arm: {JOINT_TARGET_POSITIONS: [a]}}'")
    # the near-constant joint's noise does not hide idle stretches, nor do constant joints make outliers
    assert not any(f.check in ("outliers", "idle", "idle_start", "idle_end") for f in result["findings"])


def test_every_item_constant_suggests_leaving_the_data_type_out(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    states = clean(3)
    actions = [np.zeros_like(q) for q in states]
    build(root, "zero", states, actions)
    result = diagnose_dataset("zero", root=root)
    assert found(result) == [("constant", "warning", "arm", "JOINT_TARGET_POSITIONS", i, []) for i in JOINTS]
    assert result["findings"][0].suggestion.startswith(
        "drop it (and b, c): leave JOINT_TARGET_POSITIONS out of the model's data types (output_data_types or "
        "output_robot_data_spec)")


def test_outliers_name_the_episodes_and_the_worst_frames(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    states = clean()
    actions = [q.copy() for q in states]
    states[2][7, 0] = 50.0  # a glitch of joint a
    states[3][30, 0] = -40.0
    build(root, "spiky", states, actions)
    result = diagnose_dataset("spiky", root=root)
    assert found(result) == [("outliers", "warning", "arm", "JOINT_POSITIONS", "a", [2, 3])]
    f = result["findings"][0]
    assert f.data["frames"] == 2 and f.data["quantiles"] == "spec.json"
    assert [(w["episode"], w["frame"], w["value"]) for w in f.data["worst"]] == [(2, 7, 50.0), (3, 30, -40.0)]
    assert "worst: episode 2 frame 7: 50" in f.detail
    assert f.suggestion == ("inspect them (python tools/dataset.py show spiky --episode 2 --frame 7), then drop the "
                            "episodes: python tools/dataset.py filter spiky --name spiky_clean --drop-episodes 2-3")
    # a wider margin lets the smaller glitch pass
    spans = {w["episode"]: w["spans_outside"] for w in f.data["worst"]}
    wide = diagnose_dataset("spiky", outlier_margin=(spans[2] + spans[3]) / 2, root=root)
    assert [g.episodes for g in wide["findings"]] == [[2]]


def test_idle_stretches_at_the_start_in_the_middle_and_at_the_end(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    states = [walk(40, seed) for seed in range(5)]
    states[1][:25] = states[1][24]  # still for frames 0..24: 2.4 s
    states[2][10:36] = states[2][10]  # frames 10..35: 2.5 s
    states[3][15:] = states[3][15]  # frames 15..39: 2.4 s
    states[4][5:20] = states[4][5]  # frames 5..19: 1.4 s, shorter than 2 s
    build(root, "idle", states)
    result = diagnose_dataset("idle", root=root)
    assert found(result) == [
        ("idle_start", "info", "arm", "JOINT_POSITIONS", None, [1]),
        ("idle", "warning", "arm", "JOINT_POSITIONS", None, [2]),
        ("idle_end", "info", "arm", "JOINT_POSITIONS", None, [3]),
    ]
    stretches = [f.data["stretches"][0] for f in result["findings"]]
    assert [(s["episode"], s["start_frame"], s["end_frame"]) for s in stretches] == [(1, 0, 24), (2, 10, 35),
                                                                                     (3, 15, 39)]
    assert stretches[1]["start_s"] == 1.0 and stretches[1]["end_s"] == 3.5
    assert "episode (time) 2 (1.00-3.50 s)" in result["findings"][1].detail
    assert result["findings"][0].suggestion.startswith("trim the first frames of these episodes")
    assert result["findings"][1].suggestion.endswith("filter idle --name idle_clean --drop-episodes 2")
    assert [f.episodes for f in diagnose_dataset("idle", idle_seconds=1.0, root=root)["findings"]] == [[1], [2, 4],
                                                                                                      [3]]
    assert diagnose_dataset("idle", idle_seconds="2.45", root=root)["findings"][0].check == "idle"


@pytest.mark.parametrize(("shift", "severity"), [(3, "warning"), (1, "info"), (-4, "warning")])
def test_action_lag_is_the_shift(tmp_path: Path, shift: int, severity: str) -> None:
    # action[t] = state[t + shift]: the state follows the action `shift` frames later
    root = tmp_path / "datasets"
    long = [walk(60, seed) for seed in range(4)]
    states = [q[6:54] for q in long]
    actions = [q[6 + shift:54 + shift] for q in long]
    build(root, "lag", states, actions)
    result = diagnose_dataset("lag", root=root)
    assert found(result) == [("action_lag", severity, "arm", "JOINT_TARGET_POSITIONS/JOINT_POSITIONS", None, [])]
    f = result["findings"][0]
    assert f.data["typical_lag"] == shift and {i: v["lag"] for i, v in f.data["items"].items()} == dict.fromkeys(
        JOINTS, shift)
    assert f.detail.startswith(f"typical lag {shift:+d} frame{'' if shift == 1 else 's'} ({shift * 100:+d} ms)")
    assert f.detail.endswith(f"per item (frames): all 3 {shift:+d}")
    if shift == -4:
        assert "actions recorded late" in f.suggestion


def test_a_glitch_does_not_hide_the_lag(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    long = [walk(60, seed) for seed in range(4)]
    states = [q[6:54].copy() for q in long]
    actions = [q[8:56] for q in long]
    states[1][20, 0] = 80.0
    build(root, "glitch", states, actions)
    result = diagnose_dataset("glitch", root=root)
    assert found(result) == [("outliers", "warning", "arm", "JOINT_POSITIONS", "a", [1]),
                             ("action_lag", "info", "arm", "JOINT_TARGET_POSITIONS/JOINT_POSITIONS", None, [])]
    assert {i: v["lag"] for i, v in result["findings"][1].data["items"].items()} == dict.fromkeys(JOINTS, 2)


def test_one_item_out_of_step(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    long = [walk(60, seed) for seed in range(4)]
    states = [q[6:54] for q in long]
    actions = [q[6:54].copy() for q in long]
    for a, q in zip(actions, long):
        a[:, 2] = q[11:59, 2]  # c's action 5 frames ahead of its state
    build(root, "skew", states, actions)
    result = diagnose_dataset("skew", root=root)
    assert found(result) == [("action_lag", "warning", "arm", "JOINT_TARGET_POSITIONS/JOINT_POSITIONS", "c", [])]
    assert result["findings"][0].data["lag"] == 5 and result["findings"][0].data["typical_lag"] == 0


def test_cross_correlation_lag_directly() -> None:
    x = np.random.default_rng(0).normal(size=(500, 2))
    state = np.concatenate([np.zeros((7, 2)), x[:-7]])  # state[t + 7] = action[t]
    lags, peaks = cross_correlation_lag(x, state, 10)
    assert lags.tolist() == [7, 7] and (peaks > 0.95).all()


def test_episode_lengths_far_from_the_median(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    # median 40, MAD 2: the robust scale is its floor, 20 % of the median (8 frames): flagged beyond 40 +- 24
    states = [walk(n, seed) for seed, n in enumerate((40, 40, 42, 38, 40, 41, 39, 40, 8, 200, 70, 14, 60))]
    build(root, "len", states)
    result = diagnose_dataset("len", root=root)
    assert found(result) == [("episode_length", "warning", "arm", None, None, [8]),
                             ("episode_length", "info", "arm", None, None, [11]),
                             ("episode_length", "warning", "arm", None, None, [9]),
                             ("episode_length", "info", "arm", None, None, [10])]
    assert [f.detail for f in result["findings"][:2]] == [
        "1 episode under 25% of the median 40 frames (4.0 s): episode (frames) 8 (8)",
        "1 episode much shorter than the median 40 frames (4.0 s): episode (frames) 11 (14)"]
    assert result["findings"][2].detail.startswith("1 episode over 400% of the median")
    assert result["findings"][3].suggestion.endswith("filter len --name len_clean --drop-episodes 10")
    assert result["findings"][3].data["lengths"] == {"10": 70}


@pytest.mark.parametrize("encoding", ["raw", "png", "jpeg"])
def test_black_and_frozen_frames(tmp_path: Path, encoding: str) -> None:
    root = tmp_path / "datasets"
    states = clean()
    frames = [noise(len(q), 10 + e) for e, q in enumerate(states)]
    frames[1] = noise(len(states[1]), 1, high=10)  # episode 1: black (mean ~4.5 of 255)
    frames[2][10:] = frames[2][10]  # episode 2: the camera froze at frame 10 while the arm moves
    states[3][10:] = states[3][10]  # episode 3: arm and scene both still from frame 10: idle, not frozen
    frames[3][10:] = frames[3][10]
    build(root, "cam", states, frames=frames, encoding=encoding)
    result = diagnose_dataset("cam", root=root)
    assert found(result) == [
        ("idle_end", "info", "arm", "JOINT_POSITIONS", None, [3]),
        ("black_frames", "warning", "arm", "RGB_IMAGES", "top", [1]),
        ("frozen_frames", "warning", "arm", "RGB_IMAGES", "top", [2]),
    ]
    black, frozen = result["findings"][1:]
    assert black.data["black"] == {1: 8} and black.data["sampled"] == {0: 8, 1: 8, 2: 9, 3: 8}
    assert "8 of 33 sampled frames are black" in black.detail
    # samples every 5th frame (0.5 s at 10 Hz): 10, 15, ..., 40 are the same frame
    assert [(s["episode"], s["start_frame"], s["end_frame"]) for s in frozen.data["stretches"]] == [(2, 10, 40)]


def test_two_robots_are_checked_apart(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    arm = [walk(40, s) for s in range(3)]
    bot = [walk(40, 10 + s, dims=2) for s in range(3)]
    for q in bot:
        q[:, 1] = 1.5  # bot's d never moves; the arm has no d (zero-filled rows for it)
    layout = DatasetLayout(robots={"arm": {JP: list(JOINTS), JTP: list(JOINTS)}, "bot": {JP: ["a", "d"]}})
    episodes = [Episode("arm", {JP: {j: q[:, k] for k, j in enumerate(JOINTS)},
                                JTP: {j: q[:, k] for k, j in enumerate(JOINTS)}}) for q in arm]
    episodes += [Episode("bot", {JP: {"a": q[:, 0], "d": q[:, 1]}}) for q in bot]
    materialize("two", episodes, layout, FREQ, root=root)
    result = diagnose_dataset("two", root=root)
    assert found(result) == [("constant", "warning", "bot", "JOINT_POSITIONS", "d", [])]
    assert result["findings"][0].suggestion.startswith("drop it: 'input_robot_data_spec={bot: {JOINT_POSITIONS: [a]}}'")


def test_findings_are_json(tmp_path: Path) -> None:
    root = tmp_path / "datasets"
    states = clean()
    states[0][5, 1] = 99.0
    build(root, "j", states)
    findings = [f.to_json() for f in diagnose_dataset("j", root=root)["findings"]]
    parsed = json.loads(json.dumps(findings))
    assert [set(f) for f in parsed] == [{"check", "severity", "robot", "data_type", "item", "episodes", "detail",
                                         "suggestion", "data"}] * 2
    assert [(f["check"], f["data_type"], f["item"], f["episodes"]) for f in parsed] == [
        ("outliers", "JOINT_POSITIONS", "b", [0]), ("outliers", "JOINT_TARGET_POSITIONS", "b", [0])]
    assert set(CHECKS) >= {f["check"] for f in parsed}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"idle_seconds": "0"}, "--idle-seconds '0': must be a positive number, e.g. 2"),
    ({"idle_seconds": "abc"}, "--idle-seconds 'abc': must be a positive number, e.g. 2"),
    ({"idle_seconds": "nan"}, "--idle-seconds 'nan': must be a positive number, e.g. 2"),
    ({"outlier_margin": "-1"}, "--outlier-margin '-1': must be a positive number, e.g. 3"),
    ({"outlier_margin": True}, "--outlier-margin True: must be a positive number, e.g. 3"),
])
def test_bad_options_are_one_line(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        diagnose_dataset("anything", root=tmp_path, **kwargs)
    assert str(err.value) == message


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"^dataset_name='nope': no dataset under "):
        diagnose_dataset("nope", root=tmp_path)


def test_episode_ranges_and_names_in_overrides() -> None:
    assert episode_ranges([5, 0, 1, 2, 9, 8]) == "0-2,5,8-9"
    assert [_hydra_name(n) for n in ("joint_1", "left arm", "true", "7", "wrist.roll")] == [
        "joint_1", '"left arm"', '"true"', '"7"', "wrist.roll"]


def test_demo_dataset_has_no_warnings(home: Path) -> None:
    result = diagnose_dataset("demo")
    assert result["episodes"] == 12 and result["counts"]["warning"] == 0
    assert [(f.check, f.data_type) for f in result["findings"]] == [
        ("action_lag", "JOINT_TARGET_POSITIONS/JOINT_POSITIONS")]
    assert result["findings"][0].data["typical_lag"] > 0  # the arm reaches its target a few steps later
    assert open_dataset("demo").spec.fingerprint  # still there, untouched

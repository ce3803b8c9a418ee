"""ALOHA bimanual ViperX tasks (gym-aloha's MuJoCo models) and the ACT paper's scripted demonstrations.

Tasks: `transfer_cube` (the right arm picks the red cube and hands it to the left arm) and
`insertion` (each arm picks one part; the peg goes into the socket). 50 Hz, 400 steps per episode
(as in the ACT paper), reward stages 0..4, success = reward 4.

Joint convention (gym-aloha's `JOINTS`, 14 items): per arm `waist, shoulder, elbow, forearm_roll,
wrist_angle, wrist_rotate` in radians, then `gripper` as the *normalised finger position*
(0 = closed at 0.01844 m, 1 = open at 0.05800 m). Actions (`JOINT_TARGET_POSITIONS`) use the same
14 names and units: joint targets and the normalised gripper target.

Scripted demonstrations (`scripted_episode`): an end-effector expert (waypoints of both grippers'
poses, linearly interpolated, executed through mocap welds, after Zhao et al. 2023) runs in the
end-effector model; its joint trajectory (with the gripper *command* in place of the gripper
position) is then replayed in the joint-space model, which renders the stored frames. In MuJoCo >= 3
the mocap weld is too weak in rotation (ACT issue #45) and the expert fails; the welds get
`torquescale="20"` (in the XML text loaded in memory, the installed package is not touched),
which restores the behaviour of MuJoCo 2.3.7.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np

from neuracore.ml.core.errors import ConfigError
from neuracore.ml.sim.envs import SimEnv, StepResult, check_image_size, configure_headless_rendering

configure_headless_rendering()  # before dm_control/mujoco are imported

from dm_control import mujoco
from dm_control.rl import control
from dm_control.suite import base
from gym_aloha import constants as C
from gym_aloha.tasks.sim import InsertionTask, TransferCubeTask
from gym_aloha.tasks.sim_end_effector import InsertionEndEffectorTask, TransferCubeEndEffectorTask
from gym_aloha.utils import sample_box_pose, sample_insertion_pose

TASKS = ("transfer_cube", "insertion")
ROBOT = "aloha"
JOINT_NAMES = list(C.JOINTS)
CAMERA = "top"
NATIVE_HW = (480, 640)  # as published (ACT, gym-aloha)
FREQUENCY_HZ = float(C.FPS)
EPISODE_STEPS = 400
MAX_REWARD = 4
WELD_TORQUESCALE = 20.0  # restores MuJoCo 2.3.7's rotational weld strength under MuJoCo >= 3 (ACT issue #45)
LANGUAGE = {
    "transfer_cube": "pick up the red cube with the right arm and hand it to the left arm",
    "insertion": "pick up the peg and the socket and insert the peg into the socket",
}


def check_task(task: str) -> str:
    """`task` if it is an ALOHA task, else a one-line error."""
    if task not in TASKS:
        raise ConfigError(f"ALOHA task {task!r}: valid: {', '.join(TASKS)}")
    return task


@cache
def _assets() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in C.ASSETS_DIR.iterdir() if p.is_file()}


def model_xml(task: str, end_effector: bool, torquescale: float | None = WELD_TORQUESCALE) -> str:
    """The task's MJCF text; for the end-effector model the mocap welds get `torquescale`."""
    prefix = "bimanual_viperx_end_effector_" if end_effector else "bimanual_viperx_"
    xml = (C.ASSETS_DIR / f"{prefix}{check_task(task)}.xml").read_text()
    if end_effector and torquescale is not None:
        xml, n = re.subn(r"<weld\b(?![^>]*torquescale)", f'<weld torquescale="{torquescale:g}"', xml)
        if n != 2:  # a changed upstream model: better to fail than to record a failing expert
            raise ConfigError(f"ALOHA {task}: expected 2 mocap welds in the end-effector model, found {n}")
    return xml


def load_physics(task: str, end_effector: bool, torquescale: float | None = WELD_TORQUESCALE) -> Any:
    """A dm_control `Physics` of the task (meshes and includes from gym-aloha's assets, read in memory)."""
    return mujoco.Physics.from_xml_string(model_xml(task, end_effector, torquescale), assets=_assets())


def sample_object_pose(task: str, seed: int) -> np.ndarray:
    """Object pose(s) of episode `seed`, exactly as gym-aloha samples them (cube, or peg + socket)."""
    if check_task(task) == "transfer_cube":
        return np.asarray(sample_box_pose(seed), np.float64)
    return np.concatenate(sample_insertion_pose(seed)).astype(np.float64)


class _Placed:
    """Mixin: objects placed from `self.object_pose` (not gym-aloha's global), observations without rendering."""

    object_pose: np.ndarray

    def initialize_episode(self, physics: Any) -> None:
        if hasattr(self, "initialize_robots"):  # end-effector model: arms, mocap bodies, gripper controls
            self.initialize_robots(physics)
        else:
            physics.named.data.qpos[:16] = C.START_ARM_POSE
            np.copyto(physics.data.ctrl, C.START_ARM_POSE)
        physics.data.qpos[16:16 + len(self.object_pose)] = self.object_pose
        base.Task.initialize_episode(self, physics)

    def get_observation(self, physics: Any) -> dict[str, Any]:
        return {"qpos": self.get_qpos(physics)}


class _JointCube(_Placed, TransferCubeTask):
    pass


class _JointInsertion(_Placed, InsertionTask):
    pass


class _EECube(_Placed, TransferCubeEndEffectorTask):
    pass


class _EEInsertion(_Placed, InsertionEndEffectorTask):
    pass


_TASK_CLASSES = {(False, "transfer_cube"): _JointCube, (False, "insertion"): _JointInsertion,
                 (True, "transfer_cube"): _EECube, (True, "insertion"): _EEInsertion}


def _environment(task: str, end_effector: bool) -> tuple[Any, Any]:
    physics = load_physics(task, end_effector)
    t = _TASK_CLASSES[(end_effector, task)]()
    t.object_pose = sample_object_pose(task, 0)
    env = control.Environment(physics, t, float("inf"), control_timestep=C.DT, n_sub_steps=None,
                              flat_observation=False)
    return env, t


class AlohaEnv(SimEnv):
    """ALOHA in joint space (what policies are evaluated in); renders the `top` camera."""

    robot = ROBOT
    frequency = FREQUENCY_HZ
    max_reward = float(MAX_REWARD)

    def __init__(self, task: str, image_size: Mapping[str, tuple[int, int]] | None = None,
                 render_size: tuple[int, int] = NATIVE_HW, resize_mode: str = "letterbox",
                 max_steps: int = EPISODE_STEPS) -> None:
        super().__init__()
        self.task = check_task(task)
        self.name = f"aloha_{task}"
        self.max_steps = int(max_steps)
        self.joint_names = list(JOINT_NAMES)
        self.action_names = list(JOINT_NAMES)
        self.render_size = (int(render_size[0]), int(render_size[1]))
        self.cameras = check_image_size(self.name, {CAMERA: self.render_size}, image_size)
        self.resize_mode = resize_mode
        self.language = LANGUAGE[task]
        self._env, self._task = _environment(task, end_effector=False)
        self.max_reward_reached = 0.0

    def render(self) -> np.ndarray:
        """The top camera at `cameras["top"]` (rendered at `render_size`, then area-resized)."""
        from neuracore.ml.datasets.images import resize_frames

        h, w = self.render_size
        frame = self._env.physics.render(height=h, width=w, camera_id=CAMERA)
        return resize_frames(frame[None], self.cameras[CAMERA], self.resize_mode)[0]

    def _obs(self, qpos: np.ndarray) -> dict[str, Any]:
        return self.observation(qpos, {CAMERA: self.render()})

    def reset(self, seed: int) -> dict[str, Any]:
        """Objects placed as gym-aloha places them for `seed`; arms at the start pose."""
        self._task.object_pose = sample_object_pose(self.task, seed)
        ts = self._env.reset()
        self.steps, self.success, self.max_reward_reached = 0, False, 0.0
        return self._obs(ts.observation["qpos"])

    def step_joints(self, action: np.ndarray) -> float:
        """One control step without rendering (replays); returns the reward."""
        ts = self._env.step(self.check_action(action))
        self.steps += 1
        reward = float(ts.reward or 0.0)
        self.max_reward_reached = max(self.max_reward_reached, reward)
        self.success = self.success or reward >= MAX_REWARD
        return reward

    def qpos(self) -> np.ndarray:
        """Current observed joints (14, gripper normalised)."""
        return self._task.get_qpos(self._env.physics)

    def step(self, action: np.ndarray) -> StepResult:
        """Joint targets (radians; normalised gripper 0 closed .. 1 open) for both arms."""
        reward = self.step_joints(action)
        return StepResult(self._obs(self.qpos()), reward, self.done, reward >= MAX_REWARD)


# --- the scripted end-effector expert ---------------------------------------------------------------------


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (w, x, y, z) quaternions."""
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def _axis_angle(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    half = np.deg2rad(degrees) / 2
    return np.concatenate([[np.cos(half)], np.sin(half) * np.asarray(axis, np.float64)])


def expert_waypoints(task: str, left0: np.ndarray, right0: np.ndarray,
                     objects: np.ndarray) -> tuple[list[tuple], list[tuple]]:
    """Waypoints `(t, xyz, quat, gripper)` of the left and right grippers (gripper 0 closed .. 1 open).

    `left0`/`right0` are the initial mocap poses (xyz + quat), `objects` the object pose(s) at reset.
    The timing and offsets follow the ACT paper's scripted policies.
    """
    identity = np.array([1.0, 0, 0, 0])
    if task == "transfer_cube":
        cube = objects[:3]
        pick = _quat_mul(right0[3:], _axis_angle((0, 1, 0), -60))
        meet_left = _axis_angle((1, 0, 0), 90)
        meet = np.array([0.0, 0.5, 0.25])
        left = [(0, left0[:3], left0[3:], 0), (100, meet + [-0.1, 0, -0.02], meet_left, 1),
                (260, meet + [0.02, 0, -0.02], meet_left, 1), (310, meet + [0.02, 0, -0.02], meet_left, 0),
                (360, meet + [-0.1, 0, -0.02], identity, 0), (400, meet + [-0.1, 0, -0.02], identity, 0)]
        right = [(0, right0[:3], right0[3:], 0), (90, cube + [0, 0, 0.08], pick, 1),
                 (130, cube + [0, 0, -0.015], pick, 1), (170, cube + [0, 0, -0.015], pick, 0),
                 (200, meet + [0.05, 0, 0], pick, 0), (220, meet, pick, 0), (310, meet, pick, 1),
                 (360, meet + [0.1, 0, 0], pick, 1), (400, meet + [0.1, 0, 0], pick, 1)]
        return left, right
    peg, socket = objects[:3], objects[7:10]
    pick_right = _quat_mul(right0[3:], _axis_angle((0, 1, 0), -60))
    pick_left = _quat_mul(right0[3:], _axis_angle((0, 1, 0), 60))
    meet = np.array([0.0, 0.5, 0.15])
    lift = 0.00715
    left = [(0, left0[:3], left0[3:], 0), (120, socket + [0, 0, 0.08], pick_left, 1),
            (170, socket + [0, 0, -0.03], pick_left, 1), (220, socket + [0, 0, -0.03], pick_left, 0),
            (285, meet + [-0.1, 0, 0], pick_left, 0), (340, meet + [-0.05, 0, 0], pick_left, 0),
            (400, meet + [-0.05, 0, 0], pick_left, 0)]
    right = [(0, right0[:3], right0[3:], 0), (120, peg + [0, 0, 0.08], pick_right, 1),
             (170, peg + [0, 0, -0.03], pick_right, 1), (220, peg + [0, 0, -0.03], pick_right, 0),
             (285, meet + [0.1, 0, lift], pick_right, 0), (340, meet + [0.05, 0, lift], pick_right, 0),
             (400, meet + [0.05, 0, lift], pick_right, 0)]
    return left, right


def _interpolate(waypoints: list[tuple], t: int) -> np.ndarray:
    """Pose + gripper at step `t`, linear between the surrounding waypoints (quaternions too, as ACT does)."""
    pairs = list(itertools.pairwise(waypoints))
    for i, ((t0, p0, q0, g0), (t1, p1, q1, g1)) in enumerate(pairs):
        if t < t1 or i == len(pairs) - 1:
            f = min(max((t - t0) / (t1 - t0), 0.0), 1.0)
            return np.concatenate([np.add(p0, f * np.subtract(p1, p0)), np.add(q0, f * np.subtract(q1, q0)),
                                   [g0 + f * (g1 - g0)]])
    raise AssertionError("unreachable: waypoints are sorted and the last one is open-ended")


def expert_joint_trajectory(task: str, seed: int, steps: int = EPISODE_STEPS) -> tuple[np.ndarray, float]:
    """Run the end-effector expert for episode `seed`; returns joint actions `[steps, 14]` and its max reward.

    Action t is the joint state after t expert steps, with each gripper's item replaced by the
    normalised gripper *command* (so the replay closes the gripper as firmly as the expert did).
    """
    env, t = _environment(check_task(task), end_effector=True)
    t.object_pose = sample_object_pose(task, seed)
    env.reset()
    physics = env.physics
    left0 = np.concatenate([physics.data.mocap_pos[0], physics.data.mocap_quat[0]])
    right0 = np.concatenate([physics.data.mocap_pos[1], physics.data.mocap_quat[1]])
    left, right = expert_waypoints(task, left0, right0, np.asarray(physics.data.qpos[16:], np.float64).copy())

    def joint_action() -> np.ndarray:
        q = t.get_qpos(physics).copy()
        ctrl = physics.data.ctrl
        q[6] = C.normalize_puppet_gripper_position(ctrl[0])
        q[13] = C.normalize_puppet_gripper_position(ctrl[2])
        return q

    actions = [joint_action()]
    best = 0.0
    for step in range(steps - 1):
        ts = env.step(np.concatenate([_interpolate(left, step), _interpolate(right, step)]))
        best = max(best, float(ts.reward or 0.0))
        actions.append(joint_action())
    return np.stack(actions), best


def scripted_episode(task: str, seed: int, render_size: tuple[int, int] = NATIVE_HW,
                     steps: int = EPISODE_STEPS) -> dict[str, Any]:
    """One scripted demonstration replayed in joint space, with its `top` frames.

    Returns `{"joint_positions" [T, 14], "actions" [T, 14], "images" [T, H, W, 3], "success",
    "max_reward", "expert_max_reward"}`: frame t is the observation before action t.
    """
    actions, expert_best = expert_joint_trajectory(task, seed, steps)
    env = AlohaEnv(task, render_size=render_size, max_steps=steps)
    env.reset(seed)
    q, images = [], []
    for a in actions:
        q.append(env.qpos())
        images.append(env.render())
        env.step_joints(a)
    return {"joint_positions": np.stack(q).astype(np.float32), "actions": actions.astype(np.float32),
            "images": np.stack(images), "success": env.success, "max_reward": env.max_reward_reached,
            "expert_max_reward": expert_best}


def replay(task: str, seed: int, actions: np.ndarray) -> tuple[bool, float]:
    """Replay joint `actions` in episode `seed` without rendering; returns (success, max reward)."""
    env = AlohaEnv(task, render_size=(8, 8), max_steps=len(actions))
    env.reset(seed)
    for a in actions:
        env.step_joints(a)
    return env.success, env.max_reward_reached

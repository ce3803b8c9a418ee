"""A planar pick-and-place task: a 2-link arm with a gripper moves a cube into a goal zone.

The camera (a top-down 64x64 RGB render) is the only place the cube's position can be seen,
so a policy must use vision. Actions are joint target positions (shoulder, elbow, gripper);
joints move towards their targets at a bounded speed. A cube is grasped when the gripper
closes near it and is carried until the end; the episode succeeds when it reaches the zone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JOINT_NAMES = ["shoulder", "elbow", "gripper"]
CAMERA_NAME = "top"
IMAGE_SIZE = 64
FREQUENCY_HZ = 10.0
MAX_STEPS = 60
LINKS = (0.5, 0.4)
GOAL = np.array([0.0, 0.3])
GOAL_RADIUS = 0.1
GRASP_RADIUS = 0.09
MAX_JOINT_STEP = 0.15  # rad (or gripper fraction) per control step
COLORS = {"red": (220, 40, 40), "blue": (40, 80, 230), "yellow": (230, 200, 40)}

# Image coordinates: x in [-1, 1] left to right, y in [-0.25, 1.0] bottom to top.
_X = np.linspace(-1.0, 1.0, IMAGE_SIZE)[None, :].repeat(IMAGE_SIZE, 0)
_Y = np.linspace(1.0, -0.25, IMAGE_SIZE)[:, None].repeat(IMAGE_SIZE, 1)


def forward_kinematics(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elbow and end-effector positions of joint angles `q[:2]`."""
    elbow = LINKS[0] * np.array([np.cos(q[0]), np.sin(q[0])])
    ee = elbow + LINKS[1] * np.array([np.cos(q[0] + q[1]), np.sin(q[0] + q[1])])
    return elbow, ee


def inverse_kinematics(target: np.ndarray) -> np.ndarray:
    """Shoulder/elbow angles (elbow-up branch) placing the end effector at `target`."""
    l1, l2 = LINKS
    d2 = float(np.clip(target @ target, (l1 - l2) ** 2 + 1e-6, (l1 + l2) ** 2 - 1e-6))
    c2 = (d2 - l1 * l1 - l2 * l2) / (2 * l1 * l2)
    q2 = -np.arccos(np.clip(c2, -1.0, 1.0))
    q1 = np.arctan2(target[1], target[0]) - np.arctan2(l2 * np.sin(q2), l1 + l2 * np.cos(q2))
    return np.array([q1, q2])


@dataclass
class Observation:
    """What the robot sees at one step."""

    joint_positions: np.ndarray  # [3] shoulder, elbow, gripper (0 open .. 1 closed)
    image: np.ndarray  # [64, 64, 3] uint8
    language: str


class PickPlaceEnv:
    """Deterministic given its seed; `reset()` then `step(joint_targets)` until `done`."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.color = str(self.rng.choice(list(COLORS)))
        radius = self.rng.uniform(0.55, 0.85)
        angle = self.rng.uniform(np.deg2rad(15), np.deg2rad(165))
        self.cube = np.array([radius * np.cos(angle), radius * np.sin(angle)])
        self.q = np.array([self.rng.uniform(0.6, 2.5), self.rng.uniform(-1.6, -0.4), 0.0])
        self.holding = False
        self.steps = 0
        self.success = False
        self.language = f"pick up the {self.color} cube and put it in the green zone"

    @property
    def end_effector(self) -> np.ndarray:
        """End-effector position."""
        return forward_kinematics(self.q)[1]

    def observe(self) -> Observation:
        """Current joint positions, camera image and instruction."""
        return Observation(self.q.astype(np.float32).copy(), self.render(), self.language)

    def step(self, joint_targets: np.ndarray) -> Observation:
        """Move joints towards `joint_targets` (speed-limited), update the grasp, check success."""
        target = np.asarray(joint_targets, np.float64).reshape(-1)[:3]
        if not np.isfinite(target).all():
            raise ValueError(f"joint targets must be finite, got {target}")
        target[2] = np.clip(target[2], 0.0, 1.0)
        self.q = self.q + np.clip(target - self.q, -MAX_JOINT_STEP, MAX_JOINT_STEP)
        ee = self.end_effector
        if not self.holding and self.q[2] > 0.8 and np.linalg.norm(ee - self.cube) < GRASP_RADIUS:
            self.holding = True
        if self.holding:
            if self.q[2] < 0.5:  # opening the gripper drops the cube where it is
                self.holding = False
            else:
                self.cube = ee.copy()
        self.steps += 1
        if self.holding and np.linalg.norm(self.cube - GOAL) < GOAL_RADIUS:
            self.success = True
        return self.observe()

    @property
    def done(self) -> bool:
        """Success or time limit."""
        return self.success or self.steps >= MAX_STEPS

    def render(self) -> np.ndarray:
        """Top-down RGB image: goal zone, cube, arm links, gripper state."""
        img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        img[:] = (150, 150, 150)
        _disk(img, GOAL, GOAL_RADIUS, (60, 170, 60))
        half = 0.05
        cube_mask = (np.abs(_X - self.cube[0]) < half) & (np.abs(_Y - self.cube[1]) < half)
        img[cube_mask] = COLORS[self.color]
        elbow, ee = forward_kinematics(self.q)
        _segment(img, np.zeros(2), elbow, 0.03, (30, 30, 30))
        _segment(img, elbow, ee, 0.025, (70, 70, 70))
        grip = int(255 * (1.0 - self.q[2]))
        _disk(img, ee, 0.045, (grip, grip, 255 - grip // 2))
        return img


def _disk(img: np.ndarray, center: np.ndarray, radius: float, color: tuple[int, int, int]) -> None:
    img[(_X - center[0]) ** 2 + (_Y - center[1]) ** 2 < radius**2] = color


def _segment(img: np.ndarray, a: np.ndarray, b: np.ndarray, width: float, color: tuple[int, int, int]) -> None:
    ab = b - a
    t = np.clip(((_X - a[0]) * ab[0] + (_Y - a[1]) * ab[1]) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    dx, dy = _X - (a[0] + t * ab[0]), _Y - (a[1] + t * ab[1])
    img[dx * dx + dy * dy < width * width] = color


def scripted_expert(env: PickPlaceEnv) -> np.ndarray:
    """Joint targets of the expert: reach the cube, close the gripper, carry it to the goal."""
    if env.holding:
        arm = inverse_kinematics(GOAL)
        return np.array([arm[0], arm[1], 1.0])
    arm = inverse_kinematics(env.cube)
    near = np.linalg.norm(env.end_effector - env.cube) < 0.03
    return np.array([arm[0], arm[1], 1.0 if near else 0.0])


def record_expert_episode(seed: int, extra_steps: int = 3) -> tuple[list[Observation], list[np.ndarray], bool]:
    """Observations and actions of one expert episode (a few frames are kept after success)."""
    env = PickPlaceEnv(seed)
    observations, actions = [], []
    obs = env.observe()
    after = 0
    while env.steps < MAX_STEPS and after <= extra_steps:
        action = scripted_expert(env)
        observations.append(obs)
        actions.append(action.astype(np.float32))
        obs = env.step(action)
        after += env.success
    return observations, actions, env.success

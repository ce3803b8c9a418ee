"""One interface for every simulated task: the embedded `demo`, ALOHA (gym-aloha) and PushT (gym-pusht).

    from neuracore.ml.sim.envs import make_env
    env = make_env("aloha_transfer_cube", image_size={"top": (240, 320)})
    obs = env.reset(seed=100_000)
    result = env.step(action)          # action: env.action_names order

Observations are keyed like the data spec, so `Policy.select_action` takes them as they are:
`{"JOINT_POSITIONS": {item: value}, "RGB_IMAGES": {camera: [H, W, 3] uint8}, "LANGUAGE": str}`.
Actions are `JOINT_TARGET_POSITIONS` in `env.action_names` order. The MuJoCo and PushT
environments need the `sim` extra (`pip install -e ".[sim]"`); without it `make_env` fails with one
line saying so. MuJoCo renders headless: `MUJOCO_GL=egl` unless the user set it (see
`configure_headless_rendering`).

Seeds: generated training datasets use seeds from 0 (`tools/dataset.py generate --seed`, default 0,
episode i -> seed + i); evaluation uses `EVAL_SEED_OFFSET` + i, so the two never overlap for
datasets of fewer than 100 000 episodes.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuracore.ml.core.data_types import DataType
from neuracore.ml.core.errors import ConfigError

EVAL_SEED_OFFSET = 100_000  # evaluation episodes never overlap generated/demo training seeds (0..99 999)
SIM_EXTRA_INSTALL = 'pip install -e ".[sim]"'


def configure_headless_rendering() -> str:
    """Set `MUJOCO_GL=egl` (and PyOpenGL's platform to match) unless the user chose; returns the backend.

    Must run before `mujoco`/`dm_control` is imported: both read the variable once, at import.
    EGL needs libEGL with a Mesa driver (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri);
    `MUJOCO_GL=osmesa` needs libosmesa6 instead.
    """
    import logging

    for noisy in ("absl", "OpenGL"):  # dm_control/PyOpenGL announce the backend at INFO on every import
        logging.getLogger(noisy).setLevel(logging.WARNING)
    backend = os.environ.setdefault("MUJOCO_GL", "egl")
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def require(module: str, env: str) -> Any:
    """Import `module` of the `sim` extra, or fail with one line saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module
        raise ConfigError(f"env {env!r} needs the `sim` extra (Python module {missing!r} is not installed): "
                          f"{SIM_EXTRA_INSTALL}") from None


@dataclass
class StepResult:
    """What one `step` returns."""

    observation: dict[str, Any]
    reward: float
    done: bool  # success or time limit
    success: bool
    info: dict[str, Any] = field(default_factory=dict)


class SimEnv(ABC):
    """A simulated task: `reset(seed)`, then `step(action)` until `done`."""

    name: str
    robot: str
    frequency: float  # control steps per second (the dataset frequency)
    max_steps: int  # episode time limit in control steps
    max_reward: float  # reward of a successful step; stage rates count episodes reaching 1..max_reward
    joint_names: list[str]  # JOINT_POSITIONS items, in order
    action_names: list[str]  # JOINT_TARGET_POSITIONS items, in order
    cameras: dict[str, tuple[int, int]]  # RGB_IMAGES items and the (H, W) each is returned at
    language: str = ""

    def __init__(self) -> None:
        self.steps = 0
        self.success = False
        self.max_reward_reached = 0.0  # highest reward of the current episode (stage rates)

    @abstractmethod
    def reset(self, seed: int) -> dict[str, Any]:
        """Start a new episode, deterministic given `seed`; returns the first observation."""

    @abstractmethod
    def step(self, action: np.ndarray) -> StepResult:
        """Apply one action (`action_names` order) for one control step."""

    @property
    def done(self) -> bool:
        """Success or time limit."""
        return self.success or self.steps >= self.max_steps

    def check_action(self, action: Any) -> np.ndarray:
        """`action` as a finite float64 vector of `len(action_names)`, or a one-line error."""
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape[0] != len(self.action_names):
            raise ConfigError(f"env {self.name!r}: action has {a.shape[0]} values, expected {len(self.action_names)} "
                              f"({', '.join(self.action_names)})")
        if not np.isfinite(a).all():
            raise ConfigError(f"env {self.name!r}: action values must be finite, got {a.tolist()}")
        return a

    def observation(self, joints: np.ndarray, images: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """The observation dict keyed like the data spec."""
        return {
            DataType.JOINT_POSITIONS.value: {n: np.float32(v) for n, v in zip(self.joint_names, joints, strict=True)},
            DataType.RGB_IMAGES.value: dict(images),
            DataType.LANGUAGE.value: self.language,
        }

    def close(self) -> None:
        """Free renderer resources (optional)."""


def check_image_size(env: str, native: Mapping[str, tuple[int, int]],
                     image_size: Mapping[str, tuple[int, int]] | None) -> dict[str, tuple[int, int]]:
    """Per-camera output sizes: `image_size` where given (cameras must exist), the native size otherwise."""
    sizes = dict(native)
    for cam, hw in (image_size or {}).items():
        if cam == "*":
            sizes = {c: tuple(hw) for c in sizes}
            continue
        if cam not in native:
            raise ConfigError(f"env {env!r}: no camera {cam!r}; cameras: {', '.join(native)}")
        sizes[cam] = (int(hw[0]), int(hw[1]))
    return sizes


class DemoEnv(SimEnv):
    """The embedded planar pick-and-place task (`sim.pick_place`), 10 Hz, 64x64 top camera."""

    name = "demo"
    max_reward = 1.0

    def __init__(self, image_size: Mapping[str, tuple[int, int]] | None = None, resize_mode: str = "letterbox") -> None:
        from neuracore.ml.datasets.demo import DEMO_ROBOT
        from neuracore.ml.sim import pick_place

        super().__init__()
        self._pp = pick_place
        self.robot = DEMO_ROBOT
        self.frequency = pick_place.FREQUENCY_HZ
        self.max_steps = pick_place.MAX_STEPS
        self.joint_names = list(pick_place.JOINT_NAMES)
        self.action_names = list(pick_place.JOINT_NAMES)
        native = {pick_place.CAMERA_NAME: (pick_place.IMAGE_SIZE, pick_place.IMAGE_SIZE)}
        self.cameras = check_image_size(self.name, native, image_size)
        self.resize_mode = resize_mode
        self._env = None

    def _obs(self, o: Any) -> dict[str, Any]:
        from neuracore.ml.datasets.images import resize_frames

        cam = self._pp.CAMERA_NAME
        return self.observation(o.joint_positions, {cam: resize_frames(o.image[None], self.cameras[cam],
                                                                       self.resize_mode)[0]})

    def reset(self, seed: int) -> dict[str, Any]:
        """New episode of the pick-and-place task with env seed `seed`."""
        self._env = self._pp.PickPlaceEnv(seed)
        self.language = self._env.language
        self.steps, self.success, self.max_reward_reached = 0, False, 0.0
        return self._obs(self._env.observe())

    def step(self, action: np.ndarray) -> StepResult:
        """Joint targets (shoulder, elbow, gripper 0 open..1 closed)."""
        if self._env is None:
            raise ConfigError("env 'demo': call reset(seed) before step")
        obs = self._env.step(self.check_action(action))
        self.steps, self.success = self._env.steps, bool(self._env.success)
        self.max_reward_reached = float(self.success)
        return StepResult(self._obs(obs), float(self.success), self.done, self.success)


def _aloha(task: str) -> Callable[..., SimEnv]:
    def make(**kwargs: Any) -> SimEnv:
        require("gym_aloha", f"aloha_{task}")
        from neuracore.ml.sim.aloha import AlohaEnv

        return AlohaEnv(task, **kwargs)

    return make


def _pusht(**kwargs: Any) -> SimEnv:
    require("gym_pusht", "pusht")
    from neuracore.ml.sim.pusht import PushTEnv

    return PushTEnv(**kwargs)


ENVS: dict[str, Callable[..., SimEnv]] = {
    "demo": DemoEnv,
    "aloha_transfer_cube": _aloha("transfer_cube"),
    "aloha_insertion": _aloha("insertion"),
    "pusht": _pusht,
}


def env_names() -> list[str]:
    """Names `make_env` accepts."""
    return list(ENVS)


def make_env(name: str, **kwargs: Any) -> SimEnv:
    """Build env `name` (`image_size={camera: (H, W)}` resizes what it returns; env-specific options)."""
    if name not in ENVS:
        raise ConfigError(f"env {name!r}: unknown; valid: {', '.join(ENVS)}")
    return ENVS[name](**kwargs)


def sim_extra_installed() -> bool:
    """Whether gym-aloha and gym-pusht (the `sim` extra) can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("gym_aloha", "gym_pusht", "mujoco"))


__all__ = ["ENVS", "EVAL_SEED_OFFSET", "SIM_EXTRA_INSTALL", "DemoEnv", "SimEnv", "StepResult",
           "configure_headless_rendering", "env_names", "make_env", "require", "sim_extra_installed"]

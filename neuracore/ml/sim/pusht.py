"""PushT (gym-pusht): push a T-shaped block into the goal pose with a round agent, 10 Hz, 96x96 top view.

State: the agent's position `agent_x, agent_y` (pixels of the 512x512 workspace) as
`JOINT_POSITIONS`; action: the target position of the agent (same units) as
`JOINT_TARGET_POSITIONS`. Reward is the goal coverage / 0.95 clipped to [0, 1]; success is
coverage > 95 % (as in the Diffusion Policy paper). Episodes last at most 300 steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from neuracore.ml.sim.envs import SimEnv, StepResult, check_image_size

ROBOT = "pusht_agent"
JOINT_NAMES = ["agent_x", "agent_y"]
CAMERA = "top"
NATIVE_HW = (96, 96)
FREQUENCY_HZ = 10.0
EPISODE_STEPS = 300


class PushTEnv(SimEnv):
    """gym-pusht's `PushTEnv` with pixels + agent position behind the `SimEnv` interface."""

    name = "pusht"
    robot = ROBOT
    frequency = FREQUENCY_HZ
    max_reward = 1.0
    language = "push the T-shaped block onto the T-shaped target"

    def __init__(self, image_size: Mapping[str, tuple[int, int]] | None = None, resize_mode: str = "letterbox",
                 max_steps: int = EPISODE_STEPS) -> None:
        from gym_pusht.envs import PushTEnv as _GymPushT

        super().__init__()
        self.max_steps = int(max_steps)
        self.joint_names = list(JOINT_NAMES)
        self.action_names = list(JOINT_NAMES)
        self.cameras = check_image_size(self.name, {CAMERA: NATIVE_HW}, image_size)
        self.resize_mode = resize_mode
        self._env = _GymPushT(obs_type="pixels_agent_pos", observation_height=NATIVE_HW[0],
                              observation_width=NATIVE_HW[1])
        self.max_reward_reached = 0.0

    def _obs(self, raw: dict[str, Any]) -> dict[str, Any]:
        from neuracore.ml.datasets.images import resize_frames

        image = resize_frames(np.asarray(raw["pixels"], np.uint8)[None], self.cameras[CAMERA], self.resize_mode)[0]
        return self.observation(np.asarray(raw["agent_pos"], np.float64), {CAMERA: image})

    def reset(self, seed: int) -> dict[str, Any]:
        """Block and agent placed by gym-pusht's RNG seeded with `seed`."""
        raw, _ = self._env.reset(seed=int(seed))
        self.steps, self.success, self.max_reward_reached = 0, False, 0.0
        return self._obs(raw)

    def step(self, action: np.ndarray) -> StepResult:
        """Move the agent towards the target position (PD control inside gym-pusht)."""
        raw, reward, _, _, info = self._env.step(self.check_action(action))
        self.steps += 1
        self.max_reward_reached = max(self.max_reward_reached, float(reward))
        self.success = self.success or bool(info["is_success"])
        return StepResult(self._obs(raw), float(reward), self.done, bool(info["is_success"]),
                          {"coverage": float(info["coverage"])})

    def close(self) -> None:
        """Close gym-pusht's pygame resources."""
        self._env.close()

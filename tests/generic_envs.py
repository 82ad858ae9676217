"""Small environments over every observation space a memory row supports (for the generic-route tests).

``SpaceEnv(space)`` emits observations sampled from ``space`` for ``length`` steps; the reward is 1 when the action
equals the parity of the first observation's flattened sum (a one-bit recall task), so an agent can learn
something, but the tests only check that the machinery runs, saves and reloads.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

IMAGE = spaces.Box(0, 255, (8, 8, 3), np.uint8)

SPACES: dict[str, spaces.Space] = {
    "box": spaces.Box(-1.0, 1.0, (3,), np.float32),
    "unbounded": spaces.Box(-np.inf, np.inf, (2,), np.float32),
    "image": IMAGE,
    "discrete": spaces.Discrete(5),
    "multidiscrete": spaces.MultiDiscrete([3, 2]),
    "multibinary": spaces.MultiBinary(4),
    "dict": spaces.Dict({"image": IMAGE, "vec": spaces.Box(-2.0, 2.0, (2,), np.float32), "id": spaces.Discrete(3)}),
    "tuple": spaces.Tuple((spaces.Discrete(3), spaces.Box(0.0, 1.0, (2,), np.float32))),
}
"""Observation spaces by name; SB3 takes all of them but ``tuple`` directly (``tuple`` needs a wrapper)."""


class SpaceEnv(gym.Env):
    """Observations drawn from ``space``; ``length`` steps; ``Discrete(2)`` actions."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, space: spaces.Space, length: int = 8) -> None:
        self.observation_space = space
        self.action_space = spaces.Discrete(2)
        self.length = length
        self._t = 0
        self._answer = 0

    def _observe(self) -> Any:
        self.observation_space.seed(int(self.np_random.integers(2**31)))
        return self.observation_space.sample()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self._t = 0
        obs = self._observe()
        self._answer = int(np.sum(spaces.flatten(self.observation_space, obs)) > 0) if self.length else 0
        return obs, {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self._t += 1
        reward = float(int(action) == self._answer) if self._t == self.length else 0.0
        return self._observe(), reward, self._t >= self.length, False, {}

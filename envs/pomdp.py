"""Classic-control tasks with their velocities removed: the standard POMDP versions (memory needed to act well).

``MaskVelocity`` keeps only the position-like entries of the observation, as rl-zoo3's ``MaskVelocityWrapper``
does; an agent must infer the velocities from consecutive observations. Registered ids (``import envs``):

* ``ebmm/CartPole-NoVel-v1``: ``CartPole-v1`` observing cart position and pole angle (entries 0 and 2);
* ``ebmm/Pendulum-NoVel-v1``: ``Pendulum-v1`` observing ``cos θ`` and ``sin θ`` (entries 0 and 1).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["KEPT_ENTRIES", "MaskVelocity", "make_masked"]

KEPT_ENTRIES: dict[str, tuple[int, ...]] = {
    "CartPole-v1": (0, 2),
    "Pendulum-v1": (0, 1),
}
"""Observation entries kept by :class:`MaskVelocity`, per gymnasium id."""


class MaskVelocity(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Keeps the observation entries ``keep`` of a ``Box`` observation (drops the velocities).

    Args:
        env: an environment with a 1-d ``Box`` observation.
        keep: indices of the entries to keep.
    """

    def __init__(self, env: gym.Env, keep: tuple[int, ...]) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, keep=tuple(keep))
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"MaskVelocity needs a 1-d Box observation, got {space}")
        self.keep = np.asarray(keep, dtype=np.int64)
        if self.keep.size == 0 or self.keep.min() < 0 or self.keep.max() >= space.shape[0]:
            raise ValueError(f"keep={tuple(keep)} must index entries of the {space.shape[0]}-entry observation")
        self.observation_space = spaces.Box(space.low[self.keep], space.high[self.keep], dtype=space.dtype)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """The kept entries."""
        return np.asarray(observation)[self.keep]


def make_masked(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make(env_id, **kwargs)`` with its velocities masked (:data:`KEPT_ENTRIES`)."""
    if env_id not in KEPT_ENTRIES:
        raise ValueError(f"no velocity mask is defined for {env_id!r}; known: {sorted(KEPT_ENTRIES)}")
    return MaskVelocity(gym.make(env_id, **kwargs), KEPT_ENTRIES[env_id])

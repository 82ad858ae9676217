"""Helpers shared by the RL tests: observations of random play, batched as SB3's policy sees them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.utils import obs_as_tensor


def collect(env: gym.Env, steps: int, seed: int = 0) -> list[dict]:
    """Observations of ``steps`` steps of random play (resets included)."""
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for _ in range(steps - 1):
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
        out.append(obs)
    return out


def as_batch(observations: list[dict], space: spaces.Dict) -> dict[str, torch.Tensor]:
    """Stack observations and preprocess them as SB3's policy does."""
    batch = {k: np.stack([np.asarray(o[k]) for o in observations]) for k in space.spaces}
    return preprocess_obs(obs_as_tensor(batch, torch.device("cpu")), space)  # type: ignore[return-value]

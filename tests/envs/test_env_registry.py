"""API conformance of every registered memory probe: checkers, determinism, vectorisation, rendering."""

from __future__ import annotations

import inspect
import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.utils.env_checker import data_equivalence
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.core import Phase

ENV_IDS = envs.ENV_IDS
FAMILIES = ("BinaryRecall", "KeyValueRecall", "ImageRecall", "Familiarity", "DelayedRecall")


def _rollout(env: gym.Env, seed: int, episodes: int) -> list:
    """Observations, rewards and flags of ``episodes`` episodes with seeded random actions."""
    env.action_space.seed(seed)
    trace = [env.reset(seed=seed)]
    for _ in range(episodes):
        while True:
            out = env.step(env.action_space.sample())
            trace.append(out)
            if out[2] or out[3]:
                trace.append(env.reset())
                break
    return trace


def test_registry_table_is_complete_and_versioned():
    assert len(set(ENV_IDS)) == len(ENV_IDS)
    for env_id in ENV_IDS:
        assert re.fullmatch(r"ebmm/[A-Za-z]+(-[A-Za-z0-9]+)?-v\d+", env_id), env_id
        assert env_id in gym.registry
    for family in FAMILIES:
        for level in ("", "-Easy", "-Medium", "-Hard"):
            assert f"ebmm/{family}{level}-v0" in ENV_IDS
    for delay in envs.delayed_recall.SWEEP_DELAYS:
        assert f"ebmm/DelayedRecall-L{delay}-v0" in ENV_IDS


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_id_is_medium(family):
    """The constructor defaults are the Medium level, and the plain id uses them."""
    plain = next(e for e in envs.REGISTRY if e.id == f"ebmm/{family}-v0")
    medium = next(e for e in envs.REGISTRY if e.id == f"ebmm/{family}-Medium-v0")
    assert plain.kwargs == {}
    cls = gym.make(plain.id).unwrapped.__class__
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    assert {k: defaults[k] for k in medium.kwargs} == medium.kwargs
    assert data_equivalence(_rollout(gym.make(plain.id), 3, 2), _rollout(gym.make(medium.id), 3, 2))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_checkers_pass_without_warnings(env_id):
    env = gym.make(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check_env(env.unwrapped)
        sb3_check_env(env.unwrapped, warn=True)
    assert [str(w.message) for w in caught] == []
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_rollout(env_id):
    first = _rollout(gym.make(env_id), seed=7, episodes=3)
    second = _rollout(gym.make(env_id), seed=7, episodes=3)
    assert data_equivalence(first, second)
    other = _rollout(gym.make(env_id), seed=8, episodes=3)
    assert not data_equivalence(first, other)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_observation_layout(env_id):
    """Phase and step index are in every observation and follow the WRITE -> DELAY -> QUERY schedule."""
    env = gym.make(env_id).unwrapped
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"pattern", "phase", "step"}
    phases, rewards = [], []
    for t in range(env.episode_length):
        assert obs["step"] == t
        phases.append(int(obs["phase"]))
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        rewards.append(reward)
        assert terminated == (t == env.episode_length - 1) and not truncated
    assert obs["step"] == env.episode_length and "is_success" in info
    expected = [Phase.WRITE] * env.num_write + [Phase.DELAY] * env.delay + [Phase.QUERY] * env.num_queries
    assert phases == expected
    assert all(r == 0.0 for r, p in zip(rewards, phases, strict=True) if p != Phase.QUERY)
    assert all(0.0 <= r <= 1.0 for r in rewards)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_sync_vector_env(env_id):
    venv = gym.make_vec(env_id, num_envs=2, vectorization_mode="sync")
    obs, _ = venv.reset(seed=0)
    assert obs["pattern"].shape == (2, *venv.single_observation_space["pattern"].shape)
    length = venv.get_attr("episode_length")[0]
    venv.action_space.seed(0)
    for _ in range(length + 2):  # crosses an autoreset
        obs, rewards, terminated, truncated, _ = venv.step(venv.action_space.sample())
        assert rewards.shape == (2,) and venv.observation_space.contains(obs)
    venv.close()


def test_sb3_subproc_vec_env():
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    # "envs:" makes gymnasium import (and so register) the package in the worker processes too.
    venv = make_vec_env("envs:ebmm/BinaryRecall-Easy-v0", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv)
    try:
        obs = venv.reset()
        assert obs["pattern"].shape == (2, 8)
        for t in range(3):  # Easy episodes are 3 steps long
            obs, rewards, dones, infos = venv.step(np.stack([venv.action_space.sample()] * 2))
            assert dones.tolist() == [t == 2] * 2
        assert all("terminal_observation" in info and "episode" in info for info in infos)
    finally:
        venv.close()


def test_sb3_ppo_learns_a_few_steps():
    from stable_baselines3 import PPO

    model = PPO(
        "MultiInputPolicy",
        gym.make("ebmm/BinaryRecall-Easy-v0"),
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        seed=0,
        device="cpu",
    )
    model.learn(32)
    assert model.num_timesteps == 32


@pytest.mark.parametrize("env_id", ["ebmm/ImageRecall-v0", "ebmm/ImageRecall-Pixels-v0"])
def test_sb3_encodes_pixels_with_nature_cnn(env_id):
    """obs_type="pixels" is an image to SB3 (NatureCNN), obs_type="vector" is not."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.preprocessing import is_image_space
    from stable_baselines3.common.torch_layers import NatureCNN

    env = gym.make(env_id)
    model = PPO("MultiInputPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu")
    extractor = model.policy.features_extractor.extractors["pattern"]
    is_pixels = "Pixels" in env_id
    assert is_image_space(env.observation_space["pattern"]) == isinstance(extractor, NatureCNN) == is_pixels
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    env.step(action)  # a 0-d integer array is a valid Discrete action


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_render_ansi(env_id):
    env = gym.make(env_id, render_mode="ansi")
    env.reset(seed=0)
    text = env.render()
    assert isinstance(text, str) and "phase WRITE" in text
    env.step(env.action_space.sample())
    assert "step 1/" in env.render()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_render_rgb_array(env_id):
    """Every task renders frames (SB3's make_vec_env asks for rgb_array by default)."""
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    for _ in range(env.unwrapped.episode_length):
        frame = env.render()
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        env.step(env.action_space.sample())
    if "ImageRecall" in env_id:
        assert frame.shape[0] >= 128

"""bsuite's memory experiments as gymnasium ids (agents/bsuite_envs.py), with or without the optional extra."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import pytest

import agents.bsuite_envs  # noqa: F401  (registers the ids)

HAVE_BSUITE = importlib.util.find_spec("bsuite") is not None and importlib.util.find_spec("shimmy") is not None


def test_every_setting_of_the_two_sweeps_is_registered():
    for length in agents.bsuite_envs.MEMORY_LENGTHS:
        assert f"bsuite/memory_len-L{length}-v0" in gym.registry
    for bits in agents.bsuite_envs.MEMORY_BITS:
        assert f"bsuite/memory_size-B{bits}-v0" in gym.registry


@pytest.mark.skipif(HAVE_BSUITE, reason="bsuite is installed: the next test runs the env")
def test_without_the_extra_the_error_names_it():
    with pytest.raises(ImportError, match=r"pip install -e '\.\[bsuite\]'"):
        gym.make("bsuite/memory_len-L5-v0")


@pytest.mark.skipif(not HAVE_BSUITE, reason="needs the bsuite extra (pip install -e '.[bsuite]')")
@pytest.mark.parametrize("right", [True, False])
def test_memory_len_pays_at_the_end_for_naming_the_first_observations_context(right):
    env = gym.make("bsuite/memory_len-L5-v0")
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        context = obs.reshape(-1)[-1]  # +1 or -1, shown at the start only
        assert context in (-1.0, 1.0)
        for t in range(6):  # L + 1 steps; the action only counts at the last
            action = int((context > 0) == right) if t == 5 else 0
            obs, reward, terminated, truncated, _ = env.step(action)
            assert terminated == (t == 5) and not truncated
            if t < 5:
                assert reward == 0.0
            if t >= 1:
                assert obs.reshape(-1)[-1] == 0.0  # the context is gone: only memory can name it
        assert reward == (1.0 if right else -1.0)

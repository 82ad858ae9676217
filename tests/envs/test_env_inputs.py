"""Bad actions and bad constructor arguments raise ValueError saying what is allowed."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from envs import BinaryRecallEnv, DelayedRecallEnv, FamiliarityEnv, ImageRecallEnv, KeyValueRecallEnv

BAD_KWARGS = [
    (BinaryRecallEnv, dict(num_patterns=0), "num_patterns"),
    (BinaryRecallEnv, dict(num_patterns=2.5), "num_patterns must be an integer"),
    (BinaryRecallEnv, dict(num_patterns=True), "num_patterns must be an integer"),
    (BinaryRecallEnv, dict(pattern_size=-3), "pattern_size"),
    (BinaryRecallEnv, dict(distortion=1.5), r"distortion must be a fraction in \[0, 1\]"),
    (BinaryRecallEnv, dict(distortion="half"), "distortion must be a number"),
    (BinaryRecallEnv, dict(distortion=float("nan")), "distortion"),
    (BinaryRecallEnv, dict(num_queries=0), "num_queries"),
    (BinaryRecallEnv, dict(delay=-1), "delay"),
    (BinaryRecallEnv, dict(render_mode="human"), "render_mode must be None or one of"),
    (KeyValueRecallEnv, dict(num_values=1), "num_values"),
    (KeyValueRecallEnv, dict(num_pairs=5, key_size=2), "increase key_size"),
    (KeyValueRecallEnv, dict(distortion=-0.1), "distortion"),
    (ImageRecallEnv, dict(obs_type="rgb"), "obs_type must be 'vector' or 'pixels'"),
    (ImageRecallEnv, dict(source="web"), "source must be one of"),
    (ImageRecallEnv, dict(image_size=2), "image_size"),
    (ImageRecallEnv, dict(num_patterns=1), "num_patterns"),
    (ImageRecallEnv, dict(num_patterns=10, pool_size=5, source="procedural"), r"num_patterns .*\[2, 5\]"),
    (ImageRecallEnv, dict(pool_size=1, source="procedural"), "pool_size"),
    (ImageRecallEnv, dict(drawers=0), "drawers"),
    (ImageRecallEnv, dict(occlusion=2.0), "occlusion"),
    (FamiliarityEnv, dict(num_patterns=10, num_queries=10, pattern_size=4), "increase pattern_size"),
    (FamiliarityEnv, dict(repeat_prob=1.2), "repeat_prob"),
    (DelayedRecallEnv, dict(delay=-2), "delay"),
    (DelayedRecallEnv, dict(distractors="yes"), "distractors must be True or False"),
]


@pytest.mark.parametrize(("cls", "kwargs", "message"), BAD_KWARGS)
def test_bad_constructor_arguments(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_bad_arguments_through_make():
    with pytest.raises(ValueError, match="distortion"):
        gym.make("ebmm/BinaryRecall-v0", distortion=2)


def test_missing_omniglot_with_source_omniglot(tmp_path):
    with pytest.raises(FileNotFoundError, match="EBMM_DATA_DIR"):
        ImageRecallEnv(source="omniglot", data_dir=tmp_path)


BINARY_BAD_ACTIONS = [
    np.zeros(7, dtype=np.int8),  # too short
    np.zeros((1, 8), dtype=np.int8),  # batched
    np.full(8, 2),  # out of range
    np.full(8, 0.5, dtype=np.float32),  # not 0/1
    np.full(8, np.nan),
    np.array(["1"] * 8),
    3,
    None,
]
BINARY_GOOD_ACTIONS = [
    np.ones(8, dtype=np.int8),
    np.zeros(8, dtype=np.float32),  # SB3 passes floats
    np.ones(8, dtype=bool),
    [0, 1] * 4,
]


@pytest.mark.parametrize("cls", [BinaryRecallEnv, DelayedRecallEnv])
@pytest.mark.parametrize("action", BINARY_BAD_ACTIONS, ids=repr)
def test_bad_binary_actions(cls, action):
    env = cls(pattern_size=8)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"MultiBinary\(8\)|must be 0 or 1"):
        env.step(action)


@pytest.mark.parametrize("action", BINARY_GOOD_ACTIONS, ids=repr)
def test_good_binary_actions(action):
    env = BinaryRecallEnv(num_patterns=1, pattern_size=8)
    env.reset(seed=0)
    env.step(action)
    _, reward, terminated, _, _ = env.step(action)
    assert terminated and 0.0 <= reward <= 1.0


DISCRETE_ENVS = [
    lambda: KeyValueRecallEnv(num_values=4),
    lambda: ImageRecallEnv(num_patterns=4, source="procedural"),
    lambda: FamiliarityEnv(),
]
DISCRETE_BAD_ACTIONS = [-1, 4, 1.0, "1", np.array([1]), np.float32(1.0), True, None]


@pytest.mark.parametrize("make", DISCRETE_ENVS)
@pytest.mark.parametrize("action", DISCRETE_BAD_ACTIONS, ids=repr)
def test_bad_discrete_actions(make, action):
    env = make()
    env.reset(seed=0)
    if action == 4 and env.action_space.n > 4:
        action = env.action_space.n
    with pytest.raises(ValueError, match=r"must be (one integer )?in \[0, \d+\)"):
        env.step(action)


@pytest.mark.parametrize("make", DISCRETE_ENVS)
@pytest.mark.parametrize("action", [0, np.int64(1), np.array(1), np.uint8(0)], ids=repr)
def test_good_discrete_actions(make, action):
    env = make()
    env.reset(seed=0)
    env.step(action)


def test_step_before_reset_and_after_the_end():
    env = BinaryRecallEnv(num_patterns=1, pattern_size=4)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4, dtype=np.int8))
    with pytest.raises(RuntimeError, match="reset"):
        env.get_state()
    env.reset(seed=0)
    env.step(np.zeros(4, dtype=np.int8))
    env.step(np.zeros(4, dtype=np.int8))
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(4, dtype=np.int8))

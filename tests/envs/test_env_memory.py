"""The probes measure memory: an oracle that remembers is perfect, memoryless policies stay at chance.

Statistical bound used below: the mean return of n independent episodes is compared with the exact
expected return of the policy (``chance_return``). The test allows 5 standard errors (sample
standard deviation / sqrt(n)); for a correct environment it fails with probability about 6e-7 (two-
sided normal tail; n >= 200 episodes makes the normal approximation accurate for these bounded
returns), and the seeds are fixed, so the outcome is reproducible.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs import BinaryRecallEnv, DelayedRecallEnv, FamiliarityEnv, ImageRecallEnv, KeyValueRecallEnv
from envs.delayed_recall import LEARNING_THRESH, SWEEP, SWEEP_DELAYS, regret_ratio, score

ENV_IDS = envs.ENV_IDS
NUM_SIGMA = 5.0


def _episodes(env: gym.Env, policy, n: int, seed: int) -> np.ndarray:
    """Returns of ``n`` episodes; ``policy(env, obs) -> action``."""
    returns = np.zeros(n)
    obs, _ = env.reset(seed=seed)
    for i in range(n):
        done = False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(env, obs))
            returns[i] += reward
            done = terminated or truncated
        obs, _ = env.reset()
    return returns


def oracle(env, obs):
    """Reads what should have been remembered."""
    state = env.get_state()
    return state["answer"] if state["answer"] is not None else env.action_space.sample()


def memoryless(env, obs):
    """Answers from the current observation alone (a deterministic function of it)."""
    pattern = obs["pattern"]
    if isinstance(env, BinaryRecallEnv | DelayedRecallEnv):
        return (pattern > 0).astype(np.int8)  # copy the query: the best memoryless answer
    if isinstance(env, KeyValueRecallEnv):
        return int(np.packbits(pattern[: env.key_size] > 0).astype(np.int64).sum()) % env.num_values
    if isinstance(env, ImageRecallEnv):
        return int(np.asarray(pattern, dtype=np.float64).sum() * 7.0) % env.num_patterns
    if isinstance(env, FamiliarityEnv):
        return int(pattern.sum() > 0)
    raise TypeError(type(env))


def random_policy(env, obs):
    return env.action_space.sample()


def _num_episodes(env) -> int:
    return max(200, 6000 // env.episode_length)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_oracle_reaches_max_return(env_id):
    env = gym.make(env_id).unwrapped
    env.action_space.seed(0)
    returns = _episodes(env, oracle, 20, seed=1)
    np.testing.assert_allclose(returns, env.max_return)


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("policy", [memoryless, random_policy], ids=["memoryless", "random"])
def test_without_memory_returns_stay_at_chance(env_id, policy):
    env = gym.make(env_id).unwrapped
    env.action_space.seed(0)
    n = _num_episodes(env)
    returns = _episodes(env, policy, n, seed=2)
    mean, bound = returns.mean(), NUM_SIGMA * returns.std(ddof=1) / np.sqrt(n) + 1e-9
    if policy is memoryless:  # the policy the chance level is defined by: matches it
        assert abs(mean - env.chance_return) <= bound, (mean, env.chance_return, bound)
    else:  # random play can do no better
        assert mean <= env.chance_return + bound, (mean, env.chance_return, bound)
    # and the test has power: a memory is needed to get near the maximum
    assert env.chance_return + bound < env.max_return


def test_random_play_on_binary_patterns_is_half_right():
    """Bits answered at random are right half of the time (the random row of docs/envs.md)."""
    env = gym.make("ebmm/BinaryRecall-v0").unwrapped
    env.action_space.seed(0)
    returns = _episodes(env, random_policy, 400, seed=3)
    assert abs(returns.mean() - 0.5) <= NUM_SIGMA * returns.std(ddof=1) / np.sqrt(400)


def test_familiarity_repeats_are_distorted_copies_of_earlier_patterns():
    env = FamiliarityEnv(num_patterns=4, num_queries=64, pattern_size=32, distortion=0.25)
    env.reset(seed=0)
    state = env.get_state()
    originals, sources, labels = state["originals"], state["sources"], state["labels"]
    assert len(np.unique(originals, axis=0)) == len(originals)  # new patterns are all different
    assert 0 < labels.sum() < len(labels)
    new_rows = iter(range(4, len(originals)))
    for j, (label, source) in enumerate(zip(labels, sources, strict=True)):
        if label:
            assert 0 <= source < 4 + (j - labels[:j].sum())  # only patterns already shown
            assert (state["queries"][j] != originals[source]).sum() <= env.num_distorted
        else:
            np.testing.assert_array_equal(state["queries"][j], originals[next(new_rows)])


def test_binary_recall_query_distortion_count():
    env = BinaryRecallEnv(num_patterns=4, pattern_size=128, distortion=0.5, num_queries=50)
    env.reset(seed=0)
    state = env.get_state()
    flipped = (state["queries"] != state["targets"]).sum(axis=1)
    assert flipped.max() <= 64 and 20 < flipped.mean() < 44  # 64 bits redrawn: 32 flip on average
    np.testing.assert_array_equal(state["targets"], state["patterns"][state["target_indices"]])


def test_key_value_keys_are_distinct_and_values_in_vocabulary():
    env = KeyValueRecallEnv(num_pairs=16, key_size=4, num_values=3)  # all 16 possible keys
    env.reset(seed=0)
    state = env.get_state()
    assert len(np.unique(state["keys"], axis=0)) == 16
    assert set(state["values"].tolist()) <= {0, 1, 2}


def test_delayed_recall_sweep_and_score():
    assert SWEEP[0] == {"delay": min(SWEEP_DELAYS)}  # setting 0 is the cheapest: a smoke test
    perfect = {d: [1.0, 1.0] for d in SWEEP_DELAYS}
    assert score(perfect) == 1.0
    assert score({d: 0.5 for d in SWEEP_DELAYS}) == 0.0
    threshold_return = 1.0 - LEARNING_THRESH * 0.5
    half = {d: (1.0 if d <= 3 else threshold_return) for d in SWEEP_DELAYS}
    assert score(half) == pytest.approx(2 / len(SWEEP_DELAYS))  # at the threshold is not solved
    assert regret_ratio(1.0) == 0.0 and regret_ratio(0.5) == 1.0
    with pytest.raises(ValueError, match="sweep delays"):
        score({7: [1.0]})
    with pytest.raises(ValueError, match="at least one"):
        score({1: []})


def test_delayed_recall_sweep_oracle_and_chance_scores():
    """An oracle solves every delay, a memoryless agent none (setting 0 doubles as a smoke test)."""
    oracle_returns, blind_returns = {}, {}
    for setting in SWEEP:
        env = DelayedRecallEnv(**setting)
        env.action_space.seed(0)
        oracle_returns[setting["delay"]] = _episodes(env, oracle, 10, seed=0)
        blind_returns[setting["delay"]] = _episodes(env, memoryless, 100, seed=0)
    assert score(oracle_returns) == 1.0
    assert score(blind_returns) == 0.0

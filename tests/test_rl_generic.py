"""EBMM on environments of any observation space: rows, wrappers, encoders, both routes, saving, bad input."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO

from ebmm_rl import EBMMPolicy, EBMMRecurrentPolicy, EpisodeMemoryWrapper, PreviousActionReward, RowObservation
from ebmm_rl.memory import MemoryState
from ebmm_rl.rl.encoders import RowEncoder
from ebmm_rl.rl.recurrent import DEFAULT_BPTT_STEPS, EBMMRecurrentPPO
from ebmm_rl.rl.rows import RowLayout
from ebmm_rl.rl.wrappers import OneHotCodes
from tests.generic_envs import SPACES, SpaceEnv

TINY = dict(n_steps=16, batch_size=16, n_epochs=1)
SMALL = dict(embed_size=8, key_size=4, value_size=4, position_periods=(4, 16), hidden_size=16, dynamic_size=8,
             ebmm=dict(write_steps=2, read_steps=2))  # fmt: skip
"""A small core (the tests' sizes)."""


# ------------------------------------------------------------------------------------------------------ rows
@pytest.mark.parametrize("name", sorted(SPACES) + ["discrete_start", "multidiscrete_start"])
def test_row_flattening_follows_gymnasium(name):
    """The row before the mapping is gymnasium's own ``spaces.flatten`` (the independent reference)."""
    space = {**SPACES, **OFFSET_SPACES}[name]
    layout = RowLayout(space)
    space.seed(3)
    for _ in range(5):
        obs = space.sample()
        np.testing.assert_allclose(layout.flatten_numpy(obs), spaces.flatten(space, obs).astype(np.float64))


def test_row_mapping_by_hand():
    space = spaces.Dict(
        {"a": spaces.Box(0.0, 10.0, (2,), np.float32), "b": spaces.Discrete(3), "c": spaces.Box(-np.inf, np.inf, (1,))}
    )
    layout = RowLayout(space, spaces.Discrete(2), include_action=True, include_reward=True, data_range=(-1.0, 1.0))
    row = layout.numpy_row({"a": np.array([0.0, 5.0]), "b": 2, "c": np.array([0.5])}, action=1, reward=-2.0)
    # a: [0, 10] -> [-1, 1]; b: one-hot -> {-1, 1}; c: tanh(0.5); action one-hot; reward tanh(-2)
    expected = [-1.0, 0.0, -1.0, -1.0, 1.0, np.tanh(0.5), -1.0, 1.0, np.tanh(-2.0)]
    np.testing.assert_allclose(row, expected, rtol=1e-6, atol=1e-6)
    first = layout.numpy_row({"a": np.array([10.0, 10.0]), "b": 0, "c": np.array([0.0])})  # before any action
    np.testing.assert_allclose(first[-3:], [-1.0, -1.0, 0.0], atol=1e-6)


OFFSET_SPACES = {
    "discrete_start": spaces.Discrete(4, start=-2),
    "multidiscrete_start": spaces.MultiDiscrete([3, 2], start=[5, -1]),
}


@pytest.mark.parametrize(
    "name", ["box", "unbounded", "image", "discrete", "multidiscrete", "multibinary", "dict", *OFFSET_SPACES]
)
def test_torch_rows_equal_numpy_rows(name):
    space = {**SPACES, **OFFSET_SPACES}[name]
    layout = RowLayout(space)
    space.seed(0)
    observations = [space.sample() for _ in range(4)]
    if isinstance(space, spaces.Dict):
        batch = {k: torch.as_tensor(np.stack([np.asarray(o[k]) for o in observations])) for k in space.spaces}
    else:
        batch = torch.as_tensor(np.stack([np.asarray(o) for o in observations]))
    expected = np.stack([layout.numpy_row(o) for o in observations])
    np.testing.assert_allclose(layout.torch_rows(batch).numpy(), expected, atol=1e-6)


def test_unsupported_spaces_name_the_supported_ones():
    for space in (spaces.Text(5), spaces.Sequence(spaces.Discrete(2)), spaces.Dict({"m": spaces.Text(3)})):
        with pytest.raises(ValueError, match="supported: Box"):
            EpisodeMemoryWrapper(SpaceEnv(space))
    with pytest.raises(ValueError, match="supported: Box"):  # the recurrent route names them too, before SB3 does
        EBMMRecurrentPPO(env=SpaceEnv(spaces.Text(5)), **TINY)


def test_small_integer_codes_become_one_hot_rows():
    grid = spaces.Box(0, 255, (2, 2, 3), np.uint8)
    obs = np.array([[[10, 5, 2], [0, 1, 0]], [[3, 3, 3], [9, 0, 1]]], dtype=np.uint8)
    expected = np.eye(11)[obs.reshape(-1)].reshape(-1)  # one-hot per entry, C order
    layout = RowLayout(grid, codes=11)
    np.testing.assert_allclose(layout.flatten_numpy(obs), expected)
    np.testing.assert_allclose(layout.torch_rows(torch.as_tensor(obs)[None])[0].numpy(), expected * 2 - 1, atol=1e-6)
    wrapped = OneHotCodes(SpaceEnv(grid), 11)
    assert wrapped.observation_space.shape == (2, 2, 33)
    np.testing.assert_array_equal(wrapped.observation(obs).reshape(-1), expected)
    with pytest.raises(ValueError, match="code 12"):
        layout.numpy_row(np.full((2, 2, 3), 12, np.uint8))
    with pytest.raises(ValueError, match="code 12"):
        wrapped.observation(np.full((2, 2, 3), 12, np.uint8))


def test_rows_that_barely_vary_get_a_warning_naming_codes():
    """MiniGrid's symbolic grid read as pixels: values of at most 10 of 255 map into [-1, -0.92]."""

    class Symbolic(SpaceEnv):
        def _observe(self):
            return self.np_random.integers(0, 11, (3, 3, 3)).astype(np.uint8)

    model = RecurrentPPO(EBMMRecurrentPolicy, Symbolic(spaces.Box(0, 255, (3, 3, 3), np.uint8)), n_steps=128,
                         batch_size=128, n_epochs=1, policy_kwargs=dict(memory=SMALL))  # fmt: skip
    with pytest.warns(UserWarning, match="codes=<number of codes>"):
        model.learn(600)
    fixed = RecurrentPPO(EBMMRecurrentPolicy, Symbolic(spaces.Box(0, 255, (3, 3, 3), np.uint8)), n_steps=128,
                         batch_size=128, n_epochs=1, policy_kwargs=dict(memory=SMALL,
                         features_extractor_kwargs=dict(codes=11)))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fixed.learn(600)


def test_non_finite_observations_name_the_step():
    class NaNEnv(SpaceEnv):
        def _observe(self):
            return np.full(2, np.nan if self._t == 2 else 0.0, dtype=np.float32)

    env = EpisodeMemoryWrapper(NaNEnv(spaces.Box(-1.0, 1.0, (2,), np.float32)), max_patterns=4)
    env.reset(seed=0)
    env.step(0)
    with pytest.raises(ValueError, match="step 2 of the episode"):
        env.step(0)


# -------------------------------------------------------------------------------------------------- wrapper
def test_fifo_window_keeps_the_latest_rows():
    env = EpisodeMemoryWrapper(SpaceEnv(spaces.Discrete(5), length=20), max_patterns=3)
    obs, _ = env.reset(seed=0)
    queries = [obs["query"]]
    for _ in range(9):
        obs, *_ = env.step(0)
        queries.append(obs["query"])
    assert obs["history_len"] == 3
    np.testing.assert_array_equal(obs["history"], np.stack(queries[-4:-1]))  # the 3 rows before the current one
    overflow = EpisodeMemoryWrapper(SpaceEnv(spaces.Discrete(5), length=20), max_patterns=3, overflow="error")
    overflow.reset(seed=0)
    with pytest.raises(ValueError, match="larger max_patterns"):
        for _ in range(5):
            overflow.step(0)


def test_include_action_reward_appends_the_previous_step():
    env = EpisodeMemoryWrapper(SpaceEnv(spaces.Discrete(3), length=4), max_patterns=4, include_action_reward=True)
    obs, _ = env.reset(seed=0)
    assert obs["query"].shape == (3 + 2 + 1,)
    np.testing.assert_allclose(obs["query"][3:], [-1.0, -1.0, 0.0])  # no action yet, reward 0
    obs, reward, *_ = env.step(1)
    np.testing.assert_allclose(obs["query"][3:], [-1.0, 1.0, np.tanh(reward)], atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: EpisodeMemoryWrapper(gym.make("CartPole-v1"), max_patterns=4, include_action_reward=True),
        lambda: EpisodeMemoryWrapper(SpaceEnv(SPACES["dict"]), max_patterns=4),
        lambda: EpisodeMemoryWrapper(gym.make("envs:ebmm/BinaryRecall-Easy-v0")),
        lambda: RowObservation(SpaceEnv(SPACES["tuple"]), include_action_reward=True),
    ],
)
def test_wrappers_pass_check_env_with_warnings_as_errors(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*different from the unwrapped version")  # any wrapper
        check_env(make(), skip_render_check=True)


# ------------------------------------------------------------------------------------------------- encoders
def test_auto_encoder_kinds():
    assert RowEncoder("auto", 8, (-1.0, 1.0)).kind == "identity"
    assert RowEncoder("auto", 100, (-1.0, 1.0)).kind == "linear"
    assert RowEncoder("auto", 192, (-1.0, 1.0), RowLayout(SPACES["image"])).kind == "cnn"
    with pytest.raises(ValueError, match="needs rows that hold an image"):
        RowEncoder("cnn", 8, (-1.0, 1.0), RowLayout(SPACES["box"]))


def test_cnn_encoder_reads_the_image_in_its_layout():
    layout = RowLayout(SPACES["dict"])  # the image sits between the one-hot id and the vector
    encoder = RowEncoder("cnn", layout.size, layout.data_range, layout, pattern_size=5)
    image = torch.rand(2, 8, 8, 3) * 2 - 1
    rows = torch.zeros(2, layout.size)
    seg = layout.image_segments[0]
    rows[:, seg.offset : seg.offset + seg.size] = image.reshape(2, -1)
    expected = torch.tanh(
        encoder.project(torch.cat([encoder.cnns[0](image.permute(0, 3, 1, 2)), rows[:, encoder.rest]], dim=1))
    )
    torch.testing.assert_close(encoder(rows), expected)
    assert encoder(rows).shape == (2, 5) and encoder(rows).abs().max() < 1


@pytest.mark.parametrize("route", ["extractor", "recurrent"])
def test_rl_gradients_reach_the_embedding(route):
    env = SpaceEnv(SPACES["dict"])
    if route == "extractor":
        kwargs = dict(features_extractor_kwargs=dict(memory=SMALL, freeze_memory=True))
        model = PPO(EBMMPolicy, EpisodeMemoryWrapper(env, max_patterns=4), policy_kwargs=kwargs, **TINY)
        core = model.policy.features_extractor.core
    else:
        model = RecurrentPPO(EBMMRecurrentPolicy, env, policy_kwargs=dict(memory=SMALL), **TINY)
        core = model.policy.core
    assert core.embed.kind == "cnn"  # the rows hold an image
    before = [p.detach().clone() for p in core.embed.parameters()]
    theta = [p.detach().clone() for p in core.memory.parameters()]
    model.learn(32)
    assert any(not torch.equal(a, p) for a, p in zip(before, core.embed.parameters(), strict=True))
    unchanged = all(torch.equal(a, p) for a, p in zip(theta, core.memory.parameters(), strict=True))
    assert unchanged == (route == "extractor")  # frozen there, trained by the RL loss here


# ------------------------------------------------------------------------------------------- both routes
def _model(route: str, name: str):
    env = SpaceEnv(SPACES[name])
    if route == "extractor":
        return PPO(EBMMPolicy, EpisodeMemoryWrapper(env, max_patterns=4), **TINY)
    if name == "tuple":  # SB3 rejects Tuple observation spaces: the row wrapper makes a Box of it
        env = RowObservation(env)
    if route == "ebmm-ppo":
        return EBMMRecurrentPPO(env=env, **TINY)
    return RecurrentPPO(EBMMRecurrentPolicy, env, **TINY)


def _fresh_obs(route: str, name: str):
    """The first observation of a new env of ``name`` as ``route``'s model sees it (seed 0)."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    env = SpaceEnv(SPACES[name])
    if route == "extractor":
        env = EpisodeMemoryWrapper(env, max_patterns=4)
    elif name == "tuple":
        env = RowObservation(env)
    venv = DummyVecEnv([lambda: env])
    venv = PreviousActionReward(venv) if route == "ebmm-ppo" else venv
    venv.seed(0)
    return venv.reset()


def test_every_space_through_every_route_learns_saves_and_reloads_in_a_fresh_process(tmp_path):
    saved = []
    for route in ("extractor", "recurrent", "ebmm-ppo"):
        for name in sorted(SPACES):
            if route == "ebmm-ppo" and name not in ("box", "dict", "tuple"):
                continue
            model = _model(route, name)
            model.learn(64)
            path = tmp_path / f"{route}_{name}.zip"
            model.save(path)
            action, _ = model.predict(_fresh_obs(route, name), deterministic=True)
            saved.append((route, name, str(path), int(np.asarray(action).reshape(-1)[0])))
    script = f"""
import sys
import numpy as np
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from ebmm_rl import EBMMRecurrentPPO
from tests.test_rl_generic import _fresh_obs
for route, name, path, expected in {saved!r}:
    algo = PPO if route == "extractor" else RecurrentPPO if route == "recurrent" else EBMMRecurrentPPO
    action, _ = algo.load(path).predict(_fresh_obs(route, name), deterministic=True)
    assert int(np.asarray(action).reshape(-1)[0]) == expected, (route, name)
print("reloaded", len({saved!r}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"reloaded {len(saved)}" in out.stdout


def _float64_policy(k: int | None, env: gym.Env, seed: int = 0, **memory):
    """An ``EBMMRecurrentPolicy`` in float64 (its rows cast too), so that paths compare to 1e-10."""
    kwargs = dict(bptt_steps=k, memory={**SMALL, **memory})
    policy = RecurrentPPO(EBMMRecurrentPolicy, env, policy_kwargs=kwargs, seed=seed, **TINY).policy
    policy.double()
    ext = policy.features_extractor
    forward = ext.forward
    ext.forward = lambda obs: forward(obs).double()
    return policy


def test_recurrent_route_reads_before_writing_each_step_once():
    """A hand loop over the core's pieces: read step t from the memory of steps < t, then write it (float64)."""
    env = SpaceEnv(SPACES["box"], length=6)
    env.observation_space.seed(0)
    policy = _float64_policy(None, env, write_gate=True)
    core = policy.core
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(5)]))  # one sequence of 5 steps
    state = (torch.zeros(1, 1, policy.state_size, dtype=torch.float64),) * 2
    state[1][0, 0, 1] = 7.0  # the step clock runs on from an earlier episode
    starts = torch.tensor([1.0, 0, 0, 0, 0])
    with torch.no_grad():
        features, final = policy.unroll(obs, state, starts)
    rows = policy.features_extractor(obs)
    memory, expected = core.memory.initial_state(1), []
    with torch.no_grad():
        for t in range(5):
            u = core.embed(rows[t : t + 1])
            count, clock = torch.tensor([t]), torch.tensor([7 + t])
            expected.append(core.read_features(u, count, clock, memory))
            memory = core.write(core.patterns(u, count, clock), memory, u)
    torch.testing.assert_close(features, torch.cat(expected), rtol=1e-10, atol=1e-10)
    assert int(final[1][0, 0, 0]) == 5 and int(final[1][0, 0, 1]) == 12  # five rows written, clock 7 + 5
    # A rollout calls it one step at a time (write and read in lockstep): the same features and final memory.
    stepped = []
    with torch.no_grad():
        for t in range(5):
            f, state = policy.unroll(obs[t : t + 1], state, starts[t : t + 1])
            stepped.append(f)
    torch.testing.assert_close(torch.cat(stepped), torch.cat(expected), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, final, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(policy.unpack(state)[0].flatten(), memory.flatten(), rtol=1e-10, atol=1e-10)


def _block_reference_grads(policy, obs, state, starts, k, steps=None):
    """Loop by loop: each step's memory without a graph; each block of ``k`` steps written again with a graph."""
    core = policy.core
    theta_bar = core.memory.energy.memory_parameters()
    rows = policy.features_extractor(obs)
    T = rows.shape[0]
    memory, clock0 = policy.unpack(state)
    chain = []
    with torch.no_grad():  # chain[t]: the memory step t reads from
        m = memory
        for t in range(T):
            if starts[t] > 0.5:
                m = core.memory.initial_state(1)
            chain.append(m)
            u = core.embed(rows[t : t + 1])
            m = core.write(core.patterns(u, m.num_written, clock0 + t), m, u)
    policy.zero_grad()
    features = []
    for t in range(T if steps is None else steps):
        begin = t - t % k  # the block's first step
        m = MemoryState({n: theta_bar[n] + (w - theta_bar[n]).detach() for n, w in chain[begin].fast_weights.items()},
                        chain[begin].num_written)  # fmt: skip
        for r in range(begin, t):
            if r > begin and starts[r] > 0.5:
                m = core.memory.initial_state(1)
            u = core.embed(rows[r : r + 1])
            m = core.write(core.patterns(u, m.num_written, clock0 + r), m, u, create_graph=True)
        if t > begin and starts[t] > 0.5:
            m = core.memory.initial_state(1)
        u = core.embed(rows[t : t + 1])
        read = core.read_features(u, m.num_written, clock0 + t, m, create_graph=True)
        features.append(read)
    torch.cat(features).pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("k", [1, 3])
def test_truncated_backpropagation_equals_a_loop_by_loop_reference(k):
    """``bptt_steps=k``: blocks of k steps, each read backpropagates through the writes since its block began.

    An episode starts inside the sequence. Given a padding mask (the last steps), only the real steps are computed:
    the same gradients as the reference over those steps, zero features for the others.
    """
    torch.manual_seed(0)
    env = SpaceEnv(SPACES["box"], length=8)
    env.observation_space.seed(0)
    policy = _float64_policy(k, env)
    S = policy.state_size
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(8)]))
    cell = torch.zeros(1, 1, S, dtype=torch.float64)
    cell[0, 0, :2] = torch.tensor([3.0, 40.0])  # 3 rows written, clock 40
    state = (0.01 * torch.randn(1, 1, S, dtype=torch.float64), cell)
    starts = torch.tensor([0.0, 0, 0, 0, 0, 1, 0, 0])  # 5 steps continue the stored state, then a new episode
    expected = _block_reference_grads(policy, obs, state, starts, k)
    policy.zero_grad()
    features, _ = policy.unroll(obs, state, starts)
    features.pow(2).sum().backward()
    got = {n: p.grad for n, p in policy.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-10, msg=name)
    full = _float64_policy(None, env)
    full.load_state_dict(policy.state_dict())
    full.zero_grad()
    full.unroll(obs, state, starts)[0].pow(2).sum().backward()
    differs = any(not torch.allclose(p.grad, got[n], rtol=1e-3) for n, p in full.named_parameters() if n in got)
    assert differs  # the truncation changes the gradient (the sequence is longer than k)
    # Two sequences with padding at their ends (6 and 7 real steps); the second holds an episode start.
    obs2 = torch.cat([obs, torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(8)]))])
    state2 = tuple(torch.cat([x, x], dim=1) for x in state)
    state2[0][0, 1] *= 0.5
    starts2 = torch.cat([starts, torch.tensor([0.0, 0, 0, 1, 0, 0, 0, 0])])
    valid = torch.tensor([True] * 6 + [False] * 2 + [True] * 7 + [False])
    parts = [
        _block_reference_grads(policy, obs2[j * 8 : (j + 1) * 8], tuple(x[:, j : j + 1] for x in state2),
                               starts2[j * 8 : (j + 1) * 8], k, steps=n)
        for j, n in enumerate((6, 7))
    ]  # fmt: skip
    chain = []  # the rollout's stored state of every step, as EBMMRecurrentPPO hands it over
    with torch.no_grad():
        for j in range(2):
            s = tuple(x[:, j : j + 1] for x in state2)
            for t in range(8):
                chain.append(s)
                _, s = policy.unroll(obs2[j * 8 + t : j * 8 + t + 1], s, starts2[j * 8 + t : j * 8 + t + 1])
    stored = tuple(torch.cat([c[i] for c in chain], dim=1) for i in range(2))
    for step_states in (None, stored):
        policy.zero_grad()
        features, _ = policy.unroll(obs2, state2, starts2, step_states=step_states, valid=valid)
        if step_states is not None:
            assert torch.equal(features[~valid], torch.zeros_like(features[~valid]))
        (features[valid].pow(2).sum()).backward()
        for name in parts[0]:
            torch.testing.assert_close(policy.get_parameter(name).grad, parts[0][name] + parts[1][name], rtol=1e-9,
                                       atol=1e-10, msg=name)  # fmt: skip


def test_ebmm_recurrent_ppo_hands_the_stored_state_of_every_step_to_the_update(tmp_path):
    """Right after a rollout the stored states are the chain the policy would recompute: the same gradients."""
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env(lambda: SpaceEnv(SPACES["box"], length=5), n_envs=3, seed=0)
    model = EBMMRecurrentPPO(env=venv, n_steps=8, batch_size=24, n_epochs=1, seed=0, policy_kwargs=dict(memory=SMALL))
    assert model.policy.bptt_steps == DEFAULT_BPTT_STEPS
    _, callback = model._setup_learn(24, None)
    callback.on_training_start(locals(), globals())
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=8)
    data = next(model.rollout_buffer.get(24))
    assert data.lstm_states.vf[0].shape[1] == data.episode_starts.numel()  # one state per (sequence, step)
    policy, mask = model.policy, data.mask

    hidden, cell, valid = data.lstm_states.vf
    assert torch.equal(valid, mask > 0.5) and not bool(valid.all())  # the minibatch holds padded steps

    def grads(step_states, valid=None):
        policy.zero_grad()
        features, _ = policy.unroll(data.observations, data.lstm_states.pi, data.episode_starts, step_states, valid)
        (features.pow(2).sum(1) * mask).sum().backward()  # padded steps are masked out, as PPO's loss does
        return features, {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    (_, stored), (_, recomputed) = grads((hidden, cell)), grads(None)
    for name in recomputed:
        scale = float(recomputed[name].abs().max())
        torch.testing.assert_close(stored[name], recomputed[name], rtol=1e-4, atol=2e-5 * scale, msg=name)
    # Skipping the padded steps changes nothing PPO's masked loss sees; their features are zeros.
    features, skipped = grads((hidden, cell), valid)
    every_step, _ = grads((hidden, cell))
    assert torch.equal(features[~valid], torch.zeros_like(features[~valid]))
    torch.testing.assert_close(features[valid], every_step[valid], rtol=1e-6, atol=1e-6)
    for name in stored:  # float32 sums in another order: rounding relative to the gradient's scale
        scale = float(stored[name].abs().max())
        torch.testing.assert_close(skipped[name], stored[name], rtol=1e-5, atol=1e-6 * max(scale, 1.0), msg=name)
    model.learn(48)
    model.save(tmp_path / "model.zip")
    loaded = EBMMRecurrentPPO.load(tmp_path / "model.zip")
    assert loaded.policy.bptt_steps == DEFAULT_BPTT_STEPS
    assert type(loaded.rollout_buffer).__name__ == "_StepStatesDictBuffer"  # observations hold the action, reward


def test_previous_action_and_reward_by_hand():
    from stable_baselines3.common.vec_env import DummyVecEnv

    class Rewarding(SpaceEnv):
        def step(self, action):
            obs, _, done, truncated, info = super().step(action)
            return obs, float(self._t) + 0.5, done, truncated, info

    venv = PreviousActionReward(DummyVecEnv([lambda: Rewarding(SPACES["box"], length=3)] * 2))
    assert venv.observation_space == spaces.Dict({"obs": SPACES["box"], "prev_action": spaces.Box(0.0, 1.0, (2,)),
                                                  "prev_reward": spaces.Box(-np.inf, np.inf, (1,))})  # fmt: skip
    obs = venv.reset()
    assert (obs["prev_action"] == 0).all() and (obs["prev_reward"] == 0).all()
    venv.step_async(np.array([1, 0]))
    obs, rewards, dones, infos = venv.step_wait()
    np.testing.assert_array_equal(obs["prev_action"], [[0, 1], [1, 0]])  # one-hot of the actions taken
    np.testing.assert_array_equal(obs["prev_reward"], [[1.5], [1.5]])
    for _ in range(2):
        obs, rewards, dones, infos = venv.step(np.array([0, 1]))
    assert dones.all()  # the episodes end at step 3: the next observation starts a new episode, with zeros
    np.testing.assert_array_equal(rewards, [3.5, 3.5])  # the last step's reward reaches the agent unchanged
    assert (obs["prev_action"] == 0).all() and (obs["prev_reward"] == 0).all()
    np.testing.assert_array_equal(infos[0]["terminal_observation"]["prev_action"], [1, 0])  # the last step's
    assert infos[0]["terminal_observation"]["prev_reward"] == [3.5]
    for space, action, expected in [
        (spaces.MultiDiscrete([3, 2]), np.array([[2, 1]]), [0, 0, 1, 0, 1]),
        (spaces.MultiBinary(3), np.array([[1, 0, 1]]), [1, 0, 1]),
        (spaces.Box(-2.0, 2.0, (2,), np.float32), np.array([[0.5, -1.5]]), [0.5, -1.5]),
    ]:

        class Acting(SpaceEnv):
            def __init__(self, actions=space):
                super().__init__(SPACES["discrete"])
                self.action_space = actions

        wrapped = PreviousActionReward(Acting())  # a plain gym.Env is vectorised first
        wrapped.reset()
        given = action.copy()
        np.testing.assert_allclose(wrapped.step(action)[0]["prev_action"][0], expected)
        np.testing.assert_array_equal(action, given)  # the agent's actions (stored for PPO) stay as they were
    merged = PreviousActionReward(SpaceEnv(SPACES["dict"])).observation_space
    assert list(merged.spaces) == ["id", "image", "prev_action", "prev_reward", "vec"]  # a Dict keeps its keys
    with pytest.raises(ValueError, match="already has the keys"):
        PreviousActionReward(PreviousActionReward(SpaceEnv(SPACES["box"])))


def test_ebmm_recurrent_ppo_feeds_back_the_previous_action_and_reward():
    model = EBMMRecurrentPPO(env=SpaceEnv(SPACES["box"]), policy_kwargs=dict(memory=SMALL), **TINY)
    assert set(model.observation_space.spaces) == {"obs", "prev_action", "prev_reward"}
    layout = model.policy.features_extractor.layout
    assert layout.size == 3 + 2 + 1  # observation, one-hot action, reward
    model.learn(32)
    raw, _ = SpaceEnv(SPACES["box"]).reset(seed=0)
    with pytest.raises(ValueError, match="previous action and reward"):
        model.predict(raw)
    model.predict(PreviousActionReward(SpaceEnv(SPACES["box"])).reset())  # the fix it names works


@pytest.mark.parametrize("space", [SPACES["tuple"], spaces.Dict({"inner": spaces.Dict({"x": SPACES["discrete"]})})])
def test_ebmm_recurrent_ppo_names_the_wrapper_for_spaces_sb3_cannot_store(space):
    with pytest.raises(ValueError, match=r"RowObservation\(env\)"):
        EBMMRecurrentPPO(env=SpaceEnv(space), **TINY)
    model = EBMMRecurrentPPO(env=RowObservation(SpaceEnv(space)), policy_kwargs=dict(memory=SMALL), **TINY)
    model.learn(16)


def test_the_fast_memory_preset_builds_the_smaller_core_and_trains():
    import copy

    from ebmm_rl.rl import FAST_RL_MEMORY

    before = copy.deepcopy(FAST_RL_MEMORY)
    model = EBMMRecurrentPPO(env=SpaceEnv(SPACES["box"]), policy_kwargs=FAST_RL_MEMORY, **TINY)
    core = model.policy.core
    assert (core.config.hidden_size, core.config.dynamic_size, core.config.embed_size) == (32, 16, 32)
    assert (core.memory.config.write_steps, core.memory.config.read_steps) == (2, 2)
    model.learn(32)
    assert FAST_RL_MEMORY == before  # a module constant: building a model must not change it


def test_bad_settings_and_old_models_say_what_to_do():
    env = SpaceEnv(SPACES["box"], length=6)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="bptt_steps"):
            RecurrentPPO(EBMMRecurrentPolicy, env, policy_kwargs=dict(bptt_steps=bad), **TINY)
    for bad in (dict(heads=("time", "space")), dict(retention_half_lives=(8.0, 2.0)), dict(pixels=3)):
        with pytest.raises(ValueError, match="heads|retention_half_lives|unknown memory settings"):
            RecurrentPPO(EBMMRecurrentPolicy, env, policy_kwargs=dict(memory=bad), **TINY)
    from ebmm_rl import EBMMExtractor

    with pytest.raises(ValueError, match="before key/value rows"):  # a model saved by the earlier design
        RecurrentPPO(EBMMRecurrentPolicy, env, policy_kwargs=dict(features_extractor_class=EBMMExtractor), **TINY)
    with pytest.raises(ValueError, match="before it wrote key/value rows"):
        RecurrentPPO(EBMMRecurrentPolicy, env, policy_kwargs=dict(features_extractor_kwargs=dict(energy={})), **TINY)


def test_an_episode_of_500_steps_runs_on_both_routes():
    env = SpaceEnv(SPACES["box"], length=500)
    PPO(EBMMPolicy, EpisodeMemoryWrapper(env, max_patterns=4), n_steps=512, batch_size=512, n_epochs=1).learn(512)
    model = EBMMRecurrentPPO(env=env, n_steps=512, batch_size=128, n_epochs=1)
    model.learn(512)
    assert model.num_timesteps == 512


def test_aux_loss_is_logged_on_both_routes():
    env = SpaceEnv(SPACES["box"])
    model = EBMMRecurrentPPO(env=env, policy_kwargs=dict(memory=SMALL, aux_coef=1.0), **TINY)
    model.learn(32)
    assert np.isfinite(model.policy.core.last_aux_loss)
    extractor = dict(features_extractor_kwargs=dict(memory=SMALL, aux_coef=1.0))
    ext_model = PPO(EBMMPolicy, EpisodeMemoryWrapper(env, max_patterns=4), policy_kwargs=extractor, **TINY)
    ext_model.learn(32)
    assert np.isfinite(ext_model.policy.features_extractor.last_aux_loss)


def test_inject_loss_adds_its_gradient():
    from ebmm_rl.rl.losses import inject_loss

    w = torch.tensor([2.0], requires_grad=True)
    features = w * torch.tensor([1.0, 3.0])
    aux = (w - 5.0).pow(2).sum()  # d/dw = 2 (w - 5) = -6
    out = inject_loss(features, aux, 0.5)
    out.sum().backward()  # d/dw of sum(features) = 4, plus 0.5 * -6
    torch.testing.assert_close(w.grad, torch.tensor([4.0 - 3.0]))


# ------------------------------------------------------------------------------------------------ errors
def test_predict_on_the_unwrapped_env_names_the_wrapper():
    model = PPO(EBMMPolicy, EpisodeMemoryWrapper(SpaceEnv(SPACES["box"]), max_patterns=5), **TINY)
    raw, _ = SpaceEnv(SPACES["box"]).reset(seed=0)
    with pytest.raises(ValueError, match=r"EpisodeMemoryWrapper\(env, max_patterns=5\)"):
        model.predict(raw)
    recurrent = RecurrentPPO(EBMMRecurrentPolicy, RowObservation(SpaceEnv(SPACES["tuple"])), **TINY)
    raw, _ = SpaceEnv(SPACES["tuple"]).reset(seed=0)
    with pytest.raises(ValueError, match=r"RowObservation\(env\)"):
        recurrent.predict(raw)


def test_non_finite_observations_and_states_are_refused_on_the_recurrent_route():
    model = RecurrentPPO(EBMMRecurrentPolicy, SpaceEnv(SPACES["unbounded"]), policy_kwargs=dict(memory=SMALL), **TINY)
    obs, _ = SpaceEnv(SPACES["unbounded"]).reset(seed=0)
    for bad in (np.inf, -np.inf, np.nan):
        with pytest.raises(ValueError, match="non-finite"):
            model.predict(np.array([0.0, bad], np.float32))
    with pytest.raises(ValueError, match="observation shape"):  # SB3's own check
        model.predict(np.zeros(3, np.float32))
    state = np.zeros((1, 1, model.policy.state_size), np.float32)
    state[0, 0, 3] = np.nan
    with pytest.raises(ValueError, match="state"):
        model.predict(obs, state=(state, state.copy()), episode_start=np.array([False]))
    with pytest.raises(ValueError, match="state"):
        model.predict(obs, state=(state[..., :5], state[..., :5]), episode_start=np.array([False]))


def test_a_core_of_another_env_is_refused():
    from ebmm_rl import EBMMExtractor

    source = EBMMExtractor(EpisodeMemoryWrapper(SpaceEnv(SPACES["box"]), max_patterns=4).observation_space,
                           memory=SMALL).core  # fmt: skip
    with pytest.raises(ValueError, match="another environment"):
        EBMMExtractor(EpisodeMemoryWrapper(SpaceEnv(SPACES["dict"]), max_patterns=4).observation_space, core=source)
    with pytest.raises(ValueError, match="another environment"):
        RecurrentPPO(EBMMRecurrentPolicy, SpaceEnv(SPACES["dict"]), policy_kwargs=dict(core=source), **TINY)


def test_stateless_policy_on_a_raw_env_names_both_fixes():
    with pytest.raises(ValueError, match="EpisodeMemoryWrapper.*EBMMRecurrentPPO"):
        PPO(EBMMPolicy, SpaceEnv(SPACES["dict"]), **TINY)


def test_recurrent_policy_refuses_a_generic_history():
    with pytest.raises(ValueError, match="needs no history"):
        RecurrentPPO(EBMMRecurrentPolicy, EpisodeMemoryWrapper(SpaceEnv(SPACES["box"]), max_patterns=4), **TINY)


# ---------------------------------------------------------------------------------------------- pre-training
def test_pretraining_lowers_its_loss_on_a_foreign_env():
    from ebmm_rl.rl.core import CoreConfig, MemoryCore
    from ebmm_rl.rl.pretrain import EpisodeRows, pretrain_forward, recall_metrics

    torch.manual_seed(0)
    rows = EpisodeRows(lambda: gym.make("CartPole-v1"), episodes=10, seed=0)
    held = EpisodeRows(lambda: gym.make("CartPole-v1"), episodes=4, seed=99)
    assert rows.row_size == 4 + 2 + 1  # observation, previous action one-hot, previous reward
    core = MemoryCore(rows.row_size, CoreConfig.build(**SMALL))
    batch = held.sample(16, 8, torch.Generator().manual_seed(1))
    before = recall_metrics(core, batch, torch.Generator().manual_seed(2))["value_error"]
    trained = [p for n, p in core.named_parameters() if n.startswith(("memory.", "retention"))]
    optimizer = torch.optim.Adam(trained, lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        loss = pretrain_forward(core, rows.sample(16, 8, generator)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = recall_metrics(core, batch, torch.Generator().manual_seed(2))
    assert after["value_error"] < 0.5 * before and after["value_error"] < after["value_error_start"]


def test_memory_callback_logs_the_memory_tags(tmp_path):
    import csv

    from stable_baselines3.common.logger import configure

    from ebmm_rl.rl.callbacks import MemoryLoggerCallback

    for name, model in [
        ("extractor", PPO(EBMMPolicy, EpisodeMemoryWrapper(SpaceEnv(SPACES["box"]), max_patterns=4), **TINY)),
        ("recurrent", EBMMRecurrentPPO(env=SpaceEnv(SPACES["box"]), policy_kwargs=dict(memory=SMALL), **TINY)),
    ]:
        model.set_logger(configure(str(tmp_path / name), ["csv"]))
        model.learn(32, callback=MemoryLoggerCallback())
        rows = list(csv.DictReader((tmp_path / name / "progress.csv").open()))
        first = {k: float(v) for k, v in rows[0].items() if k.startswith("memory/") and v}
        for tag in ("retention_half_life_min", "retention_half_life_max", "read_step_0", "read_momentum_0",
                    "write_lr_energy", "recall_value_error", "recall_value_error_start"):  # fmt: skip
            assert np.isfinite(first[f"memory/{tag}"]), (name, tag)
        assert 0 < first["memory/retention_half_life_min"] < first["memory/retention_half_life_max"]
        assert ("memory/cache_hit_rate" in first) == (name == "extractor")
    with pytest.raises(ValueError, match="holds no EBMM memory core"):
        PPO("MlpPolicy", SpaceEnv(SPACES["box"]), **TINY).learn(16, callback=MemoryLoggerCallback())


def test_rollout_windows_cut_at_episode_starts_by_hand():
    """Each env's steps of the rollout, cut at episode starts and after ``window`` rows, at the rollout's clock."""
    from stable_baselines3.common.callbacks import BaseCallback

    from ebmm_rl.rl.callbacks import rollout_windows

    class Capture(BaseCallback):
        def _on_step(self):
            return True

        def _on_rollout_end(self):
            self.windows = rollout_windows(self.model.policy, self.model.rollout_buffer, window=2)
            self.obs = {k: torch.as_tensor(v[:, 0].copy()) for k, v in self.model.rollout_buffer.observations.items()}

    model = EBMMRecurrentPPO(env=SpaceEnv(SPACES["discrete"], length=3), policy_kwargs=dict(memory=SMALL), n_steps=7,
                             batch_size=7, n_epochs=1)  # fmt: skip
    capture = Capture()
    model.learn(7, callback=capture)
    assert rollout_windows(model.policy, model.rollout_buffer, window=2) is None  # after the update: too late
    rows, lengths, clock = capture.windows
    # episodes of 3 steps starting at steps 0, 3, 6 of the rollout -> windows (0,1) (2) (3,4) (5) (6)
    assert lengths.tolist() == [2, 1, 2, 1, 1]
    assert clock.tolist() == [0, 2, 3, 5, 6]
    expected = model.policy.features_extractor(capture.obs)
    torch.testing.assert_close(rows[0, :2], expected[0:2])
    torch.testing.assert_close(rows[2, :2], expected[3:5])
    assert (rows[1, 1] == 0).all()  # padding


def test_pretrained_core_travels_inside_model_zip(tmp_path):
    """meta_train_env.py -> agents.train -> delete the checkpoint -> agents.evaluate (safe loading)."""
    root = Path(__file__).resolve().parents[1]
    meta = tmp_path / "meta"
    cmd = [sys.executable, str(root / "scripts" / "meta_train_env.py"), "--env", "ebmm/CartPole-NoVel-v1"]
    cmd += ["--steps", "3", "--episodes", "3", "--batch-size", "4", "--eval-rows", "4", "--eval-every", "3"]
    cmd += ["--window", "4", "--embed-size", "6", "--hidden-size", "16", "--dynamic-size", "4"]
    cmd += ["--run-dir", str(meta), "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "before: value_error" in out.stdout
    train = [sys.executable, "-m", "agents.train", "--env", "ebmm/CartPole-NoVel-v1", "--memory", "ebmm-recurrent"]
    train += ["--memory-checkpoint", str(meta / "best.pt"), "--total-timesteps", "32", "--n-steps", "16"]
    train += ["--batch-size", "16", "--eval-freq", "0", "--run-root", str(tmp_path / "runs"), "--no-progress-bar"]
    out = subprocess.run(train, capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    model_zip = next((tmp_path / "runs").glob("*/model.zip"))
    import shutil

    shutil.rmtree(meta)  # the checkpoint is gone
    evaluate = [sys.executable, "-m", "agents.evaluate", str(model_zip), "--episodes", "2"]
    out = subprocess.run(evaluate, capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "mean return" in out.stdout


@pytest.mark.parametrize("critic_gradient", [False, True])
def test_the_value_loss_trains_the_core_only_when_asked(critic_gradient):
    """``critic_gradient=False`` (the default): the value head learns, the memory core gets no gradient from it."""
    env = SpaceEnv(SPACES["box"], length=6)
    kwargs = dict(memory=SMALL, critic_gradient=critic_gradient)
    policy = RecurrentPPO(EBMMRecurrentPolicy, env, policy_kwargs=kwargs, seed=0, **TINY).policy
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(4)]))
    state = (torch.zeros(1, 1, policy.state_size),) * 2
    from sb3_contrib.common.recurrent.type_aliases import RNNStates

    values, log_prob, _ = policy.evaluate_actions(obs, torch.zeros(4), RNNStates(state, state), torch.zeros(4))
    policy.zero_grad()
    values.sum().backward(retain_graph=True)
    core_grad = sum(float(p.grad.abs().sum()) for p in policy.core.parameters() if p.grad is not None)
    value_grad = float(policy.value_net.weight.grad.abs().sum())
    assert value_grad > 0
    assert (core_grad > 0) == critic_gradient
    policy.zero_grad()
    log_prob.sum().backward()  # the actor's loss always reaches the core
    assert sum(float(p.grad.abs().sum()) for p in policy.core.parameters() if p.grad is not None) > 0


def test_an_observation_of_another_shape_than_the_space_names_the_step():
    class Shifty(SpaceEnv):
        def step(self, action):
            obs, reward, done, truncated, info = super().step(action)
            return np.zeros(4, np.float32), reward, done, truncated, info  # the space says 3 entries

    env = EpisodeMemoryWrapper(Shifty(SPACES["box"], length=5), max_patterns=4)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="step 1 of the episode: the observation flattens to 4 entries.*to 3"):
        env.step(0)

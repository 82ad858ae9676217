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

from ebmm_rl import EBMMPolicy, EBMMRecurrentPolicy, EpisodeMemoryWrapper, RowObservation
from ebmm_rl.memory import MemoryState
from ebmm_rl.rl.encoders import RowEncoder
from ebmm_rl.rl.rows import RowLayout
from tests.generic_envs import SPACES, SpaceEnv

TINY = dict(n_steps=16, batch_size=16, n_epochs=1)


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
def test_rl_gradients_reach_the_encoder(route):
    env = SpaceEnv(SPACES["dict"])
    kwargs = dict(features_extractor_kwargs=dict(freeze_memory=True))
    if route == "extractor":
        model = PPO(EBMMPolicy, EpisodeMemoryWrapper(env, max_patterns=4), policy_kwargs=kwargs, **TINY)
    else:
        model = RecurrentPPO(EBMMRecurrentPolicy, env, policy_kwargs=kwargs, **TINY)
    encoder = model.policy.features_extractor.encoder
    memory = model.policy.features_extractor.memory
    before = [p.detach().clone() for p in encoder.parameters()]
    theta = [p.detach().clone() for p in memory.parameters()]
    model.learn(32)
    assert any(not torch.equal(a, p) for a, p in zip(before, encoder.parameters(), strict=True))
    assert all(torch.equal(a, p) for a, p in zip(theta, memory.parameters(), strict=True))  # frozen memory


# ------------------------------------------------------------------------------------------- both routes
def _model(route: str, name: str):
    env = SpaceEnv(SPACES[name])
    if route == "extractor":
        return PPO(EBMMPolicy, EpisodeMemoryWrapper(env, max_patterns=4), **TINY)
    if name == "tuple":  # SB3 rejects Tuple observation spaces: the row wrapper makes a Box of it
        env = RowObservation(env)
    return RecurrentPPO(EBMMRecurrentPolicy, env, **TINY)


def test_every_space_through_both_routes_learns_saves_and_reloads_in_a_fresh_process(tmp_path):
    saved = []
    for route in ("extractor", "recurrent"):
        for name in sorted(SPACES):
            model = _model(route, name)
            model.learn(64)
            path = tmp_path / f"{route}_{name}.zip"
            model.save(path)
            obs, _ = model.get_env().envs[0].reset(seed=1)
            action, _ = model.predict(obs, deterministic=True)
            saved.append((route, name, str(path), int(np.asarray(action).reshape(-1)[0])))
    script = f"""
import sys
import numpy as np
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from ebmm_rl import EpisodeMemoryWrapper, RowObservation
from tests.generic_envs import SPACES, SpaceEnv
for route, name, path, expected in {saved!r}:
    env = SpaceEnv(SPACES[name])
    if route == "extractor":
        env = EpisodeMemoryWrapper(env, max_patterns=4)
        model = PPO.load(path)
    else:
        env = RowObservation(env) if name == "tuple" else env
        model = RecurrentPPO.load(path)
    obs, _ = env.reset(seed=1)
    action, _ = model.predict(obs, deterministic=True)
    assert int(np.asarray(action).reshape(-1)[0]) == expected, (route, name)
print("reloaded", len({saved!r}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"reloaded {len(saved)}" in out.stdout


def test_recurrent_route_writes_each_step_once_and_reads_before_writing():
    """In float64 (in float32 the five chained writes amplify rounding to about 4e-5 on some draws)."""
    env = SpaceEnv(SPACES["box"], length=6)
    env.observation_space.seed(0)
    policy = _float64_policy(None, env)
    ext = policy.features_extractor
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(5)]))  # one sequence of 5 steps
    state = (torch.zeros(1, 1, policy.memory_size, dtype=torch.float64),) * 2
    starts = torch.tensor([1.0, 0, 0, 0, 0])
    with torch.no_grad():
        features, final = policy.unroll(obs, state, starts)
    # Reference: an explicit loop, one write per step after the read.
    patterns = ext.encode(ext.rows(obs)).unsqueeze(0)  # [1, 5, P]
    memory = ext.memory.initial_state(1)
    expected = []
    with torch.no_grad():
        for t in range(5):
            expected.append(ext.head(ext.read_features(patterns[:, t], memory)))
            memory = ext.memory.write(patterns[:, t : t + 1], memory)
    torch.testing.assert_close(features, torch.cat(expected), rtol=1e-10, atol=1e-10)
    assert int(final[1][0, 0, 0]) == 5  # five rows written
    # A rollout calls it one step at a time (write and read in lockstep): the same features and final memory.
    stepped = []
    with torch.no_grad():
        for t in range(5):
            f, state = policy.unroll(obs[t : t + 1], state, starts[t : t + 1])
            stepped.append(f)
    torch.testing.assert_close(torch.cat(stepped), torch.cat(expected), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, final, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(policy._to_memory(state).flatten(), memory.flatten(), rtol=1e-10, atol=1e-10)


def test_energy_features_are_the_energies_of_the_query_and_of_the_retrieved_pattern():
    """The ``energies`` part: E(query) and E(retrieved) by the plain forward pass, also from a lockstep read."""
    env = SpaceEnv(SPACES["box"], length=6)
    env.observation_space.seed(1)
    policy = _float64_policy(None, env, seed=1)
    ext = policy.features_extractor
    assert ext.features == ("retrieved", "energies", "query")
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(4)]))
    rows = ext.encode(ext.rows(obs))  # [4, P]
    P = rows.shape[1]
    state = ext.memory.write(rows.flip(0).unsqueeze(1), ext.memory.initial_state(4))  # some written memory
    after, lockstep = ext.memory.write_and_read(rows.unsqueeze(1), rows.unsqueeze(1), state)
    for features in (ext.read_features(rows, state), ext.read_features(rows, state, result=lockstep)):
        retrieved = features[:, :P]
        energy = ext.memory.energy
        expected = torch.cat([energy(rows.unsqueeze(1), state.fast_weights),
                              energy(retrieved.unsqueeze(1), state.fast_weights)], dim=1)  # fmt: skip
        torch.testing.assert_close(features[:, P : P + 2], expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(features[:, P + 2 :], rows, rtol=0, atol=0)


def _truncated_reference_grads(policy, obs, state, starts, k, steps=None):
    """Loop by loop: each step's memory without a graph, then its last ``k`` writes again with a graph, then read."""
    ext = policy.features_extractor
    memory = ext.memory
    theta_bar = memory.energy.memory_parameters()
    patterns = ext.encode(ext.rows(obs)).unsqueeze(0)  # [1, T, P] (one sequence)
    T = patterns.shape[1]
    with torch.no_grad():  # chain[t]: the memory step t reads from
        chain, m = [], policy._to_memory(state)
        for t in range(T):
            if starts[t] > 0.5:
                m = memory.initial_state(1)
            chain.append(m)
            m = memory.write(patterns[:, t : t + 1], m, create_graph=False)
    policy.zero_grad()
    features = []
    for t in range(T if steps is None else steps):
        begin = max(t - k, 0)
        m = MemoryState({n: theta_bar[n] + (w - theta_bar[n]).detach() for n, w in chain[begin].fast_weights.items()},
                        chain[begin].num_written)  # fmt: skip
        for r in range(begin, t):
            if r > begin and starts[r] > 0.5:
                m = memory.initial_state(1)
            m = memory.write(patterns[:, r : r + 1], m, create_graph=True)
        if t > begin and starts[t] > 0.5:
            m = memory.initial_state(1)
        features.append(ext.head(ext.read_features(patterns[:, t], m)))
    torch.cat(features).pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}


def _float64_policy(k: int | None, env: gym.Env, seed: int = 0):
    """An ``EBMMRecurrentPolicy`` in float64 (its rows cast too), so that gradients compare to 1e-10."""
    policy = RecurrentPPO(EBMMRecurrentPolicy, env, policy_kwargs=dict(bptt_steps=k), seed=seed, **TINY).policy
    policy.double()
    ext = policy.features_extractor
    rows = ext.rows
    ext.rows = lambda obs: rows(obs).double()
    return policy


@pytest.mark.parametrize("k", [1, 2])
def test_truncated_backpropagation_equals_a_loop_by_loop_reference(k):
    """``bptt_steps=k``: every read backpropagates through its last k writes only; an episode starts inside.

    Given a padding mask (the last two steps), only the real steps are computed: the same gradients as the
    reference over those steps, zero features for the others.
    """
    torch.manual_seed(0)
    env = SpaceEnv(SPACES["box"], length=8)
    env.observation_space.seed(0)
    policy = _float64_policy(k, env)
    obs = torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(8)]))
    state = (0.01 * torch.randn(1, 1, policy.memory_size, dtype=torch.float64),
             torch.full((1, 1, policy.memory_size), 3.0, dtype=torch.float64))  # fmt: skip
    starts = torch.tensor([0.0, 0, 0, 0, 0, 1, 0, 0])  # 5 steps continue the stored state, then a new episode
    expected = _truncated_reference_grads(policy, obs, state, starts, k)
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
    state2 = tuple(torch.cat([x, 0.5 * x], dim=1) for x in state)
    starts2 = torch.cat([starts, torch.tensor([0.0, 0, 0, 1, 0, 0, 0, 0])])
    valid = torch.tensor([True] * 6 + [False] * 2 + [True] * 7 + [False])
    parts = [
        _truncated_reference_grads(policy, obs2[j * 8 : (j + 1) * 8], tuple(x[:, j : j + 1] for x in state2),
                                   starts2[j * 8 : (j + 1) * 8], k, steps=n)
        for j, n in enumerate((6, 7))
    ]  # fmt: skip
    policy.zero_grad()
    features, _ = policy.unroll(obs2, state2, starts2, valid=valid)
    assert torch.equal(features[~valid], torch.zeros_like(features[~valid]))
    features.pow(2).sum().backward()
    for name in parts[0]:
        torch.testing.assert_close(policy.get_parameter(name).grad, parts[0][name] + parts[1][name], rtol=1e-10,
                                   atol=1e-10, msg=name)  # fmt: skip


def test_ebmm_recurrent_ppo_hands_the_stored_state_of_every_step_to_the_update(tmp_path):
    """Right after a rollout the stored states are the chain the policy would recompute: the same gradients."""
    from stable_baselines3.common.env_util import make_vec_env

    from ebmm_rl.rl.recurrent import EBMMRecurrentPPO

    model = EBMMRecurrentPPO(env=make_vec_env(lambda: SpaceEnv(SPACES["box"], length=5), n_envs=3, seed=0),
                             n_steps=8, batch_size=24, n_epochs=1, seed=0)  # fmt: skip
    assert model.policy.bptt_steps == 1
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
    for name in stored:
        torch.testing.assert_close(skipped[name], stored[name], rtol=1e-5, atol=1e-6, msg=name)
    model.learn(48)
    model.save(tmp_path / "model.zip")
    loaded = EBMMRecurrentPPO.load(tmp_path / "model.zip")
    assert loaded.policy.bptt_steps == 1 and type(loaded.rollout_buffer).__name__ == "_StepStatesBuffer"


@pytest.mark.parametrize("space", [SPACES["tuple"], spaces.Dict({"inner": spaces.Dict({"x": SPACES["discrete"]})})])
def test_ebmm_recurrent_ppo_names_the_wrapper_for_spaces_sb3_cannot_store(space):
    from ebmm_rl.rl.recurrent import EBMMRecurrentPPO

    with pytest.raises(ValueError, match=r"RowObservation\(env\)"):
        EBMMRecurrentPPO(env=SpaceEnv(space), **TINY)
    model = EBMMRecurrentPPO(env=RowObservation(SpaceEnv(space)), **TINY)  # the fix it names works
    model.learn(16)


def test_the_fast_memory_preset_builds_the_smaller_memory_and_trains():
    import copy

    from ebmm_rl.rl import FAST_RL_MEMORY
    from ebmm_rl.rl.recurrent import EBMMRecurrentPPO

    before = copy.deepcopy(FAST_RL_MEMORY)
    model = EBMMRecurrentPPO(env=SpaceEnv(SPACES["box"]), policy_kwargs=dict(features_extractor_kwargs=FAST_RL_MEMORY),
                             **TINY)  # fmt: skip
    memory = model.policy.features_extractor.memory
    assert (memory.energy.config.hidden_size, memory.energy.config.dynamic_size) == (32, 16)
    assert (memory.config.write_steps, memory.config.read_steps) == (2, 2)
    model.learn(32)
    assert FAST_RL_MEMORY == before  # a module constant: building a model must not change it


def test_bptt_steps_refuses_bad_values_and_the_history_route():
    env = SpaceEnv(SPACES["box"], length=6)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="bptt_steps"):
            RecurrentPPO(EBMMRecurrentPolicy, env, policy_kwargs=dict(bptt_steps=bad), **TINY)
    with pytest.raises(ValueError, match="raw-observation route"):
        RecurrentPPO(EBMMRecurrentPolicy, EpisodeMemoryWrapper(gym.make("ebmm/BinaryRecall-Easy-v0")),
                     policy_kwargs=dict(bptt_steps=1), **TINY)  # fmt: skip


def test_an_episode_of_500_steps_runs_on_both_routes():
    env = SpaceEnv(SPACES["box"], length=500)
    PPO(EBMMPolicy, EpisodeMemoryWrapper(env, max_patterns=4), n_steps=512, batch_size=512, n_epochs=1).learn(512)
    model = RecurrentPPO(EBMMRecurrentPolicy, env, n_steps=512, batch_size=128, n_epochs=1)
    model.learn(512)
    assert model.num_timesteps == 512


def test_aux_loss_is_logged_and_trains_the_memory():
    env = SpaceEnv(SPACES["box"])
    model = RecurrentPPO(
        EBMMRecurrentPolicy, env, policy_kwargs=dict(features_extractor_kwargs=dict(aux_coef=1.0)), **TINY
    )
    model.learn(32)
    assert model.policy.features_extractor.last_aux_loss is not None
    ext_model = PPO(
        EBMMPolicy,
        EpisodeMemoryWrapper(env, max_patterns=4),
        policy_kwargs=dict(features_extractor_kwargs=dict(aux_coef=1.0)),
        **TINY,
    )
    ext_model.learn(32)
    assert np.isfinite(ext_model.policy.features_extractor.last_aux_loss)


def test_inject_loss_adds_its_gradient():
    from ebmm_rl.rl.extractor import inject_loss

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


def test_encoder_of_another_env_is_refused():
    from ebmm_rl import EBMMExtractor

    wrapped = EpisodeMemoryWrapper(SpaceEnv(SPACES["box"]), max_patterns=4)
    other = RowEncoder("linear", 7, (-1.0, 1.0), pattern_size=4)
    with pytest.raises(ValueError, match="rows of 7 entries"):
        EBMMExtractor(wrapped.observation_space, encoder=other)
    with pytest.raises(ValueError, match="does not fit"):
        EBMMExtractor(wrapped.observation_space, encoder="linear", encoder_state=other.state_dict())


def test_stateless_policy_on_a_raw_env_names_both_fixes():
    with pytest.raises(ValueError, match="EpisodeMemoryWrapper"):
        PPO(EBMMPolicy, SpaceEnv(SPACES["dict"]), **TINY)


def test_recurrent_policy_refuses_a_generic_history():
    with pytest.raises(ValueError, match="needs no history"):
        RecurrentPPO(EBMMRecurrentPolicy, EpisodeMemoryWrapper(SpaceEnv(SPACES["box"]), max_patterns=4), **TINY)


# ----------------------------------------------------------------------------------------- self-supervised
def test_self_supervised_meta_training_lowers_its_loss_on_a_foreign_env():
    import dataclasses

    from ebmm_rl.energy.mlp import MLPConfig, MLPEnergy
    from ebmm_rl.memory import EBMMemory
    from ebmm_rl.rl.extractor import DEFAULT_RL_EBMM_CONFIG
    from ebmm_rl.rl.self_supervised import EpisodeRows, build_encoder, self_supervised_forward

    torch.manual_seed(0)
    rows = EpisodeRows(lambda: gym.make("CartPole-v1"), episodes=10, include_action_reward=True, seed=0)
    held = EpisodeRows(lambda: gym.make("CartPole-v1"), episodes=4, include_action_reward=True, seed=99)
    encoder = build_encoder(rows.layout, "auto", 8, seed=0)
    memory = EBMMemory(
        MLPEnergy(MLPConfig(input_size=encoder.pattern_size, hidden_size=32, dynamic_size=16)),
        dataclasses.replace(DEFAULT_RL_EBMM_CONFIG, data_range=encoder.data_range),
    )
    forward = self_supervised_forward(encoder)
    batch = held.sample(16, 8, torch.Generator().manual_seed(1))

    def held_loss() -> float:
        torch.manual_seed(5)  # the same distortions each time
        return float(forward(memory, batch).loss.detach())

    before = held_loss()
    optimizer = torch.optim.Adam(memory.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss = forward(memory, rows.sample(16, 8, generator)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert held_loss() < 0.7 * before


def test_memory_callback_logs_the_memory_tags(tmp_path):
    from stable_baselines3.common.logger import configure

    from ebmm_rl.rl.callbacks import MemoryLoggerCallback

    model = PPO(EBMMPolicy, EpisodeMemoryWrapper(SpaceEnv(SPACES["box"]), max_patterns=4), **TINY)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(32, callback=MemoryLoggerCallback())
    header = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    for tag in ("memory/energy_query", "memory/energy_retrieved", "memory/read_step_k0", "memory/write_lr_t0",
                "memory/alpha", "memory/cache_hit_rate"):  # fmt: skip
        assert tag in header, tag
    import csv

    rows = list(csv.DictReader((tmp_path / "progress.csv").open()))
    first = {k: float(v) for k, v in rows[0].items() if k.startswith("memory/") and v}
    assert first["memory/cache_hit_rate"] >= 0 and first["memory/alpha"] > 0
    assert first["memory/energy_query"] != first["memory/energy_retrieved"]  # reading moved the pattern
    with pytest.raises(ValueError, match="needs a policy with an EBMMExtractor"):
        PPO("MlpPolicy", SpaceEnv(SPACES["box"]), **TINY).learn(16, callback=MemoryLoggerCallback())


def _probe_tags(tmp_path, model) -> dict[str, float]:
    import csv

    from stable_baselines3.common.logger import configure

    from ebmm_rl.rl.callbacks import MemoryLoggerCallback

    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(32, callback=MemoryLoggerCallback())
    (last,) = list(csv.DictReader((tmp_path / "progress.csv").open()))[-1:]
    return {k: float(v) for k, v in last.items() if k.startswith("memory/") and v}


def test_memory_callback_probes_the_truth_where_the_task_has_one(tmp_path):
    probe = _probe_tags(tmp_path / "probe", PPO(EBMMPolicy, EpisodeMemoryWrapper(gym.make("ebmm/BinaryRecall-Easy-v0")),
                                                  **TINY))  # fmt: skip
    for tag in ("truth_error", "truth_error_query", "energy_stored", "energy_distorted", "recall_error",
                "recall_error_query"):  # fmt: skip
        assert np.isfinite(probe[f"memory/{tag}"]), tag
    raw = _probe_tags(tmp_path / "raw", RecurrentPPO(EBMMRecurrentPolicy, gym.make("CartPole-v1"), **TINY))
    assert "memory/recall_error" in raw and not any("truth" in k for k in raw)  # no truth on a foreign env
    generic = EpisodeMemoryWrapper(gym.make("ebmm/BinaryRecall-Easy-v0"), protocol="generic", max_patterns=8)
    assert not any("truth" in k for k in _probe_tags(tmp_path / "generic", PPO(EBMMPolicy, generic, **TINY)))


def test_truth_probe_query_error_by_hand():
    """With the identity encoder the query's error is the plain mean of (query - target)² over the sampler's rows."""
    from ebmm_rl.rl.callbacks import truth_probe
    from ebmm_rl.rl.env_meta import EnvRecallSampler

    sampler = EnvRecallSampler("ebmm/BinaryRecall-Easy-v0")
    history, lengths, queries, targets = sampler.sample(8, torch.Generator().manual_seed(0)).as_tuple()
    model = PPO(EBMMPolicy, EpisodeMemoryWrapper(gym.make("ebmm/BinaryRecall-Easy-v0")), **TINY)
    out = truth_probe(model.policy.features_extractor, history, lengths, queries, targets)
    q, t = queries.numpy(), targets.numpy()
    assert out["memory/truth_error_query"] == pytest.approx(float(np.mean((q - t) ** 2)), rel=1e-6)
    assert out["memory/truth_error_query"] > 0  # the queries are distorted copies


def test_experience_probe_energies_equal_a_loop_over_episodes():
    """Padded batch vs one unpadded episode at a time, written with the memory's own write (chunks of 1)."""
    from ebmm_rl.rl.callbacks import experience_probe

    model = PPO(EBMMPolicy, EpisodeMemoryWrapper(SpaceEnv(SPACES["box"]), max_patterns=5), **TINY)
    extractor = model.policy.features_extractor
    P = extractor.pattern_size
    patterns = torch.rand(3, 5, P, generator=torch.Generator().manual_seed(1)) * 2 - 1
    lengths = torch.tensor([5, 2, 0])
    out = experience_probe(extractor, patterns, lengths, torch.Generator().manual_seed(2))
    memory, energies = extractor.memory, []
    for b in range(2):  # the empty episode is left out
        state = memory.initial_state(1)
        for i in range(int(lengths[b])):
            state = memory.write(patterns[b : b + 1, i : i + 1], state, create_graph=False)
        with torch.no_grad():
            energies.extend(memory.energy(patterns[b : b + 1, : int(lengths[b])], state.fast_weights)[0].tolist())
    assert out["memory/energy_stored"] == pytest.approx(float(np.mean(energies)), rel=1e-5)


def test_episode_segments_by_hand():
    from ebmm_rl.rl.callbacks import _episode_segments

    starts = np.array([[1, 0], [0, 1], [0, 0], [1, 0], [0, 0]])  # [T, n_envs]
    assert _episode_segments(starts, window=5) == [(0, 3), (1, 5)]
    assert _episode_segments(starts, window=2) == [(1, 3), (3, 5)]


def test_pretrained_memory_travels_inside_model_zip(tmp_path):
    """meta_train_env.py (self-supervised, with a learned encoder) -> agents.train -> delete the checkpoint -> load."""
    root = Path(__file__).resolve().parents[1]
    meta = tmp_path / "meta"
    cmd = [sys.executable, str(root / "scripts" / "meta_train_env.py"), "--env", "ebmm/CartPole-NoVel-v1"]
    cmd += ["--steps", "3", "--episodes", "3", "--batch-size", "4", "--eval-rows", "4", "--eval-every", "3"]
    cmd += ["--window", "4", "--encoder", "linear", "--pattern-size", "6", "--hidden-size", "16", "--dynamic-size", "4"]
    cmd += ["--run-dir", str(meta), "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "before meta-training: sq_error" in out.stdout and (meta / "encoder.pt").exists()
    train = [sys.executable, "-m", "agents.train", "--env", "ebmm/CartPole-NoVel-v1", "--memory", "ebmm-recurrent"]
    train += ["--memory-checkpoint", str(meta / "best.pt"), "--total-timesteps", "32", "--n-steps", "16"]
    train += ["--batch-size", "16", "--eval-freq", "0", "--run-root", str(tmp_path / "runs"), "--no-progress-bar"]
    out = subprocess.run(train, capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    model_zip = next((tmp_path / "runs").glob("*/model.zip"))
    import shutil

    shutil.rmtree(meta)  # the checkpoint and the encoder file are gone
    check = f"""
import sys, torch
sys.path.insert(0, {str(root)!r})
from sb3_contrib import RecurrentPPO
from ebmm_rl.checkpoint import load_checkpoint
model = RecurrentPPO.load({str(model_zip)!r})
ext = model.policy.features_extractor
assert ext.encoder.kind == "linear" and ext.pattern_size == 6, (ext.encoder.kind, ext.pattern_size)
import gymnasium as gym, ebmm_rl
obs, _ = gym.make("ebmm/CartPole-NoVel-v1").reset(seed=0)
print("action", model.predict(obs, deterministic=True)[0])
"""
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "action" in out.stdout

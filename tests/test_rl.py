"""EBMM inside SB3 agents: the episode-memory wrapper, the EBMM features extractor, the recurrent policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from rl_helpers import as_batch, collect
from stable_baselines3 import A2C, PPO

import envs  # noqa: F401  (registers the ids)
from ebmm_rl import EBMMExtractor, EpisodeMemoryWrapper, MultiBinaryToMultiDiscrete
from ebmm_rl.checkpoint import save_memory
from ebmm_rl.rl.pretrain import save_core

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("BinaryRecall", "KeyValueRecall", "ImageRecall", "Familiarity", "DelayedRecall")
TINY = dict(memory=dict(embed_size=8, key_size=4, value_size=4, position_periods=(4, 16), hidden_size=16,
                        dynamic_size=8, ebmm=dict(write_steps=2, read_steps=2)))  # fmt: skip
"""A tiny fresh core: embedding 8, key 4, value 4, two periods, MLPEnergy hidden 16 with 8 units, T = K = 2."""
POLICY = dict(features_extractor_class=EBMMExtractor, features_extractor_kwargs=TINY)
PPO_TINY = dict(n_steps=32, batch_size=32, n_epochs=1, seed=0, policy_kwargs=POLICY)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_env(env_id: str = "ebmm/BinaryRecall-Easy-v0", **kwargs) -> EpisodeMemoryWrapper:
    write_phases = (0, 1) if "Familiarity" in env_id else (0,)
    return EpisodeMemoryWrapper(gym.make(env_id, **kwargs), write_phases=write_phases)


def extractor(env: gym.Env, **kwargs) -> EBMMExtractor:
    torch.manual_seed(0)
    return EBMMExtractor(env.observation_space, **{**TINY, **kwargs})


# ------------------------------------------------------------------------------------------------- wrappers
def test_wrapper_history_holds_the_earlier_write_patterns():
    env = make_env("ebmm/BinaryRecall-Easy-v0")
    obs, _ = env.reset(seed=1)
    written = []
    for _ in range(4):
        assert obs["history_len"] == len(written)
        np.testing.assert_array_equal(obs["history"][: len(written)], np.array(written).reshape(-1, 8))
        assert (obs["history"][len(written) :] == 0).all()
        np.testing.assert_array_equal(obs["query"], obs["pattern"])
        if obs["phase"] == 0:
            written.append(obs["pattern"].copy())
        obs, _, terminated, _, _ = env.step(env.action_space.sample())
        if terminated:
            break
    assert written and obs["history_len"] == 2
    assert env.observation_space.contains(obs)
    obs, _ = env.reset()
    assert obs["history_len"] == 0 and (obs["history"] == 0).all()


def test_wrapper_stores_queries_for_familiarity_after_reading_them():
    env = make_env("ebmm/Familiarity-Easy-v0")
    assert env.max_patterns == 2 + 4
    obs = collect(env, 7)  # one episode (6 steps) and the first observation of the next
    assert [int(o["history_len"]) for o in obs] == [0, 1, 2, 3, 4, 5, 0]
    np.testing.assert_array_equal(obs[5]["history"][4], obs[4]["query"])  # the query of step 4, stored after it


def test_wrapper_maps_uint8_images_into_the_unit_box():
    env = EpisodeMemoryWrapper(gym.make("ebmm/ImageRecall-Pixels-v0"))
    assert env.observation_space["history"].shape == (5, 40 * 40)
    assert env.data_range == (0.0, 1.0)
    obs = collect(env, 3)[-1]
    np.testing.assert_allclose(obs["query"], obs["pattern"].reshape(-1) / 255.0, rtol=1e-6)
    assert obs["history"].dtype == np.float32 and 0.0 <= obs["history"].min() and obs["history"].max() <= 1.0


def test_wrapper_rejects_overflow_and_bad_spaces():
    env = EpisodeMemoryWrapper(gym.make("ebmm/BinaryRecall-Easy-v0"), max_patterns=1, overflow="error")
    with pytest.raises(ValueError, match="larger max_patterns"):
        collect(env, 3)
    with pytest.raises(ValueError, match="'pattern' and 'phase'"):
        EpisodeMemoryWrapper(gym.make("CartPole-v1"), max_patterns=4, protocol="probe")


def test_multibinary_to_multidiscrete():
    env = MultiBinaryToMultiDiscrete(gym.make("ebmm/BinaryRecall-Easy-v0"))
    assert env.action_space == spaces.MultiDiscrete([2] * 8)
    env.reset(seed=0)
    env.step(np.ones(8, dtype=np.int64))


# ------------------------------------------------------------------------------------------------ extractor
def test_wrong_observation_space_names_the_wrapper():
    with pytest.raises(ValueError, match="EpisodeMemoryWrapper"):
        EBMMExtractor(spaces.Box(-1, 1, (8,), np.float32))
    with pytest.raises(ValueError, match="EpisodeMemoryWrapper"):
        EBMMExtractor(gym.make("ebmm/BinaryRecall-Easy-v0").observation_space)
    with pytest.raises(ValueError, match="EpisodeMemoryWrapper"):
        PPO("MultiInputPolicy", gym.make("ebmm/BinaryRecall-Easy-v0"), policy_kwargs=POLICY)


def test_arguments_of_the_design_before_key_value_rows_say_what_changed(tmp_path):
    env = make_env()
    for old in (dict(energy=dict(hidden_size=16)), dict(chunk_size=2), dict(encoder="identity")):
        with pytest.raises(ValueError, match="before key/value rows"):
            EBMMExtractor(env.observation_space, **old)
    from ebmm_rl.energy.mlp import MLPConfig, MLPEnergy
    from ebmm_rl.memory import EBMMemory

    flat = EBMMemory(MLPEnergy(MLPConfig(input_size=8, hidden_size=16, dynamic_size=8)))
    with pytest.raises(ValueError, match="before key/value rows"):
        EBMMExtractor(env.observation_space, memory=flat)
    save_memory(flat, tmp_path / "flat.pt")
    with pytest.raises(ValueError, match="MemoryCore"):
        EBMMExtractor(env.observation_space, core=tmp_path / "flat.pt")


def test_features_do_not_depend_on_the_minibatch():
    env = make_env("ebmm/BinaryRecall-Easy-v0")
    ext = extractor(env)
    batch = as_batch(collect(env, 24), env.observation_space)
    full = ext(batch)  # with grad: the from-scratch path
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))[:10]
    sub = ext({k: v[perm] for k, v in batch.items()})
    torch.testing.assert_close(sub, full[perm], rtol=1e-5, atol=1e-5)
    assert full.shape == (24, ext.features_dim) == (24, ext.core.features_dim + 3)  # the core's, then phase


def test_extractor_features_are_a_core_read_after_writing_the_history():
    """Row i of the history at position i, then the query at position history_len: the core's own pieces."""
    env = make_env("ebmm/KeyValueRecall-Easy-v0")
    ext = extractor(env)
    observations = collect(env, 12)
    batch = as_batch(observations, env.observation_space)
    features = ext(batch).detach()
    core = ext.core
    for i, obs in enumerate(observations):
        n = int(obs["history_len"])
        state = core.memory.initial_state(1)
        with torch.no_grad():
            for j in range(n):  # the write loop by hand: one row per step
                u = core.embed(torch.as_tensor(obs["history"][j : j + 1]))
                x = core.patterns(u, torch.tensor([j]), torch.tensor([j]))
                state = core.write(x, state, u)
            u = core.embed(torch.as_tensor(obs["query"][None]))
            expected = core.read_features(u, torch.tensor([n]), torch.tensor([n]), state)
        torch.testing.assert_close(features[i, : core.features_dim], expected[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(features[i, core.features_dim :].numpy(), np.eye(3)[int(obs["phase"])])


def test_cached_rollout_features_equal_uncached():
    env = make_env("ebmm/Familiarity-Easy-v0")  # up to 6 stored patterns, queries stored too
    ext = extractor(env)
    observations = collect(env, 30)
    batch = as_batch(observations, env.observation_space)
    with torch.no_grad():  # step by step, as rollout collection calls the policy
        cached = torch.cat([ext({k: v[i : i + 1] for k, v in batch.items()}) for i in range(30)])
    assert ext.cache_hits > 0
    assert ext.rows_written < sum(int(o["history_len"]) for o in observations)  # it did not rewrite it all
    reference = ext(batch)  # with grad: from scratch
    torch.testing.assert_close(cached, reference.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # an in-place parameter change (as an optimiser step makes) must empty the cache
        ext.core.memory.energy.head.weight.mul_(1.5)
        after = ext(batch)
    torch.testing.assert_close(after, ext(batch).detach(), rtol=1e-5, atol=1e-5)
    ext.eval()
    with torch.no_grad():
        ext(batch)
    ext.eval()  # predict() sets the mode at every call: no change, the cache stays
    assert ext._cache
    ext.train()  # as does a change of training mode (SB3 switches before every update and rollout)
    assert not ext._cache


def test_gradients_reach_the_core_unless_frozen():
    env = make_env("ebmm/BinaryRecall-Easy-v0")
    batch = as_batch(collect(env, 12), env.observation_space)
    ext = extractor(env)
    ext(batch).pow(2).sum().backward()
    grads = {n: p.grad for n, p in ext.core.named_parameters()}
    for name in ("memory.energy.memory.weight", "memory.energy.hidden.weight", "memory.write_lr_raw",
                 "memory.read_step_raw", "retention_raw", "embed.project.weight", "key_map.weight",
                 "value_map.weight", "query_key_map.weight", "query_time_map.weight"):  # fmt: skip
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    frozen = extractor(env, freeze_memory=True, net_arch=[8])
    frozen(batch).pow(2).sum().backward()
    assert all(p.grad is None for p in frozen.core.memory.parameters()) and frozen.core.retention_raw.grad is None
    assert frozen.core.key_map.weight.grad is not None  # the maps still learn
    assert all(p.grad is not None for p in frozen.head.parameters())


def test_ppo_update_changes_the_core():
    env = make_env("ebmm/BinaryRecall-Easy-v0")
    model = PPO("MultiInputPolicy", env, **PPO_TINY)
    core = model.policy.features_extractor.core
    before = {n: p.detach().clone() for n, p in core.named_parameters()}
    model.learn(32)
    # α weighs the ‖∇ₓE‖² term, which the core's default writing loss leaves out (CORE_EBMM_CONFIG)
    assert not core.memory.config.use_grad_norm_term
    used = {n: p for n, p in core.named_parameters() if n != "memory.alpha_raw"}
    assert all(p.grad is not None for p in used.values()), [n for n, p in used.items() if p.grad is None]
    assert any(not torch.equal(before[n], p) for n, p in used.items())


@pytest.mark.parametrize("algo", [PPO, A2C], ids=["ppo", "a2c"])
@pytest.mark.parametrize("family", FAMILIES)
def test_trains_on_every_easy_env(family, algo):
    env = make_env(f"ebmm/{family}-Easy-v0")  # ImageRecall: obs_type="vector", the default
    kwargs = dict(PPO_TINY) if algo is PPO else dict(n_steps=8, seed=0, policy_kwargs=POLICY)
    model = algo("MultiInputPolicy", env, **kwargs)
    model.learn(64)
    obs, _ = env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert env.action_space.contains(action)


def test_save_load_predicts_the_same_actions(tmp_path):
    env = make_env("ebmm/KeyValueRecall-Easy-v0")
    model = PPO("MultiInputPolicy", env, **PPO_TINY)
    model.learn(32)
    model.save(tmp_path / "model.zip")
    loaded = PPO.load(tmp_path / "model.zip")
    for obs in collect(env, 12, seed=3):
        assert model.predict(obs, deterministic=True)[0] == loaded.predict(obs, deterministic=True)[0]
    torch.testing.assert_close(
        loaded.policy.features_extractor.core.retention, model.policy.features_extractor.core.retention
    )


def test_core_from_a_checkpoint_travels_intact(tmp_path):
    env = make_env("ebmm/BinaryRecall-Easy-v0")
    source = extractor(env)
    save_core(source.core, tmp_path / "core.pt")
    loaded = EBMMExtractor(env.observation_space, core=tmp_path / "core.pt")
    batch = as_batch(collect(env, 6), env.observation_space)
    torch.testing.assert_close(loaded(batch), source(batch))
    policy = dict(features_extractor_class=EBMMExtractor, features_extractor_kwargs=dict(core=source.core))
    model = PPO("MultiInputPolicy", env, n_steps=8, batch_size=8, policy_kwargs=policy)  # ortho_init=True (default)
    for name, p in model.policy.features_extractor.core.state_dict().items():
        torch.testing.assert_close(p, source.core.state_dict()[name], msg=name)  # SB3's re-initialisation spares it
    other = make_env("ebmm/KeyValueRecall-Easy-v0")
    with pytest.raises(ValueError, match="another environment"):
        EBMMExtractor(other.observation_space, core=source.core)


def test_recurrent_ppo_runs_with_the_action_wrapper():
    from sb3_contrib import RecurrentPPO

    env = MultiBinaryToMultiDiscrete(gym.make("ebmm/BinaryRecall-Easy-v0"))
    kwargs = dict(n_steps=32, batch_size=32, n_epochs=1, seed=0, policy_kwargs=dict(lstm_hidden_size=8, net_arch=[8]))
    model = RecurrentPPO("MultiInputLstmPolicy", env, **kwargs)
    model.learn(32)


# ------------------------------------------------------------------------------------------------ agents
@pytest.mark.parametrize("memory", ["ebmm", "ebmm-recurrent", "mlp"])
def test_train_script_runs(tmp_path, memory):
    args = [
        "--env", "ebmm/BinaryRecall-Easy-v0", "--memory", memory, "--total-timesteps", "64", "--n-steps", "32",
        "--batch-size", "32", "--eval-freq", "32", "--eval-episodes", "2", "--run-root", str(tmp_path),
        "--embed-size", "8", "--key-size", "4", "--value-size", "4", "--hidden-size", "16", "--dynamic-size", "8",
        "--write-steps", "2", "--read-steps", "2",
    ]  # fmt: skip
    command = [sys.executable, "-m", "agents.train", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith(f"ebmm-BinaryRecall-Easy-v0__{memory}__0__")
    assert (run_dir / "model.zip").exists()

"""EBMM inside SB3 agents: the episode-memory wrapper, the EBMM features extractor, the training script."""

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
from ebmm_rl.rl.extractor import similarity_features

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("BinaryRecall", "KeyValueRecall", "ImageRecall", "Familiarity", "DelayedRecall")
TINY = dict(energy=dict(hidden_size=16, dynamic_size=8), ebmm=dict(write_steps=2, read_steps=2))
"""A tiny fresh memory: MLPEnergy hidden 16, dynamic 8, 2 write and 2 read steps."""
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


def test_features_do_not_depend_on_the_minibatch():
    env = make_env("ebmm/BinaryRecall-Easy-v0")
    ext = extractor(env)
    batch = as_batch(collect(env, 24), env.observation_space)
    full = ext(batch)  # with grad: the from-scratch path
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))[:10]
    sub = ext({k: v[perm] for k, v in batch.items()})
    torch.testing.assert_close(sub, full[perm], rtol=1e-5, atol=1e-5)
    assert full.shape == (24, ext.features_dim) == (24, 8 + 2 + 8 + 3)
    with_similarities = extractor(env, similarities=True, net_arch=[4])
    assert with_similarities.features_dim == 4 and with_similarities(batch).shape == (24, 4)


def test_similarities_are_standardised_over_the_valid_rows():
    history = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.5, 0.0], [9.0, 9.0]]])  # [1, L=4, D=2]; row 3 is padding
    retrieved = torch.tensor([[0.9, 1.0]])  # nearest to row 1
    z = similarity_features(retrieved, history, torch.tensor([3]))
    assert z.shape == (1, 4) and int(z[0, :3].argmax()) == 1
    torch.testing.assert_close(z[0, :3].mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(z[0, :3].var(unbiased=False), torch.tensor(1.0), atol=1e-4, rtol=0)
    assert z[0, 3] == -2.0 and (z[0, 3] < z[0, :3]).all()  # padding: -sqrt(L), below every valid row
    scaled = similarity_features(0.5 * retrieved, 0.5 * history, torch.tensor([3]))
    torch.testing.assert_close(scaled, z)  # the scores do not depend on the images' contrast
    single = similarity_features(retrieved, history, torch.tensor([1]))
    assert single[0, 0] == 0.0  # one valid row: nothing to tell apart
    for length in (0, 1, 3):  # gradients stay finite, also where the spread is zero
        leaf = retrieved.clone().requires_grad_(True)
        similarity_features(leaf, history, torch.tensor([length])).sum().backward()
        assert torch.isfinite(leaf.grad).all(), length


def test_features_select_and_order_the_parts():
    env = make_env("ebmm/ImageRecall-Easy-v0")  # 2 stored images
    batch = as_batch(collect(env, 6), env.observation_space)
    full = extractor(env, similarities=True)
    chosen = extractor(env, features=("similarities", "energies", "phase"))
    assert full.features == ("retrieved", "energies", "query", "phase", "similarities")
    assert chosen.features_dim == 2 + 2 + 3
    D = env.observation_space["query"].shape[0]
    f = full(batch)  # retrieved [D], energies [2], query [D], phase [3], similarities [2]
    expected = torch.cat([f[:, -2:], f[:, D : D + 2], f[:, 2 * D + 2 : 2 * D + 5]], dim=1)
    torch.testing.assert_close(chosen(batch), expected, rtol=1e-5, atol=1e-6)
    for bad, match in [
        (dict(features=("retrieved", "pixels")), "features must be distinct names"),
        (dict(features=()), "features must be distinct names"),
        (dict(features=("query", "query")), "features must be distinct names"),
        (dict(features=("retrieved",), similarities=True), "lack 'similarities'"),
    ]:
        with pytest.raises(ValueError, match=match):
            extractor(env, **bad)


@pytest.mark.parametrize("chunk_size", [1, 2])
def test_cached_rollout_features_equal_uncached(chunk_size):
    env = make_env("ebmm/Familiarity-Easy-v0")  # up to 6 stored patterns, queries stored too
    ext = extractor(env, chunk_size=chunk_size)
    observations = collect(env, 30)
    batch = as_batch(observations, env.observation_space)
    with torch.no_grad():  # step by step, as rollout collection calls the policy
        cached = torch.cat([ext({k: v[i : i + 1] for k, v in batch.items()}) for i in range(30)])
    assert ext.cache_hits > 0
    assert ext.patterns_written < sum(int(o["history_len"]) for o in observations)  # it did not rewrite it all
    reference = ext(batch)  # with grad: from scratch
    torch.testing.assert_close(cached, reference.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # an in-place parameter change (as an optimiser step makes) must empty the cache
        ext.memory.energy.head.weight.mul_(1.5)
        after = ext(batch)
    torch.testing.assert_close(after, ext(batch).detach(), rtol=1e-5, atol=1e-5)
    ext.eval()
    with torch.no_grad():
        ext(batch)
    ext.eval()  # predict() sets the mode at every call: no change, the cache stays
    assert ext._cache
    ext.train()  # as does a change of training mode (SB3 switches before every update and rollout)
    assert not ext._cache


def test_frozen_memory_keeps_its_cache_across_training_mode_switches():
    env = make_env("ebmm/Familiarity-Easy-v0")
    ext = extractor(env, freeze_memory=True)
    batch = as_batch(collect(env, 30), env.observation_space)
    ext.eval()
    with torch.no_grad():
        rollout = ext(batch)  # rollout collection fills the cache
    written = ext.patterns_written
    ext.train()  # SB3's switch before the update: a frozen memory cannot have changed
    assert ext._cache
    update = ext(batch)  # the update reads from the rollout's memories and writes nothing
    assert ext.patterns_written == written
    torch.testing.assert_close(update, rollout, rtol=1e-5, atol=1e-5)


def test_one_chunk_equals_batch_writing():
    env = make_env("ebmm/BinaryRecall-Medium-v0")
    ext = extractor(env, chunk_size=env.max_patterns)
    batch = as_batch(collect(env, 9), env.observation_space)
    i = 8  # the query step: all 8 patterns stored
    history = batch["history"][i : i + 1]  # [1, 8, 32]
    state = ext.memory.write(history)
    result = ext.memory.read(batch["query"][i : i + 1].unsqueeze(1), state)
    features = ext({k: v[i : i + 1] for k, v in batch.items()})
    torch.testing.assert_close(features[0, :32], result.retrieved[0, 0], rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_memory_unless_frozen():
    env = make_env("ebmm/BinaryRecall-Easy-v0")
    batch = as_batch(collect(env, 12), env.observation_space)
    ext = extractor(env)
    ext(batch).pow(2).sum().backward()
    grads = {n: p.grad for n, p in ext.memory.named_parameters()}
    for name in ("energy.memory.weight", "energy.hidden.weight", "write_lr_raw", "read_step_raw"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    frozen = extractor(env, freeze_memory=True, net_arch=[8])
    frozen(batch).pow(2).sum().backward()
    assert all(p.grad is None for p in frozen.memory.parameters())
    assert all(p.grad is not None for p in frozen.head.parameters())


def test_ppo_update_changes_the_memory(tmp_path):
    env = make_env("ebmm/BinaryRecall-Easy-v0")
    model = PPO("MultiInputPolicy", env, **PPO_TINY)
    memory = model.policy.features_extractor.memory
    before = {n: p.detach().clone() for n, p in memory.named_parameters()}
    model.learn(32)
    # α weighs the ‖∇ₓE‖² term, which the RL default writing loss leaves out (DEFAULT_RL_EBMM_CONFIG)
    assert not memory.config.use_grad_norm_term
    used = {n: p for n, p in memory.named_parameters() if n != "alpha_raw"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in used.values())
    assert any(not torch.equal(before[n], p) for n, p in used.items())


@pytest.mark.parametrize("algo", [PPO, A2C], ids=["ppo", "a2c"])
@pytest.mark.parametrize("family", FAMILIES)
def test_learns_on_every_easy_env(family, algo):
    env = make_env(f"ebmm/{family}-Easy-v0")  # ImageRecall: obs_type="vector", the default
    policy = POLICY
    if family == "ImageRecall":  # agents.train's parts there: similarities (gradients through the z-score), ...
        extra = dict(features=("similarities", "energies", "phase"))
        policy = {**POLICY, "features_extractor_kwargs": {**TINY, **extra}}
    kwargs = dict(PPO_TINY, policy_kwargs=policy) if algo is PPO else dict(n_steps=8, seed=0, policy_kwargs=policy)
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
        loaded.policy.features_extractor.memory.write_lrs, model.policy.features_extractor.memory.write_lrs
    )


def test_memory_from_a_checkpoint(tmp_path):
    env = make_env("ebmm/BinaryRecall-Easy-v0")
    source = extractor(env)
    save_memory(source.memory, tmp_path / "memory.pt")
    loaded = EBMMExtractor(env.observation_space, memory=tmp_path / "memory.pt")
    torch.testing.assert_close(loaded.memory.write_lrs, source.memory.write_lrs)
    batch = as_batch(collect(env, 6), env.observation_space)
    torch.testing.assert_close(loaded(batch), source(batch))
    with pytest.raises(ValueError, match="data_range"):
        images = EpisodeMemoryWrapper(gym.make("ebmm/BinaryRecall-Easy-v0"), data_range=(0.0, 1.0))
        EBMMExtractor(images.observation_space, memory=source.memory)


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
        "--hidden-size", "16", "--dynamic-size", "8", "--write-steps", "2", "--read-steps", "2",
    ]  # fmt: skip
    command = [sys.executable, "-m", "agents.train", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith(f"ebmm-BinaryRecall-Easy-v0__{memory}__0__")
    assert (run_dir / "model.zip").exists()


# ------------------------------------------------------------------------------------- recurrent (RecurrentPPO)
def recurrent_model(env_id: str = "ebmm/BinaryRecall-Easy-v0"):
    from sb3_contrib import RecurrentPPO

    from ebmm_rl.rl.recurrent import EBMMRecurrentPolicy

    policy_kwargs = dict(features_extractor_kwargs=TINY, net_arch=[16])
    kwargs = dict(n_steps=32, batch_size=32, n_epochs=1, seed=0, policy_kwargs=policy_kwargs)
    return RecurrentPPO(EBMMRecurrentPolicy, make_env(env_id), **kwargs)


@pytest.mark.parametrize("family", ["BinaryRecall", "Familiarity"])
def test_recurrent_features_equal_the_extractors(family):
    model = recurrent_model(f"ebmm/{family}-Easy-v0")
    policy, env = model.policy, model.env.envs[0]
    observations = collect(env, 20)  # several episodes, resets included
    starts = torch.tensor([float(o["history_len"] == 0 and o["step"] == 0) for o in observations])
    batch = {k: torch.as_tensor(np.stack([np.asarray(o[k]) for o in observations])) for k in env.observation_space}
    zeros = torch.zeros(1, 1, policy.memory_size)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            features, _ = policy.unroll(batch, (zeros, zeros), starts)  # one sequence of 20 steps
            reference = policy.features_extractor(as_batch(observations, env.observation_space))
        torch.testing.assert_close(features, reference, rtol=1e-5, atol=1e-5)
    # the same sequence cut in two, the second half started from the state the first half left
    with torch.no_grad():
        head, state = policy.unroll({k: v[:7] for k, v in batch.items()}, (zeros, zeros), starts[:7])
        tail, _ = policy.unroll({k: v[7:] for k, v in batch.items()}, state, starts[7:])
    torch.testing.assert_close(torch.cat([head, tail]), reference.detach(), rtol=1e-5, atol=1e-5)


def test_recurrent_policy_learns_and_round_trips(tmp_path):
    from sb3_contrib import RecurrentPPO

    model = recurrent_model("ebmm/BinaryRecall-Easy-v0")
    memory = model.policy.features_extractor.memory
    before = {n: p.detach().clone() for n, p in memory.named_parameters()}
    model.learn(64)
    changed = {n: not torch.equal(before[n], p) for n, p in memory.named_parameters()}
    assert changed.pop("alpha_raw") is False  # the RL default writing loss has no α‖∇ₓE‖² term
    assert all(changed.values()), changed  # gradients reach every other meta-parameter
    model.save(tmp_path / "model.zip")
    loaded = RecurrentPPO.load(tmp_path / "model.zip")
    env = make_env("ebmm/BinaryRecall-Easy-v0")
    obs, _ = env.reset(seed=3)
    states = {id(m): None for m in (model, loaded)}
    start = np.array([True])
    for _ in range(9):  # three episodes
        actions = []
        for m in (model, loaded):
            action, states[id(m)] = m.predict(obs, state=states[id(m)], episode_start=start, deterministic=True)
            actions.append(action)
        np.testing.assert_array_equal(actions[0], actions[1])
        assert env.action_space.contains(actions[0].astype(np.int8))
        obs, _, terminated, truncated, _ = env.step(actions[0].astype(np.int8))
        start = np.array([terminated or truncated])
        if start[0]:
            obs, _ = env.reset()


def test_recurrent_policy_rejects_chunks():
    with pytest.raises(ValueError, match="chunk_size must be 1"):
        from sb3_contrib import RecurrentPPO

        from ebmm_rl.rl.recurrent import EBMMRecurrentPolicy

        policy_kwargs = dict(features_extractor_kwargs=dict(TINY, chunk_size=2))
        RecurrentPPO(EBMMRecurrentPolicy, make_env(), n_steps=8, policy_kwargs=policy_kwargs)


def test_ppo_keeps_a_checkpoint_memory_intact(tmp_path):
    env = make_env("ebmm/BinaryRecall-Easy-v0")
    source = extractor(env)
    save_memory(source.memory, tmp_path / "memory.pt")
    policy = dict(features_extractor_class=EBMMExtractor, features_extractor_kwargs=dict(memory=tmp_path / "memory.pt"))
    model = PPO("MultiInputPolicy", env, n_steps=8, batch_size=8, policy_kwargs=policy)  # ortho_init=True (default)
    for name, p in model.policy.features_extractor.memory.state_dict().items():
        torch.testing.assert_close(p, source.memory.state_dict()[name], msg=name)

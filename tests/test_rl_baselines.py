"""Baseline memories inside SB3 agents: masked writes, the generic MemoryExtractor, the agents.train rows."""

from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from rl_helpers import as_batch, collect
from stable_baselines3 import A2C, PPO
from torch import nn

import envs  # noqa: F401  (registers the ids)
from agents.train import MEMORIES as AGENTS
from agents.train import Args, build_model
from agents.train import make_env as make_agent_env
from ebmm_rl import EpisodeMemoryWrapper, MemoryExtractor
from ebmm_rl.binary import sample_patterns
from ebmm_rl.checkpoint import save_memory
from ebmm_rl.protocol import MEMORIES, build_memory
from ebmm_rl.rl.memory_extractor import default_budget

ROOT = Path(__file__).resolve().parents[1]
KINDS = {"memnet": "memnet", "mann": "mann", "plasticity": "plasticity", "modern-hopfield": "modern_hopfield",
         "lstm-memory": "lstm"}  # fmt: skip
"""``agents.train --memory`` row -> registry name of the baseline it uses."""
NAMES = sorted(KINDS.values())
MODULE_BASELINES = sorted(n for n, e in MEMORIES.items() if e.kind in ("memory", "non-memory", "reference"))
"""Every nn.Module baseline of ebmm_rl.baselines (dae and vae included)."""
NO_GRADIENT = {"mann": {"usage_decay_raw"}}
"""Parameters the RL loss cannot reach: MANN's usage decay only enters the argmin picking the least-used slot."""


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_env(env_id: str = "ebmm/BinaryRecall-Easy-v0") -> EpisodeMemoryWrapper:
    return EpisodeMemoryWrapper(gym.make(env_id))


def policy(name: str, **kwargs) -> dict:
    return dict(features_extractor_class=MemoryExtractor, features_extractor_kwargs=dict(memory=name, **kwargs))


def extractor(env: gym.Env, name: str, **kwargs) -> MemoryExtractor:
    torch.manual_seed(0)
    return MemoryExtractor(env.observation_space, memory=name, **kwargs)


def small_memory(name: str, dim: int = 8) -> nn.Module:
    torch.manual_seed(0)
    overrides = {"vae": dict(read_steps=2), "deep_image_prior": dict(steps=3, width=4)}.get(name, {})
    budget = 36 if name == "plasticity" else 4 * (dim + 2)  # 8 neurons, 4-5 slots: 7 patterns overwrite some
    return build_memory(name, dim=dim, budget=budget, **overrides)


def state_tensors(state) -> list[torch.Tensor]:
    """The tensors of a state dataclass, in field order (``num_written`` included)."""
    return [torch.as_tensor(v) for v in vars(state).values()]


# ------------------------------------------------------------------------------------------- masked writes
@pytest.mark.parametrize("name", MODULE_BASELINES)
def test_masked_write_equals_writing_the_real_patterns(name):
    memory = small_memory(name)
    patterns = sample_patterns(4, 7, 8, generator=torch.Generator().manual_seed(1))
    queries = sample_patterns(4, 3, 8, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor(
        [[False] * 7, [True, True] + [False] * 5, [True] * 7, [True, False, True, False, True, True, False]]
    )  # empty, a padded prefix, full (overwrites 4 slots), padding in between
    first = memory.write(patterns[:, :3], pattern_mask=mask[:, :3])
    state = memory.write(patterns[:, 3:], first, pattern_mask=mask[:, 3:])  # chunked: continue the state
    assert state.num_written.tolist() == mask.sum(1).tolist()
    retrieved = memory.recall(queries, state)
    empty = memory.write(patterns[:1, :1], pattern_mask=torch.zeros(1, 1, dtype=torch.bool))
    for b in range(4):
        real = patterns[b : b + 1, mask[b]]  # [1, n_b, 8]
        reference = memory.write(real) if real.shape[1] else empty
        torch.testing.assert_close(retrieved[b : b + 1], memory.recall(queries[b : b + 1], reference))
        for got, want in zip(state_tensors(state)[:-1], state_tensors(reference)[:-1], strict=True):
            if got.dim() > 0 and got.shape[0] == 4:  # per-episode tensors (not NoState's batch size)
                torch.testing.assert_close(got[b : b + 1], want)


@pytest.mark.parametrize("name", MODULE_BASELINES)
def test_no_mask_keeps_the_unmasked_write(name):
    memory = small_memory(name)
    patterns = sample_patterns(3, 5, 8, generator=torch.Generator().manual_seed(3))
    queries = sample_patterns(3, 2, 8, generator=torch.Generator().manual_seed(4))
    plain = memory.write(patterns)
    assert plain.num_written == 5 and isinstance(plain.num_written, int)  # one count for all episodes, as before
    continued = memory.write(patterns[:, 2:], memory.write(patterns[:, :2], pattern_mask=None))
    assert continued.num_written == 5 and isinstance(continued.num_written, int)
    all_real = memory.write(patterns, pattern_mask=torch.ones(3, 5, dtype=torch.bool))
    expected = memory.recall(queries, plain)
    torch.testing.assert_close(memory.recall(queries, continued), expected)
    torch.testing.assert_close(memory.recall(queries, all_real), expected)


def test_no_mask_slot_write_is_the_fifo_of_before():
    memory = build_memory("memnet", dim=8, budget=32)  # 4 slots of 8
    patterns = sample_patterns(2, 6, 8, generator=torch.Generator().manual_seed(5))
    state = memory.write(patterns)
    torch.testing.assert_close(state.slots, memory.codec.encode(patterns)[:, [4, 5, 2, 3]])
    assert state.filled().all() and state.filled().shape == (2, 4)


@pytest.mark.parametrize("name", MODULE_BASELINES)
def test_bad_pattern_mask_is_rejected(name):
    memory = small_memory(name)
    patterns = sample_patterns(2, 3, 8)
    with pytest.raises(ValueError, match=r"pattern_mask must be a bool tensor .*pattern_mask.bool\(\)"):
        memory.write(patterns, pattern_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"pattern_mask must have shape \[B, N\] = \[2, 3\]"):
        memory.write(patterns, pattern_mask=torch.ones(2, 4, dtype=torch.bool))


# --------------------------------------------------------------------------------------------- extractor
@pytest.mark.parametrize("name", NAMES)
def test_features_do_not_depend_on_the_minibatch(name):
    env = make_env()
    ext = extractor(env, name)
    batch = as_batch(collect(env, 24), env.observation_space)
    assert set(batch["history_len"].argmax(1).tolist()) == {0, 1, 2}  # empty, padded and full histories
    full = ext(batch)
    assert full.shape == (24, ext.features_dim) == (24, 8 + 8 + 3) and torch.isfinite(full).all()
    for seed in range(2):
        perm = torch.randperm(24, generator=torch.Generator().manual_seed(seed))[:10]
        torch.testing.assert_close(ext({k: v[perm] for k, v in batch.items()}), full[perm], rtol=1e-5, atol=1e-6)
    single = torch.cat([ext({k: v[i : i + 1] for k, v in batch.items()}) for i in range(24)])
    torch.testing.assert_close(single, full, rtol=1e-5, atol=1e-6)
    with_similarities = extractor(env, name, similarities=True, net_arch=[4])
    assert with_similarities.features_dim == 4 and with_similarities(batch).shape == (24, 4)
    chosen = extractor(env, name, features=("similarities", "phase"))
    torch.testing.assert_close(chosen(batch)[:, 2:], full[:, -3:])  # phase one-hot, after 2 similarities
    with pytest.raises(ValueError, match="features must be distinct names"):
        extractor(env, name, features=("energies",))  # baselines have no energy


@pytest.mark.parametrize("name", NAMES)
def test_empty_history_reads_an_empty_memory(name):
    env = make_env()
    ext = extractor(env, name)
    obs = collect(env, 1)[0]
    assert obs["history_len"] == 0
    features = ext(as_batch([obs], env.observation_space))
    torch.testing.assert_close(features[0, 8:16], torch.as_tensor(obs["query"]))
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_memory_unless_frozen(name):
    env = make_env()
    batch = as_batch(collect(env, 12), env.observation_space)
    ext = extractor(env, name)
    ext(batch).pow(2).sum().backward()
    reached = {n for n, p in ext.memory.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    expected = {n for n, _ in ext.memory.named_parameters()} - NO_GRADIENT.get(name, set())
    assert expected and reached == expected
    frozen = extractor(env, name, freeze_memory=True, net_arch=[8])
    frozen(batch).pow(2).sum().backward()
    assert all(p.grad is None for p in frozen.memory.parameters())
    assert all(p.grad is not None for p in frozen.head.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_ppo_learns_and_updates_the_memory(name):
    env = make_env()
    model = PPO("MultiInputPolicy", env, n_steps=64, batch_size=32, n_epochs=1, seed=0, policy_kwargs=policy(name))
    memory = model.policy.features_extractor.memory
    before = copy.deepcopy(memory.state_dict())
    model.learn(256)
    assert any(not torch.equal(before[n], p) for n, p in memory.state_dict().items())
    obs, _ = env.reset(seed=0)
    assert env.action_space.contains(model.predict(obs, deterministic=True)[0])


def test_a2c_learns():
    env = make_env("ebmm/KeyValueRecall-Easy-v0")
    model = A2C("MultiInputPolicy", env, n_steps=8, seed=0, policy_kwargs=policy("memnet"))
    model.learn(64)
    obs, _ = env.reset(seed=0)
    assert env.action_space.contains(model.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize("name", NAMES)
def test_save_load_predicts_the_same_actions(tmp_path, name):
    env = make_env("ebmm/KeyValueRecall-Easy-v0")
    model = PPO("MultiInputPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, policy_kwargs=policy(name))
    model.learn(32)
    model.save(tmp_path / "model.zip")
    loaded = PPO.load(tmp_path / "model.zip")
    for obs in collect(env, 12, seed=3):
        assert model.predict(obs, deterministic=True)[0] == loaded.predict(obs, deterministic=True)[0]
    for n, p in model.policy.features_extractor.memory.state_dict().items():
        torch.testing.assert_close(loaded.policy.features_extractor.memory.state_dict()[n], p, msg=n)


def test_a_ready_memory_is_kept_intact_by_ortho_init():
    env = make_env()
    memory = build_memory("memnet", dim=8, budget=20)
    source = copy.deepcopy(memory.state_dict())
    model = PPO("MultiInputPolicy", env, n_steps=8, batch_size=8, policy_kwargs=policy(memory))  # ortho_init=True
    for n, p in model.policy.features_extractor.memory.state_dict().items():
        torch.testing.assert_close(p, source[n], msg=n)


def test_default_budgets_fit_the_history():
    env = make_env("ebmm/BinaryRecall-Medium-v0")  # 8 patterns of 32
    sizes = {name: extractor(env, name).memory for name in NAMES}
    assert sizes["memnet"].config.num_slots == sizes["modern_hopfield"].config.num_slots == 8
    assert sizes["mann"].config.num_slots == 8
    assert sizes["plasticity"].config.neurons == 32  # one neuron per entry
    assert sizes["lstm"].config.hidden_size == 64
    assert sizes["modern_hopfield"].config.learn_beta
    assert default_budget("memnet", 8, 32) == 8 * 34
    smaller = extractor(env, "memnet", memory_kwargs=dict(budget=64))
    assert smaller.memory.memory_size == 64


def test_wrong_observation_space_names_the_wrapper():
    with pytest.raises(ValueError, match="MemoryExtractor needs a Dict .*EpisodeMemoryWrapper"):
        MemoryExtractor(spaces.Box(-1, 1, (8,), np.float32))
    with pytest.raises(ValueError, match="EpisodeMemoryWrapper"):
        MemoryExtractor(gym.make("ebmm/BinaryRecall-Easy-v0").observation_space)
    with pytest.raises(ValueError, match="EpisodeMemoryWrapper"):
        PPO("MultiInputPolicy", gym.make("ebmm/BinaryRecall-Easy-v0"), policy_kwargs=policy("memnet"))


def test_unusable_memories_are_rejected():
    space = make_env().observation_space
    with pytest.raises(ValueError, match="unknown memory 'nope'"):
        MemoryExtractor(space, memory="nope")
    with pytest.raises(ValueError, match="not an nn.Module memory"):
        MemoryExtractor(space, memory="hebb")
    with pytest.raises(ValueError, match="flat patterns of size 8"):
        MemoryExtractor(space, memory="memnet", memory_kwargs=dict(data_shape=(1, 8, 8)))
    with pytest.raises(ValueError, match="flat patterns of size 8"):
        MemoryExtractor(space, memory=build_memory("memnet", dim=16, budget=64))
    with pytest.raises(ValueError, match="data_range"):
        MemoryExtractor(space, memory=build_memory("memnet", dim=8, budget=64, data_range=(0.0, 1.0)))


# ------------------------------------------------------------------------------------------------ agents
def test_agent_rows_use_the_memory_extractor():
    assert set(KINDS) <= set(AGENTS) and AGENTS["lstm"].recurrent  # the RecurrentPPO agent keeps its name
    assert "dae" not in AGENTS and "vae" not in AGENTS


def test_agent_starts_from_a_baseline_checkpoint(tmp_path):
    source = build_model(replace(Args(), memory="mann"), make_agent_env(Args(memory="mann")))
    memory = source.policy.features_extractor.memory
    save_memory(memory, tmp_path / "mann.pt")
    args = replace(Args(), memory="mann", memory_checkpoint=str(tmp_path / "mann.pt"), n_steps=8, batch_size=8)
    loaded = build_model(args, make_agent_env(args)).policy.features_extractor.memory
    for n, p in memory.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[n], p, msg=n)
    with pytest.raises(ValueError, match="holds a MANN, not a MemoryNetwork"):
        build_model(replace(args, memory="memnet"), make_agent_env(args))


@pytest.mark.parametrize("memory", sorted(KINDS))
def test_train_script_runs(tmp_path, memory):
    args = [
        "--env", "ebmm/BinaryRecall-Easy-v0", "--memory", memory, "--total-timesteps", "64", "--n-steps", "32",
        "--batch-size", "32", "--eval-freq", "32", "--eval-episodes", "2", "--run-root", str(tmp_path),
        "--no-progress-bar",
    ]  # fmt: skip
    command = [sys.executable, "-m", "agents.train", *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{type(build_memory(KINDS[memory], dim=8, budget=128)).__name__} memory:" in result.stdout
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith(f"ebmm-BinaryRecall-Easy-v0__{memory}__0__")
    assert (run_dir / "model.zip").exists()


def test_agents_on_image_recall_default_to_the_position_features():
    """Per-family feature parts: ImageRecall answers a position, BinaryRecall the stored pattern."""
    for memory, expected in [("memnet", ("similarities", "phase"))]:
        args = replace(Args(), env="ebmm/ImageRecall-Easy-v0", memory=memory, n_steps=8, batch_size=8)
        extractor = build_model(args, make_agent_env(args)).policy.features_extractor
        assert extractor.features == expected
        explicit = replace(args, features=("retrieved", "phase"))
        assert build_model(explicit, make_agent_env(explicit)).policy.features_extractor.features == explicit.features
    binary = replace(Args(), env="ebmm/BinaryRecall-Easy-v0", memory="memnet", n_steps=8, batch_size=8)
    assert build_model(binary, make_agent_env(binary)).policy.features_extractor.features == ("retrieved", "phase")
    plain = replace(binary, env="ebmm/KeyValueRecall-Easy-v0")
    assert build_model(plain, make_agent_env(plain)).policy.features_extractor.features == (
        "retrieved",
        "query",
        "phase",
    )
    single = replace(plain, n_envs=2, vec_env="dummy")
    assert type(make_agent_env(single)).__name__ == "DummyVecEnv"


@pytest.mark.parametrize("family", ["ImageRecall", "BinaryRecall"])
def test_the_generic_protocol_drops_the_probe_feature_parts(family):
    """The generic protocol's observation has no ``phase``: the family's parts would not build (the sweep's crash)."""
    args = replace(Args(), env=f"ebmm/{family}-Easy-v0", protocol="generic", n_steps=8, batch_size=8)
    extractor = build_model(args, make_agent_env(args)).policy.features_extractor
    assert "phase" not in extractor.features

"""Meta-training the agents' memory on a memory-probe environment (``ebmm_rl.rl.env_meta``, meta_train_env.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

import envs  # noqa: F401  (registers the ids)
from ebmm_rl import EBMMExtractor, EpisodeMemoryWrapper
from ebmm_rl.checkpoint import load_memory
from ebmm_rl.energy.mlp import MLPConfig, MLPEnergy
from ebmm_rl.memory import EBMMConfig, EBMMemory
from ebmm_rl.rl.env_meta import EnvRecallSampler, recall_forward, recall_metrics
from ebmm_rl.training import MetaTrainer, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("BinaryRecall", "KeyValueRecall", "ImageRecall", "Familiarity", "DelayedRecall")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sampler_for(family: str, level: str = "Easy") -> EnvRecallSampler:
    return EnvRecallSampler(f"ebmm/{family}-{level}-v0", write_phases=(0, 1) if family == "Familiarity" else (0,))


def tiny_memory(sampler: EnvRecallSampler) -> EBMMemory:
    energy = MLPEnergy(MLPConfig(input_size=sampler.pattern_size, hidden_size=16, dynamic_size=8))
    config = EBMMConfig(
        write_steps=2, read_steps=2, write_lr_init=0.1, read_step_init=2.0, data_range=sampler.data_range
    )
    return EBMMemory(energy, config)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_are_the_extractors_observations_with_a_stored_target(family):
    sampler = sampler_for(family, "Medium")
    batch = sampler.sample(12, torch.Generator().manual_seed(0))
    L, D = sampler.max_patterns, sampler.pattern_size
    assert batch.history.shape == (12, L, D) and batch.queries.shape == batch.targets.shape == (12, D)
    assert ((batch.lengths >= 1) & (batch.lengths <= L)).all()
    for b in range(12):  # the target is one of the valid stored rows
        rows = batch.history[b, : batch.lengths[b]]
        assert (rows == batch.targets[b]).all(dim=1).any()
    lo, hi = sampler.data_range
    assert batch.history.min() >= lo and batch.history.max() <= hi
    again = sampler.sample(12, torch.Generator().manual_seed(0))  # reproducible from the generator
    assert torch.equal(again.history, batch.history) and torch.equal(again.targets, batch.targets)


def test_targets_follow_the_environments_ground_truth():
    binary = sampler_for("BinaryRecall", "Medium").sample(256, torch.Generator().manual_seed(1))
    # a BinaryRecall-Medium query re-draws 8 of 32 bits: 4 of 32 differ from the target on average
    differ = (binary.queries != binary.targets).float().mean()
    assert 0.10 < float(differ) < 0.15
    delayed = sampler_for("DelayedRecall", "Medium").sample(8, torch.Generator().manual_seed(1))
    assert (delayed.queries == 0).all()  # blank query: recall from nothing
    assert torch.equal(delayed.targets, delayed.history[:, 0])  # the context is the first stored row


def test_unsupported_environment_is_refused():
    import gymnasium as gym

    gym.register("test/NotAProbe-v0", entry_point="envs.binary_recall:BinaryRecallEnv")
    with pytest.raises(ValueError, match="pattern"):  # EpisodeMemoryWrapper refuses non-probe spaces first
        EnvRecallSampler("CartPole-v1")
    sampler = sampler_for("BinaryRecall")
    with pytest.raises(ValueError, match="batch_size"):
        sampler.sample(0, torch.Generator())
    with pytest.raises(ValueError, match="chunk_size"):
        recall_forward(0)


def test_meta_training_on_the_env_improves_recall():
    sampler = sampler_for("BinaryRecall", "Easy")
    torch.manual_seed(0)
    memory = tiny_memory(sampler)
    held_out = sampler.sample(128, torch.Generator().manual_seed(123))
    before = recall_metrics(memory, held_out, chunk_size=1)
    trainer = MetaTrainer(
        memory,
        sampler.sampler(16),
        TrainConfig(steps=40, lr=3e-3, schedule_lr=1e-2, progress=False),
        forward=recall_forward(chunk_size=1),
    )
    losses = [trainer.train_step().loss for _ in range(40)]
    after = recall_metrics(memory, held_out, chunk_size=1)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert after["mse"] < before["mse"]
    assert after["bit_error"] < before["bit_error"]


def test_script_checkpoint_loads_into_the_agents_extractor(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "meta_train_env.py"), "--env", "ebmm/KeyValueRecall-Easy-v0"]
    cmd += [
        "--targets",
        "ground-truth",
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--eval-rows",
        "8",
        "--eval-every",
        "2",
        "--hidden-size",
        "16",
    ]
    cmd += ["--dynamic-size", "4", "--run-dir", str(run), "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "before meta-training: mse" in out and "after 4 meta-steps" in out
    assert (run / "best.pt").exists() and (run / "checkpoint.pt").exists()

    import gymnasium as gym

    env = EpisodeMemoryWrapper(gym.make("ebmm/KeyValueRecall-Easy-v0"))
    kwargs = dict(memory=str(run / "best.pt"), freeze_memory=True)
    model = PPO(
        "MultiInputPolicy",
        env,
        n_steps=32,
        batch_size=32,
        n_epochs=1,
        seed=0,
        policy_kwargs=dict(features_extractor_class=EBMMExtractor, features_extractor_kwargs=kwargs),
    )
    model.learn(64)
    extractor = model.policy.features_extractor
    trained = load_memory(run / "best.pt")
    for (name, p), (_, q) in zip(extractor.memory.state_dict().items(), trained.state_dict().items(), strict=True):
        assert torch.equal(p, q), name  # frozen: PPO's updates and SB3's init left the meta-trained memory intact
    assert not any(p.requires_grad for p in extractor.memory.parameters())

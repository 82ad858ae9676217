"""What each baseline does beyond the shared protocol: its write rule, its read rule, images, the trainer."""

from __future__ import annotations

import pytest
import torch

from ebmm_rl.baselines import (
    MANN,
    MANNConfig,
    MemNetConfig,
    MemoryNetwork,
    ModernHopfield,
    ModernHopfieldConfig,
    PlasticityConfig,
    PlasticityMemory,
    VAEConfig,
    VariationalAutoencoder,
)
from ebmm_rl.binary import corrupt, error_bits, sample_patterns
from ebmm_rl.protocol import MEMORIES, build_memory
from ebmm_rl.training import MetaTrainer, TrainConfig


def episode(batch_size, num_patterns, dim=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    patterns = sample_patterns(batch_size, num_patterns, dim, generator=generator)
    return (patterns, *corrupt(patterns, dim // 2, generator=generator))


def test_modern_hopfield_retrieves_exactly_within_capacity_and_forgets_the_oldest_beyond():
    memory = ModernHopfield()  # 64 slots of 128 bits, beta = 1
    patterns, queries, known = episode(4, 48)
    assert error_bits(memory.recall(queries, memory.write(patterns), known), patterns).max() == 0
    patterns, queries, known = episode(8, 96, seed=1)
    errors = error_bits(memory.recall(queries, memory.write(patterns), known), patterns)  # [B, N]
    assert errors[:, 32:].max() == 0  # the last 64 are stored
    assert 28 < errors[:, :32].mean() < 36  # the first 32 were overwritten: chance on their 64 unknown bits


def test_modern_hopfield_update_matches_the_formula():
    memory = ModernHopfield(ModernHopfieldConfig(data_shape=(8,), budget=64, beta=0.5, read_steps=1))
    patterns = sample_patterns(1, 3, 8, generator=torch.Generator().manual_seed(0))
    query = torch.rand(1, 1, 8) * 2 - 1
    expected = torch.softmax(0.5 * patterns[0] @ query[0, 0], dim=0) @ patterns[0]  # X^T softmax(beta X xi)
    torch.testing.assert_close(memory.recall(query, memory.write(patterns))[0, 0], expected)


def test_memnet_slots_are_first_in_first_out():
    memory = MemoryNetwork(MemNetConfig(data_shape=(16,), budget=4 * 16))  # 4 slots
    patterns = sample_patterns(2, 6, 16)
    state = memory.write(patterns[:, :3])
    state = memory.write(patterns[:, 3:], state)  # patterns 4 and 5 overwrite slots 0 and 1
    embeddings = memory.codec.encode(patterns)
    torch.testing.assert_close(state.slots, embeddings[:, [4, 5, 2, 3]])
    assert state.num_written == 6


def test_mann_writes_to_least_used_slots_first():
    memory = MANN(MANNConfig(data_shape=(16,), budget=4 * 18))  # 4 slots
    with torch.no_grad():
        memory.gate.bias.fill_(-50.0)  # write weights = the least-used slot only
        memory.gate.weight.zero_()
    state = memory.write(sample_patterns(2, 4, 16))
    assert bool((state.memory.abs().sum(-1) > 0).all())  # each of the 4 patterns took its own slot


def test_plasticity_trace_follows_the_hebbian_rule():
    config = PlasticityConfig(data_shape=(6,), budget=21, present_steps=1, eta_init=0.25)  # 6 neurons
    memory = PlasticityMemory(config)
    pattern = sample_patterns(1, 1, 6)
    state = memory.write(pattern)
    x = torch.tanh(memory.input_gain * memory.codec.encode(pattern))[0, 0]  # from zero activation and trace
    assert torch.count_nonzero(state.hebb) == 0  # pre-synaptic activity was zero: x_{t-1} x_t^T = 0
    state = memory.write(pattern, state)
    drive = memory.input_gain * memory.codec.encode(pattern)[0, 0]
    y = torch.tanh(drive + memory.weight @ x)  # the trace is still zero
    outer = 0.5 * (torch.outer(y, x) + torch.outer(x, y))
    expected = 0.25 * outer * (1 - torch.eye(6))
    torch.testing.assert_close(state.hebb[0], expected)
    torch.testing.assert_close(state.activation[0], y)


def test_vae_read_returns_clamped_modes_of_the_likelihood():
    memory = VariationalAutoencoder(VAEConfig(data_shape=(16,), latent_size=4, hidden_size=8, read_steps=3))
    patterns, queries, known = episode(2, 3, dim=16)
    result = memory.read(queries, memory.write(patterns), known)
    assert result.iterates.shape == (4, 2, 3, 16)
    assert bool(((result.retrieved == 1) | (result.retrieved == -1)).all())
    torch.testing.assert_close(result.retrieved[known], queries[known])


def test_vae_training_step_reads_one_step_and_evaluation_all():
    memory = VariationalAutoencoder(VAEConfig(data_shape=(16,), latent_size=4, hidden_size=8, read_steps=3))
    patterns, queries, known = episode(2, 3, dim=16)
    assert memory.train()(patterns, queries, known).read.iterates.shape[0] == 2  # the ELBO needs no read
    assert memory.eval()(patterns, queries, known).read.iterates.shape[0] == 4


@pytest.mark.parametrize("name", [n for n, e in MEMORIES.items() if e.kind not in ("hopfield", "ebmm")])
def test_baselines_use_the_resnet_codec_on_images(name):
    torch.manual_seed(0)
    overrides = {"data_shape": (1, 8, 8), "data_range": (0.0, 1.0), "channels": 4}
    if name == "vae":
        overrides["read_steps"] = 2
    if name == "deep_image_prior":
        overrides["steps"] = 2
    memory = build_memory(name, budget=1024, **overrides)
    images = torch.rand(2, 3, 1, 8, 8)
    queries = images.clone()
    queries[..., :4, :4] = 0.0  # a block distortion; no known mask on images
    out = memory(images, queries)
    assert out.read.retrieved.shape == images.shape and torch.isfinite(out.loss)
    assert 0 <= out.read.retrieved.min() and out.read.retrieved.max() <= 1
    if any(p.requires_grad for p in memory.parameters()):
        out.loss.backward()


def test_trainer_logs_generic_scalars_and_refuses_untrainable_memories(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    memory = build_memory("memnet", dim=16, budget=64)

    def sampler(generator):
        patterns = sample_patterns(4, 3, 16, generator=generator)
        return (patterns, *corrupt(patterns, 8, generator=generator))

    trainer = MetaTrainer(memory, sampler, TrainConfig(steps=4, log_every=2, progress=False), run_dir=tmp_path)
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["weights"]  # no EBMM schedules
    trainer.train()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"meta/loss", "read/sq_error_k1"} <= tags and not any(t.startswith("write/") for t in tags)
    with pytest.raises(ValueError, match="no trainable parameters"):
        MetaTrainer(build_memory("modern_hopfield", dim=16, budget=64), sampler)


def test_time_limit_stops_training_and_saves_a_checkpoint(tmp_path):
    memory = build_memory("memnet", dim=16, budget=64)

    def sampler(generator):
        patterns = sample_patterns(4, 3, 16, generator=generator)
        return (patterns, *corrupt(patterns, 8, generator=generator))

    trainer = MetaTrainer(memory, sampler, TrainConfig(steps=10**6, time_limit_s=0.2, progress=False), run_dir=tmp_path)
    trainer.train()
    assert 0 < trainer.step < 10**6 and (tmp_path / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match="time_limit_s"):
        TrainConfig(time_limit_s=-1)

"""Every registered memory, one table: shapes, memory-size counting, meta-training, bad input, checkpoints."""

from __future__ import annotations

import pytest
import torch

from ebmm_rl.baselines import (
    DKMState,
    LSTMState,
    MANNState,
    NoState,
    PlasticityState,
    SlotState,
)
from ebmm_rl.binary import corrupt, sample_patterns
from ebmm_rl.checkpoint import load_memory, save_memory
from ebmm_rl.hopfield import HopfieldState
from ebmm_rl.memory import MemoryState
from ebmm_rl.protocol import MEMORIES, AssociativeMemory, build_memory
from ebmm_rl.training import MetaTrainer, TrainConfig

DIM, BUDGET = 16, 16 * 15 // 2 + 16  # the Hopfield budget for 16 bits: 136
TINY = {
    "ebmm_rnn": {"hidden_size": 32, "hops": 2, "write_steps": 2, "read_steps": 2},
    "vae": {"read_steps": 5},
    "deep_image_prior": {"steps": 3, "width": 4},
}
"""Overrides that keep the tiny models fast."""

PAPER_SIZES = {
    "hebb": 8256,
    "storkey": 8256,
    "pseudo_inverse": 8256,
    "ebmm_rnn": 8256,  # 128 · 64 + 64 writable weights
    "memnet": 8192,  # 64 slots × 128
    "mann": 8190,  # 63 slots × 128 + 63 read weights + 63 usage weights
    "lstm": 8256,  # h and c, 4128 each
    "plasticity": 8256,  # 128 · 127 / 2 trace entries + 128 activations
    "dkm": 8215,  # 53 rows × 128 mean + 53 · 54 / 2 symmetric row covariance
    "dae": 0,
    "vae": 0,
    "deep_image_prior": 0,
    "modern_hopfield": 8192,  # 64 stored patterns × 128
}
TINY_SIZES = {
    "hebb": 136,
    "storkey": 136,
    "pseudo_inverse": 136,
    "ebmm_rnn": 136,  # 16 · 8 + 8
    "memnet": 128,  # 8 slots × 16
    "mann": 126,  # 7 × 16 + 7 + 7
    "lstm": 136,  # 68 + 68
    "plasticity": 136,  # 16 · 15 / 2 + 16
    "dkm": 117,  # 6 × 16 + 6 · 7 / 2
    "dae": 0,
    "vae": 0,
    "deep_image_prior": 0,
    "modern_hopfield": 128,  # 8 × 16
}
TRAINABLE = [name for name, entry in MEMORIES.items() if entry.trainable]


def tiny(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_memory(name, DIM, BUDGET, **TINY.get(name, {}))


def batch(batch_size=3, num_patterns=5, seed=0, dim=DIM):
    generator = torch.Generator().manual_seed(seed)
    patterns = sample_patterns(batch_size, num_patterns, dim, generator=generator)
    queries, known = corrupt(patterns, dim // 2, generator=generator)
    return patterns, queries, known


def written_floats(state) -> int:
    """Float32 values of one episode's written state, counted from the state itself."""
    if isinstance(state, MemoryState):
        return state.flatten().shape[1]
    if isinstance(state, HopfieldState):
        d = state.weights.shape[-1]
        return d * (d - 1) // 2 + state.thresholds.shape[-1]  # a symmetric zero-diagonal matrix + thresholds
    if isinstance(state, SlotState):
        return state.slots[0].numel()
    if isinstance(state, MANNState):
        return state.memory[0].numel() + state.read_weights[0].numel() + state.usage[0].numel()
    if isinstance(state, LSTMState):
        return state.hidden[0].numel() + state.cell[0].numel()
    if isinstance(state, PlasticityState):
        hebb = state.hebb[0]
        torch.testing.assert_close(hebb, hebb.T)  # symmetric with zero diagonal: only n(n-1)/2 free values
        assert bool((hebb.diagonal() == 0).all())
        n = hebb.shape[0]
        return n * (n - 1) // 2 + state.activation[0].numel()
    if isinstance(state, DKMState):
        cov = state.cov[0]
        torch.testing.assert_close(cov, cov.T)  # symmetric: only k(k+1)/2 free values
        k = cov.shape[0]
        return state.mean[0].numel() + k * (k + 1) // 2
    if isinstance(state, NoState):
        return 0
    raise AssertionError(f"unknown state type {type(state).__name__}")


@pytest.mark.parametrize("name", list(MEMORIES))
def test_write_and_recall_shapes_and_clamping(name):
    memory = tiny(name)
    assert isinstance(memory, AssociativeMemory)
    patterns, _, _ = batch(num_patterns=5)
    _, queries, known = batch(num_patterns=3, seed=1)  # any number of queries M
    state = memory.write(patterns)
    with torch.no_grad():
        retrieved = memory.recall(queries, state, known)
    assert retrieved.shape == (3, 3, DIM)
    assert retrieved.min() >= -1 and retrieved.max() <= 1
    torch.testing.assert_close(retrieved[known], queries[known])  # known bits stay clamped


@pytest.mark.parametrize("name", list(MEMORIES))
def test_memory_size_counts_the_written_floats(name):
    memory = tiny(name)
    assert memory.memory_size == TINY_SIZES[name]
    assert written_floats(memory.write(batch()[0])) == TINY_SIZES[name]
    assert memory.memory_size <= BUDGET


@pytest.mark.parametrize("name", list(MEMORIES))
def test_memory_size_at_the_papers_budget(name):
    memory = MEMORIES[name].factory()  # D = 128, 8256 floats
    assert memory.memory_size == PAPER_SIZES[name] <= 8256


def make_sampler(structured: bool):
    """Random patterns, or (``structured``, for the non-memory models: random bits have no prior to learn)
    patterns drawn from 4 fixed prototypes."""
    prototypes = sample_patterns(1, 4, DIM, generator=torch.Generator().manual_seed(7))[0]  # [4, D]

    def sample(generator):
        if structured:
            patterns = prototypes[torch.randint(4, (8, 4), generator=generator)]  # [8, 4, D]
        else:
            patterns = sample_patterns(8, 4, DIM, generator=generator)
        return (patterns, *corrupt(patterns, DIM // 2, generator=generator))

    return sample


@pytest.mark.parametrize("name", TRAINABLE)
def test_short_meta_training_lowers_the_loss(name):
    memory = tiny(name)
    sampler = make_sampler(structured=MEMORIES[name].kind == "non-memory")
    fixed = sampler(torch.Generator().manual_seed(1234))

    def fixed_loss() -> float:
        torch.manual_seed(0)  # the VAE's loss samples latents
        return memory(*fixed).loss.item()

    before = fixed_loss()
    config = TrainConfig(steps=25, lr=1e-2, schedule_lr=1e-2, grad_clip=1.0, progress=False, log_every=5)
    MetaTrainer(memory, sampler, config).train()
    after = fixed_loss()
    assert after < 0.97 * before, (before, after)


BAD_INPUTS = {
    "wrong rank": (lambda p: p[0], r"shape"),
    "integer dtype": (lambda p: p.long(), r"float"),
    "NaN": (lambda p: torch.where(p > 0, float("nan"), p), r"NaN|-1\.0"),
    "empty batch": (lambda p: p[:0], r"empty"),
    "out of range": (lambda p: 2 * p, r"range|-1\.0"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("name", list(MEMORIES))
def test_bad_input_raises_a_clear_error(name, case):
    memory = tiny(name)
    patterns, queries, known = batch()
    make_bad, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message):
        memory.write(make_bad(patterns))
    state = memory.write(patterns)
    bad = make_bad(queries)
    with pytest.raises(ValueError, match=message):
        memory.recall(bad, state, known if bad.shape == known.shape else None)


@pytest.mark.parametrize("name", list(MEMORIES))
def test_mismatched_state_or_mask_raises(name):
    memory = tiny(name)
    patterns, queries, known = batch(batch_size=3)
    state = memory.write(patterns)
    with pytest.raises(ValueError, match="episodes|B="):
        memory.recall(queries[:2], state, known[:2])
    with pytest.raises(ValueError, match="bool"):
        memory.recall(queries, state, known.float())


@pytest.mark.parametrize("name", ["memnet", "mann", "lstm", "plasticity", "dkm", "modern_hopfield", "dae"])
def test_chunked_writing_continues_the_state(name):
    memory = tiny(name)
    patterns, queries, known = batch(num_patterns=6)
    with torch.no_grad():
        whole = memory.recall(queries, memory.write(patterns), known)
        chunked = memory.recall(queries, memory.write(patterns[:, 4:], memory.write(patterns[:, :4])), known)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in TRAINABLE if n != "ebmm_rnn"] + ["modern_hopfield"])
def test_checkpoint_rebuilds_every_baseline(name, tmp_path):
    memory = tiny(name).eval()
    save_memory(memory, tmp_path / "memory.pt")
    rebuilt = load_memory(tmp_path / "memory.pt").eval()
    assert type(rebuilt) is type(memory) and rebuilt.config == memory.config
    patterns, queries, known = batch()
    with torch.no_grad():
        expected = memory.recall(queries, memory.write(patterns), known)
        torch.testing.assert_close(rebuilt.recall(queries, rebuilt.write(patterns), known), expected)


def test_unknown_name_and_too_small_budget_raise():
    with pytest.raises(ValueError, match="unknown memory"):
        build_memory("nope")
    with pytest.raises(ValueError, match="budget"):
        build_memory("hebb", dim=16, budget=100)
    with pytest.raises(ValueError, match="no slot"):
        build_memory("memnet", dim=16, budget=8)

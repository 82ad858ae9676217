"""--precision: bf16 autocast keeps the state in fp32 and gives a loss close to fp32; tf32 is fp32 on CPU."""

from __future__ import annotations

import math

import pytest
import torch

from ebmm_rl.binary import corrupt, sample_patterns
from ebmm_rl.energy import GatedRNNConfig, GatedRNNEnergy
from ebmm_rl.memory import EBMMConfig, EBMMemory
from ebmm_rl.precision import autocast_context
from ebmm_rl.training import MetaTrainer, TrainConfig


def tiny_memory(seed: int = 0) -> EBMMemory:
    torch.manual_seed(seed)
    energy = GatedRNNEnergy(GatedRNNConfig(input_size=16, hidden_size=32, dynamic_size=8, hops=3))
    return EBMMemory(energy, EBMMConfig(data_range=(-1.0, 1.0), write_steps=2, read_steps=3, write_lr_init=0.3))


def sampler(generator: torch.Generator):
    patterns = sample_patterns(8, 4, 16, generator=generator)
    queries, known = corrupt(patterns, 8, generator=generator)
    return patterns, queries, known


def one_step(precision: str):
    trainer = MetaTrainer(tiny_memory(), sampler, TrainConfig(steps=1, progress=False, precision=precision))
    stats = trainer.train_step()
    grads = {n: p.grad for n, p in trainer.memory.named_parameters() if p.grad is not None}
    return stats, grads, trainer.memory


def test_bf16_meta_step_is_finite_and_close_to_fp32():
    ref, _, ref_memory = one_step("fp32")
    low, _, low_memory = one_step("bf16")
    assert math.isfinite(low.loss) and math.isfinite(low.grad_norm)
    assert low.loss != ref.loss  # autocast was active: bf16 products round differently
    assert abs(low.loss - ref.loss) <= 0.05 * abs(ref.loss), (low.loss, ref.loss)
    assert abs(low.grad_norm - ref.grad_norm) <= 0.2 * ref.grad_norm, (low.grad_norm, ref.grad_norm)
    for p in low_memory.parameters():  # the optimiser step kept the parameters in fp32
        assert p.dtype == torch.float32


def test_bf16_autocast_lowers_the_products_but_keeps_the_state_fp32():
    memory = tiny_memory()
    patterns, queries, known = sampler(torch.Generator().manual_seed(3))
    with autocast_context("bf16", "cpu"):
        state = memory.write(patterns)
        result = memory.read(queries, state, known)
        energies = memory.energies(patterns.unsqueeze(0), state)  # [1, B, N]
        product = torch.nn.functional.linear(patterns, torch.ones(2, 16))
    assert product.dtype == torch.bfloat16  # the context is autocast
    assert all(w.dtype == torch.float32 for w in state.fast_weights.values())
    assert result.retrieved.dtype == torch.float32
    assert torch.isfinite(energies).all()


def test_tf32_on_cpu_is_fp32_exactly():
    ref, ref_grads, _ = one_step("fp32")
    tf32, tf32_grads, _ = one_step("tf32")
    assert tf32.loss == ref.loss
    for name, g in ref_grads.items():
        assert torch.equal(g, tf32_grads[name]), name


def test_unknown_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="fp32, tf32 or bf16"):
        TrainConfig(precision="fp16")

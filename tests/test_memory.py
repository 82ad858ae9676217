"""EBMMemory: the write rule, the read rule, the meta-loss, batching and input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ebmm_rl.energy import GatedRNNConfig, GatedRNNEnergy, MLPConfig, MLPEnergy
from ebmm_rl.layers import EnergyNet, MemoryLinear
from ebmm_rl.memory import EBMMConfig, EBMMemory
from tests.helpers import per_episode


class QuadraticEnergy(EnergyNet):
    """``E(x; W) = ½‖W x‖²`` with ``W`` writable: small enough to differentiate by hand."""

    def __init__(self, dim: int = 3, out: int = 2) -> None:
        super().__init__()
        self.data_shape = (dim,)
        self.memory = MemoryLinear(dim, out, bias=False)

    def forward(self, x, fast):
        return 0.5 * self.memory(x, fast).pow(2).sum(-1)


def tiny_binary_memory(**config) -> EBMMemory:
    energy = GatedRNNEnergy(GatedRNNConfig(input_size=16, hidden_size=24, dynamic_size=8, hops=3))
    return EBMMemory(energy, EBMMConfig(data_range=(-1.0, 1.0), **config))


def tiny_mlp_memory(**config) -> EBMMemory:
    energy = MLPEnergy(MLPConfig(input_size=6, hidden_size=10, dynamic_size=4, hops=2))
    return EBMMemory(energy, EBMMConfig(**config))


def random_bits(*shape, generator=None):
    return torch.randint(0, 2, shape, generator=generator).double() * 2 - 1


def writing_loss(memory: EBMMemory, patterns, state) -> torch.Tensor:
    """``mean_n [E + α‖∇ₓE‖²] + β‖θ − θ̄‖²`` per episode, summed over episodes."""
    with torch.enable_grad():
        x = patterns.detach().requires_grad_(True)
        energies = memory.energy(x, state.fast_weights)
        (gx,) = torch.autograd.grad(energies.sum(), x)
    prior = sum(
        (w - p).pow(2).sum()
        for w, p in zip(state.fast_weights.values(), memory.energy.memory_parameters().values(), strict=True)
    )
    return (energies + memory.alpha * gx.pow(2).sum(-1)).mean(1).sum() + memory.beta * prior


def test_write_lowers_the_writing_loss():
    torch.manual_seed(0)
    memory = tiny_binary_memory(write_lr_init=1e-2).double()
    patterns = random_bits(4, 5, 16)
    with torch.no_grad():
        before = writing_loss(memory, patterns, memory.initial_state(4))
        after = writing_loss(memory, patterns, memory.write(patterns))
    assert after < before - 1e-3


def test_one_write_step_equals_hand_computed_update():
    torch.manual_seed(0)
    config = EBMMConfig(write_steps=2, read_steps=2, write_lr_init=0.05, alpha_init=0.7, beta_init=0.3)
    memory = EBMMemory(QuadraticEnergy(), config).double()
    with torch.no_grad():
        memory.write_lr_raw.add_(0.3 * torch.randn_like(memory.write_lr_raw))  # distinct rates per step and term
    x = torch.rand(2, 4, 3, dtype=torch.float64)  # B=2 episodes, N=4 patterns
    theta_bar = memory.energy.memory.weight.detach()
    lrs, alpha, beta = memory.write_lrs.detach(), memory.alpha.item(), memory.beta.item()

    def step(W, t):  # W: [out, in]; one episode
        grad_e = torch.zeros_like(W)
        grad_g = torch.zeros_like(W)
        for n in range(x.shape[1]):
            xn = xb[n]
            Wx = W @ xn
            u = W.T @ Wx  # ∇ₓE
            grad_e += torch.outer(Wx, xn)  # ∇_W ½‖Wx‖²
            grad_g += 2 * (torch.outer(Wx, u) + torch.outer(W @ u, xn))  # ∇_W ‖WᵀWx‖²
        grad_e, grad_g = grad_e / x.shape[1], grad_g / x.shape[1]
        lr_e, lr_g, lr_p = lrs[t, 0]
        shrink = config.max_prior_step * torch.tanh(2 * lr_p * beta / config.max_prior_step)
        return W - lr_e * grad_e - lr_g * alpha * grad_g - shrink * (W - theta_bar)

    state = memory.write(x, create_graph=False)
    for b in range(2):
        xb = x[b]
        expected = step(step(theta_bar, 0), 1)
        torch.testing.assert_close(state.fast_weights["memory.weight"][b], expected, rtol=1e-10, atol=1e-12)


def test_a_shared_schedule_gives_the_same_write_and_must_match_the_graph_mode():
    torch.manual_seed(0)
    memory = EBMMemory(QuadraticEnergy(), EBMMConfig(write_steps=2, read_steps=2, write_lr_init=0.05)).double()
    with torch.no_grad():
        memory.write_lr_raw.add_(0.3 * torch.randn_like(memory.write_lr_raw))
    x = torch.rand(2, 3, 3, dtype=torch.float64)
    for create_graph in (False, True):
        schedule = memory.schedule(create_graph)
        first = memory.write(x, create_graph=create_graph, schedule=schedule)
        shared = memory.write(x, first, create_graph=create_graph, schedule=schedule)  # the schedule serves two
        own = memory.write(x, memory.write(x, create_graph=create_graph), create_graph=create_graph)
        torch.testing.assert_close(shared.fast_weights["memory.weight"], own.fast_weights["memory.weight"])
        with pytest.raises(ValueError, match=rf"memory.schedule\({not create_graph}\)"):
            memory.write(x, create_graph=not create_graph, schedule=schedule)


def test_write_passes_gradcheck():
    """Meta-gradients through the write rule match finite differences (float64)."""
    torch.manual_seed(0)
    memory = EBMMemory(QuadraticEnergy(), EBMMConfig(write_steps=2, read_steps=2, write_lr_init=0.05)).double()
    with torch.no_grad():
        memory.beta_raw.fill_(2.0)  # prior shrink well inside its cap, so every term matters
    x = torch.rand(2, 3, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: memory.write(p, create_graph=True).flatten(), x.clone().requires_grad_())

    probe = torch.randn(2, 2 * 3, dtype=torch.float64)

    def scalar() -> torch.Tensor:
        return (memory.write(x, create_graph=True).flatten() * probe).sum()

    params = [memory.energy.memory.weight, memory.write_lr_raw, memory.alpha_raw, memory.beta_raw]
    analytic = torch.autograd.grad(scalar(), params)
    eps = 1e-6
    for p, g in zip(params, analytic, strict=True):
        direction = torch.randn_like(p)
        with torch.no_grad():
            p.add_(eps * direction)
            up = scalar()
            p.sub_(2 * eps * direction)
            down = scalar()
            p.add_(eps * direction)
        numeric = (up - down) / (2 * eps)
        torch.testing.assert_close(numeric, (g * direction).sum(), rtol=1e-6, atol=1e-9)


def test_meta_gradients_reach_every_meta_parameter():
    torch.manual_seed(0)
    memory = tiny_binary_memory(write_lr_init=1e-2)
    patterns = random_bits(2, 4, 16).float()
    known = torch.rand(patterns.shape) < 0.5
    queries = torch.where(known, patterns, random_bits(2, 4, 16).float())
    memory(patterns, queries, known).loss.backward()
    for name, p in memory.named_parameters():
        assert p.grad is not None, f"{name} got no meta-gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name} has a zero or non-finite gradient"
    assert memory.energy.memory.weight.grad.abs().sum() > 0  # θ̄ itself


@pytest.mark.parametrize("make", [tiny_binary_memory, tiny_mlp_memory])
def test_batched_equals_per_episode_reference(make):
    torch.manual_seed(0)
    memory = make(write_lr_init=1e-2).double()
    lo, hi = memory.config.data_range
    B, N = 3, 4
    patterns = lo + (hi - lo) * torch.rand(B, N, *memory.data_shape, dtype=torch.float64)
    queries = lo + (hi - lo) * torch.rand(B, N, *memory.data_shape, dtype=torch.float64)
    known = torch.rand(queries.shape) < 0.3

    out = memory(patterns, queries, known)
    grads = torch.autograd.grad(out.loss, list(memory.parameters()))

    def one(b):
        o = memory(patterns[b : b + 1], queries[b : b + 1], known[b : b + 1])
        return o.read.iterates.transpose(0, 1), o.loss

    reference = per_episode(lambda b: one(b)[0], B).transpose(0, 1)
    torch.testing.assert_close(out.read.iterates, reference, rtol=1e-9, atol=1e-10)
    ref_loss = sum(one(b)[1] for b in range(B)) / B
    ref_grads = torch.autograd.grad(ref_loss, list(memory.parameters()))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)


# Writing continued from a state and chunk by chunk is pinned against a loop-by-loop reference in test_rules.py.


def test_pattern_mask_ignores_padding():
    torch.manual_seed(0)
    memory = tiny_binary_memory(write_lr_init=1e-2).double()
    x = random_bits(2, 5, 16)
    mask = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    with torch.no_grad():
        masked = memory.write(x, pattern_mask=mask)
        only_real = memory.write(x[:1, :3])
    torch.testing.assert_close(masked.flatten()[:1], only_real.flatten(), rtol=1e-10, atol=1e-12)
    assert masked.num_written.tolist() == [3, 5]


def test_read_projects_and_keeps_clamped_dimensions():
    torch.manual_seed(0)
    memory = tiny_mlp_memory(read_step_init=9.0, read_step_max=10.0)  # huge steps: projection must act
    patterns = torch.rand(2, 4, 6)
    queries = torch.rand(2, 4, 6)
    known = torch.rand(queries.shape) < 0.5
    with torch.no_grad():
        result = memory.read(queries, memory.write(patterns), known, compute_energies=True)
    assert result.iterates.shape == (6, 2, 4, 6) and result.energies.shape == (6, 2, 4)
    assert result.iterates.min() >= 0 and result.iterates.max() <= 1
    for k in range(result.iterates.shape[0]):
        assert torch.equal(result.iterates[k][known], queries[known])
    assert not torch.equal(result.retrieved[~known], queries[~known])


def test_step_size_schedules_are_non_increasing_and_bounded():
    memory = tiny_binary_memory(read_steps=5)
    with torch.no_grad():
        memory.read_step_raw.fill_(100.0)
        memory.read_decay_raw.normal_()
    gammas, psis = memory.read_step_sizes, memory.momenta
    assert gammas.shape == (5,) and psis.shape == (5,)
    assert (gammas[1:] <= gammas[:-1]).all() and (psis[1:] <= psis[:-1]).all()
    assert gammas.max() <= memory.config.read_step_max and psis.max() <= 1


def test_memory_size_counts_writable_floats():
    assert EBMMemory(GatedRNNEnergy(GatedRNNConfig(hidden_size=96)), EBMMConfig()).memory_size == 128 * 64 + 64 == 8256
    assert tiny_mlp_memory().memory_size == 6 * 4 + 4
    assert tiny_mlp_memory().initial_state(3).flatten().shape == (3, 28)


BAD_INPUTS = [
    (lambda: torch.zeros(4, 16), "shape"),  # wrong rank
    (lambda: torch.zeros(2, 3, 15), "shape"),  # wrong pattern size
    (lambda: torch.zeros(2, 3, 16, dtype=torch.long), "floating-point"),
    (lambda: torch.full((2, 3, 16), float("nan")), "NaN"),
    (lambda: torch.full((2, 3, 16), float("inf")), "NaN or inf"),
    (lambda: torch.zeros(0, 3, 16), "empty"),
    (lambda: torch.zeros(2, 0, 16), "empty"),
    (lambda: torch.full((2, 3, 16), 2.0), "data_range"),
    (lambda: [[0.0] * 16], "torch.Tensor"),
]


@pytest.mark.parametrize("make_input, message", BAD_INPUTS)
def test_bad_input_raises_clear_error(make_input, message):
    memory = tiny_binary_memory()
    with pytest.raises(ValueError, match=message):
        memory.write(make_input())
    state = memory.initial_state(2)
    with pytest.raises(ValueError, match=message):
        memory.read(make_input(), state)


def test_mismatched_state_and_mask_raise():
    memory = tiny_binary_memory()
    x = random_bits(2, 3, 16).float()
    with pytest.raises(ValueError, match="episodes"):
        memory.read(x, memory.initial_state(3))
    with pytest.raises(ValueError, match="bool"):
        memory.read(x, memory.initial_state(2), known_mask=torch.ones_like(x))
    with pytest.raises(ValueError, match="broadcast"):
        memory.read(x, memory.initial_state(2), known_mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="pattern_mask"):
        memory.write(x, pattern_mask=torch.ones(2, 4, dtype=torch.bool))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="data_range"):
        EBMMConfig(data_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="max_prior_step"):
        EBMMConfig(max_prior_step=1.5)


def test_memory_layer_reference_path_matches_batched():
    torch.manual_seed(0)
    layer = MemoryLinear(5, 3).double()
    x = torch.randn(4, 2, 5, dtype=torch.float64)
    w, b = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    batched = layer(x, {"weight": w, "bias": b})
    for i in range(4):
        torch.testing.assert_close(batched[i], F.linear(x[i], w[i], b[i]))


def test_write_chunked_with_one_chunk_is_a_batch_write():
    torch.manual_seed(0)
    memory = tiny_binary_memory(write_lr_init=1e-2).double()
    x = random_bits(2, 7, 16)
    with torch.no_grad():
        one_chunk = memory.write_chunked(x, chunk_size=7)
        larger = memory.write_chunked(x, chunk_size=99)
        batch = memory.write(x)
        chunked = memory.write_chunked(x, chunk_size=3)
    torch.testing.assert_close(one_chunk.flatten(), batch.flatten(), rtol=0, atol=0)
    torch.testing.assert_close(larger.flatten(), batch.flatten(), rtol=0, atol=0)
    assert chunked.num_written.tolist() == [7, 7]
    assert not torch.allclose(chunked.flatten(), batch.flatten())  # chunks get T steps each: not a batch write


def test_padding_only_chunk_keeps_the_memory():
    torch.manual_seed(0)
    memory = tiny_binary_memory(write_lr_init=1e-2).double()
    x = random_bits(2, 4, 16)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    with torch.no_grad():
        state = memory.write_chunked(x, chunk_size=2, pattern_mask=mask)
        first_only = memory.write(x[:1, :2])
    torch.testing.assert_close(state.flatten()[:1], first_only.flatten(), rtol=1e-12, atol=1e-12)
    assert state.num_written.tolist() == [2, 4]


def test_forward_uses_the_configured_chunk_schedule():
    torch.manual_seed(0)
    memory = tiny_binary_memory(write_lr_init=1e-2, chunk_size=2).double()
    x = random_bits(2, 5, 16)
    out = memory(x, x)
    with torch.no_grad():
        expected = memory.write_chunked(x, 2)
    torch.testing.assert_close(out.state.flatten().detach(), expected.flatten(), rtol=1e-12, atol=1e-12)

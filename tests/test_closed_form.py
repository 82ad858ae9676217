"""Closed-form inner gradients: equal to nested autograd, and the meta-gradient through them is right."""

from __future__ import annotations

import pytest
import torch

from ebmm_rl.energy import GatedRNNConfig, GatedRNNEnergy, MLPConfig, MLPEnergy
from ebmm_rl.layers import EnergyNet, MemoryLinear
from ebmm_rl.memory import EBMMConfig, EBMMemory, MemoryState

ENERGIES = {
    "mlp": lambda: MLPEnergy(MLPConfig(input_size=6, hidden_size=10, dynamic_size=4, hops=2)),
    "mlp-no-static-no-hops": lambda: MLPEnergy(MLPConfig(input_size=5, hidden_size=4, dynamic_size=4, hops=0)),
    "rnn": lambda: GatedRNNEnergy(GatedRNNConfig(input_size=6, hidden_size=12, dynamic_size=4, hops=3)),
    "rnn-one-hop": lambda: GatedRNNEnergy(GatedRNNConfig(input_size=5, hidden_size=7, dynamic_size=3, hops=1)),
}
TOL = dict(rtol=1e-10, atol=1e-10)


def make_memory(name: str, **config) -> EBMMemory:
    torch.manual_seed(0)
    settings = dict(write_steps=2, read_steps=3, write_lr_init=0.05, data_range=(-1.0, 1.0)) | config
    memory = EBMMemory(ENERGIES[name](), EBMMConfig(**settings)).double()
    with torch.no_grad():  # distinct rates per step, layer and term, and a strong grad-norm term
        memory.write_lr_raw.add_(0.3 * torch.randn_like(memory.write_lr_raw))
        memory.alpha_raw.fill_(0.5)
    return memory


def perturbed_fast_weights(energy: EnergyNet, B: int) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().expand(B, *p.shape) + 0.2 * torch.randn(B, *p.shape, dtype=p.dtype)
        for n, p in energy.memory_parameters().items()
    }


def energy_inputs(name: str, seed: int, B: int, M: int):
    """A float64 energy, ``x: [B, M, D]`` in ``[-1, 1]`` and pattern weights ``w``, ``c: [B, M]`` in ``[0, 1]``."""
    energy = ENERGIES[name]().double()
    torch.manual_seed(seed)
    x = torch.rand(B, M, energy.data_shape[0], dtype=torch.float64) * 2 - 1
    return energy, x, torch.rand(B, M, dtype=torch.float64), torch.rand(B, M, dtype=torch.float64)


def autograd_reference(energy: EnergyNet, x, fast, w, c):
    """``E``, ``∇ₓE``, ``Σ w ∇_θE`` and ``∇_θ Σ c ‖∇ₓE‖²`` by nested ``torch.autograd.grad``."""
    x = x.detach().requires_grad_(True)
    fast = {n: v.detach().requires_grad_(True) for n, v in fast.items()}
    energies = energy(x, fast)
    (gx,) = torch.autograd.grad(energies.sum(), x, create_graph=True)
    ge = torch.autograd.grad((energies * w).sum(), list(fast.values()), retain_graph=True)
    gg = torch.autograd.grad((c * gx.pow(2).sum(-1)).sum(), list(fast.values()))
    return energies, gx, dict(zip(fast, ge, strict=True)), dict(zip(fast, gg, strict=True))


def autograd_path(memory: EBMMemory):
    """Context: the same memory on the nested-autograd reference path."""

    class Reference:
        def __enter__(self):
            memory.energy.closed_form = False

        def __exit__(self, *exc):
            del memory.energy.closed_form  # back to the class attribute

    return Reference()


def test_energies_with_closed_form_use_it_and_others_do_not():
    for make in ENERGIES.values():
        memory = EBMMemory(make())
        assert memory.uses_closed_form
        with autograd_path(memory):
            assert not memory.uses_closed_form
        assert memory.uses_closed_form

    class Plain(EnergyNet):
        def __init__(self):
            super().__init__()
            self.data_shape = (3,)
            self.memory = MemoryLinear(3, 2)

        def forward(self, x, fast):
            return self.memory(x, fast).pow(2).sum(-1)

    assert not EBMMemory(Plain()).uses_closed_form
    with pytest.raises(NotImplementedError, match="closed_form = False"):
        Plain().closed_form_grads(torch.zeros(1, 1, 3), {})


@pytest.mark.parametrize("name", list(ENERGIES))
def test_closed_form_grads_equal_autograd(name):
    energy, x, w, c = energy_inputs(name, seed=1, B=3, M=4)
    fast = perturbed_fast_weights(energy, 3)
    w[0, 1] = c[0, 1] = 0.0  # a padded pattern
    energies, gx, ge, gg = autograd_reference(energy, x, fast, w, c)
    out = energy.closed_form_grads(x, fast, w, c)
    torch.testing.assert_close(out.energy, energies, **TOL)
    torch.testing.assert_close(out.grad_x, gx, **TOL)
    assert set(out.grad_theta) == set(ge) == set(out.grad_theta_grad_norm) == {"memory.weight", "memory.bias"}
    for n in ge:
        torch.testing.assert_close(out.grad_theta[n], ge[n], **TOL)
        torch.testing.assert_close(out.grad_theta_grad_norm[n], gg[n], **TOL)
    assert gg["memory.weight"].abs().max() > 1e-3  # the grad-norm term is not trivially zero here
    only_x = energy.closed_form_grads(x, fast)
    assert only_x.grad_theta is None and only_x.grad_theta_grad_norm is None
    torch.testing.assert_close(only_x.grad_x, gx, **TOL)


def write_and_read(memory: EBMMemory, patterns, queries, pattern_mask, known, chunk_size):
    if chunk_size:
        state = memory.write_chunked(patterns, chunk_size, pattern_mask=pattern_mask)
    else:
        state = memory.write(patterns, pattern_mask=pattern_mask)
    return state, memory.read(queries, state, known)


def episode_batch(memory: EBMMemory, B=3, N=5):
    torch.manual_seed(2)
    D = memory.data_shape[0]
    patterns = torch.rand(B, N, D, dtype=torch.float64) * 2 - 1
    known = torch.rand(B, N, D) < 0.4
    queries = torch.where(known, patterns, torch.rand(B, N, D, dtype=torch.float64) * 2 - 1)
    pattern_mask = torch.ones(B, N, dtype=torch.bool)
    pattern_mask[0, 3:] = False  # padding
    pattern_mask[1, :2] = False  # the first chunk of episode 1 is all padding
    return patterns, queries, known, pattern_mask


@pytest.mark.parametrize("name", list(ENERGIES))
@pytest.mark.parametrize("chunk_size,grad_norm", [(0, True), (2, True), (0, False)])
def test_write_read_and_meta_gradient_equal_the_autograd_path(name, chunk_size, grad_norm):
    memory = make_memory(name, use_grad_norm_term=grad_norm)
    patterns, queries, known, pattern_mask = episode_batch(memory)
    results = {}
    for path in ("closed", "autograd"):
        if path == "autograd":
            memory.energy.closed_form = False
        memory.zero_grad(set_to_none=True)
        state, read = write_and_read(memory, patterns, queries, pattern_mask, known, chunk_size)
        loss, _ = memory.meta_loss(patterns, read)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in memory.named_parameters() if p.grad is not None}
        results[path] = (state, read, grads)
    del memory.energy.closed_form
    (s_fast, r_fast, g_fast), (s_ref, r_ref, g_ref) = results["closed"], results["autograd"]
    for n in s_ref.fast_weights:
        torch.testing.assert_close(s_fast.fast_weights[n], s_ref.fast_weights[n], **TOL)
    assert torch.equal(s_fast.num_written, s_ref.num_written)
    assert (s_ref.fast_weights["memory.weight"] - memory.energy.memory.weight).abs().max() > 1e-3  # it wrote
    torch.testing.assert_close(r_fast.iterates, r_ref.iterates, **TOL)
    assert g_fast.keys() == g_ref.keys() and len(g_ref) > 5
    for n in g_ref:
        torch.testing.assert_close(g_fast[n], g_ref[n], **TOL, msg=lambda m, n=n: f"meta-gradient of {n}: {m}")


@pytest.mark.parametrize("name", ["mlp", "rnn"])
def test_no_graph_write_and_read_equal_the_autograd_path(name):
    memory = make_memory(name)
    patterns, queries, known, pattern_mask = episode_batch(memory)
    with torch.no_grad():
        state, read = write_and_read(memory, patterns, queries, pattern_mask, known, 2)
        with autograd_path(memory):
            state_ref, read_ref = write_and_read(memory, patterns, queries, pattern_mask, known, 2)
    assert not read.iterates.requires_grad and not state.fast_weights["memory.weight"].requires_grad
    torch.testing.assert_close(state.flatten(), state_ref.flatten(), **TOL)
    torch.testing.assert_close(read.iterates, read_ref.iterates, **TOL)


@pytest.mark.parametrize("name", ["mlp", "rnn"])
def test_fast_path_calls_no_autograd_grad(name, monkeypatch):
    memory = make_memory(name)
    patterns, queries, known, pattern_mask = episode_batch(memory)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.autograd.grad was called on the closed-form path")

    monkeypatch.setattr(torch.autograd, "grad", refuse)
    state, read = write_and_read(memory, patterns, queries, pattern_mask, known, 0)
    memory.meta_loss(patterns, read)[0].backward()
    assert memory.energy.memory.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["mlp", "rnn"])
def test_meta_gradient_on_the_fast_path_matches_finite_differences(name):
    memory = make_memory(name)
    patterns, queries, known, pattern_mask = episode_batch(memory, B=2, N=3)

    def loss() -> torch.Tensor:
        _, read = write_and_read(memory, patterns, queries, pattern_mask, known, 2)
        return memory.meta_loss(patterns, read)[0]

    params = {
        "θ̄ weight": memory.energy.memory.weight,
        "θ̄ bias": memory.energy.memory.bias,
        "static gate": memory.energy.gate.weight,
        "write rates": memory.write_lr_raw,
        "alpha": memory.alpha_raw,
        "read step": memory.read_step_raw,
    }
    analytic = torch.autograd.grad(loss(), list(params.values()))
    eps = 1e-6
    torch.manual_seed(3)
    for (name_, p), g in zip(params.items(), analytic, strict=True):
        direction = torch.randn_like(p)
        with torch.no_grad():
            p.add_(eps * direction)
            up = loss()
            p.sub_(2 * eps * direction)
            down = loss()
            p.add_(eps * direction)
        numeric = (up - down) / (2 * eps)
        assert abs((g * direction).sum()) > 1e-6, f"{name_}: zero directional derivative, the check would be empty"
        torch.testing.assert_close((g * direction).sum(), numeric, rtol=1e-5, atol=1e-8, msg=name_)


def writing_loss(memory: EBMMemory, patterns, fast) -> torch.Tensor:
    """``Σ_b mean_n [E + α‖∇ₓE‖²] + β‖θ − θ̄‖²`` by autograd (independent of the closed form)."""
    with torch.enable_grad():
        x = patterns.detach().requires_grad_(True)
        energies = memory.energy(x, fast)
        (gx,) = torch.autograd.grad(energies.sum(), x)
    prior = sum((fast[n] - p).pow(2).sum() for n, p in memory.energy.memory_parameters().items())
    return (energies + memory.alpha * gx.pow(2).sum(-1)).mean(1).sum() + memory.beta * prior


@pytest.mark.parametrize("name", ["mlp", "rnn"])
def test_one_write_step_lowers_the_writing_loss(name):
    memory = make_memory(name, write_steps=1, write_lr_init=1e-2)
    patterns = episode_batch(memory)[0]
    fast = perturbed_fast_weights(memory.energy, patterns.shape[0])  # away from θ̄, so every term acts
    state = memory.initial_state(patterns.shape[0])
    state.fast_weights = fast
    with torch.no_grad():
        before = writing_loss(memory, patterns, fast)
        after = writing_loss(memory, patterns, memory.write(patterns, state).fast_weights)
    assert after < before - 1e-4


@pytest.mark.parametrize("name", ["mlp", "rnn"])
@pytest.mark.parametrize("steps", [(2, 3), (3, 1)])
@pytest.mark.parametrize("grad_norm,anchor", [(True, "previous"), (False, "initial")])
def test_write_and_read_in_lockstep_equal_a_write_then_a_read(name, steps, grad_norm, anchor):
    """One closed-form call per step over the write's and the read's episodes = write() then read() by autograd."""
    memory = make_memory(name, write_steps=steps[0], read_steps=steps[1], use_grad_norm_term=grad_norm,
                         prior_anchor=anchor)  # fmt: skip
    patterns, queries, _, _ = episode_batch(memory, N=2)
    start = MemoryState(perturbed_fast_weights(memory.energy, 3), torch.tensor([4, 0, 7]))
    with torch.no_grad():
        state, read = memory.write_and_read(patterns, queries, start)
        with autograd_path(memory):
            state_ref = memory.write(patterns, start)
            read_ref = memory.read(queries, start)
    torch.testing.assert_close(state.flatten(), state_ref.flatten(), **TOL)
    assert torch.equal(state.num_written, torch.tensor([6, 2, 9]))
    torch.testing.assert_close(read.iterates, read_ref.iterates, **TOL)
    assert (state.flatten() - start.flatten()).abs().max() > 1e-3  # it wrote
    assert (read.retrieved - read.iterates[0]).abs().max() > 1e-3  # it read


@pytest.mark.parametrize("name", list(ENERGIES))
def test_closed_form_without_grad_x_and_with_a_shared_context(name):
    """``need_grad_x=False`` skips ``E`` and ``∇ₓE`` only; a context is reused for the same ``x`` object only."""
    energy, x, w, c = energy_inputs(name, seed=3, B=3, M=2)
    B, M, D = x.shape
    fast_a, fast_b = perturbed_fast_weights(energy, B), perturbed_fast_weights(energy, B)
    _, _, ge_b, _ = autograd_reference(energy, x, fast_b, w, c)
    theta_only = energy.closed_form_grads(x, fast_b, w, need_grad_x=False)
    assert theta_only.energy is None and theta_only.grad_x is None
    for n in ge_b:
        torch.testing.assert_close(theta_only.grad_theta[n], ge_b[n], **TOL)
    with_norm = energy.closed_form_grads(x, fast_b, w, c, need_grad_x=False)  # the grad-norm term needs ∇ₓE
    assert with_norm.grad_x is not None

    context: dict = {}
    energy.closed_form_grads(x, fast_a, w, context=context)  # fills the context for x
    shared = energy.closed_form_grads(x, fast_b, w, c, context=context)  # the same x, other fast weights
    energies, gx, ge, gg = autograd_reference(energy, x, fast_b, w, c)
    torch.testing.assert_close(shared.energy, energies, **TOL)
    torch.testing.assert_close(shared.grad_x, gx, **TOL)
    for n in ge:
        torch.testing.assert_close(shared.grad_theta[n], ge[n], **TOL)
        torch.testing.assert_close(shared.grad_theta_grad_norm[n], gg[n], **TOL)
    y = torch.rand(B, M, D, dtype=torch.float64) * 2 - 1  # another x: the context is rebuilt, not reused
    other = energy.closed_form_grads(y, fast_b, context=context)
    _, gy, _, _ = autograd_reference(energy, y, fast_b, w, c)
    torch.testing.assert_close(other.grad_x, gy, **TOL)


@pytest.mark.parametrize("name", ["mlp", "rnn"])
def test_a_context_filled_without_grad_is_rebuilt_for_a_call_with_grad(name):
    """Terms kept under ``torch.no_grad`` carry no graph: a call with gradients must not reuse them."""
    energy, x, w, _ = energy_inputs(name, seed=4, B=2, M=2)
    fast = perturbed_fast_weights(energy, 2)
    context: dict = {}
    with torch.no_grad():
        energy.closed_form_grads(x, fast, w, need_grad_x=False, context=context)
    slow = [p for n, p in energy.named_parameters() if not n.startswith("memory.")]
    shared = energy.closed_form_grads(x, fast, w, need_grad_x=False, context=context).grad_theta["memory.weight"]
    fresh = energy.closed_form_grads(x, fast, w, need_grad_x=False).grad_theta["memory.weight"]
    got = torch.autograd.grad(shared.sum(), slow, allow_unused=True)
    want = torch.autograd.grad(fresh.sum(), slow, allow_unused=True)
    assert sum(g is not None for g in want) >= 3  # ∇_θE depends on most slow weights
    for g, ref in zip(got, want, strict=True):
        assert (g is None) == (ref is None)
        if ref is not None:
            torch.testing.assert_close(g, ref, **TOL)

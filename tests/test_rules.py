"""The paper's write and read rules, pinned against loop-by-loop float64 references written here.

Each reference below re-implements one rule of App. B / eq. 4 with plain Python loops over episodes, patterns,
queries and steps; only the energy ``E(x; θ)`` itself and its autograd derivatives come from the library. The
meta-parameters are set to distinct random values (per write step, layer and term; per read step), so that
changing any single rule of :class:`~ebmm_rl.memory.EBMMemory` (one shared write rate, a constant read step, no
momentum, a heavy-ball step instead of Nesterov's look-ahead, no clipping, no clamping, the loss on the last
iterate only, the prior toward the wrong anchor, ...) makes at least one test here fail.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebmm_rl.energy import MLPConfig, MLPEnergy
from ebmm_rl.layers import EnergyNet, MemoryLinear
from ebmm_rl.memory import EBMMConfig, EBMMemory, MemoryState

LO, HI = -1.0, 1.0
TOL = {"rtol": 1e-9, "atol": 1e-11}


class TwoLayerEnergy(EnergyNet):
    """``E(x) = Σ tanh(W₂ tanh(W₁x + b₁))²``-like energy with two writable layers (per-layer write rates)."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.data_shape = (dim,)
        self.first = MemoryLinear(dim, 3)
        self.second = MemoryLinear(3, 2, bias=False)
        self.static = torch.nn.Linear(dim, 2)

    def forward(self, x, fast):
        h = torch.tanh(self.first(x, fast))
        return (torch.tanh(self.second(h, fast)) + self.static(x)).pow(2).sum(-1)


def make_memory(energy: str = "mlp", seed: int = 0, **config) -> EBMMemory:
    """A tiny float64 memory whose meta-parameters all take distinct random values."""
    torch.manual_seed(seed)
    if energy == "mlp":
        net = MLPEnergy(MLPConfig(input_size=4, hidden_size=6, dynamic_size=3, hops=1))
    else:
        net = TwoLayerEnergy()
    defaults = dict(write_steps=3, read_steps=4, data_range=(LO, HI), write_lr_init=0.05, read_step_init=1.0)
    memory = EBMMemory(net, EBMMConfig(**{**defaults, **config})).double()
    with torch.no_grad():
        memory.write_lr_raw.add_(0.8 * torch.randn_like(memory.write_lr_raw))  # one rate per (t, layer, term)
        memory.alpha_raw.fill_(-0.4)
        memory.beta_raw.fill_(0.3)
        memory.read_decay_raw.copy_(torch.linspace(2.0, -1.0, memory.read_decay_raw.numel()))  # γ⁽ᵏ⁾ differ
        memory.momentum_raw.fill_(0.4)
        memory.momentum_decay_raw.copy_(torch.linspace(-0.5, 1.5, memory.momentum_decay_raw.numel()))
    return memory


# ------------------------------------------------------------------------------------------------ references
def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def softplus(z: float) -> float:
    return math.log1p(math.exp(z))


def energy_of(memory: EBMMemory, x: torch.Tensor, theta: dict[str, torch.Tensor]) -> torch.Tensor:
    """Scalar ``E(x; θ)`` of one pattern ``x: [D]`` under one episode's fast weights ``θ``."""
    return memory.energy(x.view(1, 1, -1), {n: w.unsqueeze(0) for n, w in theta.items()}).reshape(())


def reference_step_sizes(memory: EBMMemory) -> tuple[list[float], list[float]]:
    """App. B.3: ``γ⁽¹⁾ = γ_max σ(a)``, ``γ⁽ᵏ⁾ = γ⁽ᵏ⁻¹⁾σ(η⁽ᵏ⁾)``; ``ψ`` alike with ``ψ⁽¹⁾ = σ(b)``."""
    gammas = [memory.config.read_step_max * sigmoid(memory.read_step_raw.item())]
    psis = [sigmoid(memory.momentum_raw.item())]
    for k in range(1, memory.config.read_steps):
        gammas.append(gammas[-1] * sigmoid(memory.read_decay_raw[k - 1].item()))
        psis.append(psis[-1] * sigmoid(memory.momentum_decay_raw[k - 1].item()))
    return gammas, psis


def reference_write(
    memory: EBMMemory, patterns: torch.Tensor, start: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Eq. 4 for each episode: ``θ ← θ − η_E ∇E − η_g α∇‖∇ₓE‖² − c·tanh(2η_β β / c)(θ − θ̄)`` for ``t = 1..T``.

    ``∇`` of the energy terms is averaged over the episode's ``N`` patterns; the prior pulls toward ``θ̄`` (the
    meta-learned initial weights), also when writing continues from ``start``, unless
    ``prior_anchor="previous"``: then toward ``start`` (the memory before this write).
    """
    cfg = memory.config
    theta_bar = {n: p.detach() for n, p in memory.energy.memory_parameters().items()}
    alpha, beta = softplus(memory.alpha_raw.item()), softplus(memory.beta_raw.item())
    cap = cfg.max_prior_step
    B, N = patterns.shape[:2]
    out = {n: [] for n in theta_bar}
    for b in range(B):
        theta = {n: (w if start is None else start[n][b]).detach().clone() for n, w in theta_bar.items()}
        anchor = dict(theta) if cfg.prior_anchor == "previous" else theta_bar
        for t in range(cfg.write_steps):
            grad_e = {n: torch.zeros_like(w) for n, w in theta.items()}
            grad_g = {n: torch.zeros_like(w) for n, w in theta.items()}
            for i in range(N):
                th = {n: w.clone().requires_grad_(True) for n, w in theta.items()}
                x = patterns[b, i].clone().requires_grad_(True)
                e = energy_of(memory, x, th)
                (gx,) = torch.autograd.grad(e, x, create_graph=True)
                ge = torch.autograd.grad(e, list(th.values()), retain_graph=True)
                gg = torch.autograd.grad(gx.pow(2).sum(), list(th.values()))
                for n, a, c in zip(th, ge, gg, strict=True):
                    grad_e[n] += a / N
                    grad_g[n] += c / N
            new = {}
            for n, w in theta.items():
                layer = memory.layer_names.index(n.rsplit(".", 1)[0])
                lr_e, lr_g, lr_p = (softplus(memory.write_lr_raw[t, layer, j].item()) for j in range(3))
                shrink = cap * math.tanh(2 * lr_p * beta / cap)
                step = lr_e * grad_e[n] + shrink * (w - anchor[n])
                if cfg.use_grad_norm_term:
                    step = step + lr_g * alpha * grad_g[n]
                new[n] = w - step
            theta = new
        for n, w in theta.items():
            out[n].append(w)
    return {n: torch.stack(ws) for n, ws in out.items()}


def reference_read(
    memory: EBMMemory, queries: torch.Tensor, fast: dict[str, torch.Tensor], known: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """App. B.1–B.2 for each query: returns iterates ``[K + 1, B, M, D]`` and their energies ``[K + 1, B, M]``.

    ``P(y)``: clip each coordinate to the data range, then reset known coordinates to the query.
    ``x⁽⁰⁾ = P(q)``, ``v⁽⁰⁾ = 0``; ``x̂ = P(x + ψ⁽ᵏ⁾v)``, ``v ← ψ⁽ᵏ⁾v − γ⁽ᵏ⁾∇ₓE(x̂)`` (zero on known
    coordinates), ``x ← P(x + v)``.
    """
    gammas, psis = reference_step_sizes(memory)
    B, M, D = queries.shape
    iterates = torch.zeros(memory.config.read_steps + 1, B, M, D, dtype=queries.dtype)
    energies = torch.zeros(memory.config.read_steps + 1, B, M, dtype=queries.dtype)
    for b in range(B):
        theta = {n: w[b].detach() for n, w in fast.items()}
        for m in range(M):
            q = queries[b, m]
            kn = [False] * D if known is None else [bool(v) for v in known[b, m]]

            def project(y, q=q, kn=kn):
                return torch.stack([q[d] if kn[d] else min(max(y[d], q.new_tensor(LO)), q.new_tensor(HI))
                                    for d in range(D)])  # fmt: skip

            x = project(q)
            v = torch.zeros(D, dtype=q.dtype)
            iterates[0, b, m] = x
            for k in range(memory.config.read_steps):
                x_hat = project(x + psis[k] * v).requires_grad_(True)
                (g,) = torch.autograd.grad(energy_of(memory, x_hat, theta), x_hat)
                g = torch.stack([g.new_tensor(0.0) if kn[d] else g[d] for d in range(D)])
                v = psis[k] * v - gammas[k] * g
                x = project(x + v)
                iterates[k + 1, b, m] = x
            for k in range(memory.config.read_steps + 1):
                energies[k, b, m] = energy_of(memory, iterates[k, b, m], theta).detach()
    return iterates, energies


def reference_stepwise_loss(patterns: torch.Tensor, iterates: torch.Tensor) -> float:
    """App. B.4: ``Σ_{k=1..K} mean_{b,m} Σ_d (x_d − x⁽ᵏ⁾_d)²`` (every iterate but ``x⁽⁰⁾``)."""
    K1, B, M, D = iterates.shape
    total = 0.0
    for k in range(1, K1):
        sq = 0.0
        for b in range(B):
            for m in range(M):
                sq += sum((patterns[b, m, d].item() - iterates[k, b, m, d].item()) ** 2 for d in range(D))
        total += sq / (B * M)
    return total


def uniform(*shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return LO + (HI - LO) * torch.rand(*shape, generator=g, dtype=torch.float64)


def perturbed_state(memory: EBMMemory, B: int, scale: float, seed: int) -> MemoryState:
    """Fast weights ``θ̄ + noise`` for ``B`` episodes: a written-looking state that is not ``θ̄``."""
    g = torch.Generator().manual_seed(seed)
    fast = {
        n: p.detach().unsqueeze(0) + scale * torch.randn(B, *p.shape, generator=g, dtype=p.dtype)
        for n, p in memory.energy.memory_parameters().items()
    }
    return MemoryState(fast, torch.full((B,), 5, dtype=torch.long))


def assert_fast_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for n in expected:
        torch.testing.assert_close(actual[n], expected[n], **TOL)


# ------------------------------------------------------------------------------------------------ write rule
@pytest.mark.parametrize("energy", ["mlp", "two_layers"])
@pytest.mark.parametrize("create_graph", [False, True])
def test_write_matches_the_reference_for_every_step_layer_and_term(energy, create_graph):
    memory = make_memory(energy)
    patterns = uniform(2, 3, 4, seed=1)
    state = memory.write(patterns, create_graph=create_graph)
    expected = reference_write(memory, patterns)
    assert_fast_close({n: w.detach() for n, w in state.fast_weights.items()}, expected)
    assert state.num_written.tolist() == [3, 3]
    # the scenario can tell the rules apart: the rates differ across steps, layers and terms
    lrs = memory.write_lrs.detach()
    assert (lrs[0] - lrs[1]).abs().min() > 1e-3 and (lrs[..., 0] - lrs[..., 1]).abs().min() > 1e-3
    if energy == "two_layers":
        assert (lrs[:, 0] - lrs[:, 1]).abs().min() > 1e-3


def test_write_without_the_grad_norm_term_matches_the_reference():
    memory = make_memory(use_grad_norm_term=False)
    patterns = uniform(2, 3, 4, seed=2)
    with torch.no_grad():
        state = memory.write(patterns)
    assert_fast_close(state.fast_weights, reference_write(memory, patterns))


def test_write_prior_cap_saturates_like_the_reference():
    """A large ``β`` drives ``2η_ββ`` far past the cap: the shrink factor is ``c·tanh(2η_ββ/c) ≈ c``."""
    memory = make_memory(max_prior_step=0.3)
    with torch.no_grad():
        memory.beta_raw.fill_(6.0)
        memory.write_lr_raw[..., 2].fill_(1.0)
    patterns = uniform(2, 3, 4, seed=3)
    with torch.no_grad():
        state = memory.write(patterns)
    assert_fast_close(state.fast_weights, reference_write(memory, patterns))


def test_writing_continues_from_a_given_state_with_the_prior_toward_theta_bar():
    memory = make_memory()
    start = perturbed_state(memory, 2, scale=0.3, seed=4)
    patterns = uniform(2, 3, 4, seed=5)
    with torch.no_grad():
        state = memory.write(patterns, start)
    assert_fast_close(state.fast_weights, reference_write(memory, patterns, start.fast_weights))
    assert state.num_written.tolist() == [8, 8]
    # starting elsewhere matters here: the result is not the write from θ̄
    fresh = reference_write(memory, patterns)
    assert not torch.allclose(state.fast_weights["memory.weight"], fresh["memory.weight"], atol=1e-6)


def test_write_chunked_continues_chunk_by_chunk_like_the_reference():
    memory = make_memory(write_steps=2)
    patterns = uniform(2, 5, 4, seed=6)
    with torch.no_grad():
        state = memory.write_chunked(patterns, chunk_size=2)
    expected = None
    for s in range(0, 5, 2):
        expected = reference_write(memory, patterns[:, s : s + 2], expected)
    assert_fast_close(state.fast_weights, expected)
    assert state.num_written.tolist() == [5, 5]


@pytest.mark.parametrize("anchor", ["initial", "previous"])
def test_prior_anchor_of_chunked_writing(anchor):
    """``prior_anchor="previous"`` pulls each chunk toward the memory before it; from ``θ̄`` both anchors agree."""
    memory = make_memory(prior_anchor=anchor)
    start = perturbed_state(memory, 2, scale=0.3, seed=4)
    patterns = uniform(2, 3, 4, seed=5)
    with torch.no_grad():
        continued = memory.write(patterns, start)
        fresh = memory.write(patterns)
    assert_fast_close(continued.fast_weights, reference_write(memory, patterns, start.fast_weights))
    assert_fast_close(fresh.fast_weights, reference_write(make_memory(prior_anchor="initial"), patterns))
    with torch.no_grad():
        chunked = memory.write_chunked(patterns, chunk_size=2)
    expected = reference_write(memory, patterns[:, 2:], reference_write(memory, patterns[:, :2]))
    assert_fast_close(chunked.fast_weights, expected)


# ------------------------------------------------------------------------------------------------- read rule
def test_read_step_sizes_and_momenta_follow_app_b3():
    memory = make_memory()
    gammas, psis = reference_step_sizes(memory)
    torch.testing.assert_close(memory.read_step_sizes.detach(), torch.tensor(gammas, dtype=torch.float64), **TOL)
    torch.testing.assert_close(memory.momenta.detach(), torch.tensor(psis, dtype=torch.float64), **TOL)
    assert len(set(round(g, 6) for g in gammas)) == len(gammas) and len(set(round(p, 6) for p in psis)) == len(psis)


@pytest.mark.parametrize("with_known", [False, True])
@pytest.mark.parametrize("create_graph", [False, True])
def test_read_matches_the_reference(with_known, create_graph):
    memory = make_memory()
    state = perturbed_state(memory, 2, scale=0.5, seed=7)  # not θ̄: the read must use the written state
    queries = uniform(2, 3, 4, seed=8)
    known = (torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(9)) < 0.4) if with_known else None
    result = memory.read(queries, state, known, create_graph=create_graph, compute_energies=True)
    iterates, energies = reference_read(memory, queries, state.fast_weights, known)
    torch.testing.assert_close(result.iterates.detach(), iterates, **TOL)
    torch.testing.assert_close(result.energies.detach(), energies, **TOL)
    # the scenario exercises the projection: some free coordinates are clipped, most are not
    free = torch.ones_like(queries, dtype=torch.bool) if known is None else ~known
    at_bound = (iterates[1:].abs() == 1.0) & free
    assert 0 < int(at_bound.sum()) < int(free.sum()) * memory.config.read_steps
    if known is not None:
        assert torch.equal(iterates[:, known], queries[known].expand(iterates.shape[0], -1))


def test_read_projects_the_query_first_and_keeps_known_values_exactly():
    """``x⁽⁰⁾ = P(q)``: a free coordinate a hair outside the range is clipped, a known one keeps the query value.

    (Inputs within ``1e-5`` of the range pass the input check.) Known coordinates get zero gradient, so clamping
    them only shows where ``P`` itself would move them: here.
    """
    memory = make_memory(read_steps=2)
    state = perturbed_state(memory, 1, scale=0.5, seed=10)
    queries = uniform(1, 2, 4, seed=11)
    queries[0, 0, 0] = HI + 1e-6  # free
    queries[0, 1, 1] = LO - 1e-6  # known
    known = torch.zeros(1, 2, 4, dtype=torch.bool)
    known[0, 1, 1] = True
    with torch.no_grad():
        result = memory.read(queries, state, known)
    iterates, _ = reference_read(memory, queries, state.fast_weights, known)
    torch.testing.assert_close(result.iterates, iterates, **TOL)
    assert result.iterates[0, 0, 0, 0] == HI and (result.iterates[:, 0, 1, 1] == LO - 1e-6).all()


# --------------------------------------------------------------------------------------------- step-wise loss
def test_meta_loss_sums_the_error_of_every_iterate():
    memory = make_memory()
    patterns = uniform(2, 3, 4, seed=12)
    queries = uniform(2, 3, 4, seed=13)
    state = perturbed_state(memory, 2, scale=0.5, seed=14)
    result = memory.read(queries, state, create_graph=True)
    loss, errors = memory.meta_loss(patterns, result)
    iterates, _ = reference_read(memory, queries, state.fast_weights, None)
    assert loss.item() == pytest.approx(reference_stepwise_loss(patterns, iterates), rel=1e-9)
    per_step = [reference_stepwise_loss(patterns, iterates[[0, k]]) for k in range(1, iterates.shape[0])]
    torch.testing.assert_close(errors, torch.tensor(per_step, dtype=torch.float64), **TOL)
    assert loss.requires_grad and min(per_step) > 1e-3  # every iterate contributes


@pytest.mark.parametrize("chunk_size", [0, 2])
def test_forward_is_write_then_read_then_stepwise_loss(chunk_size):
    memory = make_memory(write_steps=2, read_steps=3, chunk_size=chunk_size)
    patterns = uniform(2, 3, 4, seed=15)
    queries = uniform(2, 3, 4, seed=16)
    known = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(17)) < 0.4
    out = memory(patterns, queries, known)
    if chunk_size:
        fast = reference_write(memory, patterns[:, :2])
        fast = reference_write(memory, patterns[:, 2:], fast)
    else:
        fast = reference_write(memory, patterns)
    iterates, _ = reference_read(memory, queries, fast, known)
    torch.testing.assert_close(out.read.iterates.detach(), iterates, **TOL)
    assert out.loss.item() == pytest.approx(reference_stepwise_loss(patterns, iterates), rel=1e-9)

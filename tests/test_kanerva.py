"""The Dynamic Kanerva Machine: its posterior update, addressing, sequential writes, ELBO terms and reading."""

from __future__ import annotations

import pytest
import torch

from ebmm_rl.baselines import DKMConfig, DynamicKanervaMachine
from ebmm_rl.baselines.kanerva import posterior_update, slots_for_budget, solve_addresses
from ebmm_rl.binary import sample_patterns
from ebmm_rl.protocol import build_memory


def tiny_dkm(**overrides) -> DynamicKanervaMachine:
    torch.manual_seed(0)
    config = {"data_shape": (6,), "code_size": 2, "slots": 3, "read_steps": 2, **overrides}
    return DynamicKanervaMachine(DKMConfig(**config))


def information_form(mean, cov, addresses, codes, noise_var):
    """Gaussian conditioning in information form, one column of M at a time (independent of the Kalman gain).

    Each of the ``C`` columns ``m`` of ``M`` is ``N(r, U)`` a priori (``V = I``), and observation ``t`` is
    ``z_t = wₜᵀm + ξ``; the posterior precision is ``U⁻¹ + Σ wₜwₜᵀ/σ²`` and its mean ``Σ'(U⁻¹r + Σ wₜ zₜ/σ²)``.
    """
    precision = torch.linalg.inv(cov) + addresses.T @ addresses / noise_var  # [K, K]
    post_cov = torch.linalg.inv(precision)
    post_mean = post_cov @ (torch.linalg.inv(cov) @ mean + addresses.T @ codes / noise_var)  # [K, C]
    return post_mean, post_cov


def test_posterior_update_matches_the_hand_computed_update():
    # K = 2 slots, C = 1: R = (1, 2)ᵀ, U = I, σ² = 1.
    mean, cov = torch.tensor([[[1.0], [2.0]]]), torch.eye(2).unsqueeze(0)
    # write z = 6 at w = (1, 1): u = (1, 1), s = 2 + 1 = 3, z − Rᵀw = 3 -> R = (2, 3), U = I − [[1, 1], [1, 1]]/3
    mean, cov, s = posterior_update(mean, cov, torch.tensor([[1.0, 1.0]]), torch.tensor([[6.0]]), 1.0)
    torch.testing.assert_close(s, torch.tensor([3.0]))
    torch.testing.assert_close(mean, torch.tensor([[[2.0], [3.0]]]))
    torch.testing.assert_close(cov, torch.tensor([[[2 / 3, -1 / 3], [-1 / 3, 2 / 3]]]))
    # then z = 0 at w = (1, 0): u = (2/3, −1/3), s = 5/3, z − Rᵀw = −2 -> R = (2 − 4/5, 3 + 2/5)
    mean, cov, s = posterior_update(mean, cov, torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0]]), 1.0)
    torch.testing.assert_close(s, torch.tensor([5 / 3]))
    torch.testing.assert_close(mean, torch.tensor([[[1.2], [3.4]]]))
    # U = (I + w₁w₁ᵀ + w₂w₂ᵀ)⁻¹ = [[3, 1], [1, 2]]⁻¹ = [[2, −1], [−1, 3]] / 5
    torch.testing.assert_close(cov, torch.tensor([[[0.4, -0.2], [-0.2, 0.6]]]))


def test_sequential_updates_equal_gaussian_conditioning_on_all_observations():
    g = torch.Generator().manual_seed(0)
    K, C, T, noise_var = 4, 3, 5, 0.3
    mean = torch.randn(K, C, generator=g, dtype=torch.float64)
    a = torch.randn(K, K, generator=g, dtype=torch.float64)
    cov = a @ a.T + 0.5 * torch.eye(K, dtype=torch.float64)
    addresses = torch.randn(T, K, generator=g, dtype=torch.float64)
    codes = torch.randn(T, C, generator=g, dtype=torch.float64)
    R, U, log_det = mean.unsqueeze(0), cov.unsqueeze(0), torch.logdet(cov)
    for t in range(T):
        R, U, s = posterior_update(R, U, addresses[t : t + 1], codes[t : t + 1], noise_var)
        log_det = log_det - torch.log(s / noise_var)[0]  # the determinant lemma, as the ELBO accumulates it
    want_mean, want_cov = information_form(mean, cov, addresses, codes, noise_var)
    torch.testing.assert_close(R[0], want_mean)
    torch.testing.assert_close(U[0], want_cov)
    torch.testing.assert_close(log_det, torch.logdet(want_cov))


def test_addresses_are_the_ridge_least_squares_solution():
    # R = diag(1, 2), z = (1, 1), σ² = 1: (R Rᵀ + I)⁻¹ R z = diag(2, 5)⁻¹ (1, 2) = (0.5, 0.4)
    mean = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    w = solve_addresses(torch.tensor([[[1.0, 1.0]]]), mean, 1.0)
    torch.testing.assert_close(w, torch.tensor([[[0.5, 0.4]]]))
    # it minimises ‖z − Rᵀw‖² + σ²‖w‖²: the gradient vanishes there (random K > C case)
    g = torch.Generator().manual_seed(1)
    mean, z = torch.randn(1, 5, 3, generator=g), torch.randn(1, 2, 3, generator=g)
    w = solve_addresses(z, mean, 0.7).requires_grad_(True)
    objective = (z - w @ mean[0]).pow(2).sum() + 0.7 * w.pow(2).sum()
    (grad,) = torch.autograd.grad(objective, w)
    torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-4, rtol=0)


def test_write_addresses_each_pattern_against_the_memory_after_the_previous_ones():
    memory = tiny_dkm()
    patterns = sample_patterns(2, 4, 6, generator=torch.Generator().manual_seed(2))
    state = memory.write(patterns)
    codes = memory.encode(patterns)[0].detach().double()  # [B, N, C]
    prior_var = memory.log_prior_var.exp().item()
    for b in range(2):
        R, U = memory.prior_mean.detach().double(), prior_var * torch.eye(3, dtype=torch.float64)
        for t in range(4):  # address against the current mean, then condition on (w, z) in information form
            z = codes[b, t]
            w = torch.linalg.inv(R @ R.T + torch.eye(3, dtype=torch.float64)) @ R @ z
            R, U = information_form(R, U, w.unsqueeze(0), z.unsqueeze(0), 1.0)
        torch.testing.assert_close(state.mean[b].double(), R, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(state.cov[b].double(), U, rtol=1e-4, atol=1e-5)
    assert state.num_written == 4


def test_written_codes_are_read_back_when_the_memory_has_room():
    # 3 codes of 6 into K = 3 slots, little observation noise: reading a stored code returns it, though the
    # prior's 3 rows cannot express a random 6-d code
    memory = tiny_dkm(code_size=6, slots=3, obs_noise_std=1e-2)
    with torch.no_grad():
        memory.log_prior_var.fill_(2.0)
        codes = torch.randn(2, 3, 6, generator=torch.Generator().manual_seed(3))
        state, _ = memory._write_codes(codes, memory.prior(2), None)
        read = solve_addresses(codes, state.mean, memory.noise_var) @ state.mean
    torch.testing.assert_close(read, codes, atol=2e-3, rtol=0)
    prior_read = solve_addresses(codes, memory.prior(2).mean, memory.noise_var) @ memory.prior(2).mean
    assert (prior_read - codes).abs().max() > 0.1  # the prior alone does not hold them


def test_read_iterates_address_the_written_mean_and_feed_back():
    memory = tiny_dkm().eval()
    patterns = sample_patterns(2, 3, 6, generator=torch.Generator().manual_seed(4))
    queries, known = patterns.clone(), torch.ones_like(patterns, dtype=torch.bool)
    queries[..., :3], known[..., :3] = 0.0, False
    with torch.no_grad():
        state = memory.write(patterns)
        result = memory.read(queries, state, known)
        x = queries.clone()  # unknown entries at the middle of the range, 0
        for k in range(2):
            e = memory.posterior(torch.tanh(memory.codec.encode(x)))[..., :2]  # μ(x)
            w = torch.linalg.solve(state.mean @ state.mean.transpose(1, 2) + torch.eye(3), state.mean @ e.mT).mT
            x = torch.tanh(memory.decode(w @ state.mean) / 2).clamp(-1, 1)  # Bernoulli mean on ±1 patterns
            x = torch.where(known, queries, x)
            torch.testing.assert_close(result.iterates[k + 1], x)
    assert result.iterates.shape == (3, 2, 3, 6)


def test_elbo_terms_match_closed_forms():
    memory = tiny_dkm(obs_noise_std=0.8)
    with torch.no_grad():
        memory.log_prior_var.fill_(0.3)
        memory.log_w_std.fill_(-0.5)
    patterns = sample_patterns(2, 4, 6, generator=torch.Generator().manual_seed(5))
    terms, state = memory.elbo_terms(patterns)
    R, U = state.mean.detach().double(), state.cov.detach().double()
    mu, logvar = (t.detach().double() for t in memory.encode(patterns))
    var, N = 0.64, 4
    prior = torch.distributions.MultivariateNormal(
        memory.prior_mean.detach().double().T.reshape(-1), memory.log_prior_var.exp().item() * torch.eye(6).double()
    )
    for b in range(2):  # vec(M) column by column: N(vec R, I_C ⊗ U)
        posterior = torch.distributions.MultivariateNormal(R[b].T.reshape(-1), torch.block_diag(U[b], U[b]))
        kl = torch.distributions.kl_divergence(posterior, prior)
        torch.testing.assert_close(terms["kl_memory"][b].double() * N, kl, rtol=1e-4, atol=1e-4)
    w = torch.linalg.solve(R @ R.mT + var * torch.eye(3).double(), R @ mu.mT).mT  # [B, N, K]
    q_w = torch.distributions.Normal(w, torch.exp(torch.tensor(-0.5)).double())
    kl_w = torch.distributions.kl_divergence(q_w, torch.distributions.Normal(0.0, 1.0)).sum(-1).mean(1)
    torch.testing.assert_close(terms["kl_w"].double(), kl_w, rtol=1e-4, atol=1e-5)
    # KL(q(z|x) ‖ N(Mᵀw, σ²)) averaged over samples of M ~ MN(R, U, I), against the closed form's expectation
    g = torch.Generator().manual_seed(6)
    L = torch.linalg.cholesky(U)  # [B, K, K]
    samples = R.unsqueeze(1) + L.unsqueeze(1) @ torch.randn(2, 20000, 3, 2, generator=g, dtype=torch.float64)
    means = torch.einsum("bnk,bskc->bsnc", w, samples)  # [B, S, N, C]
    q_z = torch.distributions.Normal(mu.unsqueeze(1), (0.5 * logvar).exp().unsqueeze(1))
    kl_z = torch.distributions.kl_divergence(q_z, torch.distributions.Normal(means, 0.8)).sum(-1).mean((1, 2))
    torch.testing.assert_close(terms["kl_z"].double(), kl_z, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("noise_std", [1.0, 0.0])  # fixed σ_ξ, and learned
def test_meta_gradients_reach_every_parameter_and_training_ignores_the_queries(noise_std):
    memory = tiny_dkm(obs_noise_std=noise_std)
    assert hasattr(memory, "log_noise_std") == (noise_std == 0)
    patterns = sample_patterns(2, 4, 6, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(0)
    out = memory(patterns, -patterns)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in memory.parameters())
    torch.manual_seed(0)
    torch.testing.assert_close(memory(patterns, patterns).loss, out.loss)  # the loss is the ELBO of the patterns
    assert memory.train()(patterns, patterns).read.iterates.shape[0] == 2  # one read step when training
    assert memory.eval()(patterns, patterns).read.iterates.shape[0] == 3  # all read steps when evaluating


def test_slots_fill_the_budget_with_the_mean_and_the_symmetric_covariance():
    for budget, code, slots in [(8256, 128, 53), (136, 16, 6), (4624, 100, 38), (2312, 100, 20), (9248, 100, 68)]:
        k = slots_for_budget(budget, code)
        assert k == slots and k * code + k * (k + 1) // 2 <= budget < (k + 1) * code + (k + 1) * (k + 2) // 2
    memory = build_memory("dkm", budget=4624, data_shape=(1, 8, 8), data_range=(0.0, 1.0), channels=4)
    assert (memory.config.latent_size, memory.config.num_slots, memory.memory_size) == (100, 38, 4541)
    with pytest.raises(ValueError, match="budget"):
        build_memory("dkm", dim=16, budget=136, slots=7)  # 7 · 16 + 28 = 140 floats
    with pytest.raises(ValueError, match="no memory row"):
        build_memory("dkm", dim=16, budget=10)
    with pytest.raises(ValueError, match="obs_noise_std"):
        build_memory("dkm", dim=16, budget=136, obs_noise_std=-1.0)

"""Dynamic Kanerva Machine (Wu, Wayne, Gregor & Lillicrap, 2018): a VAE around a linear Gaussian memory.

The paper compares it with EBMM on Omniglot in its App. A.4 (Fig. 7).

**Memory.** A ``K × C`` matrix ``M`` with the matrix-normal distribution ``MN(R, U, I)``: mean ``R [K, C]`` (one
row per slot, ``C`` the code size), row covariance ``U [K, K]``, column covariance the identity. A fresh memory
is the learned prior ``MN(R₀, σ₀²I, I)``.

**Generative model of an episode.** ``w_t ~ N(0, I_K)``, ``z_t ~ N(Mᵀw_t, σ_ξ²I_C)``, ``x_t ~ p(x | z_t)``
(Bernoulli on ``(x − lo)/(hi − lo)``, the decoder's logits).

**Writing** (the analytic posterior, a Kalman filter): each pattern's code ``z_t = μ(x_t)`` (the mean of the
encoder's ``q(z | x)``), in order, is addressed against the current memory mean by the posterior mean of ``w``
(:func:`solve_addresses`: ``w = (R Rᵀ + σ_ξ² I)⁻¹ R z``, the least-squares read ``argmin ‖z − Rᵀw‖²`` with the
ridge ``σ_ξ²/σ_w²`` of its prior) and conditioned into the memory (:func:`posterior_update`)::

    u = U w,  s = wᵀU w + σ_ξ²,  R ← R + u (z − Rᵀw)ᵀ / s,  U ← U − u uᵀ / s

**Reading** (dynamic addressing by iterative reading): from the (masked) query, ``read_steps`` times: encode
``z = μ(x)``, address ``w`` against the written mean ``R``, read ``Rᵀw``, decode ``x`` (the Bernoulli means);
each read feeds the next.

**Training**: the negative ELBO of the clean episode per pattern, ``E log p(x_t | z_t)`` with ``z_t ~ q(z | x_t)``,
``KL(q(z_t | x_t) ‖ p(z_t | w_t, M))`` (in expectation over ``M ~ q(M | X)``, the posterior of the whole episode,
and at the address ``w_t`` of ``μ(x_t)`` in it), ``KL(q(w_t) ‖ N(0, I))`` with ``q(w_t) = N(w_t, σ_w²I)``, and the
memory's ``KL(q(M | X) ‖ p(M))`` divided by ``N``. It never sees the distorted queries (the paper, App. A.1: "trained
simply to maximize the data likelihood"); the read of the queries only reports errors.

Choices where the papers leave room (after the authors' public memory module, read for its conventions):

* Patterns are written one at a time, each addressed against the memory as it is after the previous ones, as in
  the DKM's sequential update; a chunked write therefore equals a whole write. Codes are written as the encoder's
  means, not samples, so a written state is deterministic.
* ``σ_ξ`` is fixed (``obs_noise_std``, 1 as in the authors' module; 0 learns it), ``σ_w`` of the prior is 1;
  ``R₀``, the prior variance ``σ₀²`` and the posterior std ``σ_w`` of ``q(w)`` (start 0.3) are learned.
* The memory KL is the exact matrix-normal KL (the authors' module keeps the diagonal of ``U`` only); its
  ``log det U`` comes from the determinant lemma along the writes (``log det U`` falls by ``log(s/σ_ξ²)`` per
  write), which stays finite where a Cholesky factor of a nearly singular ``U`` would not.
* The encoder and decoder are the shared :class:`~ebmm_rl.baselines.codec.Codec` with ``tanh`` + linear maps to
  the Gaussian code ``(μ, log σ²)`` and back, as in :class:`~ebmm_rl.baselines.VariationalAutoencoder`.
* Reading uses the means (of ``M``, ``w`` and the decoder), so a read is deterministic; each read feeds the
  decoder's Bernoulli means back to the encoder.

Memory size: what a written state holds per episode, counted as ``docs/baselines.md`` counts the others (free
values of a symmetric matrix, as for the Hopfield weights and the plasticity trace): the mean ``K·C`` and the
symmetric row covariance ``K(K + 1)/2``. ``K`` is the largest that fits the budget: at ``D = 128``, ``C = 128`` and
8256 floats, ``K = 53`` (``6784 + 1431 = 8215`` floats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmm_rl.baselines.base import (
    BaselineConfig,
    BaselineMemory,
    check_pattern_mask,
    count_written,
    keep_unmasked,
)
from ebmm_rl.baselines.codec import Codec, default_feature_size
from ebmm_rl.memory import MetaOutput, ReadResult

IMAGE_CODE_SIZE = 100
"""Code size ``C`` on images: the DKM's Omniglot memory (32 slots × 100)."""


def slots_for_budget(budget: int, code_size: int) -> int:
    """The most slots ``K`` with ``K·C + K(K + 1)/2 ≤ budget`` (0 when not even one fits)."""
    b = 2 * code_size + 1
    k = int((-b + math.sqrt(b * b + 8 * budget)) / 2)
    while k > 0 and k * code_size + k * (k + 1) // 2 > budget:  # float rounding of the square root
        k -= 1
    while (k + 1) * code_size + (k + 1) * (k + 2) // 2 <= budget:
        k += 1
    return k


@dataclass(frozen=True)
class DKMConfig(BaselineConfig):
    """Dynamic Kanerva Machine settings.

    Attributes:
        code_size: ``C``, the latent code and memory word size; 0 means ``D`` for vectors, 100 for images.
        slots: ``K``, memory rows; 0 means the most that fit the budget.
        hidden_size: encoder/decoder feature size ``F`` around the code; 0 means ``D`` for vectors, 256 for images.
        read_steps: iterative reads (each one encodes, addresses, reads and decodes).
        obs_noise_std: ``σ_ξ``, the std of ``z`` around ``Mᵀw``, fixed; 0 learns it (starting at 1), as the authors'
            module allows.
    """

    code_size: int = 0
    slots: int = 0
    hidden_size: int = 0
    read_steps: int = 5
    obs_noise_std: float = 1.0

    @property
    def latent_size(self) -> int:
        """``C``."""
        if self.code_size:
            return self.code_size
        return self.data_shape[0] if len(self.data_shape) == 1 else IMAGE_CODE_SIZE

    @property
    def num_slots(self) -> int:
        """``K``."""
        return self.slots or slots_for_budget(self.budget, self.latent_size)

    @property
    def feature_size(self) -> int:
        """``F``."""
        return self.hidden_size or default_feature_size(self.data_shape)


@dataclass
class DKMState:
    """``B`` memory distributions ``MN(R, U, I)``.

    Attributes:
        mean: ``R [B, K, C]``.
        cov: ``U [B, K, K]``, symmetric.
        num_written: patterns written so far per episode (an ``int`` for all, a ``[B]`` tensor after masked writes).
    """

    mean: Tensor
    cov: Tensor
    num_written: int | Tensor = 0

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self.mean.shape[0]

    def detach(self) -> DKMState:
        """A copy cut from the autograd graph."""
        return DKMState(self.mean.detach(), self.cov.detach(), self.num_written)


def solve_addresses(codes: Tensor, mean: Tensor, noise_var: float | Tensor) -> Tensor:
    """Posterior mean of the addresses: ``w = (R Rᵀ + σ_ξ² I)⁻¹ R z`` (the ridge solution of ``min ‖z − Rᵀw‖²``).

    Args:
        codes: ``z [B, N, C]``.
        mean: the memory mean ``R [B, K, C]``.
        noise_var: ``σ_ξ²`` (the ridge ``σ_ξ²/σ_w²`` with the prior's ``σ_w = 1``).

    Returns:
        ``w [B, N, K]``.
    """
    K = mean.shape[1]
    gram = mean @ mean.transpose(1, 2) + noise_var * torch.eye(K, dtype=mean.dtype, device=mean.device)  # [B, K, K]
    return torch.linalg.solve(gram, mean @ codes.transpose(1, 2)).transpose(1, 2)  # [B, N, K]


def posterior_update(
    mean: Tensor, cov: Tensor, address: Tensor, code: Tensor, noise_var: float | Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Condition ``MN(R, U, I)`` on one observation ``z = Mᵀw + ξ``, ``ξ ~ N(0, σ_ξ²I)`` (a Kalman update).

    Args:
        mean: ``R [B, K, C]``.
        cov: ``U [B, K, K]``, symmetric.
        address: ``w [B, K]``.
        code: ``z [B, C]``.
        noise_var: ``σ_ξ²``.

    Returns:
        ``(R', U', s)``: ``R + u (z − Rᵀw)ᵀ / s``, ``U − u uᵀ / s`` with ``u = U w`` and the predictive variance
        ``s = wᵀU w + σ_ξ² [B]`` (``log det U' = log det U − log(s / σ_ξ²)``).
    """
    u = (cov @ address.unsqueeze(2)).squeeze(2)  # [B, K]
    s = (u * address).sum(dim=1) + noise_var  # [B]
    delta = code - (address.unsqueeze(1) @ mean).squeeze(1)  # [B, C]
    gain = u / s.unsqueeze(1)  # [B, K]
    new_mean = mean + gain.unsqueeze(2) * delta.unsqueeze(1)  # [B, K, C]
    new_cov = cov - (u.unsqueeze(2) * u.unsqueeze(1)) / s.view(-1, 1, 1)  # [B, K, K], exactly symmetric
    return new_mean, new_cov, s


class DynamicKanervaMachine(BaselineMemory):
    """VAE codes written into a Bayesian linear memory, read by iterative addressing.

    Args:
        config: sizes; ``K`` follows from ``config.budget`` unless ``config.slots`` is set.
    """

    def __init__(self, config: DKMConfig = DKMConfig()) -> None:
        super().__init__()
        if config.code_size < 0 or config.slots < 0 or config.hidden_size < 0:
            raise ValueError("DKMConfig: code_size, slots and hidden_size must be >= 0 (0: the default)")
        if config.num_slots < 1:
            raise ValueError(
                f"budget {config.budget} holds no memory row of {config.latent_size} floats plus its covariance; "
                "raise the budget or lower code_size"
            )
        if config.read_steps < 1 or not config.obs_noise_std >= 0:
            raise ValueError(
                f"DKMConfig: need read_steps >= 1 and obs_noise_std >= 0 (0: learned), got {config.read_steps} and "
                f"{config.obs_noise_std}"
            )
        self.config = config
        c, k, f = config.latent_size, config.num_slots, config.feature_size
        self.codec = Codec(config.data_shape, f, config.channels)
        self.posterior = nn.Linear(f, 2 * c)  # μ and log σ² of q(z | x)
        self.latent_out = nn.Linear(c, f)
        self.prior_mean = nn.Parameter(torch.randn(k, c))  # R₀
        self.log_prior_var = nn.Parameter(torch.zeros(()))  # log σ₀²
        self.log_w_std = nn.Parameter(torch.tensor(math.log(0.3)))  # log σ_w of q(w)
        if config.obs_noise_std == 0:
            self.log_noise_std = nn.Parameter(torch.zeros(()))  # log σ_ξ, learned

    @property
    def memory_size(self) -> int:
        """``K·C + K(K + 1)/2`` floats: the mean and the symmetric row covariance."""
        k = self.config.num_slots
        return k * self.config.latent_size + k * (k + 1) // 2

    @property
    def noise_var(self) -> float | Tensor:
        """``σ_ξ²`` (a 0-dim tensor when learned)."""
        if self.config.obs_noise_std == 0:
            return (2 * self.log_noise_std).exp()
        return self.config.obs_noise_std**2

    # ------------------------------------------------------------------------------------------------ model
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, M, D...] -> (μ, log σ²)`` of ``q(z | x)``, each ``[B, M, C]``."""
        return self.posterior(torch.tanh(self.codec.encode(x))).chunk(2, dim=-1)

    def decode(self, z: Tensor) -> Tensor:
        """``[B, M, C] -> [B, M, D...]`` Bernoulli logits."""
        return self.codec.decode(torch.tanh(self.latent_out(z)))

    def bernoulli_targets(self, x: Tensor) -> Tensor:
        """``(x − lo)/(hi − lo)``, in ``[0, 1]``."""
        lo, hi = self.config.data_range
        return (x - lo) / (hi - lo)

    def prior(self, batch_size: int) -> DKMState:
        """``batch_size`` fresh memories ``MN(R₀, σ₀²I, I)``."""
        k = self.config.num_slots
        mean = self.prior_mean.unsqueeze(0).expand(batch_size, -1, -1)
        eye = torch.eye(k, dtype=mean.dtype, device=mean.device)
        return DKMState(mean, (self.log_prior_var.exp() * eye).expand(batch_size, k, k), 0)

    # ---------------------------------------------------------------------------------------------- writing
    def write(self, patterns: Tensor, state: DKMState | None = None, pattern_mask: Tensor | None = None) -> DKMState:
        """Condition the memory on the codes of ``patterns [B, N, D...]``, one pattern after the other.

        Args:
            patterns: ``[B, N, D...]``.
            state: the memory to continue (``None``: the prior).
            pattern_mask: optional ``[B, N]`` bool, False = padding: that step leaves the episode's memory as it was.

        Returns:
            The posterior :class:`DKMState`.
        """
        self.check(patterns, "patterns")
        pattern_mask = check_pattern_mask(pattern_mask, patterns)
        B = patterns.shape[0]
        if state is not None and state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} episodes but patterns have B={B}; they must match")
        codes = self.encode(patterns)[0]  # [B, N, C]
        return self._write_codes(codes, self.prior(B) if state is None else state, pattern_mask)[0]

    def _write_codes(self, codes: Tensor, state: DKMState, pattern_mask: Tensor | None) -> tuple[DKMState, Tensor]:
        """Write ``codes [B, N, C]`` in order; returns the new state and the change of ``log det U`` (``[B]``)."""
        mean, cov = state.mean, state.cov
        log_det_change = codes.new_zeros(codes.shape[0])
        for t in range(codes.shape[1]):
            w = solve_addresses(codes[:, t : t + 1], mean, self.noise_var)[:, 0]  # [B, K]
            new_mean, new_cov, s = posterior_update(mean, cov, w, codes[:, t], self.noise_var)
            change = torch.log(self.noise_var / s)  # [B]
            if pattern_mask is not None:
                real = pattern_mask[:, t]
                new_mean, new_cov = keep_unmasked(real, new_mean, mean), keep_unmasked(real, new_cov, cov)
                change = torch.where(real, change, torch.zeros_like(change))
            mean, cov, log_det_change = new_mean, new_cov, log_det_change + change
        written = count_written(state.num_written, pattern_mask, codes.shape[1])
        return DKMState(mean, cov, written), log_det_change

    # ---------------------------------------------------------------------------------------------- reading
    def read(
        self, queries: Tensor, state: DKMState, known_mask: Tensor | None = None, steps: int | None = None
    ) -> ReadResult:
        """Iterative reading: ``iterates [K + 1, B, M, D...]`` (the projected query and each read).

        Args:
            queries: ``[B, M, D...]``.
            state: the written memory.
            known_mask: optional bool mask of known query entries (clamped).
            steps: reads ``K``; default ``config.read_steps``.
        """
        known_mask, x0 = self.start_read(queries, state.batch_size, known_mask)
        x, iterates = self.masked(queries, known_mask), [x0]
        for _ in range(self.config.read_steps if steps is None else steps):
            w = solve_addresses(self.encode(x)[0], state.mean, self.noise_var)  # [B, M, K]
            x = self.project(self.to_range(self.decode(w @ state.mean)), queries, known_mask)
            iterates.append(x)
        return ReadResult(torch.stack(iterates))

    # --------------------------------------------------------------------------------------------- training
    def elbo_terms(self, patterns: Tensor) -> tuple[dict[str, Tensor], DKMState]:
        """The negative ELBO's terms per episode and pattern (each ``[B]``, nats), and the written memory.

        Keys: ``"nll"`` (``−E log p(x | z)``), ``"kl_z"``, ``"kl_w"``, ``"kl_memory"`` (already divided by ``N``).
        """
        self.check(patterns, "patterns")
        B, N = patterns.shape[:2]
        mu, logvar = self.encode(patterns)  # [B, N, C]
        state, log_det_change = self._write_codes(mu, self.prior(B), None)
        R, U, var = state.mean, state.cov, self.noise_var
        k, c = self.config.num_slots, self.config.latent_size
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        nll = F.binary_cross_entropy_with_logits(self.decode(z), self.bernoulli_targets(patterns), reduction="none")
        w = solve_addresses(mu, R, var)  # [B, N, K]
        read_var = ((w @ U) * w).sum(-1, keepdim=True)  # [B, N, 1]: wᵀU w, the read's variance per code unit
        log_var = torch.log(torch.as_tensor(var, dtype=mu.dtype, device=mu.device))
        kl_z = 0.5 * ((logvar.exp() + (mu - w @ R).pow(2) + read_var) / var - 1 - logvar + log_var).sum(-1)
        w_var = (2 * self.log_w_std).exp()
        kl_w = 0.5 * (w_var + w.pow(2) - 1 - torch.log(w_var)).sum(-1)  # [B, N]
        prior_var, log_prior_var = self.log_prior_var.exp(), self.log_prior_var
        log_det = k * log_prior_var + log_det_change  # [B]
        trace = U.diagonal(dim1=1, dim2=2).sum(-1)  # [B]
        kl_memory = 0.5 * (
            c * trace / prior_var
            + (R - self.prior_mean).pow(2).sum((1, 2)) / prior_var
            - k * c
            + c * k * log_prior_var
            - c * log_det
        )
        terms = {
            "nll": nll.flatten(2).sum(-1).mean(1),
            "kl_z": kl_z.mean(1),
            "kl_w": kl_w.mean(1),
            "kl_memory": kl_memory / N,
        }
        return terms, state

    def forward(self, patterns: Tensor, queries: Tensor, known_mask: Tensor | None = None) -> MetaOutput:
        """Negative ELBO of the clean ``patterns`` per pattern (the loss), plus the read of ``queries`` (detached).

        The read does not enter the loss. In training mode it runs one read step, in eval mode (``MetaTrainer``'s
        evaluations) all ``read_steps``.

        Args:
            patterns: ``[B, N, D...]``.
            queries: ``[B, N, D...]`` distorted ``patterns`` (only read, not trained on).
            known_mask: optional bool mask of known query entries.
        """
        terms, state = self.elbo_terms(patterns)
        loss = sum(terms.values()).mean()
        with torch.no_grad():
            result = self.read(queries, state.detach(), known_mask, steps=1 if self.training else None)
        _, errors = self.meta_loss(patterns, result)
        return MetaOutput(loss, errors, result, state)

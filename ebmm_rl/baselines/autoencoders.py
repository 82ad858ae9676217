"""Non-memory baselines of the paper's App. A.3: a denoising auto-encoder and a VAE with attractor dynamics.

Neither writes anything: ``write`` returns a :class:`NoState` and the memory size is 0. They can only use a
prior learned over the data (none exists for random bits, App. A.3), so they bound what memory adds.

* :class:`DenoisingAutoencoder`: ``x ← P(dec(tanh(enc(x))))`` for ``read_steps`` iterations from the (masked)
  query, trained like EBMM with the step-wise reconstruction loss on distorted queries (the paper's eq. 2),
  with a bottleneck of 256 units.
* :class:`VariationalAutoencoder`: 256 Gaussian latents, Bernoulli likelihood on ``(x − lo)/(hi − lo)``, trained
  on clean patterns by the ELBO (it never sees distortions). Reading follows App. A.3 (after Wu et al., 2018)
  on the energy ``E(x, z) = ½‖z‖² − log p(x | z)``: ``z⁽⁰⁾ = μ(x̃)``, then ``z ← z − γ∇_z E(x, z)`` and
  ``x ← argmin_x E(x, z)``, which for a factorised Bernoulli is ``hi`` where the decoder's logit is positive and
  ``lo`` elsewhere; known entries stay clamped. The paper uses 50 iterations for Omniglot and grid-searches
  ``γ``; here ``read_steps = 50`` and ``read_lr = 0.1`` by default.

Both use the shared :class:`~ebmm_rl.baselines.codec.Codec` (ResNet encoder/decoder on images).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmm_rl.baselines.base import BaselineConfig, BaselineMemory, check_pattern_mask, count_written
from ebmm_rl.baselines.codec import Codec
from ebmm_rl.memory import MetaOutput, ReadResult


@dataclass
class NoState:
    """The "memory" of a non-memory model: only how many episodes and patterns it was given.

    Attributes:
        batch: ``B``, the number of episodes.
        num_written: patterns given to ``write`` so far per episode (and ignored); a ``[B]`` tensor after masked
            writes.
    """

    batch: int
    num_written: int | Tensor = 0

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self.batch

    def detach(self) -> NoState:
        """Itself (there is nothing to detach)."""
        return self


@dataclass(frozen=True)
class DAEConfig(BaselineConfig):
    """Denoising auto-encoder settings.

    Attributes:
        bottleneck: code size (paper: 256).
        read_steps: iterations of ``x ← P(dec(enc(x)))``.
    """

    bottleneck: int = 256
    read_steps: int = 5


@dataclass(frozen=True)
class VAEConfig(BaselineConfig):
    """VAE settings.

    Attributes:
        latent_size: Gaussian latents (paper: 256).
        hidden_size: encoder/decoder code size around the latents.
        read_steps: attractor iterations (paper: 50 on Omniglot, 100 CIFAR, 200 ImageNet).
        read_lr: ``γ`` of the latent gradient steps.
    """

    latent_size: int = 256
    hidden_size: int = 256
    read_steps: int = 50
    read_lr: float = 0.1


class _NonMemory(BaselineMemory):
    """``write`` stores nothing; memory size 0."""

    @property
    def memory_size(self) -> int:
        """0: nothing is written."""
        return 0

    def write(self, patterns: Tensor, state: NoState | None = None, pattern_mask: Tensor | None = None) -> NoState:
        """Check ``patterns [B, N, D...]`` and ``pattern_mask [B, N]`` (False = padding, not counted); store nothing."""
        self.check(patterns, "patterns")
        pattern_mask = check_pattern_mask(pattern_mask, patterns)
        B, N = patterns.shape[:2]
        if state is not None and state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} episodes but patterns have B={B}; they must match")
        return NoState(B, count_written(0 if state is None else state.num_written, pattern_mask, N))


class DenoisingAutoencoder(_NonMemory):
    """A denoising auto-encoder iterated as an attractor (App. A.3).

    Args:
        config: settings.
    """

    def __init__(self, config: DAEConfig = DAEConfig()) -> None:
        super().__init__()
        if config.read_steps < 1 or config.bottleneck < 1:
            raise ValueError("DAEConfig: need read_steps >= 1 and bottleneck >= 1")
        self.config = config
        self.codec = Codec(config.data_shape, config.bottleneck, config.channels)

    def read(self, queries: Tensor, state: NoState, known_mask: Tensor | None = None) -> ReadResult:
        """``read_steps`` iterations of ``x ← P(dec(tanh(enc(x))))``: ``iterates [K + 1, B, M, D...]``."""
        known_mask, x0 = self.start_read(queries, state.batch_size, known_mask)
        x, iterates = self.masked(queries, known_mask), [x0]
        for _ in range(self.config.read_steps):
            logits = self.codec.decode(torch.tanh(self.codec.encode(x)))
            x = self.project(self.to_range(logits), queries, known_mask)
            iterates.append(x)
        return ReadResult(torch.stack(iterates))


class VariationalAutoencoder(_NonMemory):
    """A VAE read by alternating latent gradient steps and exact Bernoulli maximisation (App. A.3).

    Args:
        config: settings.
    """

    def __init__(self, config: VAEConfig = VAEConfig()) -> None:
        super().__init__()
        if config.read_steps < 1 or config.latent_size < 1 or config.read_lr <= 0:
            raise ValueError("VAEConfig: need read_steps >= 1, latent_size >= 1 and read_lr > 0")
        self.config = config
        self.codec = Codec(config.data_shape, config.hidden_size, config.channels)
        self.posterior = nn.Linear(config.hidden_size, 2 * config.latent_size)  # μ and log σ²
        self.latent_out = nn.Linear(config.latent_size, config.hidden_size)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, M, D...] -> (μ, log σ²)``, each ``[B, M, latent]``."""
        return self.posterior(torch.tanh(self.codec.encode(x))).chunk(2, dim=-1)

    def decode(self, z: Tensor) -> Tensor:
        """``[B, M, latent] -> [B, M, D...]`` Bernoulli logits."""
        return self.codec.decode(torch.tanh(self.latent_out(z)))

    def bernoulli_targets(self, x: Tensor) -> Tensor:
        """``(x − lo)/(hi − lo)``, in ``[0, 1]``."""
        lo, hi = self.config.data_range
        return (x - lo) / (hi - lo)

    def energy(self, x: Tensor, z: Tensor) -> Tensor:
        """``E(x, z) = ½‖z‖² − log p(x | z)`` (up to a constant): ``[B, M]``."""
        nll = F.binary_cross_entropy_with_logits(self.decode(z), self.bernoulli_targets(x), reduction="none")
        return 0.5 * z.pow(2).sum(-1) + nll.flatten(2).sum(-1)

    def read(
        self, queries: Tensor, state: NoState, known_mask: Tensor | None = None, steps: int | None = None
    ) -> ReadResult:
        """Attractor dynamics from ``z = μ(x̃)``: ``iterates [K + 1, B, M, D...]`` (detached).

        Args:
            queries: ``[B, M, D...]``.
            state: the (empty) state.
            known_mask: optional bool mask of known query entries (clamped).
            steps: read steps ``K``; default ``config.read_steps``.
        """
        known_mask, x0 = self.start_read(queries, state.batch_size, known_mask)
        lo, hi = self.config.data_range
        x, iterates = x0.detach(), [x0.detach()]
        with torch.enable_grad():
            z = self.encode(self.masked(queries, known_mask))[0].detach()
            for _ in range(self.config.read_steps if steps is None else steps):
                z = z.requires_grad_(True)
                (grad,) = torch.autograd.grad(self.energy(x, z).sum(), z)
                z = (z - self.config.read_lr * grad).detach()
                with torch.no_grad():
                    mode = torch.where(self.decode(z) > 0, hi, lo).to(x.dtype)  # argmax_x p(x | z)
                    x = self.project(mode, queries, known_mask)
                iterates.append(x)
        return ReadResult(torch.stack(iterates))

    def forward(self, patterns: Tensor, queries: Tensor, known_mask: Tensor | None = None) -> MetaOutput:
        """Negative ELBO of the clean ``patterns`` (the loss), plus the attractor read of ``queries`` (detached).

        The read does not enter the loss; it only reports errors. In training mode it runs one read step (the
        full ``read_steps`` read made a meta-step ~29x slower for nothing the gradient uses), in eval mode
        (``MetaTrainer``'s evaluations) all ``read_steps``.

        Args:
            patterns: ``[B, N, D...]``.
            queries: ``[B, N, D...]`` distorted ``patterns`` (only read, not trained on).
            known_mask: optional bool mask of known query entries.
        """
        state = self.write(patterns)
        mu, logvar = self.encode(patterns)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        nll = F.binary_cross_entropy_with_logits(
            self.decode(z), self.bernoulli_targets(patterns), reduction="none"
        ).flatten(2)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)  # [B, N]
        loss = (nll.sum(-1) + kl).mean()
        result = self.read(queries, state, known_mask, steps=1 if self.training else None)
        _, errors = self.meta_loss(patterns, result)
        return MetaOutput(loss, errors, result, state)

"""Differentiable plasticity (Miconi, Clune & Stanley, 2018): a recurrent network with Hebbian fast weights.

``n`` neurons with activation ``x``; the effective recurrent weights are ``w + α ⊙ Hebb``, where ``w`` (fixed
weights) and ``α`` (plasticity coefficients) are meta-parameters and the Hebbian trace ``Hebb`` is the written
state::

    x_t    = tanh(enc(input_t) + (w + α ⊙ Hebb) x_{t−1})
    Hebb  ← (1 − η) Hebb + η · ½(x_t x_{t−1}ᵀ + x_{t−1} x_tᵀ),   diagonal kept at zero

Writing presents each pattern for ``present_steps`` steps, then zero input for ``gap_steps`` (Miconi et al.'s
pattern-memorisation task shows each pattern for several steps with zero-input gaps). Reading starts every
query from the written activation, presents the (masked) query for ``read_steps`` steps with the trace frozen,
and decodes each step's activation (one read iterate per step).

Choices where the paper is silent or that the budget forces:

* Miconi et al.'s trace ``x_{t−1} x_tᵀ`` is not symmetric; it is symmetrised here (and its diagonal dropped),
  so that it fits the paper's budget of a symmetric matrix plus a vector: with ``n = 128`` neurons,
  ``128·127/2 + 128 = 8256``.
* ``η`` is one learned scalar (``σ(·)``, starts at 0.01); inputs enter through the shared encoder times a
  learned gain, outputs leave through its decoder (for bits ``n = D``: one neuron per bit, as in Miconi et al.,
  with learned in/out maps).
* Initialisation: the input must set the activation while a pattern is presented, or the trace stores the
  network's own attractor instead of the pattern. A hand-built network (identity in/out maps, ``w = 0``,
  ``α = 0.3``, ``η = 0.01``) measured 28–31 error bits at ``N = 16`` with input gain 1 and 10.5/13.2/17.6/21.0 at
  ``N = 16/32/64/96`` with gain 3; random inits with gain 1 did not move from 32 bits (chance) in 1.5 CPU
  minutes. So when ``n = D`` the in/out maps start as Miconi et al.'s one-neuron-per-bit wiring (identity in,
  ``5·`` identity out), the gain at 3, ``α`` at 0.3 and ``w`` small; all of them are then meta-learned.
* ``present_steps = 2``, ``gap_steps = 0`` by default (Miconi et al. use 10 and 3) to keep the sequential write
  affordable on a CPU.

Memory size: the trace's ``n(n − 1)/2`` free entries plus the activation ``x`` carried to the reads, ``n``
floats; ``n`` is the largest with ``n(n + 1)/2 <= budget`` (128 at 8256).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebmm_rl.baselines.base import BaselineConfig, BaselineMemory, check_pattern_mask, count_written, keep_unmasked
from ebmm_rl.baselines.codec import Codec
from ebmm_rl.memory import ReadResult


def largest_triangle(budget: int) -> int:
    """Largest ``n`` with ``n(n − 1)/2 + n = n(n + 1)/2 <= budget``."""
    n = (math.isqrt(8 * budget + 1) - 1) // 2
    while (n + 1) * (n + 2) // 2 <= budget:
        n += 1
    return n


@dataclass(frozen=True)
class PlasticityConfig(BaselineConfig):
    """Differentiable-plasticity settings.

    Attributes:
        present_steps: steps each pattern is presented while writing.
        gap_steps: zero-input steps after each pattern.
        read_steps: steps each query is presented while reading.
        eta_init: initial Hebbian rate ``η``.
        alpha_init: initial plasticity coefficient of every connection.
        input_gain_init: initial gain of the input drive (a learned scalar).
    """

    present_steps: int = 2
    gap_steps: int = 0
    read_steps: int = 3
    eta_init: float = 0.01
    alpha_init: float = 0.3
    input_gain_init: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.present_steps < 1 or self.gap_steps < 0 or self.read_steps < 1 or not 0 < self.eta_init < 1:
            raise ValueError("PlasticityConfig: need present_steps >= 1, gap_steps >= 0, read_steps >= 1, 0 < η < 1")

    @property
    def neurons(self) -> int:
        """``n``: the largest network whose trace and activation fit the budget."""
        return largest_triangle(self.budget)


@dataclass
class PlasticityState:
    """``B`` plastic networks.

    Attributes:
        hebb: ``[B, n, n]`` symmetric Hebbian trace, zero diagonal.
        activation: ``[B, n]`` activation after the last write step.
        num_written: patterns written so far per episode (an ``int`` for all, a ``[B]`` tensor after masked
            writes).
    """

    hebb: Tensor
    activation: Tensor
    num_written: int | Tensor = 0

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self.hebb.shape[0]

    def detach(self) -> PlasticityState:
        """A copy cut from the autograd graph."""
        return PlasticityState(self.hebb.detach(), self.activation.detach(), self.num_written)


class PlasticityMemory(BaselineMemory):
    """Recurrent network with fixed weights plus learned plasticity coefficients times a Hebbian trace.

    Args:
        config: settings; the number of neurons follows from ``config.budget``.
    """

    def __init__(self, config: PlasticityConfig = PlasticityConfig()) -> None:
        super().__init__()
        self.config = config
        n = config.neurons
        self.codec = Codec(config.data_shape, n, config.channels)
        self.weight = nn.Parameter(torch.randn(n, n) * (0.5 / math.sqrt(n)))  # w
        self.alpha = nn.Parameter(torch.full((n, n), config.alpha_init))  # α
        self.eta_raw = nn.Parameter(torch.tensor(math.log(config.eta_init / (1 - config.eta_init))))
        self.input_gain = nn.Parameter(torch.tensor(config.input_gain_init))
        if isinstance(self.codec.encoder, nn.Linear) and config.dim == n:  # one neuron per bit, as Miconi et al.
            with torch.no_grad():
                self.codec.encoder.weight.copy_(torch.eye(n))
                self.codec.encoder.bias.zero_()
                self.codec.decoder.weight.copy_(5.0 * torch.eye(n))  # output tanh(2.5·x) of each neuron
                self.codec.decoder.bias.zero_()

    @property
    def memory_size(self) -> int:
        """``n(n − 1)/2 + n`` floats: the symmetric trace and the activation."""
        n = self.config.neurons
        return n * (n - 1) // 2 + n

    def _step(self, x: Tensor, drive: Tensor, hebb: Tensor) -> Tensor:
        """``x [B, K, n]``, drive ``[B, K, n]``, trace ``[B, n, n]`` -> next activation ``[B, K, n]``."""
        effective = self.weight + self.alpha * hebb  # [B, n, n]
        return torch.tanh(drive + x @ effective.transpose(1, 2))

    def write(
        self, patterns: Tensor, state: PlasticityState | None = None, pattern_mask: Tensor | None = None
    ) -> PlasticityState:
        """Present ``patterns [B, N, D...]`` one after another, updating the Hebbian trace every step.

        Args:
            patterns: ``[B, N, D...]``.
            state: the network to continue (``None``: zero trace and activation).
            pattern_mask: optional ``[B, N]`` bool, False = padding: the pattern is not presented, the episode's
                trace and activation stay as they were.

        Returns:
            The new :class:`PlasticityState`.
        """
        self.check(patterns, "patterns")
        pattern_mask = check_pattern_mask(pattern_mask, patterns)
        B, N = patterns.shape[:2]
        n = self.config.neurons
        if state is None:
            state = PlasticityState(patterns.new_zeros(B, n, n), patterns.new_zeros(B, n))
        elif state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} episodes but patterns have B={B}; they must match")
        drives = self.input_gain * self.codec.encode(patterns)  # [B, N, n]
        eta = torch.sigmoid(self.eta_raw)
        off_diagonal = 1 - torch.eye(n, dtype=patterns.dtype, device=patterns.device)
        hebb, x = state.hebb, state.activation.unsqueeze(1)  # [B, n, n], [B, 1, n]
        schedule = [1] * self.config.present_steps + [0] * self.config.gap_steps
        for t in range(N):
            old_hebb, old_x = hebb, x
            for present in schedule:
                drive = drives[:, t : t + 1] if present else torch.zeros_like(x)
                new = self._step(x, drive, hebb)  # [B, 1, n]
                outer = new.transpose(1, 2) @ x  # [B, n, n]: post_i · pre_j
                hebb = (1 - eta) * hebb + eta * 0.5 * (outer + outer.transpose(1, 2)) * off_diagonal
                x = new
            if pattern_mask is not None:  # padding leaves the episode's network as it was
                hebb = keep_unmasked(pattern_mask[:, t], hebb, old_hebb)
                x = keep_unmasked(pattern_mask[:, t], x, old_x)
        return PlasticityState(hebb, x.squeeze(1), count_written(state.num_written, pattern_mask, N))

    def read(self, queries: Tensor, state: PlasticityState, known_mask: Tensor | None = None) -> ReadResult:
        """Present each query for ``read_steps`` steps with the trace frozen: ``iterates [K + 1, B, M, D...]``.

        Args:
            queries: ``[B, M, D...]``.
            state: the written memory.
            known_mask: optional bool mask of known query entries (clamped).
        """
        known_mask, x0 = self.start_read(queries, state.batch_size, known_mask)
        M = queries.shape[1]
        drive = self.input_gain * self.codec.encode(self.masked(queries, known_mask))  # [B, M, n]
        x = state.activation.unsqueeze(1).expand(-1, M, -1)  # [B, M, n]
        iterates = [x0]
        for _ in range(self.config.read_steps):
            x = self._step(x, drive, state.hebb)
            iterates.append(self.project(self.to_range(self.codec.decode(x)), queries, known_mask))
        return ReadResult(torch.stack(iterates))

"""MANN: memory-augmented neural network with least-recently-used access (Santoro et al., 2016).

Writing presents the patterns one at a time to a controller; for pattern ``x_t`` with ``h = tanh(ctrl(enc(x_t)))``
and key ``k = W_k h``:

* least-used slot ``w_lu`` = one-hot of ``argmin(w_u)``; it is erased before the write (Santoro et al., eq. 7);
* write weights ``w_w = σ(α) w_r_prev + (1 − σ(α)) w_lu`` (α from the controller);
* ``M ← M ⊙ (1 − w_lu) + w_w kᵀ``;
* read weights ``w_r = softmax(β · cos(k, M_i))`` (key strength ``β = softplus(·)`` from the controller);
* usage ``w_u ← γ w_u + w_r + w_w`` (decay ``γ`` learned, starts at 0.95).

Reading a query uses the same content addressing on the final memory, ``r = Σ w_r(i) M_i``, and decodes
``W_o [h; r]``; reads do not change the state (the protocol's read is side-effect free).

Choices where the paper is silent or that the budget forces:

* Controller: one feed-forward tanh layer (Santoro et al. also allow one; an LSTM controller's ``h, c`` would
  count against the budget). One read head (Santoro et al. use four).
* Slot width ``W = F`` (``D = 128`` for bits), so the least-used rule can give every pattern its own slot.
* The key strength starts at ``β ≈ 11`` (bias 10 before the softplus): with ``β ≈ 1`` a cosine of 0.7 against
  0 ± 0.09 hardly singles out the stored pattern (1.5-minute CPU runs: 5.0 error bits at N = 64 from
  ``β ≈ 2``, 4.5 from ``β ≈ 11``).

Memory size: the memory matrix plus the read and usage weights carried between writes,
``S·W + S + S``; at the 8256-float budget and ``W = 128``: ``S = ⌊8256 / 130⌋ = 63`` slots, 8190 floats.
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
    one_step_read,
)
from ebmm_rl.baselines.codec import Codec, default_feature_size
from ebmm_rl.memory import ReadResult


@dataclass(frozen=True)
class MANNConfig(BaselineConfig):
    """MANN settings.

    Attributes:
        slot_size: slot width ``W`` (also the code size ``F``); 0 means ``D`` for vectors, 256 for images.
        controller_size: width of the feed-forward controller; 0 means ``F``.
    """

    slot_size: int = 0
    controller_size: int = 0

    @property
    def feature_size(self) -> int:
        """``F = W``."""
        return self.slot_size or default_feature_size(self.data_shape)

    @property
    def num_slots(self) -> int:
        """Slots that fit the budget with their read and usage weights: ``⌊budget / (W + 2)⌋``."""
        return self.budget // (self.feature_size + 2)


@dataclass
class MANNState:
    """``B`` MANN memories.

    Attributes:
        memory: ``[B, S, W]`` the memory matrix.
        read_weights: ``[B, S]`` read weights of the last write step.
        usage: ``[B, S]`` usage weights.
        num_written: patterns written so far per episode (an ``int`` for all, a ``[B]`` tensor after masked
            writes).
    """

    memory: Tensor
    read_weights: Tensor
    usage: Tensor
    num_written: int | Tensor = 0

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self.memory.shape[0]

    def detach(self) -> MANNState:
        """A copy cut from the autograd graph."""
        return MANNState(self.memory.detach(), self.read_weights.detach(), self.usage.detach(), self.num_written)


def _cosine(keys: Tensor, memory: Tensor) -> Tensor:
    """``[B, M, W] × [B, S, W] -> [B, M, S]`` cosine similarities (0 against an all-zero slot)."""
    return F.normalize(keys, dim=-1, eps=1e-6) @ F.normalize(memory, dim=-1, eps=1e-6).transpose(1, 2)


class MANN(BaselineMemory):
    """Santoro et al.'s memory-augmented network with least-recently-used writing.

    Args:
        config: sizes; the number of slots follows from ``config.budget``.
    """

    def __init__(self, config: MANNConfig = MANNConfig()) -> None:
        super().__init__()
        if config.num_slots < 1:
            raise ValueError(f"budget {config.budget} holds no slot of {config.feature_size} + 2 floats")
        self.config = config
        f = config.feature_size
        hidden = config.controller_size or f
        self.codec = Codec(config.data_shape, f, config.channels)
        self.controller = nn.Linear(f, hidden)
        self.key = nn.Linear(hidden, f)
        self.strength = nn.Linear(hidden, 1)  # β = softplus(·) + 1
        self.gate = nn.Linear(hidden, 1)  # σ(α): reuse the last read slot vs. take the least-used one
        self.output = nn.Linear(hidden + f, f)
        self.usage_decay_raw = nn.Parameter(torch.tensor(math.log(0.95 / 0.05)))
        nn.init.constant_(self.strength.bias, 10.0)  # β ≈ 11 at the start: sharp enough to address one slot

    @property
    def memory_size(self) -> int:
        """``S·W + 2S`` floats: memory matrix, read weights, usage weights."""
        s = self.config.num_slots
        return s * self.config.feature_size + 2 * s

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Controller outputs for patterns ``x [B, M, D...]``: ``h [B, M, H]``, key, β ``[B, M, 1]``, gate."""
        h = torch.tanh(self.controller(self.codec.encode(x)))
        beta = F.softplus(self.strength(h)) + 1.0
        return h, self.key(h), beta, torch.sigmoid(self.gate(h))

    def write(self, patterns: Tensor, state: MANNState | None = None, pattern_mask: Tensor | None = None) -> MANNState:
        """Write ``patterns [B, N, D...]`` one at a time with least-recently-used access.

        Args:
            patterns: ``[B, N, D...]``.
            state: the memory to continue (``None``: empty).
            pattern_mask: optional ``[B, N]`` bool, False = padding: that step leaves the episode's memory, read
                and usage weights unchanged.

        Returns:
            The new :class:`MANNState`.
        """
        self.check(patterns, "patterns")
        pattern_mask = check_pattern_mask(pattern_mask, patterns)
        B, N = patterns.shape[:2]
        s, w = self.config.num_slots, self.config.feature_size
        if state is None:
            zeros = patterns.new_zeros(B, s)
            state = MANNState(patterns.new_zeros(B, s, w), zeros, zeros)
        elif state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} episodes but patterns have B={B}; they must match")
        _, keys, betas, gates = self._heads(patterns)  # [B, N, W], [B, N, 1], [B, N, 1]
        memory, read_w, usage = state.memory, state.read_weights, state.usage
        decay = torch.sigmoid(self.usage_decay_raw)
        for t in range(N):
            least_used = F.one_hot(usage.argmin(dim=-1), s).to(memory.dtype)  # [B, S]
            write_w = gates[:, t] * read_w + (1 - gates[:, t]) * least_used  # [B, S]
            new_memory = memory * (1 - least_used).unsqueeze(-1) + write_w.unsqueeze(-1) * keys[:, t].unsqueeze(1)
            new_read_w = torch.softmax(betas[:, t] * _cosine(keys[:, t : t + 1], new_memory).squeeze(1), dim=-1)
            new_usage = decay * usage + new_read_w + write_w  # [B, S]
            if pattern_mask is None:
                memory, read_w, usage = new_memory, new_read_w, new_usage
            else:  # padding leaves the episode's state as it was
                real = pattern_mask[:, t]  # [B]
                memory = keep_unmasked(real, new_memory, memory)
                read_w = keep_unmasked(real, new_read_w, read_w)
                usage = keep_unmasked(real, new_usage, usage)
        return MANNState(memory, read_w, usage, count_written(state.num_written, pattern_mask, N))

    def read(self, queries: Tensor, state: MANNState, known_mask: Tensor | None = None) -> ReadResult:
        """Content-addressed read of the final memory, then decode: ``iterates [2, B, M, D...]``.

        Args:
            queries: ``[B, M, D...]``.
            state: the written memory.
            known_mask: optional bool mask of known query entries (clamped).
        """
        known_mask, x0 = self.start_read(queries, state.batch_size, known_mask)
        h, keys, betas, _ = self._heads(self.masked(queries, known_mask))
        weights = torch.softmax(betas * _cosine(keys, state.memory), dim=-1)  # [B, M, S]
        r = weights @ state.memory  # [B, M, W]
        retrieved = self.to_range(self.codec.decode(self.output(torch.cat([h, r], dim=-1))))
        return one_step_read(x0, self.project(retrieved, queries, known_mask))

"""Modern (continuous) Hopfield network retrieval (Ramsauer et al., 2020, "Hopfield Networks is All You Need").

The state is the stored patterns themselves, ``X [S, D]`` in a first-in-first-out slot memory
(:mod:`ebmm_rl.baselines.slots`). Reading iterates the update rule ``ξ ← Xᵀ softmax(β X ξ)`` from the query,
on patterns centred at the middle of ``data_range`` and measured in half-ranges (so ``β`` means the same for
±1 bits and for ``[0, 1]`` pixels), resetting known entries to the query after every step.

Choices: no encoder (the update works on raw patterns, so the model needs no training); ``β = 1`` by default,
set, not learned (``learn_beta=True`` makes it a meta-parameter). For 128-bit patterns with 64 known bits the
stored pattern's score exceeds a random one's by about 64 against a spread of 8, so ``β = 1`` retrieves in one
step; ``β = 1/√D`` (Ramsauer et al.'s attention scaling) does not separate them. The unknown entries of the
query start at the middle of the range.

Memory size: ``capacity × D`` floats, the stored patterns. ``capacity = ⌊budget / D⌋`` by default (64 patterns,
8192 floats, at the 8256-float budget); beyond it the oldest pattern is overwritten. ``capacity`` may be set
larger to show what the update rule does with unlimited storage (``N·D`` floats for ``N`` patterns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebmm_rl.baselines.base import BaselineConfig, BaselineMemory, check_pattern_mask, keep_unmasked
from ebmm_rl.baselines.slots import SlotState, empty_slots, write_slots
from ebmm_rl.memory import ReadResult


@dataclass(frozen=True)
class ModernHopfieldConfig(BaselineConfig):
    """Modern Hopfield settings.

    Attributes:
        capacity: stored patterns; 0 means ``⌊budget / D⌋``.
        beta: inverse temperature ``β`` (in units of the ±1 code).
        learn_beta: make ``β`` a meta-parameter.
        read_steps: update steps per read.
    """

    capacity: int = 0
    beta: float = 1.0
    learn_beta: bool = False
    read_steps: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.capacity < 0 or self.beta <= 0 or self.read_steps < 1:
            raise ValueError("ModernHopfieldConfig: need capacity >= 0, beta > 0, read_steps >= 1")

    @property
    def num_slots(self) -> int:
        """Patterns stored: ``capacity`` or ``⌊budget / D⌋``."""
        return self.capacity or self.budget // self.dim


class ModernHopfield(BaselineMemory):
    """Softmax-attention retrieval over the stored patterns.

    Args:
        config: settings.
    """

    def __init__(self, config: ModernHopfieldConfig = ModernHopfieldConfig()) -> None:
        super().__init__()
        if config.num_slots < 1:
            raise ValueError(f"budget {config.budget} holds no pattern of {config.dim} floats; raise the budget")
        self.config = config
        log_beta = torch.tensor(math.log(config.beta))
        if config.learn_beta:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)

    @property
    def memory_size(self) -> int:
        """``capacity × D`` floats."""
        return self.config.num_slots * self.config.dim

    def write(self, patterns: Tensor, state: SlotState | None = None, pattern_mask: Tensor | None = None) -> SlotState:
        """Store ``patterns [B, N, D...]`` (flattened) in the next slots (FIFO).

        Args:
            patterns: ``[B, N, D...]``.
            state: the stored patterns to continue (``None``: empty).
            pattern_mask: optional ``[B, N]`` bool, False = padding: not stored, the episode's pointer stays.
        """
        self.check(patterns, "patterns")
        pattern_mask = check_pattern_mask(pattern_mask, patterns)
        B, N = patterns.shape[:2]
        if state is None:
            state = empty_slots(B, self.config.num_slots, self.config.dim, patterns)
        return write_slots(state, patterns.reshape(B, N, -1), pattern_mask)

    def read(self, queries: Tensor, state: SlotState, known_mask: Tensor | None = None) -> ReadResult:
        """``read_steps`` updates ``ξ ← Xᵀ softmax(β X ξ)``: ``iterates [K + 1, B, M, D...]``.

        Args:
            queries: ``[B, M, D...]``.
            state: the stored patterns.
            known_mask: optional bool mask of known query entries (clamped).
        """
        known_mask, x0 = self.start_read(queries, state.batch_size, known_mask)
        B, M = queries.shape[:2]
        lo, hi = self.config.data_range
        mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
        stored = (state.slots - mid) / half  # [B, S, D] in the ±1 code
        beta = self.log_beta.exp()
        filled = state.filled()  # [B, S]
        nonempty = filled.any(dim=1)  # [B]; an empty memory leaves the query as it is
        blocked = (~filled & nonempty.unsqueeze(1)).unsqueeze(1)  # [B, 1, S]; never a whole row: no NaN
        x, iterates = self.masked(queries, known_mask), [x0]
        for _ in range(self.config.read_steps):
            if not nonempty.any():
                new = x
            else:
                xi = ((x - mid) / half).reshape(B, M, -1)  # [B, M, D]
                scores = (beta * xi @ stored.transpose(1, 2)).masked_fill(blocked, float("-inf"))
                new = (mid + half * (torch.softmax(scores, dim=-1) @ stored)).view_as(queries)  # [B, M, D...]
                new = keep_unmasked(nonempty, new, x)
            x = self.project(new, queries, known_mask)
            iterates.append(x)
        return ReadResult(torch.stack(iterates))

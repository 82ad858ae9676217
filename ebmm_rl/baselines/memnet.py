"""Memory Networks (Weston, Chopra & Bordes, 2014), read by soft attention as in end-to-end memory networks.

Write: each pattern's embedding ``m = enc(x)`` (the shared :class:`~ebmm_rl.baselines.codec.Codec` encoder) goes
into its own slot of a first-in-first-out slot memory (:mod:`ebmm_rl.baselines.slots`). Read: the embedding
``u = enc(x̃)`` of the (masked) query attends over the filled slots,
``p = softmax(β ⟨W_q u, W_k m_i⟩ / √F)``, ``o = Σ p_i m_i``, and the decoder maps ``o + W_o u`` back to a pattern.

Choices where the papers are silent:

* Weston et al.'s memory networks pick a slot by a hard ``argmax``; the paper's Memory Networks are meta-trained
  by gradient, so the read is the soft attention of Sukhbaatar et al. (2015) with one hop and a learned
  inverse temperature ``β``. ``W_q`` and ``W_k`` start at the identity (plain dot-product attention) and
  ``W_o`` at zero (the output starts as the decoded slot).
* When more patterns arrive than there are slots, the oldest is overwritten (FIFO). A lost pattern is then
  read as some other pattern, which leaves its 64 unknown bits at chance: 32 error bits. At ``N = 96`` with
  64 slots that is ``32 · 32/96 ≈ 10.7`` bits on average, the paper's 10.5.

Memory size: ``slots × slot_size`` floats, the slot contents; with ``slot_size = F = D = 128`` the 8256-float
budget holds ``⌊8256 / 128⌋ = 64`` slots, 8192 floats ("the number of slots × the slot size", paper §4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebmm_rl.baselines.base import BaselineConfig, BaselineMemory, check_pattern_mask, keep_unmasked, one_step_read
from ebmm_rl.baselines.codec import Codec, default_feature_size
from ebmm_rl.baselines.slots import SlotState, empty_slots, write_slots
from ebmm_rl.memory import ReadResult


@dataclass(frozen=True)
class MemNetConfig(BaselineConfig):
    """Memory Network settings.

    Attributes:
        slot_size: embedding size ``F`` of a slot; 0 means ``D`` for vectors and 256 for images.
    """

    slot_size: int = 0

    @property
    def feature_size(self) -> int:
        """``F``."""
        return self.slot_size or default_feature_size(self.data_shape)

    @property
    def num_slots(self) -> int:
        """Slots that fit the budget: ``⌊budget / F⌋``."""
        return self.budget // self.feature_size


class MemoryNetwork(BaselineMemory):
    """Slot memory of pattern embeddings, read by learned soft attention.

    Args:
        config: sizes; the number of slots follows from ``config.budget``.
    """

    def __init__(self, config: MemNetConfig = MemNetConfig()) -> None:
        super().__init__()
        if config.num_slots < 1:
            raise ValueError(
                f"budget {config.budget} holds no slot of {config.feature_size} floats; raise the budget or "
                "lower slot_size"
            )
        self.config = config
        f = config.feature_size
        self.codec = Codec(config.data_shape, f, config.channels)
        self.query_key = nn.Linear(f, f, bias=False)
        self.slot_key = nn.Linear(f, f, bias=False)
        self.query_out = nn.Linear(f, f, bias=False)
        nn.init.eye_(self.query_key.weight)
        nn.init.eye_(self.slot_key.weight)
        nn.init.zeros_(self.query_out.weight)
        self.log_beta = nn.Parameter(torch.zeros(()))

    @property
    def memory_size(self) -> int:
        """``slots × slot_size`` floats."""
        return self.config.num_slots * self.config.feature_size

    def write(self, patterns: Tensor, state: SlotState | None = None, pattern_mask: Tensor | None = None) -> SlotState:
        """Store the embeddings of ``patterns [B, N, D...]`` in the next slots (FIFO).

        Args:
            patterns: ``[B, N, D...]``.
            state: the slots to continue (``None``: empty).
            pattern_mask: optional ``[B, N]`` bool, False = padding: not stored, the episode's pointer stays.

        Returns:
            The new :class:`SlotState` (``slots [B, S, F]``).
        """
        self.check(patterns, "patterns")
        pattern_mask = check_pattern_mask(pattern_mask, patterns)
        if state is None:
            state = empty_slots(patterns.shape[0], self.config.num_slots, self.config.feature_size, patterns)
        return write_slots(state, self.codec.encode(patterns), pattern_mask)  # [B, N, F] embeddings

    def read(self, queries: Tensor, state: SlotState, known_mask: Tensor | None = None) -> ReadResult:
        """One attention hop over the filled slots: ``iterates [2, B, M, D...]``.

        Args:
            queries: ``[B, M, D...]``.
            state: the written slots.
            known_mask: optional bool mask of known query entries (clamped).
        """
        known_mask, x0 = self.start_read(queries, state.batch_size, known_mask)
        u = self.codec.encode(self.masked(queries, known_mask))  # [B, M, F]
        filled = state.filled()  # [B, S]
        if not filled.any():
            o = torch.zeros_like(u)
        else:
            keys = self.slot_key(state.slots)  # [B, S, F]
            scores = self.query_key(u) @ keys.transpose(1, 2)  # [B, M, S]
            scores = scores * (self.log_beta.exp() / math.sqrt(self.config.feature_size))
            nonempty = filled.any(dim=1)  # [B]; an empty memory reads zero (no slot is masked: no NaN)
            scores = scores.masked_fill((~filled & nonempty.unsqueeze(1)).unsqueeze(1), float("-inf"))
            o = keep_unmasked(nonempty, torch.softmax(scores, dim=-1) @ state.slots, torch.zeros_like(u))  # [B, M, F]
        retrieved = self.to_range(self.codec.decode(o + self.query_out(u)))
        return one_step_read(x0, self.project(retrieved, queries, known_mask))

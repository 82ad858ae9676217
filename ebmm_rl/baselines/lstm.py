"""LSTM memory (Hochreiter & Schmidhuber, 1997): the written state is the hidden and cell state.

Writing runs one LSTM layer over the encoded patterns in order, from the state given (zeros for a fresh
memory). Reading feeds each encoded (masked) query for ``read_steps`` further LSTM steps, every query from the
written state independently (so queries do not write into each other), and decodes ``W_o h``.

Choices where the paper is silent: one layer, no peepholes (``torch.nn.LSTM``); one read step by default.

Memory size: ``h`` and ``c``, ``2·H`` floats; the 8256-float budget gives ``H = 4128``. The paper notes (App. A.1)
that the hidden-to-hidden weights grow with ``H²``: here ``4·H·(H + F) ≈ 70M`` weights, about 1.1 GFLOP per
episode and step, which is why this is by far the slowest baseline to meta-train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebmm_rl.baselines.base import BaselineConfig, BaselineMemory, check_pattern_mask, count_written
from ebmm_rl.baselines.codec import Codec, default_feature_size
from ebmm_rl.memory import ReadResult


@dataclass(frozen=True)
class LSTMConfig(BaselineConfig):
    """LSTM settings.

    Attributes:
        feature_size: LSTM input size ``F``; 0 means ``D`` for vectors, 256 for images.
        read_steps: LSTM steps per query.
    """

    feature_size: int = 0
    read_steps: int = 1

    @property
    def code_size(self) -> int:
        """``F``."""
        return self.feature_size or default_feature_size(self.data_shape)

    @property
    def hidden_size(self) -> int:
        """``H = ⌊budget / 2⌋``: ``h`` and ``c`` fill the budget."""
        return self.budget // 2


@dataclass
class LSTMState:
    """``B`` LSTM memories.

    Attributes:
        hidden: ``[B, H]``.
        cell: ``[B, H]``.
        num_written: patterns written so far per episode (an ``int`` for all, a ``[B]`` tensor after masked
            writes).
    """

    hidden: Tensor
    cell: Tensor
    num_written: int | Tensor = 0

    @property
    def batch_size(self) -> int:
        """``B``."""
        return self.hidden.shape[0]

    def detach(self) -> LSTMState:
        """A copy cut from the autograd graph."""
        return LSTMState(self.hidden.detach(), self.cell.detach(), self.num_written)


class LSTMMemory(BaselineMemory):
    """An LSTM that reads the patterns, then each query.

    Args:
        config: sizes; ``H`` follows from ``config.budget``.
    """

    def __init__(self, config: LSTMConfig = LSTMConfig()) -> None:
        super().__init__()
        if config.hidden_size < 1 or config.read_steps < 1:
            raise ValueError(f"need budget >= 2 and read_steps >= 1, got {config.budget} and {config.read_steps}")
        self.config = config
        f = config.code_size
        self.codec = Codec(config.data_shape, f, config.channels)
        self.lstm = nn.LSTM(f, config.hidden_size, batch_first=True)
        self.output = nn.Linear(config.hidden_size, f)

    @property
    def memory_size(self) -> int:
        """``2·H`` floats."""
        return 2 * self.config.hidden_size

    def write(self, patterns: Tensor, state: LSTMState | None = None, pattern_mask: Tensor | None = None) -> LSTMState:
        """Run the LSTM over ``patterns [B, N, D...]`` in order.

        Args:
            patterns: ``[B, N, D...]``.
            state: the state to continue (``None``: zeros).
            pattern_mask: optional ``[B, N]`` bool, False = padding: that step leaves the episode's ``h, c``
                unchanged (the LSTM then runs one step at a time).

        Returns:
            The new :class:`LSTMState` (``h, c: [B, H]``).
        """
        self.check(patterns, "patterns")
        pattern_mask = check_pattern_mask(pattern_mask, patterns)
        B, N = patterns.shape[:2]
        if state is not None and state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} episodes but patterns have B={B}; they must match")
        start = None if state is None else (state.hidden.unsqueeze(0), state.cell.unsqueeze(0))  # [1, B, H]
        codes = self.codec.encode(patterns)  # [B, N, F]
        if pattern_mask is None:
            _, (h, c) = self.lstm(codes, start)
        else:
            h, c = start or (codes.new_zeros(1, B, self.config.hidden_size),) * 2  # [1, B, H]
            for t in range(N):
                _, (new_h, new_c) = self.lstm(codes[:, t : t + 1], (h, c))
                real = pattern_mask[:, t].view(1, B, 1)
                h, c = torch.where(real, new_h, h), torch.where(real, new_c, c)
        num_written = count_written(0 if state is None else state.num_written, pattern_mask, N)
        return LSTMState(h.squeeze(0), c.squeeze(0), num_written)

    def read(self, queries: Tensor, state: LSTMState, known_mask: Tensor | None = None) -> ReadResult:
        """``read_steps`` LSTM steps per query from the written state: ``iterates [K + 1, B, M, D...]``.

        Args:
            queries: ``[B, M, D...]``.
            state: the written memory.
            known_mask: optional bool mask of known query entries (clamped).
        """
        known_mask, x0 = self.start_read(queries, state.batch_size, known_mask)
        B, M = queries.shape[:2]
        hsize = self.config.hidden_size
        u = self.codec.encode(self.masked(queries, known_mask)).reshape(B * M, 1, -1)  # [B*M, 1, F]
        h = state.hidden.unsqueeze(1).expand(B, M, hsize).reshape(1, B * M, hsize)  # [1, B*M, H]
        c = state.cell.unsqueeze(1).expand(B, M, hsize).reshape(1, B * M, hsize)
        iterates = [x0]
        for _ in range(self.config.read_steps):
            out, (h, c) = self.lstm(u, (h, c))  # out: [B*M, 1, H]
            logits = self.codec.decode(self.output(out.view(B, M, hsize)))
            iterates.append(self.project(self.to_range(logits), queries, known_mask))
        return ReadResult(torch.stack(iterates))

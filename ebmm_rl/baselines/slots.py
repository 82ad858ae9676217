"""A first-in-first-out slot memory: the written state of Memory Networks and of the modern Hopfield network.

Pattern ``i`` (counting every pattern written into the episode so far) goes to slot ``i mod capacity``; once
all slots are full the oldest pattern is overwritten. Writing is batched over episodes; all episodes of a
state have written the same number of patterns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class SlotState:
    """``B`` slot memories.

    Attributes:
        slots: ``[B, S, F]`` slot contents (zeros where nothing was written yet).
        num_written: patterns written so far into each episode's memory (the same for every episode).
    """

    slots: Tensor
    num_written: int = 0

    @property
    def batch_size(self) -> int:
        """``B``, the number of episodes."""
        return self.slots.shape[0]

    @property
    def capacity(self) -> int:
        """``S``, the number of slots."""
        return self.slots.shape[1]

    def filled(self) -> Tensor:
        """``[S]`` bool: slots that hold a pattern."""
        return torch.arange(self.capacity, device=self.slots.device) < self.num_written

    def detach(self) -> SlotState:
        """A copy cut from the autograd graph."""
        return SlotState(self.slots.detach(), self.num_written)


def empty_slots(batch_size: int, capacity: int, width: int, like: Tensor) -> SlotState:
    """``batch_size`` empty memories of ``capacity`` slots of ``width`` floats (dtype and device of ``like``)."""
    return SlotState(like.new_zeros(batch_size, capacity, width), 0)


def write_slots(state: SlotState, values: Tensor) -> SlotState:
    """Write ``values [B, N, F]`` into the next slots, first in first out; ``state`` is not modified.

    When ``N`` exceeds the capacity only the last ``capacity`` values survive, so only those are written
    (into distinct slots, so the write is one differentiable ``index_copy``).
    """
    if values.shape[0] != state.batch_size:
        raise ValueError(f"state holds {state.batch_size} episodes but patterns have B={values.shape[0]}")
    count, capacity = values.shape[1], state.capacity
    keep = min(count, capacity)
    first = state.num_written + count - keep
    slots = torch.arange(first, first + keep, device=values.device) % capacity  # [keep]
    new = state.slots.index_copy(1, slots, values[:, count - keep :].to(state.slots.dtype))
    return SlotState(new, state.num_written + count)

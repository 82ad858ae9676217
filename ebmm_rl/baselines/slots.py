"""A first-in-first-out slot memory: the written state of Memory Networks and of the modern Hopfield network.

Pattern ``i`` (counting every pattern written into the episode so far) goes to slot ``i mod capacity``; once
all slots are full the oldest pattern is overwritten. Writing is batched over episodes. Without a padding mask
all episodes of a state have written the same number of patterns (``num_written`` is one ``int``); a
``pattern_mask`` lets each episode skip its padding, and ``num_written`` becomes a ``[B]`` tensor: padding does not
advance an episode's write pointer.
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
        num_written: patterns written so far into each episode's memory: an ``int`` when it is the same for every
            episode (unmasked writes), else a ``[B]`` long tensor.
    """

    slots: Tensor
    num_written: int | Tensor = 0

    @property
    def batch_size(self) -> int:
        """``B``, the number of episodes."""
        return self.slots.shape[0]

    @property
    def capacity(self) -> int:
        """``S``, the number of slots."""
        return self.slots.shape[1]

    def filled(self) -> Tensor:
        """``[B, S]`` bool: slots that hold a pattern, per episode."""
        slots = torch.arange(self.capacity, device=self.slots.device)  # [S]
        if isinstance(self.num_written, Tensor):
            return slots < self.num_written.unsqueeze(1)  # [B, S]
        return (slots < self.num_written).expand(self.batch_size, -1)

    def detach(self) -> SlotState:
        """A copy cut from the autograd graph."""
        return SlotState(self.slots.detach(), self.num_written)


def empty_slots(batch_size: int, capacity: int, width: int, like: Tensor) -> SlotState:
    """``batch_size`` empty memories of ``capacity`` slots of ``width`` floats (dtype and device of ``like``)."""
    return SlotState(like.new_zeros(batch_size, capacity, width), 0)


def write_slots(state: SlotState, values: Tensor, pattern_mask: Tensor | None = None) -> SlotState:
    """Write ``values [B, N, F]`` into the next slots, first in first out; ``state`` is not modified.

    When ``N`` exceeds the capacity only the last ``capacity`` values survive, so only those are written
    (into distinct slots, so the write is one differentiable ``index_copy``). With ``pattern_mask [B, N]`` (bool,
    True = a real pattern) each episode writes only its real values, from its own write pointer; padding leaves
    the slots and the pointer as they were.
    """
    if values.shape[0] != state.batch_size:
        raise ValueError(f"state holds {state.batch_size} episodes but patterns have B={values.shape[0]}")
    if pattern_mask is not None or isinstance(state.num_written, Tensor):
        return _write_slots_per_episode(state, values, pattern_mask)
    count, capacity = values.shape[1], state.capacity
    keep = min(count, capacity)
    first = state.num_written + count - keep
    slots = torch.arange(first, first + keep, device=values.device) % capacity  # [keep]
    new = state.slots.index_copy(1, slots, values[:, count - keep :].to(state.slots.dtype))
    return SlotState(new, state.num_written + count)


def _write_slots_per_episode(state: SlotState, values: Tensor, pattern_mask: Tensor | None) -> SlotState:
    """:func:`write_slots` with a write pointer per episode.

    Real value ``r`` of episode ``b`` (in order) goes to slot ``(num_written_b + r) mod S``; of more than ``S``
    real values only the last ``S`` are written, into distinct slots, so the write is one differentiable gather.
    """
    B, N, F = values.shape
    capacity = state.capacity
    mask = values.new_ones(B, N, dtype=torch.bool) if pattern_mask is None else pattern_mask
    start = torch.as_tensor(state.num_written, device=values.device).expand(B)  # [B]
    rank = mask.long().cumsum(dim=1) - 1  # [B, N] position of each real value among this write's
    total = mask.sum(dim=1)  # [B]
    keep = mask & (rank >= (total - capacity).unsqueeze(1))  # [B, N] the values that survive this write
    slot = (start.unsqueeze(1) + rank) % capacity  # [B, N]
    hit = keep.unsqueeze(2) & (slot.unsqueeze(2) == torch.arange(capacity, device=values.device))  # [B, N, S]
    written = hit.any(dim=1)  # [B, S] slots that receive a value (at most one each)
    source = hit.long().argmax(dim=1)  # [B, S] the value each written slot receives
    gathered = values.gather(1, source.unsqueeze(2).expand(B, capacity, F)).to(state.slots.dtype)  # [B, S, F]
    new = torch.where(written.unsqueeze(2), gathered, state.slots)
    return SlotState(new, start + total)

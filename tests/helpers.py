"""Helpers shared by the tests (reference paths that library code has no use for)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def per_episode(fn: Callable[[int], Tensor], batch_size: int) -> Tensor:
    """Reference path: run ``fn(b)`` for each episode ``b`` and concatenate the ``[1, ...]`` results."""
    return torch.cat([fn(b) for b in range(batch_size)], dim=0)

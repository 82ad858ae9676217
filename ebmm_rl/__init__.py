"""ebmm_rl: meta-learned energy-based memory (EBMM) for reinforcement-learning agents.

The SB3 integration is exported lazily (``from ebmm_rl import EBMMExtractor, MemoryExtractor``), so
``import ebmm_rl`` alone does not import Stable-Baselines3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ebmm_rl.checkpoint import load_memory, save_memory
from ebmm_rl.memory import EBMMConfig, EBMMemory, MemoryState, MetaOutput, ReadResult

if TYPE_CHECKING:
    from ebmm_rl.rl import (
        EBMMExtractor,
        EBMMPolicy,
        EBMMRecurrentPolicy,
        EpisodeMemoryWrapper,
        MemoryExtractor,
        MultiBinaryToMultiDiscrete,
        RowObservation,
    )

_LAZY = (
    "EBMMExtractor",
    "EBMMPolicy",
    "EBMMRecurrentPolicy",
    "EpisodeMemoryWrapper",
    "MemoryExtractor",
    "MultiBinaryToMultiDiscrete",
    "RowObservation",
)
__all__ = [
    "EBMMConfig",
    "EBMMemory",
    "EBMMExtractor",
    "EBMMPolicy",
    "EBMMRecurrentPolicy",
    "EpisodeMemoryWrapper",
    "MemoryExtractor",
    "RowObservation",
    "MemoryState",
    "MetaOutput",
    "MultiBinaryToMultiDiscrete",
    "ReadResult",
    "load_memory",
    "save_memory",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import ebmm_rl.rl

        return getattr(ebmm_rl.rl, name)
    raise AttributeError(f"module 'ebmm_rl' has no attribute {name!r}")

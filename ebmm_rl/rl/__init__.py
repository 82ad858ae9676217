"""Stable-Baselines3 integration: the EBMM features extractor and the wrappers it needs (``docs/rl.md``).

:class:`MemoryExtractor` does the same with any baseline memory of :mod:`ebmm_rl.baselines` (``docs/baselines.md``).

The recurrent route for sb3-contrib's ``RecurrentPPO`` lives in :mod:`ebmm_rl.rl.recurrent` (``EBMMRecurrentPolicy``
and ``EBMMRecurrentPPO``, also exported here; imported on first use, so that this package does not need
sb3-contrib).
"""

from typing import Any

from ebmm_rl.rl.encoders import RowEncoder
from ebmm_rl.rl.extractor import FAST_RL_MEMORY, FEATURE_PARTS, EBMMExtractor
from ebmm_rl.rl.memory_extractor import MEMORY_FEATURE_PARTS, MemoryExtractor
from ebmm_rl.rl.policy import EBMMPolicy
from ebmm_rl.rl.rows import SUPPORTED_SPACES, RowLayout
from ebmm_rl.rl.wrappers import EpisodeMemoryWrapper, MultiBinaryToMultiDiscrete, RowObservation

__all__ = [
    "FAST_RL_MEMORY",
    "FEATURE_PARTS",
    "MEMORY_FEATURE_PARTS",
    "SUPPORTED_SPACES",
    "EBMMExtractor",
    "EBMMPolicy",
    "EBMMRecurrentPPO",
    "EBMMRecurrentPolicy",
    "EpisodeMemoryWrapper",
    "MemoryExtractor",
    "MultiBinaryToMultiDiscrete",
    "RowEncoder",
    "RowLayout",
    "RowObservation",
]


def __getattr__(name: str) -> Any:
    if name in ("EBMMRecurrentPolicy", "EBMMRecurrentPPO"):  # need sb3-contrib, imported on first use
        from ebmm_rl.rl import recurrent

        return getattr(recurrent, name)
    raise AttributeError(f"module 'ebmm_rl.rl' has no attribute {name!r}")

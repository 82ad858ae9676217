"""Stable-Baselines3 integration: the EBMM features extractor and the wrappers it needs (``docs/rl.md``).

:class:`MemoryExtractor` does the same with any baseline memory of :mod:`ebmm_rl.baselines` (``docs/baselines.md``).

The recurrent route for sb3-contrib's ``RecurrentPPO`` lives in :mod:`ebmm_rl.rl.recurrent` (``EBMMRecurrentPolicy``;
imported from there, so that this package does not need sb3-contrib).
"""

from ebmm_rl.rl.extractor import FEATURE_PARTS, EBMMExtractor
from ebmm_rl.rl.memory_extractor import MEMORY_FEATURE_PARTS, MemoryExtractor
from ebmm_rl.rl.wrappers import EpisodeMemoryWrapper, MultiBinaryToMultiDiscrete

__all__ = [
    "FEATURE_PARTS",
    "MEMORY_FEATURE_PARTS",
    "EBMMExtractor",
    "EpisodeMemoryWrapper",
    "MemoryExtractor",
    "MultiBinaryToMultiDiscrete",
]

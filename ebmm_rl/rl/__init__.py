"""Stable-Baselines3 integration: the EBMM features extractor and the wrappers it needs (``docs/rl.md``).

The recurrent route for sb3-contrib's ``RecurrentPPO`` lives in :mod:`ebmm_rl.rl.recurrent` (``EBMMRecurrentPolicy``;
imported from there, so that this package does not need sb3-contrib).
"""

from ebmm_rl.rl.extractor import EBMMExtractor
from ebmm_rl.rl.wrappers import EpisodeMemoryWrapper, MultiBinaryToMultiDiscrete

__all__ = ["EBMMExtractor", "EpisodeMemoryWrapper", "MultiBinaryToMultiDiscrete"]

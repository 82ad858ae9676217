"""Stable-Baselines3 integration: the EBMM features extractor and the wrappers it needs (``docs/rl.md``)."""

from ebmm_rl.rl.extractor import EBMMExtractor
from ebmm_rl.rl.wrappers import EpisodeMemoryWrapper, MultiBinaryToMultiDiscrete

__all__ = ["EBMMExtractor", "EpisodeMemoryWrapper", "MultiBinaryToMultiDiscrete"]

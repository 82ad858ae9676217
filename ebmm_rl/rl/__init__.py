"""Stable-Baselines3 integration: the agent's key/value EBMM memory, its routes and wrappers (``docs/rl.md``).

* :class:`~ebmm_rl.rl.core.MemoryCore` (:class:`CoreConfig`): the memory itself, key/value rows written into an
  EBMM and read back by clamped keys.
* :class:`EBMMRecurrentPPO` / :class:`EBMMRecurrentPolicy`: the core as the recurrent state of sb3-contrib's
  ``RecurrentPPO`` (any environment, unwrapped).
* :class:`EBMMExtractor` / :class:`EBMMPolicy`: the same core as a features extractor of PPO / A2C over
  :class:`EpisodeMemoryWrapper` observations.
* :class:`MemoryExtractor`: the baseline memories of :mod:`ebmm_rl.baselines` through the extractor route
  (``docs/baselines.md``).
"""

from ebmm_rl.rl.core import FAST_CORE, CoreConfig, MemoryCore
from ebmm_rl.rl.encoders import RowEncoder
from ebmm_rl.rl.extractor import FAST_RL_MEMORY, EBMMExtractor
from ebmm_rl.rl.history import FEATURE_PARTS
from ebmm_rl.rl.memory_extractor import MEMORY_FEATURE_PARTS, MemoryExtractor
from ebmm_rl.rl.policy import EBMMPolicy
from ebmm_rl.rl.recurrent import EBMMRecurrentPolicy, EBMMRecurrentPPO, RowsExtractor
from ebmm_rl.rl.rows import SUPPORTED_SPACES, RowLayout
from ebmm_rl.rl.wrappers import (
    EpisodeMemoryWrapper,
    MultiBinaryToMultiDiscrete,
    OneHotCodes,
    PreviousActionReward,
    RowObservation,
)

__all__ = [
    "FAST_CORE",
    "FAST_RL_MEMORY",
    "FEATURE_PARTS",
    "MEMORY_FEATURE_PARTS",
    "SUPPORTED_SPACES",
    "CoreConfig",
    "EBMMExtractor",
    "EBMMPolicy",
    "EBMMRecurrentPPO",
    "EBMMRecurrentPolicy",
    "EpisodeMemoryWrapper",
    "MemoryCore",
    "MemoryExtractor",
    "MultiBinaryToMultiDiscrete",
    "OneHotCodes",
    "PreviousActionReward",
    "RowEncoder",
    "RowLayout",
    "RowObservation",
    "RowsExtractor",
]

"""ebmm_rl: meta-learned energy-based memory (EBMM) for reinforcement-learning agents.

The SB3 integration is exported lazily (``from ebmm_rl import EBMMExtractor, MemoryExtractor``), so
``import ebmm_rl`` alone does not import Stable-Baselines3.

``import ebmm_rl`` also registers the memory-probe environments ``ebmm/<Name>[-<Level>]-v0`` of :mod:`envs` with
gymnasium, and gymnasium's module prefix imports it in a fresh process (a ``SubprocVecEnv`` worker, say)::

    import gymnasium as gym

    env = gym.make("ebmm_rl:ebmm/BinaryRecall-v0")  # imports ebmm_rl, which registers the ids, then makes the env

(Gymnasium 1.x has no plugin entry points: its ``gymnasium.envs`` entry-point group was removed in 1.0, so the
module prefix or an import is how a third-party package's ids get registered.)

Without gymnasium installed (a bare GPU machine with only torch, say) the ids are not registered and the core
(memory, energies, trainer, binary and image tasks) still imports; the environments and the SB3 integration then
fail when they are imported, naming the missing package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:
    import envs  # noqa: F401  (registers the ebmm/... gymnasium ids; numpy + gymnasium only)
except ModuleNotFoundError as _err:  # gymnasium (or numpy) missing: the core works without the environments
    if _err.name not in ("gymnasium", "numpy"):
        raise
from ebmm_rl.checkpoint import load_memory, save_memory
from ebmm_rl.memory import EBMMConfig, EBMMemory, MemoryState, MetaOutput, ReadResult, WriteSchedule

if TYPE_CHECKING:
    from ebmm_rl.rl import (
        CoreConfig,
        EBMMExtractor,
        EBMMPolicy,
        EBMMRecurrentPolicy,
        EBMMRecurrentPPO,
        EpisodeMemoryWrapper,
        MemoryCore,
        MemoryExtractor,
        MultiBinaryToMultiDiscrete,
        PreviousActionReward,
        RowObservation,
    )

_LAZY = (
    "CoreConfig",
    "EBMMExtractor",
    "EBMMPolicy",
    "EBMMRecurrentPolicy",
    "EBMMRecurrentPPO",
    "EpisodeMemoryWrapper",
    "MemoryCore",
    "MemoryExtractor",
    "MultiBinaryToMultiDiscrete",
    "PreviousActionReward",
    "RowObservation",
)
__all__ = [
    "CoreConfig",
    "EBMMConfig",
    "EBMMemory",
    "EBMMExtractor",
    "EBMMPolicy",
    "EBMMRecurrentPolicy",
    "EBMMRecurrentPPO",
    "EpisodeMemoryWrapper",
    "MemoryCore",
    "MemoryExtractor",
    "PreviousActionReward",
    "RowObservation",
    "MemoryState",
    "MetaOutput",
    "MultiBinaryToMultiDiscrete",
    "ReadResult",
    "WriteSchedule",
    "load_memory",
    "save_memory",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import ebmm_rl.rl

        return getattr(ebmm_rl.rl, name)
    raise AttributeError(f"module 'ebmm_rl' has no attribute {name!r}")

"""Memory-probe environments (numpy + gymnasium only), registered as ``ebmm/<Name>[-<Level>]-v0``.

``import envs`` registers every row of :data:`REGISTRY` with gymnasium::

    import gymnasium as gym
    import envs  # noqa: F401  (registers the ids)

    env = gym.make("ebmm/BinaryRecall-Easy-v0")

In a fresh process (``SubprocVecEnv``, ``AsyncVectorEnv`` with ``spawn``/``forkserver``) either import
``envs`` there too or use gymnasium's module prefix, ``gym.make("envs:ebmm/BinaryRecall-v0")``,
which imports it first. ``import ebmm_rl`` imports ``envs`` too, so ``gym.make("ebmm_rl:ebmm/BinaryRecall-v0")``
works as well.

Every family has a plain id (its constructor defaults, equal to Medium) and Easy / Medium / Hard
variants; ``DelayedRecall`` adds one id per delay of its sweep. All observations are ``Dict``
spaces with ``"pattern"``, ``"phase"`` and ``"step"`` keys (see :mod:`envs.core`); see
``docs/envs.md`` for the table of tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from envs.binary_recall import BinaryRecallEnv
from envs.core import MemoryProbeEnv, Phase
from envs.delayed_recall import SWEEP, SWEEP_DELAYS, DelayedRecallEnv
from envs.familiarity import FamiliarityEnv
from envs.image_recall import ImageRecallEnv
from envs.key_value_recall import KeyValueRecallEnv
from envs.pomdp import MaskVelocity

__all__ = [
    "ENV_IDS",
    "POMDP_IDS",
    "REGISTRY",
    "SWEEP",
    "BinaryRecallEnv",
    "DelayedRecallEnv",
    "EnvEntry",
    "FamiliarityEnv",
    "ImageRecallEnv",
    "KeyValueRecallEnv",
    "MaskVelocity",
    "MemoryProbeEnv",
    "Phase",
]


@dataclass(frozen=True)
class EnvEntry:
    """One registered environment id.

    Attributes:
        id: gymnasium id, ``ebmm/<Name>[-<Variant>]-v<version>``.
        entry_point: ``module:Class`` of the environment.
        kwargs: constructor keyword arguments of this variant (on top of the class defaults).
    """

    id: str
    entry_point: str
    kwargs: dict[str, Any] = field(default_factory=dict)


_BINARY = "envs.binary_recall:BinaryRecallEnv"
_KEY_VALUE = "envs.key_value_recall:KeyValueRecallEnv"
_IMAGE = "envs.image_recall:ImageRecallEnv"
_FAMILIARITY = "envs.familiarity:FamiliarityEnv"
_DELAYED = "envs.delayed_recall:DelayedRecallEnv"

# fmt: off
REGISTRY: tuple[EnvEntry, ...] = (
    # BinaryRecall: N patterns of D bits; the query has a fraction `distortion` of bits re-drawn.
    EnvEntry("ebmm/BinaryRecall-v0", _BINARY),
    EnvEntry("ebmm/BinaryRecall-Easy-v0", _BINARY, dict(num_patterns=2, pattern_size=8, distortion=0.5)),
    EnvEntry("ebmm/BinaryRecall-Medium-v0", _BINARY, dict(num_patterns=8, pattern_size=32, distortion=0.25)),
    EnvEntry("ebmm/BinaryRecall-Hard-v0", _BINARY, dict(num_patterns=32, pattern_size=128, distortion=0.5)),
    # KeyValueRecall: N (key, value) pairs; a noisy key asks for its value among V.
    EnvEntry("ebmm/KeyValueRecall-v0", _KEY_VALUE),
    EnvEntry("ebmm/KeyValueRecall-Easy-v0", _KEY_VALUE,
             dict(num_pairs=2, key_size=8, num_values=4, distortion=0.0)),
    EnvEntry("ebmm/KeyValueRecall-Medium-v0", _KEY_VALUE,
             dict(num_pairs=8, key_size=16, num_values=8, distortion=0.25)),
    EnvEntry("ebmm/KeyValueRecall-Hard-v0", _KEY_VALUE,
             dict(num_pairs=32, key_size=32, num_values=32, distortion=0.5)),
    # ImageRecall: N character images; which one is the block-occluded query?
    EnvEntry("ebmm/ImageRecall-v0", _IMAGE),
    EnvEntry("ebmm/ImageRecall-Easy-v0", _IMAGE, dict(num_patterns=2, occlusion=0.25)),
    EnvEntry("ebmm/ImageRecall-Medium-v0", _IMAGE, dict(num_patterns=5, occlusion=0.5)),
    EnvEntry("ebmm/ImageRecall-Hard-v0", _IMAGE, dict(num_patterns=16, occlusion=0.625)),
    EnvEntry("ebmm/ImageRecall-Pixels-v0", _IMAGE, dict(num_patterns=5, occlusion=0.5, obs_type="pixels")),
    # Familiarity: N study patterns, then Q stream patterns to call seen (1) or new (0).
    EnvEntry("ebmm/Familiarity-v0", _FAMILIARITY),
    EnvEntry("ebmm/Familiarity-Easy-v0", _FAMILIARITY,
             dict(num_patterns=2, num_queries=4, pattern_size=8, distortion=0.0)),
    EnvEntry("ebmm/Familiarity-Medium-v0", _FAMILIARITY,
             dict(num_patterns=8, num_queries=8, pattern_size=32, distortion=0.25)),
    EnvEntry("ebmm/Familiarity-Hard-v0", _FAMILIARITY,
             dict(num_patterns=32, num_queries=32, pattern_size=64, distortion=0.5)),
    # DelayedRecall: a D-bit context, L distractor steps, then recall the context.
    EnvEntry("ebmm/DelayedRecall-v0", _DELAYED),
    EnvEntry("ebmm/DelayedRecall-Easy-v0", _DELAYED, dict(delay=3, pattern_size=2)),
    EnvEntry("ebmm/DelayedRecall-Medium-v0", _DELAYED, dict(delay=10, pattern_size=8)),
    EnvEntry("ebmm/DelayedRecall-Hard-v0", _DELAYED, dict(delay=100, pattern_size=32)),
    *(EnvEntry(f"ebmm/DelayedRecall-L{s['delay']}-v0", _DELAYED, dict(s)) for s in SWEEP),
)
# fmt: on

ENV_IDS: tuple[str, ...] = tuple(entry.id for entry in REGISTRY)
"""Every registered id, in table order."""

assert tuple(f"ebmm/DelayedRecall-L{d}-v0" for d in SWEEP_DELAYS) == ENV_IDS[-len(SWEEP_DELAYS) :]


POMDP_IDS: dict[str, str] = {"ebmm/CartPole-NoVel-v1": "CartPole-v1", "ebmm/Pendulum-NoVel-v1": "Pendulum-v1"}
"""Classic-control tasks with their velocities masked (:mod:`envs.pomdp`): registered id -> gymnasium id."""


def _register() -> None:
    for entry in REGISTRY:
        if entry.id not in gym.registry:  # importing twice (e.g. a reload) must not warn
            gym.register(id=entry.id, entry_point=entry.entry_point, kwargs=dict(entry.kwargs))
    for new_id, base_id in POMDP_IDS.items():
        if new_id not in gym.registry:  # the base id keeps its own TimeLimit
            gym.register(id=new_id, entry_point="envs.pomdp:make_masked", kwargs=dict(env_id=base_id))


_register()

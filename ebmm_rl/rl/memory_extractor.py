"""``MemoryExtractor``: any baseline memory of :mod:`ebmm_rl.baselines` as a Stable-Baselines3 features extractor.

Recipe::

    env = EpisodeMemoryWrapper(gym.make("ebmm/BinaryRecall-Easy-v0"))
    policy_kwargs = dict(features_extractor_class=MemoryExtractor, features_extractor_kwargs=dict(memory="memnet"))
    model = PPO("MultiInputPolicy", env, policy_kwargs=policy_kwargs)

The observation contract is :class:`~ebmm_rl.rl.EBMMExtractor`'s: for every observation the extractor writes the
episode's stored patterns (``"history"``, from :class:`~ebmm_rl.rl.wrappers.EpisodeMemoryWrapper`, padding skipped
with the baselines' ``pattern_mask``) into a fresh memory, recalls with the current pattern (``"query"``) and
returns features built from what it retrieved. The features are a function of the observation alone (PPO/A2C
re-evaluate stored observations in shuffled minibatches): every episode of a batch has its own state, and padding
leaves it exactly as it was.

Cost: every call writes each history from scratch (there is no cache as in ``EBMMExtractor``); the sequential
writers (MANN, LSTM, plasticity) take one step per stored pattern. Measured costs per env step: ``docs/baselines.md``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from gymnasium import spaces
from torch import Tensor, nn

from ebmm_rl.protocol import MEMORIES, build_memory
from ebmm_rl.rl.history import HistoryFeaturesExtractor, history_lengths, similarity_features

__all__ = [
    "DEFAULT_RL_BUDGETS",
    "DEFAULT_RL_MEMORY_KWARGS",
    "MAX_RL_NEURONS",
    "MEMORY_FEATURE_PARTS",
    "MemoryExtractor",
    "default_budget",
]

MEMORY_FEATURE_PARTS = ("retrieved", "query", "phase", "similarities")
"""Names of the parts :class:`MemoryExtractor`'s features can hold (no energies: baselines have none)."""


MAX_RL_NEURONS = 64
"""Largest plastic network of the default budget (:data:`DEFAULT_RL_BUDGETS`)."""


def _slots(max_patterns: int, pattern_size: int) -> int:
    """One slot per history row, ``L·(D + 2)`` floats: MANN's read and usage weight per slot included."""
    return max_patterns * (pattern_size + 2)


def _neurons(max_patterns: int, pattern_size: int) -> int:
    """One neuron per pattern entry, ``D(D + 1)/2`` floats, up to 64 neurons (2080 floats).

    The trace is ``n × n`` per episode and written one step at a time: over BinaryRecall-Hard's 32 patterns, 128
    neurons cost 0.24 s per PPO env step on one CPU thread, 64 neurons 0.04 s.
    """
    return min(pattern_size * (pattern_size + 1) // 2, MAX_RL_NEURONS * (MAX_RL_NEURONS + 1) // 2)


def _small_lstm(max_patterns: int, pattern_size: int) -> int:
    """128 floats: ``H = 64``, as ``agents.train --memory lstm``'s LSTM (the budget-sized one is far too slow)."""
    return 128


DEFAULT_RL_BUDGETS: dict[str, Callable[[int, int], int]] = {
    "memnet": _slots,
    "mann": _slots,
    "modern_hopfield": _slots,
    "plasticity": _neurons,
    "lstm": _small_lstm,
}
"""Default memory budget (float32 values per episode) of each memory, as ``fn(L, D)`` for ``L`` = ``max_patterns``
rows of ``D`` entries: the slot memories and MANN get one slot per history row (nothing is overwritten), the
plastic network one neuron per pattern entry (the wiring its initialisation assumes) up to 64, the LSTM ``H = 64``.
Other names get :func:`_slots`. ``memory_kwargs={"budget": ...}`` overrides it."""

DEFAULT_RL_MEMORY_KWARGS: dict[str, dict[str, Any]] = {"modern_hopfield": dict(learn_beta=True)}
"""Config overrides applied before ``memory_kwargs``: the modern Hopfield network's ``β`` is learned by the RL loss
(its only parameter; ``memory_kwargs={"learn_beta": False}`` keeps the untrained reference)."""


def default_budget(name: str, max_patterns: int, pattern_size: int) -> int:
    """The default budget of memory ``name`` for histories of ``max_patterns`` patterns of ``pattern_size`` entries."""
    return DEFAULT_RL_BUDGETS.get(name, _slots)(max_patterns, pattern_size)


class MemoryExtractor(HistoryFeaturesExtractor):
    """Writes each observation's episode history into a baseline memory and recalls with the current pattern.

    Features (``D`` = pattern size, ``L`` = ``max_patterns`` of the wrapper), concatenated in this order:

    * ``retrieved``: ``[D]`` the pattern recalled from the memory with the query;
    * ``query``: ``[D]`` the current pattern;
    * ``phase``: one-hot, if the observation has a ``"phase"`` key;
    * ``similarities`` (only with ``similarities=True``): ``[L]`` how close the retrieved pattern is to each stored
      pattern, z-scored over the episode's rows, as in :class:`~ebmm_rl.rl.EBMMExtractor`.

    ``features`` selects and orders the parts instead, as in :class:`~ebmm_rl.rl.EBMMExtractor` (there is no
    ``energies`` part). The result is passed through an optional ReLU MLP (``net_arch``).

    Args:
        observation_space: a ``Dict`` space made by :class:`~ebmm_rl.rl.wrappers.EpisodeMemoryWrapper`.
        memory: a name of :data:`ebmm_rl.protocol.MEMORIES` (``"memnet"``, ``"mann"``, ``"plasticity"``,
            ``"modern_hopfield"``, ``"lstm"``, ...), built for flat patterns of size ``D`` in the wrapper's
            ``data_range``; or a ready ``nn.Module`` memory (e.g. a meta-trained baseline from
            ``ebmm_rl.checkpoint.load_memory``) whose ``write`` takes ``pattern_mask`` and whose patterns have shape
            ``(D,)``.
        memory_kwargs: config overrides of a memory built by name (``budget`` included; default budgets:
            :data:`DEFAULT_RL_BUDGETS`), applied after :data:`DEFAULT_RL_MEMORY_KWARGS`.
        freeze_memory: set ``requires_grad=False`` on every parameter of the memory (the RL loss then does not
            change it).
        net_arch: hidden sizes of a ReLU MLP on top of the features; empty = the raw features.
        similarities: add the ``similarities`` features (see above).
        features: the parts to use, in order, from :data:`MEMORY_FEATURE_PARTS`; default: ``retrieved``,
            ``query``, ``phase`` (if the space has one), then ``similarities`` if ``similarities=True``.

    Raises:
        ValueError: the observation space lacks the wrapper's keys, the name is unknown or not an ``nn.Module``
            memory, or the memory does not take flat patterns of size ``D`` in the wrapper's range.
    """

    PARTS = MEMORY_FEATURE_PARTS

    def __init__(
        self,
        observation_space: spaces.Space,
        memory: str | nn.Module = "memnet",
        memory_kwargs: dict[str, Any] | None = None,
        freeze_memory: bool = False,
        net_arch: Sequence[int] = (),
        similarities: bool = False,
        features: Sequence[str] | None = None,
    ) -> None:
        super().__init__(observation_space, similarities, features)
        self.memory = self._build_memory(memory, memory_kwargs)
        if freeze_memory:
            self.memory.requires_grad_(False)
        self._build_head(observation_space, net_arch)

    # --------------------------------------------------------------------------------------------- building
    def _build_memory(self, memory: str | nn.Module, memory_kwargs: dict[str, Any] | None) -> nn.Module:
        D = self.pattern_size
        if isinstance(memory, str):
            if memory not in MEMORIES:
                raise ValueError(f"unknown memory {memory!r}; choose one of {sorted(MEMORIES)}")
            if not issubclass(MEMORIES[memory].cls, nn.Module):
                usable = sorted(n for n, e in MEMORIES.items() if issubclass(e.cls, nn.Module))
                raise ValueError(
                    f"{memory!r} ({MEMORIES[memory].cls.__name__}) is not an nn.Module memory with a masked write; "
                    f"choose one of {usable}"
                )
            overrides = {**DEFAULT_RL_MEMORY_KWARGS.get(memory, {}), **(memory_kwargs or {})}
            if tuple(overrides.get("data_shape", (D,))) != (D,):
                raise self._shape_error(tuple(overrides["data_shape"]))
            budget = int(overrides.pop("budget", default_budget(memory, self.max_patterns, D)))
            overrides.setdefault("data_range", self.data_range)
            memory = build_memory(memory, dim=D, budget=budget, **overrides)  # type: ignore[assignment]
        elif memory_kwargs:
            raise ValueError("memory_kwargs configure a memory built by name; they cannot be combined with a module")
        if not isinstance(memory, nn.Module):
            raise ValueError(f"memory must be a name of ebmm_rl.protocol.MEMORIES or an nn.Module, got {memory!r}")
        write = getattr(memory, "write", None)
        if write is None or not callable(getattr(memory, "recall", None)):
            raise ValueError(f"{type(memory).__name__} lacks write/recall: it does not follow AssociativeMemory")
        if "pattern_mask" not in inspect.signature(write).parameters:
            raise ValueError(
                f"{type(memory).__name__}.write takes no pattern_mask, which the padded history needs; use a memory "
                "of ebmm_rl.baselines"
            )
        shape = tuple(getattr(memory, "data_shape", ()))
        if shape != (D,):
            raise self._shape_error(shape)
        data_range = getattr(getattr(memory, "config", None), "data_range", None)
        if data_range is not None and tuple(float(v) for v in data_range) != self.data_range:
            raise ValueError(
                f"the memory reads in data_range {tuple(data_range)} but the observation's patterns lie in "
                f"{self.data_range}; wrap the env with EpisodeMemoryWrapper(env, data_range={tuple(data_range)})"
            )
        return memory

    def _shape_error(self, shape: tuple[int, ...]) -> ValueError:
        D = self.pattern_size
        return ValueError(
            f"the memory stores patterns of shape {shape} but the observation's history rows have shape ({D},); "
            f"MemoryExtractor needs a memory of flat patterns of size {D} (data_shape=({D},))"
        )

    # ---------------------------------------------------------------------------------------------- forward
    def _raw_features(self, obs: dict[str, Tensor]) -> Tensor:
        history, query = obs["history"], obs["query"]  # [B, L, D], [B, D]
        lengths = history_lengths(obs["history_len"], self.max_patterns)  # [B]
        state = self.write(history, lengths)
        retrieved = self.memory.recall(query.unsqueeze(1), state)[:, 0]  # [B, D]
        parts = {
            "retrieved": lambda: retrieved,
            "query": lambda: query,
            "phase": lambda: obs["phase"].reshape(query.shape[0], -1),  # [B, 3] one-hot
            "similarities": lambda: similarity_features(retrieved, history, lengths),
        }
        return torch.cat([parts[name]() for name in self.features], dim=1)

    def write(self, history: Tensor, lengths: Tensor) -> Any:
        """Write each episode's ``history[:length]`` into a fresh memory; padding is masked out.

        Columns past the longest history are padding in every row and are not passed; at least one column is, so
        that an all-empty batch (the dry pass, first steps of episodes) gets fresh, empty memories.

        Args:
            history: ``[B, L, D]`` stored patterns, padded.
            lengths: ``[B]`` valid rows of each history.

        Returns:
            The memory's state, ``B`` episodes.
        """
        longest = max(int(lengths.max()), 1)
        mask = torch.arange(longest, device=history.device) < lengths.unsqueeze(1)  # [B, longest]
        return self.memory.write(history[:, :longest], pattern_mask=mask)

"""Gymnasium wrappers that let a stateless SB3 feature extractor use an episodic memory.

SB3 stores observations and re-evaluates them later in shuffled minibatches, so a feature extractor must
compute its features from the observation alone. :class:`EpisodeMemoryWrapper` therefore adds to every
observation what the memory must hold at that step (the episode's patterns so far), much as frame stacking
adds the last frames. :class:`MultiBinaryToMultiDiscrete` works around sb3-contrib's ``RecurrentPPO`` crash on
``MultiBinary`` actions (``docs/envs.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["WRITE_PHASE", "EpisodeMemoryWrapper", "MultiBinaryToMultiDiscrete"]

WRITE_PHASE = 0
"""Value of the ``"phase"`` observation on a step whose pattern is to be stored (``envs.Phase.WRITE``)."""
QUERY_PHASE = 1
"""Value of the ``"phase"`` observation on a query step (``envs.Phase.QUERY``)."""


class EpisodeMemoryWrapper(gym.ObservationWrapper):
    """Adds the episode's stored patterns and the current query to a ``Dict`` observation.

    Keys added to the observation (``D`` = number of entries of ``"pattern"``, ``L`` = ``max_patterns``):

    * ``"history"``: ``Box(lo, hi, (L, D), float32)``: row ``i`` is the flattened ``"pattern"`` of the ``i``-th
      step of this episode *before the current one* whose ``"phase"`` is in ``write_phases``; rows from
      ``history_len`` on are padding (zeros, or the value of ``data_range`` nearest to zero).
    * ``"history_len"``: ``Discrete(L + 1)``: the number of valid rows of ``"history"``.
    * ``"query"``: ``Box(lo, hi, (D,), float32)``: the current ``"pattern"``, flattened and mapped like the rows
      of ``"history"`` (a memory reads with it).

    The current step's pattern enters the history at the *next* step: a memory reads with a pattern before it
    writes it (online order), so on a query step that is also stored (``Familiarity``) the query is not yet in
    memory. The pattern of the final observation of an episode is never stored.

    Values are mapped linearly from the pattern space's bounds (``[0, 255]`` for ``uint8`` images) onto
    ``data_range``, the box a memory reads in (``EBMMConfig.data_range``). By default ``uint8`` images become
    ``[0, 1]`` (divided by 255) and float patterns keep their bounds (``+-1`` bits stay ``+-1``, ``[0, 1]``
    images stay as they are).

    Args:
        env: an environment with a ``Dict`` observation holding ``"pattern"`` (a ``Box`` with finite bounds) and
            ``"phase"`` (``Discrete``); every ``envs`` memory probe qualifies.
        max_patterns: ``L``, rows of ``"history"``. ``None`` computes it from a memory probe's schedule
            (``num_write``, ``num_queries``, ``delay`` of ``env.unwrapped``). More stored patterns than ``L`` in
            one episode raise a ``ValueError``.
        write_phases: phases whose patterns are stored (default: write steps only). ``Familiarity``, whose new
            stream patterns may be repeated later, wants ``(0, 1)`` (write and query steps).
        data_range: ``(lo, hi)`` to map pattern values onto; ``None``: see above.

    Raises:
        ValueError: the observation space is not such a ``Dict``, or ``max_patterns`` cannot be inferred.
    """

    def __init__(
        self,
        env: gym.Env,
        max_patterns: int | None = None,
        write_phases: Sequence[int] = (WRITE_PHASE,),
        data_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or "pattern" not in space.spaces or "phase" not in space.spaces:
            raise ValueError(
                f"EpisodeMemoryWrapper needs a Dict observation with 'pattern' and 'phase' keys (as every "
                f"ebmm/... environment has), got {space}"
            )
        for key in ("history", "history_len", "query"):
            if key in space.spaces:
                raise ValueError(f"the observation already has a {key!r} key: is the env wrapped twice?")
        pattern_space = space["pattern"]
        if not isinstance(pattern_space, spaces.Box):
            raise ValueError(f"'pattern' must be a Box space, got {pattern_space}")
        if not isinstance(space["phase"], spaces.Discrete):
            raise ValueError(f"'phase' must be a Discrete space, got {space['phase']}")
        self.write_phases = tuple(int(p) for p in write_phases)
        if not self.write_phases:
            raise ValueError("write_phases is empty: nothing would ever be stored; use e.g. (0,) for write steps")
        self.max_patterns = self._infer_max_patterns(env) if max_patterns is None else int(max_patterns)
        if self.max_patterns < 1:
            raise ValueError(f"max_patterns must be >= 1, got {self.max_patterns}")

        if pattern_space.dtype == np.uint8:
            source = (0.0, 255.0)
            default_range = (0.0, 1.0)
        else:
            source = (float(np.min(pattern_space.low)), float(np.max(pattern_space.high)))
            default_range = source
            if not np.isfinite(source).all() or source[0] >= source[1]:
                raise ValueError(
                    f"'pattern' needs finite bounds low < high to be mapped into a memory's data range, got "
                    f"low={source[0]}, high={source[1]}; give the env's pattern space finite bounds"
                )
        target = default_range if data_range is None else (float(data_range[0]), float(data_range[1]))
        if target[0] >= target[1]:
            raise ValueError(f"data_range must be (low, high) with low < high, got {data_range}")
        self.data_range = target
        self._scale = (target[1] - target[0]) / (source[1] - source[0])
        self._offset = target[0] - source[0] * self._scale
        self._identity = source == target
        self.pattern_size = int(np.prod(pattern_space.shape))
        self._pad = float(np.clip(0.0, *target))

        lo, hi = target
        L, D = self.max_patterns, self.pattern_size
        self.observation_space = spaces.Dict(
            {
                **space.spaces,
                "history": spaces.Box(lo, hi, (L, D), np.float32),
                "history_len": spaces.Discrete(L + 1),
                "query": spaces.Box(lo, hi, (D,), np.float32),
            }
        )
        self._history = np.full((L, D), self._pad, dtype=np.float32)  # [L, D]
        self._length = 0
        self._pending: np.ndarray | None = None  # [D] pattern of the last step, stored at the next one

    def _infer_max_patterns(self, env: gym.Env) -> int:
        base = env.unwrapped
        counts = {0: "num_write", 1: "num_queries", 2: "delay"}
        try:
            return sum(int(getattr(base, counts[p])) for p in set(self.write_phases))
        except (AttributeError, KeyError):
            raise ValueError(
                f"cannot infer max_patterns for {type(base).__name__} with write_phases={self.write_phases}; "
                "pass max_patterns=<largest number of patterns stored in one episode>"
            ) from None

    def map_pattern(self, pattern: np.ndarray) -> np.ndarray:
        """``pattern`` (any shape of the pattern space) flattened and mapped into ``data_range``: ``[D]``."""
        flat = np.asarray(pattern, dtype=np.float32).reshape(-1)
        if self._identity:
            return flat.copy()
        return np.clip(flat * np.float32(self._scale) + np.float32(self._offset), *self.data_range).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Reset the environment and empty the history."""
        self._history.fill(self._pad)
        self._length = 0
        self._pending = None
        return super().reset(seed=seed, options=options)

    def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
        """Store the previous step's pattern if its phase asked for it, then add the keys to ``observation``."""
        if self._pending is not None:
            if self._length >= self.max_patterns:
                raise ValueError(
                    f"more than max_patterns={self.max_patterns} patterns to store in one episode; "
                    "create EpisodeMemoryWrapper with a larger max_patterns"
                )
            self._history[self._length] = self._pending
            self._length += 1
            self._pending = None
        query = self.map_pattern(observation["pattern"])
        if int(observation["phase"]) in self.write_phases:
            self._pending = query
        return {
            **observation,
            "history": self._history.copy(),
            "history_len": self._length,
            "query": query.copy(),
        }


class MultiBinaryToMultiDiscrete(gym.ActionWrapper):
    """Shows a ``MultiBinary(shape)`` action space as ``MultiDiscrete`` with 2 choices per entry.

    sb3-contrib 2.9.2's ``RecurrentPPO`` crashes on ``MultiBinary`` actions (its recurrent buffer hands int8
    actions to the Bernoulli log-probability); a categorical over ``{0, 1}`` per entry is the same policy class.
    Actions are passed on as ``int8`` arrays of the original shape.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        if not isinstance(env.action_space, spaces.MultiBinary):
            raise ValueError(f"MultiBinaryToMultiDiscrete needs a MultiBinary action space, got {env.action_space}")
        self._shape = env.action_space.shape
        self.action_space = spaces.MultiDiscrete(np.full(self._shape, 2, dtype=np.int64))

    def action(self, action: np.ndarray) -> np.ndarray:
        """``[*shape]`` integers in {0, 1} -> the same values as ``int8``."""
        return np.asarray(action, dtype=np.int8).reshape(self._shape)

"""BinaryRecall: store random +-1 patterns, then complete a distorted one (the paper's Table 1 task)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from envs.core import (
    Episode,
    MemoryProbeEnv,
    check_fraction,
    check_int,
    random_indices,
    replace_entries,
    sign_patterns,
)

__all__ = ["BinaryRecallEnv"]


class BinaryRecallEnv(MemoryProbeEnv):
    """Associative recall of random binary patterns.

    ## Description
    The reinforcement-learning form of the random-binary-pattern experiment of "Meta-Learning Deep
    Energy-Based Memory Models" (Table 1: 128-bit patterns, half of the bits corrupted). In the
    writing phase the agent sees ``num_patterns`` random patterns of ``pattern_size`` bits (each bit
    -1 or +1 with equal probability), one per step. After ``delay`` blank steps come
    ``num_queries`` queries: each is one of the stored patterns (drawn uniformly, with replacement)
    in which ``round(distortion * pattern_size)`` randomly chosen bits were replaced by random +-1
    values. The agent answers with the stored pattern.

    ## Action Space
    ``MultiBinary(pattern_size)``: the recalled pattern, 1 meaning +1 and 0 meaning -1. Arrays of
    any numeric dtype holding only 0 and 1 are accepted (SB3 passes float arrays). The action is
    checked but ignored outside the query phase.

    ## Observation Space
    ``Dict``:

    * ``"pattern"``: ``Box(-1, 1, (pattern_size,), float32)``: the stored pattern (writing phase), the
      query (query phase), zeros (delay steps and the final observation).
    * ``"phase"``: ``Discrete(3)``: ``0`` write, ``1`` query, ``2`` delay (:class:`envs.core.Phase`).
    * ``"step"``: ``Discrete(T + 1)``: step index, ``T = num_patterns + delay + num_queries``.

    ## Rewards
    At each query the fraction of bits answered right, in [0, 1]; 0 elsewhere. The maximum return
    is ``num_queries``. Copying the query, the best memoryless answer, gets
    ``1 - round(distortion * pattern_size) / (2 * pattern_size)`` per query in expectation (the
    ``chance_return``); a random policy gets 0.5 per query.

    ## Starting State
    New random patterns, query targets and distortions, drawn from ``self.np_random`` at reset.

    ## Episode End
    Terminates after the last query (``T`` steps). No truncation.

    ## Arguments
    ```python
    gymnasium.make("ebmm/BinaryRecall-v0", num_patterns=8, pattern_size=32, distortion=0.25,
                   num_queries=1, delay=0, render_mode=None)
    ```
    * ``num_patterns``: patterns stored per episode (N), >= 1.
    * ``pattern_size``: bits per pattern (D), >= 1.
    * ``distortion``: fraction of the query's bits replaced by random +-1 values, in [0, 1].
    * ``num_queries``: queries per episode, >= 1.
    * ``delay``: blank steps between the last stored pattern and the first query, >= 0.
    * ``render_mode``: ``None``, ``"ansi"`` (text) or ``"rgb_array"`` (the pattern as cells).

    ``get_state()`` adds ``"patterns"`` ``[N, D]``, ``"queries"`` ``[Q, D]``, ``"targets"`` ``[Q, D]``
    (the stored pattern behind each query, +-1) and ``"target_indices"`` ``[Q]`` to the common keys.

    ## Version History
    * v0: initial version.
    """

    def __init__(
        self,
        num_patterns: int = 8,
        pattern_size: int = 32,
        distortion: float = 0.25,
        num_queries: int = 1,
        delay: int = 0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode)
        self.num_patterns = check_int("num_patterns", num_patterns, 1)
        self.pattern_size = check_int("pattern_size", pattern_size, 1)
        self.distortion = check_fraction("distortion", distortion)
        self.num_distorted = int(round(self.distortion * self.pattern_size))
        self.pattern_space = spaces.Box(-1.0, 1.0, shape=(self.pattern_size,), dtype=np.float32)
        self.action_space = spaces.MultiBinary(self.pattern_size)
        self._setup_schedule(self.num_patterns, check_int("delay", delay, 0), check_int("num_queries", num_queries, 1))

    @property
    def max_return(self) -> float:  # noqa: D102
        return float(self.num_queries)

    @property
    def chance_return(self) -> float:  # noqa: D102
        return self.num_queries * (1.0 - self.num_distorted / (2.0 * self.pattern_size))

    def _sample_episode(self, rng: np.random.Generator) -> Episode:
        patterns = sign_patterns(rng, self.num_patterns, self.pattern_size)  # [N, D]
        target_indices = random_indices(rng, self.num_patterns, self.num_queries)  # [Q]
        targets = patterns[target_indices]  # [Q, D]
        queries = replace_entries(rng, targets, self.num_distorted)  # [Q, D]
        answers: list[Any] = [None] * (self.num_write + self.delay)
        answers += [(row > 0).astype(np.int8) for row in targets]
        state = {
            "patterns": patterns,
            "queries": queries,
            "targets": targets,
            "target_indices": target_indices,
        }
        return Episode(self._assemble(patterns, queries), answers, state)

    def _check_action(self, action: Any) -> None:
        self._check_binary(action, self.pattern_size)

    def _score(self, action: Any, answer: np.ndarray) -> float:
        return np.count_nonzero(action == answer) / self.pattern_size  # exactly 1.0 when all are right

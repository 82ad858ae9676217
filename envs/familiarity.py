"""Familiarity: say whether each pattern of a stream was seen before (recognition, not recall)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from envs.core import (
    Episode,
    MemoryProbeEnv,
    check_fraction,
    check_int,
    distinct_sign_patterns,
    replace_entries,
)

__all__ = ["FamiliarityEnv"]


class FamiliarityEnv(MemoryProbeEnv):
    """Continuous recognition of random binary patterns.

    ## Description
    Probes recognition: whether a memory can tell stored patterns from new ones, as the energy of
    an energy-based memory does (the paper's Figure 6: memories have lower energy than
    non-memories). The episode first shows ``num_patterns`` random +-1 patterns of
    ``pattern_size`` bits (writing phase, a study list). After ``delay`` blank steps comes a stream
    of ``num_queries`` patterns; at every one of them the agent answers seen (1) or new (0). With
    probability ``repeat_prob``, independently at each query step, the pattern is a repeat of a
    pattern shown earlier in the episode (uniform over all earlier new patterns, study list
    included) with ``round(distortion * pattern_size)`` bits replaced by random +-1 values;
    otherwise it is a new pattern, different from every pattern before it. New patterns of the
    stream are stored too: they may be repeated later.

    The design leaves a memoryless agent nothing to use: the chance of a repeat is the same at
    every query step, and a distorted repeat of a uniformly random pattern is itself uniformly
    random.

    ## Action Space
    ``Discrete(2)``: 1 = seen before, 0 = new. Python ints, numpy integers and 0-d integer arrays are
    accepted. The action is checked but ignored outside the query phase.

    ## Observation Space
    ``Dict``:

    * ``"pattern"``: ``Box(-1, 1, (pattern_size,), float32)``: the study pattern or stream pattern;
      zeros on delay steps and in the final observation.
    * ``"phase"``: ``Discrete(3)``: ``0`` write, ``1`` query, ``2`` delay (:class:`envs.core.Phase`).
    * ``"step"``: ``Discrete(T + 1)``: step index, ``T = num_patterns + delay + num_queries``.

    ## Rewards
    1 per right answer in the stream, else 0. The maximum return is ``num_queries``; the best
    memoryless policy (always answering the more frequent label) gets
    ``num_queries * max(repeat_prob, 1 - repeat_prob)`` in expectation.

    ## Starting State
    New patterns, repeat decisions and distortions, drawn from ``self.np_random`` at reset.

    ## Episode End
    Terminates after the last stream pattern (``T`` steps). No truncation.

    ## Arguments
    ```python
    gymnasium.make("ebmm/Familiarity-v0", num_patterns=8, num_queries=8, pattern_size=32,
                   distortion=0.25, repeat_prob=0.5, delay=0, render_mode=None)
    ```
    * ``num_patterns``: length of the study list, >= 1.
    * ``num_queries``: length of the stream to answer, >= 1.
    * ``pattern_size``: bits per pattern, >= 1, with ``num_patterns + num_queries <= 2**pattern_size``.
    * ``distortion``: fraction of a repeat's bits replaced by random +-1 values, in [0, 1].
    * ``repeat_prob``: probability that a stream pattern is a repeat, in [0, 1].
    * ``delay``: blank steps between the study list and the stream, >= 0.
    * ``render_mode``: ``None``, ``"ansi"`` (text) or ``"rgb_array"`` (the pattern as cells).

    ``get_state()`` adds ``"study"`` ``[N, D]``, ``"originals"`` ``[M, D]`` (every new pattern of the
    episode in order, the study list first), ``"queries"`` ``[Q, D]`` (the stream as shown),
    ``"labels"`` ``[Q]`` (1 seen, 0 new) and ``"sources"`` ``[Q]`` (row of ``originals`` a repeat
    copies, -1 for a new pattern) to the common keys.

    ## Version History
    * v0: initial version.
    """

    def __init__(
        self,
        num_patterns: int = 8,
        num_queries: int = 8,
        pattern_size: int = 32,
        distortion: float = 0.25,
        repeat_prob: float = 0.5,
        delay: int = 0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode)
        self.num_patterns = check_int("num_patterns", num_patterns, 1)
        num_queries = check_int("num_queries", num_queries, 1)
        self.pattern_size = check_int("pattern_size", pattern_size, 1)
        if self.pattern_size <= 62 and self.num_patterns + num_queries > 2**self.pattern_size:
            raise ValueError(
                f"num_patterns + num_queries = {self.num_patterns + num_queries} new patterns do not fit "
                f"in {2**self.pattern_size} different patterns of pattern_size={self.pattern_size} bits: "
                "increase pattern_size or shorten the episode."
            )
        self.distortion = check_fraction("distortion", distortion)
        self.repeat_prob = check_fraction("repeat_prob", repeat_prob)
        self.num_distorted = int(round(self.distortion * self.pattern_size))
        self.pattern_space = spaces.Box(-1.0, 1.0, shape=(self.pattern_size,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._setup_schedule(self.num_patterns, check_int("delay", delay, 0), num_queries)

    @property
    def max_return(self) -> float:  # noqa: D102
        return float(self.num_queries)

    @property
    def chance_return(self) -> float:  # noqa: D102
        return self.num_queries * max(self.repeat_prob, 1.0 - self.repeat_prob)

    def _sample_episode(self, rng: np.random.Generator) -> Episode:
        n, q = self.num_patterns, self.num_queries
        fresh = distinct_sign_patterns(rng, n + q, self.pattern_size)  # [N + Q, D], used in order
        u = rng.random((2, q))  # [2, Q]: repeat decision, choice of the repeated pattern
        labels = (u[0] < self.repeat_prob).astype(np.int64)  # [Q] 1 = seen
        sources = np.full(q, -1, dtype=np.int64)  # [Q]
        shown_rows = np.empty(q, dtype=np.int64)  # [Q] row of `fresh` behind each stream pattern
        num_new = n
        for j in range(q):
            if labels[j]:
                sources[j] = int(u[1, j] * num_new)
                shown_rows[j] = sources[j]
            else:
                shown_rows[j] = num_new
                num_new += 1
        queries = fresh[shown_rows]  # [Q, D]
        repeats = labels.astype(bool)
        if self.num_distorted and repeats.any():
            queries[repeats] = replace_entries(rng, queries[repeats], self.num_distorted)

        answers: list[Any] = [None] * (self.num_write + self.delay) + [int(x) for x in labels]
        state = {
            "study": fresh[:n],
            "originals": fresh[:num_new],
            "queries": queries,
            "labels": labels,
            "sources": sources,
        }
        return Episode(self._assemble(fresh[:n], queries), answers, state)

    def _check_action(self, action: Any) -> None:
        self._check_discrete(action, 2)

    def _score(self, action: Any, answer: int) -> float:
        return 1.0 if int(action) == answer else 0.0

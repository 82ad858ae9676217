"""DelayedRecall: remember one context across a delay of L distractor steps; a sweep over L.

The sweep follows bsuite's ``memory_len`` experiment: :data:`SWEEP` lists the settings (setting 0,
the shortest delay, doubles as a smoke test), each registered as ``ebmm/DelayedRecall-L{L}-v0``,
and :func:`score` turns the returns of an agent on the sweep into one number in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.core import Episode, MemoryProbeEnv, check_int, sign_patterns

__all__ = ["LEARNING_THRESH", "SWEEP", "SWEEP_DELAYS", "DelayedRecallEnv", "regret_ratio", "score"]

SWEEP_DELAYS: tuple[int, ...] = (1, 3, 10, 30, 100)
"""Delays L of the sweep, each registered as ``ebmm/DelayedRecall-L{L}-v0`` (other knobs: defaults)."""

SWEEP: tuple[dict[str, int], ...] = tuple({"delay": d} for d in SWEEP_DELAYS)
"""Keyword arguments of each sweep setting; setting 0 is the cheapest and doubles as a smoke test."""

LEARNING_THRESH = 0.75
"""A delay counts as solved when its :func:`regret_ratio` is below this (bsuite's threshold)."""


class DelayedRecallEnv(MemoryProbeEnv):
    """Recall of one context pattern after a delay filled with distractors.

    ## Description
    A memory-length probe in the style of bsuite's ``memory_len``. The first step shows a context:
    a random +-1 pattern of ``pattern_size`` bits (writing phase). Then come ``delay`` distractor
    steps (delay phase), each showing a fresh random +-1 pattern (or zeros if ``distractors`` is
    False) that must not be confused with the context. The last step is the query: a blank pattern
    in the query phase, asking for the context.

    ## Action Space
    ``MultiBinary(pattern_size)``: the context, 1 meaning +1 and 0 meaning -1. Arrays of any numeric
    dtype holding only 0 and 1 are accepted. The action is checked but ignored before the query.

    ## Observation Space
    ``Dict``:

    * ``"pattern"``: ``Box(-1, 1, (pattern_size,), float32)``: the context (step 0), distractors
      (delay steps), zeros (the query and the final observation).
    * ``"phase"``: ``Discrete(3)``: ``0`` write, ``1`` query, ``2`` delay (:class:`envs.core.Phase`).
    * ``"step"``: ``Discrete(T + 1)``: step index, ``T = delay + 2``.

    ## Rewards
    At the query, the fraction of context bits answered right, in [0, 1]; 0 elsewhere. The maximum
    return is 1; without a memory the expected return is 0.5 whatever the policy.

    ## Starting State
    A new context and new distractors, drawn from ``self.np_random`` at reset.

    ## Episode End
    Terminates after the query (``delay + 2`` steps). No truncation.

    ## Arguments
    ```python
    gymnasium.make("ebmm/DelayedRecall-v0", delay=10, pattern_size=8, distractors=True,
                   render_mode=None)
    ```
    * ``delay``: number of distractor steps L between context and query, >= 0.
    * ``pattern_size``: bits in the context, >= 1.
    * ``distractors``: show random patterns during the delay (True) or blank ones (False).
    * ``render_mode``: ``None``, ``"ansi"`` (text) or ``"rgb_array"`` (the pattern as cells).

    ``get_state()`` adds ``"context"`` ``[D]`` and ``"distractors"`` ``[L, D]`` to the common keys.

    ## Version History
    * v0: initial version.
    """

    def __init__(
        self,
        delay: int = 10,
        pattern_size: int = 8,
        distractors: bool = True,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode)
        self.pattern_size = check_int("pattern_size", pattern_size, 1)
        if not isinstance(distractors, bool | np.bool_):
            raise ValueError(f"distractors must be True or False, got {distractors!r}.")
        self.distractors = bool(distractors)
        self.pattern_space = spaces.Box(-1.0, 1.0, shape=(self.pattern_size,), dtype=np.float32)
        self.action_space = spaces.MultiBinary(self.pattern_size)
        self._setup_schedule(1, check_int("delay", delay, 0), 1)

    @property
    def max_return(self) -> float:  # noqa: D102
        return 1.0

    @property
    def chance_return(self) -> float:  # noqa: D102
        return 0.5

    def _sample_episode(self, rng: np.random.Generator) -> Episode:
        patterns = sign_patterns(rng, 1 + self.delay, self.pattern_size)  # [1 + L, D]
        context, distractors = patterns[:1], patterns[1:]
        if not self.distractors:
            distractors = np.zeros_like(distractors)
        query = np.zeros((1, self.pattern_size), dtype=np.float32)  # [1, D] nothing is known
        answers: list[Any] = [None] * (1 + self.delay) + [(context[0] > 0).astype(np.int8)]
        state = {"context": context[0], "distractors": distractors}
        return Episode(self._assemble(context, query, distractors), answers, state)

    def _check_action(self, action: Any) -> None:
        self._check_binary(action, self.pattern_size)

    def _score(self, action: Any, answer: np.ndarray) -> float:
        return np.count_nonzero(action == answer) / self.pattern_size  # exactly 1.0 when all are right


def regret_ratio(mean_return: float, chance: float = 0.5, best: float = 1.0) -> float:
    """Regret relative to chance: 0 for a perfect agent, 1 for one at chance level.

    Args:
        mean_return: average episode return at one setting.
        chance: the return without memory (0.5 for ``DelayedRecall``).
        best: the maximum return (1 for ``DelayedRecall``).
    """
    return (best - mean_return) / (best - chance)


def score(returns: Mapping[int, Sequence[float] | float], thresh: float = LEARNING_THRESH) -> float:
    """One number for an agent on the delay sweep: the fraction of delays it has solved.

    As in bsuite's ``memory_len``, a delay counts as solved when the agent's regret relative to
    chance, :func:`regret_ratio` of its mean return, is below ``thresh``; with the default 0.75 that
    is a mean return above 0.625. Delays missing from ``returns`` count as unsolved.

    Args:
        returns: for each delay L of :data:`SWEEP_DELAYS`, the episode returns (typically the last
            episodes of training, or evaluation episodes), or their mean.
        thresh: regret-ratio threshold below which a delay counts as solved.

    Returns:
        Fraction of :data:`SWEEP_DELAYS` solved, in [0, 1].

    Raises:
        ValueError: a key is not a delay of the sweep, or a list of returns is empty.
    """
    unknown = sorted(set(returns) - set(SWEEP_DELAYS))
    if unknown:
        raise ValueError(f"score() takes returns keyed by the sweep delays {SWEEP_DELAYS}, got {unknown}.")
    solved = 0
    for delay in SWEEP_DELAYS:
        if delay not in returns:
            continue
        values = np.atleast_1d(np.asarray(returns[delay], dtype=np.float64))
        if values.size == 0:
            raise ValueError(f"No returns given for delay {delay}; pass at least one episode return.")
        solved += regret_ratio(float(values.mean())) < thresh
    return solved / len(SWEEP_DELAYS)

"""Shared machinery of the memory-probe environments: phases, the episode schedule, checks.

Every environment in :mod:`envs` is a :class:`MemoryProbeEnv`. An episode is a fixed schedule of
``T = num_write + delay + num_queries`` decision steps::

    WRITE x num_write   ->   DELAY x delay   ->   QUERY x num_queries

* ``WRITE``: a pattern to be stored is shown; the action is checked but ignored; reward 0.
* ``DELAY``: nothing to store (a blank pattern, or a distractor in ``DelayedRecall``); reward 0.
* ``QUERY``: a query is shown; the action is the answer and is scored with a reward in [0, 1].

Observations are always ``Dict`` spaces with the same three keys, so that one policy class
(SB3's ``MultiInputPolicy``) and one memory extractor work on every task:

* ``"pattern"``: the content of the step (``Box``; its shape and range depend on the task).
* ``"phase"``: ``Discrete(3)``, a :class:`Phase` value (``WRITE=0``, ``QUERY=1``, ``DELAY=2``).
* ``"step"``: ``Discrete(T + 1)``, the index of the step within the episode, ``0 .. T``; the value
  ``T`` appears only in the final observation, which follows the last answer and is never acted on
  (its pattern is blank and its phase is ``QUERY``).

The whole episode is drawn at :meth:`MemoryProbeEnv.reset` from ``self.np_random``; :meth:`step`
only indexes precomputed arrays, checks the action and scores answers, so it is cheap and has no
randomness. Episodes end by termination after the last query; there is no truncation.
"""

from __future__ import annotations

import abc
from enum import IntEnum
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = [
    "Episode",
    "MemoryProbeEnv",
    "Phase",
    "check_fraction",
    "check_int",
    "distinct_sign_patterns",
    "random_indices",
    "replace_entries",
    "sign_patterns",
]


class Phase(IntEnum):
    """What a step asks of the agent; shown in every observation under ``"phase"``."""

    WRITE = 0
    """A pattern to store; the action is ignored and the reward is 0."""
    QUERY = 1
    """A query; the action is the answer and it is scored."""
    DELAY = 2
    """Nothing to store (blank or a distractor); the action is ignored and the reward is 0."""


class Episode:
    """One episode, fully drawn at reset.

    Attributes:
        patterns: ``[T + 1, *pattern_shape]`` the ``"pattern"`` observation of every step; row ``T``
            is the final (blank) observation.
        answers: length ``T``; the best action at each scored step, ``None`` at unscored steps.
        state: what should have been remembered, returned (copied) by ``get_state()``.
    """

    __slots__ = ("answers", "patterns", "state")

    def __init__(self, patterns: np.ndarray, answers: list[Any], state: dict[str, Any]) -> None:
        self.patterns = patterns
        self.answers = answers
        self.state = state


MAX_EPISODE_LENGTH = 1_000_000
"""Longest episode an environment accepts (``num_write + delay + num_queries`` steps)."""


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Return ``value`` as an ``int`` after checking ``low <= value (<= high)``.

    Raises:
        ValueError: ``value`` is not an integer or is out of range; the message names the range.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}.")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {value}.")
    return int(value)


def check_fraction(name: str, value: Any, *, allow_zero: bool = True, allow_one: bool = True) -> float:
    """Return ``value`` as a ``float`` after checking it is a fraction in [0, 1].

    Raises:
        ValueError: ``value`` is not a real number in the allowed interval.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r} of type {type(value).__name__}.")
    value = float(value)
    lo_ok = value >= 0.0 if allow_zero else value > 0.0
    hi_ok = value <= 1.0 if allow_one else value < 1.0
    if not (lo_ok and hi_ok and np.isfinite(value)):
        interval = ("[" if allow_zero else "(") + "0, 1" + ("]" if allow_one else ")")
        raise ValueError(f"{name} must be a fraction in {interval}, got {value}.")
    return value


def sign_patterns(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Draw ``n`` random patterns of ``size`` entries, each -1 or +1 with equal probability.

    Returns:
        ``[n, size]`` float32 array of +-1.
    """
    # rng.random is several times cheaper per call than rng.integers; resets are on the hot path.
    return np.where(rng.random((n, size)) < 0.5, _MINUS_ONE, _PLUS_ONE)


def distinct_sign_patterns(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Draw ``n`` pairwise different random +-1 patterns (needs ``n <= 2**size``).

    Duplicates are redrawn, so the rows are uniform over sets of distinct patterns.

    Returns:
        ``[n, size]`` float32 array of +-1.
    """
    patterns = sign_patterns(rng, n, size)
    if size > 62:  # a collision has probability below n**2 * 2**-63: skip the check
        return patterns
    weights = np.left_shift(1, np.arange(size, dtype=np.int64))  # [D] bit values of a pattern code
    while True:
        seen: set[int] = set()
        duplicate = np.zeros(n, dtype=bool)
        for i, code in enumerate(((patterns > 0) @ weights).tolist()):  # [n] integer codes
            if code in seen:
                duplicate[i] = True  # keep the first copy, redraw later ones: sampling without replacement
            seen.add(code)
        if not duplicate.any():
            return patterns
        patterns[duplicate] = sign_patterns(rng, int(duplicate.sum()), size)


def random_indices(rng: np.random.Generator, high: int, size: int) -> np.ndarray:
    """Draw ``size`` independent uniform integers in ``[0, high)`` (int64, ``[size]``)."""
    return (rng.random(size) * high).astype(np.int64)


def replace_entries(rng: np.random.Generator, patterns: np.ndarray, count: int) -> np.ndarray:
    """Return a copy of ``patterns`` with ``count`` random entries per row replaced by random +-1.

    This is the paper's distortion of binary patterns: a replaced bit keeps its value with
    probability 1/2, so ``count`` replaced bits flip ``count / 2`` bits on average.

    Args:
        rng: random generator (the environment's ``np_random``).
        patterns: ``[Q, D]`` patterns to distort.
        count: number of entries per row to replace, ``0 <= count <= D``.

    Returns:
        ``[Q, D]`` distorted copy.
    """
    out = patterns.copy()
    if count == 0:
        return out
    q, d = patterns.shape
    where = np.argsort(rng.random((q, d)), axis=1)[:, :count]  # [Q, count] distinct positions per row
    out[np.arange(q)[:, None], where] = sign_patterns(rng, q, count)
    return out


_PHASE_COLOURS = {Phase.WRITE: (0, 160, 0), Phase.QUERY: (0, 90, 220), Phase.DELAY: (160, 160, 160)}
_PLUS_ONE = np.float32(1.0)
_MINUS_ONE = np.float32(-1.0)


class MemoryProbeEnv(gym.Env[dict[str, Any], Any], abc.ABC):
    """Base class of the memory probes: phase schedule, observation dict, action checks, rendering.

    Subclasses set ``action_space`` and ``pattern_space``, call :meth:`_setup_schedule`, and implement
    :meth:`_sample_episode`, :meth:`_check_action`, :meth:`_score`, ``max_return`` and
    ``chance_return``.

    Attributes:
        num_write: number of ``WRITE`` steps.
        delay: number of ``DELAY`` steps between writing and the first query.
        num_queries: number of ``QUERY`` steps (scored answers).
        episode_length: ``T``, the number of decision steps in an episode.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    pattern_space: spaces.Box
    num_write: int
    delay: int
    num_queries: int
    episode_length: int

    def __init__(self, render_mode: str | None = None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}."
            )
        self.render_mode = render_mode
        self._episode: Episode | None = None
        self._t = -1
        self._num_perfect = 0

    # ------------------------------------------------------------------ set-up helpers
    def _setup_schedule(self, num_write: int, delay: int, num_queries: int) -> None:
        """Fix the phase schedule and build ``observation_space`` from ``self.pattern_space``."""
        self.num_write, self.delay, self.num_queries = num_write, delay, num_queries
        t = num_write + delay + num_queries
        if t > MAX_EPISODE_LENGTH:  # the schedule arrays below hold one entry per step
            raise ValueError(
                f"episode of {t} steps ({num_write} writes + delay {delay} + {num_queries} queries) exceeds "
                f"MAX_EPISODE_LENGTH = {MAX_EPISODE_LENGTH}; use a shorter delay or fewer patterns"
            )
        self.episode_length = t
        self.observation_space = spaces.Dict(
            {
                "pattern": self.pattern_space,
                "phase": spaces.Discrete(len(Phase)),
                "step": spaces.Discrete(t + 1),
            }
        )
        phases = np.full(t + 1, Phase.QUERY, dtype=np.int64)
        phases[:num_write] = Phase.WRITE
        phases[num_write : num_write + delay] = Phase.DELAY
        self._schedule = phases  # [T + 1]
        self._steps = np.arange(t + 1, dtype=np.int64)  # [T + 1]

    def _assemble(self, writes: np.ndarray, queries: np.ndarray, distractors: np.ndarray | None = None) -> np.ndarray:
        """Stack the per-step patterns of one episode into one fresh ``[T + 1, *shape]`` array.

        Args:
            writes: ``[num_write, *shape]`` patterns shown while writing.
            queries: ``[num_queries, *shape]`` queries.
            distractors: ``[delay, *shape]`` patterns shown during the delay; blank (zeros) if None.
        """
        shape = self.pattern_space.shape
        out = np.zeros((self.episode_length + 1, *shape), dtype=self.pattern_space.dtype)
        out[: self.num_write] = writes
        q0 = self.num_write + self.delay
        if distractors is not None:
            out[self.num_write : q0] = distractors
        out[q0 : q0 + self.num_queries] = queries
        return out

    # ------------------------------------------------------------------ subclass hooks
    @abc.abstractmethod
    def _sample_episode(self, rng: np.random.Generator) -> Episode:
        """Draw one whole episode from ``rng``."""

    @abc.abstractmethod
    def _check_action(self, action: Any) -> None:
        """Raise ``ValueError`` if ``action`` is not in ``action_space``."""

    @abc.abstractmethod
    def _score(self, action: Any, answer: Any) -> float:
        """Reward in [0, 1] of ``action`` at a query whose best answer is ``answer``."""

    @property
    @abc.abstractmethod
    def max_return(self) -> float:
        """The largest possible episode return (an agent with a perfect memory reaches it)."""

    @property
    @abc.abstractmethod
    def chance_return(self) -> float:
        """Expected episode return of the best memoryless policy.

        A memoryless policy sees only the current observation (step index included).
        """

    def _render_pattern(self, pattern: np.ndarray) -> str:
        """Text picture of one ``"pattern"`` observation (one line of +, - and . by default)."""
        return "".join("+" if v > 0 else ("-" if v < 0 else ".") for v in np.ravel(pattern))

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Draw a new episode and return its first observation and an empty info dict."""
        super().reset(seed=seed)
        self._episode = self._sample_episode(self.np_random)
        self._t = 0
        self._num_perfect = 0
        return self._observation(0), {}

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Check ``action``, score it if this is a query step, and move to the next step.

        Raises:
            ValueError: ``action`` is not a valid action (the message says what is allowed).
            RuntimeError: ``reset()`` was not called, or the episode has already ended.
        """
        t = self._t
        episode = self._episode
        if episode is None or t >= self.episode_length:
            raise RuntimeError(
                "The episode has ended: call reset() before step()."
                if episode is not None
                else "Call reset() before the first step()."
            )
        self._check_action(action)
        answer = episode.answers[t]
        reward = 0.0
        if answer is not None:
            reward = self._score(action, answer)
            if reward == 1.0:
                self._num_perfect += 1
        t += 1
        self._t = t
        terminated = t == self.episode_length
        info: dict[str, Any] = {}
        if terminated:
            info["is_success"] = self._num_perfect == self.num_queries
        return self._observation(t), reward, terminated, False, info

    def _observation(self, t: int) -> dict[str, Any]:
        episode = self._episode
        assert episode is not None
        # A view of row t: rows never overlap and every reset allocates new arrays.
        return {"pattern": episode.patterns[t], "phase": self._schedule[t], "step": self._steps[t]}

    def get_state(self) -> dict[str, Any]:
        """What should have been remembered so far, for oracles, tests and analysis.

        Returns:
            A dict (copies, safe to modify) with at least ``"step"`` (the current step index),
            ``"phase"`` (its :class:`Phase`), ``"answer"`` (the best action now, or ``None`` when the
            step is not scored), ``"answers"`` (the best action at each query step, in order), plus
            the task's stored content (see the class docstring).

        Raises:
            RuntimeError: ``reset()`` was not called.
        """
        episode = self._episode
        if episode is None:
            raise RuntimeError("Call reset() before get_state().")
        t = self._t
        answer = episode.answers[t] if t < self.episode_length else None
        q0 = self.num_write + self.delay
        state: dict[str, Any] = {
            "step": t,
            "phase": Phase(int(self._schedule[t])),
            "answer": _copy(answer),
            "answers": [_copy(a) for a in episode.answers[q0:]],
        }
        state.update({k: _copy(v) for k, v in episode.state.items()})
        return state

    def render(self) -> str | np.ndarray | None:  # type: ignore[override]
        """Render the current step.

        Returns:
            A text description for ``"ansi"``, an ``[H, W, 3]`` uint8 picture for ``"rgb_array"``,
            ``None`` when ``render_mode`` is None.
        """
        if self.render_mode is None:
            gym.logger.warn(
                "render() was called with render_mode=None; pass render_mode='ansi' to the constructor "
                "or to gymnasium.make()."
            )
            return None
        if self._episode is None:
            raise RuntimeError("Call reset() before render().")
        if self.render_mode == "ansi":
            t = self._t
            phase = Phase(int(self._schedule[t])).name
            head = f"step {t}/{self.episode_length}  phase {phase}"
            return head + "\n" + self._render_pattern(self._episode.patterns[t]) + "\n"
        return self._render_rgb()

    def _render_rgb(self) -> np.ndarray:
        """The current step as ``[H, W, 3]`` uint8.

        A bar coloured by phase over the pattern's entries drawn as 8x8 cells, 32 to a row (+1 white,
        -1 black, 0 grey).
        """
        assert self._episode is not None
        values = np.ravel(self._episode.patterns[self._t]).astype(np.float32)
        width = min(32, values.size)
        rows = -(-values.size // width)
        grid = np.full(rows * width, 0.0, dtype=np.float32)
        grid[: values.size] = values
        gray = ((grid.reshape(rows, width) + 1.0) * 127.5).astype(np.uint8)  # [rows, width]
        cells = np.repeat(np.repeat(gray, 8, axis=0), 8, axis=1)  # [8 rows, 8 width]
        frame = np.repeat(cells[..., None], 3, axis=2)
        bar = np.empty((6, frame.shape[1], 3), dtype=np.uint8)
        bar[:] = _PHASE_COLOURS[int(self._schedule[self._t])]
        return np.concatenate([bar, frame], axis=0)

    # ------------------------------------------------------------------ action checks for subclasses
    def _check_discrete(self, action: Any, n: int) -> int:
        """Return ``action`` as an int in ``[0, n)`` or raise ``ValueError``."""
        if isinstance(action, int | np.integer) and not isinstance(action, bool | np.bool_):
            a = int(action)
        elif (
            isinstance(action, np.ndarray) and action.shape == () and action.dtype.kind in "iu"
        ):  # 0-d integer array, as SB3's predict() returns for one observation
            a = int(action)
        else:
            raise ValueError(
                f"{type(self).__name__}: the action must be one integer in [0, {n}) "
                f"(Discrete({n})), got {action!r} of type {type(action).__name__}."
            )
        if not 0 <= a < n:
            raise ValueError(f"{type(self).__name__}: the action must be in [0, {n}), got {a}.")
        return a

    def _check_binary(self, action: Any, size: int) -> np.ndarray:
        """Return ``action`` as an array of ``size`` zeros and ones or raise ``ValueError``."""
        a = action if isinstance(action, np.ndarray) else np.asarray(action)
        kind = a.dtype.kind
        if a.shape != (size,) or kind not in "biuf":
            raise ValueError(
                f"{type(self).__name__}: the action must be {size} numbers each 0 or 1 (MultiBinary({size}); "
                f"1 means +1), got shape {a.shape} and dtype {a.dtype}."
            )
        # x * (x - 1) is 0 exactly for x in {0, 1}, also under integer wrap-around, and NaN otherwise
        # for NaN: one cheap pass instead of two comparisons and an `or`.
        if kind != "b" and np.count_nonzero(a * (a - 1)):
            raise ValueError(f"{type(self).__name__}: every action entry must be 0 or 1 (1 means +1), got {a}.")
        return a


def _copy(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    return value

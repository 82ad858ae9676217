"""KeyValueRecall: store (key, value) pairs, then name the value of a possibly noisy key."""

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
    random_indices,
    replace_entries,
)

__all__ = ["KeyValueRecallEnv"]


class KeyValueRecallEnv(MemoryProbeEnv):
    """Hetero-associative recall: a key cues the value it was stored with.

    ## Description
    In the writing phase the agent sees ``num_pairs`` (key, value) pairs, one per step. Keys are
    pairwise different random +-1 patterns of ``key_size`` bits; values are independent uniform
    draws from a vocabulary of ``num_values`` symbols. After ``delay`` blank steps come
    ``num_queries`` queries: each shows one stored key (uniform, with replacement) in which
    ``round(distortion * key_size)`` bits were replaced by random +-1 values, with the value
    unknown. The agent names the value stored with that key.

    A pair is shown as one pattern, the key followed by the value code, so a memory that completes
    patterns (an energy-based memory) can store the pair and read the value by completing the query:

    ``pattern = [key (key_size entries, +-1) | value code (num_values entries)]``

    where the value code is +1 at the value's index and -1 elsewhere while writing, and all 0
    (unknown) in a query.

    ## Action Space
    ``Discrete(num_values)``: the value's index. Python ints, numpy integers and 0-d integer arrays
    are accepted. The action is checked but ignored outside the query phase.

    ## Observation Space
    ``Dict``:

    * ``"pattern"``: ``Box(-1, 1, (key_size + num_values,), float32)`` as above; zeros on delay steps
      and in the final observation.
    * ``"phase"``: ``Discrete(3)``: ``0`` write, ``1`` query, ``2`` delay (:class:`envs.core.Phase`).
    * ``"step"``: ``Discrete(T + 1)``: step index, ``T = num_pairs + delay + num_queries``.

    ## Rewards
    1 for the right value at a query, else 0. The maximum return is ``num_queries``; values are
    independent of keys, so a memoryless policy gets ``num_queries / num_values`` in expectation.

    ## Starting State
    New keys, values and queries, drawn from ``self.np_random`` at reset.

    ## Episode End
    Terminates after the last query (``T`` steps). No truncation.

    ## Arguments
    ```python
    gymnasium.make("ebmm/KeyValueRecall-v0", num_pairs=8, key_size=16, num_values=8,
                   distortion=0.25, num_queries=1, delay=0, render_mode=None)
    ```
    * ``num_pairs``: pairs stored per episode (N), 1 <= N <= 2**key_size.
    * ``key_size``: bits per key, >= 1.
    * ``num_values``: size of the value vocabulary (and of the action space), >= 2.
    * ``distortion``: fraction of the query key's bits replaced by random +-1 values, in [0, 1].
    * ``num_queries``: queries per episode, >= 1.
    * ``delay``: blank steps between the last pair and the first query, >= 0.
    * ``render_mode``: ``None``, ``"ansi"`` (text) or ``"rgb_array"`` (the pattern as cells).

    ``get_state()`` adds ``"keys"`` ``[N, key_size]``, ``"values"`` ``[N]``, ``"queries"``
    ``[Q, key_size]`` (the distorted keys) and ``"target_indices"`` ``[Q]`` to the common keys.

    ## Version History
    * v0: initial version.
    """

    def __init__(
        self,
        num_pairs: int = 8,
        key_size: int = 16,
        num_values: int = 8,
        distortion: float = 0.25,
        num_queries: int = 1,
        delay: int = 0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode)
        self.key_size = check_int("key_size", key_size, 1)
        self.num_pairs = check_int("num_pairs", num_pairs, 1)
        if self.key_size <= 62 and self.num_pairs > 2**self.key_size:
            raise ValueError(
                f"num_pairs={self.num_pairs} needs that many different keys, but key_size={self.key_size} "
                f"bits give only {2**self.key_size}: increase key_size or lower num_pairs."
            )
        self.num_values = check_int("num_values", num_values, 2)
        self.distortion = check_fraction("distortion", distortion)
        self.num_distorted = int(round(self.distortion * self.key_size))
        size = self.key_size + self.num_values
        self.pattern_space = spaces.Box(-1.0, 1.0, shape=(size,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.num_values)
        self._setup_schedule(self.num_pairs, check_int("delay", delay, 0), check_int("num_queries", num_queries, 1))

    @property
    def max_return(self) -> float:  # noqa: D102
        return float(self.num_queries)

    @property
    def chance_return(self) -> float:  # noqa: D102
        return self.num_queries / self.num_values

    def _sample_episode(self, rng: np.random.Generator) -> Episode:
        n, k, v, q = self.num_pairs, self.key_size, self.num_values, self.num_queries
        keys = distinct_sign_patterns(rng, n, k)  # [N, K]
        values = random_indices(rng, v, n)  # [N]
        target_indices = random_indices(rng, n, q)  # [Q]
        noisy_keys = replace_entries(rng, keys[target_indices], self.num_distorted)  # [Q, K]

        writes = np.full((n, k + v), -1.0, dtype=np.float32)  # [N, K + V]
        writes[:, :k] = keys
        writes[np.arange(n), k + values] = 1.0
        queries = np.zeros((q, k + v), dtype=np.float32)  # [Q, K + V]; value code unknown (0)
        queries[:, :k] = noisy_keys

        answers: list[Any] = [None] * (self.num_write + self.delay)
        answers += [int(values[i]) for i in target_indices]
        state = {"keys": keys, "values": values, "queries": noisy_keys, "target_indices": target_indices}
        return Episode(self._assemble(writes, queries), answers, state)

    def _check_action(self, action: Any) -> None:
        self._check_discrete(action, self.num_values)

    def _score(self, action: Any, answer: int) -> float:
        return 1.0 if int(action) == answer else 0.0

    def _render_pattern(self, pattern: np.ndarray) -> str:
        key = super()._render_pattern(pattern[: self.key_size])
        code = pattern[self.key_size :]
        value = str(int(np.argmax(code))) if code.max() > 0 else "?"
        return f"key {key}  value {value}"

"""Gymnasium wrappers that let SB3 agents use an episodic memory on any environment.

SB3 stores observations and re-evaluates them later in shuffled minibatches, so a feature extractor must
compute its features from the observation alone. :class:`EpisodeMemoryWrapper` therefore adds to every
observation what the memory must hold at that step (the episode's rows so far, a FIFO window), much as frame
stacking adds the last frames. :class:`RowObservation` turns an observation into its memory row for agents that
carry their own state (``RecurrentPPO``). :class:`MultiBinaryToMultiDiscrete` works around sb3-contrib's
``RecurrentPPO`` crash on ``MultiBinary`` actions (``docs/envs.md``). :class:`PreviousActionReward` adds each step's
previous action and reward to a vectorised environment's observation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecEnvWrapper

from ebmm_rl.rl.rows import RowLayout, RowsBox, check_finite, wrapper_call

__all__ = [
    "DEFAULT_WINDOW",
    "WRITE_PHASE",
    "EpisodeMemoryWrapper",
    "MultiBinaryToMultiDiscrete",
    "OneHotCodes",
    "PreviousActionReward",
    "RowObservation",
    "action_reward_space",
    "with_action_reward",
]

WRITE_PHASE = 0
"""Value of the ``"phase"`` observation on a step whose pattern is to be stored (``envs.Phase.WRITE``)."""
QUERY_PHASE = 1
"""Value of the ``"phase"`` observation on a query step (``envs.Phase.QUERY``)."""
DEFAULT_WINDOW = 32
"""Rows of ``"history"`` of the generic protocol when ``max_patterns`` is not given (a FIFO window)."""
MAX_HISTORY_FLOATS = 2**24
"""Largest ``max_patterns · D`` of one observation (64 MiB of float32): beyond it, the rollout buffer alone would
need gigabytes."""


_DEFAULTS = dict(
    max_patterns=None,
    write_phases=(WRITE_PHASE,),
    data_range=None,
    protocol="auto",
    include_action_reward=False,
    overflow="fifo",
    squash_scale=1.0,
)


class EpisodeMemoryWrapper(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Adds the episode's stored rows and the current row to the observation, for a stateless memory extractor.

    Keys of the wrapped observation (``D`` = row size, ``L`` = ``max_patterns``):

    * ``"history"``: ``Box(lo, hi, (L, D), float32)`` (a :class:`~ebmm_rl.rl.rows.RowsBox`, which also carries the
      row layout): the rows stored at this episode's earlier steps, oldest first; rows from ``history_len`` on are
      padding (the value of ``data_range`` nearest to zero).
    * ``"history_len"``: ``Discrete(L + 1)``: the number of valid rows.
    * ``"query"``: ``Box(lo, hi, (D,), float32)``: the current step's row (a memory reads with it).

    The current row enters the history at the *next* step: a memory reads with a row before it writes it (online
    order). The row of the final observation of an episode is never stored. Past ``L`` stored rows the history is a
    FIFO window: the oldest row is dropped (``overflow="fifo"``, the default) or a ``ValueError`` is raised
    (``overflow="error"``).

    Two protocols say what a row is:

    * ``"generic"``, for any environment: every step stores one row, the whole observation flattened into
      ``data_range`` by a :class:`~ebmm_rl.rl.rows.RowLayout` (one-hot for discrete parts, bounded boxes mapped
      linearly, unbounded ones squashed), optionally followed by the previous action and reward
      (``include_action_reward=True``). Only the three keys above are in the observation. Default ``data_range``:
      ``(-1, 1)``; default ``max_patterns``: :data:`DEFAULT_WINDOW`.
    * ``"probe"``, for the ``ebmm/...`` memory probes (a ``Dict`` observation with ``"pattern"`` and ``"phase"``):
      a row is the flattened ``"pattern"``, stored only on steps whose ``"phase"`` is in ``write_phases``, and the
      probe's own keys stay in the observation. Values are mapped linearly from the pattern space's bounds
      (``[0, 255]`` for ``uint8``) onto ``data_range``; by default ``uint8`` images become ``[0, 1]`` and float
      patterns keep their bounds (``±1`` bits stay ``±1``). ``max_patterns=None`` takes the number from the probe's
      schedule (``num_write``, ``num_queries``, ``delay`` of ``env.unwrapped``).

    ``protocol="auto"`` (default) picks ``"probe"`` for such a ``Dict`` and ``"generic"`` otherwise.

    Args:
        env: the environment.
        max_patterns: ``L``, rows of ``"history"`` (see the protocols for ``None``).
        write_phases: probe protocol: phases whose patterns are stored (default: write steps only).
            ``Familiarity``, whose new stream patterns may be repeated later, wants ``(0, 1)``.
        data_range: ``(lo, hi)`` to map rows onto; ``None``: see the protocols.
        protocol: ``"auto"``, ``"generic"`` or ``"probe"``.
        include_action_reward: generic protocol: append the previous action and reward to each row.
        overflow: ``"fifo"`` (drop the oldest row) or ``"error"``.
        squash_scale: generic protocol: unbounded entries ``x`` become ``tanh(x / squash_scale)``.

    Raises:
        ValueError: an unsupported observation space (named with the supported ones), a bad argument, or
            (``overflow="error"``) more rows than ``max_patterns``; NaN/inf in an observation (naming the step).
    """

    def __init__(
        self,
        env: gym.Env,
        max_patterns: int | None = None,
        write_phases: Sequence[int] = (WRITE_PHASE,),
        data_range: tuple[float, float] | None = None,
        protocol: str = "auto",
        include_action_reward: bool = False,
        overflow: str = "fifo",
        squash_scale: float = 1.0,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self,
            max_patterns=max_patterns,
            write_phases=tuple(write_phases),
            data_range=data_range,
            protocol=protocol,
            include_action_reward=include_action_reward,
            overflow=overflow,
            squash_scale=squash_scale,
        )
        gym.Wrapper.__init__(self, env)
        space = env.observation_space
        is_probe = isinstance(space, spaces.Dict) and "pattern" in space.spaces and "phase" in space.spaces
        if protocol not in ("auto", "generic", "probe"):
            raise ValueError(f"protocol must be 'auto', 'generic' or 'probe', got {protocol!r}")
        if protocol == "probe" and not is_probe:
            raise ValueError(
                f"protocol='probe' needs a Dict observation with 'pattern' and 'phase' keys (as every ebmm/... "
                f"environment has), got {space}; use protocol='generic' for other environments"
            )
        if overflow not in ("fifo", "error"):
            raise ValueError(f"overflow must be 'fifo' (drop the oldest row) or 'error', got {overflow!r}")
        if isinstance(space, spaces.Dict):
            for key in ("history", "history_len", "query"):
                if key in space.spaces:
                    raise ValueError(f"the observation already has a {key!r} key: is the env wrapped twice?")
        self.protocol = "probe" if protocol == "probe" or (protocol == "auto" and is_probe) else "generic"
        self.overflow = overflow
        self.include_action_reward = bool(include_action_reward)
        if self.protocol == "probe":
            if include_action_reward:
                raise ValueError("include_action_reward applies to the generic protocol; use protocol='generic'")
            self._init_probe(env, max_patterns, write_phases, data_range)
        else:
            self._init_generic(env, max_patterns, data_range, squash_scale)
        if self.max_patterns < 1:
            raise ValueError(f"max_patterns must be >= 1, got {self.max_patterns}")
        if self.max_patterns * self.pattern_size > MAX_HISTORY_FLOATS:
            raise ValueError(
                f"max_patterns={self.max_patterns} rows of {self.pattern_size} entries is more than "
                f"{MAX_HISTORY_FLOATS} floats per observation; use a smaller window, or the recurrent route "
                "(RecurrentPPO with EBMMRecurrentPolicy), which stores nothing in the observation"
            )
        lo, hi = self.data_range
        L, D = self.max_patterns, self.pattern_size
        history = RowsBox(lo, hi, (L, D), self.layout, wrapper_call(type(self).__name__, self._saved_kwargs, _DEFAULTS))
        added = {
            "history": history,
            "history_len": spaces.Discrete(L + 1),
            "query": spaces.Box(lo, hi, (D,), np.float32),
        }
        self.observation_space = spaces.Dict({**space.spaces, **added} if self.protocol == "probe" else added)
        self._pad = float(np.clip(0.0, lo, hi))
        self._history = np.full((L, D), self._pad, dtype=np.float32)  # [L, D]
        self._length = 0
        self._pending: np.ndarray | None = None  # [D] row of the last step, stored at the next one
        self._step = 0

    # ---------------------------------------------------------------------------------------------- set-up
    def _init_probe(
        self, env: gym.Env, max_patterns: int | None, write_phases: Sequence[int], data_range: tuple | None
    ) -> None:
        space = env.observation_space
        pattern_space = space["pattern"]
        if not isinstance(pattern_space, spaces.Box):
            raise ValueError(f"'pattern' must be a Box space, got {pattern_space}")
        if not isinstance(space["phase"], spaces.Discrete):
            raise ValueError(f"'phase' must be a Discrete space, got {space['phase']}")
        self.write_phases = tuple(int(p) for p in write_phases)
        if not self.write_phases:
            raise ValueError("write_phases is empty: nothing would ever be stored; use e.g. (0,) for write steps")
        self.max_patterns = self._infer_max_patterns(env) if max_patterns is None else int(max_patterns)
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
        if not (np.isfinite(target).all() and target[0] < target[1]):
            raise ValueError(f"data_range must be finite (low, high) with low < high, got {data_range}")
        self.data_range = target
        self._scale = (target[1] - target[0]) / (source[1] - source[0])
        self._offset = target[0] - source[0] * self._scale
        self._identity = source == target
        self.pattern_size = int(np.prod(pattern_space.shape))
        self.layout = None

    def _init_generic(
        self, env: gym.Env, max_patterns: int | None, data_range: tuple | None, squash_scale: float
    ) -> None:
        self.write_phases = ()
        self.layout = RowLayout(
            env.observation_space,
            env.action_space,
            include_action=self.include_action_reward,
            include_reward=self.include_action_reward,
            data_range=(-1.0, 1.0) if data_range is None else data_range,
            squash_scale=squash_scale,
        )
        self.data_range = self.layout.data_range
        self.pattern_size = self.layout.size
        self.max_patterns = DEFAULT_WINDOW if max_patterns is None else int(max_patterns)

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

    # ------------------------------------------------------------------------------------------------ rows
    def map_pattern(self, pattern: np.ndarray) -> np.ndarray:
        """Probe protocol: ``pattern`` (any shape of the pattern space) flattened and mapped into ``data_range``."""
        flat = np.asarray(pattern, dtype=np.float32).reshape(-1)
        check_finite(flat, f"step {self._step} of the episode ('pattern')")
        if self._identity:
            return flat.copy()
        return np.clip(flat * np.float32(self._scale) + np.float32(self._offset), *self.data_range).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Reset the environment and empty the history."""
        self._history.fill(self._pad)
        self._length = 0
        self._pending = None
        self._step = 0
        observation, info = self.env.reset(seed=seed, options=options)
        return self._observe(observation, None, None), info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        """Step the environment, store the previous row, and add the keys to the observation."""
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._step += 1
        return self._observe(observation, action, reward), reward, terminated, truncated, info

    def _observe(self, observation: Any, action: Any, reward: SupportsFloat | None) -> dict[str, Any]:
        if self._pending is not None:
            self._push(self._pending)
            self._pending = None
        if self.layout is None:
            query = self.map_pattern(observation["pattern"])
            if int(observation["phase"]) in self.write_phases:
                self._pending = query
            extra = observation
        else:
            query = self.layout.numpy_row(observation, action, reward, where=f"step {self._step} of the episode")
            self._pending = query
            extra = {}
        return {**extra, "history": self._history.copy(), "history_len": self._length, "query": query.copy()}

    def _push(self, row: np.ndarray) -> None:
        if self._length < self.max_patterns:
            self._history[self._length] = row
            self._length += 1
        elif self.overflow == "error":
            raise ValueError(
                f"more than max_patterns={self.max_patterns} rows to store in one episode; create "
                "EpisodeMemoryWrapper with a larger max_patterns, or overflow='fifo' to keep the latest rows"
            )
        else:  # FIFO: drop the oldest row
            self._history[:-1] = self._history[1:]
            self._history[-1] = row


class RowObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Replaces the observation by its memory row (a :class:`~ebmm_rl.rl.rows.RowsBox` of shape ``(D,)``).

    For agents that carry their own state (``RecurrentPPO`` with ``EBMMRecurrentPolicy`` or an LSTM): the row
    holds what :class:`EpisodeMemoryWrapper`'s generic protocol stores, optionally with the previous action and
    reward, and the space carries the layout (so that the policy finds image parts for its CNN). Also makes
    ``Tuple`` and nested ``Dict`` observations usable with SB3, which rejects those spaces.

    Args:
        env: the environment (observation space of :data:`~ebmm_rl.rl.rows.SUPPORTED_SPACES`).
        include_action_reward: append the previous action and reward.
        data_range: the box rows lie in.
        squash_scale: unbounded entries ``x`` become ``tanh(x / squash_scale)``.
    """

    def __init__(
        self,
        env: gym.Env,
        include_action_reward: bool = False,
        data_range: tuple[float, float] = (-1.0, 1.0),
        squash_scale: float = 1.0,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, include_action_reward=include_action_reward, data_range=data_range, squash_scale=squash_scale
        )
        gym.ObservationWrapper.__init__(self, env)
        self.layout = RowLayout(
            env.observation_space,
            env.action_space,
            include_action=include_action_reward,
            include_reward=include_action_reward,
            data_range=data_range,
            squash_scale=squash_scale,
        )
        lo, hi = self.layout.data_range
        call = wrapper_call(
            type(self).__name__,
            self._saved_kwargs,
            dict(include_action_reward=False, data_range=(-1.0, 1.0), squash_scale=1.0),
        )
        self.observation_space = RowsBox(lo, hi, (self.layout.size,), self.layout, call)
        self._step = 0
        self._action: Any = None
        self._reward: SupportsFloat | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Reset the environment (no previous action or reward)."""
        self._step, self._action, self._reward = 0, None, None
        return super().reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        """Step the environment; the action and reward enter the next row."""
        self._step += 1
        self._action = action
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._reward = reward
        return self.observation(observation), reward, terminated, truncated, info

    def observation(self, observation: Any) -> np.ndarray:
        """The row ``[D]`` of ``observation`` (with the previous action and reward if asked for)."""
        layout = self.layout
        action = self._action if layout.action_space is not None else None
        reward = self._reward if layout.include_reward else None
        return layout.numpy_row(observation, action, reward, where=f"step {self._step} of the episode")


class OneHotCodes(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Turns a ``uint8`` ``Box`` of small integer codes into one-hot floats: ``(*shape)`` -> ``(*shape[:-1], C·codes)``.

    MiniGrid's symbolic observation (``ImgObsWrapper``) is a ``Box(0, 255, (7, 7, 3), uint8)`` holding object, colour
    and state indices below 11: read as pixels, its rows barely vary. Every agent of ``agents.train`` gets it one-hot.

    Args:
        env: an environment with a ``uint8`` ``Box`` observation.
        codes: the number of codes (values ``0 .. codes - 1``).

    Raises:
        ValueError: another observation space, or an observation with a value ``>= codes``.
    """

    def __init__(self, env: gym.Env, codes: int) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, codes=codes)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not (isinstance(space, spaces.Box) and space.dtype == np.uint8):
            raise ValueError(f"OneHotCodes needs a uint8 Box observation, got {space}")
        if isinstance(codes, bool) or not isinstance(codes, int) or not 2 <= codes <= 256:
            raise ValueError(f"codes must be an integer in [2, 256], got {codes!r}")
        self.codes = codes
        shape = (*space.shape[:-1], space.shape[-1] * codes) if space.shape else (codes,)
        self.observation_space = spaces.Box(0.0, 1.0, shape, np.float32)
        self._eye = np.eye(codes, dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """The one-hot codes of ``observation``."""
        values = np.asarray(observation)
        if values.size and int(values.max()) >= self.codes:
            raise ValueError(f"the observation holds the code {int(values.max())}, not below codes={self.codes}")
        return self._eye[values].reshape(self.observation_space.shape)


class MultiBinaryToMultiDiscrete(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Shows a ``MultiBinary(shape)`` action space as ``MultiDiscrete`` with 2 choices per entry.

    sb3-contrib 2.9.2's ``RecurrentPPO`` crashes on ``MultiBinary`` actions (its recurrent buffer hands int8
    actions to the Bernoulli log-probability); a categorical over ``{0, 1}`` per entry is the same policy class.
    Actions are passed on as ``int8`` arrays of the original shape.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ActionWrapper.__init__(self, env)
        if not isinstance(env.action_space, spaces.MultiBinary):
            raise ValueError(f"MultiBinaryToMultiDiscrete needs a MultiBinary action space, got {env.action_space}")
        self._shape = env.action_space.shape
        self.action_space = spaces.MultiDiscrete(np.full(self._shape, 2, dtype=np.int64))

    def action(self, action: np.ndarray) -> np.ndarray:
        """``[*shape]`` integers in {0, 1} -> the same values as ``int8``."""
        return np.asarray(action, dtype=np.int8).reshape(self._shape)


class PreviousActionReward(VecEnvWrapper):
    """Adds each env's previous action and reward to its observation (zeros on an episode's first step).

    The observation becomes a ``Dict``: an original ``Dict``'s keys (or ``"obs"`` for any other space) and
    ``"prev_action"`` (``Box``: one-hot for ``Discrete``/``MultiDiscrete`` actions, ``{0, 1}`` for ``MultiBinary``,
    the action itself for ``Box``) and ``"prev_reward"`` (``Box((1,))``). Memory agents commonly see both: the
    action an agent took is not in the next observation, and a reward can say what the last step was worth.
    :class:`~ebmm_rl.rl.recurrent.EBMMRecurrentPPO` wraps its environment with it. The terminal observation in
    ``infos`` (bootstrapping of truncated episodes) gets the last action and reward as well.

    Args:
        venv: the vectorised environment (a plain ``gym.Env`` is put in a ``DummyVecEnv`` first).

    Raises:
        ValueError: the observation ``Dict`` already has a ``prev_action`` or ``prev_reward`` key, or the action
            space is not ``Box``, ``Discrete``, ``MultiDiscrete`` or ``MultiBinary``.
    """

    KEYS = ("prev_action", "prev_reward")

    def __init__(self, venv: VecEnv | gym.Env) -> None:
        if not isinstance(venv, VecEnv):
            env = venv
            venv = DummyVecEnv([lambda: env])
        original = venv.observation_space
        space = action_reward_space(original, venv.action_space)
        super().__init__(venv, observation_space=space)
        self.action_size = int(space["prev_action"].shape[0])
        self._is_dict = isinstance(original, spaces.Dict)
        self._actions = np.zeros((venv.num_envs, self.action_size), np.float32)
        self._rewards = np.zeros((venv.num_envs, 1), np.float32)

    def reset(self) -> dict[str, np.ndarray]:
        """Reset every env: no previous action or reward."""
        self._actions[:] = 0
        self._rewards[:] = 0
        return self._observe(self.venv.reset())

    def step_async(self, actions: np.ndarray) -> None:
        """Remember the actions, then step."""
        self._actions = _encode_actions(self.venv.action_space, actions, self.num_envs)
        self.venv.step_async(actions)

    def step_wait(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, list[dict]]:
        """Step; a finished env's next observation (its new episode's first) gets zeros."""
        obs, rewards, dones, infos = self.venv.step_wait()
        self._rewards = np.array(rewards, np.float32).reshape(-1, 1)  # a copy: zeroing it below must not touch rewards
        for i, info in enumerate(infos):
            terminal = info.get("terminal_observation")
            if terminal is not None:
                info["terminal_observation"] = self._single(terminal, i)
        done = np.asarray(dones, bool)
        self._actions[done] = 0
        self._rewards[done] = 0
        return self._observe(obs), rewards, dones, infos

    def _observe(self, obs: Any) -> dict[str, np.ndarray]:
        out = dict(obs) if self._is_dict else {"obs": obs}
        out["prev_action"] = self._actions.copy()
        out["prev_reward"] = self._rewards.copy()
        return out

    def _single(self, obs: Any, i: int) -> dict[str, np.ndarray]:
        out = dict(obs) if self._is_dict else {"obs": obs}
        out["prev_action"] = self._actions[i].copy()
        out["prev_reward"] = self._rewards[i].copy()
        return out


def action_reward_space(observation_space: spaces.Space, action_space: spaces.Space) -> spaces.Dict:
    """The observation space :class:`PreviousActionReward` makes of ``observation_space``.

    Raises:
        ValueError: see :class:`PreviousActionReward`.
    """
    if isinstance(observation_space, spaces.Dict):
        clash = [k for k in PreviousActionReward.KEYS if k in observation_space.spaces]
        if clash:
            raise ValueError(f"the observation already has the keys {clash}: the previous action and reward are "
                             "there already; do not wrap it with PreviousActionReward again")  # fmt: skip
        parts = dict(observation_space.spaces)
    else:
        parts = {"obs": observation_space}
    parts["prev_action"] = _action_encoding(action_space)[1]
    parts["prev_reward"] = spaces.Box(-np.inf, np.inf, (1,), np.float32)
    return spaces.Dict(parts)


def with_action_reward(observation: Any, action_space: spaces.Space, action: Any, reward: float | None) -> dict:
    """One env's observation as :class:`PreviousActionReward` gives it (``action`` ``None``: an episode's start)."""
    out = dict(observation) if isinstance(observation, dict) else {"obs": observation}
    size = _action_encoding(action_space)[0]
    out["prev_action"] = (
        np.zeros(size, np.float32) if action is None else _encode_actions(action_space, np.asarray(action)[None], 1)[0]
    )
    out["prev_reward"] = np.array([0.0 if reward is None else reward], np.float32)
    return out


def _action_encoding(space: spaces.Space) -> tuple[int, spaces.Box]:
    """Entries and ``Box`` space of an encoded action (see :class:`PreviousActionReward`)."""
    if isinstance(space, spaces.Discrete):
        n = int(space.n)
        return n, spaces.Box(0.0, 1.0, (n,), np.float32)
    if isinstance(space, spaces.MultiDiscrete):
        n = int(np.sum(space.nvec))
        return n, spaces.Box(0.0, 1.0, (n,), np.float32)
    if isinstance(space, spaces.MultiBinary):
        n = int(np.prod(space.shape))
        return n, spaces.Box(0.0, 1.0, (n,), np.float32)
    if isinstance(space, spaces.Box):
        n = int(np.prod(space.shape))
        low = np.broadcast_to(space.low, space.shape).reshape(-1).astype(np.float32)
        high = np.broadcast_to(space.high, space.shape).reshape(-1).astype(np.float32)
        return n, spaces.Box(np.minimum(low, 0), np.maximum(high, 0), (n,), np.float32)  # zeros (no action) inside
    raise ValueError(f"PreviousActionReward cannot encode {type(space).__name__} actions ({space}); supported: Box, "
                     "Discrete, MultiDiscrete, MultiBinary")  # fmt: skip


def _encode_actions(space: spaces.Space, actions: np.ndarray, n_envs: int) -> np.ndarray:
    """``[n_envs, A]`` float32 encodings of a batch of actions."""
    actions = np.asarray(actions)
    if isinstance(space, spaces.Discrete):
        index = actions.reshape(n_envs).astype(np.int64) - int(space.start)
        return np.eye(int(space.n), dtype=np.float32)[index]
    if isinstance(space, spaces.MultiDiscrete):
        nvec = space.nvec.reshape(-1)
        values = actions.reshape(n_envs, -1).astype(np.int64) - np.asarray(space.start).reshape(-1)
        return np.concatenate([np.eye(int(k), dtype=np.float32)[values[:, i]] for i, k in enumerate(nvec)], axis=1)
    return actions.reshape(n_envs, -1).astype(np.float32)

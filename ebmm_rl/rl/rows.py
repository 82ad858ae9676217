"""Memory rows from any common Gymnasium observation: one step = one flat float vector in a memory's data range.

A :class:`RowLayout` is built from an observation space (and optionally the action space and the reward, as
memory-based RL commonly feeds them back). Its :meth:`~RowLayout.numpy_row` (used by the wrappers) and
:meth:`~RowLayout.torch_rows` (used by the recurrent policy on the raw env) give the same row ``[D]``:

* the observation is flattened in gymnasium's order (:func:`gymnasium.spaces.flatten`: ``Dict`` keys in the
  space's order, ``Tuple`` entries in order, ``Box`` in C order);
* ``Discrete`` and each entry of ``MultiDiscrete`` become one-hot vectors, ``MultiBinary`` stays ``{0, 1}``;
  both are then mapped onto ``{low, high}`` of the data range;
* a ``Box`` with finite bounds (``uint8`` images: ``[0, 255]``) is mapped linearly from its bounds onto the data
  range (values outside the bounds are clipped);
* a ``Box`` entry without finite bounds (either bound infinite or beyond :data:`UNBOUNDED`) is squashed,
  ``tanh(x / squash_scale)``, then mapped from ``(-1, 1)``. Squashing, not running normalisation: a row must be a
  fixed function of the observation, or a stored row and the same observation read later would differ. Values of
  order ``squash_scale`` keep their resolution; a user whose unbounded entries are much larger should pass a
  larger ``squash_scale`` (or normalise the env);
* the previous action (``include_action=True``) is encoded like an observation of the action space (zeros before
  the first action) and the previous reward (``include_reward=True``) is squashed like an unbounded entry.

The supported spaces are :data:`SUPPORTED_SPACES` (nested ``Dict``/``Tuple`` included); ``Graph``, ``Text``,
``Sequence`` and others raise a ``ValueError`` naming them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

__all__ = [
    "SUPPORTED_SPACES",
    "UNBOUNDED",
    "RowLayout",
    "RowsBox",
    "Segment",
    "check_finite",
    "check_model_observation",
    "wrapper_call",
]

SUPPORTED_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary, spaces.Dict, spaces.Tuple)
"""Observation (and action) spaces a row can be made of."""

UNBOUNDED = 1e6
"""A ``Box`` bound whose magnitude reaches this counts as unbounded (``np.finfo(np.float32).max`` is common)."""

_SUPPORTED_NAMES = "Box (vectors, uint8 images), Discrete, MultiDiscrete, MultiBinary, and Dict / Tuple of these"


@dataclasses.dataclass(frozen=True)
class Segment:
    """One part of a row.

    Attributes:
        name: where the part comes from: ``obs``, ``obs.key``, ``obs[0]``, ``action``, ``reward``.
        kind: ``box``, ``image`` (a 3-d ``uint8`` ``Box``), ``onehot`` (``Discrete``/``MultiDiscrete``),
            ``binary`` (``MultiBinary``) or ``codes`` (a ``uint8`` ``Box`` read as small integer codes, one-hot).
        offset: first entry of the part in the row.
        size: entries of the part.
        shape: the part's own shape (an image as the env gives it, e.g. ``(H, W, C)``).
        channels_first: for images, whether ``shape`` is ``(C, H, W)``.
    """

    name: str
    kind: str
    offset: int
    size: int
    shape: tuple[int, ...]
    channels_first: bool = False


class RowsBox(spaces.Box):
    """A ``Box`` of memory rows that also carries the :class:`RowLayout` they were made with (``layout``).

    ``EpisodeMemoryWrapper``'s ``"history"`` key has this space, so that an extractor knows which entries of a row
    are an image (for its CNN encoder) without being told. It compares, samples and pickles like a ``Box``.
    ``wrapper`` is the wrapper call that makes this space (``"EpisodeMemoryWrapper(env, max_patterns=8)"``), for
    error messages when a saved model meets an environment without it.
    """

    def __init__(
        self, low: float, high: float, shape: tuple[int, ...], layout: RowLayout | None, wrapper: str = ""
    ) -> None:
        super().__init__(low, high, shape, np.float32)
        self.layout = layout
        self.wrapper = wrapper


def _is_image(space: spaces.Box) -> bool:
    return space.dtype == np.uint8 and len(space.shape) == 3


def _bounded(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.isfinite(low) & np.isfinite(high) & (np.abs(low) < UNBOUNDED) & (np.abs(high) < UNBOUNDED)


class RowLayout:
    """How an observation (and optionally the previous action and reward) becomes one row ``[D]``.

    Args:
        observation_space: a space of :data:`SUPPORTED_SPACES`.
        action_space: with ``include_action``, the action space (also of :data:`SUPPORTED_SPACES`).
        include_action: append the previous action.
        include_reward: append the previous reward.
        data_range: ``(low, high)``, the box rows lie in (a memory's ``EBMMConfig.data_range``).
        squash_scale: unbounded entries ``x`` become ``tanh(x / squash_scale)`` before the mapping.
        codes: every ``uint8`` ``Box`` part holds integer codes below this number (MiniGrid's symbolic grid:
            object, colour and state indices below 11), and each entry becomes a one-hot of ``codes`` entries
            instead of a value mapped from ``[0, 255]`` (which would make such rows nearly constant).

    Raises:
        ValueError: an unsupported space, an empty one, a bad range or scale.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space | None = None,
        include_action: bool = False,
        include_reward: bool = False,
        data_range: tuple[float, float] = (-1.0, 1.0),
        squash_scale: float = 1.0,
        codes: int | None = None,
    ) -> None:
        if codes is not None and (isinstance(codes, bool) or not isinstance(codes, int) or not 2 <= codes <= 256):
            raise ValueError(
                f"codes must be None or an integer in [2, 256] (the number of integer codes), got {codes!r}"
            )
        self.codes = codes
        lo, hi = (float(v) for v in data_range)
        if not (np.isfinite([lo, hi]).all() and lo < hi):
            raise ValueError(f"data_range must be finite (low, high) with low < high, got {data_range}")
        if not (np.isfinite(squash_scale) and squash_scale > 0):
            raise ValueError(f"squash_scale must be a finite number > 0, got {squash_scale}")
        if include_action and action_space is None:
            raise ValueError("include_action=True needs the action_space")
        self.observation_space = observation_space
        self.action_space = action_space if include_action else None
        self.include_reward = bool(include_reward)
        self.data_range = (lo, hi)
        self.squash_scale = float(squash_scale)
        self.segments: list[Segment] = []
        low: list[np.ndarray] = []
        high: list[np.ndarray] = []
        self._add(observation_space, "obs", low, high)
        self.action_size = 0
        if self.action_space is not None:
            before = self._size()
            self._add(self.action_space, "action", low, high)
            self.action_size = self._size() - before
        if self.include_reward:
            self.segments.append(Segment("reward", "box", self._size(), 1, (1,)))
            low.append(np.array([-np.inf]))
            high.append(np.array([np.inf]))
        self.size = self._size()
        if self.size == 0:
            raise ValueError(f"{observation_space} gives rows of size 0: nothing to store")
        low_all = np.concatenate(low).astype(np.float64)
        high_all = np.concatenate(high).astype(np.float64)
        self.squashed = ~_bounded(low_all, high_all)  # [D] entries squashed by tanh first
        src_lo = np.where(self.squashed, -1.0, low_all)
        src_hi = np.where(self.squashed, 1.0, high_all)
        width = np.where(src_hi > src_lo, src_hi - src_lo, 1.0)  # a constant entry (low == high) maps to lo
        self.scale = ((hi - lo) / width).astype(np.float32)  # [D]
        self.offset = (lo - src_lo * (hi - lo) / width).astype(np.float32)  # [D]
        self._torch: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}

    # ------------------------------------------------------------------------------------------------ layout
    def _size(self) -> int:
        return self.segments[-1].offset + self.segments[-1].size if self.segments else 0

    def _add(self, space: spaces.Space, name: str, low: list[np.ndarray], high: list[np.ndarray]) -> None:
        offset = self._size()
        if isinstance(space, spaces.Dict):
            for key, sub in space.spaces.items():
                self._add(sub, f"{name}.{key}", low, high)
        elif isinstance(space, spaces.Tuple):
            for i, sub in enumerate(space.spaces):
                self._add(sub, f"{name}[{i}]", low, high)
        elif isinstance(space, spaces.Box) and self.codes is not None and space.dtype == np.uint8:
            size = int(np.prod(space.shape)) * self.codes
            self.segments.append(Segment(name, "codes", offset, size, tuple(space.shape)))
            low.append(np.zeros(size))
            high.append(np.ones(size))
        elif isinstance(space, spaces.Box):
            size = int(np.prod(space.shape))
            kind = "image" if _is_image(space) else "box"
            channels_first = kind == "image" and space.shape[0] in (1, 3, 4) and space.shape[-1] not in (1, 3, 4)
            self.segments.append(Segment(name, kind, offset, size, tuple(space.shape), channels_first))
            low.append(np.broadcast_to(space.low, space.shape).reshape(-1).astype(np.float64))
            high.append(np.broadcast_to(space.high, space.shape).reshape(-1).astype(np.float64))
        elif isinstance(space, spaces.Discrete):
            n = int(space.n)
            self.segments.append(Segment(name, "onehot", offset, n, (n,)))
            low.append(np.zeros(n))
            high.append(np.ones(n))
        elif isinstance(space, spaces.MultiDiscrete):
            n = int(np.sum(space.nvec))
            self.segments.append(Segment(name, "onehot", offset, n, tuple(int(v) for v in space.nvec.shape)))
            low.append(np.zeros(n))
            high.append(np.ones(n))
        elif isinstance(space, spaces.MultiBinary):
            n = int(np.prod(space.shape))
            self.segments.append(Segment(name, "binary", offset, n, tuple(int(v) for v in np.atleast_1d(space.shape))))
            low.append(np.zeros(n))
            high.append(np.ones(n))
        else:
            raise ValueError(
                f"{name}: {type(space).__name__} spaces cannot be stored in a memory row ({space}); supported: "
                f"{_SUPPORTED_NAMES}. Wrap the env with an ObservationWrapper that turns it into one of these."
            )

    @property
    def image_segments(self) -> list[Segment]:
        """The image parts of the row (a CNN encoder reads them)."""
        return [s for s in self.segments if s.kind == "image"]

    def describe(self) -> str:
        """One line per segment: name, kind, shape, entries of the row."""
        return "\n".join(f"{s.name}: {s.kind} {s.shape} -> row[{s.offset}:{s.offset + s.size}]" for s in self.segments)

    # ---------------------------------------------------------------------------------------------- numpy
    def flatten_numpy(self, observation: Any, action: Any = None, reward: float | None = None) -> np.ndarray:
        """``[D]`` float64: the row before the mapping (one-hot and raw values, as ``gymnasium.spaces.flatten``)."""
        parts = [_flatten_np(self.observation_space, observation, self.codes)]
        if self.action_space is not None:
            parts.append(np.zeros(self.action_size) if action is None else _flatten_np(self.action_space, action))
        if self.include_reward:
            parts.append(np.array([0.0 if reward is None else float(reward)]))
        return np.concatenate(parts)

    def numpy_row(
        self, observation: Any, action: Any = None, reward: float | None = None, where: str = "observation"
    ) -> np.ndarray:
        """``[D]`` float32 row in ``data_range``; ``action``/``reward`` ``None`` (before the first step) give zeros.

        Raises:
            ValueError: the observation, action or reward holds NaN or inf, or does not have the space's shape (the
                message names ``where``).
        """
        try:
            flat = self.flatten_numpy(observation, action, reward)
        except ValueError as error:  # numpy's broadcast error names no space
            raise ValueError(
                f"{where}: the observation does not fit the env's observation space {self.observation_space} "
                f"({error}); an env must return observations of its declared space at reset and at every step"
            ) from None
        if flat.shape != self.scale.shape:
            raise ValueError(
                f"{where}: the observation flattens to {flat.shape[0]} entries, the env's observation space "
                f"{self.observation_space} to {self.scale.shape[0]}; an env must return observations of its declared "
                "space at reset and at every step"
            )
        check_finite(flat, where)
        flat = np.where(self.squashed, np.tanh(flat / self.squash_scale), flat)
        return np.clip(flat * self.scale + self.offset, *self.data_range).astype(np.float32)

    # ---------------------------------------------------------------------------------------------- torch
    def torch_rows(self, observations: Tensor | dict[str, Tensor], check: bool = False) -> Tensor:
        """``[n, D]`` rows of a batch of raw observations (as SB3 hands them to a policy, not preprocessed).

        Only the observation part: the previous action and reward are not in an SB3 observation.

        Args:
            observations: ``[n, ...]`` tensors (a dict or tuple of them for ``Dict`` / ``Tuple`` spaces).
            check: raise ``ValueError`` on NaN or inf (``+inf`` would otherwise squash to the range's edge).

        Raises:
            ValueError: the layout includes the action or reward (use the wrappers for those); with ``check``, a
                non-finite observation or one that does not have the space's shape.
        """
        if self.action_space is not None or self.include_reward:
            raise ValueError("torch_rows builds rows from observations alone; this layout also holds action/reward")
        try:
            flat = _flatten_torch(self.observation_space, observations, self.codes)  # [n, D]
        except (KeyError, IndexError, RuntimeError, TypeError) as error:
            raise ValueError(
                f"the observations do not fit the observation space {self.observation_space} the model was built "
                f"for ({type(error).__name__}: {error})"
            ) from None
        if flat.shape[1] != self.size:
            raise ValueError(
                f"the observations give rows of {flat.shape[1]} entries, but the observation space "
                f"{self.observation_space} gives {self.size}: the environment does not match the model"
            )
        if check and not bool(torch.isfinite(flat).all()):
            bad = torch.nonzero(~torch.isfinite(flat))[:8, 1].tolist()
            raise ValueError(
                f"the observation holds non-finite values (NaN/inf) at flattened entries {bad}; a memory cannot "
                "store them: fix the environment or clip its observations"
            )
        device = flat.device
        if device not in self._torch:
            self._torch[device] = (
                torch.as_tensor(self.squashed, device=device),
                torch.as_tensor(self.scale, device=device),
                torch.as_tensor(self.offset, device=device),
            )
        squashed, scale, offset = self._torch[device]
        flat = torch.where(squashed, torch.tanh(flat / self.squash_scale), flat)
        return (flat * scale + offset).clamp(*self.data_range)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_torch"] = {}  # device caches do not travel
        return state


def _flatten_np(space: spaces.Space, x: Any, codes: int | None = None) -> np.ndarray:
    """``gymnasium.spaces.flatten`` as float64 (``Discrete`` one-hot relative to ``start``; ``codes``: RowLayout's)."""
    if isinstance(space, spaces.Dict):
        return np.concatenate([_flatten_np(s, x[k], codes) for k, s in space.spaces.items()])
    if isinstance(space, spaces.Tuple):
        return np.concatenate([_flatten_np(s, x[i], codes) for i, s in enumerate(space.spaces)])
    if isinstance(space, spaces.Box) and codes is not None and space.dtype == np.uint8:
        values = np.asarray(x).reshape(-1).astype(np.int64)
        _check_codes(int(values.max(initial=0)), codes)
        return np.eye(codes)[values].reshape(-1)
    if isinstance(space, spaces.Box | spaces.MultiBinary):
        return np.asarray(x, dtype=np.float64).reshape(-1)
    if isinstance(space, spaces.Discrete):
        out = np.zeros(int(space.n))
        out[int(np.asarray(x).reshape(())) - int(space.start)] = 1.0
        return out
    if isinstance(space, spaces.MultiDiscrete):
        values = np.asarray(x).reshape(-1) - np.asarray(space.start).reshape(-1)
        nvec = space.nvec.reshape(-1)
        out = np.zeros(int(nvec.sum()))
        out[np.concatenate([[0], np.cumsum(nvec)[:-1]]) + values] = 1.0
        return out
    raise ValueError(f"unsupported space {space}")  # RowLayout rejects these first


def _flatten_torch(space: spaces.Space, x: Tensor | dict[str, Tensor] | tuple, codes: int | None = None) -> Tensor:
    """The batched twin of :func:`_flatten_np`: ``[n, ...]`` raw observations -> ``[n, D]`` float."""
    if isinstance(space, spaces.Dict):
        parts = [_flatten_torch(s, x[k], codes) for k, s in space.spaces.items()]  # type: ignore[index]
        return torch.cat(parts, dim=1)
    if isinstance(space, spaces.Tuple):
        parts = [_flatten_torch(s, x[i], codes) for i, s in enumerate(space.spaces)]  # type: ignore[index]
        return torch.cat(parts, dim=1)
    assert isinstance(x, Tensor)
    n = x.shape[0]
    if isinstance(space, spaces.Box) and codes is not None and space.dtype == np.uint8:
        values = x.reshape(n, -1).round().long()
        _check_codes(int(values.max()) if values.numel() else 0, codes)
        return torch.nn.functional.one_hot(values, codes).reshape(n, -1).float()
    if isinstance(space, spaces.Box | spaces.MultiBinary):
        return x.reshape(n, -1).float()
    if isinstance(space, spaces.Discrete):
        index = x.reshape(n).round().long() - int(space.start)
        return torch.nn.functional.one_hot(index, int(space.n)).float()
    if isinstance(space, spaces.MultiDiscrete):
        nvec = space.nvec.reshape(-1)
        values = x.reshape(n, -1).round().long() - torch.as_tensor(np.asarray(space.start).reshape(-1), device=x.device)
        return torch.cat([torch.nn.functional.one_hot(values[:, i], int(k)) for i, k in enumerate(nvec)], 1).float()
    raise ValueError(f"unsupported space {space}")


def _check_codes(largest: int, codes: int) -> None:
    if largest >= codes:
        raise ValueError(
            f"an observation holds the code {largest}, but the rows were built for codes below {codes}: pass a larger "
            "codes= (the number of distinct values the uint8 observation takes)"
        )


def check_finite(row: np.ndarray, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` (e.g. the step) if ``row`` holds NaN or inf."""
    if not np.isfinite(row).all():
        bad = np.flatnonzero(~np.isfinite(row))
        raise ValueError(
            f"{where}: the observation holds non-finite values (NaN/inf) at flattened entries {bad[:8].tolist()}; "
            "a memory cannot store them: fix the environment or clip its observations"
        )


def wrapper_call(name: str, kwargs: dict[str, Any], defaults: dict[str, Any]) -> str:
    """``"Name(env, key=value, ...)"`` with the arguments that differ from ``defaults``."""
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items() if k not in defaults or defaults[k] != v)
    return f"{name}(env{args})"


def check_model_observation(observation: Any, space: spaces.Space) -> None:
    """Raise ``ValueError`` naming the wrapper to apply if ``observation`` is not one of the wrapped ``space``.

    For ``predict`` on a model trained on :class:`~ebmm_rl.rl.wrappers.EpisodeMemoryWrapper` or
    :class:`~ebmm_rl.rl.wrappers.RowObservation` observations, given a raw environment's observation.
    """
    history = space.spaces.get("history") if isinstance(space, spaces.Dict) else None
    if isinstance(history, RowsBox):
        if not isinstance(observation, dict) or "history" not in observation:
            raise ValueError(
                "this model was trained on observations with the episode's memory rows; apply "
                f"{history.wrapper or 'ebmm_rl.EpisodeMemoryWrapper(env, ...)'} to the environment (with "
                "the settings it was trained with) before predicting or evaluating"
            )
    elif isinstance(space, RowsBox):
        try:
            shape = () if isinstance(observation, dict | tuple) else np.shape(observation)
        except ValueError:  # a ragged sequence
            shape = ()
        if tuple(shape[-len(space.shape) :]) != space.shape:
            raise ValueError(
                f"this model was trained on memory rows of shape {space.shape}; apply "
                f"{space.wrapper or 'ebmm_rl.rl.RowObservation(env, ...)'} to the environment before predicting"
            )

"""What every meta-trained baseline memory shares: its config fields, input checks, reading and the meta-loss.

A baseline is an ``nn.Module`` with the interface of :class:`~ebmm_rl.memory.EBMMemory`, so that
:class:`~ebmm_rl.training.MetaTrainer` trains it and :mod:`ebmm_rl.protocol` registers it:

* ``write(patterns [B, N, D...], state=None, pattern_mask=None) -> state``: the state is explicit, batched over
  ``B`` episodes, and passing ``state`` continues writing into it (chunked online writing); ``pattern_mask [B, N]``
  (bool) marks padding, which leaves its episode's state exactly as it was (an RL history padded to a fixed
  length, :class:`~ebmm_rl.rl.MemoryExtractor`). Without a mask ``num_written`` is one ``int`` for all episodes;
  with one it becomes a ``[B]`` tensor, each episode's own count;
* ``read(queries [B, M, D...], state, known_mask=None) -> ReadResult``: ``iterates [K + 1, B, M, D...]``, the
  projected query and ``K`` read steps (``K = 1`` for one-shot readers);
* ``recall(...) = read(...).retrieved``; ``forward(patterns, queries, known_mask) -> MetaOutput``.

Clamping (paper App. A.2: every model may clamp the non-distorted bits): where ``known_mask`` is given, the
query's unknown entries are replaced by the middle of ``data_range`` before a model sees them (a corrupted bit
then carries no misleading value), and every iterate is reset to the query on known entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebmm_rl.memory import MetaOutput, ReadResult, stepwise_loss


@dataclass(frozen=True)
class BaselineConfig:
    """Fields shared by every baseline's config (subclasses add their own).

    Attributes:
        data_shape: shape of one pattern: ``(D,)`` for vectors, ``(C, H, W)`` for images.
        data_range: box of the pattern values: ``(-1, 1)`` for bits, ``(0, 1)`` for images.
        budget: memory budget in float32 values; the written state is sized to fit it (paper App. A.2: the
            Hopfield budget ``128·127/2 + 128 = 8256`` for 128-bit patterns).
        channels: channels of the first ResNet encoder block (images only; paper C.2: 32).
    """

    data_shape: tuple[int, ...] = (128,)
    data_range: tuple[float, float] = (-1.0, 1.0)
    budget: int = 8256
    channels: int = 32

    def __post_init__(self) -> None:
        lo, hi = self.data_range
        if len(self.data_shape) not in (1, 3) or any(int(s) < 1 for s in self.data_shape):
            raise ValueError(f"data_shape must be (D,) or (C, H, W) with positive sizes, got {self.data_shape}")
        if not lo < hi:
            raise ValueError(f"data_range must be (low, high) with low < high, got {self.data_range}")
        if self.budget < 1:
            raise ValueError(f"budget must be a positive number of floats, got {self.budget}")

    @property
    def dim(self) -> int:
        """Number of values in one pattern."""
        return math.prod(self.data_shape)


def check_patterns(x: Tensor, name: str, data_shape: tuple[int, ...], data_range: tuple[float, float]) -> None:
    """Raise ValueError unless ``x`` is a non-empty, finite, floating ``[B, N, *data_shape]`` inside ``data_range``.

    Args:
        x: the tensor to check.
        name: its name in the error message (``"patterns"``, ``"queries"``).
        data_shape: expected shape of one pattern.
        data_range: expected value box.
    """
    expected = f"[B, N, {', '.join(map(str, data_shape))}]"
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (e.g. {name}.float()), got dtype {x.dtype}")
    if x.dim() != 2 + len(data_shape) or tuple(x.shape[2:]) != tuple(data_shape):
        raise ValueError(f"{name} must have shape {expected} (episodes, patterns, pattern), got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): need at least one episode and one pattern")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    lo, hi = data_range
    tol = 1e-5 * (hi - lo)
    if x.min() < lo - tol or x.max() > hi + tol:
        raise ValueError(
            f"{name} values must lie in data_range {tuple(data_range)}, got [{x.min().item():.4g}, "
            f"{x.max().item():.4g}]; rescale the data or set the config's data_range"
        )


def check_known_mask(known_mask: Tensor | None, queries: Tensor) -> Tensor | None:
    """Validate ``known_mask`` and broadcast it to ``queries``' shape (``None`` stays ``None``)."""
    if known_mask is None:
        return None
    if not isinstance(known_mask, Tensor) or known_mask.dtype != torch.bool:
        raise ValueError(
            f"known_mask must be a bool tensor (True = known, clamped), got "
            f"{getattr(known_mask, 'dtype', type(known_mask).__name__)}; use known_mask.bool()"
        )
    try:
        return known_mask.expand_as(queries)
    except RuntimeError:
        raise ValueError(
            f"known_mask of shape {tuple(known_mask.shape)} does not broadcast to queries {tuple(queries.shape)}"
        ) from None


def check_pattern_mask(pattern_mask: Tensor | None, patterns: Tensor) -> Tensor | None:
    """Validate ``pattern_mask [B, N]`` (True = a real pattern, False = padding) against ``patterns [B, N, ...]``.

    Returns:
        The mask on ``patterns``' device, or ``None`` when none is given.
    """
    if pattern_mask is None:
        return None
    B, N = patterns.shape[:2]
    if not isinstance(pattern_mask, Tensor) or pattern_mask.dtype != torch.bool:
        raise ValueError(
            f"pattern_mask must be a bool tensor of shape [B, N] = [{B}, {N}] (True = a real pattern, False = "
            f"padding), got {getattr(pattern_mask, 'dtype', type(pattern_mask).__name__)}; use pattern_mask.bool()"
        )
    if tuple(pattern_mask.shape) != (B, N):
        raise ValueError(
            f"pattern_mask must have shape [B, N] = [{B}, {N}] (one entry per pattern), got {tuple(pattern_mask.shape)}"
        )
    return pattern_mask.to(patterns.device)


def count_written(num_written: int | Tensor, pattern_mask: Tensor | None, count: int) -> int | Tensor:
    """Patterns written per episode after a write of ``count`` patterns (``pattern_mask [B, count]`` or ``None``).

    Without a mask every episode wrote the same number, and an ``int`` count stays an ``int`` (the unmasked
    behaviour); with a mask, or once it is a ``[B]`` tensor, it is a ``[B]`` long tensor.
    """
    return num_written + (count if pattern_mask is None else pattern_mask.sum(dim=1))


def keep_unmasked(keep: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` for episodes where ``keep [B]`` is True, ``old`` elsewhere (``new``, ``old``: ``[B, ...]``)."""
    return torch.where(keep.view(-1, *([1] * (new.dim() - 1))), new, old)


def check_batch(state_batch: int, queries: Tensor) -> None:
    """Raise ValueError unless the state holds as many episodes as ``queries`` has."""
    if state_batch != queries.shape[0]:
        raise ValueError(
            f"state holds {state_batch} episodes but queries have B={queries.shape[0]}; read each episode's "
            "queries from the state written with its patterns (same B)"
        )


class BaselineMemory(nn.Module):
    """Base class: input checks, clamping, ``recall``, the step-wise meta-loss and ``forward``.

    Subclasses set ``self.config`` (a :class:`BaselineConfig`) and implement ``write``, ``read`` and
    ``memory_size``.
    """

    config: BaselineConfig

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one pattern."""
        return tuple(self.config.data_shape)

    @property
    def memory_size(self) -> int:  # pragma: no cover - abstract
        """Float32 values in the written state of one episode (the paper's memory size)."""
        raise NotImplementedError

    def write(self, patterns: Tensor, state=None, pattern_mask: Tensor | None = None):  # pragma: no cover
        """Store ``patterns [B, N, D...]``, continuing from ``state``; return the new state.

        ``pattern_mask [B, N]`` (bool, True = a real pattern) marks padding, which leaves its episode's state
        unchanged; ``None`` writes every pattern.
        """
        raise NotImplementedError

    def read(self, queries: Tensor, state, known_mask: Tensor | None = None) -> ReadResult:  # pragma: no cover
        """Retrieve patterns from ``queries [B, M, D...]``."""
        raise NotImplementedError

    def recall(self, queries: Tensor, state, known_mask: Tensor | None = None) -> Tensor:
        """``[B, M, D...]``: the retrieved patterns (the last read iterate)."""
        return self.read(queries, state, known_mask).retrieved

    # ------------------------------------------------------------------------------------------------- helpers
    def check(self, x: Tensor, name: str) -> None:
        """:func:`check_patterns` against this memory's pattern shape and range."""
        check_patterns(x, name, self.data_shape, self.config.data_range)

    def middle(self) -> float:
        """The middle of ``data_range``: the value an unknown entry is given."""
        lo, hi = self.config.data_range
        return 0.5 * (lo + hi)

    def masked(self, queries: Tensor, known_mask: Tensor | None) -> Tensor:
        """``queries`` with unknown entries set to the middle of ``data_range`` (unchanged without a mask)."""
        if known_mask is None:
            return queries
        return torch.where(known_mask, queries, torch.full_like(queries, self.middle()))

    def project(self, x: Tensor, queries: Tensor, known_mask: Tensor | None) -> Tensor:
        """Clip ``x`` to ``data_range`` and reset known entries to the query."""
        lo, hi = self.config.data_range
        x = x.clamp(lo, hi)
        return x if known_mask is None else torch.where(known_mask, queries, x)

    def to_range(self, logits: Tensor) -> Tensor:
        """Map unbounded outputs into ``data_range``: ``lo + (hi - lo)·σ(logits)`` (``tanh(z/2)`` for ±1)."""
        lo, hi = self.config.data_range
        return lo + (hi - lo) * torch.sigmoid(logits)

    def start_read(self, queries: Tensor, state_batch: int, known_mask: Tensor | None) -> tuple[Tensor | None, Tensor]:
        """Checks shared by every ``read``: returns ``(known_mask broadcast, x⁽⁰⁾ = projected query)``."""
        self.check(queries, "queries")
        check_batch(state_batch, queries)
        known_mask = check_known_mask(known_mask, queries)
        return known_mask, self.project(queries, queries, known_mask)

    # ---------------------------------------------------------------------------------------------- meta-loss
    def meta_loss(self, patterns: Tensor, result: ReadResult) -> tuple[Tensor, Tensor]:
        """Step-wise reconstruction loss ``Σₖ mean_{b,m} ‖x − x⁽ᵏ⁾‖²`` over the read iterates (as EBMM, App. B.4).

        Args:
            patterns: ``[B, M, D...]`` the originals of the queries.
            result: the read result.

        Returns:
            ``(loss, errors)``: the scalar loss and the detached ``[K]`` error of each iterate.
        """
        return stepwise_loss(patterns, result)

    def forward(self, patterns: Tensor, queries: Tensor, known_mask: Tensor | None = None) -> MetaOutput:
        """Write ``patterns``, read ``queries`` (their distorted versions, same order), return the meta-loss.

        Args:
            patterns: ``[B, N, D...]``.
            queries: ``[B, N, D...]`` distorted ``patterns``.
            known_mask: optional bool mask of known (clamped) query entries.
        """
        state = self.write(patterns)
        result = self.read(queries, state, known_mask)
        loss, errors = self.meta_loss(patterns, result)
        return MetaOutput(loss, errors, result, state)


def one_step_read(x0: Tensor, retrieved: Tensor) -> ReadResult:
    """A :class:`ReadResult` of a one-shot reader: iterates ``[x⁽⁰⁾, retrieved]``, ``[2, B, M, D...]``."""
    return ReadResult(torch.stack([x0, retrieved]))

"""Meta-training an agent's EBMM from the agent's own observation stream, with the paper's objective (no labels).

An environment of any supported observation space is played (a random policy by default) and every step becomes a
memory row (:class:`~ebmm_rl.rl.rows.RowLayout`, as :class:`~ebmm_rl.rl.EpisodeMemoryWrapper`'s generic protocol
stores it), encoded into a pattern (:class:`~ebmm_rl.rl.encoders.RowEncoder`). A meta-training batch is ``B``
windows of up to ``L`` consecutive patterns of one episode each; :func:`self_supervised_forward` writes a window
chunk by chunk (as the agent writes: one pattern per step), reads every stored pattern back from a distorted copy
and scores every read iterate with the step-wise reconstruction loss (App. B.4). Distortion: a random
``1 - keep_fraction`` of the entries is replaced by uniform noise in the data range, the others are clamped as
known (the paper's binary-pattern protocol, App. A.2).

A learned encoder (``linear``, ``cnn``) is kept at its random initialisation during meta-training: trained on the
same loss, it could make every pattern equal and recall perfect. The checkpoint stores it beside the memory, so that
the agent starts from the encoder the memory was trained on (the RL loss then trains both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from ebmm_rl.memory import EBMMemory, MetaOutput, ReadResult
from ebmm_rl.rl.encoders import RowEncoder
from ebmm_rl.rl.rows import RowLayout

__all__ = [
    "EpisodeRows",
    "build_encoder",
    "distort",
    "encoder_record",
    "masked_stepwise_loss",
    "self_supervised_forward",
]

Policy = Callable[[Any, np.random.Generator], Any]
"""``policy(observation, rng) -> action``."""


class EpisodeRows:
    """Rows of whole episodes of an environment, and batches of windows of them.

    Args:
        make_env: ``make_env() -> env`` (called once).
        episodes: episodes to play.
        include_action_reward: rows also hold the previous action and reward.
        policy: ``policy(observation, rng) -> action``; ``None`` samples the action space.
        max_steps: cap on the steps of one episode.
        seed: seed of the episodes and the random policy.

    Attributes:
        layout: the :class:`RowLayout` of the rows.
        episodes: ``[T_i, D]`` float32 rows of each episode.
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        episodes: int,
        include_action_reward: bool = False,
        policy: Policy | None = None,
        max_steps: int = 1000,
        seed: int = 0,
    ) -> None:
        if episodes < 1 or max_steps < 1:
            raise ValueError(f"need episodes >= 1 and max_steps >= 1, got {episodes} and {max_steps}")
        env = make_env()
        self.layout = RowLayout(
            env.observation_space,
            env.action_space,
            include_action=include_action_reward,
            include_reward=include_action_reward,
        )
        rng = np.random.default_rng(seed)
        env.action_space.seed(seed)
        self.episodes: list[np.ndarray] = []
        for e in range(episodes):
            obs, _ = env.reset(seed=seed + e)
            rows = [self.layout.numpy_row(obs, where="step 0")]
            for t in range(1, max_steps):
                action = env.action_space.sample() if policy is None else policy(obs, rng)
                obs, reward, terminated, truncated, _ = env.step(action)
                rows.append(self.layout.numpy_row(obs, action, float(reward), where=f"step {t}"))
                if terminated or truncated:
                    break
            self.episodes.append(np.stack(rows))
        env.close()
        self._lengths = np.array([len(r) for r in self.episodes])

    @property
    def row_size(self) -> int:
        """``D``."""
        return self.layout.size

    def sample(self, batch_size: int, window: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``batch_size`` windows of up to ``window`` consecutive rows: ``(rows [B, window, D], lengths [B])``.

        Each window comes from a random episode and a random start (shorter episodes give shorter windows,
        padded with zeros).
        """
        if batch_size < 1 or window < 1:
            raise ValueError(f"need batch_size >= 1 and window >= 1, got {batch_size} and {window}")
        picks = torch.randint(0, len(self.episodes), (batch_size,), generator=generator).tolist()
        out = np.zeros((batch_size, window, self.row_size), dtype=np.float32)
        lengths = np.zeros(batch_size, dtype=np.int64)
        for b, e in enumerate(picks):
            rows = self.episodes[e]
            n = min(window, len(rows))
            start = int(torch.randint(0, len(rows) - n + 1, (1,), generator=generator))
            out[b, :n] = rows[start : start + n]
            lengths[b] = n
        return torch.from_numpy(out).to(generator.device), torch.from_numpy(lengths).to(generator.device)


def distort(
    patterns: Tensor, data_range: tuple[float, float], keep_fraction: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``(queries, known)``: a random ``1 - keep_fraction`` of the entries replaced by uniform noise in the range.

    Args:
        patterns: ``[B, M, P]``.
        data_range: ``(lo, hi)``.
        keep_fraction: fraction of entries kept (and marked known, so reading clamps them).
        generator: random source (``None``: torch's global one).
    """
    if not 0.0 <= keep_fraction < 1.0:
        raise ValueError(f"keep_fraction must lie in [0, 1), got {keep_fraction}")
    lo, hi = data_range
    u = torch.rand(patterns.shape, generator=generator, device=patterns.device)
    known = u < keep_fraction
    noise = lo + (hi - lo) * torch.rand(patterns.shape, generator=generator, device=patterns.device)
    return torch.where(known, patterns, noise), known


def masked_stepwise_loss(patterns: Tensor, result: ReadResult, mask: Tensor) -> tuple[Tensor, Tensor]:
    """The step-wise loss (App. B.4) over the valid queries only: ``Σₖ mean_{valid (b, m)} ‖x − x⁽ᵏ⁾‖²``.

    Args:
        patterns: ``[B, M, P]`` originals.
        result: the read of their distorted copies.
        mask: ``[B, M]`` bool, valid queries.

    Returns:
        ``(loss, errors [K])`` as :func:`ebmm_rl.memory.stepwise_loss`.
    """
    sq = (result.iterates[1:] - patterns.unsqueeze(0)).pow(2).flatten(3).sum(dim=3)  # [K, B, M]
    weight = mask.to(sq.dtype) / mask.sum().clamp(min=1)  # [B, M]
    errors = (sq * weight).sum(dim=(1, 2))  # [K]
    return errors.sum(), errors.detach()


def self_supervised_forward(
    encoder: nn.Module, chunk_size: int = 1, keep_fraction: float = 0.5
) -> Callable[[nn.Module, tuple[Tensor, Tensor]], MetaOutput]:
    """A :class:`~ebmm_rl.training.MetaTrainer` ``forward`` on batches of :meth:`EpisodeRows.sample`.

    Args:
        encoder: rows -> patterns (run without gradients: it is not trained here).
        chunk_size: patterns per written chunk (1: one per step, as the agents write).
        keep_fraction: fraction of each query's entries kept and clamped (see :func:`distort`).

    Returns:
        ``forward(memory, (rows [B, L, D], lengths [B])) -> MetaOutput``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    def forward(memory: nn.Module, batch: tuple[Tensor, Tensor]) -> MetaOutput:
        if not isinstance(memory, EBMMemory):
            raise ValueError(f"self_supervised_forward trains an EBMMemory, got {type(memory).__name__}")
        rows, lengths = batch
        with torch.no_grad():
            patterns = encoder(rows)  # [B, L, P]
        mask = torch.arange(rows.shape[1], device=rows.device) < lengths.unsqueeze(1)  # [B, L]
        state = memory.write_chunked(patterns, chunk_size, pattern_mask=mask)
        queries, known = distort(patterns, memory.config.data_range, keep_fraction)
        result = memory.read(queries, state, known)
        loss, errors = masked_stepwise_loss(patterns, result, mask)
        return MetaOutput(loss, errors, result, state)

    return forward


def encoder_record(encoder: RowEncoder) -> dict[str, Any]:
    """What a checkpoint keeps of a (frozen) encoder: its kind, pattern size and weights."""
    return {"kind": encoder.kind, "pattern_size": encoder.pattern_size, "state": dict(encoder.state_dict())}


def build_encoder(layout: RowLayout, kind: str, pattern_size: int, seed: int) -> RowEncoder:
    """The encoder an agent on rows of ``layout`` would build (its random initialisation seeded by ``seed``)."""
    torch.manual_seed(seed)
    return RowEncoder(kind, layout.size, layout.data_range, layout, pattern_size)

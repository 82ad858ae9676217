"""Pre-training an agent's :class:`~ebmm_rl.rl.core.MemoryCore` on its environment's own episodes, without labels.

An environment of any supported observation space is played (a random policy by default) and every step becomes
the row the agent would store (:class:`EpisodeRows`: the observation, and with ``action_reward`` the previous
action and reward as :class:`~ebmm_rl.rl.EBMMRecurrentPPO` feeds them). A batch is ``B`` windows of up to ``L``
consecutive rows of one episode each. :func:`pretrain_forward` writes a window one row per step through the core
(embedding, key and value maps, retention, the EBMM write), and at every step reads one earlier row of the window
back from its clamped key: the paper's objective on ``[key ; value]`` rows (:meth:`MemoryCore.aux_loss`), which is
also the agents' auxiliary loss during RL.

The maps stay at their seeded initialisation (targets are the rows they make; trained on the same loss, they could
make every row equal and recall perfect): what learns is what the paper meta-learns (``θ̄``, write rates, read step
sizes and momenta) and the retention. The agent starts from the whole core (``core=`` of the policy or extractor,
``agents.train --memory-checkpoint``), and the RL loss then trains all of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from ebmm_rl.checkpoint import load_memory, save_memory
from ebmm_rl.memory import MemoryState, MetaOutput, ReadResult
from ebmm_rl.rl.core import MemoryCore
from ebmm_rl.rl.rows import RowLayout
from ebmm_rl.rl.wrappers import action_reward_space, with_action_reward

__all__ = ["EpisodeRows", "load_core", "pretrain_forward", "recall_metrics", "save_core"]

Policy = Callable[[Any, np.random.Generator], Any]
"""``policy(observation, rng) -> action``."""

CLOCK_SPAN = 4096
"""Windows start at a random step clock below this (an agent's clock runs on across episodes)."""


def save_core(core: MemoryCore, path: str | os.PathLike) -> None:
    """Save a core's architecture and weights (atomically; refused if a weight is not finite)."""
    save_memory(core, path)


def load_core(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> MemoryCore:
    """A core saved by :func:`save_core` or a pre-training checkpoint (``best.pt``, ``checkpoint.pt``).

    Loading reads data only (``weights_only=True``).

    Raises:
        ValueError: the file holds another memory, e.g. an EBMM meta-trained on whole observation rows before
            key/value rows (the message says what to do).
    """
    memory = load_memory(path, map_location)
    if not isinstance(memory, MemoryCore):
        raise ValueError(
            f"{path} holds a {type(memory).__name__}, not an agent's MemoryCore: a memory meta-trained on whole "
            "observation rows (the design before key/value rows) does not fit the agents' key/value memory; "
            "pre-train a core with scripts/meta_train_env.py"
        )
    return memory


class EpisodeRows:
    """Rows of whole episodes of an environment, as an agent stores them, and batches of windows of them.

    Args:
        make_env: ``make_env() -> env`` (called once).
        episodes: episodes to play.
        action_reward: rows also hold the previous action and reward, as
            :class:`~ebmm_rl.rl.wrappers.PreviousActionReward` adds them (``EBMMRecurrentPPO``'s rows).
        policy: ``policy(observation, rng) -> action``; ``None`` samples the action space.
        max_steps: cap on the steps of one episode.
        seed: seed of the episodes and the random policy.
        codes: the agent's ``codes`` (:class:`~ebmm_rl.rl.rows.RowLayout`).

    Attributes:
        layout: the :class:`RowLayout` of the rows.
        episodes: ``[T_i, D]`` float32 rows of each episode.
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        episodes: int,
        action_reward: bool = True,
        policy: Policy | None = None,
        max_steps: int = 1000,
        seed: int = 0,
        codes: int | None = None,
    ) -> None:
        if episodes < 1 or max_steps < 1:
            raise ValueError(f"need episodes >= 1 and max_steps >= 1, got {episodes} and {max_steps}")
        env = make_env()
        space = env.observation_space
        if action_reward:
            space = action_reward_space(space, env.action_space)
        self.layout = RowLayout(space, codes=codes)
        rng = np.random.default_rng(seed)
        env.action_space.seed(seed)

        def row(obs: Any, action: Any, reward: float | None, t: int) -> np.ndarray:
            if action_reward:
                obs = with_action_reward(obs, env.action_space, action, reward)
            return self.layout.numpy_row(obs, where=f"step {t}")

        self.episodes: list[np.ndarray] = []
        for e in range(episodes):
            obs, _ = env.reset(seed=seed + e)
            rows = [row(obs, None, None, 0)]
            for t in range(1, max_steps):
                action = env.action_space.sample() if policy is None else policy(obs, rng)
                obs, reward, terminated, truncated, _ = env.step(action)
                rows.append(row(obs, action, float(reward), t))
                if terminated or truncated:
                    break
            self.episodes.append(np.stack(rows))
        env.close()

    @property
    def row_size(self) -> int:
        """``D``."""
        return self.layout.size

    def sample(self, batch_size: int, window: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """``batch_size`` windows of up to ``window`` consecutive rows.

        Each window comes from a random episode and a random start (shorter episodes give shorter windows, padded
        with zeros), and gets a random step clock (an agent's clock runs on across episodes).

        Returns:
            ``(rows [B, window, D], lengths [B], clock [B])``.
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
        clock = torch.randint(0, CLOCK_SPAN, (batch_size,), generator=generator)
        device = generator.device
        return torch.from_numpy(out).to(device), torch.from_numpy(lengths).to(device), clock.to(device)


def _write_window(core: MemoryCore, rows: Tensor, lengths: Tensor, clock: Tensor) -> tuple[Tensor, MemoryState, Tensor]:
    """Write windows one row per step: ``(rows as patterns [B, L, P], the memory of every step [B · L], steps)``.

    ``steps``: flat indices of the steps that have an earlier row of their window (``t ≥ 1`` and not padding).
    """
    B, L, _ = rows.shape
    counts = torch.arange(L, device=rows.device).expand(B, L)
    with torch.no_grad():  # the maps stay at their initialisation (module docstring)
        u = core.embed(rows)
        x = core.patterns(u, counts, clock.unsqueeze(1) + counts)
    mask = counts < lengths.unsqueeze(1)
    before, _ = core.chain(x, u, core.memory.initial_state(B), mask=mask, create_graph=torch.is_grad_enabled())
    steps = ((counts >= 1) & mask).reshape(-1).nonzero().squeeze(1)
    return x, MemoryState.stack(before).index(steps), steps


def pretrain_forward(core: MemoryCore, batch: tuple[Tensor, Tensor, Tensor]) -> MetaOutput:
    """A :class:`~ebmm_rl.training.MetaTrainer` ``forward`` on batches of :meth:`EpisodeRows.sample`.

    Every step ``t ≥ 1`` of a window reads one earlier row of the window from its key (:meth:`MemoryCore.aux_loss`).

    Raises:
        ValueError: ``core`` is not a :class:`MemoryCore`, or no window has two rows.
    """
    if not isinstance(core, MemoryCore):
        raise ValueError(f"pretrain_forward trains a MemoryCore, got {type(core).__name__}")
    rows, lengths, clock = batch
    x, reads, steps = _write_window(core, rows, lengths, clock)
    starts = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
    starts[:, 0] = True
    out = core.aux_loss(x, starts, reads, steps)
    if out is None:
        raise ValueError("no window holds two rows: the episodes are too short for pre-training (use --window >= 2)")
    loss, errors = out
    return MetaOutput(loss, errors, ReadResult(x.new_zeros(1, 1, 1, 1)), reads)


@torch.no_grad()
def recall_metrics(core: MemoryCore, batch: tuple[Tensor, Tensor, Tensor], generator: torch.Generator) -> dict:
    """Held-out recall: every step reads one earlier row (drawn by ``generator``) from its key.

    Returns:
        ``{"value_error": mean squared error of the retrieved value dims, "value_error_start": the same for the
        query as it starts (values at 0)}``, summed over the value dims and averaged over the reads.
    """
    rows, lengths, clock = batch
    x, reads, steps = _write_window(core, rows, lengths, clock)
    B, L, P = x.shape
    t = steps % L
    s = (torch.rand(t.shape, generator=generator, device=t.device) * t).long().clamp(max=t - 1)
    target = x.reshape(B * L, P)[steps - t + s]  # [m, P]
    key = slice(0, core.position_size + core.key_size)
    query = target.clone()
    query[:, key.stop :] = 0
    known = torch.zeros(P, dtype=torch.bool, device=x.device)
    known[key] = True
    with torch.enable_grad():
        result = core.memory.read(query.unsqueeze(1), reads, known, create_graph=False)
    value = slice(key.stop, P)
    error = (result.retrieved[:, 0, value] - target[:, value]).pow(2).sum(dim=1).mean()
    start = target[:, value].pow(2).sum(dim=1).mean()
    return {"value_error": float(error), "value_error_start": float(start)}

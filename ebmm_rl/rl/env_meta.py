"""Meta-training an EBMM on a memory-probe environment's own episodes, for the RL agents' memory.

An agent's :class:`~ebmm_rl.rl.extractor.EBMMExtractor` writes the rows of ``EpisodeMemoryWrapper``'s
``"history"`` one chunk at a time and reads with ``"query"``. :class:`EnvRecallSampler` draws exactly those
observations from the environment, at every scored query step, together with the stored row the query asks
for (its *target*), and :func:`recall_forward` meta-trains on them with the paper's step-wise loss (App. B.4):
write the history chunk by chunk (the extractor's ``chunk_size``), read the query, compare every read iterate
with the target. The result loads into the agents with ``--memory-checkpoint`` (``scripts/meta_train_env.py``).

Which stored row a query asks for comes from the environment's ground truth (``get_state()``), per family:

* ``BinaryRecall``, ``KeyValueRecall``, ``ImageRecall``: row ``target_indices[q]`` of the write phase (the
  stored pattern, the (key, value) pair, the image);
* ``DelayedRecall``: row 0, the context (its query is blank: the memory must recall from nothing);
* ``Familiarity``: a repeat's undistorted original, found in the history (it may be a study pattern or an
  earlier stream pattern); "new" queries have no stored row and are skipped. Recall of repeats is the training
  signal; whether the energy then separates seen from new is measured, not trained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from ebmm_rl.memory import EBMMemory, MetaOutput, stepwise_loss
from ebmm_rl.rl.wrappers import EpisodeMemoryWrapper

__all__ = ["EnvRecallBatch", "EnvRecallSampler", "recall_forward", "recall_metrics"]

QUERY_PHASE = 1


@dataclasses.dataclass(frozen=True)
class EnvRecallBatch:
    """Query steps of memory-probe episodes, as the extractor sees them (``L`` = ``max_patterns``).

    Attributes:
        history: ``[B, L, D]`` stored rows at the query step, padded.
        lengths: ``[B]`` valid rows of each history.
        queries: ``[B, D]`` the query pattern.
        targets: ``[B, D]`` the stored row the query asks for.
    """

    history: Tensor
    lengths: Tensor
    queries: Tensor
    targets: Tensor

    def as_tuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(history, lengths, queries, targets)``: the arguments of :func:`recall_forward`."""
        return self.history, self.lengths, self.queries, self.targets


def _target_row(family: str, state: dict[str, Any], query_index: int, history: np.ndarray, length: int, wrapper):
    """Row of ``history[:length]`` that query ``query_index`` of the episode asks for, or ``None`` (no target)."""
    if family in ("BinaryRecallEnv", "KeyValueRecallEnv", "ImageRecallEnv"):
        return int(state["target_indices"][query_index])
    if family == "DelayedRecallEnv":
        return 0
    if family == "FamiliarityEnv":
        if not int(state["labels"][query_index]):
            return None
        original = wrapper.map_pattern(state["originals"][int(state["sources"][query_index])])
        hits = np.flatnonzero((history[:length] == original).all(axis=1))
        return int(hits[0]) if hits.size else None
    raise ValueError(f"no recall target is defined for {family}")


class EnvRecallSampler:
    """Draws meta-training batches from an ``ebmm/...`` environment wrapped like the agents wrap it.

    Episodes are played with the oracle's answers (actions do not change an episode: every probe draws it at
    ``reset``); each scored query step with a target becomes one row of the batch.

    Args:
        env_id: a registered ``ebmm/...`` id.
        write_phases: phases whose patterns are stored (``agents.train`` uses ``(0, 1)`` for ``Familiarity``).
        env_kwargs: keyword arguments of ``gym.make``.
    """

    def __init__(
        self, env_id: str, write_phases: tuple[int, ...] = (0,), env_kwargs: dict[str, Any] | None = None
    ) -> None:
        import envs  # noqa: F401  registers the ids

        self.env = EpisodeMemoryWrapper(
            gym.make(env_id, **(env_kwargs or {})), write_phases=write_phases, protocol="probe"
        )
        self.family = type(self.env.unwrapped).__name__
        if self.family not in _FAMILIES:
            raise ValueError(
                f"no recall target is defined for {self.family} ({env_id}); EnvRecallSampler supports the ebmm/ "
                f"memory probes: {', '.join(f.removesuffix('Env') for f in _FAMILIES)}"
            )
        self.max_patterns = self.env.max_patterns
        self.pattern_size = self.env.pattern_size
        self.data_range = self.env.data_range

    def episode_rows(self, seed: int) -> list[tuple[np.ndarray, int, np.ndarray, np.ndarray]]:
        """``(history [L, D], length, query [D], target [D])`` for every query step of one episode with a target."""
        obs, _ = self.env.reset(seed=seed)
        rows = []
        query_index = 0
        while True:
            state = self.env.unwrapped.get_state()
            if int(obs["phase"]) == QUERY_PHASE and state["answer"] is not None:
                length = int(obs["history_len"])
                row = _target_row(self.family, state, query_index, obs["history"], length, self.env)
                if row is not None:
                    rows.append((obs["history"], length, obs["query"], obs["history"][row].copy()))
                query_index += 1
            obs, _, terminated, truncated, _ = self.env.step(_action(self.env, state["answer"]))
            if terminated or truncated:
                return rows

    def sample(self, batch_size: int, generator: torch.Generator) -> EnvRecallBatch:
        """``batch_size`` query rows from fresh episodes seeded by ``generator`` (reproducible)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rows: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]] = []
        while len(rows) < batch_size:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            rows.extend(self.episode_rows(seed))
        rows = rows[:batch_size]
        device = generator.device
        return EnvRecallBatch(
            history=torch.as_tensor(np.stack([r[0] for r in rows]), device=device),
            lengths=torch.as_tensor([r[1] for r in rows], dtype=torch.long, device=device),
            queries=torch.as_tensor(np.stack([r[2] for r in rows]), device=device),
            targets=torch.as_tensor(np.stack([r[3] for r in rows]), device=device),
        )

    def sampler(self, batch_size: int) -> Callable[[torch.Generator], tuple[Tensor, Tensor, Tensor, Tensor]]:
        """A :class:`~ebmm_rl.training.MetaTrainer` sampler drawing ``batch_size`` rows per meta-step."""
        return lambda generator: self.sample(batch_size, generator).as_tuple()


_FAMILIES = ("BinaryRecallEnv", "KeyValueRecallEnv", "ImageRecallEnv", "DelayedRecallEnv", "FamiliarityEnv")


def _action(env: gym.Env, answer: Any) -> Any:
    """The oracle's answer, or any valid action on unscored steps."""
    return env.action_space.sample() if answer is None else answer


def recall_forward(chunk_size: int) -> Callable[[nn.Module, tuple[Tensor, ...]], MetaOutput]:
    """A :class:`~ebmm_rl.training.MetaTrainer` ``forward``: write the history in chunks, read the query.

    Args:
        chunk_size: patterns per chunk, as in the agent's extractor (1: one pattern per env step).

    Returns:
        ``forward(memory, (history, lengths, queries, targets)) -> MetaOutput``: the history rows are written
        chunk by chunk with padding masked (:meth:`EBMMemory.write_chunked`), the query is read (``M = 1``) and
        the step-wise loss compares every read iterate with the target.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    def forward(memory: nn.Module, batch: tuple[Tensor, ...]) -> MetaOutput:
        if not isinstance(memory, EBMMemory):
            raise ValueError(f"recall_forward trains an EBMMemory, got {type(memory).__name__}")
        history, lengths, queries, targets = batch
        mask = torch.arange(history.shape[1], device=history.device) < lengths.unsqueeze(1)  # [B, L]
        state = memory.write_chunked(history, chunk_size, pattern_mask=mask)
        result = memory.read(queries.unsqueeze(1), state)
        loss, errors = stepwise_loss(targets.unsqueeze(1), result)
        return MetaOutput(loss, errors, result, state)

    return forward


@torch.no_grad()
def recall_metrics(memory: EBMMemory, batch: EnvRecallBatch, chunk_size: int) -> dict[str, float]:
    """Recall quality on ``batch``, with the same write/read as :func:`recall_forward` (no graph kept).

    Returns:
        ``mse``: mean squared error of the retrieved pattern against the target; ``mse_query``: the same for the
        query itself (what reading has to beat); for ``[-1, 1]`` data also ``bit_error`` and ``bit_error_query``
        (fraction of signs wrong) and ``nearest_acc``: how often the retrieved pattern is nearer to its target
        than to any other stored row (what an agent answering *which* row needs).
    """
    with torch.enable_grad():  # writing takes gradient steps on the fast weights
        mask = torch.arange(batch.history.shape[1], device=batch.history.device) < batch.lengths.unsqueeze(1)
        state = memory.write_chunked(batch.history, chunk_size, pattern_mask=mask, create_graph=False)
        result = memory.read(batch.queries.unsqueeze(1), state, create_graph=False)
    retrieved = result.retrieved[:, 0].detach()  # [B, D]
    out = {
        "mse": float((retrieved - batch.targets).pow(2).mean()),
        "mse_query": float((batch.queries - batch.targets).pow(2).mean()),
    }
    distance = (retrieved.unsqueeze(1) - batch.history).pow(2).sum(dim=2)  # [B, L]
    distance = distance.masked_fill(~mask, float("inf"))
    nearest = distance.argmin(dim=1)  # [B]
    target_distance = (retrieved - batch.targets).pow(2).sum(dim=1)  # [B]
    out["nearest_acc"] = float((distance.gather(1, nearest.unsqueeze(1))[:, 0] >= target_distance).float().mean())
    if tuple(memory.config.data_range) == (-1.0, 1.0):
        out["bit_error"] = float((torch.sign(retrieved) != torch.sign(batch.targets)).float().mean())
        out["bit_error_query"] = float((torch.sign(batch.queries) != torch.sign(batch.targets)).float().mean())
    return out

"""``EBMMExtractor``: the key/value EBMM core as a Stable-Baselines3 features extractor (PPO, A2C).

Recipe (any environment; the ``ebmm/...`` probes too)::

    env = EpisodeMemoryWrapper(gym.make("CartPole-v1"), max_patterns=32)
    model = PPO("MultiInputPolicy", env, policy_kwargs=dict(features_extractor_class=EBMMExtractor))

SB3's stateless policies re-evaluate stored observations in shuffled minibatches, so every observation carries its
episode's rows (``"history"``, added by :class:`~ebmm_rl.rl.wrappers.EpisodeMemoryWrapper`). For each observation
the extractor runs the same :class:`~ebmm_rl.rl.core.MemoryCore` as :class:`~ebmm_rl.rl.recurrent.EBMMRecurrentPolicy`:
it writes the history's rows one per step from ``θ̄`` (row ``i`` at position ``i`` of the window), then reads with
the current row (``"query"``) at position ``history_len``. So its features are the recurrent policy's at the same
step, as long as the window has not dropped a row.

Cost. With gradients (PPO/A2C updates) the whole history is written with a graph, one row per step. Without them
(rollouts, evaluation, ``predict``) a cache of written memories, keyed by a fingerprint of each history prefix, lets
a step write only the rows that are new since the previous step of its episode. Past a FIFO window's length the
history's first row changes at every step and nothing is found: the window is rewritten (``L`` rows per step; the
recurrent route writes one).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from ebmm_rl.memory import EBMMemory, MemoryState
from ebmm_rl.rl.core import FAST_CORE, CoreConfig, MemoryCore
from ebmm_rl.rl.history import HistoryFeaturesExtractor, history_lengths
from ebmm_rl.rl.losses import inject_loss

__all__ = ["FAST_RL_MEMORY", "EBMMExtractor"]

FAST_RL_MEMORY: dict[str, Any] = dict(memory=FAST_CORE)
"""Keyword arguments of a smaller, cheaper core, for ``policy_kwargs`` of ``EBMMRecurrentPPO`` or for
``features_extractor_kwargs`` of :class:`EBMMExtractor`: embedding 32, key 8, value 8, energy hidden 32 with 16
memory units, 2 write and 2 read steps::

    EBMMRecurrentPPO(env=env, policy_kwargs=FAST_RL_MEMORY)"""

_Key = tuple[int, bytes]  # (number of rows written, digest of those rows)


class EBMMExtractor(HistoryFeaturesExtractor):
    """Writes each observation's history into a :class:`MemoryCore` and reads with the current row.

    Features: the core's (:meth:`MemoryCore.features`: the embedding of the current row, each query head's
    retrieved free dimensions, energies, ``log(1 + n)``), then the probe's ``phase`` one-hot if the observation has
    one, through an optional MLP (``net_arch``). The RL loss trains the whole core.

    Args:
        observation_space: the ``Dict`` space of :class:`~ebmm_rl.rl.wrappers.EpisodeMemoryWrapper`.
        memory: the core's settings: a :class:`CoreConfig` or a dict of its fields; default ``CoreConfig()``.
        core: a ready :class:`MemoryCore` (or the path of a core checkpoint of ``scripts/meta_train_env.py``)
            instead of a fresh one; pass the object when the model is to be saved (it travels inside ``model.zip``).
        net_arch: hidden sizes of a ReLU MLP on top of the features; empty = the raw features.
        cache_size: written memories (one per history prefix) kept for gradient-free calls; 0 disables the cache.
        aux_coef: weight of the paper's objective on the stored rows (:meth:`MemoryCore.recall_loss` of one
            stored row per observation), added to the RL loss in every update (0: none).
        freeze_memory: no gradient from the RL loss to the memory's meta-parameters and retention (the maps
            still learn).

    Raises:
        ValueError: the observation space lacks the wrapper's keys, bad settings, or arguments of the design before
            key/value rows (``energy``, ``ebmm``, ``encoder``, ``chunk_size``, ...; the message says what changed).
    """

    PARTS = ("core", "phase")

    def __init__(
        self,
        observation_space: spaces.Space,
        memory: CoreConfig | dict[str, Any] | None = None,
        core: MemoryCore | str | os.PathLike | None = None,
        net_arch: Sequence[int] = (),
        cache_size: int = 4096,
        aux_coef: float = 0.0,
        freeze_memory: bool = False,
        **old: Any,
    ) -> None:
        if old or isinstance(memory, EBMMemory | str | os.PathLike):
            raise ValueError(
                f"EBMMExtractor arguments {sorted(old) or ['memory=<EBMMemory or path>']} belong to the design before "
                "key/value rows, whose memory stored whole observation rows. The extractor now runs a MemoryCore: "
                "memory=dict(...) takes fields of ebmm_rl.rl.CoreConfig (hidden_size, dynamic_size, ebmm=dict(...), "
                "...), core=<MemoryCore or core checkpoint of scripts/meta_train_env.py> a pre-trained core"
            )
        if memory is not None and not isinstance(memory, CoreConfig | dict):
            raise TypeError(
                f"memory must be an ebmm_rl.rl.CoreConfig or a dict of its fields (e.g. dict(hidden_size=32)), got "
                f"{type(memory).__name__} {memory!r}"
            )
        super().__init__(observation_space)
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an integer >= 0 (0 disables the cache), got {cache_size!r}")
        if not (isinstance(aux_coef, int | float) and np.isfinite(aux_coef) and aux_coef >= 0):
            raise ValueError(f"aux_coef must be a finite number >= 0, got {aux_coef!r}")
        self.cache_size = cache_size
        self.aux_coef = float(aux_coef)
        if core is not None and not isinstance(core, MemoryCore):
            from ebmm_rl.rl.pretrain import load_core

            core = load_core(core)
        if core is None:
            config = CoreConfig.build(**memory) if isinstance(memory, dict) else (memory or CoreConfig())
            core = MemoryCore(self.row_size, config, self.layout, self.row_range)
        elif core.row_size != self.row_size:
            raise ValueError(f"the given core embeds rows of {core.row_size} entries but this observation space gives "
                             f"rows of {self.row_size}: it was built for another environment")  # fmt: skip
        self.core = core
        if freeze_memory:
            self.core.memory.requires_grad_(False)
            self.core.retention_raw.requires_grad_(False)
        self._cache: OrderedDict[_Key, MemoryState] = OrderedDict()  # key -> the memory of one episode
        self._cache_version: tuple[tuple[int, int], ...] | None = None
        self.cache_hits = 0
        """Rows whose memory came from the cache (whole or as a prefix), since construction."""
        self.cache_lookups = 0
        """Rows looked up in the cache, since construction."""
        self.rows_written = 0
        """Rows written by gradient-free calls (the cached path), since construction."""
        self._build_head(observation_space, net_arch)
        self._cache.clear()

    @property
    def last_aux_loss(self) -> float | None:
        """The auxiliary loss of the last update batch (``aux_coef > 0``)."""
        return self.core.last_aux_loss

    # ---------------------------------------------------------------------------------------------- forward
    def _raw_features(self, obs: dict[str, Tensor]) -> Tensor:
        history = obs["history"]  # [B, L, D]
        lengths = history_lengths(obs["history_len"], self.max_patterns)  # [B]
        create_graph = self.needs_graph()
        x = None
        if create_graph or self.cache_size == 0:
            state, x = self.write(history, lengths, create_graph)
        else:
            state = self.write_cached(history, lengths)
        u = self.core.embed(obs["query"])  # [B, E]
        features = self.core.read_features(u, lengths, lengths, state, create_graph=create_graph)
        if "phase" in self.features:
            features = torch.cat([features, obs["phase"].reshape(features.shape[0], -1)], dim=1)
        if self.aux_coef > 0 and create_graph and x is not None:
            valid = torch.arange(history.shape[1], device=history.device) < lengths.unsqueeze(1)  # [B, L]
            has = valid.any(dim=1)
            if bool(has.any()):
                pick = torch.multinomial(valid[has].float(), 1)[:, 0]  # one stored row per observation
                loss, _ = self.core.recall_loss(x[has, pick], state.index(has))
                features = inject_loss(features, loss, self.aux_coef)
        return features

    def needs_graph(self) -> bool:
        """Whether writes and reads must keep the graph: gradients are on and the core is trainable."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.core.parameters())

    def write(self, history: Tensor, lengths: Tensor, create_graph: bool) -> tuple[MemoryState, Tensor]:
        """Write each history from ``θ̄``, one row per step: ``(the memories, the rows [B, L, P])``.

        Args:
            history: ``[B, L, D]`` the history's rows, padded.
            lengths: ``[B]`` valid rows of each history.
            create_graph: keep the graph for gradients.
        """
        B, L, _ = history.shape
        counts = torch.arange(L, device=history.device).expand(B, L)  # row i sits at position i of the window
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            u = self.core.embed(history)  # [B, L, E]
            x = self.core.patterns(u, counts, counts)  # [B, L, P]
        longest = int(lengths.max()) if B else 0
        state = self.core.memory.initial_state(B)
        if longest == 0:
            return state, x
        mask = counts[:, :longest] < lengths.unsqueeze(1)  # [B, longest]
        _, state = self.core.chain(x[:, :longest], u[:, :longest], state, mask=mask, create_graph=create_graph)
        return state, x

    @torch.no_grad()
    def write_cached(self, history: Tensor, lengths: Tensor) -> MemoryState:
        """The memories of :meth:`write`, writing only the rows that no cached prefix holds.

        For each observation, the longest history prefix whose memory is cached is looked up by its fingerprint
        (length and a BLAKE2 digest of the raw rows); only the rows after it are written, for all observations in
        one batch, and the memories after each new row are cached. The cache is emptied whenever a core parameter
        changes in place (an optimiser step, ``load_state_dict``: their version counters move) and, for a
        trainable core, whenever the training mode changes (see :meth:`train`).

        Args:
            history: ``[B, L, D]`` raw rows, padded.
            lengths: ``[B]`` valid rows of each history.
        """
        self._check_cache_version()
        B = history.shape[0]
        rows = np.ascontiguousarray(history.detach().cpu().numpy(), dtype=np.float32)  # [B, L, D]
        lens = lengths.cpu().tolist()
        starts: list[int] = []
        todo: list[list[_Key]] = []  # per observation: keys of the prefixes still to write, the last the whole one
        found: list[MemoryState | None] = []
        for b in range(B):
            keys = _prefix_keys(rows[b], lens[b])  # [(0, ...), (1, ...), ..., (len, ...)]
            self.cache_lookups += 1
            hit = next((i for i in range(len(keys) - 1, 0, -1) if keys[i] in self._cache), None)
            if hit is None:  # nothing cached: start from θ̄ (prefix 0 is never stored)
                found.append(None)
                starts.append(0)
                todo.append(keys[1:])
            else:
                self._cache.move_to_end(keys[hit])
                self.cache_hits += 1
                found.append(self._cache[keys[hit]])
                starts.append(keys[hit][0])
                todo.append(keys[hit + 1 :])
        state = self.core.memory.initial_state(B)
        if any(f is not None for f in found):
            have = torch.tensor([f is not None for f in found], device=history.device)
            cached = MemoryState.stack([f if f is not None else state.index(slice(0, 1)) for f in found])
            state = cached.where(have, state)
        rounds = max((len(t) for t in todo), default=0)
        if rounds:
            pos = torch.tensor(starts, device=history.device)  # [B]
            ends = torch.as_tensor(lens, device=history.device)  # [B]
            batch = torch.arange(B, device=history.device)
            schedule = self.core.memory.schedule(create_graph=False)
            for j in range(rounds):
                idx = pos + j  # [B] the row each observation writes this round
                mask = idx < ends
                u = self.core.embed(history[batch, idx.clamp(max=history.shape[1] - 1)])  # [B, E]
                x = self.core.patterns(u, idx, idx)
                state = self.core.write(x, state, u, mask, create_graph=False, schedule=schedule)
                self.rows_written += int(mask.sum())
                for b in range(B):
                    if j < len(todo[b]):
                        self._store(todo[b][j], state.index(slice(b, b + 1)))
        return state

    # ------------------------------------------------------------------------------------------------ cache
    def clear_cache(self) -> None:
        """Forget every cached memory."""
        self._cache.clear()

    def train(self, mode: bool = True) -> EBMMExtractor:
        """Set the training mode; a change of mode empties the cache unless the core is frozen.

        SB3 switches to training before every update and back before every rollout. A trainable core may have
        changed in between (also through ``.data``, which no version counter sees), so its cache is dropped.
        """
        if mode != self.training and not self.memory_frozen():
            self.clear_cache()
        return super().train(mode)

    def memory_frozen(self) -> bool:
        """Whether no parameter of the core requires gradients (nothing the RL loss can change)."""
        return not any(p.requires_grad for p in self.core.parameters())

    def _store(self, key: _Key, state: MemoryState) -> None:
        self._cache[key] = state
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _check_cache_version(self) -> None:
        version = tuple((p.data_ptr(), p._version) for p in self.core.parameters())
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version

    def _dry_features(self, observation_space: spaces.Space) -> Tensor:
        saved, self.cache_size = self.cache_size, 0
        try:
            return super()._dry_features(observation_space)
        finally:
            self.cache_size = saved


def _prefix_keys(rows: np.ndarray, length: int) -> list[_Key]:
    """Fingerprints of ``rows[:n]`` for ``n = 0 .. length``."""
    digest = hashlib.blake2b(digest_size=16)
    keys: list[_Key] = [(0, digest.digest())]
    for end in range(1, length + 1):
        digest.update(rows[end - 1].tobytes())
        keys.append((end, digest.copy().digest()))
    return keys

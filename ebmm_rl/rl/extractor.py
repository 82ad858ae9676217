"""``EBMMExtractor``: an EBMM episodic memory as a Stable-Baselines3 features extractor.

Recipe (any environment; the ``ebmm/...`` probes too)::

    env = EpisodeMemoryWrapper(gym.make("CartPole-v1"), max_patterns=32)
    model = PPO("MultiInputPolicy", env, policy_kwargs=dict(features_extractor_class=EBMMExtractor))

For every observation the extractor encodes the episode's stored rows (``"history"``, added by
:class:`~ebmm_rl.rl.wrappers.EpisodeMemoryWrapper`) into patterns (:mod:`ebmm_rl.rl.encoders`), writes them into a
fresh memory, reads with the encoded current row (``"query"``) and returns features built from what it retrieved.
The features are a function of the observation alone, as SB3 requires: PPO/A2C re-evaluate stored observations in
shuffled minibatches. Inside ``EBMMRecurrentPolicy`` (``recurrent=True``) the extractor instead takes the raw
observation, and the policy carries the memory from step to step.

Cost. With gradients enabled (PPO/A2C updates) the whole history is written from scratch, chunk by chunk, so
that gradients reach the memory's meta-parameters. Without gradients (rollout collection, evaluation,
``predict``) a cache of written memories, keyed by a fingerprint of each history prefix, lets a step write only
the patterns that are new since the previous step of its episode: one chunk per stored pattern instead of the
whole history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import obs_as_tensor
from torch import Tensor, nn

from ebmm_rl.checkpoint import load_memory
from ebmm_rl.energy.mlp import MLPConfig, MLPEnergy
from ebmm_rl.memory import EBMMConfig, EBMMemory, MemoryState, ReadResult, WriteSchedule, stepwise_loss
from ebmm_rl.rl.encoders import DEFAULT_PATTERN_SIZE, RowEncoder
from ebmm_rl.rl.rows import RowLayout, RowsBox

__all__ = [
    "inject_loss",
    "DEFAULT_RL_EBMM_CONFIG",
    "DEFAULT_RL_ENERGY",
    "FAST_RL_MEMORY",
    "EBMMExtractor",
    "FEATURE_PARTS",
    "HistoryFeaturesExtractor",
    "feature_parts",
]

DEFAULT_RL_ENERGY = dict(hidden_size=64, dynamic_size=32, hops=2)
"""Sizes of the fresh :class:`MLPEnergy` the extractor builds when given no memory (``input_size`` = ``D``)."""

DEFAULT_RL_EBMM_CONFIG = EBMMConfig(
    write_steps=3,
    read_steps=3,
    write_lr_init=0.1,
    read_step_init=2.0,
    use_grad_norm_term=False,
    prior_anchor="initial",
)
"""Write/read rules of a fresh memory: fewer steps than the paper's 5 (each costs a double-backward per env
step), the initial step sizes that ``scripts/meta_train_binary.py`` found to learn fast (the paper's 1e-4
write rate barely changes the fast weights before meta-training), and no ``α‖∇ₓE‖²`` term in the writing loss:
with it, every RL update backpropagates through third-order graphs, and RecurrentPPO + EBMMRecurrentPolicy on
CartPole (8 envs, 1 thread) cost 92 ms per env step against 6.8 ms without it (``docs/rl.md``). The paper's
App. D reports that the term helps recall; ``ebmm=dict(use_grad_norm_term=True)`` restores it. The prior pulls
every write toward ``θ̄`` (``prior_anchor="initial"``, the paper's rule), unlike ``EBMMConfig``'s default: an agent
writes one row per step for as long as an episode lasts, and anchoring each write at the memory before it let the
fast weights drift. RecurrentPPO + EBMMRecurrentPolicy on ``ebmm/CartPole-NoVel-v1`` (30,000 steps, 3 seeds,
``docs/rl.md``) returned 51, 36 and 146 with ``"previous"`` against 135, 67 and 144 with ``"initial"`` (same
seeds and code).
``data_range`` comes from the encoder."""

FAST_RL_MEMORY: dict[str, dict[str, int]] = dict(
    energy=dict(hidden_size=32, dynamic_size=16), ebmm=dict(write_steps=2, read_steps=2)
)
"""``features_extractor_kwargs`` of a smaller, faster fresh memory: hidden 32, 16 memory units, 2 write and 2 read
steps (the defaults: 64, 32, 3 and 3). It holds half the writable floats and costs about a fifth of the
arithmetic per env step (4 energy-gradient evaluations of about 20 kFLOP per row against 6 of about 82). Use::

    EBMMRecurrentPPO(env=env, policy_kwargs=dict(features_extractor_kwargs=FAST_RL_MEMORY))

(``agents.train --hidden-size 32 --dynamic-size 16 --write-steps 2 --read-steps 2``). Measured on
``ebmm/CartPole-NoVel-v1`` (8 envs, 32 steps per env per rollout, minibatch 256, 1 torch thread, this project's
2-core CPU; ``docs/rl.md``): with ``EBMMRecurrentPPO`` and ``bptt_steps=1`` it ran at 1.08× (4 PPO epochs) and
1.26× (10 epochs) RecurrentPPO-LSTM's learn steps per CPU-second, side by side, against 0.66× and 0.76× with
the defaults. Over 5 seeds of 30,000 steps it returned 137 on average (50-231), against 98 (54-166) with the
defaults; on ``ebmm/DelayedRecall-Easy-v0`` (3 seeds, 16,000 steps) the recurrent route scored 1.000 against 0.963,
the extractor 0.829 against 0.894 (one seed of three at 0.723); on ``ebmm/KeyValueRecall-Easy-v0`` the recurrent
route 0.818 against 0.837. Its smaller memory holds less: prefer the
defaults where an episode has many things to remember, and for the extractor route."""

_REQUIRED_KEYS = ("history", "history_len", "query")

FEATURE_PARTS = ("retrieved", "energies", "query", "phase", "similarities")
"""Names of the parts an extractor's features can hold (see :class:`EBMMExtractor`)."""
_Key = tuple[int, bytes]  # (number of patterns written, digest of those patterns)


class HistoryFeaturesExtractor(BaseFeaturesExtractor):
    """What every memory extractor shares: the observation space, the feature parts, the head, ``forward``, ``apply``.

    Two modes, from the observation space:

    * ``"history"``: the ``Dict`` space of :class:`~ebmm_rl.rl.wrappers.EpisodeMemoryWrapper` (``history``,
      ``history_len``, ``query``): every observation carries its episode's rows.
    * ``"rows"`` (``recurrent=True`` and any other space of :data:`~ebmm_rl.rl.rows.SUPPORTED_SPACES`): an
      observation is one step, made into a row by :attr:`row_layout`; a recurrent policy carries the memory.

    A subclass builds its memory, then calls :meth:`_build_head`, and implements ``_raw_features(obs) -> [B, F]``
    (the chosen parts, concatenated in :attr:`features` order). ``PARTS`` lists the part names it can compute.

    Args:
        observation_space: see the modes.
        similarities: add the ``similarities`` part to the default parts.
        features: the parts to use, in order, from ``PARTS`` (default: every part but ``similarities``).
        recurrent: set by a recurrent policy: accept raw observation spaces (``"rows"`` mode).

    Attributes:
        mode: ``"history"`` or ``"rows"``.
        row_size: ``D``, entries of a row; ``row_range``: the box rows lie in.
        layout: the :class:`~ebmm_rl.rl.rows.RowLayout` of the rows' parts (``None`` for a probe's patterns).
        max_patterns: ``L``, rows of ``"history"`` (0 in ``"rows"`` mode).
        pattern_size, data_range: what the memory stores (the rows themselves unless a subclass encodes them).
    """

    PARTS: tuple[str, ...] = FEATURE_PARTS

    def __init__(
        self,
        observation_space: spaces.Space,
        similarities: bool = False,
        features: Sequence[str] | None = None,
        recurrent: bool = False,
    ) -> None:
        owner = type(self).__name__
        is_history = isinstance(observation_space, spaces.Dict) and "history" in observation_space.spaces
        if not recurrent or is_history:
            _check_space(observation_space, owner=owner)
        super().__init__(observation_space, features_dim=1)  # the real size is found by _build_head's dry pass
        self.mode = "history" if is_history else "rows"
        self.row_layout: RowLayout | None = None
        if self.mode == "history":
            history_space = observation_space["history"]
            self.max_patterns, self.row_size = (int(n) for n in history_space.shape)
            self.row_range = (float(np.min(history_space.low)), float(np.max(history_space.high)))
            self.layout = history_space.layout if isinstance(history_space, RowsBox) else None
            has_phase = isinstance(observation_space.spaces.get("phase"), spaces.Discrete)
        else:
            self.row_layout = RowLayout(observation_space)  # rows of a RowObservation space are the obs itself
            self.layout = observation_space.layout if isinstance(observation_space, RowsBox) else self.row_layout
            self.max_patterns, self.row_size = 0, self.row_layout.size
            self.row_range = self.row_layout.data_range
            has_phase = False
            if similarities or (features is not None and "similarities" in features):
                raise ValueError(f"{owner}: 'similarities' compares with the stored rows, which only the "
                                 "EpisodeMemoryWrapper route has; drop it on the recurrent route")  # fmt: skip
        self.pattern_size, self.data_range = self.row_size, self.row_range
        self.features = feature_parts(features, similarities, has_phase, self.PARTS, owner)
        self.head: nn.Module = nn.Identity()

    def _build_head(self, observation_space: spaces.Space, net_arch: Sequence[int]) -> None:
        """Size the raw features by a dry pass on an empty history, then add the ReLU MLP ``net_arch`` on top."""
        with torch.no_grad():
            size = self._dry_features(observation_space).shape[1]
        layers: list[nn.Module] = []
        for width in net_arch:
            layers += [nn.Linear(size, int(width)), nn.ReLU()]
            size = int(width)
        if layers:
            self.head = nn.Sequential(*layers)
        self._features_dim = size

    def _dry_features(self, observation_space: spaces.Space) -> Tensor:
        return self._raw_features(_dummy_observation(observation_space))

    def _raw_features(self, obs: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        """Features ``[B, features_dim]`` of a batch of preprocessed observations (SB3's ``preprocess_obs``).

        Args:
            observations: ``history: [B, L, D]``, ``history_len: [B, L + 1]`` (one-hot; ``[B, 1, L + 1]`` from a
                rollout buffer) or ``[B]``/``[B, 1]``, ``query: [B, D]``, ``phase: [B, 3]`` (one-hot), other keys
                ignored.

        Raises:
            ValueError: in ``"rows"`` mode (only a recurrent policy can use the extractor then).
        """
        if self.mode == "rows":
            raise ValueError(
                f"{type(self).__name__} got a raw observation space: a stateless policy (PPO, A2C) needs the episode's "
                "rows in the observation: wrap the env with ebmm_rl.EpisodeMemoryWrapper, or train "
                "RecurrentPPO(EBMMRecurrentPolicy, env), which carries the memory itself"
            )
        return self.head(self._raw_features(observations))

    def apply(self, fn) -> HistoryFeaturesExtractor:  # noqa: ANN001
        """Apply ``fn`` to the head (and a learned encoder) only: the memory keeps its own initialisation.

        SB3's ``ActorCriticPolicy`` (``ortho_init=True``, the default) re-initialises every ``nn.Linear`` of the
        features extractor orthogonally through ``apply``; that would overwrite a meta-trained memory loaded from a
        checkpoint (and the memories' own initialisations: an energy network's He init, MemNet's identity
        attention maps, plasticity's wiring).
        """
        self.head.apply(fn)
        encoder = getattr(self, "encoder", None)
        if isinstance(encoder, nn.Module) and not getattr(self, "_encoder_from_checkpoint", False):
            encoder.apply(fn)
        fn(self)
        return self


class EBMMExtractor(HistoryFeaturesExtractor):
    """Writes each observation's episode rows into an EBMM and reads with the current row.

    Each row is first encoded into a pattern (``encoder``, :mod:`ebmm_rl.rl.encoders`; ``P`` = pattern size):
    identity for small rows and the ``ebmm/...`` probes' patterns, ``tanh(linear)`` for larger rows, a small CNN
    for rows that hold an image. The RL loss trains the encoder (through the memory's write and read) and, unless
    ``freeze_memory=True``, the memory's meta-parameters.

    Features (``L`` = ``max_patterns`` of the wrapper), concatenated in this order:

    * ``retrieved``: ``[P]`` the pattern retrieved from the memory with the encoded query (the last read iterate);
    * ``energies``: ``[2]`` the energy of the query and the energy of the retrieved pattern (low energy =
      familiar: paper §4.4);
    * ``query``: ``[P]`` the encoded current row;
    * ``phase``: one-hot, if the observation has a ``"phase"`` key;
    * ``similarities`` (only with ``similarities=True``): ``[L]`` how close the retrieved pattern is to each stored
      pattern, z-scored over the episode's rows (:func:`similarity_features`), i.e. *which* stored pattern was
      recalled, for tasks that ask for its position (``ImageRecall``). It costs ``O(L · P)`` per observation.

    ``features`` selects and orders the parts instead (e.g. ``("similarities", "energies", "phase")``: a task
    whose answer is a position needs neither image, and a linear head learns far faster without hundreds of
    pixel inputs that carry no answer). The result is passed through an optional MLP (``net_arch``).

    Auxiliary loss (``aux_coef > 0``): in every update the paper's own objective is added to the RL loss, with
    weight ``aux_coef``: one stored pattern per observation is read back from a distorted version of itself (half
    of its entries clamped as known, the rest replaced by uniform noise in the data range) and the step-wise
    reconstruction loss (App. B.4) trains the memory. Targets are detached from the encoder (the loss would
    otherwise pull all patterns together). Its last value is :attr:`last_aux_loss` (TensorBoard ``memory/aux_loss``
    through :class:`~ebmm_rl.rl.callbacks.MemoryLoggerCallback`).

    Args:
        observation_space: a ``Dict`` space made by :class:`~ebmm_rl.rl.wrappers.EpisodeMemoryWrapper` (or, with
            ``recurrent=True``, set by ``EBMMRecurrentPolicy``, any supported raw space).
        memory: the memory to use: an :class:`EBMMemory` over flat patterns of size ``P``, or the path of a
            meta-training checkpoint (``ebmm_rl.checkpoint.load_memory``). Pass ``load_memory(path)`` (an object)
            rather than the path when the model is to be saved: the object travels inside ``model.zip``, the path
            must still exist when the model is loaded. ``None`` builds a fresh :class:`MLPEnergy` memory from
            ``energy`` and ``ebmm``.
        energy: :class:`MLPConfig` fields (except ``input_size``) of a fresh memory, overriding
            :data:`DEFAULT_RL_ENERGY`.
        ebmm: :class:`EBMMConfig` fields of a fresh memory, overriding :data:`DEFAULT_RL_EBMM_CONFIG`;
            ``data_range`` is always the encoder's.
        encoder: ``"auto"``, ``"identity"``, ``"linear"``, ``"cnn"`` or a module mapping rows ``[..., D]`` to
            patterns ``[..., P]`` with attributes ``pattern_size`` and ``data_range`` (a :class:`RowEncoder`).
            ``"auto"`` with a given ``memory`` is ``"identity"`` when the memory takes rows of size ``D``.
        pattern_size: ``P`` of a learned encoder.
        encoder_state: weights for the encoder built by kind (``scripts/meta_train_env.py`` saves those its memory
            was meta-trained with); SB3's orthogonal re-initialisation then leaves the encoder alone.
        chunk_size: patterns written per chunk (``T`` write steps each); 1 = one pattern per env step (online
            writing), ``>= max_patterns`` = the whole history at once (batch writing, as in the paper).
        freeze_memory: set ``requires_grad=False`` on every parameter of the memory (the RL loss then does not
            change it; with an identity encoder, writing and reading also skip the higher-order graph).
        net_arch: hidden sizes of a ReLU MLP on top of the features; empty = the raw features.
        similarities: add the ``similarities`` features (see above).
        features: the parts to use, in order, from :data:`FEATURE_PARTS`; default: ``retrieved``, ``energies``,
            ``query``, ``phase`` (if the space has one), then ``similarities`` if ``similarities=True``.
        cache_size: written memories (one per history prefix) kept for gradient-free calls; 0 disables the cache.
        aux_coef: weight of the auxiliary reconstruction loss (0: none).
        recurrent: set by ``EBMMRecurrentPolicy`` (raw observations; the policy carries the memory).

    Raises:
        ValueError: the observation space lacks the wrapper's keys, or the memory does not fit the patterns.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        memory: EBMMemory | str | os.PathLike | None = None,
        energy: dict[str, Any] | None = None,
        ebmm: dict[str, Any] | None = None,
        encoder: str | nn.Module = "auto",
        pattern_size: int = DEFAULT_PATTERN_SIZE,
        encoder_state: dict[str, Tensor] | None = None,
        chunk_size: int = 1,
        freeze_memory: bool = False,
        net_arch: Sequence[int] = (),
        similarities: bool = False,
        features: Sequence[str] | None = None,
        cache_size: int = 4096,
        aux_coef: float = 0.0,
        recurrent: bool = False,
    ) -> None:
        super().__init__(observation_space, similarities, features, recurrent)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 (1 = one pattern per env step), got {chunk_size}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0 (0 disables the cache), got {cache_size}")
        if not (np.isfinite(aux_coef) and aux_coef >= 0):
            raise ValueError(f"aux_coef must be a finite number >= 0, got {aux_coef}")
        self.chunk_size = int(chunk_size)
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size must be an integer >= 0 (0 disables the cache), got {cache_size!r}")
        self.cache_size = int(cache_size)
        self.aux_coef = float(aux_coef)

        if isinstance(memory, str | os.PathLike):
            memory = load_memory(memory)
        self.encoder = self._build_encoder(encoder, pattern_size, memory)
        if encoder_state is not None:
            try:
                self.encoder.load_state_dict(encoder_state)
            except RuntimeError as error:
                raise ValueError(
                    f"encoder_state does not fit the {getattr(self.encoder, 'kind', 'given')} encoder of rows of "
                    f"{self.row_size} entries (was it saved for another environment?): {error}"
                ) from None
            self._encoder_from_checkpoint = True
        self.pattern_size = int(self.encoder.pattern_size)
        self.data_range = tuple(float(v) for v in self.encoder.data_range)
        self.memory = self._build_memory(memory, energy, ebmm, self.data_range)
        if freeze_memory:
            self.memory.requires_grad_(False)

        self._cache: OrderedDict[_Key, dict[str, Tensor]] = OrderedDict()  # key -> fast weights of one episode
        self._cache_version: tuple[tuple[int, int], ...] | None = None
        self.cache_hits = 0
        """Rows whose memory came from the cache (whole or as a prefix), since construction."""
        self.cache_lookups = 0
        """Rows looked up in the cache, since construction."""
        self.patterns_written = 0
        """Patterns written by gradient-free calls (the cached path), since construction."""
        self.last_aux_loss: float | None = None
        """The auxiliary reconstruction loss of the last update batch (``aux_coef > 0``)."""
        self._last_read: tuple[Tensor, Tensor, Tensor | None] | None = None
        self._build_head(observation_space, net_arch)
        self._cache.clear()

    # --------------------------------------------------------------------------------------------- building
    def _build_encoder(self, encoder: str | nn.Module, pattern_size: int, memory: EBMMemory | None) -> nn.Module:
        if isinstance(encoder, nn.Module):
            for attr in ("pattern_size", "data_range"):
                if not hasattr(encoder, attr):
                    raise ValueError(f"an encoder module needs a {attr!r} attribute (see ebmm_rl.rl.RowEncoder)")
            if isinstance(encoder, RowEncoder) and encoder.row_size != self.row_size:
                raise ValueError(
                    f"the encoder takes rows of {encoder.row_size} entries but this observation space gives rows "
                    f"of {self.row_size}: the environment does not match the one the encoder was built for"
                )
            self._encoder_from_checkpoint = True
            return encoder
        if not isinstance(encoder, str):
            raise ValueError(f"encoder must be a kind name or an nn.Module, got {encoder!r}")
        if encoder == "auto" and (self.layout is None or isinstance(memory, EBMMemory)):
            # A probe's patterns are the task itself; a given memory decides the pattern size (identity if it fits).
            if memory is None or tuple(memory.data_shape) == (self.row_size,):
                encoder = "identity"
        self._encoder_from_checkpoint = False
        return RowEncoder(encoder, self.row_size, self.row_range, self.layout, pattern_size)

    def _build_memory(
        self,
        memory: EBMMemory | None,
        energy: dict[str, Any] | None,
        ebmm: dict[str, Any] | None,
        data_range: tuple[float, float],
    ) -> EBMMemory:
        P = self.pattern_size
        if memory is None:
            energy_config = MLPConfig(input_size=P, **{**DEFAULT_RL_ENERGY, **(energy or {})})
            config = dataclasses.replace(DEFAULT_RL_EBMM_CONFIG, **{**(ebmm or {}), "data_range": data_range})
            return EBMMemory(MLPEnergy(energy_config), config)
        if energy or ebmm:
            raise ValueError("energy and ebmm configure a fresh memory; they cannot be combined with memory=...")
        if not isinstance(memory, EBMMemory):
            raise ValueError(f"memory must be an EBMMemory, a checkpoint path or None, got {type(memory).__name__}")
        if tuple(memory.data_shape) != (P,):
            raise ValueError(
                f"the memory stores patterns of shape {tuple(memory.data_shape)} but the encoded rows have shape "
                f"({P},) (rows of {self.row_size} entries, encoder {getattr(self.encoder, 'kind', 'custom')}); use a "
                f"memory whose energy takes flat patterns of size {P}, or the encoder it was meta-trained with"
            )
        if tuple(memory.config.data_range) != data_range:
            raise ValueError(
                f"the memory reads in data_range {memory.config.data_range} but the patterns lie in "
                f"{data_range}; wrap the env with EpisodeMemoryWrapper(env, data_range={memory.config.data_range})"
            )
        return memory

    # ---------------------------------------------------------------------------------------------- forward
    def _dry_features(self, observation_space: spaces.Space) -> Tensor:
        if self.mode == "history":
            return super()._dry_features(observation_space)
        rows = self.rows(_raw_sample(observation_space))  # [1, D]
        patterns = self.encode(rows)
        return self.read_features(patterns, self.memory.initial_state(1))

    def rows(self, observations: Tensor | dict[str, Tensor]) -> Tensor:
        """``"rows"`` mode: ``[n, D]`` rows of a batch of raw (not preprocessed) observations."""
        assert self.row_layout is not None
        return self.row_layout.torch_rows(observations)

    def encode(self, rows: Tensor) -> Tensor:
        """``rows: [..., D]`` -> patterns ``[..., P]`` in the memory's data range."""
        return self.encoder(rows)

    def _raw_features(self, obs: dict[str, Tensor]) -> Tensor:
        history = obs["history"]  # [B, L, D]
        lengths = _lengths(obs["history_len"], self.max_patterns)  # [B]
        create_graph = self.needs_graph()
        if create_graph or self.cache_size == 0:
            patterns = self.encode(history)  # [B, L, P]
            state = self.write(patterns, lengths, create_graph=create_graph)
        else:
            patterns = None
            state = self.write_cached(history, lengths)
        query = self.encode(obs["query"])  # [B, P]
        phase = obs["phase"].reshape(query.shape[0], -1) if "phase" in self.features else None
        if "similarities" in self.features and patterns is None:
            with torch.no_grad():
                patterns = self.encode(history)
        features = self.read_features(query, state, phase, patterns, lengths)
        if self.aux_coef > 0 and create_graph:
            if patterns is None:
                patterns = self.encode(history)
            valid = torch.arange(history.shape[1], device=history.device) < lengths.unsqueeze(1)  # [B, L]
            loss = self.aux_loss(patterns, valid, state)
            if loss is not None:
                features = inject_loss(features, loss, self.aux_coef)
        return features

    def needs_graph(self) -> bool:
        """Whether writes and reads must keep the graph: gradients are on and the memory or encoder is trainable."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self._graph_parameters())

    def _graph_parameters(self) -> list[nn.Parameter]:
        return [*self.memory.parameters(), *self.encoder.parameters()]

    def read_features(
        self,
        query: Tensor,
        state: MemoryState,
        phase: Tensor | None = None,
        patterns: Tensor | None = None,
        lengths: Tensor | None = None,
        result: ReadResult | None = None,
    ) -> Tensor:
        """Read with the encoded ``query`` from the written ``state`` and assemble the raw features (before the head).

        Args:
            query: ``[B, P]`` encoded current rows.
            state: the memory of each row (``B`` episodes).
            phase: ``[B, 3]`` one-hot phase, if ``"phase"`` is a feature part.
            patterns: ``[B, L, P]`` the stored patterns, if ``"similarities"`` is a feature part.
            lengths: ``[B]`` valid rows of ``patterns``.
            result: the read of ``query`` from ``state`` if it is already done (:meth:`EBMMemory.write_and_read`).

        Returns:
            ``[B, raw features]``.
        """
        if result is None:
            result = self.memory.read(query.unsqueeze(1), state, create_graph=self.needs_graph())
        retrieved = result.retrieved[:, 0]  # [B, P]
        energies: list[Tensor] = []

        def energy_part() -> Tensor:
            energies.append(self.memory.energies(result.iterates[[0, -1]], state)[:, :, 0].T)  # [B, 2]
            return energies[0]

        parts = {
            "retrieved": lambda: retrieved,
            "energies": energy_part,  # [B, 2]: E(query), E(retrieved)
            "query": lambda: query,
            "phase": lambda: phase,
            "similarities": lambda: similarity_features(retrieved, patterns, lengths),
        }
        features = torch.cat([parts[name]() for name in self.features], dim=1)
        # kept detached for MemoryLoggerCallback, reduced only when it asks (last_read): nothing added to the hot path
        self._last_read = (retrieved.detach(), query.detach(), energies[0].detach() if energies else None)
        return features

    @property
    def last_read(self) -> dict[str, float]:
        """Statistics of the last batch of reads (for ``MemoryLoggerCallback``).

        ``read_change`` (mean ‖retrieved − query‖²) and, if the ``energies`` part is computed, ``energy_query``
        and ``energy_retrieved`` (their means).
        """
        if self._last_read is None:
            return {}
        retrieved, query, energies = self._last_read
        out = {"read_change": float((retrieved - query).pow(2).sum(dim=1).mean())}
        if energies is not None:
            out["energy_query"], out["energy_retrieved"] = energies.mean(0).tolist()
        return out

    def aux_loss(self, patterns: Tensor, valid: Tensor, state: MemoryState) -> Tensor | None:
        """The auxiliary reconstruction loss: read one stored pattern per episode back from a distorted copy.

        Args:
            patterns: ``[B, L, P]`` stored patterns (detached here: the loss trains the memory, not the encoder).
            valid: ``[B, L]`` which of them are stored in ``state``.
            state: the memories holding them.

        Returns:
            The step-wise loss (App. B.4) averaged over the episodes that store anything, or ``None`` if none does.
        """
        has = valid.any(dim=1)  # [B]
        if not bool(has.any()):
            return None
        # One stored row per episode, uniformly among its valid ones.
        pick = torch.multinomial(valid[has].float(), 1)[:, 0]  # [B']
        target = patterns.detach()[has, pick].unsqueeze(1)  # [B', 1, P]
        sub = MemoryState({n: w[has] for n, w in state.fast_weights.items()}, state.num_written[has])
        known = torch.rand_like(target) < 0.5  # [B', 1, P]
        lo, hi = self.data_range
        noise = lo + (hi - lo) * torch.rand_like(target)
        result = self.memory.read(torch.where(known, target, noise), sub, known, create_graph=True)
        loss, _ = stepwise_loss(target, result)
        self.last_aux_loss = float(loss.detach())
        return loss

    def write(self, patterns: Tensor, lengths: Tensor, create_graph: bool | None = None) -> MemoryState:
        """Write each episode's patterns from scratch (``θ̄``), chunk by chunk: the reference path.

        Args:
            patterns: ``[B, L, P]`` encoded rows, padded.
            lengths: ``[B]`` valid rows of each history.
            create_graph: keep the graph for gradients to the memory. Default: ``torch.is_grad_enabled()``.
        """
        B, L, _ = patterns.shape
        longest = int(lengths.max()) if B else 0
        if longest == 0:  # nothing stored anywhere: every memory is θ̄
            return self.memory.initial_state(B)
        mask = torch.arange(L, device=patterns.device) < lengths.unsqueeze(1)  # [B, L]
        # Chunks past the longest history are padding in every row and would leave every memory unchanged.
        return self.memory.write_chunked(
            patterns[:, :longest], self.chunk_size, pattern_mask=mask[:, :longest], create_graph=create_graph
        )

    def write_new(
        self,
        patterns: Tensor,
        lengths: Tensor,
        state: MemoryState,
        create_graph: bool,
        schedule: WriteSchedule | None = None,
    ) -> MemoryState:
        """Continue ``state`` with the rows it lacks: ``patterns[state.num_written : lengths]``, one per chunk.

        The recurrent route on the probes (:class:`~ebmm_rl.rl.recurrent.EBMMRecurrentPolicy`) carries ``state``
        across env steps, so a step writes only the pattern stored since the previous one. Rows with nothing new
        (or fewer valid rows than written, e.g. padding) are left unchanged. With ``chunk_size=1`` the result
        equals :meth:`write`.

        Args:
            patterns: ``[B, L, P]`` encoded rows, padded.
            lengths: ``[B]`` valid rows of each history.
            state: the memories so far (``B`` episodes, ``num_written`` rows each).
            create_graph: keep the graph for gradients to the memory.
            schedule: optional, the memory's write rates (``memory.schedule(create_graph)``) shared by a chain
                of calls.

        ``patterns`` and ``state`` are not checked here (one check per write would cost a host sync per row): the
        caller checks them once for the whole sequence, as :meth:`EBMMRecurrentPolicy.unroll` does.
        """
        start = state.num_written  # [B]
        rounds = int((lengths - start).max().clamp(min=0)) if patterns.shape[0] else 0
        batch = torch.arange(patterns.shape[0], device=patterns.device)  # [B]
        for j in range(rounds):
            idx = start + j  # [B] the row each episode writes this round
            mask = (idx < lengths).unsqueeze(1)  # [B, 1]
            chunk = patterns[batch, idx.clamp(max=patterns.shape[1] - 1)].unsqueeze(1)  # [B, 1, P]
            state = self.memory.write(
                chunk, state, pattern_mask=mask, create_graph=create_graph, check=False, schedule=schedule
            )
        return state

    @torch.no_grad()
    def write_cached(self, history: Tensor, lengths: Tensor) -> MemoryState:
        """Same memories as :meth:`write` (to float tolerance), writing only patterns missing from the cache.

        For each row, the longest history prefix ending on a chunk boundary (or the whole history) whose memory is
        cached is looked up by its fingerprint (length + BLAKE2 digest of the raw rows); only the chunks after it
        are encoded and written, for all such rows in one batch, and the memories at the new chunk boundaries are
        cached. Past a FIFO window's length the history's first row changes at every step, so nothing is found and
        the window is rewritten (``L`` patterns per step; the recurrent route writes one).
        The cache is emptied whenever a memory or encoder parameter changes in place (an optimiser step,
        ``load_state_dict``: their version counters move) and, for a trainable memory, whenever the training mode
        changes (``policy.set_training_mode``, see :meth:`train`).

        Args:
            history: ``[B, L, D]`` raw rows, padded.
            lengths: ``[B]`` valid rows of each history.
        """
        self._check_cache_version()
        B = history.shape[0]
        C = self.chunk_size
        rows = np.ascontiguousarray(history.detach().cpu().numpy(), dtype=np.float32)  # [B, L, D]
        lens = lengths.cpu().tolist()
        theta_bar = {n: p.detach() for n, p in self.memory.energy.memory_parameters().items()}
        start_weights: list[dict[str, Tensor]] = []
        starts: list[int] = []
        todo: list[list[_Key]] = []  # per row: keys of the boundaries still to write, last one = the full history
        for b in range(B):
            keys = _prefix_keys(rows[b], lens[b], C)  # [(0, ...), (C, ...), ..., (len, ...)]
            hit = None
            self.cache_lookups += 1
            for i in range(len(keys) - 1, -1, -1):
                if keys[i] in self._cache:
                    hit = i
                    break
            if hit is None:  # nothing cached: start from θ̄ (prefix 0 is never stored)
                start_weights.append(theta_bar)
                starts.append(0)
                todo.append(keys[1:])
            else:
                self._cache.move_to_end(keys[hit])
                self.cache_hits += 1
                start_weights.append(self._cache[keys[hit]])
                starts.append(keys[hit][0])
                todo.append(keys[hit + 1 :])
        names = list(theta_bar)
        fast = {n: torch.stack([w[n] for w in start_weights]) for n in names}  # each [B, *shape]
        state = MemoryState(fast, torch.tensor(starts, dtype=torch.long, device=history.device))
        rounds = max((len(t) for t in todo), default=0)
        if rounds:
            pos = torch.tensor(starts, device=history.device).unsqueeze(1)  # [B, 1]
            ends = torch.as_tensor(lens, device=history.device).unsqueeze(1)  # [B, 1]
            offsets = torch.arange(C, device=history.device)  # [C]
            batch = torch.arange(B, device=history.device).unsqueeze(1)  # [B, 1]
            for j in range(rounds):
                idx = pos + j * C + offsets  # [B, C] rows of this round's chunk
                mask = idx < ends  # [B, C]; rows without a chunk this round are all padding (unchanged)
                chunk = self.encode(history[batch, idx.clamp(max=history.shape[1] - 1)])  # [B, C, P]
                state = self.memory.write(chunk, state, pattern_mask=mask, create_graph=False)
                self.patterns_written += int(mask.sum())
                for b in range(B):
                    if j < len(todo[b]):
                        self._store(todo[b][j], {n: w[b].clone() for n, w in state.fast_weights.items()})
        return state

    # ------------------------------------------------------------------------------------------------ cache
    def clear_cache(self) -> None:
        """Forget every cached memory."""
        self._cache.clear()

    def train(self, mode: bool = True) -> EBMMExtractor:
        """Set the training mode; a change of mode empties the cache unless the memory is frozen.

        SB3 switches to training before every update and back before every rollout. A trainable memory may have
        changed in between (also through ``.data``, which no version counter sees), so its cache is dropped. A
        frozen memory (no parameter with ``requires_grad``) cannot be changed by the RL loss, so its cache survives
        the switch and the update epochs reuse the memories written during the rollout: they only read. (Edit a
        frozen memory's weights through ``.data`` and call :meth:`clear_cache` yourself.)
        """
        if mode != self.training and not self.memory_frozen():
            self.clear_cache()
        return super().train(mode)

    def memory_frozen(self) -> bool:
        """Whether no parameter of the memory or the encoder requires gradients (nothing the RL loss can change)."""
        return not any(p.requires_grad for p in self._graph_parameters())

    def _store(self, key: _Key, weights: dict[str, Tensor]) -> None:
        self._cache[key] = weights
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _check_cache_version(self) -> None:
        version = tuple((p.data_ptr(), p._version) for p in self._graph_parameters())
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version


def _check_space(space: spaces.Space, owner: str = "EBMMExtractor") -> None:
    """Raise ValueError unless ``space`` is ``EpisodeMemoryWrapper``'s; ``owner`` names the extractor in messages."""
    fix = "wrap the environment with ebmm_rl.rl.EpisodeMemoryWrapper (env = EpisodeMemoryWrapper(env))"
    if not isinstance(space, spaces.Dict):
        raise ValueError(
            f"{owner} needs a Dict observation space with keys {list(_REQUIRED_KEYS)}, got {space}; {fix} "
            "and use the 'MultiInputPolicy'"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in space.spaces]
    if missing:
        raise ValueError(f"{owner}: the observation space lacks {missing} (it has {list(space.spaces)}); {fix}")
    history, length, query = (space[k] for k in _REQUIRED_KEYS)
    if not isinstance(history, spaces.Box) or len(history.shape) != 2:
        raise ValueError(f"'history' must be a Box of shape (max_patterns, D), got {history}; {fix}")
    if not isinstance(query, spaces.Box) or query.shape != history.shape[1:]:
        raise ValueError(f"'query' must be a Box of shape {history.shape[1:]}, got {query}; {fix}")
    if not isinstance(length, spaces.Discrete | spaces.Box):
        raise ValueError(f"'history_len' must be Discrete(max_patterns + 1), got {length}; {fix}")


def feature_parts(
    features: Sequence[str] | None, similarities: bool, has_phase: bool, allowed: Sequence[str], owner: str
) -> tuple[str, ...]:
    """The feature parts an extractor uses: ``features`` checked against ``allowed``, or the default list.

    The default is every allowed part but ``similarities`` (``phase`` only if the space has one), then
    ``similarities`` if asked for.

    Raises:
        ValueError: an unknown or repeated name, an empty list, ``phase`` without a phase in the space, or
            ``similarities=True`` with a list that lacks it.
    """
    if features is None:
        chosen = [n for n in allowed if n != "similarities" and (n != "phase" or has_phase)]
        return (*chosen, "similarities") if similarities else tuple(chosen)
    chosen = tuple(str(n) for n in features)
    unknown = [n for n in chosen if n not in allowed]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"{owner}: features must be distinct names among {list(allowed)}, got {list(chosen)}")
    if "phase" in chosen and not has_phase:
        raise ValueError(f"{owner}: the observation space has no 'phase' key; drop 'phase' from features")
    if similarities and "similarities" not in chosen:
        raise ValueError(f"{owner}: similarities=True but features {list(chosen)} lack 'similarities'; add it")
    return chosen


def similarity_features(retrieved: Tensor, history: Tensor, lengths: Tensor) -> Tensor:
    """Which stored row was recalled: how close the retrieved pattern is to each row, standardised per episode.

    The similarity to a row is the negative mean squared distance, ``-mean_d (retrieved_d - row_d)^2``; each
    episode's similarities are then z-scored over its valid rows (mean 0, standard deviation 1; all 0 if they are
    equal), so the recalled row stands out by about the same margin whatever the images' contrast. Raw distances
    differ between rows by a few hundredths and share a large common part, and a linear policy head learned
    nothing from them in 30,000 PPO steps on ``ImageRecall`` (``docs/rl_results.md``). Padding rows get
    ``-sqrt(L)``, below any z-score of ``L`` or fewer values.

    Args:
        retrieved: ``[B, D]`` retrieved patterns.
        history: ``[B, L, D]`` stored rows, padded.
        lengths: ``[B]`` valid rows of each history.

    Returns:
        ``[B, L]``.
    """
    L = history.shape[1]
    sim = -(retrieved.unsqueeze(1) - history).pow(2).mean(dim=2)  # [B, L]
    valid = torch.arange(L, device=history.device) < lengths.unsqueeze(1)  # [B, L]
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)  # [B, 1]
    mean = torch.where(valid, sim, 0.0).sum(dim=1, keepdim=True) / count
    var = torch.where(valid, (sim - mean).pow(2), 0.0).sum(dim=1, keepdim=True) / count
    std = var.clamp(min=1e-12).sqrt()  # clamped: sqrt has an infinite gradient at 0 (one valid row, equal rows)
    z = (sim - mean) / (std + 1e-6)
    return torch.where(valid, z, torch.full_like(sim, -(L**0.5)))


def _lengths(encoded: Tensor, max_patterns: int) -> Tensor:
    """``[B]`` history lengths from SB3's one-hot ``[B, L + 1]`` (``Discrete``) or a ``[B]``/``[B, 1]`` count."""
    encoded = encoded.reshape(encoded.shape[0], -1)  # the rollout buffer adds a dimension: [B, 1, L + 1]
    if encoded.shape[1] == max_patterns + 1:
        return encoded.argmax(dim=1)
    return encoded[:, 0].round().long().clamp(0, max_patterns)


def _prefix_keys(rows: np.ndarray, length: int, chunk_size: int) -> list[_Key]:
    """Fingerprints of ``rows[:P]`` for ``P = 0, C, 2C, ... < length`` and ``P = length``."""
    digest = hashlib.blake2b(digest_size=16)
    keys: list[_Key] = [(0, digest.digest())]
    for start in range(0, length, chunk_size):
        end = min(start + chunk_size, length)
        digest.update(rows[start:end].tobytes())
        keys.append((end, digest.copy().digest()))
    return keys


class _InjectLoss(torch.autograd.Function):
    """Identity on ``features``; its backward also sends ``coef`` into ``loss`` (adds ``coef · loss`` to the loss)."""

    @staticmethod
    def forward(ctx, features: Tensor, loss: Tensor, coef: float) -> Tensor:  # noqa: ANN001
        ctx.coef = coef
        ctx.loss_shape = loss.shape
        return features.view_as(features)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # noqa: ANN001
        return grad, torch.full(ctx.loss_shape, ctx.coef, dtype=grad.dtype, device=grad.device), None


def inject_loss(features: Tensor, loss: Tensor, coef: float) -> Tensor:
    """``features`` unchanged, but whatever loss is backpropagated through them also gets ``coef · loss``.

    SB3's PPO/A2C compute their loss inside ``train()`` with no hook for extra terms; every update backpropagates
    through the extractor's features once per minibatch, so an auxiliary loss of the extractor rides along.
    """
    return _InjectLoss.apply(features, loss, coef)


def _raw_sample(space: spaces.Space) -> Tensor | dict[str, Tensor] | tuple:
    """One raw observation of ``space`` as a batch of one tensor (or a dict / tuple of them)."""
    return _as_batch(space, space.sample())


def _as_batch(space: spaces.Space, value: Any) -> Any:
    if isinstance(space, spaces.Dict):
        return {k: _as_batch(s, value[k]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_as_batch(s, value[i]) for i, s in enumerate(space.spaces))
    return torch.as_tensor(np.asarray(value)).unsqueeze(0)


def _dummy_observation(space: spaces.Dict) -> dict[str, Tensor]:
    """One preprocessed observation with an empty history (for the dry forward pass)."""
    sample = space.sample()
    sample["history_len"] = np.zeros_like(sample["history_len"])
    batch = {k: np.expand_dims(np.asarray(v), 0) for k, v in sample.items()}
    return preprocess_obs(obs_as_tensor(batch, torch.device("cpu")), space)  # type: ignore[return-value]

"""``MemoryCore``: an agent's episodic memory: key/value rows written into an EBMM, read back by clamped keys.

The paper recalls a pattern by clamping the dimensions of a query that are known and descending the energy on the
others (§3, App. B.1–B.3). An agent recalls *what came with a cue*: so each env step writes a row
``x_t = [k_t ; v_t]`` and reads with queries whose key dimensions are clamped. Per step ``t`` of an episode, with
``n_t`` rows written so far (``docs/design.md``, "The agent's memory"):

1. ``u_t = embed(row_t)``: a learned embedding of the step's row (the observation, and the previous action and
   reward where the observation holds them): ``tanh(W row + b)``, or a small CNN first for image parts
   (:class:`~ebmm_rl.rl.encoders.RowEncoder`). Never the identity alone: the embedding decides what is stored.
2. ``p_t = position_code(n_t)``: fixed sinusoids of ``n_t`` at several periods and a first-step flag, so that a
   query can address "the first step" or "``k`` steps ago".
3. The written row ``x_t = [p_t ; tanh(W_k u_t) ; tanh(W_v u_t)]``: the key is the position and a learned part,
   the value a learned projection.
4. ``H`` query heads: each head's clamped dimensions come from learned query maps of ``u_t`` and ``p_t`` (the time
   part is translation-equivariant: :meth:`MemoryCore.queries`), its free dimensions start at the centre of the
   data range. A ``"key"`` head clamps the position and the
   learned key (recall by time and content); a ``"content"`` head clamps the learned key only, and its read also
   fills in the position the matching row was written at. ``K`` projected Nesterov steps fill the free dimensions
   (:meth:`EBMMemory.read`). The read sees the memory *before* this step's write.
5. Features for the policy: ``u_t`` (the current step, unchanged), each head's retrieved free dimensions, the
   energies of each head's first and last read iterate, the energy of ``x_t`` (how familiar this step is: paper
   §4.4), and ``log(1 + n_t)``. Energies enter as ``asinh(E)``: linear near 0, logarithmic for large ``|E|``,
   without a statistic that would make a step's features depend on its batch.
6. Retention, then the write: ``θ ← θ̄ + ρ (θ − θ̄)`` with a learned ``ρ`` per memory unit, whose half-lives start
   spread from a few steps to hundreds (``CoreConfig.retention_half_lives``), then ``T`` write steps on ``x_t``
   whose prior is anchored at the retained memory (``prior_anchor="previous"``), so ``ρ`` alone decides how fast
   old rows fade. An optional learned gate
   ``g_t = σ(w · u_t + b)`` scales what the write adds: ``θ ← θ_ret + g_t (write(θ_ret) − θ_ret)``.

Everything the paper meta-learns (``θ̄``, write rates, read step sizes and momenta) and the maps above learn from the
RL loss, and optionally from the paper's objective on the agent's own rows (:meth:`MemoryCore.aux_loss`: read
``v_s`` back from ``[k_s ; ?]`` with the key clamped, the step-wise loss of App. B.4, targets detached).

Shapes: ``n`` episodes (envs, or sequences of an update), ``T`` steps, ``D`` row entries, ``E`` embedding,
``P = position + key + value`` pattern entries, ``H`` heads, ``F`` features.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ebmm_rl.energy.mlp import MLPConfig, MLPEnergy
from ebmm_rl.memory import EBMMConfig, EBMMemory, MemoryState, ReadResult, WriteSchedule, stepwise_loss
from ebmm_rl.rl.encoders import RowEncoder, _images
from ebmm_rl.rl.rows import RowLayout, Segment
from ebmm_rl.validation import check_int_fields

__all__ = [
    "CORE_EBMM_CONFIG",
    "FAST_CORE",
    "HEAD_KINDS",
    "CoreConfig",
    "MemoryCore",
    "position_code",
    "position_size",
    "step_counts",
]

HEAD_KINDS = ("time", "content", "key", "first")
"""What a query head clamps: ``"time"`` the position part of the key, ``"content"`` its learned part, ``"key"`` both,
``"first"`` the first-step flag alone, set (the episode's first row, whatever the clock)."""

CORE_EBMM_CONFIG = EBMMConfig(
    write_steps=3,
    read_steps=3,
    data_range=(-1.0, 1.0),
    write_lr_init=0.1,
    read_step_init=2.0,
    use_grad_norm_term=False,
    prior_anchor="previous",
)
"""The write and read rules of a fresh core's memory.

Fewer steps than the paper's 5 (each costs an energy gradient per env step); initial step sizes that learn fast
(the paper's 1e-4 write rate barely changes the fast weights before meta-training); no ``α‖∇ₓE‖²`` term (with it,
every RL update backpropagates through third-order graphs; ``ebmm=dict(use_grad_norm_term=True)`` restores it);
the prior anchored at the memory the write starts from, since forgetting is the core's explicit retention."""


@dataclass(frozen=True)
class CoreConfig:
    """Sizes and rules of a :class:`MemoryCore`.

    Attributes:
        embed_size: ``E``, entries of the embedding ``u_t``.
        key_size: entries of the learned part of a key.
        value_size: ``V``, entries of a value.
        position_periods: periods (in steps) of the position code's sinusoids; the code has a sine and a cosine
            per period and a first-step flag.
        heads: the query heads, one :data:`HEAD_KINDS` name each.
        retention_half_lives: ``(shortest, longest)`` initial half-lives, in env steps, of the memory units'
            retention: unit ``j`` of the writable layer keeps ``ρ_j = 2^(−1/h_j)`` of its ``θ − θ̄`` per step,
            ``h_j`` spread log-uniformly over the range (equal ends: one rate for all).
        write_gate: learn a gate that scales each step's write.
        memory_prior: where the memory starts (:mod:`ebmm_rl.rl.prior`): ``"auto"`` the shipped prior meta-trained
            for this architecture if there is one (else a fresh memory), a path a prior file, ``None`` a fresh
            memory.
        encoder: the embedding: ``"auto"`` (a CNN for rows that hold an image, else ``"linear"``), ``"linear"``
            or ``"cnn"``.
        hidden_size: hidden width of the energy network (:class:`~ebmm_rl.energy.mlp.MLPEnergy`).
        dynamic_size: its memory units (writable floats: ``(P + 1) · dynamic_size``).
        hops: its gated refinement steps.
        ebmm: the write and read rules; ``data_range`` is always ``(-1, 1)`` and ``prior_anchor`` ``"previous"``.
    """

    embed_size: int = 64
    key_size: int = 16
    value_size: int = 16
    position_periods: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0)
    heads: tuple[str, ...] = ("time", "content")
    retention_half_lives: tuple[float, float] = (4.0, 256.0)
    write_gate: bool = False
    memory_prior: str | None = "auto"
    encoder: str = "auto"
    hidden_size: int = 64
    dynamic_size: int = 32
    hops: int = 2
    ebmm: EBMMConfig = CORE_EBMM_CONFIG

    def __post_init__(self) -> None:
        check_int_fields(self, {"hops": 0})
        object.__setattr__(self, "heads", tuple(self.heads))
        object.__setattr__(self, "position_periods", tuple(float(p) for p in self.position_periods))
        bad = [h for h in self.heads if h not in HEAD_KINDS]
        checks = [
            (self.embed_size >= 1 and self.key_size >= 1 and self.value_size >= 1,
             "embed_size, key_size and value_size must be >= 1"),
            (len(self.heads) >= 1 and not bad, f"heads must be a non-empty list of {list(HEAD_KINDS)}, got "
             f"{list(self.heads)}"),
            (all(math.isfinite(p) and p > 0 for p in self.position_periods),
             f"position_periods must be finite periods > 0, got {self.position_periods}"),
            (len(self.retention_half_lives) == 2 and all(math.isfinite(h) and h > 0 for h in self.retention_half_lives)
             and self.retention_half_lives[0] <= self.retention_half_lives[1],
             f"retention_half_lives must be (shortest, longest) with 0 < shortest <= longest, got "
             f"{self.retention_half_lives}"),
            (self.encoder in ("auto", "linear", "cnn"), f"encoder must be auto, linear or cnn, got {self.encoder!r}"),
            (isinstance(self.ebmm, EBMMConfig), f"ebmm must be an EBMMConfig, got {type(self.ebmm).__name__}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(f"CoreConfig: {message}")
        ebmm = dataclasses.replace(self.ebmm, data_range=(-1.0, 1.0), prior_anchor="previous")
        object.__setattr__(self, "ebmm", ebmm)

    @classmethod
    def build(cls, **overrides: Any) -> CoreConfig:
        """A config from keyword overrides; ``ebmm`` may be a dict of :class:`EBMMConfig` fields.

        Raises:
            ValueError: an unknown field, naming the known ones.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown memory settings {unknown}; CoreConfig has {sorted(known)}")
        ebmm = overrides.get("ebmm")
        if isinstance(ebmm, dict):
            overrides["ebmm"] = dataclasses.replace(CORE_EBMM_CONFIG, **ebmm)
        return cls(**overrides)


FAST_CORE = dict(embed_size=32, key_size=8, value_size=8, hidden_size=32, dynamic_size=16,
                 ebmm=dict(write_steps=2, read_steps=2))  # fmt: skip
"""Overrides of a smaller, cheaper core (``CoreConfig.build(**FAST_CORE)``)."""


def position_size(periods: tuple[float, ...]) -> int:
    """Entries of the position code: a sine and a cosine per period, and the first-step flag."""
    return 2 * len(periods) + 1


def position_code(clock: Tensor, count: Tensor, periods: Tensor) -> Tensor:
    """``[..., 2F + 1]``: ``sin(2πc/Pᵢ)``, ``cos(2πc/Pᵢ)`` for the ``F`` periods, then ``+1`` if ``n = 0`` else ``−1``.

    Args:
        clock: ``[...]`` the step clock ``c`` (it runs on across episodes; see :class:`MemoryCore`).
        count: ``[...]`` rows written so far in the episode (``n``).
        periods: ``[F]`` periods in steps.
    """
    angle = (2 * math.pi) * clock.unsqueeze(-1).to(periods.dtype) / periods  # [..., F]
    first = (count == 0).to(periods.dtype).unsqueeze(-1) * 2 - 1  # [..., 1]
    return torch.cat([torch.sin(angle), torch.cos(angle), first], dim=-1)


def step_counts(initial: Tensor, starts: Tensor) -> Tensor:
    """``[n, T]`` rows written before each step: ``initial + t`` until an episode starts, then ``t − start``.

    Args:
        initial: ``[n]`` rows written before step 0 (when step 0 does not start an episode).
        starts: ``[n, T]`` bool, an episode starts at that step (its memory is reset first).
    """
    T = starts.shape[1]
    t = torch.arange(T, device=starts.device).expand_as(starts)  # [n, T]
    last_start = torch.where(starts, t, -1).cummax(dim=1).values  # [n, T]
    return torch.where(last_start >= 0, t - last_start, initial.unsqueeze(1) + t)


@dataclass(frozen=True)
class _ImageLayout:
    """The image parts of a row, all that a core's CNN embedding needs of a :class:`RowLayout`."""

    image_segments: list[Segment]


class MemoryCore(nn.Module):
    """The agent's memory: embedding, key/value/query maps, the EBMM, retention and the features (module docstring).

    State crosses env steps as a :class:`~ebmm_rl.memory.MemoryState` (``θ`` and the rows written), passed in and
    returned; the policy that owns the core carries it.

    Args:
        row_size: ``D``, entries of a row (:class:`~ebmm_rl.rl.rows.RowLayout`).
        config: sizes and rules.
        layout: the rows' layout (where the images are, for the CNN embedding); ``None``: plain vectors.
        row_range: the box rows lie in.
        memory: an :class:`EBMMemory` over flat patterns of size ``P`` to use instead of a fresh one (a
            pre-trained core's).

    Attributes:
        pattern_size: ``P``.
        features_dim: ``F``.
        known: ``[H, P]`` bool, the dimensions each head clamps.
    """

    def __init__(
        self,
        row_size: int,
        config: CoreConfig = CoreConfig(),
        layout: RowLayout | None = None,
        row_range: tuple[float, float] = (-1.0, 1.0),
        memory: EBMMemory | None = None,
    ) -> None:
        super().__init__()
        fresh_memory = memory is None
        self.config = config
        self.row_size = int(row_size)
        kind = config.encoder
        if kind == "auto":
            kind = "cnn" if _images(layout) else "linear"
        self.embed = RowEncoder(kind, self.row_size, row_range, layout, config.embed_size)
        E, K, V = config.embed_size, config.key_size, config.value_size
        S = position_size(config.position_periods)
        H = len(config.heads)
        self.position_size, self.key_size, self.value_size, self.num_heads = S, K, V, H
        self.pattern_size = S + K + V
        self.key_map = nn.Linear(E, K)
        self.value_map = nn.Linear(E, V)
        self.query_key_map = nn.Linear(E + S, H * K)
        self.query_time_map = nn.Linear(E, H * (4 * len(config.position_periods) + 1))
        with torch.no_grad():  # time head i starts at "2^i steps ago": z = e^{-iω 2^i}, c = 0 (see queries)
            bias = self.query_time_map.bias.view(H, -1)
            bias.zero_()
            omega = 2 * math.pi / torch.tensor(config.position_periods)
            lags = [2**i for i in range(H)]
            for h, lag in zip(range(H), [lags[config.heads[:h].count("time")] for h in range(H)], strict=True):
                bias[h, : len(omega)] = torch.cos(omega * lag)
                bias[h, len(omega) : 2 * len(omega)] = -torch.sin(omega * lag)
                bias[h, -1] = -1.0  # not the first step
        self.gate_map = nn.Linear(E, 1) if config.write_gate else None
        if self.gate_map is not None:
            nn.init.constant_(self.gate_map.bias, 2.0)  # σ(2) ≈ 0.88: writes start nearly open
        if memory is None:
            energy = MLPEnergy(MLPConfig(self.pattern_size, config.hidden_size, config.dynamic_size, config.hops))
            memory = EBMMemory(energy, config.ebmm)
        elif tuple(memory.data_shape) != (self.pattern_size,):
            raise ValueError(
                f"the memory stores patterns of shape {tuple(memory.data_shape)}, but this core writes rows "
                f"[position | key | value] of {self.pattern_size} entries ({S} + {K} + {V}); a memory meta-trained "
                "on whole observation rows (before key/value rows) does not fit: pre-train a core with "
                "scripts/meta_train_env.py"
            )
        self.memory = memory
        self._units = {n: p.shape[0] for n, p in memory.energy.memory_parameters().items()}  # unit j = row j
        if len(set(self._units.values())) != 1:
            raise ValueError(f"the writable tensors of the memory must share their units (dim 0); got {self._units}")
        lo, hi = config.retention_half_lives
        units = next(iter(self._units.values()))
        self.retention_raw = nn.Parameter(torch.linspace(math.log(lo), math.log(hi), units))  # log half-lives
        known = [[False] * self.pattern_size for _ in config.heads]  # plain lists: also built on the meta device
        for h, head in enumerate(config.heads):
            dims = {"time": range(S), "content": range(S, S + K), "key": range(S + K), "first": [S - 1]}[head]
            for d in dims:
                known[h][d] = True
        free = [i for i, k in enumerate(sum(known, [])) if not k]
        self.register_buffer("known", torch.tensor(known), persistent=False)
        first = [[h == "first" and d == S - 1 for d in range(self.pattern_size)] for h in config.heads]
        self.register_buffer("first_flag", torch.tensor(first), persistent=False)  # [H, P]: set to +1
        self.register_buffer("periods", torch.tensor(config.position_periods), persistent=False)
        self.register_buffer("free_index", torch.tensor(free, dtype=torch.long), persistent=False)
        self.features_dim = E + len(free) + 2 * H + 2
        self.window_mode = "block"
        self.last_aux_loss: float | None = None
        """The auxiliary loss of the last update batch (:meth:`aux_loss`)."""
        self.prior: str | None = None
        """The memory prior this core started from (a file), or ``None`` (fresh, or a memory given)."""
        if fresh_memory and config.memory_prior is not None and self.retention_raw.device.type != "meta":
            from ebmm_rl.rl.prior import load_prior, shipped_prior  # prior imports this module

            path = shipped_prior(self) if config.memory_prior == "auto" else config.memory_prior
            if path is not None:
                load_prior(self, path)
                self.prior = str(path)

    @property
    def memory_size(self) -> int:
        """Writable floats per episode (the paper's memory size)."""
        return self.memory.memory_size

    # -------------------------------------------------------------------------------------------- spec
    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this core's architecture, as plain values (for checkpoints)."""
        return {
            "row_size": self.row_size,
            "row_range": list(self.embed.row_range),
            "config": dataclasses.asdict(self.config),
            "images": [dataclasses.asdict(seg) for seg in self.embed.images],
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> MemoryCore:
        """An untrained core of the architecture :meth:`spec` describes.

        Raises:
            ValueError: a spec that is not :meth:`spec`'s output.
        """
        try:
            fields = dict(spec["config"])
            fields["ebmm"] = EBMMConfig(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in fields["ebmm"].items()}
            )
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
            if fields.get("memory_prior") not in (None, "auto"):
                fields["memory_prior"] = None  # the checkpoint's weights replace it: the file need not exist
            config = CoreConfig(**fields)
            images = [Segment(**{**seg, "shape": tuple(seg["shape"])}) for seg in spec["images"]]
            layout = _ImageLayout(images) if images else None
            return cls(int(spec["row_size"]), config, layout, tuple(spec["row_range"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a MemoryCore spec ({type(error).__name__}: {error})") from None

    # ------------------------------------------------------------------------------------------- stateless
    @property
    def retention(self) -> Tensor:
        """``[units]`` ``ρ``, the fraction of ``θ − θ̄`` each memory unit keeps per env step: ``2^(−1/h)``."""
        return torch.exp(-math.log(2.0) * torch.exp(-self.retention_raw))

    @property
    def half_lives(self) -> Tensor:
        """``[units]`` half-lives ``h`` in env steps."""
        return torch.exp(self.retention_raw)

    def patterns(self, u: Tensor, count: Tensor, clock: Tensor) -> Tensor:
        """The written rows ``[p ; tanh(W_k u) ; tanh(W_v u)] [..., P]`` of ``u [..., E]``, ``count``, ``clock [...]``.

        ``p`` is the position code of the step clock and the row count.
        """
        p = position_code(clock, count, self.periods).to(u.dtype)
        return torch.cat([p, torch.tanh(self.key_map(u)), torch.tanh(self.value_map(u))], dim=-1)

    def queries(self, u: Tensor, count: Tensor, clock: Tensor) -> Tensor:
        """``[..., H, P]``: each head's clamped dimensions, its free ones at 0 (the centre of the data range).

        The learned key part is ``W_q [u ; p_t]``. The time part is translation-equivariant: for each period, the
        pair ``(cos, sin)`` of ``p_t`` is the complex phase ``e^{iωn}``, and the query's pair is
        ``z · e^{iωn} + c`` with ``z`` and ``c`` linear in ``u``; the first-step flag is ``c``'s alone. So "``k``
        steps ago" (``z = e^{−iωk}``, ``c = 0``) and "the first step" (``z = 0``, ``c = p_0``) are exact at every
        ``n``, and a query learned on short episodes addresses the same way in longer ones (a plain linear map of
        ``p_t`` learned to use the slow sinusoids as an absolute clock and failed past the training length).
        """
        p = position_code(clock, count, self.periods).to(u.dtype)
        nf = self.periods.shape[0]
        keys = self.query_key_map(torch.cat([u, p], dim=-1)).unflatten(-1, (self.num_heads, -1))  # [..., H, K]
        time = self.query_time_map(u).unflatten(-1, (self.num_heads, -1))  # [..., H, 4F + 1]
        zr, zi, c = time[..., :nf], time[..., nf : 2 * nf], time[..., 2 * nf :]
        sin, cos = p[..., :nf].unsqueeze(-2), p[..., nf : 2 * nf].unsqueeze(-2)  # [..., 1, F]
        q_sin = zr * sin + zi * cos + c[..., :nf]
        q_cos = zr * cos - zi * sin + c[..., nf : 2 * nf]
        zeros = keys.new_zeros(*keys.shape[:-1], self.value_size)
        q = torch.cat([q_sin, q_cos, c[..., 2 * nf :], keys, zeros], dim=-1)  # [..., H, P]
        q = torch.where(self.first_flag, torch.ones_like(q), q)  # a "first" head asks for the first-step flag
        return torch.where(self.known, q.clamp(-1.0, 1.0), torch.zeros_like(q))

    def features(self, u: Tensor, count: Tensor, result: ReadResult, x: Tensor, state: MemoryState) -> Tensor:
        """The policy's features ``[n, F]`` from a read of the ``H`` queries and the step's row.

        Args:
            u: ``[n, E]`` embeddings.
            count: ``[n]`` rows written before the step.
            result: the read (iterates ``[K + 1, n, H, P]``) from ``state``.
            x: ``[n, P]`` the step's row.
            state: the memory the read started from.
        """
        n = u.shape[0]
        first, last = result.iterates[0], result.iterates[-1]  # [n, H, P]
        probe = torch.cat([first, last, x.unsqueeze(1)], dim=1).unsqueeze(0)  # [1, n, 2H + 1, P]
        energies = torch.asinh(self.memory.energies(probe, state)[0])  # [n, 2H + 1]
        retrieved = last.reshape(n, -1)[:, self.free_index]  # the heads' free dimensions
        return torch.cat([u, retrieved, energies, torch.log1p(count.to(u.dtype)).unsqueeze(1)], dim=1)

    # -------------------------------------------------------------------------------------------- writing
    def retain(self, state: MemoryState) -> MemoryState:
        """``θ̄ + ρ (θ − θ̄)`` for every writable tensor (once per env step, before its write)."""
        theta_bar = self.memory.energy.memory_parameters()
        rho = self.retention if torch.is_grad_enabled() else self.retention.detach()
        fast = {}
        for name, bar in theta_bar.items():
            w = state.fast_weights[name]
            fast[name] = torch.lerp(bar.unsqueeze(0).expand_as(w), w, rho.view(-1, *[1] * (w.dim() - 2)))
        return MemoryState(fast, state.num_written)

    def write(
        self,
        x: Tensor,
        state: MemoryState,
        u: Tensor | None = None,
        mask: Tensor | None = None,
        create_graph: bool = False,
        schedule: WriteSchedule | None = None,
    ) -> MemoryState:
        """One env step's write: retention, then ``T`` write steps on ``x``, scaled by the gate if there is one.

        Args:
            x: ``[n, P]`` the rows.
            state: the memory before the step.
            u: ``[n, E]`` the embeddings (the gate's input; needed with ``write_gate``).
            mask: optional ``[n]`` bool: where ``False`` nothing happens (padding), not even retention.
            create_graph: keep the graph for gradients.
            schedule: the memory's write rates (``memory.schedule(create_graph)``) shared by a chain of writes.
        """
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            retained = self.retain(state)
            written = self.memory.write(
                x.unsqueeze(1),
                retained,
                pattern_mask=None if mask is None else mask.unsqueeze(1),
                create_graph=create_graph,
                check=False,
                schedule=schedule,
            )
            written = self._gate(u, retained, written)
            return written if mask is None else written.where(mask, state)

    def _gate(self, u: Tensor | None, retained: MemoryState, written: MemoryState) -> MemoryState:
        if self.gate_map is None:
            return written
        if u is None:
            raise ValueError("a core with write_gate=True needs the embeddings u to write")
        g = torch.sigmoid(self.gate_map(u))[:, 0]  # [n]
        fast = {}
        for name, w in written.fast_weights.items():
            r = retained.fast_weights[name]
            fast[name] = torch.lerp(r, w, g.view(-1, *[1] * (w.dim() - 1)))
        return MemoryState(fast, written.num_written)

    def chain(
        self,
        x: Tensor,
        u: Tensor,
        state: MemoryState,
        starts: Tensor | None = None,
        mask: Tensor | None = None,
        create_graph: bool = False,
    ) -> tuple[list[MemoryState], MemoryState]:
        """The write loop: ``T`` steps, one row each, with resets at episode starts.

        Args:
            x: ``[n, T, P]`` rows.
            u: ``[n, T, E]`` their embeddings.
            state: the memory before step 0.
            starts: optional ``[n, T]`` bool: the memory is reset to ``θ̄`` before that step.
            mask: optional ``[n, T]`` bool: ``False`` steps write nothing (padding).
            create_graph: keep the graph through every write.

        Returns:
            ``(the memory each step reads from, after its reset; the memory after the last step)``.
        """
        schedule = self.memory.schedule(create_graph)  # one copy of the rates for the T writes
        before: list[MemoryState] = []
        for t in range(x.shape[1]):
            if starts is not None and bool(starts[:, t].any()):
                state = self.memory.reset(state, starts[:, t])
            before.append(state)
            step_mask = None if mask is None else mask[:, t]
            state = self.write(x[:, t], state, u[:, t], step_mask, create_graph, schedule)
        return before, state

    # ---------------------------------------------------------------------------------------------- steps
    @torch.no_grad()
    def step(
        self, rows: Tensor, state: MemoryState, clock: Tensor, starts: Tensor | None = None
    ) -> tuple[Tensor, MemoryState]:
        """One env step for ``n`` episodes without a graph (rollouts, ``predict``): read, then write, in lockstep.

        Args:
            rows: ``[n, D]`` the step's rows.
            state: the memory before the step.
            clock: ``[n]`` the step clock of this step (the next step's is ``clock + 1``).
            starts: optional ``[n]`` bool: a new episode starts (its memory is reset to ``θ̄`` first).

        Returns:
            ``(features [n, F], the memory after the step)``.
        """
        if starts is not None and bool(starts.any()):
            state = self.memory.reset(state, starts)
        u = self.embed(rows)  # [n, E]
        count = state.num_written
        x = self.patterns(u, count, clock)  # [n, P]
        q = self.queries(u, count, clock)  # [n, H, P]
        retained = self.retain(state)
        written, result = self.memory.write_and_read(
            x.unsqueeze(1), q, retained, self.known, check=False, read_state=state
        )
        written = self._gate(u, retained, written)
        return self.features(u, count, result, x, state), written

    def read_features(
        self,
        u: Tensor,
        count: Tensor,
        clock: Tensor,
        state: MemoryState,
        x: Tensor | None = None,
        create_graph: bool = False,
    ) -> Tensor:
        """Features ``[n, F]`` of steps with embeddings ``u [n, E]`` that read from ``state`` (``n`` episodes).

        ``count``, ``clock``: ``[n]``. ``x`` (``[n, P]``, the step's row) defaults to ``patterns(u, count, clock)``.
        """
        x = self.patterns(u, count, clock) if x is None else x
        result = self.memory.read(self.queries(u, count, clock), state, self.known, create_graph=create_graph)
        return self.features(u, count, result, x, state)

    def unroll(
        self,
        rows: Tensor,
        starts: Tensor,
        state: MemoryState,
        clock: Tensor,
        window: int | None = None,
        stored: MemoryState | None = None,
        keep: Tensor | None = None,
        aux_coef: float = 0.0,
    ) -> tuple[Tensor, MemoryState | None, Tensor | None]:
        """Features of ``n`` sequences of ``T`` steps, with gradients through the writes (RL updates).

        Args:
            rows: ``[n, T, D]``.
            starts: ``[n, T]`` bool, an episode starts at that step.
            state: the memory before step 0 of each sequence.
            clock: ``[n]`` the step clock at step 0 (step ``t``'s is ``clock + t``, across episode starts too).
            window: ``None``: every read backpropagates through every write since the sequence's start (``T``
                sequential writes with a graph); ``k``: each read through its last ``k`` writes only, from the
                memory before them without a graph (``k`` batched writes: the *truncation window*).
            stored: with ``window``, the memory each step read from during the rollout (``[n · T]``,
                sequence-major), instead of recomputing it by ``T`` writes without a graph.
            keep: with ``window``, optional flat indices into the ``n · T`` steps: compute only these.
            aux_coef: ``> 0``: also return :meth:`aux_loss` over the steps.

        Returns:
            ``(features [n · T or len(keep), F], the memory after step T − 1 or None when not computed, the
            auxiliary loss or None)``.
        """
        n, T = starts.shape
        create_graph = torch.is_grad_enabled()
        u = self.embed(rows)  # [n, T, E]
        counts = step_counts(state.num_written, starts)  # [n, T]
        clocks = clock.unsqueeze(1) + torch.arange(T, device=rows.device)  # [n, T]
        x = self.patterns(u, counts, clocks)  # [n, T, P]
        final = None
        if window is None:
            before, final = self.chain(x, u, state, starts, create_graph=create_graph)
            reads = MemoryState.stack(before)  # [n · T]
            steps = None
        else:
            if stored is None:
                with torch.no_grad():
                    before, final = self.chain(x.detach(), u.detach(), state, starts)
                stored = MemoryState.stack(before)
            else:
                stored = self.memory.reset(stored, starts.reshape(-1))
            steps = torch.arange(n * T, device=rows.device) if keep is None else keep
            if self.window_mode == "block":
                reads = self._blocks(x, u, starts, stored, window, steps)
            else:
                reads = self._window(x, u, starts, stored, window, steps)
        flat = [u.reshape(n * T, -1), x.reshape(n * T, -1), counts.reshape(-1), clocks.reshape(-1)]
        if steps is not None:
            flat = [f[steps] for f in flat]
        flat_u, flat_x, flat_counts, flat_clocks = flat
        features = self.read_features(flat_u, flat_counts, flat_clocks, reads, flat_x, create_graph)
        aux = None
        if aux_coef > 0 and create_graph:
            out = self.aux_loss(x, starts, reads, steps)
            aux = None if out is None else out[0]
        return features, final, aux

    def _window(self, x: Tensor, u: Tensor, starts: Tensor, stored: MemoryState, k: int, steps: Tensor) -> MemoryState:
        """The memory each step of ``steps`` reads from, with a graph through its last ``k`` writes.

        Step ``t`` of a sequence reads from ``stored`` at step ``b = max(t − k, last episode start ≤ t)`` (a
        constant deviation from ``θ̄``, so the gradient still reaches ``θ̄``), then rows ``b .. t − 1`` written with
        a graph: ``k`` batched writes for all steps at once, rows before ``b`` masked out.
        """
        n, T = starts.shape
        t_all = torch.arange(T, device=x.device)
        last_start = torch.where(starts, t_all, 0).cummax(dim=1).values.reshape(-1)  # [n · T]
        t_flat = t_all.repeat(n)[steps]  # [m]
        offset = (torch.arange(n, device=x.device).repeat_interleave(T) * T)[steps]  # [m]
        base_t = torch.maximum(t_flat - k, last_start[steps])
        base = stored.index(offset + base_t)
        theta_bar = self.memory.energy.memory_parameters()
        fast = {n_: theta_bar[n_].unsqueeze(0) + (w - theta_bar[n_]).detach() for n_, w in base.fast_weights.items()}
        current = MemoryState(fast, base.num_written)
        flat_x, flat_u = x.reshape(n * T, -1), u.reshape(n * T, -1)
        schedule = self.memory.schedule(create_graph=True)
        for j in range(k):
            r = t_flat - k + j  # the row this round writes, for every step
            valid = r >= base_t
            index = offset + r.clamp(min=0)
            current = self.write(flat_x[index], current, flat_u[index], valid, True, schedule)
        return current

    def _blocks(self, x: Tensor, u: Tensor, starts: Tensor, stored: MemoryState, k: int, steps: Tensor) -> MemoryState:
        """The memory each step of ``steps`` reads from, with a graph through the writes since its block began.

        Each sequence is cut into blocks of ``k`` steps; a block starts from ``stored`` at its first step (a constant
        deviation from ``θ̄``) and writes its rows with a graph: one chain of ``k`` writes over all blocks at once,
        so every row is written once (as by the rollout), and step ``j`` of a block backpropagates through ``j``
        writes.
        """
        n, T = starts.shape
        nb = -(-T // k)  # blocks per sequence
        pad = nb * k - T

        def blocked(t: Tensor) -> Tensor:  # [n, T, ...] -> [n · nb, k, ...]
            t = torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) if pad else t
            return t.reshape(n * nb, k, *t.shape[2:])

        first = (torch.arange(n * nb, device=x.device) // nb) * T + (torch.arange(n * nb, device=x.device) % nb) * k
        base = stored.index(first)
        theta_bar = self.memory.energy.memory_parameters()
        fast = {
            name: theta_bar[name].unsqueeze(0) + (w - theta_bar[name]).detach() for name, w in base.fast_weights.items()
        }
        mask = blocked(torch.ones(n, T, dtype=torch.bool, device=x.device).unsqueeze(-1))[..., 0]
        block_starts = blocked(starts.unsqueeze(-1))[..., 0].clone()
        block_starts[:, 0] = False  # the stored state at a block's first step is after its reset already
        before, _ = self.chain(blocked(x), blocked(u), MemoryState(fast, base.num_written), block_starts, mask, True)
        reads = MemoryState.stack(before)  # [n · nb · k], block-major = sequence-major with the padding
        t = torch.arange(n * T, device=x.device)
        return reads.index(((t // T) * nb * k + t % T)[steps])

    # -------------------------------------------------------------------------------------------- aux loss
    def aux_loss(
        self, x: Tensor, starts: Tensor, reads: MemoryState, steps: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | None:
        """The paper's objective on the agent's own rows: recall a stored value from its clamped key.

        For each step ``t`` that has an earlier step ``s`` of its episode in the batch, one such ``s`` is drawn
        uniformly; the query is ``[p_s ; k_s ; ?]`` with the key clamped (position and learned key), read from
        the memory step ``t`` reads from, and the step-wise loss (App. B.4) compares every read iterate with
        ``x_s``. Targets are detached, so the loss trains how the memory stores and reads, not what the maps put
        in a row (a map trained to make rows easy to recall could make them all equal).

        Args:
            x: ``[n, T, P]`` the rows of the batch.
            starts: ``[n, T]`` episode starts.
            reads: the memory of each step (``[n · T]``, or of ``steps``).
            steps: flat indices of the steps ``reads`` holds; ``None``: all ``n · T``.

        Returns:
            ``(loss, errors [K])`` over the steps that have an earlier row (:meth:`recall_loss`), or ``None`` if
            none has.
        """
        n, T = starts.shape
        t_all = torch.arange(T, device=x.device)
        last_start = torch.where(starts, t_all, 0).cummax(dim=1).values.reshape(-1)  # [n · T]
        steps = torch.arange(n * T, device=x.device) if steps is None else steps
        t_flat = t_all.repeat(n)[steps]
        first = last_start[steps]
        has = t_flat > first  # an earlier row of the episode lies in this sequence
        if not bool(has.any()):
            return None
        span = (t_flat - first).clamp(min=1).to(x.dtype)
        s = first + (torch.rand(steps.shape[0], device=x.device) * span).long().clamp(max=(span - 1).long())
        offset = (torch.arange(n, device=x.device).repeat_interleave(T) * T)[steps]
        target = x.reshape(n * T, -1)[offset + s][has]  # [m', P]
        return self.recall_loss(target, reads.index(has))

    def recall_loss(self, rows: Tensor, state: MemoryState) -> tuple[Tensor, Tensor]:
        """The step-wise loss (App. B.4) of reading ``rows`` (``[m, P]``, stored in ``state``) from their keys.

        The query is each row with its key clamped (position and learned key) and its value at 0; targets are
        detached (see :meth:`aux_loss`). The loss is kept in :attr:`last_aux_loss`.

        Returns:
            ``(loss, errors [K])``: the loss averaged over the rows and the detached error of each read iterate.
        """
        target = rows.detach().unsqueeze(1)  # [m, 1, P]
        known = self._key_mask()
        query = torch.where(known, target, torch.zeros_like(target))
        result = self.memory.read(query, state, known, create_graph=torch.is_grad_enabled())
        loss, errors = stepwise_loss(target, result)
        self.last_aux_loss = float(loss.detach())
        return loss, errors

    def _key_mask(self) -> Tensor:
        mask = torch.zeros(self.pattern_size, dtype=torch.bool, device=self.known.device)
        mask[: self.position_size + self.key_size] = True
        return mask

    def schedule_parameters(self) -> list[nn.Parameter]:
        """The memory's step sizes, momenta and loss weights, and the retention (a meta-trainer's slower group)."""
        return [*self.memory.schedule_parameters(), self.retention_raw]

    # ------------------------------------------------------------------------------------------- logging
    def scalars(self) -> dict[str, float]:
        """What TensorBoard's ``memory/`` tags show: retention half-lives, read step sizes and momenta, write rates."""
        out: dict[str, float] = {}
        with torch.no_grad():
            half_lives = self.half_lives
            out["retention_half_life_min"] = float(half_lives.min())
            out["retention_half_life_median"] = float(half_lives.median())
            out["retention_half_life_max"] = float(half_lives.max())
            for k, (gamma, psi) in enumerate(zip(self.memory.read_step_sizes.tolist(), self.memory.momenta.tolist(),
                                                  strict=True)):  # fmt: skip
                out[f"read_step_{k}"] = gamma
                out[f"read_momentum_{k}"] = psi
            out["write_lr_energy"] = float(self.memory.write_lrs[..., 0].mean())
            if self.gate_map is not None:
                out["gate_bias"] = float(self.gate_map.bias)
        if self.last_aux_loss is not None:
            out["aux_loss"] = self.last_aux_loss
        return out

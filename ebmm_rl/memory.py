"""EBMMemory: the meta-learned write and read rules of EBMM (paper §3, App. B, App. D).

Shapes: ``B`` episodes (independent memories), ``N`` patterns written per episode, ``M`` queries read per
episode, ``D...`` the pattern shape of the energy network (``(128,)``, ``(1, 32, 32)``, ...).

* ``write(patterns [B, N, D...], state=None) -> MemoryState``: ``T`` gradient steps (eq. 4) on the writing loss
  ``W = E + α‖∇ₓE‖² + β‖θ − θ̄‖²`` over the writable weights only. Passing ``state`` continues from it, which is
  chunked online writing.
* ``read(queries [B, M, D...], state, known_mask=None) -> ReadResult``: ``K`` projected gradient steps with
  Nesterov momentum on the energy (App. B.1–B.3).
* ``meta_loss(patterns, result)``: the step-wise reconstruction loss over all ``K`` iterates (App. B.4).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmm_rl.layers import EnergyNet
from ebmm_rl.validation import check_finite, check_int_fields

WRITE_TERMS = ("energy", "grad_norm", "prior")
"""The three terms of the writing loss, each with its own learned learning rate per layer and step."""


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


@dataclass(frozen=True)
class EBMMConfig:
    """Hyper-parameters of the write and read rules and the initial values of their meta-parameters.

    Attributes:
        write_steps: ``T``, gradient steps per write (per chunk when writing online).
        read_steps: ``K``, projected gradient steps per read.
        data_range: the box that reading projects onto: ``(0, 1)`` for images, ``(-1, 1)`` for bits.
        write_lr_init: initial learning rate of every (step, layer, loss term) of the write rule (App. D: 1e-4).
        alpha_init: initial weight ``α`` of ``‖∇ₓE‖²`` in the writing loss.
        beta_init: initial weight ``β`` of ``‖θ − θ̄‖²``.
        use_grad_norm_term: include ``α‖∇ₓE‖²`` in the writing loss (App. D: it helps; it costs one extra
            double-backward pass per write step).
        max_prior_step: stability guard: the shrink factor ``2·η_β·β`` that the prior term applies to
            ``θ − θ̄`` in one write step is capped here (it must stay below 1, or the step overshoots θ̄ and
            writing diverges; docs/design.md, "Stability guards"). ``tanh`` keeps the cap smooth.
        read_step_init: initial first read step size ``γ⁽¹⁾``.
        read_step_max: stability guard: ``γ⁽¹⁾ = read_step_max · σ(·)`` never exceeds this.
        read_decay_init: initial ``σ(η⁽ᵏ⁾)``, the factor between consecutive step sizes (App. B.3).
        momentum_init: initial ``ψ⁽¹⁾``.
        momentum_decay_init: initial factor between consecutive momenta (``ψ`` is parametrised like ``γ``).
        chunk_size: patterns per chunk when :meth:`EBMMemory.forward` writes (chunked online writing, so that
            meta-training uses the schedule the memory will be deployed with); 0 writes the batch at once.
        prior_anchor: where the prior term ``β‖θ − θ̃‖²`` pulls when writing continues from a state:
            ``"initial"`` (the paper's ``θ̃ = θ̄``, the meta-learned initial weights) or ``"previous"`` (``θ̃`` =
            the state the write starts from, i.e. the memory before the chunk, so that a new chunk is pulled
            toward what the earlier chunks wrote instead of toward ``θ̄``). The two agree for a write from ``θ̄``
            (the paper's batch writing), so the choice matters only for chunked or online writing. Default
            ``"previous"``: meta-trained with ``scripts/eval_chunked.py`` (C = 1 and 4, 300 to 1500 meta-steps, two
            seeds), it recalled the whole episode 0.1-0.37 error bits better than ``"initial"`` in all eight runs,
            by recalling the early chunks better (``docs/rl.md``). Checkpoints written before this field existed
            load as ``"initial"``, the rule they were trained with.
    """

    write_steps: int = 5
    read_steps: int = 5
    data_range: tuple[float, float] = (0.0, 1.0)
    write_lr_init: float = 1e-4
    alpha_init: float = 1.0
    beta_init: float = 1.0
    use_grad_norm_term: bool = True
    max_prior_step: float = 0.5
    read_step_init: float = 0.5
    read_step_max: float = 10.0
    read_decay_init: float = 0.9
    momentum_init: float = 0.5
    momentum_decay_init: float = 0.9
    chunk_size: int = 0
    prior_anchor: Literal["initial", "previous"] = "previous"

    def __post_init__(self) -> None:
        check_int_fields(self, {"chunk_size": 0})
        if not isinstance(self.data_range, (tuple, list)) or len(self.data_range) != 2:
            raise ValueError(f"EBMMConfig: data_range must be a pair (low, high), got {self.data_range!r}")
        for name in ("write_lr_init", "alpha_init", "beta_init", "max_prior_step", "read_step_init", "read_step_max",
                     "read_decay_init", "momentum_init", "momentum_decay_init"):  # fmt: skip
            check_finite("EBMMConfig", name, getattr(self, name))
        lo, hi = (check_finite("EBMMConfig", "data_range", v) for v in self.data_range)
        checks = [
            (self.write_steps >= 1, f"write_steps must be >= 1, got {self.write_steps}"),
            (self.read_steps >= 1, f"read_steps must be >= 1, got {self.read_steps}"),
            (lo < hi, f"data_range must be (low, high) with low < high, got {self.data_range}"),
            (self.write_lr_init > 0, "write_lr_init must be > 0"),
            (self.alpha_init > 0 and self.beta_init > 0, "alpha_init and beta_init must be > 0"),
            (0 < self.max_prior_step < 1, "max_prior_step must lie in (0, 1)"),
            (0 < self.read_step_init < self.read_step_max, "need 0 < read_step_init < read_step_max"),
            (0 < self.read_decay_init < 1, "read_decay_init must lie in (0, 1)"),
            (0 < self.momentum_init < 1, "momentum_init must lie in (0, 1)"),
            (0 < self.momentum_decay_init < 1, "momentum_decay_init must lie in (0, 1)"),
            (self.chunk_size >= 0, f"chunk_size must be >= 0 (0: write all at once), got {self.chunk_size}"),
            (
                self.prior_anchor in ("initial", "previous"),
                f"prior_anchor must be 'initial' or 'previous', got {self.prior_anchor!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"EBMMConfig: {message}")


class NonFiniteState(ValueError):
    """A :class:`MemoryState` given to :meth:`EBMMemory.read` or :meth:`EBMMemory.write` holds NaN or inf."""


@dataclass
class MemoryState:
    """The written memory: fast weights of ``B`` independent episodes.

    Attributes:
        fast_weights: writable weights by name (``"memory.weight"``), each ``[B, *parameter_shape]``.
        num_written: ``[B]`` number of patterns written so far into each episode's memory.
    """

    fast_weights: dict[str, Tensor]
    num_written: Tensor

    @property
    def batch_size(self) -> int:
        """``B``, the number of episodes."""
        return self.num_written.shape[0]

    def detach(self) -> MemoryState:
        """A copy cut from the autograd graph (truncated backpropagation across chunks)."""
        return MemoryState({n: w.detach() for n, w in self.fast_weights.items()}, self.num_written.detach())

    def flatten(self) -> Tensor:
        """All fast weights of each episode as one vector: ``[B, memory_size]``."""
        return torch.cat([w.reshape(self.batch_size, -1) for w in self.fast_weights.values()], dim=1)

    def index(self, index: Tensor | slice) -> MemoryState:
        """The episodes ``index`` selects (a bool mask, indices or a slice over ``B``)."""
        return MemoryState({n: w[index] for n, w in self.fast_weights.items()}, self.num_written[index])

    def where(self, mask: Tensor, other: MemoryState) -> MemoryState:
        """Episode ``b`` from ``self`` where ``mask[b]`` ([B] bool) holds, else from ``other``."""
        fast = {
            n: torch.where(mask.view(-1, *[1] * (w.dim() - 1)), w, other.fast_weights[n])
            for n, w in self.fast_weights.items()
        }
        return MemoryState(fast, torch.where(mask, self.num_written, other.num_written))

    @staticmethod
    def stack(states: Sequence[MemoryState]) -> MemoryState:
        """``T`` states of ``B`` episodes each as one state of ``B · T`` episodes, episode-major (``b · T + t``)."""
        names = states[0].fast_weights
        return MemoryState(
            {n: torch.stack([s.fast_weights[n] for s in states], 1).flatten(0, 1) for n in names},
            torch.stack([s.num_written for s in states], 1).flatten(),
        )


@dataclass
class ReadResult:
    """What a read returns.

    Attributes:
        iterates: ``[K + 1, B, M, D...]``: ``x⁽⁰⁾`` (the projected query) and every read iterate ``x⁽ᵏ⁾``;
            ``iterates[-1]`` is the retrieved pattern.
        energies: ``[K + 1, B, M]``: the energy of each iterate, or ``None`` if not asked for.
    """

    iterates: Tensor
    energies: Tensor | None = None

    @property
    def retrieved(self) -> Tensor:
        """``[B, M, D...]``, the last iterate."""
        return self.iterates[-1]


@dataclass(frozen=True)
class WriteSchedule:
    """The write rates of every step and writable layer, computed once for many writes (:meth:`EBMMemory.schedule`).

    A chain of online writes (one per env step, or per chunk) reuses the same ``T`` rates for every write; with a
    graph, computing them once puts one copy of their few dozen small ops in the graph instead of one per write.

    Attributes:
        rates: ``rates[j][t][layer]`` with ``j`` = 0 for ``η_E``, 1 for ``η_G`` and 2 for the prior's shrink factor
            ``max_prior_step · tanh(2 η_β β / max_prior_step)``: 0-dim tensors with a graph, floats without.
        alpha: ``α``, the weight of ``‖∇ₓE‖²``.
        create_graph: whether the rates carry the graph to the schedule parameters.
    """

    rates: list[list[list[Tensor]]] | list[list[list[float]]]
    alpha: Tensor
    create_graph: bool


@dataclass
class MetaOutput:
    """What one write + read + meta-loss pass returns (``EBMMemory.forward``).

    Attributes:
        loss: scalar step-wise reconstruction loss (App. B.4).
        errors: ``[K]`` mean squared reconstruction error of each read iterate (detached).
        read: the :class:`ReadResult`.
        state: the written :class:`MemoryState`.
    """

    loss: Tensor
    errors: Tensor
    read: ReadResult
    state: MemoryState = field(repr=False)


class EBMMemory(nn.Module):
    """Meta-learned energy-based memory (EBMM).

    Meta-parameters (all learned by :meth:`meta_loss`): ``θ̄`` (the energy network's writable weights, whose
    values are the initial fast weights) and its static weights; write learning rates ``η[t, layer, term]``
    (softplus, one per write step, writable layer and loss term, App. D); ``α`` and ``β`` (softplus); the read
    step sizes ``γ⁽ᵏ⁾ = γ⁽ᵏ⁻¹⁾σ(η⁽ᵏ⁾)`` and momenta ``ψ⁽ᵏ⁾ = ψ⁽ᵏ⁻¹⁾σ(·)`` (App. B.3).

    Choices where the paper is ambiguous:

    * Write learning rates are per write step ``t`` as in eq. 4 (``η⁽ᵗ⁾``) *and* per layer and loss term as in
      App. D. Chunked writing reuses the same ``T`` rates for every chunk.
    * The write step averages ``∇_θ W`` over the episode's patterns (eq. 4's ``1/N Σ``), so the step does not
      grow with ``N``; in chunked writing the average is over the chunk.
    * App. B.2 writes ``x⁽ᵏ⁾ = project(v⁽ᵏ⁾)``, which would drop ``x⁽ᵏ⁻¹⁾``; we read it as the usual Nesterov
      update ``x⁽ᵏ⁾ = project(x⁽ᵏ⁻¹⁾ + v⁽ᵏ⁾)``, with ``v⁽⁰⁾ = 0``.
    * ``ψ⁽¹⁾ = σ(·)`` and ``γ⁽¹⁾ = read_step_max · σ(·)``: both bounded (a stability guard, docs/design.md).
    * Known (clamped) dimensions get zero gradient and are reset to the query after each projection, so they
      never change.

    Args:
        energy: the energy network (its ``memory_layers()`` define what is written).
        config: write/read hyper-parameters.
    """

    def __init__(self, energy: EnergyNet, config: EBMMConfig = EBMMConfig()) -> None:
        super().__init__()
        self.energy = energy
        self.config = config
        self.layer_names = list(energy.memory_layers())
        if not self.layer_names:
            raise ValueError(f"{type(energy).__name__} has no writable (MemoryLayer) layers: nothing to write")
        self.data_shape = tuple(energy.data_shape)
        T, L, K = config.write_steps, len(self.layer_names), config.read_steps
        self.write_lr_raw = nn.Parameter(torch.full((T, L, len(WRITE_TERMS)), _inverse_softplus(config.write_lr_init)))
        self.alpha_raw = nn.Parameter(torch.tensor(_inverse_softplus(config.alpha_init)))
        self.beta_raw = nn.Parameter(torch.tensor(_inverse_softplus(config.beta_init)))
        self.read_step_raw = nn.Parameter(torch.tensor(_logit(config.read_step_init / config.read_step_max)))
        self.read_decay_raw = nn.Parameter(torch.full((K - 1,), _logit(config.read_decay_init)))
        self.momentum_raw = nn.Parameter(torch.tensor(_logit(config.momentum_init)))
        self.momentum_decay_raw = nn.Parameter(torch.full((K - 1,), _logit(config.momentum_decay_init)))

    # ----------------------------------------------------------------------------------------------- schedules
    @property
    def write_lrs(self) -> Tensor:
        """``[T, L, 3]`` write learning rates ``η[t, layer, term]``; terms in :data:`WRITE_TERMS` order."""
        return F.softplus(self.write_lr_raw)

    @property
    def alpha(self) -> Tensor:
        """Weight of ``‖∇ₓE‖²`` in the writing loss."""
        return F.softplus(self.alpha_raw)

    @property
    def beta(self) -> Tensor:
        """Weight of ``‖θ − θ̄‖²`` in the writing loss."""
        return F.softplus(self.beta_raw)

    @property
    def read_step_sizes(self) -> Tensor:
        """``[K]`` non-increasing read step sizes ``γ⁽ᵏ⁾``."""
        first = self.config.read_step_max * torch.sigmoid(self.read_step_raw)
        return _cumulative_decay(first, self.read_decay_raw)

    @property
    def momenta(self) -> Tensor:
        """``[K]`` non-increasing Nesterov momenta ``ψ⁽ᵏ⁾``."""
        return _cumulative_decay(torch.sigmoid(self.momentum_raw), self.momentum_decay_raw)

    def schedule_parameters(self) -> list[nn.Parameter]:
        """Step sizes, momenta and loss weights (the optimiser may give them their own learning rate)."""
        return [
            self.write_lr_raw,
            self.alpha_raw,
            self.beta_raw,
            self.read_step_raw,
            self.read_decay_raw,
            self.momentum_raw,
            self.momentum_decay_raw,
        ]

    @property
    def memory_size(self) -> int:
        """Number of writable float32 values per episode (the paper's memory size)."""
        return self.energy.memory_size

    # -------------------------------------------------------------------------------------------- write / read
    def initial_state(self, batch_size: int) -> MemoryState:
        """``θ̄`` for ``batch_size`` episodes (a view: gradients flow back to ``θ̄``)."""
        fast = {n: p.unsqueeze(0).expand(batch_size, *p.shape) for n, p in self.energy.memory_parameters().items()}
        device = next(iter(fast.values())).device
        return MemoryState(fast, torch.zeros(batch_size, dtype=torch.long, device=device))

    def reset(self, state: MemoryState, mask: Tensor) -> MemoryState:
        """``state`` with the episodes where ``mask`` ([B] bool) holds set back to ``θ̄``, with nothing written."""
        return self.initial_state(state.batch_size).where(mask, state)

    def deviation(self, state: MemoryState) -> Tensor:
        """``θ − θ̄`` of every episode as one vector ``[B, memory_size]`` (in ``memory_parameters()`` order)."""
        theta_bar = self.energy.memory_parameters()
        B = state.batch_size
        return torch.cat([(state.fast_weights[n] - p).reshape(B, -1) for n, p in theta_bar.items()], dim=1)

    def from_deviation(self, deviation: Tensor, num_written: Tensor) -> MemoryState:
        """The state ``θ̄ + deviation`` (``[B, memory_size]``, as :meth:`deviation` returns it)."""
        fast, offset = {}, 0
        for name, p in self.energy.memory_parameters().items():
            part = deviation[:, offset : offset + p.numel()].reshape(-1, *p.shape)  # [B, *shape]
            fast[name] = p.unsqueeze(0) + part
            offset += p.numel()
        if offset != deviation.shape[1]:
            raise ValueError(f"a deviation of this memory has {offset} entries per episode, got {deviation.shape[1]}")
        return MemoryState(fast, num_written)

    def write(
        self,
        patterns: Tensor,
        state: MemoryState | None = None,
        pattern_mask: Tensor | None = None,
        create_graph: bool | None = None,
        check: bool = True,
        schedule: WriteSchedule | None = None,
    ) -> MemoryState:
        """Store ``patterns`` by ``T`` gradient steps on the writing loss (eq. 3, 4).

        Args:
            patterns: ``[B, N, D...]`` patterns to store, inside ``config.data_range``.
            state: memory to continue writing into (chunked online writing); ``None`` starts from ``θ̄``.
            pattern_mask: optional ``[B, N]`` bool; ``False`` entries are padding and are not written.
            create_graph: keep the graph for meta-gradients. Default: ``torch.is_grad_enabled()``.
            check: validate ``patterns`` (shape, dtype, finite, in range) and ``state``. Callers that write many
                small chunks of data they have already checked (the RL policies, one row per env step) pass
                ``False``: the value checks are 9 of the 242 kernels of a one-row write, three of them host syncs.
            schedule: the rates from :meth:`schedule` with the same ``create_graph``, for a chain of writes that
                shares them (:meth:`write_chunked`, the RL policies); ``None`` computes them here.

        Returns:
            The new :class:`MemoryState`.
        """
        if check:
            self._check_patterns(patterns, "patterns")
        B, N = patterns.shape[:2]
        if state is not None and check:
            self._check_state(state)
        if state is not None and state.batch_size != B:
            raise ValueError(f"state holds {state.batch_size} episodes but patterns have B={B}; they must match")
        weights = _pattern_weights(pattern_mask, B, N, patterns.device, patterns.dtype)  # [B, N], rows sum to 1
        create_graph = torch.is_grad_enabled() if create_graph is None else create_graph

        if state is None:
            with torch.set_grad_enabled(create_graph):  # θ̄ enters the graph only when it is kept
                state = self.initial_state(B)
        update, alpha = self._write_rule(state, create_graph, schedule)
        names = list(self.energy.memory_parameters())
        fast = dict(state.fast_weights)
        closed_form = self.uses_closed_form
        context: dict[str, Any] = {}  # the closed form's terms that do not change between the T steps
        with torch.enable_grad():
            for t in range(self.config.write_steps):
                if closed_form:  # ordinary tensor expressions: no leaves to differentiate with respect to
                    fast = fast if create_graph else {n: w.detach() for n, w in fast.items()}
                elif not create_graph:
                    fast = {n: w.detach().requires_grad_(True) for n, w in fast.items()}
                else:  # a detached starting state (e.g. stored by an RL rollout) still needs ∇_θ
                    fast = {n: w if w.requires_grad else w.detach().requires_grad_(True) for n, w in fast.items()}
                grads_e, grads_g = self._writing_loss_grads(
                    patterns, fast, names, weights, alpha, create_graph, context
                )
                fast = update(t, fast, grads_e, grads_g)
        if pattern_mask is not None:  # an episode with only padding in this chunk keeps its memory unchanged
            written = pattern_mask.any(dim=1)  # [B]
            fast = {
                n: torch.where(written.view(-1, *[1] * (w.dim() - 1)), w, state.fast_weights[n])
                for n, w in fast.items()
            }
        if not create_graph:
            fast = {n: w.detach() for n, w in fast.items()}
        count = pattern_mask.sum(dim=1) if pattern_mask is not None else torch.full_like(state.num_written, N)
        return MemoryState(fast, state.num_written + count)

    def write_chunked(
        self,
        patterns: Tensor,
        chunk_size: int,
        state: MemoryState | None = None,
        pattern_mask: Tensor | None = None,
        create_graph: bool | None = None,
    ) -> MemoryState:
        """Chunked online writing: write ``patterns`` chunk by chunk, each chunk continuing from the last.

        Each chunk of ``chunk_size`` patterns gets ``T`` write steps starting from the state the previous chunk left.

        Args:
            patterns: ``[B, N, D...]``, written in order ``[:, 0:C]``, ``[:, C:2C]``, ...
            chunk_size: ``C`` (the last chunk may be shorter); ``C >= N`` is one :meth:`write`.
            state: memory to continue from; ``None`` starts from ``θ̄``.
            pattern_mask: optional ``[B, N]`` bool; padding is not written, and a chunk that is all padding
                leaves an episode's memory unchanged.
            create_graph: keep the graph for meta-gradients. Default: ``torch.is_grad_enabled()``.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self._check_patterns(patterns, "patterns")  # once: the chunks are slices of it
        if state is not None:
            self._check_state(state)
        N = patterns.shape[1]
        create_graph = torch.is_grad_enabled() if create_graph is None else create_graph
        schedule = self.schedule(create_graph)  # the same T rates for every chunk
        for start in range(0, N, chunk_size):
            chunk = patterns[:, start : start + chunk_size]
            mask = None if pattern_mask is None else pattern_mask[:, start : start + chunk_size]
            # the states between chunks are this call's own: a diverging write must reach the loss, not raise
            state = self.write(chunk, state, mask, create_graph, check=False, schedule=schedule)
        return state

    def schedule(self, create_graph: bool) -> WriteSchedule:
        """The write rates of every step and layer (:class:`WriteSchedule`), for :meth:`write`'s ``schedule``.

        With ``create_graph`` they carry the graph to ``write_lr_raw``, ``alpha_raw`` and ``beta_raw``; a schedule
        serves the writes of one forward pass (its graph is freed by the backward pass, as any other).
        """
        with torch.set_grad_enabled(create_graph):  # the schedules enter the graph only when it is kept
            lrs, alpha, beta = self.write_lrs, self.alpha, self.beta
            # Every step's rates at once: η_E, η_G [T, L] and the prior's bounded shrink factor [T, L].
            max_step = self.config.max_prior_step
            rates = torch.stack([lrs[..., 0], lrs[..., 1], max_step * torch.tanh(2 * lrs[..., 2] * beta / max_step)])
            rows = rates.tolist() if not create_graph else [[list(row.unbind(0)) for row in r.unbind(0)] for r in rates]
        return WriteSchedule(rows, alpha, create_graph)

    def _write_rule(
        self, state: MemoryState, create_graph: bool, schedule: WriteSchedule | None = None
    ) -> tuple[Callable[[int, dict[str, Tensor], list[Tensor], list[Tensor] | None], dict[str, Tensor]], Tensor]:
        """The update of write step ``t`` (eq. 4) for a write that starts from ``state``, and ``α``.

        Returns ``(update, alpha)``: ``update(t, fast, grads_e, grads_g)`` is the new fast weights
        ``θ − η_E ∇_θE − η_G ∇_θ‖∇ₓE‖² − shrink·(θ − θ̃)`` from the gradients of the energy and grad-norm terms
        (lists in the order of ``energy.memory_parameters()``; ``grads_g`` may be ``None``). The rates and the
        prior's shrink factors come from ``schedule`` (computed here if ``None``); without a graph they are plain
        numbers and each update is fused ``add`` kernels.
        """
        if schedule is None:
            schedule = self.schedule(create_graph)
        elif schedule.create_graph != create_graph:
            raise ValueError(f"the schedule was made with create_graph={schedule.create_graph} but this write has "
                             f"create_graph={create_graph}: pass memory.schedule({create_graph})")  # fmt: skip
        rate_rows, alpha = schedule.rates, schedule.alpha
        theta_bar = self.energy.memory_parameters()
        names = list(theta_bar)
        anchor = theta_bar if self.config.prior_anchor == "initial" else dict(state.fast_weights)  # θ̃ of the prior
        if not create_graph:
            anchor = {n: w.detach() for n, w in anchor.items()}
        layer_of = [self.layer_names.index(n.rsplit(".", 1)[0]) for n in names]

        def update(
            t: int, fast: dict[str, Tensor], grads_e: list[Tensor], grads_g: list[Tensor] | None
        ) -> dict[str, Tensor]:
            new_fast = {}
            for i, n in enumerate(names):
                lr_e, lr_g, shrink = (rate_rows[j][t][layer_of[i]] for j in range(3))
                if create_graph:  # θ − η_E g_E − shrink·(θ − θ̃) [− η_G g_G], as fused multiply-adds
                    new = torch.addcmul(fast[n], grads_e[i], lr_e, value=-1)
                    new = torch.addcmul(new, fast[n] - anchor[n], shrink, value=-1)
                    if grads_g is not None:
                        new = torch.addcmul(new, grads_g[i], lr_g, value=-1)
                    new_fast[n] = new
                else:
                    with torch.no_grad():
                        new = torch.add(fast[n], grads_e[i], alpha=-lr_e)
                        new.add_(fast[n] - anchor[n], alpha=-shrink)
                        if grads_g is not None:
                            new.add_(grads_g[i], alpha=-lr_g)
                    new_fast[n] = new
            return new_fast

        return update, alpha

    def write_and_read(
        self,
        patterns: Tensor,
        queries: Tensor,
        state: MemoryState,
        known_mask: Tensor | None = None,
        check: bool = True,
        read_state: MemoryState | None = None,
    ) -> tuple[MemoryState, ReadResult]:
        """``(write(patterns, state), read(queries, read_state, known_mask))`` without a graph, in lockstep.

        An RL agent's step reads from the memory of the earlier steps and then writes its row
        (:class:`~ebmm_rl.rl.core.MemoryCore`'s rollouts). With closed-form gradients, write step ``i`` and read
        step ``i`` run as one :meth:`~ebmm_rl.layers.EnergyNet.closed_form_grads` call over the write's episodes
        and the read's (the write's fast weights beside ``read_state``'s): half the small kernels. The read's
        episodes are its ``B`` episodes when ``N == M``, or ``B · M`` episodes of one query each when one pattern is
        written (``N == 1``), the read's fast weights repeated per query. Otherwise, it is the two calls. The
        results are those of the two calls: the episodes of the batch do not interact, the write keeps the ``∇_θ``
        of its half and the read the ``∇ₓE`` of its half.

        Args:
            patterns: ``[B, N, D...]`` patterns to store.
            queries: ``[B, M, D...]`` patterns to read with.
            state: the memory the write starts from.
            known_mask: optional bool, broadcastable to ``queries``: dimensions clamped to the query (as
                :meth:`read`'s).
            check: validate the inputs (as :meth:`write`'s ``check``).
            read_state: the memory the read starts from; default ``state``.

        Returns:
            ``(the memory after the write, the read's ReadResult)``.
        """
        read_state = state if read_state is None else read_state
        if check:
            self._check_patterns(patterns, "patterns")
            self._check_patterns(queries, "queries")
            self._check_state(state)
            self._check_state(read_state)
        B, N = patterns.shape[:2]
        M = queries.shape[1]
        if state.batch_size != B or queries.shape[0] != B or read_state.batch_size != B:
            raise ValueError(f"state, read_state, patterns and queries must hold the same number of episodes; got "
                             f"{state.batch_size}, {read_state.batch_size}, {B} and {queries.shape[0]}")  # fmt: skip
        if not self.uses_closed_form or (M != N and N != 1):
            with torch.no_grad():
                written = self.write(patterns, state, create_graph=False, check=False)
                return written, self.read(queries, read_state, known_mask, create_graph=False)
        with torch.no_grad():
            update, alpha = self._write_rule(state, create_graph=False)
            names = list(self.energy.memory_parameters())
            start = {n: w.detach() for n, w in state.fast_weights.items()}
            per_query = M != N  # one written pattern, M queries: the read half is B·M episodes of one query
            reader = {n: w.detach() for n, w in read_state.fast_weights.items()}
            if per_query:
                reader = {n: w.repeat_interleave(M, dim=0) for n, w in reader.items()}  # [B·M, *shape]
            weights = _pattern_weights(None, B, N, patterns.device, patterns.dtype)
            read_weights = weights.new_zeros(B * M, 1) if per_query else torch.zeros_like(weights)
            both_weights = torch.cat([weights, read_weights])  # the read half adds nothing to ∇_θ
            grad_norm_weights = alpha * both_weights if self.config.use_grad_norm_term else None
            lo, hi = self.config.data_range
            known = None if known_mask is None else known_mask.expand_as(queries)
            free = None if known is None else (~known).to(queries.dtype)

            def project(x: Tensor) -> Tensor:
                x = x.clamp(lo, hi)
                return x if known is None else torch.where(known, queries, x)

            def as_read_batch(x: Tensor) -> Tensor:  # [B, M, D...] -> the read half's episodes
                return x.reshape(B * M, 1, *x.shape[2:]) if per_query else x

            gammas, psis = self.read_step_sizes.tolist(), self.momenta.tolist()
            x = project(queries)
            iterates, velocity, fast = [x], torch.zeros_like(x), start
            context: dict[str, Any] = {}  # the closed form's terms of the slow weights, for every call below
            for i in range(max(self.config.write_steps, self.config.read_steps)):
                writes, reads = i < self.config.write_steps, i < self.config.read_steps
                x_hat = project(x + psis[i] * velocity) if reads else None
                if writes and reads:
                    out = self.energy.closed_form_grads(
                        torch.cat([patterns, as_read_batch(x_hat)]),
                        {n: torch.cat([fast[n], reader[n]]) for n in names},
                        both_weights,
                        grad_norm_weights,
                        context=context,
                    )
                    grad_x = out.grad_x[B:].reshape(x.shape)
                    grads_e = [out.grad_theta[n][:B] for n in names]
                    grads_g = (
                        None if out.grad_theta_grad_norm is None else [out.grad_theta_grad_norm[n][:B] for n in names]
                    )
                elif writes:
                    grads_e, grads_g = self._writing_loss_grads(patterns, fast, names, weights, alpha, False, context)
                else:
                    grad_x = self.energy.closed_form_grads(as_read_batch(x_hat), reader, context=context).grad_x
                    grad_x = grad_x.reshape(x.shape)
                if writes:
                    fast = update(i, fast, grads_e, grads_g)
                if reads:
                    if free is not None:
                        grad_x = grad_x * free
                    velocity = psis[i] * velocity - gammas[i] * grad_x
                    x = project(x + velocity)
                    iterates.append(x)
        return MemoryState(fast, state.num_written + N), ReadResult(torch.stack(iterates))

    @property
    def uses_closed_form(self) -> bool:
        """Whether write and read use the energy's closed-form gradients (:meth:`EnergyNet.closed_form_grads`).

        True when the energy provides them (``energy.closed_form``); set ``memory.energy.closed_form = False`` to
        force the nested-autograd reference path. Both compute the same write and read steps.
        """
        return bool(getattr(self.energy, "closed_form", False))

    def _writing_loss_grads(
        self,
        patterns: Tensor,
        fast: dict[str, Tensor],
        names: list[str],
        weights: Tensor,
        alpha: Tensor,
        create_graph: bool,
        context: dict[str, Any] | None = None,
    ) -> tuple[list[Tensor], list[Tensor] | None]:
        """Gradients w.r.t. the fast weights of the energy term and of the ``α‖∇ₓE‖²`` term.

        Both are averaged over each episode's patterns. (The prior term's gradient, ``2β(θ − θ̄)``, is analytic.)
        ``∇ₓE`` is the partial derivative at fixed θ: the fast weights themselves depend on the patterns through
        earlier steps, and differentiating through that history would be wrong (and cost grows with every step).
        ``context``: one dict for the ``T`` steps of a write (the closed form's terms that depend on the patterns
        and the slow weights only are computed once).
        """
        if self.uses_closed_form:  # explicit expressions; the meta-gradient is the only autograd level through them
            with torch.set_grad_enabled(create_graph):
                use_g = self.config.use_grad_norm_term
                grad_norm_weights = alpha * weights if use_g else None
                out = self.energy.closed_form_grads(
                    patterns, fast, weights, grad_norm_weights, need_grad_x=use_g, context=context
                )
            grads_g = None if out.grad_theta_grad_norm is None else [out.grad_theta_grad_norm[n] for n in names]
            return [out.grad_theta[n] for n in names], grads_g
        # A fresh node per step, so that ∇ₓE below is the partial derivative at fixed θ.
        x = patterns.view_as(patterns) if patterns.requires_grad else patterns.detach().requires_grad_(True)
        energies = self.energy(x, fast)  # [B, N]
        params = [fast[n] for n in names]
        if not self.config.use_grad_norm_term:
            grads_e = torch.autograd.grad(energies, params, grad_outputs=weights, create_graph=create_graph)
            return list(grads_e), None
        # One backward gives ∇ₓE per pattern (unweighted: each E[b, n] depends on x[b, n] only) and ∇_θ of the
        # weighted energy; the grad-norm term needs ∇ₓE as a differentiable function of θ, hence create_graph.
        grad_outputs = weights * (weights > 0).sum(dim=1, keepdim=True).clamp(min=1)  # 1 on real patterns
        gx, *grads_e = torch.autograd.grad(energies, [x, *params], grad_outputs=grad_outputs, create_graph=True)
        per_pattern = gx.pow(2).flatten(2).sum(dim=2)  # [B, N] ‖∇ₓE‖²
        counts = (weights > 0).sum(dim=1).clamp(min=1).to(x.dtype)  # [B]
        grads_e = [g / counts.view(-1, *[1] * (g.dim() - 1)) for g in grads_e]
        grad_norm_term = alpha * (per_pattern * weights).sum()
        grads_g = torch.autograd.grad(grad_norm_term, params, create_graph=create_graph)
        if not create_graph:
            grads_e = [g.detach() for g in grads_e]
        return grads_e, list(grads_g)

    def read(
        self,
        queries: Tensor,
        state: MemoryState,
        known_mask: Tensor | None = None,
        create_graph: bool | None = None,
        compute_energies: bool = False,
        check_state: bool = True,
    ) -> ReadResult:
        """Retrieve stored patterns from distorted queries by ``K`` projected Nesterov gradient steps.

        ``x̂⁽ᵏ⁾ = P(x⁽ᵏ⁻¹⁾ + ψ⁽ᵏ⁾v⁽ᵏ⁻¹⁾)``, ``v⁽ᵏ⁾ = ψ⁽ᵏ⁾v⁽ᵏ⁻¹⁾ − γ⁽ᵏ⁾∇ₓE(x̂⁽ᵏ⁾)``, ``x⁽ᵏ⁾ = P(x⁽ᵏ⁻¹⁾ + v⁽ᵏ⁾)``
        where ``P`` clips to ``config.data_range`` and resets known dimensions to the query.

        Args:
            queries: ``[B, M, D...]`` distorted patterns, inside ``config.data_range``.
            state: the written memory (``B`` episodes).
            known_mask: optional bool ``[B, M, D...]`` (or broadcastable to it); ``True`` dimensions are known
                to be correct and stay clamped to the query.
            create_graph: keep the graph for meta-gradients. Default: ``torch.is_grad_enabled()``.
            compute_energies: also return ``E(x⁽ᵏ⁾)`` for every iterate (one extra batched forward pass).
            check_state: check that ``state`` belongs to this memory and is finite. :meth:`forward` passes
                ``False`` for the state it has just written, so that a diverging write ends in a non-finite loss
                (which the trainer skips) instead of an error.

        Returns:
            A :class:`ReadResult` with all ``K + 1`` iterates.
        """
        self._check_patterns(queries, "queries")
        if check_state:
            self._check_state(state)
        elif not isinstance(state, MemoryState):
            raise TypeError(f"state must be the MemoryState returned by write(), got {type(state).__name__}")
        if state.batch_size != queries.shape[0]:
            raise ValueError(
                f"state holds {state.batch_size} episodes but queries have B={queries.shape[0]}; they must match"
            )
        create_graph = torch.is_grad_enabled() if create_graph is None else create_graph
        free = None
        if known_mask is not None:
            if known_mask.dtype != torch.bool:
                raise ValueError(f"known_mask must be a bool tensor, got dtype {known_mask.dtype}")
            try:
                known_mask = known_mask.expand_as(queries)
            except RuntimeError:
                raise ValueError(
                    f"known_mask of shape {tuple(known_mask.shape)} does not broadcast to queries "
                    f"{tuple(queries.shape)}"
                ) from None
            free = (~known_mask).to(queries.dtype)
        fast = state.fast_weights if create_graph else {n: w.detach() for n, w in state.fast_weights.items()}
        lo, hi = self.config.data_range

        def project(x: Tensor) -> Tensor:
            x = x.clamp(lo, hi)
            return x if known_mask is None else torch.where(known_mask, queries, x)

        gammas, psis = self.read_step_sizes, self.momenta
        x = project(queries)
        iterates = [x]
        velocity = torch.zeros_like(x)
        closed_form = self.uses_closed_form
        context: dict[str, Any] = {}  # the closed form's terms of the slow weights, shared by the K steps
        with torch.set_grad_enabled(create_graph or not closed_form):
            for k in range(self.config.read_steps):
                x_hat = project(x + psis[k] * velocity)
                if closed_form:
                    grad = self.energy.closed_form_grads(x_hat, fast, context=context).grad_x
                else:
                    if not x_hat.requires_grad:
                        x_hat = x_hat.requires_grad_(True)
                    energy = self.energy(x_hat, fast).sum()
                    (grad,) = torch.autograd.grad(energy, x_hat, create_graph=create_graph)
                if free is not None:
                    grad = grad * free
                velocity = psis[k] * velocity - gammas[k] * grad
                x = project(x + velocity)
                if not create_graph:
                    x, velocity = x.detach(), velocity.detach()
                iterates.append(x)
        stacked = torch.stack(iterates)  # [K+1, B, M, D...]
        energies = self.energies(stacked, state) if compute_energies else None
        return ReadResult(stacked, energies)

    def recall(self, queries: Tensor, state: MemoryState, known_mask: Tensor | None = None) -> Tensor:
        """``[B, M, D...]``: the retrieved patterns, ``read(queries, state, known_mask).retrieved``.

        The :class:`ebmm_rl.protocol.AssociativeMemory` interface shared with the baselines.
        """
        return self.read(queries, state, known_mask).retrieved

    def energies(self, x: Tensor, state: MemoryState) -> Tensor:
        """Energies of ``x: [S, B, M, D...]`` (any leading stack ``S``) under ``state``: ``[S, B, M]``."""
        S, B, M = x.shape[:3]
        flat = x.transpose(0, 1).reshape(B, S * M, *self.data_shape)  # [B, S*M, D...]
        return self.energy(flat, state.fast_weights).reshape(B, S, M).transpose(0, 1)

    # ---------------------------------------------------------------------------------------------- meta-loss
    def meta_loss(self, patterns: Tensor, result: ReadResult) -> tuple[Tensor, Tensor]:
        """Step-wise reconstruction loss ``Σₖ mean_{b,n} ‖x − x⁽ᵏ⁾‖²`` over iterates ``k = 1..K`` (App. B.4).

        Args:
            patterns: ``[B, M, D...]`` the originals of the queries that were read.
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
            known_mask: optional bool mask of query dimensions that are known (clamped).
        """
        if self.config.chunk_size:
            state = self.write_chunked(patterns, self.config.chunk_size)
        else:
            state = self.write(patterns)
        result = self.read(queries, state, known_mask, check_state=False)
        loss, errors = self.meta_loss(patterns, result)
        return MetaOutput(loss, errors, result, state)

    # ------------------------------------------------------------------------------------------------- checks
    def check_patterns(self, x: Tensor, name: str = "patterns") -> None:
        """Raise a clear error unless ``x`` can be written or read.

        ``x`` must be ``[B, N, D...]`` in the weights' dtype, finite, inside ``data_range`` and not empty.
        :meth:`write` runs this unless ``check=False``; callers that write ``x`` piece by piece check it once here.
        """
        self._check_patterns(x, name)

    def _check_state(self, state: MemoryState) -> None:
        if not isinstance(state, MemoryState):
            raise TypeError(
                f"state must be the MemoryState returned by write() (or initial_state(B)), got {type(state).__name__}"
            )
        for n, p in self.energy.memory_parameters().items():
            w = state.fast_weights.get(n)
            if w is None or tuple(w.shape[1:]) != tuple(p.shape) or w.shape[0] != state.batch_size:
                got, expected = None if w is None else tuple(w.shape), ", ".join(map(str, p.shape))
                raise ValueError(
                    f"state does not belong to this memory: fast weight {n!r} should be [B, {expected}], got {got}; "
                    f"write it with this memory (same energy network and dynamic_size)"
                )
        names = list(self.energy.memory_parameters())
        finite = torch.stack([torch.isfinite(state.fast_weights[n]).all() for n in names])  # one host sync
        if not bool(finite.all()):
            bad = [n for n, ok in zip(names, finite.tolist(), strict=True) if not ok]
            raise NonFiniteState(
                f"state holds NaN or inf in fast weight(s) {', '.join(map(repr, bad))}: the write that made it "
                f"diverged (or the state was changed); write the patterns again, from initial_state(B) if need be"
            )

    def _check_patterns(self, x: Tensor, name: str) -> None:
        expected = f"[B, N, {', '.join(map(str, self.data_shape))}]"
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor (e.g. x.float()), got dtype {x.dtype}")
        if x.dim() != 2 + len(self.data_shape) or tuple(x.shape[2:]) != self.data_shape:
            raise ValueError(f"{name} must have shape {expected} (episodes, patterns, pattern), got {tuple(x.shape)}")
        dtype = next(iter(self.energy.memory_parameters().values())).dtype
        if x.dtype != dtype:
            raise TypeError(
                f"{name} have dtype {x.dtype} but the memory's weights are {dtype}: cast the data ({name}.to({dtype})) "
                f"or the memory (memory.to({x.dtype}))"
            )
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): need at least one episode and one pattern")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf values")
        lo, hi = self.config.data_range
        tol = 1e-5 * (hi - lo)
        if x.min() < lo - tol or x.max() > hi + tol:
            raise ValueError(
                f"{name} values must lie in data_range {self.config.data_range}, got [{x.min().item():.4g}, "
                f"{x.max().item():.4g}]; rescale the data or set EBMMConfig.data_range"
            )


def stepwise_loss(patterns: Tensor, result: ReadResult) -> tuple[Tensor, Tensor]:
    """Step-wise reconstruction loss ``Σₖ mean_{b,m} ‖x − x⁽ᵏ⁾‖²`` over read iterates ``k = 1..K`` (App. B.4).

    Shared by :class:`EBMMemory` and the meta-trained baselines.

    Args:
        patterns: ``[B, M, D...]`` the originals of the queries that were read.
        result: the read result (``iterates [K + 1, B, M, D...]``).

    Returns:
        ``(loss, errors)``: the scalar loss and the detached ``[K]`` error of each iterate.

    Raises:
        TypeError: ``result`` is not a :class:`ReadResult` or ``patterns`` not a tensor.
        ValueError: ``patterns`` hold NaN or inf, or do not have the shape of the queries.
    """
    if not isinstance(result, ReadResult):
        raise TypeError(
            f"result must be the ReadResult returned by read() (meta_loss(patterns, memory.read(queries, state))), "
            f"got {type(result).__name__}"
        )
    if not isinstance(patterns, Tensor):
        raise TypeError(f"patterns must be a torch.Tensor [B, M, D...], got {type(patterns).__name__}")
    if not bool(torch.isfinite(patterns).all()):
        raise ValueError("patterns contains NaN or inf values: the loss compares every read iterate with them")
    if patterns.shape != result.retrieved.shape:
        raise ValueError(
            f"patterns {tuple(patterns.shape)} must have the shape of the queries that were read "
            f"{tuple(result.retrieved.shape)}"
        )
    sq = (result.iterates[1:] - patterns.unsqueeze(0)).pow(2).flatten(3).sum(dim=3)  # [K, B, M]
    errors = sq.mean(dim=(1, 2))  # [K]
    return errors.sum(), errors.detach()


def _cumulative_decay(first: Tensor, decay_logits: Tensor) -> Tensor:
    """``[first, first·σ(l₁), first·σ(l₁)σ(l₂), ...]``: a non-increasing positive sequence."""
    factors = torch.cat([first.reshape(1), torch.sigmoid(decay_logits)])
    return torch.cumprod(factors, dim=0)


def _pattern_weights(mask: Tensor | None, B: int, N: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``[B, N]`` averaging weights over each episode's real patterns (rows sum to 1, or 0 if none are real)."""
    if mask is None:
        return torch.full((B, N), 1.0 / N, device=device, dtype=dtype)
    if mask.shape != (B, N) or mask.dtype != torch.bool:
        raise ValueError(
            f"pattern_mask must be a bool tensor of shape [B, N] = [{B}, {N}], got {mask.dtype} {tuple(mask.shape)}"
        )
    m = mask.to(dtype)
    return m / m.sum(dim=1, keepdim=True).clamp(min=1)

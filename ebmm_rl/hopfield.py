"""Classical Hopfield networks with Hebb, Storkey and pseudo-inverse writing rules (paper Table 1 baselines).

A Hopfield memory over ``D`` bits keeps a symmetric weight matrix ``W`` [D, D] with zero diagonal and a
threshold vector ``theta`` [D]; its memory size is ``D * (D - 1) / 2 + D`` floats (8256 for ``D = 128``), the
budget the paper gives every model in Appendix A.2 ("a symmetric matrix and a frequency vector").

Writing rules (``xi`` is a pattern of -1/+1, ``D`` the pattern size):

* Hebb (Hopfield, 1982): ``W = (1 / D) * sum_mu xi^mu xi^mu^T``, then the diagonal is set to zero.
* Storkey (Storkey, 1997; Storkey & Valabregue, 1999), one pattern at a time:
  ``w_ij <- w_ij + (1 / D) * (xi_i xi_j - xi_i h_j - h_i xi_j)`` with the field ``h_i = sum_k w_ik xi_k`` of
  the weights before the update; diagonal kept at zero. This common form (``storkey_field="full"``, default)
  reproduces the paper's Table 1 row; the exact local field of Storkey & Valabregue,
  ``h_ij = sum_{k != i, j} w_ik xi_k`` (``storkey_field="local"``), stores patterns far better than the paper
  reports (2.5 and 9.0 error bits at N = 48 and 64 against the paper's 6.3 and 11.3).
* Pseudo-inverse (projection rule, Personnaz et al., 1985; Kanter & Sompolinsky, 1987): ``W = X^+ X`` for the
  patterns ``X`` [N, D], the orthogonal projector onto their span; the diagonal is removed when reading.

Thresholds: none of the three rules uses them (``theta = 0``): the patterns are unbiased, so the mean-activity
threshold of the rules' biased-pattern variants is zero. The state still carries the vector and reading
subtracts it, so other rules can use it. For the pseudo-inverse rule the vector slot of the budget holds the
diagonal of the projector instead (kept in ``weights`` so that chunked writing can continue the projection).

Reading: asynchronous sign updates ``x_i <- sign(sum_j w_ij x_j - theta_i)`` of the non-clamped units only,
one unit at a time in a new random order for every sweep (``update_order="random"``; ``"fixed"`` visits them
in index order), until a whole sweep changes nothing or ``max_sweeps`` sweeps have run. A zero field keeps the
unit's current value. With symmetric weights and zero diagonal the energy never increases, so the dynamics
converge; clamped (known) bits act as a fixed external field and never change. The work is vectorised over all
episodes and queries at once; the only Python loop is over units within a sweep, which is inherent to
asynchronous updates, and converged queries leave the active set after each sweep.

Reproduction of the paper's Table 1 (``python scripts/eval_binary.py --batch-size 32``: 1000 batches of 32
episodes, seed 0; mean error bits for N = 16/32/48/64/96, paper values in brackets):

* Hebb: 0.4/4.8/9.7/12.8/16.4 (0.4/5.0/9.8/13.0/16.5).
* Storkey (``storkey_field="full"``): 0.0/1.1/6.7/11.6/17.5 (0.0/0.9/6.3/11.3/17.1).
* Pseudo-inverse: 0.0/0.0/0.7/6.4/23.0 (0.0/0.0/0.3/4.3/22.5). The cell for N = 64 is 2.1 bits above the paper.
  Update order (fixed: 6.2), random updates with replacement (6.5), synchronous updates (5.2, but 27.7
  at N = 96) and rescaled rows (same signs, so same dynamics) do not close the gap; only a negative
  self-coupling does, and that is not the pseudo-inverse rule. Further variants, 200 memories each, error bits
  at N = 48/64/96 (paper 0.3/4.3/22.5): unknown bits starting at 0 instead of random ±1, 0.1/3.0/22.1
  (synchronous: 0.0/1.0/28.9); a bias unit (patterns extended by a constant, clamped +1, so that the vector of
  the budget holds thresholds), 0.6/5.8/22.6 (0.1/2.6/21.6 with unknown bits at 0); keeping the projector's
  diagonal, 18.3/24.9/30.9; corrupted positions drawn with replacement, 0.1/0.9/14.6 (and it breaks the Hebb
  row: 8.0 at N = 64); dynamics capped at a few sweeps (100 memories, N = 32/48/64/96, paper 0.0/0.3/4.3/22.5):
  synchronous 1/2/3/5 sweeps 9.95/14.37/17.84/23.56, 2.08/7.74/14.94/27.43, 0.28/3.56/12.43/24.91,
  0.02/0.78/9.48/25.53, asynchronous 1/2 sweeps 5.75/11.25/16.34/24.36, 0.59/4.51/11.83/23.51. None brings
  every cell of all three rows within 1 bit of the paper.
  Two protocols measured on all three rules (error bits at N = 16/32/48/64/96; paper Hebb 0.4/5.0/9.8/13.0/16.5,
  Storkey 0.0/0.9/6.3/11.3/17.1):

  * unknown bits start at 0 for every rule (192 memories per N): Hebb 0.3/4.2/8.9/12.2/15.9, Storkey
    0.0/0.5/5.5/10.6/16.8, pseudo-inverse 0.0/0.0/0.1/3.0/22.0: every Hebb and Storkey cell within 1 bit but
    0.8-0.9 below the paper, and the pseudo-inverse N = 64 cell 1.3 below it.
  * each bit corrupted independently with probability 1/2 instead of exactly 64 (320 memories per N,
    N = 32/48/64/96): Hebb 5.0/9.9/13.0/16.6 (the paper's row to 0.1), Storkey 1.5/6.9/11.8/17.7,
    pseudo-inverse 0.0/1.1/7.1/22.9 (N = 64 further from the paper).

  The default protocol (exactly 64 random bits, the paper's "corrupt half of the bits") is kept: it is the one
  docs/design.md records, and no variant reproduces all fifteen cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ebmm_rl.binary import check_pattern_batch, check_pm1

__all__ = [
    "HebbMemory",
    "HopfieldConfig",
    "HopfieldMemory",
    "HopfieldState",
    "PseudoInverseMemory",
    "StorkeyMemory",
    "hopfield_memory",
]


@dataclass(frozen=True)
class HopfieldConfig:
    """Settings of a Hopfield memory.

    Attributes:
        dim: Pattern size ``D`` in bits.
        max_sweeps: Cap on reading sweeps (one sweep visits every non-clamped unit once).
        update_order: ``"random"``: a fresh random order of the units in every sweep, drawn independently per
            query; ``"fixed"``: ascending unit index.
        dynamics: ``"async"``: asynchronous updates (the classical Hopfield dynamics, default); ``"sync"``:
            all non-clamped units at once per sweep (may end in a 2-cycle; then it stops at ``max_sweeps``).
        storkey_field: Storkey rule only: ``"full"`` (default, reproduces the paper's Table 1) uses the field
            ``h_i = sum_k w_ik xi_k``; ``"local"`` uses ``h_ij = sum_{k != i, j} w_ik xi_k`` exactly as
            Storkey & Valabregue (1999) define it.
    """

    dim: int = 128
    max_sweeps: int = 100
    update_order: Literal["random", "fixed"] = "random"
    dynamics: Literal["async", "sync"] = "async"
    storkey_field: Literal["full", "local"] = "full"

    def __post_init__(self) -> None:
        """Validate the settings."""
        if self.dim < 2:
            raise ValueError(f"dim must be at least 2, got {self.dim}.")
        if self.max_sweeps < 1:
            raise ValueError(f"max_sweeps must be at least 1, got {self.max_sweeps}.")
        if self.update_order not in ("random", "fixed"):
            raise ValueError(f"update_order must be 'random' or 'fixed', got {self.update_order!r}.")
        if self.dynamics not in ("async", "sync"):
            raise ValueError(f"dynamics must be 'async' or 'sync', got {self.dynamics!r}.")
        if self.storkey_field not in ("full", "local"):
            raise ValueError(f"storkey_field must be 'full' or 'local', got {self.storkey_field!r}.")


@dataclass
class HopfieldState:
    """Fast weights of ``B`` independent Hopfield memories.

    Attributes:
        weights: [B, D, D] symmetric weights. Zero diagonal, except for the pseudo-inverse rule, which keeps
            the projector's diagonal here so that writing can continue (reading ignores the diagonal).
        thresholds: [B, D] thresholds ``theta`` subtracted from the local fields (zero for the built-in rules).
        num_written: Number of patterns written so far per memory.
    """

    weights: Tensor
    thresholds: Tensor
    num_written: int = 0

    @property
    def batch_size(self) -> int:
        """Number of memories ``B``."""
        return self.weights.shape[0]


def _check_bnd(x: Tensor, name: str, dim: int) -> None:
    """The checks of :func:`ebmm_rl.binary.check_pattern_batch` and ±1 values, plus this memory's size ``dim``."""
    check_pattern_batch(x, name)
    if x.shape[-1] != dim:
        raise ValueError(
            f"{name} has {x.shape[-1]} bits per pattern but this memory has dim={dim}; build the memory with "
            f"HopfieldConfig(dim={x.shape[-1]})."
        )
    check_pm1(x, name)


def _zero_diagonal_(weights: Tensor) -> Tensor:
    weights.diagonal(dim1=-2, dim2=-1).zero_()
    return weights


class HopfieldMemory:
    """Hopfield network memory: ``write`` patterns into a :class:`HopfieldState`, ``read`` queries back.

    Subclasses implement one writing rule each (:class:`HebbMemory`, :class:`StorkeyMemory`,
    :class:`PseudoInverseMemory`); reading is shared. The interface mirrors ``EBMMemory``: the state is
    explicit, batched over ``B`` episodes, and ``write(chunk, state)`` continues writing into ``state``.

    Args:
        config: Memory settings; ``HopfieldConfig()`` gives the paper's 128-bit setting.
    """

    rule: str = ""

    def __init__(self, config: HopfieldConfig | None = None) -> None:
        self.config = config if config is not None else HopfieldConfig()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    @property
    def memory_size(self) -> int:
        """Writable floats: a symmetric zero-diagonal matrix plus one vector, ``D * (D - 1) / 2 + D``."""
        dim = self.config.dim
        return dim * (dim - 1) // 2 + dim

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> HopfieldState:
        """Return the state of ``batch_size`` empty memories (all weights and thresholds zero)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        dim = self.config.dim
        return HopfieldState(
            weights=torch.zeros(batch_size, dim, dim, device=device, dtype=dtype),
            thresholds=torch.zeros(batch_size, dim, device=device, dtype=dtype),
        )

    @torch.no_grad()
    def write(self, patterns: Tensor, state: HopfieldState | None = None) -> HopfieldState:
        """Store patterns, continuing from ``state`` if given (chunked writing).

        Args:
            patterns: [B, N, D] patterns of -1.0/+1.0, ``N`` per episode.
            state: Memories to continue writing into (batch size ``B``), or None for empty memories.

        Returns:
            A new state with the patterns written (``state`` is not modified).

        Raises:
            ValueError: On a wrong shape, non -1/+1 values or a batch-size mismatch with ``state``.
        """
        _check_bnd(patterns, "patterns", self.config.dim)
        if state is None:
            state = self.init_state(patterns.shape[0], device=patterns.device, dtype=patterns.dtype)
        elif state.batch_size != patterns.shape[0]:
            raise ValueError(
                f"patterns has {patterns.shape[0]} episodes but state holds {state.batch_size} memories; "
                f"write each episode's patterns into its own memory (same B)."
            )
        weights = self._write(patterns.to(state.weights.dtype), state.weights.clone())
        return HopfieldState(
            weights=weights,
            thresholds=state.thresholds.clone(),
            num_written=state.num_written + patterns.shape[1],
        )

    def _write(self, patterns: Tensor, weights: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Apply the writing rule: patterns [B, N, D], weights [B, D, D] (may be modified) -> new weights."""
        raise NotImplementedError

    @torch.no_grad()
    def read(
        self,
        queries: Tensor,
        state: HopfieldState,
        known_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Retrieve patterns by running the Hopfield dynamics from each query.

        Args:
            queries: [B, M, D] distorted patterns of -1.0/+1.0, ``M`` per episode (any ``M``).
            state: Written memories (batch size ``B``).
            known_mask: Optional [B, M, D] bool; True marks bits clamped to their query value (never updated).
            generator: Optional torch generator for the random update order (on the queries' device).

        Returns:
            retrieved: [B, M, D] states of -1.0/+1.0 where the dynamics stopped.

        Raises:
            ValueError: On a wrong shape or dtype, non -1/+1 queries or a batch-size mismatch with ``state``.
        """
        _check_bnd(queries, "queries", self.config.dim)
        if queries.shape[0] != state.batch_size:
            raise ValueError(
                f"queries has {queries.shape[0]} episodes but state holds {state.batch_size} memories; "
                f"pass queries [B, M, D] with the B used for write()."
            )
        if known_mask is None:
            free = torch.ones(queries.shape, dtype=torch.bool, device=queries.device)
        else:
            if not isinstance(known_mask, Tensor) or known_mask.dtype != torch.bool:
                raise ValueError(
                    "known_mask must be a bool tensor (True = clamped bit); got "
                    f"{getattr(known_mask, 'dtype', type(known_mask).__name__)}. Use known_mask.bool()."
                )
            if known_mask.shape != queries.shape:
                raise ValueError(
                    f"known_mask must have the queries' shape {tuple(queries.shape)}, got {tuple(known_mask.shape)}."
                )
            free = ~known_mask
        weights = _zero_diagonal_(state.weights.to(queries.dtype).clone())  # [B, D, D]
        thresholds = state.thresholds.to(queries.dtype)  # [B, D]
        if self.config.dynamics == "sync":
            return self._run_sync(queries.clone(), free, weights, thresholds)
        batch, num_queries, dim = queries.shape
        x = queries.reshape(batch * num_queries, dim).clone()  # [Q, D], Q = B * M
        free = free.reshape(batch * num_queries, dim)  # [Q, D]
        episode = torch.arange(batch, device=queries.device).repeat_interleave(num_queries)  # [Q]
        x = self._run_async(x, free, episode, weights, thresholds, generator)
        return x.reshape(batch, num_queries, dim)

    def recall(
        self,
        queries: Tensor,
        state: HopfieldState,
        known_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Same as :meth:`read`: the :class:`ebmm_rl.protocol.AssociativeMemory` interface (``[B, M, D]``)."""
        return self.read(queries, state, known_mask, generator)

    def _run_sync(self, x: Tensor, free: Tensor, weights: Tensor, thresholds: Tensor) -> Tensor:
        """Synchronous dynamics: x [B, M, D], free [B, M, D] -> final x [B, M, D]."""
        for _ in range(self.config.max_sweeps):
            field = torch.bmm(x, weights) - thresholds.unsqueeze(1)  # [B, M, D]; weights are symmetric
            new = torch.where(field > 0, 1.0, torch.where(field < 0, -1.0, x)).to(x.dtype)
            new = torch.where(free, new, x)
            if torch.equal(new, x):
                break
            x = new
        return x

    def _run_async(
        self,
        x: Tensor,
        free: Tensor,
        episode: Tensor,
        weights: Tensor,
        thresholds: Tensor,
        generator: torch.Generator | None,
    ) -> Tensor:
        """Asynchronous dynamics: x [Q, D], free [Q, D], episode [Q] (query -> memory) -> final x [Q, D].

        Keeps the local fields ``F = W x - theta`` [Q, D] up to date: a flip of unit ``i`` of query ``q`` by
        ``delta`` adds ``delta * W[i]`` to ``F[q]`` (``W`` symmetric), so only flipping queries gather a row.
        """
        num_queries, dim = x.shape
        batch = weights.shape[0]
        # [B, M, D] @ [B, D, D] -> fields of every unit of every query (rows of W = columns, W symmetric)
        fields = torch.bmm(x.reshape(batch, -1, dim), weights).reshape(num_queries, dim)  # [Q, D]
        fields -= thresholds[episode]
        # flat views: element (q, i) of x and fields is q * D + i; row i of memory b's W is b * D + i
        x_flat, fields_flat, weight_rows = x.view(-1), fields.view(-1), weights.reshape(batch * dim, dim)
        num_free = free.sum(dim=-1)  # [Q]
        slots = int(num_free.max())  # S: most free units of any query
        # free units of each query in index order, padded with unit 0 (masked by `is_free`): [Q, S]
        free_units = torch.zeros(num_queries, slots, dtype=torch.long, device=x.device)
        query_index, unit_index = free.nonzero(as_tuple=True)  # row-major, so units ascend per query
        free_units[query_index, free.cumsum(dim=-1)[query_index, unit_index] - 1] = unit_index
        is_free = torch.arange(slots, device=x.device) < num_free.unsqueeze(-1)  # [Q, S], False on padding
        active = torch.arange(num_queries, device=x.device)[num_free > 0]  # unconverged queries
        for _ in range(self.config.max_sweeps):
            if active.numel() == 0:
                break
            units, valid = free_units[active], is_free[active]  # [A, S] each
            if self.config.update_order == "random":
                # a fresh uniform permutation of the slots of every query (cheaper than sorting all D units)
                perm = torch.rand(units.shape, generator=generator, device=x.device).argsort(dim=-1)  # [A, S]
                units, valid = units.gather(1, perm), valid.gather(1, perm)
            # [S, A] layouts so that each step reads contiguous memory
            element = ((active * dim).unsqueeze(-1) + units).T.contiguous()  # flat index of (query, unit)
            row = ((episode[active] * dim).unsqueeze(-1) + units).T.contiguous()  # flat row index of W
            valid = valid.T.contiguous()
            changed = torch.zeros(active.shape, dtype=torch.bool, device=x.device)  # [A]
            for t in range(slots):
                element_t = element[t]  # [A]
                current = x_flat.index_select(0, element_t)  # [A]
                # a unit flips iff its field has the opposite sign (a zero field keeps the current value)
                flip_mask = (current * fields_flat.index_select(0, element_t) < 0) & valid[t]  # [A]
                flip = flip_mask.nonzero().squeeze(-1)  # [K] positions in `active`
                if flip.numel() == 0:
                    continue
                changed |= flip_mask
                new_k = -current.index_select(0, flip)  # [K]
                x_flat.index_copy_(0, element_t.index_select(0, flip), new_k)
                rows = weight_rows.index_select(0, row[t].index_select(0, flip))  # [K, D]
                # flipping by delta = 2 * new adds delta * W[unit] to that query's fields
                fields.index_add_(0, active.index_select(0, flip), rows * (2.0 * new_k).unsqueeze(-1))
            active = active[changed]
        return x


class HebbMemory(HopfieldMemory):
    """Hopfield network with the Hebb rule ``W += (1 / D) * sum_mu xi^mu xi^mu^T``, zero diagonal."""

    rule = "hebb"

    def _write(self, patterns: Tensor, weights: Tensor) -> Tensor:
        # patterns: [B, N, D] -> outer-product sum [B, D, D]
        weights += torch.einsum("bnd,bne->bde", patterns, patterns) / self.config.dim
        return _zero_diagonal_(weights)


class StorkeyMemory(HopfieldMemory):
    """Hopfield network with the Storkey rule (Storkey & Valabregue, 1999), zero diagonal.

    For each pattern ``xi`` in turn (sequential over patterns, vectorised over episodes), with the field
    ``h = W xi`` of the weights before the update:

    * ``storkey_field="full"`` (default): ``W <- W + (1 / D) * (xi xi^T - xi h^T - h xi^T)``;
    * ``storkey_field="local"``: ``w_ij <- w_ij + (1 / D) * (xi_i xi_j - xi_i h_ji - h_ij xi_j)`` with
      ``h_ij = sum_{k != i, j} w_ik xi_k = h_i - w_ij xi_j`` (zero diagonal); since ``xi_j^2 = 1`` this is
      ``W <- W + (1 / D) * (xi xi^T - xi h^T - h xi^T + 2 W)``.

    The diagonal is reset to zero after every pattern.
    """

    rule = "storkey"

    def _write(self, patterns: Tensor, weights: Tensor) -> Tensor:
        scale = 1.0 / self.config.dim
        for n in range(patterns.shape[1]):
            xi = patterns[:, n]  # [B, D]
            field = torch.bmm(weights, xi.unsqueeze(-1)).squeeze(-1)  # [B, D], h_i = sum_k w_ik xi_k
            outer = xi.unsqueeze(-1) * xi.unsqueeze(-2)  # [B, D, D], xi_i xi_j
            cross = xi.unsqueeze(-1) * field.unsqueeze(-2)  # [B, D, D], xi_i h_j
            update = outer - cross - cross.transpose(-1, -2)
            if self.config.storkey_field == "local":
                update += 2.0 * weights  # excludes k = i, j from the fields: h_ij = h_i - w_ij xi_j
            weights = _zero_diagonal_(weights + scale * update)
        return weights


class PseudoInverseMemory(HopfieldMemory):
    """Hopfield network with the pseudo-inverse (projection) rule ``W = X^+ X``; diagonal ignored when reading.

    ``W`` is the orthogonal projector onto the span of the stored patterns, so every stored pattern is a
    fixed point of ``W x`` (with the diagonal, trivially so of every state; the zero diagonal at reading time
    is what makes it an associative memory). Writing one pattern at a time uses Greville's update
    ``W <- W + r r^T / |r|^2`` with ``r = xi - W xi`` (skipped when ``xi`` is already in the span); a first
    write into empty memories computes ``X^T (X X^T)^+ X`` directly. Computed in float64.
    """

    rule = "pseudo_inverse"

    def _write(self, patterns: Tensor, weights: Tensor) -> Tensor:
        dtype = weights.dtype
        x64 = patterns.to(torch.float64)  # [B, N, D]
        if not bool(weights.any()):
            gram = x64 @ x64.transpose(1, 2)  # [B, N, N]
            # X^+ X = X^T (X X^T)^+ X; the Hermitian pseudo-inverse also covers N > D and repeated patterns
            projector = x64.transpose(1, 2) @ torch.linalg.pinv(gram, hermitian=True) @ x64  # [B, D, D]
            return projector.to(dtype)
        projector = weights.to(torch.float64)
        for n in range(x64.shape[1]):
            xi = x64[:, n]  # [B, D]
            residual = xi - torch.bmm(projector, xi.unsqueeze(-1)).squeeze(-1)  # [B, D]
            norm2 = (residual * residual).sum(dim=-1)  # [B]
            in_span = norm2 <= 1e-9 * self.config.dim
            inv = torch.where(in_span, 0.0, 1.0 / norm2.clamp_min(1e-30))  # [B]
            projector = projector + inv[:, None, None] * residual.unsqueeze(-1) * residual.unsqueeze(-2)
        return projector.to(dtype)


_RULES: dict[str, type[HopfieldMemory]] = {
    "hebb": HebbMemory,
    "storkey": StorkeyMemory,
    "pseudo_inverse": PseudoInverseMemory,
}


def hopfield_memory(rule: str, config: HopfieldConfig | None = None) -> HopfieldMemory:
    """Build a Hopfield memory by rule name: ``"hebb"``, ``"storkey"`` or ``"pseudo_inverse"``."""
    key = rule.lower().replace("-", "_")
    if key not in _RULES:
        raise ValueError(f"unknown Hopfield rule {rule!r}; choose one of {sorted(_RULES)}.")
    return _RULES[key](config)

"""Random binary patterns: the associative-retrieval task of the paper's Appendix A.2 and Table 1.

Every episode stores ``N`` random patterns of ``D = 128`` bits (values -1 or +1 with equal probability) in a
memory. Each stored pattern is then queried once: ``num_corrupted = 64`` random positions of the pattern are
replaced by random -1/+1 values and the other 64 positions are "known", i.e. every model may clamp them to their
true values during retrieval (the paper lets all models do so). The score is the number of error bits (Hamming
distance) between the retrieved and the original pattern.

Corruption protocol: the corrupted positions get *random* -1/+1 values, so about half of them (32 on average) end
up flipped. This reproduced the paper's Hebb row to within 0.2 bits; flipping all 64 positions did not.

Typical use::

    gen = torch.Generator().manual_seed(0)
    patterns = sample_patterns(32, 48, generator=gen)            # [B, N, D]
    queries, known_mask = corrupt(patterns, generator=gen)       # [B, N, D] each
    retrieved = my_memory.read(queries, my_memory.write(patterns), known_mask=known_mask)
    errors = error_bits(retrieved, patterns)                     # [B, N]

or, for a whole evaluation, :func:`evaluate` followed by :func:`summarize` and :func:`format_table`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_DIM",
    "DEFAULT_NUM_CORRUPTED",
    "PAPER_TABLE1",
    "TABLE1_NUM_PATTERNS",
    "corrupt",
    "error_bits",
    "evaluate",
    "format_table",
    "sample_patterns",
    "summarize",
]

DEFAULT_DIM = 128
"""Pattern size ``D`` of the paper's binary task."""

DEFAULT_NUM_CORRUPTED = 64
"""Number of corrupted positions per query in the paper's binary task (half of ``D``)."""

TABLE1_NUM_PATTERNS: tuple[int, ...] = (16, 32, 48, 64, 96)
"""Numbers of stored patterns ``N`` (the columns of the paper's Table 1)."""

PAPER_TABLE1: dict[str, tuple[float, ...]] = {
    "Hebb": (0.4, 5.0, 9.8, 13.0, 16.5),
    "Storkey": (0.0, 0.9, 6.3, 11.3, 17.1),
    "pseudo-inverse": (0.0, 0.0, 0.3, 4.3, 22.5),
    "differentiable plasticity": (3.0, 13.2, 20.8, 26.3, 34.9),
    "MANN": (0.1, 0.2, 1.8, 4.25, 9.6),
    "LSTM": (30.0, 58.0, 63.0, 64.0, 64.0),
    "Memory Networks": (0.0, 0.0, 0.0, 0.0, 10.5),
    "EBMM RNN": (0.0, 0.0, 0.1, 0.5, 4.2),
}
"""Mean error bits of the paper's Table 1, one tuple per model, ordered as :data:`TABLE1_NUM_PATTERNS`.

The Hopfield rows are "Hopfield network, Hebb rule", "... Storkey rule" and "... pseudo-inverse rule".
"""

Summary = dict[str, float]
"""Output of :func:`summarize`: ``{"mean": ..., "p5": ..., "p95": ..., "num_batches": ...}``."""


def check_pm1(x: Tensor, name: str) -> None:
    """Raise ValueError unless every entry of ``x`` is -1 or +1."""
    if not bool(((x == 1) | (x == -1)).all()):
        bad = x[(x != 1) & (x != -1)].flatten()[:3].tolist()
        raise ValueError(
            f"{name} must contain only -1.0 and +1.0, found e.g. {bad}; "
            f"build patterns with sample_patterns() or map {{0, 1}} bits with 2 * bits - 1."
        )


def check_pattern_batch(x: Tensor, name: str) -> None:
    """Raise ValueError unless ``x`` is a non-empty floating tensor of shape [B, N, D]."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [B, N, D], got {type(x).__name__}.")
    if x.dim() != 3:
        raise ValueError(
            f"{name} must have shape [B, N, D] (batch of episodes, patterns, bits), got shape "
            f"{tuple(x.shape)}; add a batch dimension with {name}.unsqueeze(0) for a single episode."
        )
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); B, N and D must all be at least 1.")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; use {name}.float().")


def sample_patterns(
    batch_size: int,
    num_patterns: int,
    dim: int = DEFAULT_DIM,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sample random binary patterns, each bit -1 or +1 with probability 1/2.

    Args:
        batch_size: Number of independent episodes ``B`` (one memory each).
        num_patterns: Number of patterns ``N`` stored per episode.
        dim: Pattern size ``D`` in bits (128 in the paper).
        generator: Optional torch generator for reproducibility; must live on ``device``.
        device: Device of the result (default: the generator's device, else CPU).

    Returns:
        patterns: [B, N, D] float32 tensor of -1.0/+1.0.

    Raises:
        ValueError: If any size is smaller than 1.
    """
    for name, value in (("batch_size", batch_size), ("num_patterns", num_patterns), ("dim", dim)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}.")
    if device is None and generator is not None:
        device = generator.device
    bits = torch.randint(0, 2, (batch_size, num_patterns, dim), generator=generator, device=device)
    return bits.to(torch.float32).mul_(2.0).sub_(1.0)


def corrupt(
    patterns: Tensor,
    num_corrupted: int = DEFAULT_NUM_CORRUPTED,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Build queries by overwriting ``num_corrupted`` random positions of each pattern with random -1/+1 bits.

    For every pattern (independently), exactly ``num_corrupted`` distinct positions are chosen uniformly at
    random and each gets a fresh random -1/+1 value, so on average half of them keep their original value.
    The remaining positions are "known": models may clamp them to their true values (paper, Appendix A.2).

    Args:
        patterns: [B, N, D] patterns of -1.0/+1.0 to corrupt (not modified).
        num_corrupted: Number of positions per query to overwrite, ``0 <= num_corrupted <= D``.
        generator: Optional torch generator for reproducibility; must live on ``patterns.device``.

    Returns:
        queries: [B, N, D] corrupted copies of ``patterns`` (same dtype and device).
        known_mask: [B, N, D] bool, True where the query bit was not corrupted (equals the pattern's bit);
            exactly ``D - num_corrupted`` True entries per query.

    Raises:
        ValueError: If ``patterns`` is not a non-empty [B, N, D] tensor of -1/+1 values or ``num_corrupted``
            is out of range.
    """
    check_pattern_batch(patterns, "patterns")
    check_pm1(patterns, "patterns")
    dim = patterns.shape[-1]
    if not 0 <= int(num_corrupted) <= dim:
        raise ValueError(f"num_corrupted must be between 0 and the pattern size {dim}, got {num_corrupted}.")
    # Rank i.i.d. uniform keys: the num_corrupted smallest keys of each query mark its corrupted positions.
    keys = torch.rand(patterns.shape, generator=generator, device=patterns.device)  # [B, N, D]
    ranks = keys.argsort(dim=-1).argsort(dim=-1)  # [B, N, D], a random permutation of 0..D-1 per query
    corrupted = ranks < num_corrupted  # [B, N, D]
    random_bits = torch.randint(0, 2, patterns.shape, generator=generator, device=patterns.device)
    random_bits = random_bits.to(patterns.dtype).mul_(2.0).sub_(1.0)
    queries = torch.where(corrupted, random_bits, patterns)
    return queries, ~corrupted


def error_bits(retrieved: Tensor, patterns: Tensor) -> Tensor:
    """Count error bits: the Hamming distance between ``sign(retrieved)`` and the original patterns.

    ``retrieved`` may be real-valued; it is binarised by its sign, with 0 counted as +1 (``x >= 0 -> +1``).

    Args:
        retrieved: [B, N, D] retrieved patterns (any real values).
        patterns: [B, N, D] original patterns of -1.0/+1.0.

    Returns:
        errors: [B, N] float32 number of wrong bits per pattern (integers from 0 to D).

    Raises:
        ValueError: On shape mismatch, wrong rank, empty input or non -1/+1 ``patterns``.
    """
    check_pattern_batch(patterns, "patterns")
    check_pattern_batch(retrieved, "retrieved")
    if retrieved.shape != patterns.shape:
        raise ValueError(
            f"retrieved and patterns must have the same shape [B, N, D], got {tuple(retrieved.shape)} and "
            f"{tuple(patterns.shape)}; query every stored pattern once, in the order it was written."
        )
    check_pm1(patterns, "patterns")
    retrieved_sign = torch.where(retrieved >= 0, 1.0, -1.0).to(patterns.dtype)
    return (retrieved_sign != patterns).sum(dim=-1).to(torch.float32)


def summarize(errors: Tensor | Sequence[Tensor]) -> Summary:
    """Summarise an evaluation as the paper does: mean error bits with 5th/95th percentiles over batches.

    The paper's error bars are "5- and 95-percentiles computed on 1000 random batches" (Appendix A). Here a
    batch's score is its mean number of error bits over all its episodes and queries; ``p5``/``p95`` are
    percentiles (linear interpolation, as ``torch.quantile``) of these per-batch means, so they depend on the
    batch size and should be reported with it. ``mean`` is the mean of the per-batch means (the overall mean
    when all batches have the same size). Use at least 1000 batches to match the paper.

    Args:
        errors: Error bits per batch: a tensor [num_batches, ...] (e.g. [num_batches, B, N]) or a sequence of
            per-batch tensors (e.g. [B, N] each, as returned by :func:`error_bits`; sizes may differ).

    Returns:
        ``{"mean": float, "p5": float, "p95": float, "num_batches": int}``.

    Raises:
        ValueError: If there are no batches or a batch is empty.
    """
    if isinstance(errors, Tensor):
        if errors.dim() < 1 or errors.shape[0] == 0 or errors.numel() == 0:
            raise ValueError(
                f"errors must have shape [num_batches, ...] with at least one batch and entry, got shape "
                f"{tuple(errors.shape)}."
            )
        batch_means = errors.reshape(errors.shape[0], -1).to(torch.float64).mean(dim=1)  # [num_batches]
    else:
        batches = list(errors)
        if not batches:
            raise ValueError("errors is an empty sequence; evaluate at least one batch (the paper uses 1000).")
        if any(b.numel() == 0 for b in batches):
            raise ValueError("errors contains an empty batch; every batch needs at least one query.")
        batch_means = torch.stack([b.to(torch.float64).mean().cpu() for b in batches])
    batch_means = batch_means.cpu()
    p5, p95 = torch.quantile(batch_means, torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
    return {
        "mean": float(batch_means.mean()),
        "p5": float(p5),
        "p95": float(p95),
        "num_batches": int(batch_means.numel()),
    }


RetrieveFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``retrieve(patterns [B, N, D], queries [B, N, D], known_mask [B, N, D]) -> retrieved [B, N, D]``."""


def evaluate(
    retrieve: RetrieveFn,
    num_patterns: int,
    num_batches: int = 1000,
    batch_size: int = 32,
    dim: int = DEFAULT_DIM,
    num_corrupted: int = DEFAULT_NUM_CORRUPTED,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    batches_per_call: int = 1,
) -> Tensor:
    """Run the binary-retrieval protocol on fresh random batches and return every query's error bits.

    Each batch samples ``batch_size`` episodes of ``num_patterns`` patterns, corrupts every pattern once with
    :func:`corrupt` and calls ``retrieve``, which should write each episode's patterns into a fresh memory
    and read its queries back. To cut per-call overhead, ``batches_per_call`` batches are stacked along the
    episode dimension into one call (episodes are independent, so only the random stream changes: results
    are deterministic for a given seed and ``batches_per_call``).

    Args:
        retrieve: ``retrieve(patterns, queries, known_mask) -> retrieved``, all [B', N, D] with ``B'`` a
            multiple of ``batch_size``.
        num_patterns: Patterns stored per episode ``N``.
        num_batches: Number of random batches (the paper uses 1000).
        batch_size: Episodes per batch ``B``.
        dim: Pattern size ``D``.
        num_corrupted: Corrupted positions per query.
        generator: Torch generator that drives patterns and corruption (seed it for reproducibility).
        device: Device of the patterns (default: the generator's device, else CPU).
        batches_per_call: Number of batches stacked into one ``retrieve`` call.

    Returns:
        errors: [num_batches, B, N] float32 error bits, ready for :func:`summarize`.

    Raises:
        ValueError: If a count is not positive or ``retrieve`` returns the wrong shape.
    """
    for name, value in (("num_batches", num_batches), ("batches_per_call", batches_per_call)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}.")
    errors = []
    done = 0
    while done < num_batches:
        chunk = min(batches_per_call, num_batches - done)
        patterns = sample_patterns(chunk * batch_size, num_patterns, dim, generator=generator, device=device)
        queries, known_mask = corrupt(patterns, num_corrupted, generator=generator)
        retrieved = retrieve(patterns, queries, known_mask)
        errors.append(error_bits(retrieved, patterns).reshape(chunk, batch_size, num_patterns))
        done += chunk
    return torch.cat(errors)  # [num_batches, B, N]


def _fmt(value: float, precision: int) -> str:
    return f"{value:.{precision}f}"


def format_table(
    rows: Mapping[str, Sequence[Summary]],
    num_patterns: Sequence[int] = TABLE1_NUM_PATTERNS,
    paper: Mapping[str, Sequence[float]] | None = PAPER_TABLE1,
    precision: int = 1,
) -> str:
    """Format results as a Markdown table in the layout of the paper's Table 1.

    Each cell reads ``mean (p5–p95)``, followed by ``· paper x`` when ``paper`` has a row of the same name and
    a value for that column (paper values are looked up by the column's number of patterns, so ``num_patterns``
    may be any subset of :data:`TABLE1_NUM_PATTERNS`).

    Args:
        rows: Model name -> one :func:`summarize` result per entry of ``num_patterns``.
        num_patterns: Number of stored patterns of each column.
        paper: Reference values per model name, ordered as :data:`TABLE1_NUM_PATTERNS`; None to omit them.
        precision: Decimal places of the printed numbers.

    Returns:
        The Markdown table as a string (no trailing newline).

    Raises:
        ValueError: If a row does not have one summary per column.
    """
    num_patterns = [int(n) for n in num_patterns]
    header = "| model | " + " | ".join(f"N = {n}" for n in num_patterns) + " |"
    lines = [header, "|---|" + "---|" * len(num_patterns)]
    for name, summaries in rows.items():
        if len(summaries) != len(num_patterns):
            raise ValueError(
                f"row {name!r} has {len(summaries)} summaries but there are {len(num_patterns)} columns "
                f"{num_patterns}; pass one summarize() result per number of patterns."
            )
        reference = None if paper is None else paper.get(name)
        cells = []
        for n, summary in zip(num_patterns, summaries, strict=True):
            cell = (
                f"{_fmt(summary['mean'], precision)} "
                f"({_fmt(summary['p5'], precision)}–{_fmt(summary['p95'], precision)})"
            )
            if reference is not None and n in TABLE1_NUM_PATTERNS:
                cell += f" · paper {reference[TABLE1_NUM_PATTERNS.index(n)]:g}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

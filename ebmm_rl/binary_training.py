"""Meta-training batches and evaluation callbacks for the random binary task (App. A.2), for any memory.

Shared by ``scripts/meta_train_binary.py`` (EBMM) and ``scripts/meta_train_baseline.py`` (the baselines)::

    sampler = binary_sampler(batch_size=8, num_patterns=(16, 32, 48, 64, 96))   # N drawn per batch
    evaluate = binary_evaluator(num_patterns=(16, 64), num_batches=20, batch_size=8)
    MetaTrainer(memory, sampler, config, evaluate=evaluate).train()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ebmm_rl.binary import (
    DEFAULT_DIM,
    DEFAULT_NUM_CORRUPTED,
    corrupt,
    error_bits,
    evaluate,
    sample_patterns,
    summarize,
)


def _as_tuple(num_patterns: int | Sequence[int]) -> tuple[int, ...]:
    values = (num_patterns,) if isinstance(num_patterns, int) else tuple(int(n) for n in num_patterns)
    if not values or min(values) < 1:
        raise ValueError(f"num_patterns must be a positive integer or a non-empty list of them, got {num_patterns}")
    return values


def binary_sampler(
    batch_size: int,
    num_patterns: int | Sequence[int],
    dim: int = DEFAULT_DIM,
    num_corrupted: int = DEFAULT_NUM_CORRUPTED,
) -> Callable[[torch.Generator], tuple[Tensor, Tensor, Tensor]]:
    """A :data:`~ebmm_rl.training.Sampler` of ``batch_size`` episodes of random ±1 patterns and their queries.

    Args:
        batch_size: episodes per batch ``B``.
        num_patterns: ``N``, or several values of which each batch draws one uniformly (with the generator).
        dim: bits per pattern ``D``.
        num_corrupted: bits of each query set to random ±1 (the others are known).

    Returns:
        ``sample(generator) -> (patterns [B, N, D], queries [B, N, D], known_mask [B, N, D])``.
    """
    choices = _as_tuple(num_patterns)

    def sample(generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        n = choices[0]
        if len(choices) > 1:
            n = choices[int(torch.randint(len(choices), (1,), generator=generator, device=generator.device))]
        patterns = sample_patterns(batch_size, n, dim, generator=generator)
        queries, known = corrupt(patterns, num_corrupted, generator=generator)
        return patterns, queries, known

    return sample


def binary_evaluator(
    num_patterns: int | Sequence[int],
    num_batches: int,
    batch_size: int,
    dim: int = DEFAULT_DIM,
    num_corrupted: int = DEFAULT_NUM_CORRUPTED,
    seed: int = 10_000,
    device: str | torch.device = "cpu",
) -> Callable[[nn.Module], dict[str, float]]:
    """An ``evaluate(memory)`` callback: mean error bits on fresh batches drawn from a fixed seed.

    With one ``N`` it returns ``{"error_bits", "error_bits_p5", "error_bits_p95"}`` (5/95 percentiles over
    batches); with several, ``"error_bits"`` is their mean (the score that picks ``best.pt``) followed by
    ``"error_bits_N{n}"`` for each.
    """
    choices = _as_tuple(num_patterns)

    def run(memory: nn.Module) -> dict[str, float]:
        def retrieve(patterns: Tensor, queries: Tensor, known: Tensor) -> Tensor:
            return memory.recall(queries, memory.write(patterns), known)

        summaries = []
        for n in choices:
            generator = torch.Generator(device=device).manual_seed(seed)
            with torch.no_grad():
                errors = evaluate(
                    retrieve, n, num_batches, batch_size, dim, num_corrupted, generator=generator, device=device
                )
            summaries.append(summarize(errors))
        if len(choices) == 1:
            s = summaries[0]
            return {"error_bits": s["mean"], "error_bits_p5": s["p5"], "error_bits_p95": s["p95"]}
        results = {"error_bits": sum(s["mean"] for s in summaries) / len(summaries)}
        results.update({f"error_bits_N{n}": s["mean"] for n, s in zip(choices, summaries, strict=True)})
        return results

    return run


def binary_read_metrics(batch: tuple[Tensor, ...], out) -> dict[str, list[float]]:
    """``{"error_bits": [K]}``: mean error bits of each read iterate of a meta-training batch.

    A :data:`~ebmm_rl.training.ReadMetrics` for :class:`~ebmm_rl.training.MetaTrainer` on ±1 patterns: an
    iterate's bits are its signs (:func:`ebmm_rl.binary.error_bits`), counted over all ``D`` bits against the
    written patterns ``batch[0]``.
    """
    patterns = batch[0]  # [B, N, D]
    iterates = out.read.iterates[1:].detach()  # [K, B, N, D]
    return {"error_bits": [float(error_bits(x, patterns).mean()) for x in iterates]}

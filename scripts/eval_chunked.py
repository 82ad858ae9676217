"""Chunked online writing: recall per chunk position (first chunk vs last) against batch writing.

For each chunk size ``C`` this meta-trains a small EBMM on random ±1 patterns with ``EBMMConfig(chunk_size=C)``
(so meta-training writes the ``N`` patterns in ``ceil(N / C)`` chunks, each chunk ``T`` write steps continuing
from the memory the previous chunk left), then evaluates every trained model writing in chunks of every ``C``
and prints the mean error bits of the patterns of the first chunk, of the last chunk and of all patterns.
``C >= N`` is the paper's batch writing. Example (the table in ``docs/rl.md``)::

    python scripts/eval_chunked.py --chunk-sizes 1 4 16 --steps 1500

The error bits of a query are counted over all ``D`` bits, ``num_corrupted`` of which were set to random ±1
(the others are known and clamped, paper App. A.2), so copying the query scores ``num_corrupted / 2``.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass
from typing import Literal

import torch
import tyro

from ebmm_rl.binary import corrupt, evaluate, sample_patterns
from ebmm_rl.energy import GatedRNNConfig, GatedRNNEnergy, MLPConfig, MLPEnergy
from ebmm_rl.memory import EBMMConfig, EBMMemory
from ebmm_rl.training import MetaTrainer, TrainConfig


@dataclass
class Args:
    """Meta-train one EBMM per chunk size and compare recall per chunk position with batch writing."""

    chunk_sizes: tuple[int, ...] = (1, 4, 16)
    """chunk sizes C to train and evaluate with (C >= num_patterns: batch writing)"""
    num_patterns: int = 16
    """patterns written per episode (N)"""
    dim: int = 32
    """bits per pattern (D)"""
    num_corrupted: int = 16
    """bits of each query set to random ±1; the others are known and clamped"""
    energy: Literal["mlp", "rnn"] = "mlp"
    """energy network: the gated MLP the RL extractor uses, or the paper's gated RNN (App. C.1)"""
    hidden_size: int = 64
    """hidden size of the energy network"""
    dynamic_size: int = 32
    """memory units: (D + 1) * dynamic_size writable floats"""
    write_steps: int = 3
    """T, write steps per chunk"""
    read_steps: int = 3
    """K, read steps"""
    batch_size: int = 8
    """episodes per meta-step and per evaluation batch"""
    steps: int = 1500
    """meta-steps per chunk size (the same for every C)"""
    lr: float = 1e-3
    """AdamW learning rate of the weights (scripts/meta_train_binary.py default)"""
    schedule_lr: float = 1e-2
    """AdamW learning rate of step sizes, momenta and loss weights"""
    eval_batches: int = 200
    """random batches of ``batch_size`` episodes per evaluation (fixed seed: every model sees the same ones)"""
    prior_anchor: Literal["initial", "previous"] = "previous"
    """where the writing loss's prior pulls each chunk: θ̄ (the paper) or the memory before the chunk"""
    seed: int = 0
    """seed of initialisation, meta-training batches and evaluation batches"""
    threads: int = 1
    """torch CPU threads"""
    progress: bool = True
    """show a progress bar during meta-training"""


@dataclass
class ChunkResult:
    """Error bits of one (model, write chunk size) evaluation.

    Attributes:
        chunk_size: ``C`` the patterns were written with (clipped to ``N``).
        per_position: ``[N]`` mean error bits of the query of the pattern written at each position.
        num_queries: queries averaged per position.
    """

    chunk_size: int
    per_position: list[float]
    num_queries: int

    @property
    def per_chunk(self) -> list[float]:
        """Mean error bits of the patterns of each chunk, in writing order."""
        C, N = self.chunk_size, len(self.per_position)
        return [sum(self.per_position[s : s + C]) / len(self.per_position[s : s + C]) for s in range(0, N, C)]

    @property
    def first(self) -> float:
        """Mean error bits of the first chunk's patterns."""
        return self.per_chunk[0]

    @property
    def last(self) -> float:
        """Mean error bits of the last chunk's patterns."""
        return self.per_chunk[-1]

    @property
    def mean(self) -> float:
        """Mean error bits over all patterns."""
        return sum(self.per_position) / len(self.per_position)


def build_memory(args: Args, chunk_size: int) -> EBMMemory:
    """A fresh binary EBMM that meta-trains writing in chunks of ``chunk_size`` (0 or ``>= N``: batch writing)."""
    if args.energy == "mlp":
        energy = MLPEnergy(MLPConfig(args.dim, args.hidden_size, args.dynamic_size))
    else:
        energy = GatedRNNEnergy(GatedRNNConfig(args.dim, args.hidden_size, args.dynamic_size, hops=3))
    config = EBMMConfig(
        write_steps=args.write_steps,
        read_steps=args.read_steps,
        data_range=(-1.0, 1.0),
        write_lr_init=0.1,
        read_step_init=2.0,
        chunk_size=0 if chunk_size >= args.num_patterns else chunk_size,
        prior_anchor=args.prior_anchor,
    )
    return EBMMemory(energy, config)


def evaluate_chunked(
    memory: EBMMemory,
    chunk_size: int,
    num_patterns: int,
    dim: int,
    num_corrupted: int,
    num_batches: int,
    batch_size: int,
    seed: int = 0,
) -> ChunkResult:
    """Write ``num_patterns`` random patterns in chunks of ``chunk_size``, read every one back, count error bits.

    Args:
        memory: a memory over ``(dim,)`` patterns in ``(-1, 1)``.
        chunk_size: ``C``; ``>= num_patterns`` writes everything at once.
        num_patterns: ``N``.
        dim: ``D``.
        num_corrupted: bits of each query set to random ±1 (the others are clamped).
        num_batches: random batches of ``batch_size`` episodes (drawn from ``seed``).
        batch_size: episodes per batch.
        seed: seed of the evaluation batches.

    Returns:
        The mean error bits per write position.
    """

    def retrieve(patterns: torch.Tensor, queries: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        state = memory.write_chunked(patterns, chunk_size)  # [B, N, D] in ceil(N / C) chunks
        return memory.read(queries, state, known).retrieved  # [B, N, D]

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        errors = evaluate(retrieve, num_patterns, num_batches, batch_size, dim, num_corrupted, generator=generator)
    per_position = errors.reshape(-1, num_patterns).mean(dim=0)  # [N]
    return ChunkResult(min(chunk_size, num_patterns), per_position.tolist(), errors.shape[0] * errors.shape[1])


def make_sampler(args: Args):
    """Meta-training batches: ``N`` random patterns per episode, queries with ``num_corrupted`` random bits."""

    def sample(generator: torch.Generator):
        patterns = sample_patterns(args.batch_size, args.num_patterns, args.dim, generator=generator)
        queries, known = corrupt(patterns, args.num_corrupted, generator=generator)
        return patterns, queries, known

    return sample


def format_table(rows: list[tuple[int, float, ChunkResult]], num_patterns: int) -> str:
    """Markdown table, one row per (trained C, minutes, written-with result)."""
    lines = [
        "| trained with C | meta-train CPU min | written with C | chunks | first chunk | last chunk | all patterns |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for trained, minutes, result in rows:
        chunks = math.ceil(num_patterns / result.chunk_size)
        lines.append(
            f"| {trained} | {minutes:.1f} | {result.chunk_size} | {chunks} | {result.first:.2f} | "
            f"{result.last:.2f} | {result.mean:.2f} |"
        )
    return "\n".join(lines)


def main(args: Args) -> str:
    """Meta-train one model per chunk size, evaluate every model at every chunk size, print the table."""
    torch.set_num_threads(args.threads)
    sizes = sorted({min(int(c), args.num_patterns) for c in args.chunk_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"chunk sizes must be >= 1, got {args.chunk_sizes}")
    rows: list[tuple[int, float, ChunkResult]] = []
    for C in sizes:
        torch.manual_seed(args.seed)
        memory = build_memory(args, C)
        trainer = MetaTrainer(
            memory,
            make_sampler(args),
            TrainConfig(
                steps=args.steps,
                lr=args.lr,
                schedule_lr=args.schedule_lr,
                seed=args.seed,
                progress=args.progress,
                log_every=max(args.steps // 20, 1),
            ),
        )
        start = time.process_time()  # CPU time: wall time says little on a shared machine
        trainer.train()
        minutes = (time.process_time() - start) / 60
        memory.eval()
        for write_c in sizes:
            result = evaluate_chunked(
                memory,
                write_c,
                args.num_patterns,
                args.dim,
                args.num_corrupted,
                args.eval_batches,
                args.batch_size,
                seed=10_000 + args.seed,
            )
            rows.append((C, minutes, result))
            print(f"trained C={C} ({minutes:.1f} CPU min, {trainer.step} steps), written C={write_c}: "
                  f"per chunk {[round(e, 2) for e in result.per_chunk]}", flush=True)  # fmt: skip
    print(
        f"\n{args.energy} energy (hidden {args.hidden_size}, {memory.memory_size} writable floats), "
        f"N={args.num_patterns} patterns of D={args.dim} bits, {args.num_corrupted} bits of each query random "
        f"(copying the query: {args.num_corrupted / 2:g} error bits), T={args.write_steps}, K={args.read_steps}, "
        f"{args.steps} meta-steps of {args.batch_size} episodes per C, {args.eval_batches}x{args.batch_size} "
        f"evaluation episodes; prior anchor {args.prior_anchor}; {args.threads} thread(s), load average "
        f"{os.getloadavg()[0]:.1f}, {platform.machine()}, torch {torch.__version__}\n"
    )
    table = format_table(rows, args.num_patterns)
    print(table)
    return table


if __name__ == "__main__":
    main(tyro.cli(Args))

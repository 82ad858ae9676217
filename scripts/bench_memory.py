"""Benchmark one meta-step (write + read + meta-gradient): batched episodes vs a per-episode loop.

Prints wall time per episode and the peak memory a step adds, for the binary (C.1) and the Omniglot conv
(C.3) models, and the batched/loop speed ratio. On CUDA it also prints meta-steps/s and the achieved fraction
of the GPU's peak FLOP/s (all matmul/conv FLOPs of the step, forward and every backward pass, counted by
``torch.utils.flop_counter``).

    python scripts/bench_memory.py                      # both models, CPU
    python scripts/bench_memory.py --models binary --batch-size 8 --repeats 5
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import resource
import time
from dataclasses import dataclass, field

import torch
import tyro
from torch.utils.flop_counter import FlopCounterMode

from ebmm_rl.cli import check_device
from ebmm_rl.energy import GatedRNNConfig, GatedRNNEnergy, ResNetConvConfig, ResNetConvEnergy
from ebmm_rl.memory import EBMMConfig, EBMMemory

PEAK_TFLOPS = {"H100": 67.0, "H200": 67.0, "A100": 19.5, "V100": 15.7, "L4": 30.3}
"""Dense FP32 (non-tensor-core) peak TFLOP/s by GPU name fragment, for the achieved-fraction column."""


@dataclass
class Args:
    """Meta-step benchmark."""

    models: list[str] = field(default_factory=lambda: ["binary", "conv"])
    """which models: binary (C.1 gated RNN, hidden 256) and/or conv (C.3 Omniglot)"""
    batch_size: int = 8
    """episodes B per meta-step"""
    binary_patterns: int = 32
    """patterns per episode for the binary model"""
    conv_patterns: int = 8
    """patterns per episode for the conv model"""
    repeats: int = 3
    """timed repetitions (after one warm-up); the median is reported"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    threads: int = 0
    """CPU threads (0: torch's default)"""
    peak_tflops: float = 0.0
    """GPU peak FLOP/s in TFLOP/s for the achieved fraction (0: look the GPU name up in PEAK_TFLOPS)"""


def build(model: str, args: Args) -> tuple[EBMMemory, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A memory and one batch ``(patterns, queries, known_mask)`` for ``model``."""
    B = args.batch_size
    if model == "binary":
        memory = EBMMemory(GatedRNNEnergy(GatedRNNConfig(hidden_size=256)), EBMMConfig(data_range=(-1.0, 1.0)))
        patterns = torch.randint(0, 2, (B, args.binary_patterns, 128)).float() * 2 - 1
        known = torch.rand(patterns.shape) < 0.5
        queries = torch.where(known, patterns, torch.randint(0, 2, patterns.shape).float() * 2 - 1)
        return memory, patterns, queries, known
    if model == "conv":
        memory = EBMMemory(ResNetConvEnergy(ResNetConvConfig.omniglot()), EBMMConfig(data_range=(0.0, 1.0)))
        patterns = (torch.rand(B, args.conv_patterns, 1, 32, 32) > 0.5).float()
        queries = patterns.clone()
        queries[..., 8:24, 8:24] = (torch.rand(B, args.conv_patterns, 1, 16, 16) > 0.5).float()
        return memory, patterns, queries, None
    raise SystemExit(f"unknown model {model!r}; choose from binary, conv")


def rss_mib() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def meta_step(memory: EBMMemory, patterns, queries, known, batched: bool) -> None:
    """One write + read + backward, batched or as a loop over episodes."""
    memory.zero_grad(set_to_none=True)
    if batched:
        memory(patterns, queries, known).loss.backward()
        return
    B = patterns.shape[0]
    for b in range(B):
        mask = None if known is None else known[b : b + 1]
        (memory(patterns[b : b + 1], queries[b : b + 1], mask).loss / B).backward()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_memory_mib(model: str, args: Args, batched: bool) -> float:
    """Peak memory (MiB) that one meta-step adds.

    On CUDA: the allocator's peak. On CPU: the RSS high-water mark of a fresh process minus its RSS before the
    step. ``ru_maxrss`` never goes down and survives ``exec``, so the step runs in a new process, spawned while
    this one is still small (before any step ran here).
    """
    if torch.device(args.device).type == "cuda":
        memory, patterns, queries, known = _on_device(build(model, args), args.device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        meta_step(memory, patterns, queries, known, batched)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_cpu_peak_worker, (model, args, batched))


def _cpu_peak_worker(model: str, args: Args, batched: bool) -> float:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    memory, patterns, queries, known = build(model, args)
    gc.collect()
    base = rss_mib()
    meta_step(memory, patterns, queries, known, batched)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base


def _on_device(built, device):
    memory, patterns, queries, known = built
    known = None if known is None else known.to(device)
    return memory.to(device), patterns.to(device), queries.to(device), known


def main(args: Args) -> None:
    """Measure and print the table."""
    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, B={args.batch_size}")
    header = f"{'model':8} {'N':>4} {'memory':>7} {'mode':8} {'s/step':>8} {'ms/episode':>11} {'peak MiB':>9}"
    print(header + ("  steps/s  TFLOP/s  %peak" if device.type == "cuda" else ""))
    peaks = {(m, b): peak_memory_mib(m, args, b) for m in args.models for b in (True, False)}
    for model in args.models:
        torch.manual_seed(0)
        memory, patterns, queries, known = _on_device(build(model, args), device)
        per_episode = {}
        for batched in (True, False):
            step = functools.partial(meta_step, memory, patterns, queries, known, batched)
            seconds = timed(step, device, args.repeats)
            peak = peaks[model, batched]
            per_episode[batched] = seconds / args.batch_size
            mode = "batched" if batched else "loop"
            line = (
                f"{model:8} {patterns.shape[1]:>4} {memory.memory_size:>7} {mode:8} {seconds:>8.3f} "
                f"{1e3 * seconds / args.batch_size:>11.1f} {peak:>9.1f}"
            )
            if device.type == "cuda" and batched:
                with FlopCounterMode(display=False) as counter:
                    meta_step(memory, patterns, queries, known, True)
                tflops = counter.get_total_flops() / seconds / 1e12
                peak_tflops = args.peak_tflops or next(
                    (v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name(device)), float("nan")
                )
                line += f"  {1 / seconds:7.2f}  {tflops:7.2f}  {100 * tflops / peak_tflops:5.1f}"
            print(line, flush=True)
        print(f"{model:8} batched is {per_episode[False] / per_episode[True]:.2f}x faster per episode than the loop")


if __name__ == "__main__":
    main(tyro.cli(Args))

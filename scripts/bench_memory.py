"""Benchmark one meta-step (write + read + meta-gradient): closed-form vs autograd path, batched vs a loop.

For each model it times one meta-step in every combination of

* path: ``closed`` (the energy's closed-form inner gradients, one autograd level) and ``autograd`` (the nested
  ``torch.autograd.grad`` reference, ``energy.closed_form = False``); energies without a closed form have only the
  second;
* mode: ``batched`` (``B`` episodes in one pass) and ``loop`` (one episode at a time).

The combinations are interleaved round by round, so that a change of machine load hits all of them alike, and
each is reported by the median of its rounds: wall time and CPU time (``time.process_time``) per step and per
episode, the FLOPs of the step (every ``mm``/``addmm``/``bmm``/``baddbmm``/convolution of the forward and every
backward pass, counted by a ``TorchDispatchMode``; ``torch.utils.flop_counter.FlopCounterMode`` crashes on the
nested-grad meta-step in torch 2.13) and the achieved GFLOP per CPU-second beside the rate of a plain matmul
measured in the same rounds (on a shared machine even CPU time slows down when the other cores are busy). It
also prints the CPU time of a batched write and of a read without a graph (as in RL rollouts). The header
prints the machine and the thread count, and the load average at start and end.

Models: ``binary`` (C.1 gated RNN, hidden 256, 32 patterns of 128 bits), ``conv`` (C.3 Omniglot preset) and
``mlp`` (the RL default ``MLPEnergy``: hidden 64, dynamic 32, hops 2, T = K = 3, one pattern per write as in
online RL writing).

    python scripts/bench_memory.py                      # all models, CPU, 1 thread
    python scripts/bench_memory.py --models binary mlp --repeats 5
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import tyro
from torch.utils._python_dispatch import TorchDispatchMode

from ebmm_rl.cli import check_device
from ebmm_rl.energy import GatedRNNConfig, GatedRNNEnergy, MLPConfig, MLPEnergy, ResNetConvConfig, ResNetConvEnergy
from ebmm_rl.memory import EBMMConfig, EBMMemory

Model = Literal["binary", "conv", "mlp"]
PATHS = ("closed", "autograd")
MODES = ("batched", "loop")
PEAK_TFLOPS = {"H100": 67.0, "H200": 67.0, "A100": 19.5, "V100": 15.7, "L4": 30.3}
"""Dense FP32 (non-tensor-core) peak TFLOP/s by GPU name fragment, for the achieved-fraction column."""


@dataclass
class Args:
    """Meta-step benchmark."""

    models: list[Model] = field(default_factory=lambda: ["binary", "conv", "mlp"])
    """which models: binary (C.1 gated RNN, hidden 256), conv (C.3 Omniglot), mlp (the RL default MLPEnergy)"""
    batch_size: int = 8
    """episodes B per meta-step"""
    binary_patterns: int = 32
    """patterns per episode for the binary model"""
    conv_patterns: int = 8
    """patterns per episode for the conv model"""
    mlp_patterns: int = 1
    """patterns per episode (written at once) for the mlp model"""
    mlp_input: int = 32
    """pattern size D of the mlp model"""
    repeats: int = 3
    """timed rounds (after one warm-up); the median is reported"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    threads: int = 1
    """torch CPU threads (1: comparable numbers on a shared machine; more threads can contend for the cores)"""
    peak_memory: bool = True
    """also measure the peak memory one step adds (on CPU: one fresh process per combination)"""
    peak_tflops: float = 0.0
    """GPU peak FLOP/s in TFLOP/s for the achieved fraction (0: look the GPU name up in PEAK_TFLOPS)"""


def build(model: Model, args: Args) -> tuple[EBMMemory, torch.Tensor, torch.Tensor, torch.Tensor | None]:
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
    from ebmm_rl.rl.extractor import DEFAULT_RL_EBMM_CONFIG, DEFAULT_RL_ENERGY  # here: it imports SB3

    energy = MLPEnergy(MLPConfig(input_size=args.mlp_input, **DEFAULT_RL_ENERGY))
    memory = EBMMemory(energy, DEFAULT_RL_EBMM_CONFIG)
    patterns = torch.rand(B, args.mlp_patterns, args.mlp_input)
    queries = (patterns + 0.2 * torch.randn_like(patterns)).clamp(0, 1)
    return memory, patterns, queries, None


def paths_of(memory: EBMMemory) -> tuple[str, ...]:
    """The paths this memory can take: both, or only autograd for an energy without a closed form."""
    return PATHS if memory.uses_closed_form else ("autograd",)


def set_path(memory: EBMMemory, path: str) -> None:
    """Select the closed-form or the autograd path."""
    memory.energy.closed_form = path == "closed"


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


def path_step(memory: EBMMemory, patterns, queries, known, path: str, mode: str) -> None:
    """One meta-step on ``path`` (closed/autograd) in ``mode`` (batched/loop)."""
    set_path(memory, path)
    meta_step(memory, patterns, queries, known, mode == "batched")


def rollout_times(memory: EBMMemory, patterns, queries, known, path: str, device: torch.device) -> tuple[float, float]:
    """CPU seconds of one batched write and one read without a graph (``torch.no_grad``, as in RL rollouts)."""
    set_path(memory, path)
    with torch.no_grad():
        state = memory.write(patterns)
        write = timed_once(lambda: memory.write(patterns), device)[1]
        read = timed_once(lambda: memory.read(queries, state, known), device)[1]
    return write, read


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_once(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """``(wall seconds, CPU seconds)`` of one call."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


class MatmulFlopCounter(TorchDispatchMode):
    """Counts the FLOPs of every matmul and convolution that reaches the aten dispatcher, backward passes included.

    ``2·m·k·n`` per (batched) matrix product, ``2·(output elements)·(C_in/groups)·kernel area`` per convolution,
    and as much again for each of the input and weight gradients of a convolution. Elementwise ops are not counted.
    On the closed-form path (where ``torch.utils.flop_counter.FlopCounterMode`` works) the counts are identical to
    its; on convolutions its backward formula differs by about 1%.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        out = func(*args, **(kwargs or {}))
        self.flops += _flops(func, args, out)
        return out


def _flops(func, args, out) -> int:
    aten = torch.ops.aten
    if func in (aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default):
        a, b = (args[0], args[1]) if func in (aten.mm.default, aten.bmm.default) else (args[1], args[2])
        return 2 * a.numel() * b.shape[-1]  # [(b,) m, k] @ [(b,) k, n]: 2·b·m·k·n
    if func == aten.convolution.default:
        inp, weight, transposed = args[0], args[1], args[6]
        per_output = weight.shape[1] * weight[0, 0].numel()  # C_in/groups · k·k (transposed: C_out/groups · k·k)
        return 2 * (inp.numel() if transposed else out.numel()) * per_output
    if func == aten.convolution_backward.default:
        grad_out, inp, weight, transposed, mask = args[0], args[1], args[2], args[7], args[10]
        forward = 2 * (inp.numel() if transposed else grad_out.numel()) * weight.shape[1] * weight[0, 0].numel()
        return forward * (int(mask[0]) + int(mask[1]))
    return 0


def count_flops(fn: Callable[[], None]) -> int:
    """Matmul/convolution FLOPs of one call of ``fn``."""
    with MatmulFlopCounter() as counter:
        fn()
    return counter.flops


def matmul_gflops(device: torch.device, size: int = 512, min_seconds: float = 0.2) -> float:
    """GFLOP per second of a plain ``size × size`` fp32 matmul on ``device``: CPU time on CPU, wall time on GPU."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)
    clock = 1 if device.type == "cuda" else 0
    calls, seconds = 0, 0.0
    while seconds < min_seconds:
        for _ in range(8):
            seconds += timed_once(lambda: torch.mm(a, b), device)[clock]
            calls += 1
    return 2 * size**3 * calls / seconds / 1e9


def rss_mib() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_memory_mib(model: Model, args: Args, path: str, batched: bool) -> float:
    """Peak memory (MiB) that one meta-step adds.

    On CUDA: the allocator's peak. On CPU: the RSS high-water mark of a fresh process minus its RSS before the
    step. ``ru_maxrss`` never goes down and survives ``exec``, so the step runs in a new process, forked from a
    server process that has only imported torch and the memory (``forkserver``: a clean heap, cheap to start).
    """
    if torch.device(args.device).type == "cuda":
        memory, patterns, queries, known = _on_device(build(model, args), args.device)
        set_path(memory, path)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        meta_step(memory, patterns, queries, known, batched)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "ebmm_rl.memory", "ebmm_rl.energy"])
    with context.Pool(1) as pool:
        return pool.apply(_cpu_peak_worker, (model, args, path, batched))


def _cpu_peak_worker(model: Model, args: Args, path: str, batched: bool) -> float:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    memory, patterns, queries, known = build(model, args)
    set_path(memory, path)
    gc.collect()
    base = rss_mib()
    meta_step(memory, patterns, queries, known, batched)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base


def _on_device(built, device):
    memory, patterns, queries, known = built
    known = None if known is None else known.to(device)
    return memory.to(device), patterns.to(device), queries.to(device), known


def machine() -> str:
    """CPU model, core count and architecture (and the GPU, if any)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{os.cpu_count()}-core {platform.machine()} CPU ({cpu})"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def load() -> str:
    """The 1/5/15-minute load average."""
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def usage_error(message: str) -> None:
    """Print a usage error and exit with status 2."""
    print(f"bench_memory.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(args: Args) -> None:
    """Measure and print the table."""
    check_device(args.device)
    if args.threads < 1:
        usage_error(f"--threads must be >= 1, got {args.threads}")
    if min(args.batch_size, args.binary_patterns, args.conv_patterns, args.mlp_patterns, args.repeats) < 1:
        usage_error("--batch-size, --*-patterns and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"machine: {machine()}")
    print(f"device {device}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, B={args.batch_size}")
    print(f"load average at start {load()}")
    peaks = {}
    if args.peak_memory:
        for model in args.models:
            for path in paths_of(build(model, args)[0]):
                for mode in MODES:
                    peaks[model, path, mode] = peak_memory_mib(model, args, path, mode == "batched")
    unit = "GFLOP/CPU-s" if device.type == "cpu" else "GFLOP/s"
    header = (
        f"{'model':8} {'N':>4} {'memory':>7} {'path':9} {'mode':8} {'wall s':>8} {'CPU s':>8} {'CPU ms/ep':>10} "
        f"{'GFLOP':>7} {unit:>11} {'%matmul':>7} {'peak MiB':>9}"
    )
    print(header + ("  steps/s  TFLOP/s  %peak" if device.type == "cuda" else ""))
    for model in args.models:
        torch.manual_seed(0)
        memory, patterns, queries, known = _on_device(build(model, args), device)
        paths = paths_of(memory)
        combos = [(path, mode) for path in paths for mode in MODES]

        steps = {c: functools.partial(path_step, memory, patterns, queries, known, *c) for c in combos}
        flops = {c: count_flops(steps[c]) for c in combos}  # also the warm-up
        times: dict[tuple[str, str], list[tuple[float, float]]] = {c: [] for c in combos}
        rates = []  # the matmul rate, measured in every round beside the steps
        rollout: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}  # (write, read) CPU seconds
        for _ in range(args.repeats):
            for c in combos:
                times[c].append(timed_once(steps[c], device))
            for path in paths:
                rollout[path].append(rollout_times(memory, patterns, queries, known, path, device))
            rates.append(matmul_gflops(device))
        rate = statistics.median(rates)
        cpu = {c: statistics.median(t[1] for t in times[c]) for c in combos}
        for c in combos:
            wall = statistics.median(t[0] for t in times[c])
            seconds = wall if device.type == "cuda" else cpu[c]
            achieved = flops[c] / seconds / 1e9
            peak = peaks.get((model, *c), float("nan"))
            line = (
                f"{model:8} {patterns.shape[1]:>4} {memory.memory_size:>7} {c[0]:9} {c[1]:8} {wall:>8.3f} "
                f"{cpu[c]:>8.3f} {1e3 * cpu[c] / args.batch_size:>10.2f} {flops[c] / 1e9:>7.3f} {achieved:>11.1f} "
                f"{100 * achieved / rate:>7.1f} {peak:>9.1f}"
            )
            if device.type == "cuda":
                peak_tflops = args.peak_tflops or next(
                    (v for k, v in PEAK_TFLOPS.items() if k in torch.cuda.get_device_name(device)), float("nan")
                )
                line += f"  {1 / wall:7.2f}  {achieved / 1e3:7.2f}  {100 * achieved / 1e3 / peak_tflops:5.1f}"
            print(line, flush=True)
        print(f"{model:8} plain 512x512 fp32 matmul, measured in the same rounds: {rate:.1f} {unit}")
        for path in paths:
            ratio = cpu[path, "loop"] / cpu[path, "batched"]
            print(f"{model:8} batched is {ratio:.2f}x faster per episode than the loop ({path} path, CPU time)")
        for path in paths:
            write, read = (1e3 * statistics.median(t[i] for t in rollout[path]) for i in (0, 1))
            print(
                f"{model:8} without graph (as in rollouts), batched: write {write:.2f} ms, read {read:.2f} ms "
                f"({path} path, CPU time)"
            )
        if len(paths) == 2:
            for mode in MODES:
                ratio = cpu["autograd", mode] / cpu["closed", mode]
                print(f"{model:8} closed-form path is {ratio:.2f}x faster than autograd ({mode}, CPU time)")
    print(f"load average at end {load()}")


if __name__ == "__main__":
    main(tyro.cli(Args))

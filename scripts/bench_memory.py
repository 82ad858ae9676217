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
measured in the same rounds (on a shared machine even CPU time slows down when the other cores are busy), and
the number of aten ops of the step (the same dispatch mode: on small tensors each costs its overhead, whatever
its size). It also prints the CPU time of a batched write and of a read without a graph (as in RL rollouts). The
header prints the machine and the thread count, and the load average at start and end.

On a GPU it adds, per row, meta-steps per second (wall time), the achieved TFLOP/s and its fraction of the card's
dense peak for the row's precision (``--precisions fp32 tf32 bf16``; peaks from :data:`PEAK_TFLOPS`), and the
allocator's peak memory; a batch size that runs out of memory is reported as ``OOM`` and skipped. ``--json``
writes every row for scripts (``scripts/gpu_benchmarks.sh`` picks its training batch from it).

Models: ``binary`` (C.1 gated RNN, hidden ``--binary-hidden`` = 256, 32 patterns of 128 bits; the paper's size
is ``--binary-hidden 1024 --binary-patterns 64``), ``conv`` (C.3 Omniglot preset) and
``mlp`` (the RL default ``MLPEnergy``: hidden 64, dynamic 32, hops 2, T = K = 3, one pattern per write as in
online RL writing).

    python scripts/bench_memory.py                      # all models, CPU, 1 thread
    python scripts/bench_memory.py --models binary mlp --repeats 5
    python scripts/bench_memory.py --models binary conv --device cuda --batch-sizes 16 64 256 \
        --precisions fp32 tf32 bf16 --modes batched --binary-hidden 1024 --binary-patterns 64 --json bench.json
"""

from __future__ import annotations

import functools
import gc
import json
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
from ebmm_rl.precision import PRECISIONS, Precision, autocast_context, set_matmul_precision

Model = Literal["binary", "conv", "mlp"]
PATHS = ("closed", "autograd")
MODES = ("batched", "loop")
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0},
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
    "H100": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5},
    "H200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "L4": {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0},
}
"""Dense peak TFLOP/s by GPU name fragment (first match in this order) and precision, for the %peak column.

From NVIDIA's data sheets (H100/H200 SXM, H100 PCIe, H200 NVL, A100 SXM, L4): FP32 is the CUDA-core rate; TF32
and BF16 are the tensor-core rates *without* the 2:4 sparsity the data sheets quote first (half their figure).
An unknown card gets NaN unless ``--peak-tflops`` is given.
"""


@dataclass
class Args:
    """Meta-step benchmark."""

    models: list[Model] = field(default_factory=lambda: ["binary", "conv", "mlp"])
    """which models: binary (C.1 gated RNN, hidden 256), conv (C.3 Omniglot), mlp (the RL default MLPEnergy)"""
    batch_size: int = 8
    """episodes B per meta-step"""
    batch_sizes: list[int] = field(default_factory=list)
    """several batch sizes, one set of rows each (default: --batch-size alone)"""
    precisions: list[Precision] = field(default_factory=lambda: ["fp32"])
    """arithmetic of the step: fp32, tf32 (CUDA tensor cores), bf16 (autocast); see ebmm_rl.precision"""
    modes: list[Literal["batched", "loop"]] = field(default_factory=lambda: list(MODES))
    """batched (B episodes in one pass) and/or loop (one episode at a time)"""
    paths: list[Literal["closed", "autograd"]] = field(default_factory=lambda: list(PATHS))
    """closed (closed-form inner gradients) and/or autograd"""
    binary_hidden: int = 256
    """gated-RNN state size of the binary model (paper: 1024)"""
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
    """GPU peak FLOP/s in TFLOP/s for the achieved fraction, for every precision (0: look the GPU name and the
    precision up in PEAK_TFLOPS)"""
    json: str | None = None
    """also write every row to this JSON file"""


def build(model: Model, args: Args) -> tuple[EBMMemory, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A memory and one batch ``(patterns, queries, known_mask)`` for ``model``."""
    B = args.batch_size
    if model == "binary":
        energy = GatedRNNEnergy(GatedRNNConfig(hidden_size=args.binary_hidden))
        memory = EBMMemory(energy, EBMMConfig(data_range=(-1.0, 1.0)))
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
    from ebmm_rl.rl.core import CORE_EBMM_CONFIG, CoreConfig  # here: it imports SB3

    core = CoreConfig()  # the agents' energy and rules, over patterns of --mlp-input entries
    energy = MLPEnergy(MLPConfig(args.mlp_input, core.hidden_size, core.dynamic_size, core.hops))
    memory = EBMMemory(energy, CORE_EBMM_CONFIG)
    patterns = torch.rand(B, args.mlp_patterns, args.mlp_input)
    queries = (patterns + 0.2 * torch.randn_like(patterns)).clamp(0, 1)
    return memory, patterns, queries, None


def paths_of(memory: EBMMemory, wanted: tuple[str, ...] | list[str] = PATHS) -> tuple[str, ...]:
    """The ``wanted`` paths this memory can take: only autograd for an energy without a closed form."""
    return tuple(p for p in wanted if p == "autograd" or memory.uses_closed_form)


def set_path(memory: EBMMemory, path: str) -> None:
    """Select the closed-form or the autograd path."""
    memory.energy.closed_form = path == "closed"


def meta_step(memory: EBMMemory, patterns, queries, known, batched: bool, precision: str = "fp32") -> None:
    """One write + read + backward, batched or as a loop over episodes (the forward under ``precision``)."""
    memory.zero_grad(set_to_none=True)
    device = patterns.device
    if batched:
        with autocast_context(precision, device):
            loss = memory(patterns, queries, known).loss
        loss.float().backward()
        return
    B = patterns.shape[0]
    for b in range(B):
        mask = None if known is None else known[b : b + 1]
        with autocast_context(precision, device):
            loss = memory(patterns[b : b + 1], queries[b : b + 1], mask).loss
        (loss.float() / B).backward()


def path_step(memory: EBMMemory, patterns, queries, known, path: str, mode: str, precision: str = "fp32") -> None:
    """One meta-step on ``path`` (closed/autograd) in ``mode`` (batched/loop) at ``precision``."""
    set_path(memory, path)
    set_matmul_precision(precision, patterns.device)
    meta_step(memory, patterns, queries, known, mode == "batched", precision)


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
        self.ops = 0  # every aten op that reaches the dispatcher (views included): the per-op overhead's count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        out = func(*args, **(kwargs or {}))
        self.flops += _flops(func, args, out)
        self.ops += 1
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


def count_flops(fn: Callable[[], None]) -> tuple[int, int]:
    """``(matmul/convolution FLOPs, aten ops)`` of one call of ``fn``."""
    with MatmulFlopCounter() as counter:
        fn()
    return counter.flops, counter.ops


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


def peak_memory_mib(model: Model, args: Args, path: str, batched: bool, precision: str = "fp32") -> float:
    """Peak memory (MiB) that one meta-step adds, on the CPU (on CUDA it is read off the allocator in :func:`main`).

    The RSS high-water mark of a fresh process minus its RSS before the step. ``ru_maxrss`` never goes down and
    survives ``exec``, so the step runs in a new process, forked from a server process that has only imported
    torch and the memory (``forkserver``: a clean heap, cheap to start).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "ebmm_rl.memory", "ebmm_rl.energy"])
    with context.Pool(1) as pool:
        return pool.apply(_cpu_peak_worker, (model, args, path, batched, precision))


def _cpu_peak_worker(model: Model, args: Args, path: str, batched: bool, precision: str) -> float:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    memory, patterns, queries, known = build(model, args)
    set_path(memory, path)
    gc.collect()
    base = rss_mib()
    meta_step(memory, patterns, queries, known, batched, precision)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base


def cuda_peak_mib(fn: Callable[[], None], device: torch.device) -> float:
    """Peak allocator memory (MiB) that one call of ``fn`` adds on a CUDA device."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def peak_tflops_of(name: str, precision: str, override: float = 0.0) -> float:
    """The dense peak TFLOP/s of the GPU called ``name`` at ``precision`` (:data:`PEAK_TFLOPS`), or ``override``."""
    if override:
        return override
    return next((v[precision] for k, v in PEAK_TFLOPS.items() if k in name), float("nan"))


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
    batch_sizes = args.batch_sizes or [args.batch_size]
    if min(*batch_sizes, args.binary_patterns, args.conv_patterns, args.mlp_patterns, args.repeats) < 1:
        usage_error("--batch-size(s), --*-patterns and --repeats must be >= 1")
    if not args.modes or not args.paths or not args.precisions:
        usage_error("--modes, --paths and --precisions each need at least one value")
    unknown = [p for p in args.precisions if p not in PRECISIONS]
    if unknown:
        usage_error(f"--precisions: unknown {unknown}; choose from {list(PRECISIONS)}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    print(f"machine: {machine()}")
    print(
        f"device {device}, torch {torch.__version__}, torch threads {torch.get_num_threads()}, B={batch_sizes}, "
        f"precisions {args.precisions}, binary hidden {args.binary_hidden}"
    )
    if cuda:
        peaks_text = ", ".join(
            f"{p} {peak_tflops_of(torch.cuda.get_device_name(device), p, args.peak_tflops):g}" for p in args.precisions
        )
        print(f"dense peak TFLOP/s of {torch.cuda.get_device_name(device)}: {peaks_text}")
    print(f"load average at start {load()}")
    unit = "GFLOP/CPU-s" if not cuda else "GFLOP/s"
    header = (
        f"{'model':8} {'B':>5} {'N':>4} {'memory':>7} {'path':9} {'mode':8} {'prec':5} {'wall s':>8} {'CPU s':>8} "
        f"{'CPU ms/ep':>10} {'GFLOP':>7} {unit:>11} {'%matmul':>7} {'peak MiB':>9}"
    )
    print(header + ("  steps/s  TFLOP/s  %peak" if cuda else ""), flush=True)
    rows: list[dict] = []
    for model in args.models:
        for B in batch_sizes:
            rows += bench_model(model, B, args, device, unit)
            if args.json:  # after every batch size: a run stopped by a time limit keeps what it measured
                info = {"machine": machine(), "device": str(device), "torch": torch.__version__, "load": load()}
                with open(args.json + ".tmp", "w") as f:
                    json.dump({"info": info, "rows": rows}, f, indent=1)
                os.replace(args.json + ".tmp", args.json)
    print(f"load average at end {load()}")


def bench_model(model: Model, B: int, args: Args, device: torch.device, unit: str) -> list[dict]:
    """Time every (path, mode, precision) of ``model`` at batch size ``B``; print and return the rows."""
    cuda = device.type == "cuda"
    args = Args(**{**vars(args), "batch_size": B})
    torch.manual_seed(0)
    try:
        memory, patterns, queries, known = _on_device(build(model, args), device)
        paths = paths_of(memory, args.paths)
        combos = [(path, mode, prec) for path in paths for mode in args.modes for prec in args.precisions]
        steps = {c: functools.partial(path_step, memory, patterns, queries, known, *c) for c in combos}
        peaks, oom_rows = {}, []
        for c in list(combos):  # also the warm-up; a combination that does not fit is reported and dropped
            try:
                if cuda:
                    peaks[c] = cuda_peak_mib(steps[c], device)
                elif args.peak_memory:
                    peaks[c] = peak_memory_mib(model, args, c[0], c[1] == "batched", c[2])
            except torch.cuda.OutOfMemoryError:
                memory.zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
                combos.remove(c)
                print(f"{model:8} {B:>5} {c[0]} {c[1]} {c[2]}: OOM, one meta-step does not fit on {device}", flush=True)
                oom_rows.append({"model": model, "batch_size": B, "path": c[0], "mode": c[1], "precision": c[2]})
                oom_rows[-1]["oom"] = True
        if not combos:
            return oom_rows
        counts = {c: count_flops(steps[c]) for c in combos}
        flops, ops = {c: n[0] for c, n in counts.items()}, {c: n[1] for c, n in counts.items()}
        times: dict[tuple[str, str, str], list[tuple[float, float]]] = {c: [] for c in combos}
        rates = []  # the matmul rate, measured in every round beside the steps
        rollout: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}  # (write, read) CPU seconds
        for _ in range(args.repeats):
            for c in combos:
                times[c].append(timed_once(steps[c], device))
            for path in paths:
                set_matmul_precision("fp32", device)
                rollout[path].append(rollout_times(memory, patterns, queries, known, path, device))
            rates.append(matmul_gflops(device))
    except torch.cuda.OutOfMemoryError:
        memory = patterns = queries = known = steps = None  # free the batch before the next size
        gc.collect()
        torch.cuda.empty_cache()
        print(f"{model:8} {B:>5} OOM: one meta-step does not fit on {device}", flush=True)
        return [{"model": model, "batch_size": B, "oom": True}]
    rate = statistics.median(rates)
    cpu = {c: statistics.median(t[1] for t in times[c]) for c in combos}
    rows = []
    for c in combos:
        wall = statistics.median(t[0] for t in times[c])
        seconds = wall if cuda else cpu[c]
        achieved = flops[c] / seconds / 1e9
        peak = peaks.get(c, float("nan"))
        line = (
            f"{model:8} {B:>5} {patterns.shape[1]:>4} {memory.memory_size:>7} {c[0]:9} {c[1]:8} {c[2]:5} {wall:>8.4f} "
            f"{cpu[c]:>8.4f} {1e3 * cpu[c] / B:>10.2f} {flops[c] / 1e9:>7.3f} {achieved:>11.1f} "
            f"{100 * achieved / rate:>7.1f} {peak:>9.1f}"
        )
        row = {
            "model": model, "batch_size": B, "num_patterns": patterns.shape[1], "memory_size": memory.memory_size,
            "path": c[0], "mode": c[1], "precision": c[2], "wall_s": wall, "cpu_s": cpu[c], "gflop": flops[c] / 1e9,
            "achieved_gflops": achieved, "matmul_gflops": rate, "peak_mib": peak, "aten_ops": ops[c], "oom": False,
        }  # fmt: skip
        if cuda:
            peak_tflops = peak_tflops_of(torch.cuda.get_device_name(device), c[2], args.peak_tflops)
            fraction = achieved / 1e3 / peak_tflops
            line += f"  {1 / wall:7.2f}  {achieved / 1e3:7.2f}  {100 * fraction:5.1f}"
            row.update(steps_per_s=1 / wall, peak_tflops=peak_tflops, fraction_of_peak=fraction)
        rows.append(row)
        print(line, flush=True)
    print(f"{model:8} plain 512x512 fp32 matmul, measured in the same rounds: {rate:.1f} {unit}")
    print(f"{model:8} aten ops per meta-step, forward and backward: "
          + ", ".join(f"{c[0]} {c[1]} {c[2]} {ops[c]:,}" for c in combos))  # fmt: skip
    prec = args.precisions[0]
    paths = tuple(p for p in paths if all((p, m, prec) in cpu for m in args.modes))  # those that fitted
    if set(MODES) <= set(args.modes):
        for path in paths:
            ratio = cpu[path, "loop", prec] / cpu[path, "batched", prec]
            print(f"{model:8} batched is {ratio:.2f}x faster per episode than the loop ({path} path, CPU time)")
    for path in paths:
        write, read = (1e3 * statistics.median(t[i] for t in rollout[path]) for i in (0, 1))
        print(
            f"{model:8} without graph (as in rollouts), batched: write {write:.2f} ms, read {read:.2f} ms "
            f"({path} path, CPU time)"
        )
    if len(paths) == 2:
        for mode in args.modes:
            ratio = cpu["autograd", mode, prec] / cpu["closed", mode, prec]
            print(f"{model:8} closed-form path is {ratio:.2f}x faster than autograd ({mode}, CPU time)")
    return rows + oom_rows


if __name__ == "__main__":
    main(tyro.cli(Args))

"""Time the chain of online writes with a graph that an RL update runs, optionally against another git revision.

An update of the recurrent route on the probes (``EBMMRecurrentPolicy``, ``BinaryRecall-Medium``: about 36
sequences of 9 steps per minibatch) writes one row per sequence per step, each write onto the last, with the graph
kept for the meta-gradient; then it backpropagates through all of them. This script runs that chain for the RL
default memory and for ``FAST_CORE``, forward and forward + backward, and prints the aten ops (counted by
``bench_memory.count_flops``) and the CPU time (medians of ``--rounds``).

With ``--against REV`` the package as it was at git revision ``REV`` is extracted (``git archive``) into a
temporary folder under another name, imported beside the current one, and both are timed alternately round by
round in this process, so that the machine's drift hits both alike (runs of a whole benchmark one after the other
differ by 10-20% on the shared CPU). Both memories get the same initial weights, and the script checks that the two
chains compute the same fast weights.

    python scripts/bench_write_chain.py
    python scripts/bench_write_chain.py --against 1a4cdbd --rounds 30
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from io import BytesIO
from pathlib import Path

import torch
import tyro
from bench_memory import count_flops  # scripts/ is on the path when a script runs

from ebmm_rl.cli import usage_error

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    """Command-line options."""

    against: str | None = None
    """git revision whose ebmm_rl to time beside the current one (e.g. a commit before a change)"""
    batch_size: int = 36
    """episodes (sequences) written in parallel"""
    writes: int = 9
    """writes in the chain (the steps of a sequence)"""
    rounds: int = 30
    """timed rounds (the median is printed)"""
    threads: int = 1
    """torch threads"""
    seed: int = 0
    """seed of the weights and the rows"""


def package_at(revision: str, folder: Path) -> str:
    """Extract ``ebmm_rl`` as it was at ``revision`` into ``folder`` as package ``ebmm_at_rev``; return its name."""
    try:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", revision, "ebmm_rl"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        detail = err.stderr.decode().strip() if isinstance(err, subprocess.CalledProcessError) else str(err)
        usage_error(f"--against {revision}: git cannot extract ebmm_rl at that revision ({detail})")
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    name = "ebmm_at_rev"
    (folder / "ebmm_rl").rename(folder / name)
    for path in (folder / name).rglob("*.py"):
        path.write_text(re.sub(r"\bebmm_rl\b", name, path.read_text()))
    return name


def build(package: str, memory_kind: str, seed: int) -> torch.nn.Module:
    """The agents' fresh memory of ``package`` (or the ``FAST_CORE`` sizes), pattern size 32."""
    memory_module = importlib.import_module(f"{package}.memory")
    energy_module = importlib.import_module(f"{package}.energy")
    try:  # the agents' write rules: the core's, or the extractor's before key/value rows
        rl_config = importlib.import_module(f"{package}.rl.core").CORE_EBMM_CONFIG
    except ModuleNotFoundError:
        rl_config = importlib.import_module(f"{package}.rl.extractor").DEFAULT_RL_EBMM_CONFIG
    sizes = dict(hidden_size=64, dynamic_size=32)  # the current defaults, for both packages
    if memory_kind == "fast":
        from ebmm_rl.rl import FAST_CORE

        sizes = dict(hidden_size=FAST_CORE["hidden_size"], dynamic_size=FAST_CORE["dynamic_size"])
        rl_config = replace(rl_config, **FAST_CORE["ebmm"])
    torch.manual_seed(seed)
    energy = energy_module.MLPEnergy(energy_module.MLPConfig(input_size=32, hops=2, **sizes))
    return memory_module.EBMMemory(energy, rl_config)


def chain(memory: torch.nn.Module, rows: torch.Tensor, writes: int, backward: bool) -> dict[str, torch.Tensor]:
    """``writes`` one-row writes with a graph, each onto the last (as the probe route's update); the fast weights."""
    memory.zero_grad(set_to_none=True)
    mask = torch.ones(rows.shape[0], 1, dtype=torch.bool)
    shared = {"schedule": memory.schedule(True)} if hasattr(memory, "schedule") else {}  # revisions before it: none
    state = memory.initial_state(rows.shape[0])
    for _ in range(writes):
        state = memory.write(rows, state, pattern_mask=mask, create_graph=True, check=False, **shared)
    if backward:
        sum(w.sum() for w in state.fast_weights.values()).backward()
    return state.fast_weights


def main(args: Args) -> dict[str, dict[str, float]]:
    """Print one row per (memory, code) and the ratios; return the figures."""
    if min(args.batch_size, args.writes, args.rounds, args.threads) < 1:
        usage_error("--batch-size, --writes, --rounds and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    packages = {"current": "ebmm_rl"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.against is not None:
            sys.path.insert(0, tmp)
            packages = {args.against: package_at(args.against, Path(tmp)), **packages}
        print(f"chain of {args.writes} one-row writes with a graph, {args.batch_size} episodes, {args.rounds} "
              f"rounds; torch threads {torch.get_num_threads()}, load average "
              f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {platform.machine()} {os.cpu_count()} CPUs, "
              f"torch {torch.__version__}")  # fmt: skip
        torch.manual_seed(args.seed)
        rows = torch.rand(args.batch_size, 1, 32)
        results: dict[str, dict[str, float]] = {}
        for kind in ("defaults", "fast"):
            memories = {code: build(package, kind, args.seed) for code, package in packages.items()}
            outputs = {code: chain(m, rows, args.writes, backward=False) for code, m in memories.items()}
            reference = outputs["current"]
            for code, fast in outputs.items():
                for name, w in fast.items():
                    torch.testing.assert_close(w, reference[name], rtol=1e-4, atol=1e-5, msg=f"{code} {name}")
            times: dict[tuple[str, bool], list[float]] = {(c, b): [] for c in memories for b in (False, True)}
            for _ in range(args.rounds):
                for code, memory in memories.items():
                    for backward in (False, True):
                        start = time.process_time()
                        chain(memory, rows, args.writes, backward)
                        times[code, backward].append(time.process_time() - start)
            for code, memory in memories.items():
                counts = [count_flops(partial(chain, memory, rows, args.writes, b))[1] for b in (False, True)]
                figures = {
                    "ops_forward": counts[0],
                    "ops_total": counts[1],
                    "cpu_ms_forward": 1e3 * statistics.median(times[code, False]),
                    "cpu_ms_total": 1e3 * statistics.median(times[code, True]),
                }
                results[f"{kind} {code}"] = figures
        print("| memory | code | aten ops, forward | aten ops, forward + backward | CPU ms, forward | "
              "CPU ms, forward + backward |\n|---|---|---:|---:|---:|---:|")  # fmt: skip
        for key, r in results.items():
            kind, code = key.split(" ", 1)
            print(f"| {kind} | {code} | {r['ops_forward']:,} | {r['ops_total']:,} | {r['cpu_ms_forward']:.2f} | "
                  f"{r['cpu_ms_total']:.2f} |")  # fmt: skip
        if args.against is not None:
            for kind in ("defaults", "fast"):
                now, before = results[f"{kind} current"], results[f"{kind} {args.against}"]
                forward = now["cpu_ms_forward"] / before["cpu_ms_forward"]
                total = now["cpu_ms_total"] / before["cpu_ms_total"]
                print(f"{kind}: current / {args.against} CPU time, forward {forward:.2f}x, with backward {total:.2f}x")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))

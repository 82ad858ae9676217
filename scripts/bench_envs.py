"""Time the memory-probe environments: steps per second, single and vectorised.

For every family at one difficulty level (Medium by default) it times, with a fixed valid action
and resets included in the count:

* ``raw``: the environment object itself (``gym.make(id).unwrapped``);
* ``make``: ``gymnasium.make(id, disable_env_checker=True)`` (only the ``OrderEnforcing`` wrapper);
* ``sync xN`` / ``async xN``: ``SyncVectorEnv`` / ``AsyncVectorEnv`` of N copies, counting every
  sub-environment step (N per ``step()`` call).

Usage::

    python scripts/bench_envs.py                # 20,000 steps per measurement
    python scripts/bench_envs.py --steps 200 --repeats 1   # smoke run
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import tyro

import envs

TARGET_STEPS_PER_S = 20_000
"""Goal for ``BinaryRecall`` Medium, single environment (raw and make), on one CPU core."""


@dataclass
class Args:
    """Time the memory-probe environments: steps per second, single and vectorised."""

    steps: int = 20_000
    """environment steps timed per measurement (all sub-environments together for vector envs)"""
    level: Literal["Easy", "Medium", "Hard"] = "Medium"
    """difficulty level of the ids to time"""
    num_envs: int = 2
    """sub-environments of the vector environments"""
    repeats: int = 3
    """timings per measurement; the best is reported (as timeit advises: the others measure noise)"""
    vector: bool = True
    """also time SyncVectorEnv and AsyncVectorEnv"""
    seed: int = 0
    """seed of the first reset and of the fixed action"""


def time_single(env: gym.Env, steps: int, seed: int) -> float:
    """Steps per second of one environment, resets included."""
    env.action_space.seed(seed)
    action = env.action_space.sample()
    env.reset(seed=seed)
    step, reset = env.step, env.reset
    for _ in range(max(1, steps // 20)):  # warm-up
        if step(action)[2]:
            reset()
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = step(action)
        if terminated or truncated:
            reset()
    return steps / (time.perf_counter() - start)


def time_vector(env: gym.vector.VectorEnv, steps: int, seed: int) -> float:
    """Sub-environment steps per second of a vector environment (it resets itself)."""
    env.action_space.seed(seed)
    actions = env.action_space.sample()
    env.reset(seed=seed)
    calls = max(1, steps // env.num_envs)
    for _ in range(max(1, calls // 20)):
        env.step(actions)
    start = time.perf_counter()
    for _ in range(calls):
        env.step(actions)
    return calls * env.num_envs / (time.perf_counter() - start)


def bench_one(env_id: str, args: Args) -> dict[str, Any]:
    """Time one id in every configuration; returns a row of the table."""
    row: dict[str, Any] = {"id": env_id}
    made = gym.make(env_id, disable_env_checker=True)
    row["T"] = made.unwrapped.episode_length
    row["raw"] = max(time_single(made.unwrapped, args.steps, args.seed) for _ in range(args.repeats))
    row["make"] = max(time_single(made, args.steps, args.seed) for _ in range(args.repeats))
    made.close()
    if args.vector:
        make_fn: Callable[[], gym.Env] = partial(gym.make, "envs:" + env_id, disable_env_checker=True)
        for name, cls in (("sync", gym.vector.SyncVectorEnv), ("async", gym.vector.AsyncVectorEnv)):
            vec = cls([make_fn] * args.num_envs)
            try:
                row[name] = max(time_vector(vec, args.steps, args.seed) for _ in range(args.repeats))
            finally:
                vec.close()
    return row


def main(args: Args) -> list[dict[str, Any]]:
    """Run the benchmark and print a Markdown table; returns its rows."""
    ids = [i for i in envs.ENV_IDS if i.endswith(f"-{args.level}-v0")]
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"# bench_envs: {args.steps} steps per measurement, best of {args.repeats}, level {args.level}\n"
        f"# {platform.platform()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"load average {load[0]:.1f}\n"
        f"# Python {platform.python_version()}, numpy {np.__version__}, gymnasium {gym.__version__}\n"
    )
    columns = ["raw", "make"] + ([f"sync x{args.num_envs}", f"async x{args.num_envs}"] if args.vector else [])
    print("| env | T | " + " | ".join(columns) + " |")
    print("|---|---:|" + "---:|" * len(columns))
    rows = []
    for env_id in ids:
        row = bench_one(env_id, args)
        rows.append(row)
        values = [row["raw"], row["make"]] + ([row["sync"], row["async"]] if args.vector else [])
        print(f"| {env_id} | {row['T']} | " + " | ".join(f"{v:,.0f}" for v in values) + " |", flush=True)
    binary = next(r for r in rows if r["id"].startswith("ebmm/BinaryRecall-"))
    verdict = "meets" if min(binary["raw"], binary["make"]) >= TARGET_STEPS_PER_S else "MISSES"
    print(f"\nBinaryRecall-{args.level} single env: {verdict} the {TARGET_STEPS_PER_S:,} steps/s target.")
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))

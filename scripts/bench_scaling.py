"""Per-step cost and peak memory of the EBMM agents against the episode length ``L``.

Every episode lasts exactly ``L`` steps (gymnasium's ``TimeLimit`` on ``ebmm/Pendulum-NoVel-v1``, whose episodes
never end earlier), so a memory holds up to ``L`` rows. For each ``L`` and route the script times
``model.learn(steps)`` after a warm-up and reports, in CPU milliseconds per environment step (this process's CPU
time), the rollout collection and the updates separately, and the peak tensor memory of one update (the running
sum of the allocations and frees that ``torch.profiler`` records during one ``model.train()`` call; for ``ebmm``
an update whose rollout holds a history of the full ``L - 1`` rows)::

    python scripts/bench_scaling.py                      # L = 8, 32, 128; the three routes and the LSTM
    python scripts/bench_scaling.py --lengths 8 32 --routes ebmm-recurrent lstm

Routes: ``ebmm`` (PPO + ``EBMMExtractor`` over ``EpisodeMemoryWrapper(max_patterns=L)``: the whole episode in the
window), ``ebmm-recurrent`` (``EBMMRecurrentPPO`` at its defaults: gradients through the writes of each
truncation window, rebuilt from the stored states), ``ebmm-recurrent-whole`` (the same, gradients through every
write of a minibatch sequence), ``lstm`` (RecurrentPPO, 64 LSTM units). Same PPO
settings for all: 8 envs in this process, ``--n-steps`` steps per env per rollout, minibatch ``--batch-size``,
``--n-epochs`` epochs; the memory is the ``agents.train`` default.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import torch
import tyro
from stable_baselines3.common.vec_env import DummyVecEnv

import envs  # noqa: F401  (registers the ids)
from ebmm_rl.cli import usage_error

ROUTES = ("ebmm", "ebmm-recurrent", "ebmm-recurrent-whole", "lstm")


@dataclass
class Args:
    """Per-step CPU cost and peak memory of one update against the episode length."""

    lengths: tuple[int, ...] = (8, 32, 128)
    """episode lengths L (at most 200, Pendulum's own limit)"""
    routes: tuple[str, ...] = ROUTES
    """routes to time, among ebmm, ebmm-recurrent, ebmm-recurrent-whole, lstm"""
    steps: int = 1024
    """environment steps timed per (L, route), after a warm-up of one rollout"""
    n_envs: int = 8
    """environments, in this process"""
    n_steps: int = 32
    """rollout steps per env"""
    batch_size: int = 256
    """PPO minibatch size"""
    n_epochs: int = 4
    """PPO epochs per update"""
    threads: int = 1
    """torch CPU threads"""
    seed: int = 0
    """seed"""


def peak_tensor_mib(fn: Callable[[], object]) -> float:
    """Peak live tensor memory (MiB) that ``fn`` allocates on the CPU, from ``torch.profiler``'s memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    running = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak / 2**20


def build(route: str, length: int, args: Args):  # noqa: ANN201  (an SB3 model)
    """The model of ``route`` on ``args.n_envs`` envs whose episodes last ``length`` steps."""
    from sb3_contrib import RecurrentPPO
    from stable_baselines3 import PPO

    from ebmm_rl import EBMMPolicy, EpisodeMemoryWrapper
    from ebmm_rl.rl.recurrent import EBMMRecurrentPPO

    def make() -> gym.Env:
        env = gym.make("ebmm/Pendulum-NoVel-v1", max_episode_steps=length)
        return EpisodeMemoryWrapper(env, max_patterns=length) if route == "ebmm" else env

    env = DummyVecEnv([make] * args.n_envs)
    env.seed(args.seed)
    kw = dict(n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs, seed=args.seed, verbose=0)
    if route == "ebmm":
        return PPO(EBMMPolicy, env, **kw)
    if route == "ebmm-recurrent":
        return EBMMRecurrentPPO(env=env, **kw)
    if route == "ebmm-recurrent-whole":
        return EBMMRecurrentPPO(env=env, policy_kwargs=dict(bptt_steps=None), **kw)
    return RecurrentPPO("MlpLstmPolicy", env, policy_kwargs=dict(lstm_hidden_size=64), **kw)


def bench(route: str, length: int, args: Args) -> dict[str, float]:
    """CPU ms per env step of rollouts and of updates, and the peak tensor MiB of one update."""
    model = build(route, length, args)
    model.learn(args.n_envs * args.n_steps)  # warm-up: one rollout and one update
    times = {"rollout": 0.0, "update": 0.0}
    collect, train = model.collect_rollouts, model.train

    def timed(name: str, fn: Callable) -> Callable:
        def call(*a, **kw):  # noqa: ANN002, ANN003, ANN202
            start = time.process_time()
            out = fn(*a, **kw)
            times[name] += time.process_time() - start
            return out

        return call

    model.collect_rollouts, model.train = timed("rollout", collect), timed("update", train)
    start = model.num_timesteps
    model.learn(args.steps, reset_num_timesteps=False)
    n = model.num_timesteps - start
    model.collect_rollouts, model.train = collect, train
    # The extractor's update writes each sample's history: profile one whose rollout reached the episodes' end.
    while route == "ebmm" and int(model.rollout_buffer.observations["history_len"].max()) < length - 1:
        model.learn(args.n_envs * args.n_steps, reset_num_timesteps=False)
    peak = peak_tensor_mib(train)  # one more update on the last rollout
    model.env.close()
    return {"rollout_ms": 1e3 * times["rollout"] / n, "update_ms": 1e3 * times["update"] / n, "peak_mib": peak}


def main(args: Args) -> dict[tuple[str, int], dict[str, float]]:
    """Print one markdown table: per route and ``L``, the CPU ms per step and the peak MiB, and ratios to ``L[0]``."""
    torch.set_num_threads(args.threads)
    if unknown := sorted(set(args.routes) - set(ROUTES)):
        usage_error(f"unknown routes {unknown}; choose among {list(ROUTES)}")
    if not args.lengths or min(args.lengths) < 1 or max(args.lengths) > 200:
        usage_error(f"--lengths must lie in [1, 200], got {list(args.lengths)}")
    if min(args.steps, args.n_envs, args.n_steps, args.batch_size, args.n_epochs) < 1:
        usage_error("--steps, --n-envs, --n-steps, --batch-size and --n-epochs must be >= 1")
    print(f"ebmm/Pendulum-NoVel-v1 with episodes of L steps, {args.n_envs} envs, n_steps {args.n_steps}, batch "
          f"{args.batch_size}, {args.n_epochs} epochs, {args.steps} timed steps per cell; torch threads "
          f"{torch.get_num_threads()}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}")  # fmt: skip
    results = {}
    print("| route | L | rollout CPU ms/step | update CPU ms/step | total vs first L | peak MiB of one update |")
    print("|---|---:|---:|---:|---:|---:|")
    for route in args.routes:
        first = None
        for length in args.lengths:
            r = results[(route, length)] = bench(route, length, args)
            total = r["rollout_ms"] + r["update_ms"]
            first = total if first is None else first
            print(f"| {route} | {length} | {r['rollout_ms']:.2f} | {r['update_ms']:.2f} | {total / first:.2f}x | "
                  f"{r['peak_mib']:.1f} |", flush=True)  # fmt: skip
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))

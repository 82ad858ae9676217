"""Environment steps per second of SB3 agents with and without an episodic memory, on one environment.

Times ``model.learn(steps)`` of each agent on the same env and reports the steps per CPU-second (this process's
CPU time, which other jobs on the machine do not inflate) of rollout collection alone (inside
``collect_rollouts``) and of the whole ``learn`` (rollouts + updates), beside the wall-clock rate. With
``--repeats R`` the agents run in ``R`` interleaved rounds and the table gives each agent's median, so that a
change of load hits every agent alike; the ratios to ``lstm`` are computed within each round::

    python scripts/bench_rl.py                                # CartPole-NoVel, 8 envs, 2048 steps per agent
    python scripts/bench_rl.py --env ebmm/BinaryRecall-Medium-v0 --n-envs 1 --agents lstm ebmm-recurrent ebmm

Agents: ``mlp`` (PPO, no memory), ``lstm`` (sb3-contrib RecurrentPPO, 64 LSTM units), ``ebmm-recurrent``
(``EBMMRecurrentPPO``: the memory core as the recurrent state, each read backpropagating through the writes of its
``--bptt-steps`` window), ``ebmm-recurrent-whole`` (RecurrentPPO + ``EBMMRecurrentPolicy``, gradients through the
whole minibatch sequence), ``ebmm`` (PPO + ``EBMMExtractor`` with its rollout cache), ``ebmm-nocache`` (the same,
re-writing the whole history at every rollout step), ``ebmm-frozen`` (its memory frozen). The EBMM agents' core
has the ``agents.train`` defaults unless the size flags say otherwise.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, replace

import torch
import tyro

from agents.common import Args as TrainArgs
from agents.common import build_model, make_env
from ebmm_rl.cli import usage_error
from ebmm_rl.rl import EBMMExtractor

AGENTS = ("mlp", "lstm", "ebmm-recurrent", "ebmm-recurrent-whole", "ebmm", "ebmm-nocache", "ebmm-frozen")


@dataclass
class Args:
    """Steps/s of PPO-MLP, RecurrentPPO-LSTM and the EBMM agents, side by side."""

    env: str = "ebmm/CartPole-NoVel-v1"
    """environment id"""
    steps: int = 2048
    """environment steps per agent (``learn(steps)``)"""
    agents: tuple[str, ...] = ("lstm", "ebmm-recurrent")
    """agents to time, among mlp, lstm, ebmm-recurrent, ebmm-recurrent-whole, ebmm, ebmm-nocache, ebmm-frozen"""
    n_steps: int = 32
    """rollout length per env (steps per update = n_steps * n_envs)"""
    batch_size: int = 256
    """PPO minibatch size"""
    n_epochs: int = 4
    """PPO epochs per update"""
    n_envs: int = 8
    """parallel environments (in this process: DummyVecEnv)"""
    max_patterns: int | None = None
    """history window of the PPO memory agents (agents.train's --max-patterns)"""
    bptt_steps: int = TrainArgs.bptt_steps or 8
    """ebmm-recurrent's truncation window (agents.train's --bptt-steps)"""
    embed_size: int = TrainArgs.embed_size
    """EBMM core: embedding entries (agents.train's --embed-size)"""
    key_size: int = TrainArgs.key_size
    """EBMM core: learned key entries"""
    value_size: int = TrainArgs.value_size
    """EBMM core: value entries"""
    hidden_size: int = TrainArgs.hidden_size
    """EBMM core: hidden size of its MLPEnergy"""
    dynamic_size: int = TrainArgs.dynamic_size
    """EBMM core: memory units of its MLPEnergy"""
    write_steps: int = TrainArgs.write_steps
    """EBMM core: write steps T"""
    read_steps: int = TrainArgs.read_steps
    """EBMM core: read steps K"""
    repeats: int = 1
    """interleaved rounds over the agents (the table shows medians)"""
    threads: int = 1
    """torch CPU threads"""
    seed: int = 0
    """seed"""


CORE_FIELDS = ("embed_size", "key_size", "value_size", "hidden_size", "dynamic_size", "write_steps", "read_steps")


def bench(args: Args, agent: str) -> dict[str, float]:
    """Steps per CPU-second of rollouts and of ``learn``, and ``learn``'s steps per wall-second, of ``agent``."""
    memory = {"ebmm-recurrent-whole": "ebmm-recurrent", "ebmm-nocache": "ebmm", "ebmm-frozen": "ebmm"}.get(agent, agent)
    train_args = replace(
        TrainArgs(),
        env=args.env,
        memory=memory,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        n_envs=args.n_envs,
        vec_env="dummy",
        max_patterns=args.max_patterns,
        seed=args.seed,
        freeze_memory=agent == "ebmm-frozen",
        bptt_steps=None if agent == "ebmm-recurrent-whole" else args.bptt_steps,
        eval_freq=0,
        progress_bar=False,
        **{name: getattr(args, name) for name in CORE_FIELDS},
    )
    env = make_env(train_args)
    model = build_model(train_args, env)
    extractor = getattr(model.policy, "features_extractor", None)
    if agent == "ebmm-nocache" and isinstance(extractor, EBMMExtractor):
        extractor.cache_size = 0
    rollout_cpu = 0.0
    collect = model.collect_rollouts

    def timed_collect(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        nonlocal rollout_cpu
        start = time.process_time()
        out = collect(*a, **kw)
        rollout_cpu += time.process_time() - start
        return out

    model.collect_rollouts = timed_collect  # type: ignore[method-assign]
    start, cpu = time.perf_counter(), time.process_time()
    model.learn(args.steps)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    env.close()
    n = model.num_timesteps
    return {"rollout": n / rollout_cpu, "learn": n / cpu, "learn_wall": n / wall}


def main(args: Args) -> dict[str, dict[str, float]]:
    """Print a markdown table of steps/s per agent (medians over the rounds) and the ratios to ``lstm``."""
    torch.set_num_threads(args.threads)
    unknown = set(args.agents) - set(AGENTS)
    if unknown:
        usage_error(f"unknown agents {sorted(unknown)}; choose among {AGENTS}")
    small = [n for n in ("repeats", "steps", "bptt_steps", "n_envs", "n_steps", "batch_size", "n_epochs", *CORE_FIELDS)
             if getattr(args, n) < 1]  # fmt: skip
    if small:
        usage_error(f"{', '.join('--' + n.replace('_', '-') for n in small)} must be >= 1")
    print(f"{args.env}, {args.n_envs} env(s), {args.steps} steps, n_steps {args.n_steps}, batch {args.batch_size}, "
          f"{args.n_epochs} epochs, {args.repeats} round(s); EBMM core "
          f"{', '.join(f'{n} {getattr(args, n)}' for n in CORE_FIELDS)}, bptt_steps {args.bptt_steps}; "
          f"torch threads {torch.get_num_threads()}, "
          f"load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {platform.machine()} {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}")  # fmt: skip
    rounds: list[dict[str, dict[str, float]]] = []
    for _ in range(args.repeats):
        rounds.append({agent: bench(args, agent) for agent in args.agents})
    results = {a: {k: statistics.median(r[a][k] for r in rounds) for k in rounds[0][a]} for a in args.agents}
    print("| agent | rollout steps/CPU-s | learn steps/CPU-s | learn steps/wall-s |\n|---|---:|---:|---:|")
    for agent, r in results.items():
        print(f"| {agent} | {r['rollout']:,.0f} | {r['learn']:,.0f} | {r['learn_wall']:,.0f} |")
    if "lstm" in results:
        for agent in args.agents:
            if agent != "lstm":
                ratio = {k: statistics.median(r[agent][k] / r["lstm"][k] for r in rounds) for k in ("rollout", "learn")}
                print(f"{agent} / lstm (CPU time): rollout {ratio['rollout']:.2f}x, learn {ratio['learn']:.2f}x")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))

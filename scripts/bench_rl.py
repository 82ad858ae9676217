"""Environment steps per second of SB3 agents with and without an episodic memory, on one environment.

Times ``model.learn(steps)`` of each agent on the same env and reports the steps per CPU-second (this process's
CPU time, which other jobs on the machine do not inflate) of rollout collection alone (inside
``collect_rollouts``) and of the whole ``learn`` (rollouts + updates), beside the wall-clock rate. With
``--repeats R`` the agents run in ``R`` interleaved rounds and the table gives each agent's median, so that a
change of load hits every agent alike; the ratios to ``lstm`` are computed within each round::

    python scripts/bench_rl.py                                # BinaryRecall-Medium, 2048 steps per agent
    python scripts/bench_rl.py --env ebmm/CartPole-NoVel-v1 --n-envs 8 --agents lstm ebmm-recurrent ebmm

Agents: ``mlp`` (PPO, no memory), ``ebmm`` (PPO + EBMMExtractor with its rollout cache), ``ebmm-nocache``
(the same, re-writing the whole history at every rollout step), ``ebmm-frozen`` (frozen memory: no higher-order
graph in updates), ``ebmm-gradnorm`` (writing loss with the paper's ``α‖∇ₓE‖²`` term), ``ebmm-recurrent``
(sb3-contrib RecurrentPPO with the memory as its recurrent state, ``EBMMRecurrentPolicy``), ``ebmm-recurrent-tbptt``
(the same trained by ``EBMMRecurrentPPO`` with ``bptt_steps=1``, or ``--bptt-steps k``: each read backpropagates
through its last ``k`` writes only, from the states the rollout stored), ``lstm`` (sb3-contrib RecurrentPPO).
The EBMM memory is a fresh MLPEnergy with the ``agents.train`` defaults (hidden 64, dynamic 32, 3 write and 3
read steps, no grad-norm term).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, replace

import torch
import tyro

from agents.train import Args as TrainArgs
from agents.train import build_model, make_env
from ebmm_rl.cli import usage_error
from ebmm_rl.rl import EBMMExtractor

AGENTS = (
    "mlp",
    "ebmm",
    "ebmm-nocache",
    "ebmm-frozen",
    "ebmm-gradnorm",
    "ebmm-recurrent",
    "ebmm-recurrent-tbptt",
    "lstm",
)


@dataclass
class Args:
    """Steps/s of PPO-MLP, PPO+EBMM (with and without the rollout cache), RecurrentPPO+EBMM and RecurrentPPO."""

    env: str = "ebmm/BinaryRecall-Medium-v0"
    """environment id"""
    steps: int = 2048
    """environment steps per agent (``learn(steps)``)"""
    agents: tuple[str, ...] = AGENTS
    """agents to time, among mlp, ebmm, ebmm-nocache, ebmm-frozen, ebmm-gradnorm, ebmm-recurrent,
    ebmm-recurrent-tbptt, lstm"""
    n_steps: int = 256
    """rollout length (steps per update)"""
    batch_size: int = 64
    """PPO minibatch size"""
    n_epochs: int = 4
    """PPO epochs per update"""
    n_envs: int = 1
    """parallel environments (in this process: DummyVecEnv)"""
    max_patterns: int | None = None
    """history window of the PPO memory agents (agents.train's --max-patterns)"""
    bptt_steps: int = 1
    """writes each read backpropagates through, for ebmm-recurrent-tbptt (agents.train's --bptt-steps)"""
    hidden_size: int = TrainArgs.hidden_size
    """hidden size of the EBMM agents' MLPEnergy (agents.train's --hidden-size)"""
    dynamic_size: int = TrainArgs.dynamic_size
    """memory units of the EBMM agents' MLPEnergy (agents.train's --dynamic-size)"""
    write_steps: int = TrainArgs.write_steps
    """write steps T of the EBMM agents (agents.train's --write-steps)"""
    read_steps: int = TrainArgs.read_steps
    """read steps K of the EBMM agents (agents.train's --read-steps)"""
    chunk_size: int = TrainArgs.chunk_size
    """patterns per write of the PPO extractor agents (agents.train's --chunk-size; >= the history length writes
    it at once, the paper's batch writing); the recurrent agents always write one per step"""
    repeats: int = 1
    """interleaved rounds over the agents (the table shows medians)"""
    threads: int = 1
    """torch CPU threads"""
    seed: int = 0
    """seed"""


def bench(args: Args, agent: str) -> dict[str, float]:
    """Steps per CPU-second of rollouts and of ``learn``, and ``learn``'s steps per wall-second, of ``agent``."""
    memory = agent if agent in ("ebmm-recurrent", "mlp", "lstm") else "ebmm"
    memory = "ebmm-recurrent" if agent == "ebmm-recurrent-tbptt" else memory
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
        grad_norm_term=agent == "ebmm-gradnorm",
        bptt_steps=args.bptt_steps if agent == "ebmm-recurrent-tbptt" else None,
        hidden_size=args.hidden_size,
        dynamic_size=args.dynamic_size,
        write_steps=args.write_steps,
        read_steps=args.read_steps,
        chunk_size=1 if memory == "ebmm-recurrent" else args.chunk_size,
        eval_freq=0,
        progress_bar=False,
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
    if min(args.repeats, args.steps, args.bptt_steps, args.chunk_size, args.write_steps, args.read_steps) < 1:
        usage_error("--repeats, --steps, --bptt-steps, --chunk-size, --write-steps and --read-steps must be >= 1")
    print(f"{args.env}, {args.n_envs} env(s), {args.steps} steps, n_steps {args.n_steps}, batch {args.batch_size}, "
          f"{args.n_epochs} epochs, {args.repeats} round(s); EBMM hidden {args.hidden_size}, dynamic "
          f"{args.dynamic_size}, T {args.write_steps}, K {args.read_steps}, extractor chunk {args.chunk_size}; "
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

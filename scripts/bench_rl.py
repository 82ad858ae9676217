"""Environment steps per second of SB3 agents with and without an episodic memory, on one environment.

Times ``model.learn(steps)`` of each agent on the same env (1 env, DummyVecEnv) and reports the steps/s of
rollout collection alone (time inside ``collect_rollouts``) and of the whole ``learn`` (rollouts + updates)::

    python scripts/bench_rl.py                                # BinaryRecall-Medium, 2048 steps per agent
    python scripts/bench_rl.py --env ebmm/BinaryRecall-Easy-v0 --steps 256 --agents mlp ebmm

Agents: ``mlp`` (PPO, no memory), ``ebmm`` (PPO + EBMMExtractor with its rollout cache), ``ebmm-nocache``
(the same, re-writing the whole history at every rollout step), ``ebmm-frozen`` (frozen memory: no higher-order
graph in updates), ``ebmm-nogradnorm`` (writing loss without the ``α‖∇ₓE‖²`` term), ``ebmm-recurrent``
(sb3-contrib RecurrentPPO with the memory as its recurrent state, ``EBMMRecurrentPolicy``), ``lstm`` (sb3-contrib
RecurrentPPO). The EBMM memory is a fresh MLPEnergy with the ``agents.train`` defaults (hidden 64, dynamic 32, 3 write
and 3 read steps).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, replace

import torch
import tyro

from agents.train import Args as TrainArgs
from agents.train import build_model, make_env
from ebmm_rl.rl import EBMMExtractor

AGENTS = ("mlp", "ebmm", "ebmm-nocache", "ebmm-frozen", "ebmm-nogradnorm", "ebmm-recurrent", "lstm")


@dataclass
class Args:
    """Steps/s of PPO-MLP, PPO+EBMM (with and without the rollout cache), RecurrentPPO+EBMM and RecurrentPPO."""

    env: str = "ebmm/BinaryRecall-Medium-v0"
    """environment id"""
    steps: int = 2048
    """environment steps per agent (``learn(steps)``)"""
    agents: tuple[str, ...] = AGENTS
    """agents to time, among mlp, ebmm, ebmm-nocache, ebmm-frozen, ebmm-nogradnorm, ebmm-recurrent, lstm"""
    n_steps: int = 256
    """rollout length (steps per update)"""
    batch_size: int = 64
    """PPO minibatch size"""
    n_epochs: int = 4
    """PPO epochs per update"""
    threads: int = 1
    """torch CPU threads"""
    seed: int = 0
    """seed"""


def bench(args: Args, agent: str) -> tuple[float, float]:
    """``(rollout steps/s, learn steps/s)`` of ``agent``."""
    memory = agent if agent in ("ebmm-recurrent", "mlp", "lstm") else "ebmm"
    train_args = replace(
        TrainArgs(),
        env=args.env,
        memory=memory,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        seed=args.seed,
        freeze_memory=agent == "ebmm-frozen",
        grad_norm_term=agent != "ebmm-nogradnorm",
        eval_freq=0,
    )
    env = make_env(train_args)
    model = build_model(train_args, env)
    extractor = getattr(model.policy, "features_extractor", None)
    if agent == "ebmm-nocache" and isinstance(extractor, EBMMExtractor):
        extractor.cache_size = 0
    rollout_time = 0.0
    collect = model.collect_rollouts

    def timed_collect(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        nonlocal rollout_time
        start = time.perf_counter()
        out = collect(*a, **kw)
        rollout_time += time.perf_counter() - start
        return out

    model.collect_rollouts = timed_collect  # type: ignore[method-assign]
    start = time.perf_counter()
    model.learn(args.steps)
    total = time.perf_counter() - start
    env.close()
    return model.num_timesteps / rollout_time, model.num_timesteps / total


def main(args: Args) -> None:
    """Print a markdown table of steps/s per agent."""
    torch.set_num_threads(args.threads)
    unknown = set(args.agents) - set(AGENTS)
    if unknown:
        raise ValueError(f"unknown agents {sorted(unknown)}; choose among {AGENTS}")
    print(f"{args.env}, 1 env, {args.steps} steps, n_steps {args.n_steps}, batch {args.batch_size}, "
          f"{args.n_epochs} epochs, {args.threads} thread(s); {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}")  # fmt: skip
    print("| agent | rollout steps/s | learn steps/s |\n|---|---:|---:|")
    results = {}
    for agent in args.agents:
        results[agent] = bench(args, agent)
        print(f"| {agent} | {results[agent][0]:,.0f} | {results[agent][1]:,.0f} |", flush=True)
    if "lstm" in results:
        for agent in AGENTS[1:-1]:
            if agent in results:
                ratio = [results[agent][i] / results["lstm"][i] for i in range(2)]
                print(f"{agent} / lstm: rollout {ratio[0]:.2f}x, learn {ratio[1]:.2f}x")


if __name__ == "__main__":
    main(tyro.cli(Args))

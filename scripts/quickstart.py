"""The main job: an agent with an EBMM memory beside a memoryless one on the same memory probe, a few CPU minutes.

Trains PPO + :class:`~ebmm_rl.rl.EBMMExtractor` (``agents.train --memory ebmm``: a fresh memory, trained end to end
by the RL loss) and PPO-MLP (``--memory mlp``, no memory) with the same settings on ``ebmm/DelayedRecall-Easy-v0``
(remember a 2-bit context across 3 distractor steps; without a memory every policy scores 0.5 on average), then
evaluates each on fresh episodes and prints a table: each agent's mean evaluation return, the exact chance return
(the best memoryless policy) and the oracle's (a policy playing ``get_state()["answer"]``), and the TensorBoard
folder::

    python scripts/quickstart.py
    python scripts/quickstart.py --env ebmm/KeyValueRecall-Easy-v0 --total-timesteps 16000
    tensorboard --logdir runs/quickstart

Every agent: 8 envs stepped in one process, rollouts of 128 steps per env, minibatch 64, 10 PPO epochs, Adam 1e-3,
``gamma = 0`` (a probe scores an action only at its own step) and linear policy/value heads on the features, as in
``docs/rl_results.md``; 1 torch thread. Progress: a bar per agent on a terminal, else a line at every quarter of
its run; ``--verbose`` adds SB3's logger table after every rollout. The run folders hold the models
(``python -m agents.evaluate <run>/model.zip``), ``evaluations.npz`` (``scripts/plot_curves.py``) and the
TensorBoard logs (``eval/``, and the EBMM agent's ``memory/`` curves).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro
from rl_results import agent_description, reference_returns  # scripts/, beside this file

from agents.common import Args as TrainArgs
from agents.common import UsageError, usage_error, validate
from agents.evaluate import Args as EvalArgs
from agents.evaluate import evaluate
from agents.train import main as train

PROG = "python scripts/quickstart.py"
ROLLOUT = 8 * 128
"""Env steps per rollout: 8 envs x 128 steps."""


@dataclass
class Args:
    """Train an EBMM agent and a memoryless one on a memory probe; print their evaluation returns beside chance."""

    env: str = "ebmm/DelayedRecall-Easy-v0"
    """memory probe (``ebmm/...``: they know their chance and oracle returns)"""
    agents: tuple[str, ...] = ("mlp", "ebmm")
    """agents.train ``--memory`` choices, trained one after the other with the same settings"""
    total_timesteps: int = 16_000
    """environment steps of training per agent"""
    eval_episodes: int = 200
    """final evaluation episodes per agent (deterministic policy, env seed ``seed + 10000``), and oracle episodes"""
    seed: int = 0
    """seed of the agents and the training envs"""
    run_root: str = "runs/quickstart"
    """folder of the run folders (TensorBoard: ``tensorboard --logdir <run_root>``)"""
    threads: int = 1
    """torch CPU threads"""
    progress_bar: bool = True
    """SB3's progress bar for each agent (a line at every quarter of the run when stdout is not a terminal)"""
    verbose: bool = False
    """also print SB3's logger table after every rollout (they are in TensorBoard either way)"""


def train_args(args: Args, memory: str) -> TrainArgs:
    """``agents.train`` settings of one agent (``docs/rl_results.md``'s PPO settings at the quickstart's budget)."""
    return dataclasses.replace(
        TrainArgs(),
        env=args.env,
        memory=memory,
        total_timesteps=args.total_timesteps,
        seed=args.seed,
        n_envs=8,
        vec_env="dummy",
        gamma=0.0,
        learning_rate=1e-3,
        n_epochs=10,
        net_arch=(),
        eval_freq=max(args.total_timesteps // 4, ROLLOUT),  # 4 evaluations, at most one per rollout
        eval_episodes=50,
        run_root=args.run_root,
        progress_bar=args.progress_bar,
        log_stdout=args.verbose,
        threads=args.threads,
    )


def run(args: Args) -> list[dict]:
    """Train and evaluate every agent; returns one row per agent (return, steps, wall and CPU seconds, run folder)."""
    if args.eval_episodes < 1:
        raise UsageError(f"--eval-episodes must be at least 1, got {args.eval_episodes}")
    if not args.agents:
        raise UsageError("--agents needs at least one agents.train --memory choice")
    for memory in args.agents:
        validate(train_args(args, memory))  # every agent's settings, before training any
    rows = []
    for memory in args.agents:
        print(f"training {memory} ({agent_description(memory)}) for {args.total_timesteps} steps ...", flush=True)
        start, cpu = time.perf_counter(), time.process_time()
        model = train(train_args(args, memory))
        run_dir = Path(model.logger.get_dir())
        result = evaluate(
            EvalArgs(model=str(run_dir / "model.zip"), episodes=args.eval_episodes, seed=args.seed + 10_000)
        )
        rows.append(
            dict(
                agent=memory,
                mean_return=result["mean_return"],
                steps=int(model.num_timesteps),
                wall_s=time.perf_counter() - start,
                cpu_s=time.process_time() - cpu,
                run_dir=str(run_dir),
            )
        )
    return rows


def format_table(rows: list[dict], chance: float, oracle: float, episodes: int) -> str:
    """The markdown table: a row per agent, then chance and oracle."""
    lines = [
        f"| agent | evaluation return (mean of {episodes} episodes) | steps | wall s | CPU s |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['agent']} | {row['mean_return']:.3f} | {row['steps']} | {row['wall_s']:.0f} | {row['cpu_s']:.0f} |"
        )
    lines.append(f"| chance (best memoryless policy, exact) | {chance:.3f} | | | |")
    lines.append(f"| oracle (plays the answer, {episodes} episodes) | {oracle:.3f} | | | |")
    return "\n".join(lines)


def main(args: Args) -> str:
    """Run the job and print the table and the TensorBoard command; returns the printed text."""
    torch.set_num_threads(args.threads)
    start, cpu = time.perf_counter(), time.process_time()
    validate(train_args(args, args.agents[0] if args.agents else "mlp"))  # the env id, before playing it
    chance, _, oracle = reference_returns(args.env, args.eval_episodes)
    if math.isnan(chance):
        raise UsageError(f"{args.env} is not a memory probe (no chance or oracle return); use an ebmm/ probe")
    rows = run(args)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = "\n".join(
        [
            f"\n{args.env}: {args.total_timesteps} training steps per agent, seed {args.seed}",
            format_table(rows, chance, oracle, args.eval_episodes),
            f"\nin all: {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} s CPU "
            f"({torch.get_num_threads()} torch thread(s), load average {load})",
            *(f"{row['agent']}: {row['run_dir']}" for row in rows),
            f"TensorBoard: tensorboard --logdir {args.run_root}",
        ]
    )
    print(text)
    return text


if __name__ == "__main__":
    cli_args = tyro.cli(Args, prog=PROG)
    try:
        main(cli_args)
    except UsageError as error:
        usage_error(str(error), PROG)

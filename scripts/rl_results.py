"""Results table: every agent on every environment family for several seeds at one fixed step budget.

Each (env, agent, seed) run trains the agent of ``agents.train`` (its defaults, ``--memory <agent>``) for ``--steps``
env steps, then evaluates the deterministic policy on ``--eval-episodes`` fresh episodes (env seed ``seed + 10000``)
and saves a small JSON under ``--out-dir`` (outside the repository), so a killed sweep continues where it stopped.
The table gives, per env, the mean evaluation return over seeds ± the 95% confidence interval of that mean (Student t
over seeds), the chance level (best memoryless policy, exact) and the return of the oracle policy (playing
``get_state()["answer"]``, measured on the same episodes)::

    python scripts/rl_results.py --steps 5000 --doc docs/rl_results.md
    python scripts/rl_results.py --envs ebmm/BinaryRecall-Easy-v0 --agents mlp ebmm --seeds 0 --steps 64

The agent ``ebmm-recurrent-pre`` is ``ebmm-recurrent`` whose core starts from a checkpoint of
``scripts/meta_train_env.py`` for that env (``--meta-dir``/``env__<id>__0/best.pt``, pre-trained on the env's own
episodes without labels); ``ebmm-recurrent-fast`` the smaller core; ``ebmm-recurrent-whole`` gradients through
whole sequences; ``ebmm-recurrent-aux`` the auxiliary loss; ``ebmm-recurrent-fresh`` a fresh memory instead of
the shipped prior; ``ebmm-old`` the design before key/value rows
(:data:`OLD_AGENT`: its runs come from that revision)::

    python scripts/rl_results.py --agents mlp lstm ebmm-recurrent ebmm-recurrent-pre --meta-dir /work/runs_rl/meta

``--doc`` replaces the block between ``<!-- rl_results:begin -->`` and ``<!-- rl_results:end -->`` of that file
(appending one if there is none); ``--out`` always receives the table alone. ``--plot`` draws one panel per env
(every agent's mean return with its 95% interval, chance and oracle as labelled lines); ``--replot <doc>`` redraws
it from the table already in a doc, without the per-run JSONs::

    python scripts/rl_results.py --replot docs/rl_results.md --plot docs/rl_results.png
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import tyro
from stable_baselines3.common.evaluation import evaluate_policy
from tqdm.auto import tqdm

import envs  # noqa: F401  (registers the ids)
from agents.common import Args as TrainArgs
from agents.common import build_model, make_env, memory_kind
from agents.common import env_id as train_env_id
from ebmm_rl.rl import FAST_CORE
from ebmm_rl.stats import mean_ci as t_mean_ci

MEDIUM = tuple(f"ebmm/{f}-Medium-v0" for f in ("BinaryRecall", "KeyValueRecall", "ImageRecall", "Familiarity",
                                                "DelayedRecall"))  # fmt: skip
"""The Medium variant of every environment family."""
BEGIN, END = "<!-- rl_results:begin -->", "<!-- rl_results:end -->"
"""Markers of the generated block in ``--doc``."""


@dataclass
class Args:
    """Train every agent on every env for several seeds at one step budget; write the table of returns."""

    envs: tuple[str, ...] = MEDIUM
    """environment ids (one table row each)"""
    agents: tuple[str, ...] = ("mlp", "frame-stack", "lstm", "ebmm")
    """agents: ``--memory`` choices of agents.train, or ebmm-recurrent-pre, ebmm-recurrent-fast,
    ebmm-recurrent-whole, ebmm-recurrent-aux, ebmm-recurrent-fresh, ebmm-old (one table column each)"""
    seeds: tuple[int, ...] = (0, 1, 2)
    """seeds of agent and environments"""
    steps: int = 5000
    """env steps of training per run (the same for every agent and env)"""
    eval_episodes: int = 100
    """evaluation episodes per run (deterministic policy)"""
    out_dir: str = "/work/runs_rl/results"
    """folder of the per-run JSON results (keep it outside the repository)"""
    out: str | None = None
    """file to write the markdown table to (default: ``out_dir/table.md``)"""
    learning_rate: float | None = None
    """Adam learning rate of every agent (default: agents.train's, 3e-4)"""
    gamma: float | None = None
    """discount of every agent (default: agents.train's, 0.99; 0 fits these probes, whose actions only matter at
    the scored step)"""
    n_epochs: int | None = None
    """PPO epochs per rollout of every agent (default: agents.train's, 4)"""
    net_arch: tuple[int, ...] | None = None
    """policy/value MLP of every agent (default: agents.train's, 64 64; give --net-arch alone for linear heads)"""
    batch_size: int | None = None
    """PPO minibatch size of every agent (default: agents.train's, 64)"""
    n_envs: int | None = None
    """parallel environments of every agent (default: agents.train's, 1)"""
    vec_env: Literal["auto", "dummy", "subproc"] | None = None
    """agents.train's --vec-env of every agent (``dummy`` runs the envs in one process: the memory agents then write
    and read all envs' memories in one batch)"""
    n_steps: int | None = None
    """rollout steps per env of every agent (default: agents.train's, 128)"""
    protocol: Literal["auto", "generic", "probe"] | None = None
    """agents.train's --protocol (``generic``: the probes without their phase protocol)"""
    max_patterns: int | None = None
    """agents.train's --max-patterns (history window of the PPO memory agents)"""
    include_action_reward: bool | None = None
    """agents.train's --include-action-reward (every agent sees the previous action and reward)"""
    meta_dir: str = "runs"
    """folder of scripts/meta_train_env.py runs, for the agent ebmm-recurrent-pre"""
    doc: str | None = None
    """markdown file whose generated block (between the rl_results markers) receives the table"""
    plot: str | None = None
    """PNG file for a bar chart of the table: one panel per env, every agent's mean return with its 95% CI, and the
    env's chance and oracle returns as labelled lines"""
    replot: str | None = None
    """redraw --plot from the table already in this markdown file (its rl_results block) and stop, training
    nothing: for when the per-run JSONs are no longer there"""
    threads: int = 1
    """torch CPU threads"""
    progress: bool = True
    """show a progress bar over the runs"""


def result_path(out_dir: str | Path, env_id: str, agent: str, seed: int, steps: int) -> Path:
    """Where the JSON of one run lives."""
    return Path(out_dir) / f"{env_id.replace('/', '-')}__{agent}__{seed}__{steps}.json"


PRETRAINED_AGENT = "ebmm-recurrent-pre"
"""``ebmm-recurrent`` whose core starts from a ``scripts/meta_train_env.py`` run on the env (pre-trained on its own
random-policy episodes, no labels) and keeps learning from the RL loss."""
FAST_AGENT = "ebmm-recurrent-fast"
"""``ebmm-recurrent`` with the smaller core :data:`ebmm_rl.rl.FAST_CORE`."""
WHOLE_AGENT = "ebmm-recurrent-whole"
"""``ebmm-recurrent`` with gradients through every write of a minibatch sequence (``bptt_steps=None``)."""
FRESH_AGENT = "ebmm-recurrent-fresh"
"""``ebmm-recurrent`` whose memory starts fresh instead of from the shipped prior (``memory_prior=None``)."""
AUX_AGENT = "ebmm-recurrent-aux"
"""``ebmm-recurrent`` with the label-free auxiliary loss (``aux_coef=1``)."""
OLD_AGENT = "ebmm-old"
"""The recurrent agent of the design before key/value rows (rows = the encoded observation, reads without a clamped
key, the prior's implicit forgetting), ``EBMMRecurrentPPO`` with ``bptt_steps=1`` at that design's defaults. Its
code is gone from this revision: its runs come from that revision's own ``rl_results.py`` (``OLD_REVISION``, the
agent ``ebmm-recurrent-tbptt``) with the same settings, their JSON files renamed to this agent."""
OLD_REVISION = "8723b79"
"""The last revision of the design before key/value rows."""

DESCRIPTIONS = {
    PRETRAINED_AGENT: "EBMMRecurrentPPO, core pre-trained on the env's own episodes (no labels)",
    FAST_AGENT: "EBMMRecurrentPPO with the smaller FAST_CORE",
    WHOLE_AGENT: "EBMMRecurrentPPO, gradients through the whole sequence (bptt_steps=None)",
    AUX_AGENT: "EBMMRecurrentPPO with the label-free auxiliary loss (aux_coef=1)",
    FRESH_AGENT: "EBMMRecurrentPPO, memory fresh instead of the shipped prior",
    OLD_AGENT: f"the design before key/value rows (revision {OLD_REVISION}), EBMMRecurrentPPO, bptt_steps=1",
}


def agent_description(agent: str) -> str:
    """One line saying what ``agent`` is: :data:`DESCRIPTIONS` or ``agents.train``'s description of the memory."""
    if agent in DESCRIPTIONS:
        return DESCRIPTIONS[agent]
    try:
        return memory_kind(agent).description
    except ValueError:
        return agent


def meta_checkpoint(meta_dir: str | Path, env_id: str) -> Path:
    """The ``best.pt`` of ``scripts/meta_train_env.py --env env_id`` (seed 0) under ``meta_dir``."""
    return Path(meta_dir) / f"env__{env_id.split('/')[-1]}__0" / "best.pt"


def agent_args(env_id: str, agent: str, meta_dir: str | Path = "runs") -> dict[str, Any]:
    """``agents.train.Args`` fields of ``agent``: a ``--memory`` choice, or one of :data:`DESCRIPTIONS`.

    Raises:
        FileNotFoundError: the pre-trained core of :data:`PRETRAINED_AGENT` is missing, or :data:`OLD_AGENT` (whose
            runs come from another revision) has no result yet; the message says how to make it.
    """
    if agent == FAST_AGENT:
        fields = {k: v for k, v in FAST_CORE.items() if k != "ebmm"}
        return dict(memory="ebmm-recurrent", **fields, **FAST_CORE["ebmm"])
    if agent == WHOLE_AGENT:
        return dict(memory="ebmm-recurrent", bptt_steps=None)
    if agent == AUX_AGENT:
        return dict(memory="ebmm-recurrent", aux_coef=1.0)
    if agent == FRESH_AGENT:
        return dict(memory="ebmm-recurrent", memory_prior=None)
    if agent == OLD_AGENT:
        raise FileNotFoundError(
            f"{agent} runs with the code of revision {OLD_REVISION}: git worktree add /tmp/old {OLD_REVISION}, run its "
            f"scripts/rl_results.py --agents ebmm-recurrent-tbptt with the same settings and --out-dir, then rename "
            f"the JSON files from __ebmm-recurrent-tbptt__ to __{agent}__"
        )
    if agent != PRETRAINED_AGENT:
        memory_kind(agent)
        return dict(memory=agent)
    checkpoint = meta_checkpoint(meta_dir, env_id)
    if not checkpoint.exists():
        raise FileNotFoundError(
            f"{agent} needs {checkpoint}: run python scripts/meta_train_env.py --env {env_id} --run-root {meta_dir}, "
            "or pass --meta-dir"
        )
    return dict(memory="ebmm-recurrent", memory_checkpoint=str(checkpoint))


def run_one(
    env_id: str,
    agent: str,
    seed: int,
    steps: int,
    eval_episodes: int,
    meta_dir: str | Path = "runs",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one agent (``agents.train`` defaults, then ``overrides``) and evaluate it; returns the JSON-able result."""
    fields = {**agent_args(env_id, agent, meta_dir), **(overrides or {})}
    train_args = replace(TrainArgs(), env=env_id, seed=seed, total_timesteps=steps, eval_freq=0, **fields)
    env = make_env(train_args)
    model = build_model(train_args, env)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.learn(steps)
    train_seconds = time.perf_counter() - start
    train_cpu_seconds = time.process_time() - cpu_start
    eval_env = make_env(train_args, n_envs=1, seed=seed + 10_000)
    start = time.perf_counter()
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=eval_episodes, deterministic=True,
                                 return_episode_rewards=True)  # fmt: skip
    eval_seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start  # training + evaluation, this process's CPU time
    env.close()
    eval_env.close()
    return dict(
        env=env_id,
        agent=agent,
        seed=seed,
        steps=int(model.num_timesteps),
        eval_episodes=eval_episodes,
        mean_return=float(np.mean(returns)),
        returns=[float(r) for r in returns],
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
        cpu_seconds=cpu_seconds,
        train_cpu_seconds=train_cpu_seconds,
        steps_per_s=model.num_timesteps / train_seconds,
        steps_per_cpu_s=model.num_timesteps / train_cpu_seconds,
        train_args=asdict(train_args),
        finished=time.strftime("%Y-%m-%d %H:%M:%S"),
    )


@functools.cache
def reference_returns(env_id: str, episodes: int, seed: int = 10_000) -> tuple[float, float, float]:
    """``(chance, max, oracle)``: the env's exact chance and maximum returns and the oracle's mean return.

    Deterministic for its arguments, so it is cached: the table and the plot share one oracle run per env.
    """
    env = gym.make(train_env_id(env_id))
    base = env.unwrapped
    if not hasattr(base, "get_state"):  # not a memory probe: no exact chance, no oracle
        return math.nan, math.nan, math.nan
    env.action_space.seed(seed)
    total = 0.0
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        done = False
        while not done:
            answer = base.get_state()["answer"]
            action = env.action_space.sample() if answer is None else answer
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        obs, _ = env.reset()
    return float(base.chance_return), float(base.max_return), total / episodes


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95% Student-t confidence interval (0 for one value); exact t quantile."""
    return t_mean_ci([float(v) for v in values], level=0.95)


Stats = dict[str, dict[str, tuple[float, float, int]]]
"""``{env: {agent: (mean, 95% CI half-width, number of seeds)}}`` of the runs' mean evaluation returns."""


def agent_stats(results: list[dict[str, Any]], env_ids: list[str], agents: list[str]) -> Stats:
    """Mean over seeds of each (env, agent)'s evaluation return, its 95% CI and its count; absent cells left out."""
    table: Stats = {}
    for env_id in env_ids:
        table[env_id] = {}
        for agent in agents:
            values = [r["mean_return"] for r in results if r["env"] == env_id and r["agent"] == agent]
            if values:
                table[env_id][agent] = (*mean_ci(values), len(values))
    return table


def format_table(
    results: list[dict[str, Any]], env_ids: list[str], agents: list[str], episodes: int, num_seeds: int
) -> str:
    """Markdown table: a row per env, a column per agent (mean ± 95% CI over seeds, best in bold), chance, oracle.

    A cell with fewer than ``num_seeds`` results says how many it has; ``episodes`` oracle episodes are played.
    """
    header = "| env | " + " | ".join(agents) + " | chance | oracle |"
    lines = [header, "|---|" + "---:|" * (len(agents) + 2)]
    all_stats = agent_stats(results, env_ids, agents)
    for env_id in env_ids:
        chance, _, oracle = reference_returns(env_id, episodes)
        stats = all_stats[env_id]
        best = max(stats, key=lambda a: stats[a][0]) if stats else None
        cells = []
        for agent in agents:
            if agent not in stats:
                cells.append("–")
                continue
            mean, ci, n = stats[agent]
            value = f"{mean:.3f} ± {ci:.3f}"
            cells.append((f"**{value}**" if agent == best else value) + ("" if n == num_seeds else f" (n={n})"))
        refs = " | ".join("n/a" if math.isnan(v) else f"{v:.3f}" for v in (chance, oracle))
        lines.append(f"| {env_id.removeprefix('ebmm/')} | " + " | ".join(cells) + f" | {refs} |")
    return "\n".join(lines)


def speed_table(results: list[dict[str, Any]], env_ids: list[str], agents: list[str]) -> str:
    """Markdown table: training env steps per CPU-second, mean over seeds, per env and agent.

    The CPU time of training alone where a run recorded it (``train_cpu_seconds``), else of training and
    evaluation (``cpu_seconds``, runs of older revisions), marked with ``*``.
    """
    lines = ["| env | " + " | ".join(agents) + " |", "|---|" + "---:|" * len(agents)]
    for env_id in env_ids:
        cells = []
        for agent in agents:
            runs = [r for r in results if r["env"] == env_id and r["agent"] == agent]
            if not runs:
                cells.append("–")
                continue
            train_only = all("train_cpu_seconds" in r for r in runs)
            key = "train_cpu_seconds" if train_only else "cpu_seconds"
            rate = float(np.mean([r["steps"] / r[key] for r in runs]))
            cells.append(f"{rate:,.0f}" + ("" if train_only else "*"))
        lines.append(f"| {env_id.removeprefix('ebmm/')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_table(text: str) -> tuple[list[str], Stats, dict[str, tuple[float, float]], str]:
    """Read back the block that :func:`main` wrote into a markdown file (for :func:`plot_returns` without the runs).

    Args:
        text: the file's text; the table between :data:`BEGIN` and :data:`END` is read.

    Returns:
        ``(agents, stats, references, setting)``: the agent columns, :data:`Stats` (seeds per cell from ``(n=k)``,
        else the ``seeds`` of the note), ``{env: (chance, oracle)}`` and the note's setting (its first sentence).
    """
    if BEGIN not in text or END not in text:
        raise ValueError(f"no generated block ({BEGIN} ... {END}) in the file: run rl_results.py --doc on it first")
    block = text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()
    lines = block.splitlines()
    end = next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))
    rows = lines[:end]  # the returns table; a speed table may follow the note
    note = " ".join(line for line in lines[end:] if line.strip() and not line.startswith("|"))
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    if header[0] != "env" or header[-2:] != ["chance", "oracle"]:
        raise ValueError(f"not a results table: header {header}")
    agents = header[1:-2]
    setting = note.split(". Training and evaluation took")[0]
    seeds = re.search(r"seeds ([\d, ]+), \d+ deterministic", setting)
    default_n = len(seeds.group(1).split(", ")) if seeds else 0
    table: Stats = {}
    references: dict[str, tuple[float, float]] = {}
    for row in rows[2:]:
        cells = [c.strip().replace("**", "") for c in row.strip("|").split("|")]
        env_id = cells[0] if cells[0].startswith("MiniGrid-") or "/" in cells[0] else f"ebmm/{cells[0]}"
        references[env_id] = tuple(math.nan if c == "n/a" else float(c) for c in cells[-2:])  # type: ignore[assignment]
        table[env_id] = {}
        for agent, cell in zip(agents, cells[1:-2], strict=True):
            if cell in ("–", "-", ""):
                continue
            value, _, count = cell.partition(" (n=")
            mean, _, ci = value.partition(" ± ")
            table[env_id][agent] = (float(mean), float(ci), int(count.rstrip(")")) if count else default_n)
    return agents, table, references, setting


def plot_returns(
    table: Stats, references: dict[str, tuple[float, float]], agents: list[str], path: str | Path, setting: str
) -> None:
    """One panel per env (its own return scale): a point per agent with its 95% CI, chance and oracle as lines.

    Points rather than bars: each panel's axis starts near the lowest value, not at 0, so that BinaryRecall's
    returns (0.5-1, chance 0.875) and Familiarity's (4-8) are both readable.

    Args:
        table: :data:`Stats` per env and agent.
        references: ``{env: (chance, oracle)}`` returns.
        agents: the bars, in order (colours are the same in every panel).
        path: the PNG to write (atomically).
        setting: the runs' setting in words (steps, seeds, evaluation, PPO settings), printed under the title.
    """
    import textwrap

    from ebmm_rl.image_report import _pyplot

    plt = _pyplot()
    env_ids = list(table)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, len(env_ids), figsize=(1.2 + 2.3 * len(env_ids), 4.4), squeeze=False)
    for ax, env_id in zip(axes[0], env_ids, strict=True):
        chance, oracle = references[env_id]
        known = [v for v in (chance, oracle) if not math.isnan(v)]
        low, high = (min(known), max(known)) if known else (math.inf, -math.inf)
        for i, agent in enumerate(agents):
            if agent not in table[env_id]:
                continue
            mean, ci, _ = table[env_id][agent]
            ax.errorbar(i, mean, yerr=ci, fmt="o", markersize=6, capsize=4, color=colours[i % len(colours)])
            low, high = min(low, mean - ci), max(high, mean + ci)
        if not math.isnan(chance):
            ax.axhline(chance, color="black", linestyle="--", linewidth=1.0)
        if not math.isnan(oracle):
            ax.axhline(oracle, color="tab:green", linestyle=":", linewidth=1.5)
        margin = 0.08 * (high - low or 1.0)
        ax.set_ylim(low - margin, high + margin)
        ax.set_xlim(-0.6, len(agents) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(range(len(agents)), agents, rotation=45, ha="right", fontsize=8)
        ax.set_title(env_id.removeprefix("ebmm/").replace("-v0", ""), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    axes[0][0].set_ylabel("mean evaluation return (over seeds, 95% t CI)", fontsize=8)
    handles = [
        plt.Line2D([], [], color=colours[i % len(colours)], marker="o", linestyle="") for i in range(len(agents))
    ]
    labels = [f"{agent}: {agent_description(agent)}" for agent in agents]
    handles += [plt.Line2D([], [], color="black", linestyle="--"), plt.Line2D([], [], color="tab:green", linestyle=":")]
    labels += ["chance: return of the best memoryless policy (exact)", "oracle: return of a policy playing the answer"]
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7.5, frameon=False)
    fig.suptitle(
        "Evaluation return per env: mean over seeds ± 95% Student-t CI\n" + textwrap.fill(setting, 150), fontsize=8.5
    )
    rows = math.ceil(len(labels) / 2)
    fig.tight_layout(rect=(0, 0.05 * rows + 0.01, 1, 0.88))
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_doc(path: str | Path, block: str) -> None:
    """Replace the generated block of ``path`` (between :data:`BEGIN` and :data:`END`) or append one."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    generated = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + generated + text[text.index(END) + len(END) :]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + generated + "\n"
    path.write_text(text)


def main(args: Args) -> str:
    """Run the missing (env, agent, seed) runs, then write and print the table."""
    torch.set_num_threads(args.threads)
    if args.replot:
        if not args.plot:
            raise SystemExit("--replot reads a table and draws --plot: give --plot <file.png> too")
        agents, table, references, setting = parse_table(Path(args.replot).read_text())
        plot_returns(table, references, agents, args.plot, setting)
        print(f"{args.plot}: redrawn from the table in {args.replot}")
        return ""
    for env_id in args.envs:
        for agent in args.agents:
            done = all(result_path(args.out_dir, env_id, agent, seed, args.steps).exists() for seed in args.seeds)
            if not (agent == OLD_AGENT and done):  # the old design's runs come from its revision
                agent_args(env_id, agent, args.meta_dir)  # fail before training anything
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = {
        k: v
        for k in (
            "learning_rate",
            "gamma",
            "n_epochs",
            "net_arch",
            "batch_size",
            "n_envs",
            "vec_env",
            "n_steps",
            "protocol",
            "max_patterns",
            "include_action_reward",
        )
        if (v := getattr(args, k)) is not None
    }
    jobs = [(e, a, s) for s in args.seeds for e in args.envs for a in args.agents]  # seed by seed: early full rows
    results = []
    bar = tqdm(jobs, desc="runs", unit="run", disable=not args.progress)
    for env_id, agent, seed in bar:
        path = result_path(out_dir, env_id, agent, seed, args.steps)
        if path.exists():
            result = json.loads(path.read_text())
            stored = {k: result["train_args"].get(k) for k in overrides}
            if stored != {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}:
                raise SystemExit(
                    f"{path} was trained with {stored}, not {overrides}: use another --out-dir for other settings"
                )
            results.append(result)
            continue
        bar.set_postfix_str(f"{env_id.removeprefix('ebmm/')} {agent} seed {seed}")
        result = run_one(env_id, agent, seed, args.steps, args.eval_episodes, args.meta_dir, overrides)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)  # atomic: a killed sweep never leaves a half-written result
        results.append(result)
        bar.write(f"{env_id} {agent} seed {seed}: return {result['mean_return']:.3f} "
                  f"({result['train_seconds']:.0f} s, {result['steps_per_s']:.0f} steps/s)")  # fmt: skip
    bar.close()
    wall_minutes = sum(r["train_seconds"] + r["eval_seconds"] for r in results) / 60
    cpu_minutes = sum(r.get("cpu_seconds", math.nan) for r in results) / 60
    table = format_table(results, list(args.envs), list(args.agents), args.eval_episodes, len(args.seeds))
    done_steps = "/".join(f"{n:,}" for n in sorted({int(r["steps"]) for r in results}))  # learn() rounds up
    settings = "".join(f", --{k.replace('_', '-')} {v}" for k, v in overrides.items())
    setting = (
        f"{done_steps} env steps per run (--steps {args.steps}), seeds {', '.join(map(str, args.seeds))}, "
        f"{args.eval_episodes} deterministic evaluation episodes per run; mean return over seeds ± 95% CI "
        f"(Student t){settings}"
    )
    note = (
        f"{setting}. Training and evaluation took {cpu_minutes:.0f} CPU min ({wall_minutes:.0f} min "
        f"wall) in total ({args.threads} torch thread, {platform.machine()}, torch {torch.__version__})."
    )
    speed = speed_table(results, list(args.envs), list(args.agents))
    speed_note = "Training env steps per CPU-second (mean over seeds; * training and evaluation):"
    block = f"{table}\n\n{note}\n\n{speed_note}\n\n{speed}"
    out = Path(args.out) if args.out else out_dir / "table.md"
    out.write_text(block + "\n")
    if args.doc:
        write_doc(args.doc, block)
    if args.plot:
        table_stats = agent_stats(results, list(args.envs), list(args.agents))
        references = {e: reference_returns(e, args.eval_episodes)[::2] for e in args.envs}  # (chance, oracle)
        plot_returns(table_stats, references, list(args.agents), args.plot, setting)
    print(block)
    return block


if __name__ == "__main__":
    main(tyro.cli(Args))

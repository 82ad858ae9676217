"""Learning curves of agents.train runs: mean evaluation return ± 95% interval over seeds, per agent, as a PNG.

Reads every run folder under the given roots (a folder holding ``args.json``), groups the runs by (env, memory), and
per group plots the mean over seeds of each evaluation's mean return against env steps, with the half-width of
the 95% Student-t interval over seeds (:func:`ebmm_rl.stats.mean_ci`, exact quantile) as a band. The points come
from each run's ``evaluations.npz`` (``agents.train``'s periodic evaluations) or, with ``--tag``, from a scalar of
its TensorBoard event files (e.g. ``rollout/ep_rew_mean``). Seeds are compared at the steps that all of them
logged (the same ``--eval-freq`` and ``--n-envs`` give the same steps). One panel per env, with the chance and
maximum returns of the memory probes as lines::

    python scripts/quickstart.py --seed 1 && python scripts/quickstart.py --seed 2
    python scripts/plot_curves.py runs/quickstart --out docs/quickstart_curves.png
    python scripts/plot_curves.py runs --tag rollout/ep_rew_mean --out curves.png
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import tyro

from agents.common import SIDECAR, UsageError, usage_error
from agents.common import env_id as train_env_id
from ebmm_rl.stats import mean_ci

PROG = "python scripts/plot_curves.py"

Curve = tuple[np.ndarray, np.ndarray]
"""``(steps [T], values [T])`` of one run."""


@dataclass
class Args:
    """Plot mean ± 95% CI learning curves over seeds of agents.train runs."""

    roots: tyro.conf.Positional[tuple[str, ...]]
    """run folders, or folders holding them (searched recursively for ``args.json``)"""
    out: str = "curves.png"
    """the PNG to write"""
    tag: str | None = None
    """a TensorBoard scalar to plot instead of the evaluations of ``evaluations.npz`` (e.g. ``rollout/ep_rew_mean``)"""


def run_dirs(roots: tuple[str, ...] | list[str]) -> list[Path]:
    """Every folder under ``roots`` (or a root itself) that holds an ``args.json`` of agents.train, sorted."""
    found: set[Path] = set()
    for root in map(Path, roots):
        if not root.exists():
            raise UsageError(f"{root}: no such folder")
        found.update(p.parent for p in root.rglob(SIDECAR))
    return sorted(found)


def evaluation_curve(run_dir: Path) -> Curve | None:
    """``(steps, mean return of each evaluation)`` of ``run_dir/evaluations.npz`` (``None`` if there is none)."""
    file = run_dir / "evaluations.npz"
    if not file.is_file():
        return None
    with np.load(file) as data:
        return data["timesteps"].astype(np.int64), data["results"].mean(axis=1)


def tensorboard_curve(run_dir: Path, tag: str) -> Curve | None:
    """``(steps, values)`` of the scalar ``tag`` in the run's TensorBoard event files (``None`` if never logged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for file in sorted(run_dir.glob("events.out.tfevents.*")):  # a resumed run has several
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags().get("scalars", []):
            points.update({int(e.step): float(e.value) for e in accumulator.Scalars(tag)})
    if not points:
        return None
    steps = np.array(sorted(points), dtype=np.int64)
    return steps, np.array([points[s] for s in steps])


def aggregate(curves: list[Curve]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, mean, 95% CI half-width)`` over runs, at the steps that every run logged.

    Raises:
        ValueError: no step is common to all runs.
    """
    common = curves[0][0]
    for steps, _ in curves[1:]:
        common = np.intersect1d(common, steps)
    if common.size == 0:
        raise ValueError("the runs share no logged step: give them the same --eval-freq and --n-envs")
    table = np.stack([values[np.searchsorted(steps, common)] for steps, values in curves])  # [runs, T]
    stats = [mean_ci(list(table[:, t])) for t in range(common.size)]
    return common, np.array([m for m, _ in stats]), np.array([c for _, c in stats])


def group_curves(dirs: list[Path], tag: str | None = None) -> dict[str, dict[str, list[Curve]]]:
    """``{env: {memory: [curve per run]}}`` of the runs that have the curve."""
    groups: dict[str, dict[str, list[Curve]]] = {}
    for run_dir in dirs:
        record = json.loads((run_dir / SIDECAR).read_text())["args"]
        curve = evaluation_curve(run_dir) if tag is None else tensorboard_curve(run_dir, tag)
        if curve is not None and curve[0].size:
            groups.setdefault(record["env"], {}).setdefault(record["memory"], []).append(curve)
    return groups


def plot(groups: dict[str, dict[str, list[Curve]]], path: str | Path, ylabel: str) -> None:
    """One panel per env: a line per memory (mean over seeds) with its 95% band; chance and max as lines."""
    from ebmm_rl.image_report import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(1.0 + 4.2 * len(groups), 3.6), squeeze=False)
    for ax, (env, memories) in zip(axes[0], groups.items(), strict=True):
        for memory, curves in sorted(memories.items()):
            steps, mean, ci = aggregate(curves)
            (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=f"{memory} ({len(curves)} seeds)")
            ax.fill_between(steps, mean - ci, mean + ci, color=line.get_color(), alpha=0.2, linewidth=0)
        base = gym.make(train_env_id(env)).unwrapped
        if hasattr(base, "chance_return"):
            ax.axhline(base.chance_return, color="black", linestyle="--", linewidth=1, label="chance (no memory)")
            ax.axhline(base.max_return, color="tab:green", linestyle=":", linewidth=1.5, label="maximum")
        ax.set_title(env, fontsize=9)
        ax.set_xlabel("environment steps", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=8)
    axes[0][0].set_ylabel(ylabel, fontsize=8)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(args: Args) -> dict[str, dict[str, list[Curve]]]:
    """Find the runs, group them, plot; returns the groups."""
    groups = group_curves(run_dirs(args.roots), args.tag)
    if not groups:
        what = "evaluations.npz (train with --eval-freq > 0)" if args.tag is None else f"the TensorBoard tag {args.tag}"
        raise UsageError(f"no run under {list(args.roots)} has {what}")
    label = "mean evaluation return" if args.tag is None else args.tag
    plot(groups, args.out, f"{label}: mean over seeds, 95% t interval")
    for env, memories in groups.items():
        for memory, curves in sorted(memories.items()):
            steps, mean, ci = aggregate(curves)
            print(f"{env} {memory}: {len(curves)} runs, last common step {steps[-1]}: {mean[-1]:.3f} ± {ci[-1]:.3f}")
    print(f"wrote {args.out}")
    return groups


if __name__ == "__main__":
    cli_args = tyro.cli(Args, prog=PROG)
    try:
        main(cli_args)
    except (UsageError, ValueError) as error:
        usage_error(str(error), PROG)

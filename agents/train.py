"""Train an SB3 agent with an episodic memory (EBMM) or a baseline memory on any Gymnasium environment.

Examples::

    python -m agents.train --env ebmm/BinaryRecall-Easy-v0 --memory ebmm
    python -m agents.train --env ebmm/CartPole-NoVel-v1 --memory ebmm-recurrent --n-envs 8 --vec-env dummy
    python -m agents.train --env MiniGrid-MemoryS7-v0 --memory ebmm --max-patterns 16
    python -m agents.train --env ebmm/Familiarity-Easy-v0 --memory lstm --n-envs 4
    python -m agents.train --env ebmm/BinaryRecall-Medium-v0 --memory ebmm --memory-checkpoint runs/<meta>/checkpoint.pt

Environments: any registered gymnasium id. ``ebmm/...`` ids are this project's (memory probes, and the classic
control tasks with velocities removed, ``ebmm/CartPole-NoVel-v1``, ``ebmm/Pendulum-NoVel-v1``); ``MiniGrid-...`` ids
need the ``minigrid`` package (``pip install -e ".[minigrid]"``) and get minigrid's ``ImgObsWrapper`` (the image
alone: the mission string is a ``Text`` space, which no memory row holds). The probes use
:class:`~ebmm_rl.rl.EpisodeMemoryWrapper`'s probe protocol (their ``phase`` decides what is stored) unless
``--protocol generic``; every other env the generic one (each step stores its observation, a FIFO window of
``--max-patterns`` rows).

Memories (the table :data:`MEMORIES`; a new one is a row there): ``ebmm`` (PPO/A2C +
:class:`~ebmm_rl.rl.EBMMExtractor` over :class:`~ebmm_rl.rl.EpisodeMemoryWrapper`), ``ebmm-recurrent``
(sb3-contrib ``RecurrentPPO`` with :class:`~ebmm_rl.rl.recurrent.EBMMRecurrentPolicy`: the memory is the recurrent
state), ``mlp`` (PPO/A2C, no memory), ``frame-stack`` (PPO/A2C over gymnasium's ``FrameStackObservation`` of the last
``--frame-stack`` observations, by default the whole episode), ``lstm`` (sb3-contrib ``RecurrentPPO``), and the
baseline memories ``memnet``, ``mann``, ``plasticity``, ``modern-hopfield``, ``lstm-memory`` (PPO/A2C +
:class:`~ebmm_rl.rl.MemoryExtractor` over the same wrapper as ``ebmm``; ``docs/baselines.md``)::

    python -m agents.train --env ebmm/BinaryRecall-Easy-v0 --memory memnet

TensorBoard: ``tensorboard --logdir runs``; a run is ``runs/{env}__{memory}__{seed}__{time}`` and holds the final
``model.zip``, ``best_model.zip`` (best evaluation), ``evaluations.npz``, ``args.json`` (the run's :class:`Args` and
algorithm, and the architecture of a ``--memory-checkpoint`` memory, read by ``python -m agents.evaluate`` and
``--resume``) and, with ``--checkpoint-freq``, ``checkpoint.zip``. Both load the zips without running code from them
(:mod:`agents.safe_load`).

Presets (rl-zoo3 style, ``agents/presets/<Family>.yml``, one entry per agent): the settings of a table of
``docs/rl_results.md`` as defaults, which explicit flags override; ``--resume`` continues a run from its last
periodic checkpoint::

    python -m agents.train --preset KeyValueRecall-Medium/mlp --seed 1
    python -m agents.train --preset DelayedRecall-Easy/ebmm   # the quickstart's EBMM agent
    python -m agents.train --preset DelayedRecall-Medium/mlp --checkpoint-freq 10000
    python -m agents.train --resume runs/<run> --total-timesteps 200000
    python -m agents.evaluate runs/<run>/model.zip --episodes 100

A mistake on the command line (an unknown preset, memory or env id, ``--n-envs 0``, a negative budget) is a usage
error (exit code 2), found before the run folder is created.

This module is the command line and the training loop; the settings (:class:`~agents.common.Args`), environments,
memories, agents, presets and run folders are built by :mod:`agents.common`, whose names it re-exports.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tyro
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.logger import TensorBoardOutputFormat, configure

import envs  # noqa: F401  (registers the ids in this process)
from agents.common import *  # noqa: F403  (the names agents.train had before agents.common was split off)
from agents.common import (
    CHECKPOINT,
    Args,
    UsageError,
    _check_resumable,
    build_model,
    env_id,
    load_preset,
    load_run_agent,
    make_env,
    memory_checkpoint_record,
    read_run,
    run_name,
    save_atomically,
    usage_error,
    validate,
    write_sidecar,
)
from agents.safe_load import AgentZipError, read_zip
from ebmm_rl.rl import EBMMExtractor, MemoryExtractor
from ebmm_rl.rl.callbacks import MemoryLoggerCallback


def parse_args(argv: Sequence[str] | None = None) -> Args:
    """:class:`Args` from the command line: defaults, then a preset (or a resumed run's settings), then the flags.

    ``--preset`` / ``--resume`` are read first (their values become the defaults that tyro then shows and that
    explicit flags override), then everything is parsed again with tyro and checked (:func:`validate`).

    Raises:
        UsageError: an unknown preset, a resumed folder that is no run, or a value :func:`validate` rejects.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--preset")
    first.add_argument("--resume")
    known, _ = first.parse_known_args(argv)
    defaults = Args()
    if known.resume is not None:
        if known.preset is not None:
            raise UsageError("--resume continues a run with its own settings; drop --preset")
        _check_resumable(known.resume)
        _, defaults, _ = read_run(known.resume)
    elif known.preset is not None:
        defaults = dataclasses.replace(defaults, **load_preset(known.preset))
    args = tyro.cli(Args, args=argv, default=defaults, prog="python -m agents.train")
    validate(args)
    return args


class ProgressLines(BaseCallback):
    """Progress as a few plain lines, for output that is not a terminal.

    A line at the first rollout end past each ``1 / lines`` of the run, ``label: steps steps (percent% of total),
    seconds``, on stdout and flushed: a log file or a pipe gets a handful of lines instead of a progress bar's
    carriage-return updates.
    """

    def __init__(self, label: str, lines: int = 4) -> None:
        super().__init__()
        self.label, self.lines = label, lines
        self._first = self._total = self._next = 0
        self._start = 0.0

    def _on_training_start(self) -> None:
        self._first = self.num_timesteps
        self._total = max(self.locals["total_timesteps"] - self._first, 1)  # what this learn() call adds
        self._next, self._start = 1, time.perf_counter()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        done = self.num_timesteps - self._first
        if self._next > self.lines or done * self.lines < self._next * self._total:
            return
        while self._next <= self.lines and done * self.lines >= self._next * self._total:
            self._next += 1
        percent = min(100 * done // self._total, 100)
        seconds = time.perf_counter() - self._start
        print(f"{self.label}: {self.num_timesteps} steps ({percent}% of {self._total}), {seconds:.0f} s", flush=True)


def progress_callbacks(args: Args) -> tuple[list[BaseCallback], bool]:
    """``(callbacks, progress_bar)``: how ``model.learn`` shows progress for ``args``.

    SB3's progress bar (``([], True)``) on a terminal, a :class:`ProgressLines` callback when stdout is not one,
    nothing with ``--no-progress-bar``. SB3's bar needs rich and tqdm; without them a line says so and progress is
    off.
    """
    if not args.progress_bar:
        return [], False
    if not sys.stdout.isatty():
        return [ProgressLines(f"{args.env} {args.memory}")], False
    if not all(importlib.util.find_spec(m) is not None for m in ("rich", "tqdm")):
        print("progress bar off: it needs the rich and tqdm packages (pip install rich tqdm)")
        return [], False
    return [], True


class CheckpointCallback(BaseCallback):
    """Save the model to ``path`` every ``every`` environment steps (and at the end), atomically, if finite.

    The file is written beside and then renamed (``os.replace``), so a killed run keeps its previous checkpoint; a
    model with a non-finite weight is not saved (a warning says so) and the previous checkpoint stays.
    """

    def __init__(self, path: str | Path, every: int) -> None:
        super().__init__()
        self.path, self.every, self._last = Path(path), every, 0

    def _on_training_start(self) -> None:
        self._last = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.every:
            self._last = self.num_timesteps
            save_atomically(self.model, self.path)
        return True

    def _on_training_end(self) -> None:
        save_atomically(self.model, self.path)


def _restore_evaluations(callback: EvalCallback, run_dir: Path, until: int) -> None:
    """Give a resumed run's EvalCallback the evaluations up to step ``until`` (so evaluations.npz keeps them)."""
    file = run_dir / "evaluations.npz"
    if not file.is_file():
        return
    with np.load(file) as data:
        keep = data["timesteps"] <= until
        callback.evaluations_timesteps = [int(t) for t in data["timesteps"][keep]]
        callback.evaluations_results = [list(r) for r in data["results"][keep]]
        callback.evaluations_length = [list(n) for n in data["ep_lengths"][keep]]
    if callback.evaluations_results:
        callback.best_mean_reward = float(max(np.mean(r) for r in callback.evaluations_results))


def main(args: Args) -> BaseAlgorithm | None:
    """Train, evaluate periodically, log to TensorBoard and save the model; returns the trained agent.

    A ``--resume`` of a run whose checkpoint already reached ``--total-timesteps`` says so and returns ``None``,
    changing nothing.

    Raises:
        UsageError: ``args`` fails :func:`validate` (nothing is created then), or the checkpoint to resume from
            cannot be loaded safely.
    """
    validate(args)  # fail before creating the run folder
    torch.set_num_threads(args.threads)
    run_dir = Path(args.resume) if args.resume else Path(args.run_root) / run_name(args)
    if args.resume:
        algo, _, checkpoint = read_run(run_dir)
        if checkpoint is None and args.memory_checkpoint and Path(args.memory_checkpoint).is_file():
            checkpoint = memory_checkpoint_record(args.memory_checkpoint)  # a run from before args.json kept it
        steps = read_zip(run_dir / CHECKPOINT).data.get("num_timesteps")
        if isinstance(steps, int) and steps >= args.total_timesteps:
            print(f"{run_dir} is already at step {steps} (--total-timesteps {args.total_timesteps}): nothing to do. "
                  f"To train on, give --total-timesteps above {steps}.")  # fmt: skip
            return None
    run_dir.mkdir(parents=True, exist_ok=True)
    env = make_env(args)
    if args.resume:
        try:
            model = load_run_agent(
                run_dir / CHECKPOINT, algo, args, env.observation_space, env.action_space, checkpoint, env=env
            )
        except AgentZipError as error:
            env.close()
            raise UsageError(f"--resume {run_dir}: {error}") from None
        print(f"resuming {run_dir} from step {model.num_timesteps}")
    else:
        checkpoint = memory_checkpoint_record(args.memory_checkpoint) if args.memory_checkpoint else None
        model = build_model(args, env)
    write_sidecar(run_dir, args, checkpoint)
    model.set_logger(configure(str(run_dir), ["stdout", "tensorboard"] if args.log_stdout else ["tensorboard"]))
    _log_hyperparameters(model, args)

    callbacks: list[BaseCallback] = []
    eval_env = None
    if args.eval_freq > 0:
        eval_env = make_env(args, n_envs=1, seed=args.seed + 10_000)
        evaluation = EvalCallback(
            eval_env,
            n_eval_episodes=args.eval_episodes,
            eval_freq=max(args.eval_freq // args.n_envs, 1),
            log_path=str(run_dir),
            best_model_save_path=str(run_dir),
            deterministic=True,
            verbose=0,
        )
        if args.resume:
            _restore_evaluations(evaluation, run_dir, model.num_timesteps)
        callbacks.append(evaluation)
    if args.checkpoint_freq > 0:
        callbacks.append(CheckpointCallback(run_dir / CHECKPOINT, args.checkpoint_freq))
    if args.memory in ("ebmm", "ebmm-recurrent"):
        callbacks.append(MemoryLoggerCallback())  # memory/... curves in TensorBoard
    lines, progress = progress_callbacks(args)
    callbacks += lines
    start = time.time()
    remaining = max(args.total_timesteps - model.num_timesteps, 0)
    model.learn(remaining, callback=callbacks, progress_bar=progress, reset_num_timesteps=not args.resume)
    elapsed = time.time() - start
    save_atomically(model, run_dir / "model.zip")

    base = gym.make(env_id(args.env)).unwrapped
    summary = f"{args.env} {args.memory}: {model.num_timesteps} steps in {elapsed:.1f} s"
    if eval_env is not None:
        summary += f"; last evaluation return {callbacks[0].last_mean_reward:.3f}"
    if hasattr(base, "chance_return"):  # the memory probes know both
        summary += f" (chance {base.chance_return:.3f}, max {getattr(base, 'max_return', 1):.3f})"
    print(summary)
    print(f"saved {run_dir / 'model.zip'}")
    env.close()
    if eval_env is not None:
        eval_env.close()
    return model


def cli(argv: Sequence[str] | None = None) -> BaseAlgorithm | None:
    """``python -m agents.train``: :func:`parse_args` then :func:`main`; a :class:`UsageError` exits with code 2."""
    try:
        return main(parse_args(argv))
    except UsageError as error:
        usage_error(str(error))


def _log_hyperparameters(model: BaseAlgorithm, args: Args) -> None:
    """Write ``args`` as a markdown table to the run's TensorBoard (text tab, ``hyperparameters``)."""
    rows = "\n".join(f"|{k}|{v}|" for k, v in dataclasses.asdict(args).items())
    for fmt in model.logger.output_formats:
        if isinstance(fmt, TensorBoardOutputFormat):
            fmt.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}")
            fmt.writer.flush()
    extractor = getattr(model.policy, "features_extractor", None)
    memory = extractor.memory if isinstance(extractor, MemoryExtractor) else None
    if isinstance(extractor, EBMMExtractor) or hasattr(model.policy, "core"):
        memory = model.policy.core.memory if hasattr(model.policy, "core") else extractor.core.memory
    if memory is not None:
        print(f"{type(memory).__name__} memory: {memory.memory_size} writable floats per episode, "
              f"{sum(p.numel() for p in memory.parameters())} meta-parameters")  # fmt: skip
    print(f"policy parameters: {sum(int(np.prod(p.shape)) for p in model.policy.parameters())}")


if __name__ == "__main__":
    cli()

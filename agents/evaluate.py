"""Evaluate a saved agent of ``agents.train`` (rl-zoo3's "enjoy"), optionally recording videos.

Examples::

    python -m agents.evaluate runs/<run>/model.zip --episodes 100
    python -m agents.evaluate runs/<run>/best_model.zip --env ebmm/DelayedRecall-Hard-v0
    python -m agents.evaluate runs/<run>/model.zip --episodes 3 --video-dir videos   # needs moviepy

The run folder's ``args.json`` (written by ``agents.train``) says which algorithm saved the model and how the
environment was wrapped, so the same wrappers (:func:`agents.common.wrap_env` with the run's
:class:`~agents.common.WrapOptions`) are applied again. A model without one needs ``--env`` and ``--memory``: the
memory names the wrappers and the policy, and the algorithm is sb3-contrib's ``RecurrentPPO`` for the recurrent
memories, else ``PPO`` or ``A2C`` (told apart by the saved ``clip_range``). Videos use gymnasium's ``RecordVideo``
(one file per episode) when the environment renders ``rgb_array`` frames; otherwise the command says so and
evaluates without.

Safe to load: a zip runs no code from itself. SB3's own loader unpickles the objects a zip stores (spaces, policy
class, schedules), and a crafted zip can run any code that way; here every such object is rebuilt from
``args.json``, the environment and the project's policies (:mod:`agents.safe_load`), a zip that pickles anything
else is refused, and tensors load with ``weights_only=True``. ``--trust-pickled`` restores SB3's loader for zips
of other tools: it runs whatever the zip's pickles hold, so use it only for files from a source you trust.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import tyro
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.common import (
    SIDECAR,
    UsageError,
    agent_env,
    agent_spaces,
    algorithm_class,
    check_env_id,
    env_id,
    load_run_agent,
    memory_kind,
    read_run,
    usage_error,
    wrap_env,
    wrap_options,
)
from agents.common import Args as TrainArgs
from agents.safe_load import AgentZipError, WeightsMismatch, read_zip

PROG = "python -m agents.evaluate"


@dataclass
class Args:
    """Evaluate a saved agent of agents.train on fresh episodes of its environment.

    Loading is safe: nothing pickled in the zip is unpickled (the objects SB3 pickles are rebuilt from args.json,
    the environment and the project's policies; a zip that pickles anything else is refused) and tensors load with
    weights_only=True. --trust-pickled loads with SB3's own loader instead, which runs any code the zip's pickles
    hold: only for zips from a source you trust.
    """

    model: tyro.conf.Positional[str]
    """the saved model (``model.zip``, ``best_model.zip`` or ``checkpoint.zip`` of a run folder)"""
    env: str | None = None
    """gymnasium id to evaluate on (default: the run's; its observations must fit the model)"""
    memory: str | None = None
    """the agents.train ``--memory`` whose wrappers to apply (default: the run's, from ``args.json``)"""
    episodes: int = 20
    """evaluation episodes"""
    seed: int = 10_000
    """seed of the evaluation environment (agents.train evaluates on its seed + 10000)"""
    deterministic: bool = True
    """play the policy's most likely action"""
    video_dir: str | None = None
    """record every episode with gymnasium's RecordVideo into this folder (needs rgb_array rendering and moviepy)"""
    threads: int = 1
    """torch CPU threads"""
    trust_pickled: bool = False
    """UNSAFE: load with SB3's own loader, which unpickles the zip's objects and so runs any code they hold; only
    for zips of other tools from a source you trust"""


def run_settings(
    path: Path, data: dict[str, Any], env: str | None = None, memory: str | None = None
) -> tuple[str, TrainArgs, dict[str, Any] | None]:
    """``(algorithm name, Args, memory-checkpoint record)`` of the model at ``path``, with ``env``/``memory`` set.

    From the ``args.json`` beside it; without one, ``env`` and ``memory`` are needed and the algorithm follows
    from the memory and the zip's ``data`` (plain JSON: with a ``clip_range``, PPO, else A2C).

    Raises:
        UsageError: no ``args.json`` and no ``env``/``memory``, or a malformed ``args.json``.
    """
    if (path.parent / SIDECAR).is_file():
        algo, train_args, checkpoint = read_run(path.parent)
    else:
        if memory is None or env is None:
            raise UsageError(f"{path} has no {SIDECAR} beside it: give --env and --memory of its training")
        try:
            kind = memory_kind(memory)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if kind.recurrent:
            algo = "RecurrentPPO"
        else:
            algo = "PPO" if "clip_range" in data else "A2C"
        train_args, checkpoint = TrainArgs(algo="a2c" if algo == "A2C" else "ppo"), None
    changes = {k: v for k, v in dict(env=env, memory=memory).items() if v is not None}
    return algo, dataclasses.replace(train_args, **changes), checkpoint


def load_model(
    path: str | Path,
    device: str = "cpu",
    env: str | None = None,
    memory: str | None = None,
    trust_pickled: bool = False,
) -> tuple[BaseAlgorithm, TrainArgs]:
    """The model saved at ``path`` and the :class:`agents.common.Args` of its run, loaded without running its pickles.

    Args:
        path: the zip.
        device: torch device of the policy.
        env: evaluate on this env id instead of the run's (needed without ``args.json``).
        memory: the ``--memory`` of its training (needed without ``args.json``).
        trust_pickled: load with SB3's own loader (unsafe: runs any code the zip's pickles hold).

    Raises:
        UsageError: no such file, a zip that cannot be loaded safely, or one whose weights do not fit the env.
    """
    path = Path(path)
    try:
        contents = read_zip(path)
    except AgentZipError as error:
        raise UsageError(str(error)) from None
    algo, train_args, checkpoint = run_settings(path, contents.data, env, memory)
    try:
        memory_kind(train_args.memory)
    except ValueError as error:
        raise UsageError(str(error)) from None
    check_env_id(train_args.env)
    probe = wrap_env(gym.make(env_id(train_args.env)), train_args.memory, wrap_options(train_args))
    where = f"{train_args.env} wrapped for --memory {train_args.memory}"
    try:
        if trust_pickled:
            model = algorithm_class(algo).load(path, device=device)
            observation_space = agent_spaces(probe, train_args)[0]
            if observation_space != model.observation_space:
                raise UsageError(
                    f"{where} gives {observation_space}, but the model takes {model.observation_space}: "
                    f"evaluate on an env of the same shape"
                )
            return model, train_args
        train_args = dataclasses.replace(train_args, device=device)
        spaces = agent_spaces(probe, train_args)
        model = load_run_agent(path, algo, train_args, *spaces, checkpoint, contents=contents)
    except WeightsMismatch as error:
        raise UsageError(f"{error}: {where} does not fit this model; evaluate on an env of the same shape") from None
    except AgentZipError as error:
        raise UsageError(str(error)) from None
    finally:
        probe.close()
    return model, train_args


def _make_rendering(name: str) -> gym.Env | None:
    """``gym.make(name, render_mode="rgb_array")`` if the env renders such frames, else ``None``."""
    try:
        env = gym.make(env_id(name), render_mode="rgb_array")
    except (TypeError, ValueError, gym.error.Error):
        return None
    if env.render_mode != "rgb_array" or "rgb_array" not in env.metadata.get("render_modes", []):
        env.close()
        return None
    return env


def make_eval_env(
    train_args: TrainArgs, seed: int, video_dir: str | None = None, episodes: int | None = None
) -> DummyVecEnv:
    """One environment of ``train_args.env``, wrapped as in training, optionally recording the first ``episodes``.

    (The vectorised env resets itself after the last evaluated episode; that one is not recorded.)
    """
    env = _make_rendering(train_args.env) if video_dir is not None else None
    if video_dir is not None and env is None:
        print(f"{train_args.env} does not render rgb_array frames: no video recorded", file=sys.stderr)
        video_dir = None
    env = Monitor(env if env is not None else gym.make(env_id(train_args.env)))
    if video_dir is not None:
        from gymnasium.error import DependencyNotInstalled

        try:
            trigger = (lambda _: True) if episodes is None else (lambda e: e < episodes)
            env = gym.wrappers.RecordVideo(env, video_dir, episode_trigger=trigger, disable_logger=True)
        except DependencyNotInstalled as error:
            raise UsageError(f"--video-dir needs moviepy: pip install moviepy ({error})") from None
    env = wrap_env(env, train_args.memory, wrap_options(train_args))
    vec = DummyVecEnv([lambda: env])
    vec.seed(seed)
    return agent_env(vec, train_args)


def evaluate(args: Args) -> dict[str, Any]:
    """Play ``args.episodes`` episodes; returns their returns, mean, std and the env's chance / max returns."""
    torch.set_num_threads(args.threads)
    if args.episodes < 1:
        raise UsageError(f"--episodes must be at least 1, got {args.episodes}")
    model, train_args = load_model(args.model, env=args.env, memory=args.memory, trust_pickled=args.trust_pickled)
    env = make_eval_env(train_args, args.seed, args.video_dir, args.episodes)
    returns, lengths = evaluate_policy(
        model, env, n_eval_episodes=args.episodes, deterministic=args.deterministic, return_episode_rewards=True
    )
    env.close()
    base = gym.make(env_id(train_args.env)).unwrapped
    return dict(
        env=train_args.env,
        memory=train_args.memory,
        algo=type(model).__name__,
        episodes=args.episodes,
        returns=[float(r) for r in returns],
        mean_return=float(np.mean(returns)),
        std_return=float(np.std(returns)),
        mean_length=float(np.mean(lengths)),
        chance=float(getattr(base, "chance_return", math.nan)),
        max=float(getattr(base, "max_return", math.nan)),
        video_dir=args.video_dir,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``python -m agents.evaluate``: print the mean return (a :class:`UsageError` exits with code 2)."""
    args = tyro.cli(Args, args=argv, prog=PROG)
    try:
        result = evaluate(args)
    except UsageError as error:
        usage_error(str(error), PROG)
    line = (
        f"{result['env']} {result['memory']} ({result['algo']}): mean return {result['mean_return']:.3f} "
        f"± {result['std_return']:.3f} (std) over {result['episodes']} episodes"
    )
    if not math.isnan(result["chance"]):
        line += f"; chance {result['chance']:.3f}, max {result['max']:.3f}"
    print(line)
    if result["video_dir"]:
        print(f"videos in {result['video_dir']}")
    return result


if __name__ == "__main__":
    main()

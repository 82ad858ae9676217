"""Evaluate a saved agent of ``agents.train`` (rl-zoo3's "enjoy"), optionally recording videos.

Examples::

    python -m agents.evaluate runs/<run>/model.zip --episodes 100
    python -m agents.evaluate runs/<run>/best_model.zip --env ebmm/DelayedRecall-Hard-v0
    python -m agents.evaluate runs/<run>/model.zip --episodes 3 --video-dir videos   # needs moviepy

The run folder's ``args.json`` (written by ``agents.train``) says which algorithm saved the model and how the
environment was wrapped, so the same wrappers (:func:`agents.train.wrap_env` with the run's
:class:`~agents.train.WrapOptions`) are applied again. A model without one is loaded by trying sb3-contrib's
``RecurrentPPO``, then ``PPO`` or ``A2C`` (told apart by the saved ``clip_range``); ``--memory`` then names its
wrappers. Videos use gymnasium's ``RecordVideo`` (one file per episode) when the environment renders ``rgb_array``
frames; otherwise the command says so and evaluates without.
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
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.train import (
    SIDECAR,
    UsageError,
    algorithm_class,
    check_env_id,
    env_id,
    read_sidecar,
    usage_error,
    wrap_env,
    wrap_options,
)
from agents.train import Args as TrainArgs

PROG = "python -m agents.evaluate"


@dataclass
class Args:
    """Evaluate a saved agent of agents.train on fresh episodes of its environment."""

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


def load_model(path: str | Path, device: str = "cpu") -> tuple[BaseAlgorithm, TrainArgs | None]:
    """The model saved at ``path`` and the :class:`agents.train.Args` of its run (``None`` without ``args.json``).

    Raises:
        UsageError: no such file, or no algorithm loads it.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such model file")
    if (path.parent / SIDECAR).is_file():
        algo, train_args = read_sidecar(path.parent)
        return algorithm_class(algo).load(path, device=device), train_args
    data, _, _ = load_from_zip_file(path, device=device, load_data=True)
    names = ["RecurrentPPO", "PPO"] if data is not None and "clip_range" in data else ["A2C"]
    errors = []
    for name in names:
        try:
            return algorithm_class(name).load(path, device=device), None
        except (ImportError, ValueError, TypeError, KeyError, AttributeError) as error:
            errors.append(f"{name}: {error}")
    raise UsageError(f"{path}: none of {names} loads it ({'; '.join(errors)})")


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
    return vec


def evaluate(args: Args) -> dict[str, Any]:
    """Play ``args.episodes`` episodes; returns their returns, mean, std and the env's chance / max returns."""
    torch.set_num_threads(args.threads)
    if args.episodes < 1:
        raise UsageError(f"--episodes must be at least 1, got {args.episodes}")
    model, train_args = load_model(args.model)
    if train_args is None:
        if args.memory is None or args.env is None:
            raise UsageError(f"{args.model} has no {SIDECAR} beside it: give --env and --memory of its training")
        train_args = TrainArgs()
    changes = {k: v for k, v in dict(env=args.env, memory=args.memory).items() if v is not None}
    train_args = dataclasses.replace(train_args, **changes)
    check_env_id(train_args.env)
    env = make_eval_env(train_args, args.seed, args.video_dir, args.episodes)
    if env.observation_space != model.observation_space:
        raise UsageError(
            f"{train_args.env} wrapped for --memory {train_args.memory} gives {env.observation_space}, but the model "
            f"takes {model.observation_space}: evaluate on an env of the same shape"
        )
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

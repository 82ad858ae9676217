"""The library half of ``agents.train``: settings, environments, memories, policies, agents, presets and runs.

:class:`Args` (``python -m agents.train``'s flags), :func:`make_env`, :func:`build_model`, the memory table
:data:`MEMORIES`, presets (:func:`load_preset`), run folders (:func:`write_sidecar`, :func:`read_run`,
:func:`load_run_agent`) and :func:`validate`: what ``agents.evaluate``, the quickstart and the benchmark scripts build
agents with. ``agents.train`` is the command line and the training loop on top of it (and re-exports these names).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import json
import os
import sys
import time
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import torch
import yaml
from gymnasium import spaces
from gymnasium.wrappers import FrameStackObservation
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

import envs  # noqa: F401  (registers the ids in this process)
from agents.safe_load import AgentZipError, KnownAgent, ZipContents, load_agent, read_zip
from ebmm_rl.checkpoint import build_memory, load_memory, memory_spec
from ebmm_rl.protocol import MEMORIES as MEMORY_REGISTRY
from ebmm_rl.rl import (
    EBMMPolicy,
    EpisodeMemoryWrapper,
    MemoryExtractor,
    MultiBinaryToMultiDiscrete,
    PreviousActionReward,
    RowObservation,
)
from ebmm_rl.rl.core import HEAD_KINDS, MemoryCore
from ebmm_rl.rl.wrappers import OneHotCodes, action_reward_space


@dataclass(frozen=True)
class MemoryKind:
    """One ``--memory`` choice: how it wraps each environment and which policy it trains.

    Attributes:
        description: what the agent is, in one line.
        wrap: ``wrap(env, options) -> env`` (options: :class:`WrapOptions`), a module-level function
            (SubprocVecEnv workers unpickle it by reference).
        policy: ``policy(args, observation_space, saved) -> (policy, policy_kwargs)``: the SB3 policy (a registered
            name or a class) for the wrapped env's observation space and the keyword arguments it needs besides
            ``net_arch``; ``saved`` (a :class:`SavedCheckpoint` or ``None``) rebuilds a ``--memory-checkpoint``
            memory from its description in ``args.json`` instead of reading the file.
        recurrent: trained by sb3-contrib's ``RecurrentPPO`` (the policy carries state across steps) instead of
            PPO / A2C.
    """

    description: str
    wrap: Callable[[gym.Env, WrapOptions], gym.Env]
    policy: Callable[[Args, spaces.Space, SavedCheckpoint | None], tuple[str | type, dict[str, Any]]]
    recurrent: bool = False


@dataclass(frozen=True)
class SavedCheckpoint:
    """A ``--memory-checkpoint`` memory as a run's ``args.json`` describes it, to rebuild it without the file.

    Attributes:
        record: :func:`memory_checkpoint_record`'s plain values (``memory_spec``; ``encoder`` and ``pattern_size``
            when an ``encoder.pt`` lay beside the checkpoint).
        max_parameters: bound on the rebuilt memory's parameters (the values of the agent zip's policy, whose
            weights replace the untrained ones).
    """

    record: dict[str, Any]
    max_parameters: int


@dataclass(frozen=True)
class WrapOptions:
    """How :func:`wrap_env` wraps one environment (picklable: SubprocVecEnv workers receive it).

    Attributes:
        write_queries: probe protocol: also store query patterns (``Familiarity``).
        frame_stack: observations stacked by ``frame-stack`` (0: the probe's episode length, else 4).
        max_patterns: rows of ``EpisodeMemoryWrapper``'s history (``None``: its default).
        protocol: ``EpisodeMemoryWrapper``'s protocol (``auto``, ``generic``, ``probe``).
        include_action_reward: every agent sees the previous action and reward (rows of ``RowObservation``).
    """

    write_queries: bool = False
    frame_stack: int = 0
    max_patterns: int | None = None
    protocol: str = "auto"
    include_action_reward: bool = False


@dataclass
class Args:
    """Train PPO / A2C / RecurrentPPO with an episodic memory on a Gymnasium environment."""

    env: str = "ebmm/BinaryRecall-Easy-v0"
    """gymnasium id of the environment (``ebmm/<Family>[-Easy|-Medium|-Hard]-v0``, ``ebmm/CartPole-NoVel-v1``,
    ``MiniGrid-MemoryS7-v0``, ``CartPole-v1``, ...)"""
    memory: str = "ebmm"
    """memory kind, a key of ``MEMORIES``: ebmm (PPO/A2C + EBMM extractor), ebmm-recurrent (RecurrentPPO, EBMM
    as its recurrent core), mlp (no memory), frame-stack (the last observations stacked), lstm (RecurrentPPO),
    and baselines in PPO/A2C + MemoryExtractor: memnet, mann, plasticity, modern-hopfield, lstm-memory"""
    algo: Literal["ppo", "a2c"] = "ppo"
    """on-policy algorithm (recurrent memories, ``lstm`` and ``ebmm-recurrent``, always use sb3-contrib's
    RecurrentPPO)"""
    total_timesteps: int = 100_000
    """environment steps in total (over all parallel envs)"""
    n_envs: int = 1
    """parallel environments (SubprocVecEnv when > 1, unless --vec-env dummy)"""
    vec_env: Literal["auto", "dummy", "subproc"] = "auto"
    """how the n_envs environments run: ``subproc`` (one worker process each), ``dummy`` (in this process, one
    after another: best when the env is cheap and the policy is not, e.g. a memory extractor, which then writes
    and reads all envs' memories in one batch), ``auto`` (subproc when n_envs > 1)"""
    seed: int = 0
    """seed of the agent and the environments"""
    memory_checkpoint: str | None = None
    """start the memory from this checkpoint: an EBMM core pre-trained by scripts/meta_train_env.py (ebmm,
    ebmm-recurrent), or a baseline meta-trained by scripts/meta_train_baseline.py"""
    memory_budget: int | None = None
    """float32 values per episode of a baseline memory (memnet, mann, ...; default: MemoryExtractor's default for
    the env's history, ``ebmm_rl.rl.memory_extractor.DEFAULT_RL_BUDGETS``)"""
    freeze_memory: bool = False
    """keep the memory's meta-parameters fixed (no gradient from the RL loss)"""
    embed_size: int = 64
    """EBMM core: entries of the learned embedding of a step's row"""
    key_size: int = 16
    """EBMM core: entries of the learned part of a key"""
    value_size: int = 16
    """EBMM core: entries of a value"""
    heads: tuple[str, ...] = ("time", "content")
    """EBMM core: query heads, each time (clamps the position), content (clamps the learned key), key (both) or first
    (clamps the first-step flag: the episode's first row)"""
    write_gate: bool = False
    """EBMM core: learn a gate that scales each step's write"""
    memory_prior: str | None = "auto"
    """EBMM core: where its memory starts: auto (the shipped prior meta-trained for its sizes, if any), a prior file
    of scripts/meta_train_prior.py, or None (fresh)"""
    hidden_size: int = 64
    """EBMM core: hidden size of its MLPEnergy"""
    dynamic_size: int = 32
    """EBMM core: memory units of its MLPEnergy (writable floats: (P + 1) * dynamic_size, P = position + key +
    value)"""
    write_steps: int = 3
    """EBMM core: write steps T"""
    read_steps: int = 3
    """EBMM core: read steps K"""
    grad_norm_term: bool = False
    """EBMM core: include the paper's alpha * |grad_x E|^2 term in the writing loss (third-order graphs in every RL
    update)"""
    write_queries: bool | None = None
    """also store query patterns in the EBMM memory (default: only for Familiarity, whose stream repeats itself)"""
    protocol: Literal["auto", "generic", "probe"] = "auto"
    """EpisodeMemoryWrapper's protocol: auto (probe for the ebmm/ probes, generic otherwise), generic (every step
    stores its whole observation; no phase protocol), probe"""
    max_patterns: int | None = None
    """rows of the memory agents' history window (FIFO; default: the probe's schedule, or 32 for other envs)"""
    include_action_reward: bool = False
    """every agent sees the previous action and reward beside the observation"""
    encoder: Literal["auto", "linear", "cnn"] = "auto"
    """EBMM core's embedding of a row (auto: a small CNN for rows that hold an image, else linear + tanh)"""
    aux_coef: float = 0.0
    """weight of the EBMM core's auxiliary loss (the paper's objective on the agent's rows) in RL updates (0: none)"""
    bptt_steps: int | None = 8
    """ebmm-recurrent: backpropagate each read through its last k writes, from the state the rollout stored
    (EBMMRecurrentPPO); None: through the whole minibatch sequence"""
    similarities: bool | None = None
    """add the retrieved pattern's similarity to each stored one to the features (default: only for ImageRecall,
    whose answer is a position)"""
    features: tuple[str, ...] | None = None
    """feature parts of a memory extractor, in order (``ebmm_rl.rl.FEATURE_PARTS``: retrieved, energies, query,
    phase, similarities; baselines have no energies). Default under the probe protocol: ``TASK_FEATURES`` of the env
    family (ImageRecall: similarities, energies, phase; BinaryRecall: retrieved, phase), else the extractor's (every
    part but similarities)"""
    frame_stack: int = 0
    """observations stacked by ``--memory frame-stack`` (0: the episode length, so the whole episode is visible)"""
    lstm_hidden_size: int = 64
    """LSTM units of ``--memory lstm``"""
    net_arch: tuple[int, ...] = (64, 64)
    """hidden sizes of the policy and value MLPs"""
    learning_rate: float = 3e-4
    """Adam (PPO) / RMSprop (A2C) learning rate"""
    n_steps: int = 128
    """steps per environment per rollout"""
    batch_size: int = 64
    """PPO minibatch size"""
    n_epochs: int = 4
    """PPO epochs per rollout"""
    gamma: float = 0.99
    """discount factor"""
    ent_coef: float = 0.0
    """entropy bonus"""
    gae_lambda: float | None = None
    """GAE lambda (default: the algorithm's, PPO / RecurrentPPO 0.95, A2C 1.0)"""
    clip_range: float | None = None
    """PPO clipping range (default: PPO's, 0.2; not for A2C)"""
    vf_coef: float | None = None
    """value-loss weight (default: the algorithm's, 0.5)"""
    max_grad_norm: float | None = None
    """gradient-norm clipping (default: the algorithm's, 0.5)"""
    target_kl: float | None = None
    """PPO stops an update's epochs early when the approximate KL to the old policy passes 1.5 x this (default: no
    limit; not for A2C)"""
    eval_freq: int = 10_000
    """environment steps (over all envs) between evaluations (0: no evaluation)"""
    eval_episodes: int = 20
    """episodes per evaluation (deterministic policy)"""
    checkpoint_freq: int = 0
    """environment steps (over all envs) between periodic checkpoints ``checkpoint.zip`` in the run folder, written
    atomically, also at the end (0: none); ``--resume`` continues from it"""
    preset: str | None = None
    """defaults from a preset, ``<Family>-<Level>/<agent>`` of ``agents/presets/<Family>.yml`` (e.g.
    ``KeyValueRecall-Medium/mlp``; ``PRESETS_DIR``) or a YAML file of Args fields; explicit flags override it"""
    resume: str | None = None
    """continue this run folder from its ``checkpoint.zip`` (its num_timesteps) to --total-timesteps, with the run's
    own settings (``args.json``); only the budget, evaluation, checkpoint, progress-bar, thread and device flags may
    change. The checkpoint loads without running code from it; a run already at --total-timesteps has nothing to do"""
    run_root: str = "runs"
    """folder of TensorBoard run folders"""
    progress_bar: bool = True
    """show SB3's progress bar (needs the rich and tqdm packages; skipped when missing); when stdout is not a
    terminal, a line at every quarter of the run instead"""
    log_stdout: bool = True
    """print SB3's logger table of every rollout on stdout (``--no-log-stdout``: TensorBoard only)"""
    threads: int = 1
    """torch CPU threads"""
    device: str = "cpu"
    """torch device of the agent (``auto`` picks CUDA when there is one)"""


def _base(env: gym.Env, options: WrapOptions, rows: bool = False) -> gym.Env:
    """MiniGrid's image alone; with ``rows`` and ``include_action_reward`` the observation's row with both."""
    space = env.observation_space
    if isinstance(space, spaces.Dict) and "mission" in space.spaces and "image" in space.spaces:
        from minigrid.wrappers import ImgObsWrapper

        env = OneHotCodes(ImgObsWrapper(env), MINIGRID_CODES)  # symbolic codes, not pixels: one-hot for every agent
    if rows and options.include_action_reward:
        env = RowObservation(env, include_action_reward=True)
    return env


def _wrap_none(env: gym.Env, options: WrapOptions) -> gym.Env:
    return _base(env, options, rows=True)


def _wrap_ebmm(env: gym.Env, options: WrapOptions) -> gym.Env:
    env = _base(env, options)
    is_probe = _is_probe(env) and options.protocol != "generic"
    return EpisodeMemoryWrapper(
        env,
        max_patterns=options.max_patterns,
        write_phases=(0, 1) if options.write_queries and is_probe else (0,),
        protocol=options.protocol,
        include_action_reward=options.include_action_reward and not is_probe,
    )


def _wrap_ebmm_recurrent(env: gym.Env, options: WrapOptions) -> gym.Env:
    return _base(env, options)  # EBMMRecurrentPPO adds the previous action and reward itself


def _is_probe(env: gym.Env) -> bool:
    space = env.observation_space
    return isinstance(space, spaces.Dict) and "pattern" in space.spaces and "phase" in space.spaces


def _wrap_frame_stack(env: gym.Env, options: WrapOptions) -> gym.Env:
    size = options.frame_stack or int(getattr(env.unwrapped, "episode_length", 0)) or 4
    return FrameStackObservation(_base(env, options, rows=True), size, padding_type="zero")


def _wrap_lstm(env: gym.Env, options: WrapOptions) -> gym.Env:
    env = _base(env, options, rows=True)
    if isinstance(env.action_space, spaces.MultiBinary):
        return MultiBinaryToMultiDiscrete(env)  # RecurrentPPO crashes on MultiBinary (docs/envs.md)
    return env


MINIGRID_CODES = 11
"""MiniGrid's symbolic observation holds object (0-10), colour (0-5) and state (0-2) indices."""


TASK_FEATURES: dict[str, tuple[str, ...]] = {
    "ImageRecall": ("similarities", "energies", "phase"),
    "BinaryRecall": ("retrieved", "phase"),
}
"""Default feature parts of the memory agents per env family (``energies`` is dropped for baselines); other families
use the extractor's default (every part but similarities). What the answer is made of decides: ImageRecall answers
a position (which stored image was recalled), BinaryRecall the stored pattern itself, of which the query is a
worse copy. Measured with frozen meta-trained memories and linear heads (``docs/rl.md``): ImageRecall 0.17 with
the default parts against 0.85 with these (30,720 steps); BinaryRecall 0.689 against 0.763 and 0.661 against
0.733 (two memories, 50,176 steps, one seed each)."""


def _feature_kwargs(args: Args, energies: bool) -> dict[str, Any]:
    """``similarities`` and ``features`` of a memory extractor (see ``Args.features`` and :data:`TASK_FEATURES`)."""
    if args.features is not None:
        return dict(similarities=bool(args.similarities), features=args.features)
    # TASK_FEATURES name parts of the probe protocol (``phase``); the generic protocol has none of them
    family = None if args.protocol == "generic" else next((f for f in TASK_FEATURES if f in args.env), None)
    if family is None or (family == "ImageRecall" and args.similarities is False):
        return dict(similarities=bool(args.similarities))
    features = tuple(n for n in TASK_FEATURES[family] if energies or n != "energies")
    if args.similarities and "similarities" not in features:
        features = (*features, "similarities")
    return dict(similarities="similarities" in features, features=features)


def memory_checkpoint_record(path: str | Path) -> dict[str, Any]:
    """The architecture of the ``--memory-checkpoint`` at ``path`` in plain values (``memory_spec``), for ``args.json``.

    What rebuilds the policy of an agent zip without the file (the zip holds the weights).
    """
    return dict(memory_spec=memory_spec(load_memory(path)))


def _checkpoint_memory(args: Args, saved: SavedCheckpoint | None) -> torch.nn.Module:
    """The ``--memory-checkpoint`` memory.

    Read from the file when ``saved`` is ``None`` (training), else rebuilt untrained from ``saved.record``, for an
    agent zip whose weights then replace it.
    """
    if saved is None:
        return load_memory(args.memory_checkpoint)  # an object: it travels inside model.zip
    return build_memory(saved.record["memory_spec"], max_parameters=saved.max_parameters)


def _core_kwargs(args: Args, saved: SavedCheckpoint | None = None) -> dict[str, Any]:
    """The EBMM core of ``args``: ``memory=`` (a :class:`CoreConfig`'s fields) or ``core=`` (a pre-trained core)."""
    if args.memory_checkpoint:
        core = _checkpoint_memory(args, saved)
        if not isinstance(core, MemoryCore):
            raise UsageError(
                f"--memory-checkpoint {args.memory_checkpoint} holds a {type(core).__name__}, not an agent's "
                "MemoryCore (a memory of whole observation rows, from before key/value rows, does not fit); "
                "pre-train a core with scripts/meta_train_env.py"
            )
        return dict(core=core)
    ebmm = dict(write_steps=args.write_steps, read_steps=args.read_steps, use_grad_norm_term=args.grad_norm_term)
    fields = ("embed_size", "key_size", "value_size", "heads", "write_gate", "memory_prior", "encoder", "hidden_size",
              "dynamic_size")  # fmt: skip
    return dict(memory=dict(ebmm=ebmm, **{name: getattr(args, name) for name in fields}))


def _ebmm_policy(args: Args, space: spaces.Space, saved: SavedCheckpoint | None) -> tuple[str | type, dict[str, Any]]:
    kwargs = dict(freeze_memory=args.freeze_memory, aux_coef=args.aux_coef, **_core_kwargs(args, saved))
    return EBMMPolicy, dict(features_extractor_kwargs=kwargs)


def _ebmm_recurrent_policy(
    args: Args, space: spaces.Space, saved: SavedCheckpoint | None
) -> tuple[str | type, dict[str, Any]]:
    from ebmm_rl.rl.recurrent import EBMMRecurrentPolicy

    kwargs = dict(bptt_steps=args.bptt_steps, aux_coef=args.aux_coef, **_core_kwargs(args, saved))
    return EBMMRecurrentPolicy, kwargs


def _baseline_policy(
    name: str, args: Args, space: spaces.Space, saved: SavedCheckpoint | None = None
) -> tuple[str | type, dict[str, Any]]:
    """``MultiInputPolicy`` + :class:`MemoryExtractor` over the baseline ``name`` of ``ebmm_rl.protocol.MEMORIES``."""
    kwargs: dict[str, Any] = dict(freeze_memory=args.freeze_memory, **_feature_kwargs(args, energies=False))
    if args.memory_checkpoint:
        if args.memory_budget is not None:
            raise ValueError("--memory-budget sizes a fresh memory; it cannot be combined with --memory-checkpoint")
        memory = _checkpoint_memory(args, saved)
        expected = MEMORY_REGISTRY[name].cls
        if not isinstance(memory, expected):
            raise ValueError(
                f"{args.memory_checkpoint} holds a {type(memory).__name__}, not a {expected.__name__}; "
                f"use --memory {args.memory} with a checkpoint of scripts/meta_train_baseline.py --model {name}"
            )
        kwargs["memory"] = memory
    else:
        kwargs["memory"] = name
        if args.memory_budget is not None:
            kwargs["memory_kwargs"] = dict(budget=args.memory_budget)
    return "MultiInputPolicy", dict(features_extractor_class=MemoryExtractor, features_extractor_kwargs=kwargs)


def _plain_policy(args: Args, space: spaces.Space, saved: SavedCheckpoint | None) -> tuple[str | type, dict[str, Any]]:
    return ("MultiInputPolicy" if isinstance(space, spaces.Dict) else "MlpPolicy"), {}


def _lstm_policy(args: Args, space: spaces.Space, saved: SavedCheckpoint | None) -> tuple[str | type, dict[str, Any]]:
    name = "MultiInputLstmPolicy" if isinstance(space, spaces.Dict) else "MlpLstmPolicy"
    return name, dict(lstm_hidden_size=args.lstm_hidden_size)


MEMORIES: dict[str, MemoryKind] = {
    "ebmm": MemoryKind("PPO/A2C + EBMMExtractor over EpisodeMemoryWrapper (docs/rl.md)", _wrap_ebmm, _ebmm_policy),
    "ebmm-recurrent": MemoryKind(
        "RecurrentPPO + EBMMRecurrentPolicy: the memory's fast weights are the recurrent state",
        _wrap_ebmm_recurrent,
        _ebmm_recurrent_policy,
        recurrent=True,
    ),
    "mlp": MemoryKind("PPO/A2C, no memory", _wrap_none, _plain_policy),
    "frame-stack": MemoryKind("PPO/A2C over the last --frame-stack observations", _wrap_frame_stack, _plain_policy),
    "lstm": MemoryKind("sb3-contrib RecurrentPPO, LSTM", _wrap_lstm, _lstm_policy, recurrent=True),
    "memnet": MemoryKind(
        "PPO/A2C + MemoryExtractor, Memory Networks (FIFO slots read by soft attention)",
        _wrap_ebmm,
        functools.partial(_baseline_policy, "memnet"),
    ),
    "mann": MemoryKind(
        "PPO/A2C + MemoryExtractor, MANN (least-recently-used slot writes)",
        _wrap_ebmm,
        functools.partial(_baseline_policy, "mann"),
    ),
    "plasticity": MemoryKind(
        "PPO/A2C + MemoryExtractor, differentiable plasticity (Hebbian trace)",
        _wrap_ebmm,
        functools.partial(_baseline_policy, "plasticity"),
    ),
    "modern-hopfield": MemoryKind(
        "PPO/A2C + MemoryExtractor, modern Hopfield retrieval over the stored patterns (learned beta)",
        _wrap_ebmm,
        functools.partial(_baseline_policy, "modern_hopfield"),
    ),
    "lstm-memory": MemoryKind(
        "PPO/A2C + MemoryExtractor, an LSTM that reads the history then the query (H = 64; not RecurrentPPO)",
        _wrap_ebmm,
        functools.partial(_baseline_policy, "lstm"),
    ),
}
"""Every ``--memory`` choice. A new baseline memory is one row here (and, if it needs them, fields in ``Args``).

The baseline memories of ``ebmm_rl.protocol.MEMORIES`` that can act as an agent's memory are the rows ``memnet``,
``mann``, ``plasticity``, ``modern-hopfield`` and ``lstm-memory`` (the registry's ``lstm``, renamed so as not to
clash with the RecurrentPPO agent ``lstm``), all PPO/A2C + :class:`~ebmm_rl.rl.MemoryExtractor` over
``EpisodeMemoryWrapper``, sized by ``--memory-budget`` (default: ``DEFAULT_RL_BUDGETS``). The denoising auto-encoder
and the VAE (``dae``, ``vae``) are left out: they write nothing (memory size 0) and only denoise the query with a
prior learned over the data, so as agents they would be a memoryless policy with extra layers (``mlp`` is that
baseline). The classical Hopfield rules (``hebb``, ``storkey``, ``pseudo_inverse``) have no parameters to train and
no masked write; ``ebmm_rnn`` is EBMM, served by ``ebmm``."""


def memory_kind(name: str) -> MemoryKind:
    """The row of :data:`MEMORIES` called ``name``.

    Raises:
        ValueError: no such memory.
    """
    if name not in MEMORIES:
        raise ValueError(f"unknown memory {name!r}; choose among {sorted(MEMORIES)}")
    return MEMORIES[name]


def wrap_env(env: gym.Env, memory: str, options: WrapOptions = WrapOptions()) -> gym.Env:
    """Wrap one environment for ``memory`` (picklable by reference, so SubprocVecEnv workers can use it)."""
    return memory_kind(memory).wrap(env, options)


def wrap_options(args: Args) -> WrapOptions:
    """The :class:`WrapOptions` of ``args``."""
    return WrapOptions(
        write_queries=_write_queries(args),
        frame_stack=args.frame_stack,
        max_patterns=args.max_patterns,
        protocol=args.protocol,
        include_action_reward=args.include_action_reward,
    )


def env_id(name: str) -> str:
    """``name`` with the module prefix that registers it in a fresh worker process (``envs:``, ``minigrid:``)."""
    if ":" in name:
        return name
    if name.startswith("ebmm/"):
        return f"envs:{name}"
    if name.startswith("bsuite/memory_"):
        if importlib.util.find_spec("bsuite") is None or importlib.util.find_spec("shimmy") is None:
            raise ValueError(f"{name} needs bsuite and shimmy: pip install -e '.[bsuite]'")
        return f"agents.bsuite_envs:{name}"
    if name.startswith("MiniGrid-"):
        if importlib.util.find_spec("minigrid") is None:
            raise ValueError(f"{name} needs the minigrid package: pip install -e '.[minigrid]'")
        return f"minigrid:{name}"
    return name


def make_env(args: Args, n_envs: int | None = None, seed: int | None = None) -> VecEnv:
    """The vectorised, wrapped environment of ``args`` (``args.vec_env``: SubprocVecEnv when more than one env)."""
    memory_kind(args.memory)
    n_envs = args.n_envs if n_envs is None else n_envs
    subproc = n_envs > 1 and args.vec_env != "dummy"
    venv = make_vec_env(
        env_id(args.env),  # the prefix imports the registering module in fresh worker processes
        n_envs=n_envs,
        seed=args.seed if seed is None else seed,
        wrapper_class=wrap_env,
        wrapper_kwargs=dict(memory=args.memory, options=wrap_options(args)),
        vec_env_cls=SubprocVecEnv if subproc else DummyVecEnv,
    )
    return agent_env(venv, args)


def agent_env(venv: VecEnv, args: Args) -> VecEnv:
    """``venv`` as the agent of ``args`` sees it.

    ``EBMMRecurrentPPO`` feeds the previous action and reward back (:class:`~ebmm_rl.rl.PreviousActionReward`), so its
    training and evaluation envs give them too.
    """
    return PreviousActionReward(venv) if algorithm_name(args) == "EBMMRecurrentPPO" else venv


def agent_spaces(env: gym.Env, args: Args) -> tuple[spaces.Space, spaces.Space]:
    """The observation and action spaces the agent of ``args`` sees on ``env`` (wrapped by :func:`wrap_env`)."""
    if algorithm_name(args) == "EBMMRecurrentPPO":
        return action_reward_space(env.observation_space, env.action_space), env.action_space
    return env.observation_space, env.action_space


def policy_of(
    args: Args, space: spaces.Space, saved: SavedCheckpoint | None = None
) -> tuple[str | type, dict[str, Any]]:
    """The SB3 policy (class or registered name) of ``args`` for observations of ``space``, and its kwargs.

    ``saved`` (:class:`SavedCheckpoint`) rebuilds a ``--memory-checkpoint`` memory from ``args.json`` instead of the
    file.
    """
    policy, extra = memory_kind(args.memory).policy(args, space, saved)
    return policy, dict(net_arch=list(args.net_arch), **extra)


def build_model(args: Args, env: VecEnv) -> BaseAlgorithm:
    """The agent of ``args`` on ``env``."""
    kind = memory_kind(args.memory)
    policy, policy_kwargs = policy_of(args, env.observation_space)
    common = dict(
        learning_rate=args.learning_rate,
        n_steps=args.n_steps,
        gamma=args.gamma,
        ent_coef=args.ent_coef,
        seed=args.seed,
        device=args.device,
        verbose=0,
    )
    common.update({k: v for k in ("gae_lambda", "vf_coef", "max_grad_norm") if (v := getattr(args, k)) is not None})
    if args.algo == "a2c" and not kind.recurrent:
        if args.clip_range is not None or args.target_kl is not None:
            raise ValueError("--clip-range and --target-kl are PPO settings; drop them or use --algo ppo")
        return A2C(policy, env, policy_kwargs=policy_kwargs, **common)
    ppo = dict(batch_size=args.batch_size, n_epochs=args.n_epochs, target_kl=args.target_kl)
    if args.clip_range is not None:
        ppo["clip_range"] = args.clip_range
    if kind.recurrent:
        if args.algo != "ppo":
            raise ValueError(f"--memory {args.memory} trains sb3-contrib's RecurrentPPO; use --algo ppo")
        return algorithm_class(algorithm_name(args))(policy, env, policy_kwargs=policy_kwargs, **ppo, **common)
    return PPO(policy, env, policy_kwargs=policy_kwargs, **ppo, **common)


def algorithm_name(args: Args) -> str:
    """``RecurrentPPO``, ``EBMMRecurrentPPO``, ``A2C`` or ``PPO``: the class :func:`build_model` trains for ``args``."""
    if memory_kind(args.memory).recurrent:
        return "EBMMRecurrentPPO" if args.memory == "ebmm-recurrent" else "RecurrentPPO"
    return {"ppo": "PPO", "a2c": "A2C"}[args.algo]


def algorithm_class(name: str) -> type[BaseAlgorithm]:
    """The SB3 class called ``name`` (``PPO``, ``A2C``, sb3-contrib's ``RecurrentPPO``, ``EBMMRecurrentPPO``)."""
    if name == "RecurrentPPO":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO
    if name == "EBMMRecurrentPPO":
        from ebmm_rl.rl.recurrent import EBMMRecurrentPPO

        return EBMMRecurrentPPO
    classes: dict[str, type[BaseAlgorithm]] = {"PPO": PPO, "A2C": A2C}
    if name not in classes:
        raise ValueError(f"unknown algorithm {name!r}; expected PPO, A2C, RecurrentPPO or EBMMRecurrentPPO")
    return classes[name]


def run_name(args: Args) -> str:
    """``{env}__{memory}__{seed}__{time}`` (``/`` in the env id becomes ``-``)."""
    return f"{args.env.replace('/', '-')}__{args.memory}__{args.seed}__{int(time.time())}"


def _write_queries(args: Args) -> bool:
    return args.write_queries if args.write_queries is not None else "Familiarity" in args.env


PRESETS_DIR = Path(__file__).parent / "presets"
"""Folder of the presets: ``<Family>.yml`` maps ``<Family>-<Level>/<agent>`` names to :class:`Args` fields."""

RESUME_FIELDS = frozenset(
    {
        "total_timesteps", "eval_freq", "eval_episodes", "checkpoint_freq", "progress_bar", "log_stdout", "threads",
        "device", "resume",
    }
)  # fmt: skip
"""Fields that ``--resume`` may change; every other one is the run's own (``args.json``)."""

CHECKPOINT, SIDECAR = "checkpoint.zip", "args.json"
"""File names in a run folder: the periodic checkpoint and the run's settings (:func:`write_sidecar`)."""


class UsageError(ValueError):
    """A command-line mistake: :func:`cli` prints it as a usage error and exits with code 2."""


def preset_names() -> list[str]:
    """Every ``<Family>-<Level>/<agent>`` preset of :data:`PRESETS_DIR`."""
    names = []
    for file in sorted(PRESETS_DIR.glob("*.yml")):
        entries = yaml.safe_load(file.read_text()) or {}
        names += [name for name in entries if not name.startswith(".")]  # ".common": YAML anchors only
    return names


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` (from YAML or JSON) is a value of the annotation ``hint`` of an :class:`Args` field."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, option) for option in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, list | tuple) and all(_fits(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    """``hint`` in words, for a usage error."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0])}s"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    return names.get(hint, str(hint))


def _args_fields(values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` checked against :class:`Args`: known fields, each of its field's type (lists become tuples)."""
    if not isinstance(values, dict):
        raise UsageError(f"{source} must be a mapping of Args fields, not {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(Args)}
    unknown = sorted(set(values) - names, key=str)
    if unknown:
        raise UsageError(f"{source}: unknown fields {unknown}; the fields are agents.train.Args's: {sorted(names)}")
    hints = typing.get_type_hints(Args)
    for name, value in values.items():
        if not _fits(value, hints[name]):
            hint = " (YAML reads 1e-3 as text; write 1.0e-3)" if isinstance(value, str) and hints[name] is float else ""
            raise UsageError(f"{source}: {name} must be {_describe(hints[name])}, got {value!r}{hint}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _read_yaml(file: Path, source: str) -> Any:
    """The YAML document of ``file``, or a :class:`UsageError` naming ``source`` and the line of a syntax error."""
    try:
        return yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise UsageError(f"{source}: {file} is not valid YAML{line}: {getattr(error, 'problem', error)}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{source}: cannot read {file} ({error})") from None


def load_preset(name: str) -> dict[str, Any]:
    """The :class:`Args` fields of preset ``name``: ``<Family>-<Level>/<agent>`` or the path of a YAML mapping.

    Raises:
        UsageError: no such preset, or fields that :class:`Args` does not have.
    """
    if name.endswith((".yml", ".yaml")):
        if not Path(name).is_file():
            raise UsageError(f"--preset {name}: no such file")
        values = _read_yaml(Path(name), f"--preset {name}") or {}
    else:
        family = name.split("-")[0].split("/")[0]
        file = PRESETS_DIR / f"{family}.yml"
        entries = _read_yaml(file, f"--preset {name}") if file.is_file() else {}
        if not isinstance(entries, dict) or name not in entries:
            raise UsageError(f"unknown preset {name!r}; choose among {preset_names()} or give a .yml file")
        values = entries[name]
    fields = _args_fields(values, f"preset {name}")
    if "preset" in fields or "resume" in fields:
        raise UsageError(f"preset {name} may not set preset or resume")
    return fields


def _args_from_dict(values: dict[str, Any], source: str) -> Args:
    return dataclasses.replace(Args(), **_args_fields(values, source))


def write_sidecar(run_dir: Path, args: Args, checkpoint: dict[str, Any] | None = None) -> None:
    """Write ``run_dir/args.json`` (atomically): the algorithm's class name and ``args``, for evaluation and resume.

    ``checkpoint``: :func:`memory_checkpoint_record` of ``--memory-checkpoint`` (stored as ``memory_checkpoint``), so
    that the run's agent zips load without that file.
    """
    record: dict[str, Any] = dict(algo=algorithm_name(args), args=dataclasses.asdict(args))
    if checkpoint is not None:
        record["memory_checkpoint"] = checkpoint
    tmp = run_dir / f"{SIDECAR}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, run_dir / SIDECAR)


ALGORITHMS = ("PPO", "A2C", "RecurrentPPO", "EBMMRecurrentPPO")
"""The algorithms :func:`algorithm_class` knows, by class name."""


def read_run(run_dir: str | Path) -> tuple[str, Args, dict[str, Any] | None]:
    """``(algorithm name, Args, memory-checkpoint record or None)`` of a run folder written by :func:`main`.

    Raises:
        UsageError: the folder has no ``args.json``, or one that is not JSON of this layout.
    """
    file = Path(run_dir) / SIDECAR
    if not file.is_file():
        raise UsageError(f"{file} not found: {run_dir} is not a run folder of agents.train")
    try:
        record = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(
            f"{file} is not valid JSON ({error}); agents.train writes it: restore it from a copy"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("args"), dict) or "algo" not in record:
        raise UsageError(f"{file} is not agents.train's record: it needs 'algo' and an 'args' mapping")
    if record["algo"] not in ALGORITHMS:
        raise UsageError(f"{file}: unknown algo {record['algo']!r}; expected one of {list(ALGORITHMS)}")
    checkpoint = record.get("memory_checkpoint")
    if checkpoint is not None and not (
        isinstance(checkpoint, dict) and isinstance(checkpoint.get("memory_spec"), dict)
    ):
        raise UsageError(f"{file}: 'memory_checkpoint' must be a mapping with a 'memory_spec' mapping")
    return record["algo"], _args_from_dict(record["args"], str(file)), checkpoint


def read_sidecar(run_dir: str | Path) -> tuple[str, Args]:
    """``(algorithm name, Args)`` of a run folder written by :func:`main` (:func:`read_run` without the record).

    Raises:
        UsageError: the folder has no ``args.json``, or a malformed one.
    """
    algo, args, _ = read_run(run_dir)
    return algo, args


def load_run_agent(
    path: str | Path,
    algo: str,
    args: Args,
    observation_space: spaces.Space,
    action_space: spaces.Space,
    checkpoint: dict[str, Any] | None = None,
    env: VecEnv | None = None,
    contents: ZipContents | None = None,
) -> BaseAlgorithm:
    """The agent zip at ``path`` of a run of ``args``, loaded without unpickling anything (:mod:`agents.safe_load`).

    The zip's pickled entries are rebuilt from ``args`` (policy and its kwargs, schedules), ``algo`` and the
    environment's spaces; a ``--memory-checkpoint`` memory from ``checkpoint`` (``args.json``'s record) or, for
    runs written before it, from the file if it is still there. ``contents``: :func:`agents.safe_load.read_zip`'s
    result for ``path`` if the caller has it.

    Raises:
        AgentZipError: the zip cannot be read or loaded safely (see :func:`agents.safe_load.load_agent`).
        UsageError: a ``--memory-checkpoint`` run whose memory can be rebuilt from neither.
    """
    contents = read_zip(path) if contents is None else contents
    saved = None
    if args.memory_checkpoint:
        if checkpoint is None and Path(args.memory_checkpoint).is_file():
            checkpoint = memory_checkpoint_record(args.memory_checkpoint)
        if checkpoint is None:
            raise UsageError(
                f"{path}: its run used --memory-checkpoint {args.memory_checkpoint}, which is not there, and its "
                f"{SIDECAR} does not describe that memory; put the file back at that path"
            )
        saved = SavedCheckpoint(checkpoint, contents.parameters)
    try:
        policy, policy_kwargs = policy_of(args, observation_space, saved)
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"{path}: cannot rebuild its policy from the run's settings ({error})") from None
    known = KnownAgent(algorithm_class(algo), policy, policy_kwargs, observation_space, action_space, args.clip_range)
    return load_agent(path, known, env=env, device=args.device, contents=contents)


def check_env_id(name: str) -> None:
    """Raise :class:`UsageError` unless ``name`` is a registered gymnasium id (``module:`` prefixes imported)."""
    try:
        full = env_id(name)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if ":" in full:
        module, full = full.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise UsageError(f"--env {name}: cannot import {module} ({error})") from None
    try:
        gym.spec(full)
    except gym.error.Error as error:
        raise UsageError(f"unknown --env {name!r} ({error}); see docs/envs.md for this project's ids") from None


def validate(args: Args) -> None:
    """Check ``args`` before anything is created.

    Raises:
        UsageError: the first mistake found, saying what to give instead.
    """
    if args.memory not in MEMORIES:
        raise UsageError(f"unknown --memory {args.memory!r}; choose among {sorted(MEMORIES)}")
    check_env_id(args.env)
    positive = ("total_timesteps", "n_envs", "n_steps", "batch_size", "n_epochs", "threads")
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    for name in ("eval_freq", "checkpoint_freq", "frame_stack"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 (off) or positive, got {getattr(args, name)}")
    if args.eval_freq > 0 and args.eval_episodes < 1:
        raise UsageError(f"--eval-episodes must be at least 1 with --eval-freq > 0, got {args.eval_episodes}")
    if args.learning_rate <= 0:
        raise UsageError(f"--learning-rate must be positive, got {args.learning_rate}")
    if not 0 <= args.gamma <= 1:
        raise UsageError(f"--gamma must lie in [0, 1], got {args.gamma}")
    recurrent = MEMORIES[args.memory].recurrent
    if recurrent and args.algo != "ppo":
        raise UsageError(f"--memory {args.memory} trains sb3-contrib's RecurrentPPO; use --algo ppo")
    if args.algo == "a2c" and not recurrent and (args.clip_range is not None or args.target_kl is not None):
        raise UsageError("--clip-range and --target-kl are PPO settings; drop them or use --algo ppo")
    if args.device != "auto":
        try:
            device = torch.device(args.device)
        except (RuntimeError, ValueError):
            raise UsageError(f"--device {args.device!r} is not a torch device; use cpu, cuda or auto") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError(
                f"--device {args.device}: this torch build or machine has no CUDA device; use --device cpu"
            )
    for name in ("max_patterns", "embed_size", "key_size", "value_size", "hidden_size", "dynamic_size",
                 "write_steps", "read_steps"):  # fmt: skip
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.dynamic_size > args.hidden_size:
        raise UsageError(f"--dynamic-size ({args.dynamic_size}) must not exceed --hidden-size ({args.hidden_size})")
    if args.memory_prior not in (None, "auto") and not Path(args.memory_prior).is_file():
        raise UsageError(f"--memory-prior {args.memory_prior}: no such file (auto, None, or a prior file of "
                         "scripts/meta_train_prior.py)")  # fmt: skip
    bad_heads = [h for h in args.heads if h not in HEAD_KINDS]
    if not args.heads or bad_heads:
        raise UsageError(f"--heads takes one or more of {', '.join(HEAD_KINDS)}; got {list(args.heads)}")
    if not args.aux_coef >= 0:
        raise UsageError(f"--aux-coef must be a number >= 0, got {args.aux_coef}")
    if args.bptt_steps is not None and args.bptt_steps < 1:
        raise UsageError(f"--bptt-steps must be at least 1 (or None: the whole sequence), got {args.bptt_steps}")
    if args.memory_checkpoint is not None and args.resume is None and not Path(args.memory_checkpoint).is_file():
        raise UsageError(
            f"--memory-checkpoint {args.memory_checkpoint}: no such file (a meta-training checkpoint: "
            "scripts/meta_train_env.py --env <id> --run-root <folder> makes one)"
        )
    if args.memory_checkpoint is not None and args.memory_budget is not None:
        raise UsageError("--memory-budget sizes a fresh memory; it cannot be combined with --memory-checkpoint")
    if args.resume is not None:
        _check_resumable(args.resume)
        _, stored, _ = read_run(args.resume)
        changed = [
            f"--{f.name.replace('_', '-')} (run: {getattr(stored, f.name)!r}, given: {getattr(args, f.name)!r})"
            for f in dataclasses.fields(Args)
            if f.name not in RESUME_FIELDS and getattr(stored, f.name) != getattr(args, f.name)
        ]
        if changed:
            raise UsageError(f"--resume continues the run with its own settings; these differ: {', '.join(changed)}")


def _check_resumable(run_dir: str) -> None:
    """A usage error unless ``run_dir`` holds a readable ``checkpoint.zip`` (:func:`agents.safe_load.read_zip`)."""
    if not (Path(run_dir) / CHECKPOINT).is_file():
        raise UsageError(f"--resume {run_dir}: no {CHECKPOINT} there (train with --checkpoint-freq N)")
    try:
        read_zip(Path(run_dir) / CHECKPOINT)
    except AgentZipError as error:
        raise UsageError(f"--resume {run_dir}: {error}") from None


def usage_error(message: str, prog: str = "python -m agents.train") -> None:
    """Print ``message`` as argparse does (``usage`` line, then ``error:``) and exit with code 2."""
    print(f"usage: {prog} [--help] [OPTIONS]\n{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def save_atomically(model: BaseAlgorithm, path: str | Path) -> bool:
    """``model.save(path)`` through a temporary file and a rename; refuses (warns, returns False) non-finite weights."""
    path = Path(path)
    if not all(bool(torch.isfinite(p).all()) for p in model.policy.parameters()):
        warnings.warn(f"not saving {path}: the policy has non-finite weights", RuntimeWarning, stacklevel=2)
        return False
    tmp = path.with_name(f"{path.stem}.tmp.zip")
    model.save(tmp)
    os.replace(tmp, path)
    return True

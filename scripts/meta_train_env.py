r"""Meta-train the agents' EBMM on an environment's own episodes (for ``agents.train --memory-checkpoint``).

The memory has the architecture of ``EBMMExtractor``'s fresh memory (``MLPEnergy``, ``DEFAULT_RL_ENERGY``). Two
objectives (``--targets``):

* ``self-supervised`` (default; any env id, no labels): episodes played by a random policy (or a saved SB3 model,
  ``--collect-model``) become memory rows, as ``EpisodeMemoryWrapper``'s generic protocol stores them; a window of
  up to ``--window`` consecutive rows is written one pattern per step, and every stored pattern is read back from a
  distorted copy (``--keep-fraction`` of its entries kept and clamped, the rest noise): the paper's objective
  (``ebmm_rl.rl.self_supervised``). A learned encoder stays at its seeded initialisation and is saved as
  ``encoder.pt`` in the run folder, where ``agents.train`` finds it;
* ``ground-truth`` (the ``ebmm/...`` probes only): the probe protocol's rows, and the stored row each query asks
  for as the target (``ebmm_rl.rl.env_meta``; privileged labels a real env does not have)::

    python scripts/meta_train_env.py --env ebmm/CartPole-NoVel-v1 --steps 500
    python -m agents.train --env ebmm/CartPole-NoVel-v1 --memory ebmm-recurrent \
        --memory-checkpoint runs/env__CartPole-NoVel-v1__0/best.pt
    python scripts/meta_train_env.py --env ebmm/BinaryRecall-Medium-v0 --targets ground-truth --steps 1500

Resume a killed run with ``--resume --run-dir <folder>``. TensorBoard: ``tensorboard --logdir runs``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import torch
import tyro

from ebmm_rl.checkpoint import save_atomic
from ebmm_rl.cli import check_device, exit_if_finished, train_or_exit, usage_error
from ebmm_rl.energy.mlp import MLPConfig, MLPEnergy
from ebmm_rl.memory import EBMMemory
from ebmm_rl.rl.env_meta import EnvRecallSampler, recall_forward, recall_metrics
from ebmm_rl.rl.extractor import DEFAULT_RL_EBMM_CONFIG, DEFAULT_RL_ENERGY
from ebmm_rl.rl.self_supervised import (
    EpisodeRows,
    build_encoder,
    distort,
    encoder_record,
    masked_stepwise_loss,
    self_supervised_forward,
)
from ebmm_rl.training import MetaTrainer, TrainConfig

ENCODER_FILE = "encoder.pt"
"""The frozen encoder of a self-supervised run, beside its checkpoints."""


@dataclass
class Args:
    """Meta-training of an agent's memory on an environment's episodes."""

    env: str = "ebmm/BinaryRecall-Medium-v0"
    """gymnasium id (any for self-supervised; a memory probe for ground-truth)"""
    targets: Literal["self-supervised", "ground-truth"] = "self-supervised"
    """objective: reconstruct stored rows from distorted copies (no labels), or the probes' ground truth"""
    episodes: int = 200
    """self-supervised: episodes collected for training (held-out evaluation: a quarter as many, other seeds)"""
    max_episode_steps: int = 500
    """self-supervised: cap on the steps of a collected episode"""
    window: int = 32
    """self-supervised: consecutive rows written per training example (the agent's --max-patterns)"""
    keep_fraction: float = 0.5
    """self-supervised: fraction of a query's entries kept (clamped); the rest is uniform noise"""
    include_action_reward: bool = False
    """self-supervised: rows hold the previous action and reward (the agent's --include-action-reward)"""
    encoder: Literal["auto", "identity", "linear", "cnn"] = "auto"
    """self-supervised: the agent's --encoder (a learned one stays at its seeded initialisation here)"""
    pattern_size: int = 32
    """self-supervised: the agent's --pattern-size"""
    collect_model: str | None = None
    """self-supervised: play episodes with this saved agent of agents.train (an ``--memory mlp`` model.zip, loaded
    without running code from it: ``agents.evaluate``) instead of a random policy"""
    collect_algo: Literal["ppo", "a2c", "recurrent-ppo"] = "ppo"
    """self-supervised: the algorithm of --collect-model"""
    write_queries: bool | None = None
    """store query patterns too (EpisodeMemoryWrapper write_phases (0, 1)); default: only for Familiarity,
    as agents.train does"""
    chunk_size: int = 1
    """patterns per written chunk; use the agent's --chunk-size (1: one pattern per env step)"""
    hidden_size: int = DEFAULT_RL_ENERGY["hidden_size"]
    """MLPEnergy hidden size (the agent's --hidden-size)"""
    dynamic_size: int = DEFAULT_RL_ENERGY["dynamic_size"]
    """MLPEnergy memory units (the agent's --dynamic-size)"""
    write_steps: int = DEFAULT_RL_EBMM_CONFIG.write_steps
    """T per chunk (the agent's --write-steps)"""
    read_steps: int = DEFAULT_RL_EBMM_CONFIG.read_steps
    """K (the agent's --read-steps)"""
    batch_size: int = 32
    """query rows (each with its own episode history) per meta-step"""
    steps: int = 1500
    """meta-steps in total"""
    lr: float = 1e-3
    """AdamW learning rate of the weights"""
    schedule_lr: float = 1e-2
    """AdamW learning rate of step sizes, momenta and loss weights"""
    lr_schedule: str = "cosine"
    """constant or cosine (to 5% of the rate at --steps)"""
    grad_clip: float = 0.05
    """global gradient-norm clipping (paper: 0.05)"""
    eval_rows: int = 512
    """query rows of the held-out evaluation (fixed seed)"""
    eval_every: int = 250
    """steps between evaluations (0: only at the end)"""
    checkpoint_every: int = 100
    """steps between checkpoints"""
    time_limit_min: float = 0.0
    """stop after this many CPU minutes of this process (0: no limit)"""
    seed: int = 0
    """seed of initialisation and episodes"""
    device: str = "cpu"
    """torch device"""
    threads: int = 1
    """CPU threads for torch (0: torch's default)"""
    run_root: str = "runs"
    """folder of run folders"""
    run_dir: str | None = None
    """this run's folder (default: run_root/env__{id}__{seed}); give it with --resume"""
    resume: bool = False
    """continue from run_dir/checkpoint.pt"""
    progress: bool = True
    """show a progress bar"""


def build_memory(args: Args, pattern_size: int, data_range: tuple[float, float]) -> EBMMemory:
    """The extractor's fresh memory for patterns of ``pattern_size`` entries in ``data_range``."""
    energy = MLPEnergy(
        MLPConfig(
            input_size=pattern_size,
            **{**DEFAULT_RL_ENERGY, "hidden_size": args.hidden_size, "dynamic_size": args.dynamic_size},
        )
    )
    config = dataclasses.replace(
        DEFAULT_RL_EBMM_CONFIG,
        write_steps=args.write_steps,
        read_steps=args.read_steps,
        data_range=data_range,
    )
    return EBMMemory(energy, config)


def _make_env(args: Args):  # noqa: ANN202
    from agents.train import WrapOptions, env_id, wrap_env

    def make() -> gym.Env:
        return wrap_env(gym.make(env_id(args.env)), "mlp", WrapOptions())  # MiniGrid: the image alone

    return make


def _collect_policy(args: Args):  # noqa: ANN202
    if args.collect_model is None:
        return None
    if args.collect_algo == "recurrent-ppo":
        raise ValueError("--collect-algo recurrent-ppo: a recurrent model needs its state; use a PPO/A2C model")
    from agents.evaluate import load_model  # loads the zip without running code from it (agents.safe_load)
    from agents.train import UsageError

    try:
        model, _ = load_model(args.collect_model, env=args.env, memory="mlp")
    except UsageError as error:
        usage_error(f"--collect-model: {error}")
    return lambda obs, rng: model.predict(obs, deterministic=False)[0]


def main_self_supervised(args: Args) -> dict[str, float]:
    """Self-supervised meta-training on rows of the env's own episodes; prints recall before and after."""
    make = _make_env(args)
    policy = _collect_policy(args)
    train_rows = EpisodeRows(make, args.episodes, args.include_action_reward, policy, args.max_episode_steps, args.seed)
    held_rows = EpisodeRows(
        make, max(args.episodes // 4, 1), args.include_action_reward, policy, args.max_episode_steps, 10**6 + args.seed
    )
    encoder = build_encoder(train_rows.layout, args.encoder, args.pattern_size, args.seed)
    encoder.requires_grad_(False)
    memory = build_memory(args, encoder.pattern_size, encoder.data_range)
    run_dir = _run_dir(args)
    held = held_rows.sample(args.eval_rows, args.window, torch.Generator().manual_seed(10_000 + args.seed))
    held_queries = torch.Generator().manual_seed(20_000 + args.seed)
    forward = self_supervised_forward(encoder, args.chunk_size, args.keep_fraction)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        rows, lengths = held
        with torch.no_grad():
            patterns = encoder(rows)
        mask = torch.arange(rows.shape[1]) < lengths.unsqueeze(1)
        queries, known = distort(patterns, model.config.data_range, args.keep_fraction, held_queries.manual_seed(1))
        with torch.enable_grad():
            state = model.write_chunked(patterns, args.chunk_size, pattern_mask=mask, create_graph=False)
            result = model.read(queries, state, known, create_graph=False)
        _, errors = masked_stepwise_loss(patterns, result, mask)
        query_error = float(((queries - patterns).pow(2).sum(dim=2) * mask).sum() / mask.sum())
        return {"sq_error": float(errors[-1]), "sq_error_query": query_error}

    print(f"{args.env}: rows of {train_rows.row_size} entries ({train_rows.layout.describe().count(chr(10)) + 1} "
          f"parts), encoder {encoder.kind} -> patterns of {encoder.pattern_size}; memory size {memory.memory_size} "
          f"floats; {len(train_rows.episodes)} episodes ({int(sum(map(len, train_rows.episodes)))} steps) collected; "
          f"run folder {run_dir}")  # fmt: skip
    before = evaluate(memory)
    print("before meta-training: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_atomic(encoder_record(encoder), run_dir / ENCODER_FILE)

    def sample(generator: torch.Generator):  # noqa: ANN202  (a batch of rows and their lengths)
        return train_rows.sample(args.batch_size, args.window, generator)

    after = _train_and_report(args, memory, sample, run_dir, evaluate, forward)
    print(f"use it: --memory-checkpoint {run_dir / 'best.pt'} (the encoder {run_dir / ENCODER_FILE} is found there)")
    return after


def _run_dir(args: Args) -> Path:
    return Path(args.run_dir or Path(args.run_root) / f"env__{args.env.split('/')[-1]}__{args.seed}")


def _train_and_report(
    args: Args, memory: EBMMemory, sample: Callable, run_dir: Path, evaluate: Callable, forward: Callable
) -> dict[str, float]:
    """Meta-train ``memory`` with ``MetaTrainer`` and print the metrics it ends with.

    ``sample``, ``evaluate`` and ``forward`` are ``MetaTrainer``'s arguments of those names.
    """
    trainer = MetaTrainer(memory, sample, _train_config(args), run_dir=run_dir, hparams=asdict(args),
                          evaluate=evaluate, forward=forward)  # fmt: skip
    start = time.process_time()
    after = train_or_exit(trainer, resume=args.resume)
    print(
        f"after {trainer.step} meta-steps ({(time.process_time() - start) / 60:.1f} CPU min, {trainer.summary()}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in after.items())
    )
    return after


def _train_config(args: Args) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        lr=args.lr,
        schedule_lr=args.schedule_lr,
        grad_clip=args.grad_clip,
        lr_schedule=args.lr_schedule,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        time_limit_s=60.0 * args.time_limit_min,
        seed=args.seed,
        device=args.device,
        progress=args.progress,
    )


def main(args: Args) -> dict[str, float]:
    """Meta-train, checkpoint, and print recall on held-out episodes before and after."""
    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.resume and args.run_dir is None:
        usage_error("--resume needs --run-dir: the folder of the run to continue")
    if args.resume:
        exit_if_finished(_run_dir(args), args.steps)
    for name in ("steps", "episodes", "window", "batch_size", "eval_rows", "max_episode_steps"):
        if getattr(args, name) < 1:
            usage_error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0.0 <= args.keep_fraction < 1.0:
        usage_error(f"--keep-fraction must lie in [0, 1), got {args.keep_fraction}")
    if args.targets == "self-supervised":
        return main_self_supervised(args)
    write_queries = args.write_queries if args.write_queries is not None else "Familiarity" in args.env
    try:
        sampler = EnvRecallSampler(args.env, write_phases=(0, 1) if write_queries else (0,))
    except ValueError as error:
        usage_error(f"--targets ground-truth: {error}")
    run_dir = _run_dir(args)
    memory = build_memory(args, sampler.pattern_size, sampler.data_range)
    held_out = sampler.sample(args.eval_rows, torch.Generator().manual_seed(10_000 + args.seed))

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return recall_metrics(model, held_out, args.chunk_size)

    before = evaluate(memory)
    print(f"{args.env}: memory size {memory.memory_size} floats, run folder {run_dir}")
    print("before meta-training: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()))
    after = _train_and_report(args, memory, sampler.sampler(args.batch_size), run_dir, evaluate,
                              recall_forward(args.chunk_size))  # fmt: skip
    print(f"use it: --memory-checkpoint {run_dir / 'best.pt'}")
    return after


if __name__ == "__main__":
    main(tyro.cli(Args))

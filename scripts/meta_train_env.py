r"""Pre-train an agent's memory core on an environment's own episodes (for ``agents.train --memory-checkpoint``).

Episodes played by a random policy (or a saved PPO/A2C model, ``--collect-model``) become the rows the agent would
store (with ``--action-reward``, the default, the previous action and reward as ``EBMMRecurrentPPO`` feeds them);
windows of up to ``--window`` consecutive rows are written one row per step through a fresh
:class:`~ebmm_rl.rl.core.MemoryCore`, and every step reads one earlier row of its window back from its clamped key:
the paper's objective on ``[key ; value]`` rows (``ebmm_rl.rl.pretrain``), with the maps at their seeded
initialisation. No labels: any env id works::

    python scripts/meta_train_env.py --env ebmm/CartPole-NoVel-v1 --steps 300
    python -m agents.train --env ebmm/CartPole-NoVel-v1 --memory ebmm-recurrent \
        --memory-checkpoint runs/env__CartPole-NoVel-v1__0/best.pt

The core's settings (``--embed-size``, ``--hidden-size``, ...) must be the agent's; the checkpoint holds the whole
core (architecture and weights), so the agent takes them from it. Resume a killed run with ``--resume --run-dir
<folder>``. TensorBoard: ``tensorboard --logdir runs``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import torch
import tyro

from ebmm_rl.cli import RunArgs, start_run, train_and_report, usage_error
from ebmm_rl.rl.core import CoreConfig, MemoryCore
from ebmm_rl.rl.pretrain import EpisodeRows, pretrain_forward, recall_metrics
from ebmm_rl.training import MetaTrainer, TrainConfig

DEFAULTS = CoreConfig()


@dataclass
class Args(RunArgs):
    """Pre-training of an agent's memory core on an environment's episodes (no labels)."""

    env: str = "ebmm/CartPole-NoVel-v1"
    """gymnasium id"""
    episodes: int = 200
    """episodes collected for training (held-out evaluation: a quarter as many, other seeds)"""
    max_episode_steps: int = 500
    """cap on the steps of a collected episode"""
    window: int = 32
    """consecutive rows written per training example"""
    action_reward: bool = True
    """rows hold the previous action and reward, as EBMMRecurrentPPO's do (off: the rows of RecurrentPPO with
    EBMMRecurrentPolicy and of the EBMMExtractor route without --include-action-reward)"""
    codes: int | None = None
    """uint8 observations hold integer codes below this number (one-hot rows); MiniGrid ids get agents.train's
    one-hot wrapper instead"""
    collect_model: str | None = None
    """play episodes with this saved PPO/A2C model (model.zip, loaded without unpickling) instead of a random policy"""
    embed_size: int = DEFAULTS.embed_size
    """the agent's --embed-size"""
    key_size: int = DEFAULTS.key_size
    """the agent's --key-size"""
    value_size: int = DEFAULTS.value_size
    """the agent's --value-size"""
    heads: tuple[str, ...] = DEFAULTS.heads
    """the agent's --heads"""
    write_gate: bool = DEFAULTS.write_gate
    """the agent's --write-gate"""
    hidden_size: int = DEFAULTS.hidden_size
    """the agent's --hidden-size"""
    dynamic_size: int = DEFAULTS.dynamic_size
    """the agent's --dynamic-size"""
    write_steps: int = DEFAULTS.ebmm.write_steps
    """the agent's --write-steps"""
    read_steps: int = DEFAULTS.ebmm.read_steps
    """the agent's --read-steps"""
    batch_size: int = 32
    """windows per meta-step"""
    steps: int = 300
    """meta-steps in total"""
    lr: float = 1e-3
    """AdamW learning rate of the weights"""
    schedule_lr: float = 1e-2
    """AdamW learning rate of step sizes, momenta, loss weights and retention"""
    lr_schedule: str = "cosine"
    """constant or cosine (to 5% of the rate at --steps)"""
    grad_clip: float = 0.05
    """global gradient-norm clipping (paper: 0.05)"""
    eval_rows: int = 256
    """windows of the held-out evaluation (fixed seed)"""
    eval_every: int = 100
    """steps between evaluations (0: only at the end)"""
    checkpoint_every: int = 50
    """steps between checkpoints"""
    time_limit_min: float = 0.0
    """stop after this many CPU minutes of this process (0: no limit)"""
    seed: int = 0
    """seed of initialisation and episodes"""
    device: str = "cpu"
    """torch device"""


def build_core(args: Args, row_size: int) -> MemoryCore:
    """The agent's fresh core for rows of ``row_size`` entries (maps seeded by ``--seed``, then frozen)."""
    config = CoreConfig.build(
        embed_size=args.embed_size,
        key_size=args.key_size,
        value_size=args.value_size,
        heads=args.heads,
        write_gate=args.write_gate,
        hidden_size=args.hidden_size,
        dynamic_size=args.dynamic_size,
        ebmm=dict(write_steps=args.write_steps, read_steps=args.read_steps),
    )
    torch.manual_seed(args.seed)
    core = MemoryCore(row_size, config)
    for part in (core.embed, core.key_map, core.value_map, core.query_key_map, core.query_time_map):
        part.requires_grad_(False)  # the maps stay at their initialisation (ebmm_rl.rl.pretrain)
    if core.gate_map is not None:
        core.gate_map.requires_grad_(False)
    return core


def _make_env(args: Args):  # noqa: ANN202
    from agents.common import WrapOptions, env_id, wrap_env

    def make() -> gym.Env:
        return wrap_env(gym.make(env_id(args.env)), "mlp", WrapOptions())  # MiniGrid: the one-hot image alone

    return make


def _collect_policy(args: Args):  # noqa: ANN202
    if args.collect_model is None:
        return None
    from agents.common import UsageError
    from agents.evaluate import load_model  # loads the zip without running code from it (agents.safe_load)

    try:
        model, _ = load_model(args.collect_model, env=args.env, memory="mlp")
    except UsageError as error:
        usage_error(f"--collect-model: {error}")
    return lambda obs, rng: model.predict(obs, deterministic=False)[0]


def _run_dir(args: Args) -> Path:
    return Path(args.run_dir or Path(args.run_root) / f"env__{args.env.split('/')[-1]}__{args.seed}")


def main(args: Args) -> dict[str, float]:
    """Pre-train, checkpoint, and print held-out recall before and after."""
    start_run(args, args.steps)
    for name in ("steps", "episodes", "batch_size", "eval_rows", "max_episode_steps"):
        if getattr(args, name) < 1:
            usage_error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.window < 2:
        usage_error(f"--window must be >= 2 (a row is read back from a later step), got {args.window}")
    try:
        make = _make_env(args)
        policy = _collect_policy(args)
        episodes = dict(action_reward=args.action_reward, policy=policy, max_steps=args.max_episode_steps,
                        codes=args.codes)  # fmt: skip
        train_rows = EpisodeRows(make, args.episodes, seed=args.seed, **episodes)
        held_rows = EpisodeRows(make, max(args.episodes // 4, 1), seed=10**6 + args.seed, **episodes)
        core = build_core(args, train_rows.row_size)
    except ValueError as error:
        usage_error(str(error))
    run_dir = _run_dir(args)
    held = held_rows.sample(args.eval_rows, args.window, torch.Generator().manual_seed(10_000 + args.seed))

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return recall_metrics(model, held, torch.Generator().manual_seed(20_000 + args.seed))

    def sample(generator: torch.Generator):  # noqa: ANN202  (a batch of windows)
        return train_rows.sample(args.batch_size, args.window, generator)

    steps = int(sum(map(len, train_rows.episodes)))
    print(f"{args.env}: rows of {train_rows.row_size} entries; core memory size {core.memory.memory_size} floats, "
          f"rows [position {core.position_size} | key {core.key_size} | value {core.value_size}]; "
          f"{len(train_rows.episodes)} episodes ({steps} steps) collected; run folder {run_dir}")  # fmt: skip
    config = TrainConfig.from_args(args)
    trainer = MetaTrainer(core, sample, config, run_dir=run_dir, hparams=asdict(args), evaluate=evaluate,
                          forward=pretrain_forward)  # fmt: skip
    after = train_and_report(trainer, evaluate, resume=args.resume)
    route = "ebmm-recurrent" if args.action_reward else "ebmm (or ebmm-recurrent with RecurrentPPO)"
    print(f"use it: python -m agents.train --env {args.env} --memory {route} --memory-checkpoint {run_dir / 'best.pt'}")
    return after


if __name__ == "__main__":
    main(tyro.cli(Args))

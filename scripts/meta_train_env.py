r"""Meta-train the agents' EBMM on a memory-probe environment's own episodes (for ``--memory-checkpoint``).

The memory has the architecture of ``EBMMExtractor``'s fresh memory (``MLPEnergy``, ``DEFAULT_RL_ENERGY``) and
is trained on exactly what the extractor will do inside an agent: write the episode's stored rows chunk by chunk
(``--chunk-size``, 1 = one pattern per env step) and read with the query step's pattern; the target is the stored
row the query asks for (``ebmm_rl.rl.env_meta``)::

    python scripts/meta_train_env.py --env ebmm/BinaryRecall-Medium-v0 --steps 1500 --threads 1
    python -m agents.train --env ebmm/BinaryRecall-Medium-v0 --memory ebmm \
        --memory-checkpoint runs/env__BinaryRecall-Medium-v0__0/best.pt --freeze-memory

Resume a killed run with ``--resume --run-dir <folder>``. TensorBoard: ``tensorboard --logdir runs``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import tyro

from ebmm_rl.cli import check_device
from ebmm_rl.energy.mlp import MLPConfig, MLPEnergy
from ebmm_rl.memory import EBMMemory
from ebmm_rl.rl.env_meta import EnvRecallSampler, recall_forward, recall_metrics
from ebmm_rl.rl.extractor import DEFAULT_RL_EBMM_CONFIG, DEFAULT_RL_ENERGY
from ebmm_rl.training import MetaTrainer, TrainConfig


@dataclass
class Args:
    """Meta-training of an agent's memory on an environment's episodes."""

    env: str = "ebmm/BinaryRecall-Medium-v0"
    """gymnasium id of a memory probe (BinaryRecall, KeyValueRecall, ImageRecall, DelayedRecall, Familiarity)"""
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


def build_memory(args: Args, sampler: EnvRecallSampler) -> EBMMemory:
    """The extractor's fresh memory for this environment's patterns."""
    energy = MLPEnergy(
        MLPConfig(
            input_size=sampler.pattern_size,
            **{**DEFAULT_RL_ENERGY, "hidden_size": args.hidden_size, "dynamic_size": args.dynamic_size},
        )
    )
    config = dataclasses.replace(
        DEFAULT_RL_EBMM_CONFIG,
        write_steps=args.write_steps,
        read_steps=args.read_steps,
        data_range=sampler.data_range,
    )
    return EBMMemory(energy, config)


def main(args: Args) -> dict[str, float]:
    """Meta-train, checkpoint, and print recall on held-out episodes before and after."""
    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    write_queries = args.write_queries if args.write_queries is not None else "Familiarity" in args.env
    sampler = EnvRecallSampler(args.env, write_phases=(0, 1) if write_queries else (0,))
    if args.resume and args.run_dir is None:
        raise SystemExit("--resume needs --run-dir: the folder of the run to continue")
    run_dir = Path(args.run_dir or Path(args.run_root) / f"env__{args.env.split('/')[-1]}__{args.seed}")
    memory = build_memory(args, sampler)
    held_out = sampler.sample(args.eval_rows, torch.Generator().manual_seed(10_000 + args.seed))

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        return recall_metrics(model, held_out, args.chunk_size)

    before = evaluate(memory)
    print(f"{args.env}: memory size {memory.memory_size} floats, run folder {run_dir}")
    print("before meta-training: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()))
    trainer = MetaTrainer(
        memory,
        sampler.sampler(args.batch_size),
        TrainConfig(
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
        ),
        run_dir=run_dir,
        hparams=asdict(args),
        evaluate=evaluate,
        forward=recall_forward(args.chunk_size),
    )
    start = time.process_time()
    after = trainer.train(resume=args.resume)
    print(
        f"after {trainer.step} meta-steps ({(time.process_time() - start) / 60:.1f} CPU min): "
        + ", ".join(f"{k} {v:.4f}" for k, v in after.items())
    )
    print(f"use it: --memory-checkpoint {run_dir / 'best.pt'}")
    return after


if __name__ == "__main__":
    main(tyro.cli(Args))

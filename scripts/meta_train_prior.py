"""Meta-train the memory prior of an agent's core on synthetic key/value rows (``ebmm_rl.rl.prior``).

The prior is what a fresh :class:`~ebmm_rl.rl.core.MemoryCore` of the same architecture starts from
(``CoreConfig.memory_prior="auto"``): the energy network, write rates, read step sizes and momenta and the retention,
meta-trained to store rows ``[position | key | value]`` one per step and to read earlier ones back by their clamped
position, key, or both. No environment is involved::

    python scripts/meta_train_prior.py --steps 3000
    python scripts/meta_train_prior.py --steps 3000 --fast --export ebmm_rl/rl/priors/fast.pt

``--export`` writes the prior file (atomically; the package's shipped priors live in ``ebmm_rl/rl/priors/``).
Resume a killed run with ``--resume --run-dir <folder>``; TensorBoard: ``tensorboard --logdir runs``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import tyro

from ebmm_rl.cli import RunArgs, start_run, train_and_report, usage_error
from ebmm_rl.rl.core import FAST_CORE, CoreConfig, MemoryCore
from ebmm_rl.rl.prior import prior_forward, save_prior, synthetic_rows
from ebmm_rl.training import MetaTrainer, TrainConfig


@dataclass
class Args(RunArgs):
    """Meta-training of the memory prior of the agents' core (synthetic rows, no environment)."""

    fast: bool = False
    """the prior of the smaller core ebmm_rl.rl.FAST_CORE instead of the default core"""
    window: int = 16
    """rows written per training example"""
    batch_size: int = 32
    """windows per meta-step"""
    steps: int = 3000
    """meta-steps in total"""
    lr: float = 1e-3
    """Adam learning rate of the energy network"""
    schedule_lr: float = 1e-2
    """Adam learning rate of step sizes, momenta, loss weights and retention"""
    lr_schedule: str = "cosine"
    """constant or cosine (to 5% of the rate at --steps)"""
    grad_clip: float = 0.05
    """global gradient-norm clipping (paper: 0.05)"""
    eval_windows: int = 256
    """windows of the held-out evaluation (fixed seed)"""
    eval_every: int = 250
    """steps between evaluations (0: only at the end)"""
    checkpoint_every: int = 100
    """steps between checkpoints"""
    time_limit_min: float = 0.0
    """stop after this many CPU minutes of this process (0: no limit)"""
    export: str | None = None
    """write the prior file here at the end (e.g. ebmm_rl/rl/priors/default.pt)"""
    device: str = "cpu"
    """torch device"""


def build_core(args: Args) -> MemoryCore:
    """A core of the chosen architecture with a fresh memory; only the memory and the retention learn."""
    config = CoreConfig.build(**(FAST_CORE if args.fast else {}), memory_prior=None)
    torch.manual_seed(args.seed)
    core = MemoryCore(1, config)
    for part in (core.embed, core.key_map, core.value_map, core.query_key_map, core.query_time_map):
        part.requires_grad_(False)  # not used by the prior's objective
    return core


def main(args: Args) -> dict[str, float]:
    """Meta-train, checkpoint, print held-out read errors before and after, export the prior."""
    start_run(args, args.steps)
    run_dir = Path(args.run_dir or Path(args.run_root) / f"prior__{'fast' if args.fast else 'default'}__{args.seed}")
    for name in ("steps", "batch_size", "eval_windows"):
        if getattr(args, name) < 1:
            usage_error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.window < 2:
        usage_error(f"--window must be >= 2 (a row is read back from a later step), got {args.window}")
    core = build_core(args)
    held = synthetic_rows(core, args.eval_windows, args.window, torch.Generator().manual_seed(10_000 + args.seed))

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        state = torch.random.get_rng_state()
        torch.manual_seed(20_000 + args.seed)  # the same earlier rows are read at every evaluation
        try:
            with torch.no_grad():
                errors = prior_forward(model, held.to(next(model.parameters()).device)).errors
        finally:
            torch.random.set_rng_state(state)
        return {"read_error": float(errors[-1]), "read_error_first": float(errors[0])}

    def sample(generator: torch.Generator) -> tuple[torch.Tensor]:
        return (synthetic_rows(core, args.batch_size, args.window, generator),)

    print(f"memory prior of the {'FAST_CORE' if args.fast else 'default'} core: rows [position {core.position_size} "
          f"| key {core.key_size} | value {core.value_size}], {core.memory.memory_size} writable floats; windows of "
          f"{args.window} rows; run folder {run_dir}")  # fmt: skip
    config = TrainConfig.from_args(args)
    trainer = MetaTrainer(core, sample, config, run_dir=run_dir, hparams=asdict(args), evaluate=evaluate,
                          forward=prior_forward)  # fmt: skip
    after = train_and_report(trainer, evaluate, resume=args.resume)
    if args.export:
        save_prior(trainer.memory.cpu(), args.export)
        print(f"prior written to {args.export}")
    return after


if __name__ == "__main__":
    main(tyro.cli(Args))

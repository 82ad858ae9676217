"""Meta-train EBMM on random binary patterns (paper App. A.2, Table 1).

Example (CPU, about the budget reported in the README)::

    python scripts/meta_train_binary.py --num-patterns 64 --steps 4000 --threads 1   # 4.2 error bits, ~2 h

Paper size (C.1: hidden 1024, 128·64 + 64 = 8256 writable floats) on a GPU, for 8 minutes of the process's CPU
time (about its wall time while it waits on the GPU), TF32 matmuls::

    python scripts/meta_train_binary.py --hidden-size 1024 --batch-size 256 --steps 1000000 --time-limit-min 8 \
        --precision tf32 --device cuda --no-progress

Batches are drawn on ``--device`` (the trainer's generator lives there).

TensorBoard: ``tensorboard --logdir runs``. Resume a killed run with ``--resume --run-dir runs/<name>``.

Figures: *error bits* count the wrong signs of a retrieved pattern over all ``dim`` bits (the ``dim -
num_corrupted`` known bits are clamped, so only corrupted ones can be wrong); ``sq_err`` in the progress bar is
the meta-loss's squared error of the last read iterate, summed over a pattern's bits. The final line prints
chance (the query itself returned: half of the corrupted bits wrong) and the Hebb rule on the same batches.

Exit codes: 0 done (or nothing left to do: a ``--resume`` of a run already at ``--steps``), 1 meta-training
diverged (the message names the step and the last healthy checkpoint), 2 usage error. Divergence: more than
``--max-consecutive-skips`` skipped steps in a row, more than ``--max-rollbacks`` rollbacks, or more than
``--max-skipped-fraction`` of the run's steps skipped. The final line counts the skipped steps and rollbacks.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import tyro

from ebmm_rl.binary_training import binary_evaluator, binary_read_metrics, binary_sampler
from ebmm_rl.cli import RunArgs, start_run, train_or_exit, usage_error
from ebmm_rl.energy import GatedRNNConfig, GatedRNNEnergy
from ebmm_rl.hopfield import HopfieldConfig, hopfield_memory
from ebmm_rl.memory import EBMMConfig, EBMMemory
from ebmm_rl.precision import Precision
from ebmm_rl.training import MetaTrainer, TrainConfig

RULES = (("Hebb", "hebb"), ("Storkey", "storkey"), ("pseudo-inverse", "pseudo_inverse"))
"""The classical Hopfield rules of the final line: (name printed, :func:`~ebmm_rl.hopfield.hopfield_memory` rule)."""

LONGER_RUNS = {(16, 128, 64, 256): (2200, 0.1, 17), (32, 128, 64, 256): (4050, 1.5, 81)}
"""(N, dim, corrupted bits, hidden size) -> (steps, error bits, minutes of one CPU thread) of the longer runs that
docs/results.md records, quoted by the final line of a run that beats no Hopfield rule yet."""


@dataclass
class Args(RunArgs):
    """Meta-training on random ±1 patterns."""

    num_patterns: int = 64
    """patterns written per episode (N)"""
    dim: int = 128
    """bits per pattern"""
    num_corrupted: int = 64
    """bits of each query set to random ±1; the others are known and clamped"""
    hidden_size: int = 256
    """gated-RNN state size (paper: 1024; 256 learns much faster per CPU-minute)"""
    dynamic_size: int = 64
    """memory units: 128·64 + 64 = 8256 writable floats, the Hopfield budget"""
    batch_size: int = 8
    """episodes per meta-step"""
    steps: int = 3000
    """meta-steps in total"""
    time_limit_min: float = 0.0
    """stop after this many minutes of this process's CPU time in the training loop, then checkpoint and evaluate
    (0: no limit)"""
    precision: Precision = "fp32"
    """fp32, tf32 (CUDA TF32 matmuls) or bf16 (autocast of the energy's products; updates stay fp32)"""
    lr: float = 1e-3
    """AdamW learning rate of the weights (paper: 5e-5 over 2e6 steps; 1e-3 learned fastest in a CPU sweep)"""
    schedule_lr: float = 1e-2
    """AdamW learning rate of step sizes, momenta and loss weights (1e-3 adapted them too slowly here)"""
    grad_clip: float = 0.05
    """global gradient-norm clipping (paper: 0.05)"""
    lr_schedule: str = "cosine"
    """learning-rate schedule: cosine (decays to min_lr_ratio of the rate at --steps; it carried the N = 64 run
    past the divergence of the constant rate to 4.2 error bits, docs/results.md) or constant (the paper)"""
    min_lr_ratio: float = 0.05
    """final learning rate of the cosine schedule as a fraction of the initial one"""
    skip_grad_norm: float = 1e4
    """skip a step whose gradient norm (before clipping) exceeds this"""
    max_consecutive_skips: int = 100
    """stop (exit code 1) after this many skipped steps in a row, rollbacks included"""
    rollback_after: int = 20
    """after this many exploding steps in a row, go back to the last healthy weights with halved learning
    rates (0: off; the N = 64 model diverged near step 2000 without it)"""
    max_rollbacks: int = 5
    """stop (exit code 1) instead of rolling back more than this many times"""
    max_skipped_fraction: float = 0.1
    """stop (exit code 1) once more than this fraction of --steps was skipped (1: never)"""
    write_lr_init: float = 0.1
    """initial write learning rates (paper: 1e-4, which needs far more steps than a CPU run has)"""
    read_step_init: float = 2.0
    """initial first read step size"""
    write_steps: int = 5
    """T"""
    read_steps: int = 5
    """K"""
    eval_batches: int = 100
    """random batches of the final evaluation (use scripts/eval_binary.py for the 1000-batch table)"""
    eval_every: int = 500
    """steps between evaluations (0: only at the end)"""
    checkpoint_every: int = 100
    """steps between checkpoints"""
    log_every: int = 10
    """steps between TensorBoard scalars"""
    status_every_s: float = 60.0
    """with --no-progress, print a status line every this many seconds (0: never)"""
    threads: int = 0
    """CPU threads for torch (0: torch's default)"""


def build_memory(args: Args) -> EBMMemory:
    """The C.1 gated-RNN EBMM for ``args``."""
    energy = GatedRNNEnergy(GatedRNNConfig(args.dim, args.hidden_size, args.dynamic_size))
    config = EBMMConfig(
        write_steps=args.write_steps,
        read_steps=args.read_steps,
        data_range=(-1.0, 1.0),
        write_lr_init=args.write_lr_init,
        read_step_init=args.read_step_init,
    )
    return EBMMemory(energy, config)


def make_sampler(args: Args):
    """Batches of ``B`` episodes, ``N`` patterns, queries with ``num_corrupted`` random bits."""
    return binary_sampler(args.batch_size, args.num_patterns, args.dim, args.num_corrupted)


def make_evaluator(args: Args, num_batches: int):
    """Mean error bits (and 5/95 percentiles over batches) on fresh batches from a fixed seed."""
    return binary_evaluator(
        args.num_patterns, num_batches, args.batch_size, args.dim, args.num_corrupted, 10_000 + args.seed, args.device
    )


class QueryAsAnswer:
    """The chance reference: "retrieves" the query itself (corrupted bits random, known bits right)."""

    def write(self, patterns: torch.Tensor) -> None:  # noqa: D102
        return None

    def recall(self, queries: torch.Tensor, state: None, known_mask: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return queries


def check_args(args: Args) -> None:
    """Usage errors for values that no setting can use (before any run folder is created)."""
    positive = ("num_patterns", "batch_size", "steps", "write_steps", "read_steps", "hidden_size", "dynamic_size",
                "eval_batches", "checkpoint_every")  # fmt: skip
    for name in positive:
        if getattr(args, name) < 1:
            usage_error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.dim < 2 or not 0 <= args.num_corrupted <= args.dim:
        usage_error(f"need --dim >= 2 and 0 <= --num-corrupted <= --dim, got {args.dim} and {args.num_corrupted}")
    if args.eval_every < 0 or args.threads < 0:
        usage_error("--eval-every and --threads must be >= 0")
    if args.resume and args.run_dir is not None and not (Path(args.run_dir) / "checkpoint.pt").is_file():
        usage_error(f"--resume: no checkpoint.pt in {args.run_dir}")
    start_run(args, args.steps)


def main(args: Args) -> None:
    """Meta-train, checkpoint, and print the final error bits beside chance and the Hebb rule."""
    check_args(args)
    torch.manual_seed(args.seed)
    run_dir = Path(
        args.run_dir or Path(args.run_root) / f"binary__N{args.num_patterns}__{args.seed}__{int(time.time())}"
    )
    try:  # every setting is checked here, before the trainer creates the run folder
        memory = build_memory(args)
        train_config = TrainConfig.from_args(args)
    except ValueError as error:
        usage_error(str(error))
    print(
        f"EBMM gated RNN (hidden {args.hidden_size}): memory size {memory.memory_size} floats, N={args.num_patterns}, "
        f"batch {args.batch_size}, {args.precision} on {args.device}, run folder {run_dir}",
        flush=True,
    )
    trainer = MetaTrainer(
        memory,
        make_sampler(args),
        train_config,
        run_dir=run_dir,
        hparams=asdict(args),
        evaluate=make_evaluator(args, args.eval_batches),
        read_metrics=binary_read_metrics,
    )
    start = time.perf_counter()
    result = train_or_exit(trainer, resume=args.resume)
    minutes = (time.perf_counter() - start) / 60
    evaluate = make_evaluator(args, args.eval_batches)
    chance = evaluate(QueryAsAnswer())["error_bits"]
    rules = {name: evaluate(hopfield_memory(rule, HopfieldConfig(dim=args.dim)))["error_bits"] for name, rule in RULES}
    print(
        f"N={args.num_patterns}: {result['error_bits']:.2f} error bits "
        f"(p5 {result['error_bits_p5']:.2f}, p95 {result['error_bits_p95']:.2f}, {args.eval_batches} batches of "
        f"{args.batch_size}) after {trainer.step} steps, {minutes:.1f} min this session on {args.device} "
        f"({args.precision}); {trainer.summary()}; checkpoint {trainer.checkpoint_path} (best evaluation: "
        f"{run_dir / 'best.pt'})"
    )
    print(verdict(args, result["error_bits"], chance, rules, trainer.step, run_dir))


def verdict(args: Args, ebmm: float, chance: float, rules: dict[str, float], step: int, run_dir: str | Path) -> str:
    """The final line: EBMM beside chance and the Hopfield rules on the same batches, and whether it beats a rule.

    A run that beats no rule yet says how to go on (resume to more steps) and what a longer run reached.
    """
    budget = args.dim * (args.dim - 1) // 2 + args.dim
    line = (
        f"EBMM {ebmm:.2f} error bits at N = {args.num_patterns}; same batches, {budget}-float Hopfield rules: "
        + ", ".join(f"{name} {value:.2f}" for name, value in rules.items())
        + f"; chance (query returned) {chance:.2f}"
    )
    beaten = [name for name, value in rules.items() if ebmm <= value]
    if beaten:
        return f"{line}. EBMM is at or below the {' and '.join(beaten)} rule{'s' if len(beaten) > 1 else ''}."
    longer = LONGER_RUNS.get((args.num_patterns, args.dim, args.num_corrupted, args.hidden_size))
    reference = (
        f" At this setting, {longer[0]} steps reached {longer[1]} error bits in {longer[2]} minutes of one CPU thread "
        "(docs/results.md)."
        if longer
        else ""
    )
    if step < args.steps:  # stopped by --time-limit-min: the same run goes on to --steps
        how = (
            f"train on with: python scripts/meta_train_binary.py --run-dir {run_dir} --resume --num-patterns "
            f"{args.num_patterns} --steps {args.steps} (and this run's other flags)"
        )
    else:
        steps = longer[0] if longer else 4 * args.steps
        how = f"a longer run: python scripts/meta_train_binary.py --num-patterns {args.num_patterns} --steps {steps}"
    return f"{line}. Not yet at a Hopfield rule after {step} steps; {how}.{reference}"


if __name__ == "__main__":
    main(tyro.cli(Args))

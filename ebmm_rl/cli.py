"""Helpers shared by the command-line scripts: run arguments, usage errors, device checks, the end of a run.

Every meta-training script's ``Args`` extends :class:`RunArgs` (seed, device, threads, run folder, resume, progress)
and hands its training fields to :meth:`ebmm_rl.training.TrainConfig.from_args`. Usage errors exit with code 2 and
no traceback; a resume with nothing left to do exits with 0; a diverged run with 1, naming the last healthy
checkpoint.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from ebmm_rl.checkpoint import load_checkpoint
from ebmm_rl.training import CHECKPOINT_NAME, MetaTrainer, TrainingDiverged


@dataclass
class RunArgs:
    """The run arguments of every meta-training script; a script's ``Args`` extends it (and may change a default)."""

    seed: int = 0
    """seed of initialisation and batches"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    threads: int = 1
    """CPU threads for torch (0: torch's default)"""
    run_root: str = "runs"
    """folder of run folders"""
    run_dir: str | None = None
    """this run's folder (default: a new folder in run_root, named after the task, seed and time); give it with
    --resume"""
    resume: bool = False
    """continue from run_dir/checkpoint.pt"""
    progress: bool = True
    """show a progress bar (without one, status lines when the script has --status-every-s)"""


def start_run(args: RunArgs, steps: int) -> torch.device:
    """Check ``args``'s run arguments and apply them; returns the device.

    A malformed or absent device, ``--threads`` below 0 or ``--resume`` without ``--run-dir`` is a usage error
    (exit code 2); a resume of a run already at ``steps`` exits with 0 (:func:`exit_if_finished`). Sets torch's CPU
    threads unless ``--threads 0``.
    """
    device = check_device(args.device)
    if args.threads < 0:
        usage_error(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
    if args.resume and args.run_dir is None:
        usage_error("--resume needs --run-dir: the folder of the run to continue")
    if args.resume:
        exit_if_finished(args.run_dir, steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    return device


def usage_error(message: str, prog: str | None = None) -> NoReturn:
    """Print ``usage error: message`` to stderr and exit with code 2 (the argparse convention)."""
    name = prog or (sys.argv[0].rsplit("/", 1)[-1] if sys.argv and sys.argv[0] else "script")
    print(f"{name}: usage error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_device(device: str) -> torch.device:
    """``torch.device(device)``, or a usage error if it is malformed or not available in this torch build."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        usage_error(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:<index>")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            usage_error(f"--device {device}: this torch build or machine has no CUDA device; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            usage_error(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        usage_error(f"--device {device}: MPS is not available here; use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        usage_error(f"--device {device}: unsupported device type {parsed.type!r}; use cpu or cuda")
    return parsed


def exit_if_finished(run_dir: str | Path, steps: int) -> None:
    """Exit with code 0 and say so if ``run_dir/checkpoint.pt`` already reached ``steps``: a resume has nothing to do.

    An unreadable checkpoint is a usage error.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    try:
        step = int(load_checkpoint(path)["step"])
    except (ValueError, KeyError, TypeError, FileNotFoundError) as error:
        usage_error(f"--resume: {path} cannot be resumed from ({error})")
    if step >= steps:
        print(f"{run_dir} is already at step {step} (--steps {steps}): nothing to do. To train on, resume with --steps "
              f"above {step}.")  # fmt: skip
        raise SystemExit(0)


def train_or_exit(trainer: MetaTrainer, resume: bool = False) -> dict[str, Any]:
    """``trainer.train(resume)``; if it diverges, print why and the last healthy checkpoint, and exit with code 1."""
    try:
        return trainer.train(resume=resume)
    except TrainingDiverged as error:
        path = trainer.checkpoint_path
        last = "none written"
        if path is not None and path.is_file():
            last = f"{path} (step {int(load_checkpoint(path)['step'])})"
        print(f"error: {error}\nlast healthy checkpoint: {last}", file=sys.stderr)
        raise SystemExit(1) from None


def train_and_report(
    trainer: MetaTrainer, evaluate: Callable[[torch.nn.Module], dict[str, float]], resume: bool = False
) -> dict[str, Any]:
    """Print ``evaluate`` of the model before training, train (:func:`train_or_exit`), print the result after it."""
    before = evaluate(trainer.memory)
    print("before: " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()))
    start = time.process_time()
    after = train_or_exit(trainer, resume=resume)
    print(f"after {trainer.step} meta-steps ({(time.process_time() - start) / 60:.1f} CPU min): "
          + ", ".join(f"{k} {v:.4f}" for k, v in after.items()))  # fmt: skip
    return after

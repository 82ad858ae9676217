"""Small helpers shared by the command-line scripts: usage errors, device checks, the ends of a meta-training run.

Usage errors exit with code 2 and no traceback; a resume with nothing left to do exits with 0; a diverged run
with 1, naming the last healthy checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from ebmm_rl.checkpoint import load_checkpoint
from ebmm_rl.training import CHECKPOINT_NAME, MetaTrainer, TrainingDiverged


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

"""Small helpers shared by the command-line scripts: usage errors (exit code 2, no traceback) and device checks."""

from __future__ import annotations

import sys
from typing import NoReturn

import torch


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

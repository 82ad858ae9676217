"""Arithmetic precision of meta-training and evaluation: ``fp32``, ``tf32`` or ``bf16``.

* ``fp32``: every matmul and convolution in full float32 (on CUDA this also turns off cuDNN's TF32
  convolutions, which PyTorch enables by default).
* ``tf32``: float32 tensors, but CUDA matmuls and convolutions on the tensor cores with TensorFloat-32 inputs
  (10-bit mantissa, float32 accumulation): ``torch.backends.cuda.matmul.allow_tf32`` and
  ``torch.backends.cudnn.allow_tf32``. On CPU it is the same as ``fp32``.
* ``bf16``: ``torch.autocast(dtype=torch.bfloat16)`` around the write, read and meta-loss of one step (works on
  CPU and CUDA).

What stays in float32 under ``bf16``, and why: autocast lowers only the ops on its list (matmuls, ``linear``,
convolutions and a few others) to bfloat16; elementwise arithmetic runs in the promoted dtype of its inputs, and
every tensor that carries state is float32. So the fast weights and their update ``θ ← θ − η·∇θ L_write``, the
read iterates ``x ← x − γ·∇x E`` with their momenta and projections, the learned step sizes, momenta and loss
weights (``nn.Parameter`` of float32), and the reconstruction loss (its inputs are the float32 patterns and
iterates) are float32; only the products inside the energy network, and the inner gradients computed from them,
are bfloat16. Keeping the updates in float32 matters: with bfloat16's 8-bit mantissa a step ``η·∇`` smaller than
about 1/256 of the weight it is added to is rounded away, and the write rates start at 0.1 (paper 1e-4). The
meta-gradients of the float32 parameters are float32 (autocast's casts are differentiable). No loss scaling is
needed: bfloat16 has float32's exponent range.

Measured (``scripts/bench_precision.py``, C.1 memory, hidden 128, CPU): the change of the fast weights by one
write differs from float32's by 0.55% under autocast but by 97% when the fast weights themselves are bfloat16 at
the paper's initial write rate 1e-4 (most updates rounded away), and by 0.36% against 6.4% at this project's 0.1;
the meta-loss (about 590) is within 0.01 of float32's under autocast and rounded to a multiple of 4 in all-bf16.

Typical use::

    set_matmul_precision("tf32", device)          # global flags, once
    with autocast_context("bf16", device):       # per step
        out = memory(patterns, queries, known_mask)
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "tf32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")


def check_precision(precision: str) -> None:
    """Raise ValueError unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)} (fp32, tf32 or bf16), got {precision!r}")


def set_matmul_precision(precision: str, device: str | torch.device) -> None:
    """Set the process-wide CUDA TF32 flags for ``precision`` (no effect on a CPU device).

    ``tf32`` turns TF32 on for matmuls and cuDNN convolutions; ``fp32`` and ``bf16`` turn both off, so that the
    ops autocast leaves in float32 are computed in full float32.
    """
    check_precision(precision)
    if torch.device(device).type != "cuda":
        return
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast_context(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast(device type, torch.bfloat16)`` for ``bf16``, a no-op context otherwise."""
    check_precision(precision)
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)

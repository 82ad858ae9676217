"""Why bf16 keeps the write/read rules in fp32: the error of one write, and the meta-loss, at each precision.

For the C.1 binary memory (hidden ``--hidden-size``, N = 16, B = 4) it writes one batch three ways and compares
the change of the fast weights ``Δθ = θ_T − θ_0`` with the float32 one:

* ``fp32``: everything float32 (the reference);
* ``autocast-bf16``: ``torch.autocast(bfloat16)`` as ``--precision bf16`` does: the energy's products in bfloat16,
  the fast weights, updates and step sizes float32 (:mod:`ebmm_rl.precision`);
* ``all-bf16``: the memory and the patterns cast to bfloat16, so the fast weights and their updates are too.

It prints ``‖Δθ − Δθ_fp32‖ / ‖Δθ_fp32‖`` and the meta-loss for the paper's initial write rate (1e-4) and this
project's (0.1)::

    python scripts/bench_precision.py --device cpu
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import tyro

from ebmm_rl.binary import corrupt, sample_patterns
from ebmm_rl.energy import GatedRNNConfig, GatedRNNEnergy
from ebmm_rl.memory import EBMMConfig, EBMMemory
from ebmm_rl.precision import autocast_context


@dataclass
class Args:
    """bf16 against fp32 for one write and one meta-loss."""

    hidden_size: int = 128
    """gated-RNN state size (paper: 1024)"""
    write_lrs: tuple[float, ...] = (1e-4, 0.1)
    """initial write learning rates to compare (paper: 1e-4)"""
    device: str = "cpu"
    """torch device"""
    threads: int = 1
    """torch CPU threads"""


def change(state, init: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``θ_T − θ_0`` per writable layer, in float32."""
    return {n: state.fast_weights[n].float() - init[n].float() for n in init}


def relative_error(a: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """``‖a − ref‖ / ‖ref‖`` over all layers."""
    num = sum(float((a[n] - ref[n]).pow(2).sum()) for n in ref)
    den = sum(float(ref[n].pow(2).sum()) for n in ref)
    return (num / den) ** 0.5


def main(args: Args) -> None:
    """Print one line per write rate."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()}")
    wall, cpu = time.perf_counter(), time.process_time()
    for lr in args.write_lrs:
        torch.manual_seed(0)
        config = EBMMConfig(data_range=(-1.0, 1.0), write_lr_init=lr)
        memory = EBMMemory(GatedRNNEnergy(GatedRNNConfig(hidden_size=args.hidden_size)), config).to(device)
        low = EBMMemory(GatedRNNEnergy(GatedRNNConfig(hidden_size=args.hidden_size)), config).to(device)
        low.load_state_dict(memory.state_dict())
        low = low.bfloat16()
        gen = torch.Generator(device=device).manual_seed(0)
        patterns = sample_patterns(4, 16, generator=gen)  # [B, N, D]
        queries, known = corrupt(patterns, generator=gen)
        init = {n: v.detach() for n, v in memory.energy.memory_parameters().items()}
        init_low = {n: v.detach() for n, v in low.energy.memory_parameters().items()}
        with torch.no_grad():
            ref = change(memory.write(patterns), init)
            with autocast_context("bf16", device):
                auto = change(memory.write(patterns), init)
            full = change(low.write(patterns.bfloat16()), init_low)
        loss = memory(patterns, queries, known).loss.item()
        with autocast_context("bf16", device):
            loss_auto = memory(patterns, queries, known).loss.float().item()
        loss_full = low(patterns.bfloat16(), queries.bfloat16(), known).loss.float().item()
        errors = relative_error(auto, ref), relative_error(full, ref)
        print(
            f"write_lr_init {lr:g}: error of the write's change vs fp32: autocast-bf16 {errors[0]:.2%}, "
            f"all-bf16 {errors[1]:.2%}; meta-loss fp32 {loss:.4f}, autocast-bf16 {loss_auto:.4f}, "
            f"all-bf16 {loss_full:.4f}"
        )
    print(f"wall {time.perf_counter() - wall:.1f} s, CPU {time.process_time() - cpu:.1f} s")


if __name__ == "__main__":
    main(tyro.cli(Args))

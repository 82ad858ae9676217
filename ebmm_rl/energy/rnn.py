"""C.1: the gated RNN energy for vectors (the paper's model for random binary patterns)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmm_rl.layers import EnergyNet, FastWeights, MemoryLinear, he_init_
from ebmm_rl.validation import check_int_fields


@dataclass(frozen=True)
class GatedRNNConfig:
    """Sizes of the gated-RNN energy (paper App. C.1).

    Attributes:
        input_size: pattern size D.
        hidden_size: RNN state size (paper: 1024; 256 trains much faster on a CPU).
        dynamic_size: memory units, the output size of the writable ``memory`` layer. The paper's pseudocode
            says ``(input_size - 1) // 2 = 63``, which gives 128·63 + 63 = 8127 writable floats, but its text
            states the Hopfield budget 128·(128−1)/2 + 128 = 8256. ``dynamic_size = 64`` gives exactly
            128·64 + 64 = 8256, so it is the default: EBMM gets the same budget as the Hopfield network.
        hops: unrolled RNN steps (paper: 5).
    """

    input_size: int = 128
    hidden_size: int = 1024
    dynamic_size: int = 64
    hops: int = 5

    def __post_init__(self) -> None:
        check_int_fields(self)


class GatedRNNEnergy(EnergyNet):
    """Gated RNN energy ``E(x)``: the same input at every hop, energy read from the last state.

    ``state ← u·c + (1−u)·state`` with ``c = tanh([memory(x), static([x, state])])`` and
    ``u = σ(gate([x, state]))``; ``E = Linear(1)(state)``. Only ``memory`` (a linear map of ``x``) is written.
    The output layer has no bias: writing and reading only use gradients of ``E``, so a constant offset would
    never be trained (and would be an unused parameter under DistributedDataParallel).

    ``static`` and ``gate`` are single ``Linear(input + hidden, ·)`` layers as in the paper; the forward splits
    their weight matrices into the ``x`` and ``state`` columns so that the ``x`` half (the same at every hop)
    is computed once instead of at every hop. The result is identical to applying them to ``concat(x, state)``.
    """

    def __init__(self, config: GatedRNNConfig = GatedRNNConfig()) -> None:
        super().__init__()
        if not 0 < config.dynamic_size < config.hidden_size:
            raise ValueError(
                f"dynamic_size must lie in (0, hidden_size={config.hidden_size}); got {config.dynamic_size}"
            )
        self.config = config
        self.data_shape = (config.input_size,)
        d, h = config.input_size, config.hidden_size
        self.memory = MemoryLinear(d, config.dynamic_size)
        self.static = nn.Linear(d + h, h - config.dynamic_size)
        self.gate = nn.Linear(d + h, h)
        self.energy = nn.Linear(h, 1, bias=False)  # a constant offset would never get a gradient
        he_init_(self)

    def forward(self, x: Tensor, fast: FastWeights) -> Tensor:
        """Energies ``[B, M]`` of patterns ``x: [B, M, input_size]``."""
        B, M, D = x.shape
        dynamic_part = self.memory(x, fast).reshape(B * M, -1)  # [B*M, dynamic]
        x = x.reshape(B * M, D)
        w_static_x, w_static_h = self.static.weight[:, :D], self.static.weight[:, D:]
        w_gate_x, w_gate_h = self.gate.weight[:, :D], self.gate.weight[:, D:]
        static_x = F.linear(x, w_static_x, self.static.bias)  # [B*M, hidden - dynamic]
        gate_x = F.linear(x, w_gate_x, self.gate.bias)  # [B*M, hidden]
        state = None
        for _ in range(self.config.hops):
            if state is None:  # first hop: state = 0
                static_part, u_logit = static_x, gate_x
            else:
                static_part = static_x + state @ w_static_h.T
                u_logit = gate_x + state @ w_gate_h.T
            c = torch.tanh(torch.cat([dynamic_part, static_part], dim=-1))
            u = torch.sigmoid(u_logit)
            state = u * c if state is None else u * c + (1 - u) * state
        return self.energy(state).reshape(B, M)

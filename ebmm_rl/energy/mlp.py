"""A small gated-MLP energy for plain vectors (RL observations, embeddings)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebmm_rl.layers import EnergyNet, FastWeights, MemoryLinear, he_init_
from ebmm_rl.validation import check_int_fields


@dataclass(frozen=True)
class MLPConfig:
    """Sizes of the gated-MLP energy.

    Attributes:
        input_size: pattern size D.
        hidden_size: width of the representation.
        dynamic_size: memory units of the first layer (writable weights: ``(D + 1) · dynamic_size``).
        hops: gated refinement steps; the skip connection lets the energy refine its gradient (paper C.6).
    """

    input_size: int = 32
    hidden_size: int = 128
    dynamic_size: int = 32
    hops: int = 2

    def __post_init__(self) -> None:
        check_int_fields(self, {"hops": 0})


class MLPEnergy(EnergyNet):
    """Gated-MLP energy: a first layer with memory units, gated refinements, a scalar head.

    ``h = tanh([memory(x), static(x)])``, then ``hops`` gated updates ``h ← u·tanh(W h) + (1−u)·h``, then
    ``E = Linear(1)(tanh(Linear(h)))``. Only ``memory`` is written.
    """

    def __init__(self, config: MLPConfig = MLPConfig()) -> None:
        super().__init__()
        if not 0 < config.dynamic_size <= config.hidden_size:
            raise ValueError(
                f"dynamic_size must lie in (0, hidden_size={config.hidden_size}]; got {config.dynamic_size}"
            )
        self.config = config
        self.data_shape = (config.input_size,)
        d, h = config.input_size, config.hidden_size
        self.memory = MemoryLinear(d, config.dynamic_size)
        self.static = nn.Linear(d, h - config.dynamic_size) if h > config.dynamic_size else None
        self.hidden = nn.Linear(h, h)
        self.gate = nn.Linear(h, h)
        self.head = nn.Linear(h, h)
        self.energy = nn.Linear(h, 1, bias=False)  # a constant offset would never get a gradient
        he_init_(self)

    def forward(self, x: Tensor, fast: FastWeights) -> Tensor:
        """Energies ``[B, M]`` of patterns ``x: [B, M, input_size]``."""
        B, M, _ = x.shape
        parts = [self.memory(x, fast)]  # [B, M, dynamic]
        if self.static is not None:
            parts.append(self.static(x))
        h = torch.tanh(torch.cat(parts, dim=-1))  # [B, M, hidden]
        for _ in range(self.config.hops):
            u = torch.sigmoid(self.gate(h))
            h = u * torch.tanh(self.hidden(h)) + (1 - u) * h
        return self.energy(torch.tanh(self.head(h))).reshape(B, M)

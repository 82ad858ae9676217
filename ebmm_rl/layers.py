"""Writable ("memory") layers and the base class of energy networks.

A writable layer owns the initial values ``θ̄`` of its weights as ordinary parameters; at run time it is called
with *fast weights* that carry a leading episode dimension ``B`` (one set of weights per independent memory).
Everything else in an energy network is a slow (static) weight, shared by all episodes.

Batched fast weights use ``torch.baddbmm`` (linear) and grouped convolution (conv). With ``B == 1`` the layers
take a plain ``F.linear`` / ``F.conv2d`` path: the per-episode reference in :mod:`ebmm_rl.memory` runs through it,
so the tests compare two genuinely different code paths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FastWeights = Mapping[str, Tensor]
"""Fast weights by qualified name (``"memory.weight"``), each ``[B, *parameter_shape]``."""


def he_init_(module: nn.Module) -> None:
    """He (Kaiming-normal) initialisation of every linear and conv weight; biases to zero (paper App. A)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, MemoryLinear, MemoryConv2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class MemoryLayer(nn.Module):
    """Base class of writable layers: ``weight``/``bias`` hold ``θ̄``; forward takes the fast weights.

    ``fast_name`` is the layer's qualified name inside its energy network; :class:`EnergyNet` sets it.
    """

    fast_name: str = ""
    weight: nn.Parameter
    bias: nn.Parameter | None

    def fast_weights_of(self, fast: FastWeights) -> tuple[Tensor, Tensor | None]:
        """Look up this layer's fast weight ``[B, *weight.shape]`` and bias ``[B, *bias.shape]``."""
        prefix = f"{self.fast_name}." if self.fast_name else ""
        try:
            weight = fast[prefix + "weight"]
        except KeyError:
            raise KeyError(
                f"no fast weight '{prefix}weight' given; pass the MemoryState produced by EBMMemory.write"
            ) from None
        bias = fast[prefix + "bias"] if self.bias is not None else None
        return weight, bias


class MemoryLinear(MemoryLayer):
    """Linear layer with per-episode fast weights.

    Args:
        in_features: input size.
        out_features: output size (the number of memory units).
        bias: whether the layer has a (writable) bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def forward(self, x: Tensor, fast: FastWeights) -> Tensor:
        """Apply the layer.

        Args:
            x: ``[B, M, in_features]``, one row of ``M`` inputs per episode.
            fast: fast weights; this layer reads ``weight: [B, out, in]`` and ``bias: [B, out]``.

        Returns:
            ``[B, M, out_features]``.
        """
        weight, bias = self.fast_weights_of(fast)
        if weight.shape[0] == 1:  # reference path: one episode, plain linear
            return F.linear(x[0], weight[0], None if bias is None else bias[0]).unsqueeze(0)
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    def extra_repr(self) -> str:  # noqa: D102
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class MemoryConv2d(MemoryLayer):
    """2-d convolution with per-episode fast weights, batched as one grouped convolution.

    Args:
        in_channels: input channels.
        out_channels: output channels (the number of memory feature maps).
        kernel_size: square kernel size.
        stride: stride.
        padding: zero padding; default ``kernel_size // 2`` ("same" for stride 1).
        bias: whether the layer has a (writable) bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def forward(self, x: Tensor, fast: FastWeights) -> Tensor:
        """Apply the convolution.

        Args:
            x: ``[B, M, C_in, H, W]``.
            fast: fast weights; this layer reads ``weight: [B, C_out, C_in, k, k]`` and ``bias: [B, C_out]``.

        Returns:
            ``[B, M, C_out, H', W']``.
        """
        weight, bias = self.fast_weights_of(fast)
        B, M, C, H, W = x.shape
        if B == 1:  # reference path: one episode, plain conv
            b0 = None if bias is None else bias[0]
            return F.conv2d(x[0], weight[0], b0, self.stride, self.padding).unsqueeze(0)
        x_g = x.transpose(0, 1).reshape(M, B * C, H, W)  # [M, B*C, H, W]: episodes become groups
        w_g = weight.reshape(B * self.out_channels, C, self.kernel_size, self.kernel_size)
        b_g = None if bias is None else bias.reshape(B * self.out_channels)
        y = F.conv2d(x_g, w_g, b_g, self.stride, self.padding, groups=B)  # [M, B*C_out, H', W']
        return y.reshape(M, B, self.out_channels, *y.shape[-2:]).transpose(0, 1)

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )


class EnergyNet(nn.Module):
    """Base class of energy networks ``E(x; θ)``.

    Subclasses set ``data_shape`` (the shape of one pattern), build their layers (writable ones as
    :class:`MemoryLayer`), and implement :meth:`forward`. ``memory_layers()`` lists the writable layers by
    name; their parameters are ``θ̄``, the initial values of the fast weights.
    """

    data_shape: tuple[int, ...]

    def memory_layers(self) -> dict[str, MemoryLayer]:
        """The writable layers by qualified name (also records each layer's ``fast_name``)."""
        layers = {name: m for name, m in self.named_modules() if isinstance(m, MemoryLayer)}
        for name, layer in layers.items():
            layer.fast_name = name
        return layers

    def memory_parameters(self) -> dict[str, nn.Parameter]:
        """``θ̄``: the initial fast weights, by qualified name (``"memory.weight"``, ``"memory.bias"``)."""
        params = {}
        for name, layer in self.memory_layers().items():
            for pname, p in layer.named_parameters(recurse=False):
                params[f"{name}.{pname}"] = p
        return params

    def static_parameters(self) -> dict[str, nn.Parameter]:
        """The slow weights: every parameter that writing does not change."""
        memory_ids = {id(p) for p in self.memory_parameters().values()}
        return {n: p for n, p in self.named_parameters() if id(p) not in memory_ids}

    @property
    def memory_size(self) -> int:
        """Number of writable float32 values (the paper's "memory size")."""
        return sum(p.numel() for p in self.memory_parameters().values())

    def forward(self, x: Tensor, fast: FastWeights) -> Tensor:
        """Energy of each pattern.

        Args:
            x: ``[B, M, *data_shape]``.
            fast: fast weights by name, each ``[B, *parameter_shape]``.

        Returns:
            ``[B, M]`` energies.
        """
        raise NotImplementedError


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial output size of a convolution."""
    return math.floor((size + 2 * padding - kernel) / stride) + 1

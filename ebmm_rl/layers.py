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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FastWeights = Mapping[str, Tensor]
"""Fast weights by qualified name (``"memory.weight"``), each ``[B, *parameter_shape]``."""

tanh_backward = torch.ops.aten.tanh_backward
"""``tanh_backward(g, y) = g·(1 − y²)`` for ``y = tanh(·)``: one fused, differentiable kernel (closed forms)."""
sigmoid_backward = torch.ops.aten.sigmoid_backward
"""``sigmoid_backward(g, y) = g·y·(1 − y)`` for ``y = σ(·)``: one fused, differentiable kernel (closed forms)."""


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


@dataclass
class EnergyGrads:
    """Energies and their gradients computed in closed form (:meth:`EnergyNet.closed_form_grads`).

    Attributes:
        energy: ``[B, M]`` energies ``E(x_m)``, or ``None`` if ``need_grad_x=False`` was passed.
        grad_x: ``[B, M, D...]`` ``∇ₓE`` of each pattern at fixed fast weights, or ``None`` as ``energy``.
        grad_theta: fast-weight name -> ``[B, *parameter_shape]``: ``Σₘ wₘ ∇_θ E(x_m)`` per episode, or ``None``
            if no ``energy_weights`` were given.
        grad_theta_grad_norm: fast-weight name -> ``[B, *parameter_shape]``: ``∇_θ Σₘ cₘ ‖∇ₓE(x_m)‖²`` per
            episode, or ``None`` if no ``grad_norm_weights`` were given.
    """

    energy: Tensor | None
    grad_x: Tensor | None
    grad_theta: dict[str, Tensor] | None = None
    grad_theta_grad_norm: dict[str, Tensor] | None = None


def memory_linear_grads(
    layer: MemoryLinear,
    x: Tensor,
    grad_out: Tensor,
    tangent_x: Tensor | None = None,
    tangent_grad_out: Tensor | None = None,
) -> dict[str, Tensor]:
    """``∇_θ`` of a :class:`MemoryLinear` layer ``a = W x + b`` from the gradient that reaches its output.

    With ``grad_out = Σₘ ∂L/∂aₘ`` rows, ``∇_W L = Σₘ grad_outₘ xₘᵀ`` and ``∇_b L = Σₘ grad_outₘ``. When the
    scalar is ``rᵀ∇ₓE`` (the grad-norm term, ``∇ₓE = Wᵀ g_a + …``), ``W`` also appears directly in ``∇ₓE``:
    pass ``tangent_x = r`` and ``tangent_grad_out = g_a`` to add ``Σₘ g_{a,m} r_mᵀ`` to ``∇_W``.

    Args:
        layer: the writable layer (its ``fast_name`` gives the keys).
        x: ``[B, M, in]`` the layer's inputs.
        grad_out: ``[B, M, out]`` the gradient at its outputs (already weighted per pattern).
        tangent_x: optional ``[B, M, in]``.
        tangent_grad_out: optional ``[B, M, out]``, given together with ``tangent_x``.

    Returns:
        ``{"<name>.weight": [B, out, in], "<name>.bias": [B, out]}`` (no bias entry if the layer has none).
    """
    prefix = f"{layer.fast_name}." if layer.fast_name else ""
    grad_w = torch.bmm(grad_out.transpose(1, 2), x)  # [B, out, in]
    if tangent_x is not None:
        grad_w = torch.baddbmm(grad_w, tangent_grad_out.transpose(1, 2), tangent_x)
    grads = {prefix + "weight": grad_w}
    if layer.bias is not None:
        grads[prefix + "bias"] = grad_out.sum(dim=1)  # [B, out]
    return grads


def context_terms(
    context: dict[str, Any] | None,
    x: Tensor,
    weight_terms: Callable[[], dict[str, Tensor]],
    x_terms: Callable[[dict[str, Tensor]], dict[str, Tensor]],
) -> dict[str, Any]:
    """The terms of a closed form that depend on the slow weights only, and on ``x``, kept in ``context``.

    Args:
        context: ``None`` (compute both, keep nothing) or a dict shared by calls during which the slow weights do
            not change (the ``T`` steps of one write, the ``K`` steps of one read).
        x: the call's input.
        weight_terms: computes the terms that depend on the slow weights only; called once per context.
        x_terms: computes the terms that also depend on ``x``, from the weight terms; called again whenever ``x``
            is not the tensor object they were made for.

    Returns:
        The context (a fresh dict if ``None``) holding both. It is emptied first when the grad mode differs from
        the one it was filled in, so that no term lacks the graph a call needs.
    """
    grad = torch.is_grad_enabled()
    context = {} if context is None else context
    if context.get("_grad") is not grad:
        context.clear()
        context["_grad"] = grad
        context.update(weight_terms())
    if context.get("_x") is not x:
        context["_x"] = x
        context.update(x_terms(context))
    return context


def memory_linear_apply(layer: MemoryLinear, x: Tensor, fast: FastWeights) -> tuple[Tensor, Tensor]:
    """``(a, W)``: the output ``a = W x + b: [B, M, out]`` of a :class:`MemoryLinear` and its fast ``W: [B, out, in]``.

    Always the batched ``bmm`` path, also for ``B = 1`` (the closed-form gradients need ``W`` itself).
    """
    weight, bias = layer.fast_weights_of(fast)
    if bias is None:
        return torch.bmm(x, weight.transpose(1, 2)), weight
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2)), weight


class EnergyNet(nn.Module):
    """Base class of energy networks ``E(x; θ)``.

    Subclasses set ``data_shape`` (the shape of one pattern), build their layers (writable ones as
    :class:`MemoryLayer`), and implement :meth:`forward`. ``memory_layers()`` lists the writable layers by
    name; their parameters are ``θ̄``, the initial values of the fast weights.

    A subclass may also implement :meth:`closed_form_grads` (``∇ₓE``, ``∇_θE`` and ``∇_θ‖∇ₓE‖²`` as explicit
    tensor expressions) and set ``closed_form = True``; :class:`~ebmm_rl.memory.EBMMemory` then writes and reads
    with it instead of nested ``torch.autograd.grad`` calls, so the meta-gradient is the only autograd level.
    Setting ``energy.closed_form = False`` on an instance forces the autograd reference path. A subclass that
    changes :meth:`forward` of an energy with a closed form must override :meth:`closed_form_grads` too or set
    ``closed_form = False``.
    """

    data_shape: tuple[int, ...]
    closed_form: bool = False
    """Whether :class:`~ebmm_rl.memory.EBMMemory` uses :meth:`closed_form_grads` (the fast path)."""

    def memory_layers(self) -> dict[str, MemoryLayer]:
        """The writable layers by qualified name (also records each layer's ``fast_name``).

        The list is found once, on the first call (writes and reads ask for it at every step): a subclass builds
        its layers in ``__init__`` and does not swap them afterwards.
        """
        found = self.__dict__.get("_memory_layer_list")
        if found is None:
            found = [(name, m) for name, m in self.named_modules() if isinstance(m, MemoryLayer)]
            for name, layer in found:
                layer.fast_name = name
            self.__dict__["_memory_layer_list"] = found
        return dict(found)

    def memory_parameters(self) -> dict[str, nn.Parameter]:
        """``θ̄``: the initial fast weights, by qualified name (``"memory.weight"``, ``"memory.bias"``)."""
        params = {}
        for name, layer in self.memory_layers().items():
            for pname, p in layer._parameters.items():
                if p is not None:
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

    def closed_form_grads(
        self,
        x: Tensor,
        fast: FastWeights,
        energy_weights: Tensor | None = None,
        grad_norm_weights: Tensor | None = None,
        need_grad_x: bool = True,
        context: dict[str, Any] | None = None,
    ) -> EnergyGrads:
        """Energies and gradients as explicit, differentiable tensor expressions (no ``torch.autograd.grad``).

        Args:
            x: ``[B, M, *data_shape]``.
            fast: fast weights by name, each ``[B, *parameter_shape]``.
            energy_weights: optional ``[B, M]`` weights ``w``; returns ``Σₘ wₘ ∇_θE(x_m)`` per episode.
            grad_norm_weights: optional ``[B, M]`` weights ``c``; returns ``∇_θ Σₘ cₘ ‖∇ₓE(x_m)‖²`` per episode.
            need_grad_x: ``False`` skips the energies and ``∇ₓE`` (``None`` in the result) where only
                ``∇_θE`` is wanted: a write without the grad-norm term. Ignored when ``grad_norm_weights`` is
                given (that term needs ``∇ₓE``).
            context: optional dict shared by calls during which the slow weights do not change (the ``T`` steps
                of one write, the ``K`` steps of one read): an energy may keep there what depends on its slow
                weights only, and what depends on ``x`` too while ``x`` is the same tensor object
                (:func:`context_terms`). Pass a fresh dict per write or read.

        Returns:
            An :class:`EnergyGrads`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form gradients; set closed_form = False to use autograd"
        )


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial output size of a convolution."""
    return math.floor((size + 2 * padding - kernel) / stride) + 1

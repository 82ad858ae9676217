"""C.2–C.5: ResNet energy networks for images (Omniglot, CIFAR-10, ImageNet 64×64).

Three architectures, each with presets for the paper's data sets; inputs are channels-first
``[B, M, C, H, W]``:

* :class:`ResNetFCEnergy` (C.2): ResNet encoder, then a writable fully-connected layer and a gated recurrence.
* :class:`ResNetConvEnergy` (C.3, and C.4 with ``ResNetConvConfig.imagenet64()``): writable 3×3 convolutions
  in two bottleneck blocks, then a gated convolutional recurrence.
* :class:`ResNetLowerConvEnergy` (C.5): writable 3×3 convolutions in the second residual block.

The memory size (writable floats) is linear in ``dynamic_size``; each config's ``memory_size`` gives it
without building the network, and :func:`dynamic_size_for_budget` picks ``dynamic_size`` for a target budget
(the x-axis of the paper's Figs 3 and 5).

Choices common to all three, where the paper's pseudocode (App. C) leaves things open:

* ``ResBlock(channels, kernel=3, stride=2, downscale=True)`` is not defined in the paper. :class:`ResBlock` is
  ``y = tanh(LN(conv3x3(tanh(LN(conv3x3_stride2(x))))))``, ``out = y + conv1x1(avg_pool(x))``: the same shape
  as the paper's own bottleneck blocks (skip added after the nonlinearity, no activation on the sum).
* "downscale=True with stride 2" halves H and W: 3×3 convolutions with stride 2 and padding 1 in the main
  path, a 3×3 average pool with stride 2 and padding 1 (padding not counted in the mean, as TF's ``SAME``
  pooling) on the skip path. Pooling before the 1×1 projection equals projecting before pooling (both are
  linear and the pool's weights sum to one) and costs 4× less, so the skip path pools first.
* "LayerNorm" on feature maps normalises each pattern over (C, H, W) with a per-channel gain and bias
  (``GroupNorm(1, C)``), which is what the paper's TF/Sonnet ``LayerNorm`` did by default; on vectors it is
  ``nn.LayerNorm``.
* Smooth nonlinearities only (tanh, sigmoid), no ReLU or max-pool: the energy is differentiated w.r.t. its
  input while writing and reading, and the meta-gradient differentiates that again w.r.t. the weights (third
  order). ReLU's second derivative is zero almost everywhere, so a ReLU energy is piecewise linear in ``x``
  between the norms: ``∇_x E`` is piecewise constant, the curvature ``∇²_x E`` that the read steps and their
  meta-gradients (``∂x_{k+1}/∂x_k = I − γ ∇²_x E``) depend on vanishes, and a stored pattern cannot sit in a
  smooth minimum with ``∇_x E = 0``, which the ``‖∇_x E‖²`` term of the writing loss asks for. Max-pool is
  non-smooth likewise. tanh and sigmoid have non-zero derivatives of every order.
* Layers inside the recurrence (``recurrent``, ``update_gate``, ``hidden``, ``gate``, their norms) are shared
  by all hops, as in C.1. Their input ``concat(x, state)`` is split into the ``x`` part, computed once, and
  the ``state`` part, skipped at the first hop (``state = 0``); the result is identical to the concatenation.
* The energy head (``x = Linear(1024)(x); energy = Linear(1)``) reads the final ``hidden_state``, flattened,
  after the loop. C.3/C.4 put it inside the loop and all three read ``x``, which would leave the recurrence
  unused; C.2 reads its state the same way.
* Biases start at zero (He init, paper App. A) except the bias of the first convolution, the one that reads
  the image, which starts at PyTorch's default ``U(±1/√fan_in)`` (:func:`init_input_bias_`). With every bias
  zero, every layer maps 0 to 0 (``conv(0) = 0``, ``LN(0) = 0``, ``tanh(0) = 0``), so an all-zero image puts
  every LayerNorm at a zero-variance input, where its Jacobian is ``(I − 11ᵀ/n)/√eps ≈ 316·(I − 11ᵀ/n)``;
  the ~10 norms between the energy and the image multiply to ``‖∇ₓE‖ ≳ 1e24``, ``‖∇ₓE‖²`` overflows float32
  in the writing loss and its gradient is NaN. A non-zero first bias makes ``conv(0)`` vary across channels,
  and ``‖∇ₓE‖`` at the zero image is then as moderate as anywhere else.
* Static layers run on all patterns at once, ``[M*B, C, H, W]`` in pattern-major order (row ``m*B + b`` is
  pattern ``m`` of episode ``b``): that is the layout :class:`~ebmm_rl.layers.MemoryConv2d`'s grouped
  convolution reads and writes, so writable convolutions need no copies in or out, only the input image is
  reordered once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmm_rl.layers import EnergyNet, FastWeights, MemoryConv2d, MemoryLinear, conv_out_size, he_init_
from ebmm_rl.validation import check_int_fields


def _halve(size: int) -> int:
    """Spatial size after a 3×3, stride-2, padding-1 convolution (``ceil(size / 2)``)."""
    return conv_out_size(size, 3, 2, 1)


def downscale(x: Tensor) -> Tensor:
    """Halve H and W: 3×3 average pool, stride 2, padding 1 excluded from the mean.

    Args:
        x: ``[N, C, H, W]``.

    Returns:
        ``[N, C, ceil(H/2), ceil(W/2)]``.
    """
    return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


def layer_norm_2d(channels: int) -> nn.GroupNorm:
    """LayerNorm over (C, H, W) of each pattern, with a per-channel gain and bias."""
    return nn.GroupNorm(1, channels)


def init_input_bias_(conv: nn.Conv2d) -> None:
    """Initialise the bias of the convolution that reads the image to PyTorch's default ``U(±1/√fan_in)``.

    He initialisation with zero biases makes the all-zero image a point where every LayerNorm sees a
    zero-variance input and ``∇ₓE`` explodes (1e24 and more; its square overflows and the writing loss's
    meta-gradient is NaN; see the module docstring). A bias that varies across channels removes that point.

    Args:
        conv: the first convolution of the network (its ``bias`` must exist).
    """
    if conv.bias is None:
        raise ValueError("init_input_bias_ needs a convolution with a bias")
    fan_in = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(conv.bias, -bound, bound)


def memory_conv(layer: MemoryConv2d, x: Tensor, fast: FastWeights, episodes: int) -> Tensor:
    """Apply a writable convolution to pattern-major features.

    Args:
        layer: the writable convolution.
        x: ``[M*B, C, H, W]``, row ``m*B + b`` is pattern ``m`` of episode ``b``.
        fast: fast weights, each ``[B, *parameter_shape]``.
        episodes: ``B``.

    Returns:
        ``[M*B, C_out, H', W']`` in the same order (a view of the grouped convolution's output).
    """
    MB, C, H, W = x.shape
    M = MB // episodes
    y = layer(x.view(M, episodes, C, H, W).transpose(0, 1), fast)  # [B, M, C_out, H', W'], M-major memory
    return y.transpose(0, 1).reshape(MB, *y.shape[2:])  # [M*B, C_out, H', W'], no copy


def _check_input(x: Tensor, data_shape: tuple[int, ...]) -> None:
    if x.dim() != 2 + len(data_shape) or tuple(x.shape[2:]) != data_shape:
        raise ValueError(
            f"expected patterns of shape [B, M, {', '.join(map(str, data_shape))}] (channels first); got "
            f"{list(x.shape)}. Use the config preset of the data set, or set in_channels/image_size."
        )


class ResBlock(nn.Module):
    """The paper's ``ResBlock(channels, kernel=[3, 3], stride=2, downscale=True)``, which it leaves undefined.

    ``y = tanh(LN(conv3x3(tanh(LN(conv3x3_s(x))))))``, ``out = y + conv1x1(pool(x))``. When ``downscale`` is
    true ``conv3x3_s`` has stride 2 and ``pool`` is :func:`downscale` (H and W halve); otherwise the stride is
    1 and ``pool`` is the identity.

    Args:
        in_channels: input channels.
        channels: output channels.
        downscale: whether the block halves H and W.
    """

    def __init__(self, in_channels: int, channels: int, downscale: bool = True) -> None:
        super().__init__()
        self.downscale = downscale
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=2 if downscale else 1, padding=1)
        self.norm1 = layer_norm_2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = layer_norm_2d(channels)
        self.skip = nn.Conv2d(in_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C_in, H, W] -> [N, channels, H', W']``."""
        y = torch.tanh(self.norm1(self.conv1(x)))
        y = torch.tanh(self.norm2(self.conv2(y)))
        return y + self.skip(downscale(x) if self.downscale else x)


class ResNetEncoder(nn.Module):
    """C.2's encoder, shared with the baseline models: three ResBlocks, flatten, ``Linear``, ``LayerNorm``.

    The blocks have ``channels·1, ·2, ·3`` output channels and each halves H and W (32×32 → 4×4). The paper
    writes ``stride=2, downscale=False`` for them; without downscaling the flattened 32×32×96 map would feed a
    98304×256 linear layer (25M weights), so the stride-2 blocks downscale here as in C.3.

    Args:
        in_channels: image channels.
        image_size: image height and width.
        channels: channels of the first block.
        out_features: size of the encoding.
    """

    def __init__(self, in_channels: int, image_size: int, channels: int, out_features: int) -> None:
        super().__init__()
        self.block1 = ResBlock(in_channels, channels)
        self.block2 = ResBlock(channels, 2 * channels)
        self.block3 = ResBlock(2 * channels, 3 * channels)
        size = _halve(_halve(_halve(image_size)))
        self.fc = nn.Linear(3 * channels * size * size, out_features)
        self.norm = nn.LayerNorm(out_features)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W] -> [N, out_features]``."""
        x = self.block3(self.block2(self.block1(x)))
        return self.norm(self.fc(x.flatten(1)))  # flatten: [N, 3*channels*h*w]


class ConvRecurrentHead(nn.Module):
    """The gated convolutional recurrence and energy head shared by C.3, C.4 and C.5.

    ``z = concat(x, state)``, ``candidate = tanh(LN(recurrent(z)))``, ``u = σ(LN(update_gate(z)))``,
    ``state ← u·candidate + (1−u)·state`` for ``hops`` steps from ``state = 0``, then
    ``E = Linear(1)(tanh(Linear(head_size)(flatten(state))))``. ``recurrent`` is a 3×3 and ``update_gate`` a
    1×1 convolution; their weights are split into ``x`` and ``state`` input channels so that the ``x`` half is
    computed once (identical to convolving the concatenation).

    Args:
        in_channels: channels of ``x``.
        hidden_size: channels of the state.
        feature_size: height and width of ``x`` and the state.
        hops: recurrent steps.
        head_size: width of the energy head.
    """

    def __init__(self, in_channels: int, hidden_size: int, feature_size: int, hops: int, head_size: int) -> None:
        super().__init__()
        self.in_channels, self.hops = in_channels, hops
        self.recurrent = nn.Conv2d(in_channels + hidden_size, hidden_size, 3, padding=1)
        self.recurrent_norm = layer_norm_2d(hidden_size)
        self.update_gate = nn.Conv2d(in_channels + hidden_size, hidden_size, 1)
        self.update_gate_norm = layer_norm_2d(hidden_size)
        self.head = nn.Linear(hidden_size * feature_size * feature_size, head_size)
        self.energy = nn.Linear(head_size, 1, bias=False)  # a constant offset never gets a meta-gradient

    def forward(self, x: Tensor) -> Tensor:
        """Energies ``[N]`` of features ``x: [N, in_channels, S, S]``."""
        C = self.in_channels
        w_rec_x, w_rec_h = self.recurrent.weight[:, :C], self.recurrent.weight[:, C:]
        w_gate_x, w_gate_h = self.update_gate.weight[:, :C], self.update_gate.weight[:, C:]
        rec_x = F.conv2d(x, w_rec_x, self.recurrent.bias, padding=1)  # [N, hidden, S, S]
        gate_x = F.conv2d(x, w_gate_x, self.update_gate.bias)  # [N, hidden, S, S]
        state = None
        for _ in range(self.hops):
            if state is None:  # first hop: state = 0
                rec, gate = rec_x, gate_x
            else:
                rec = rec_x + F.conv2d(state, w_rec_h, padding=1)
                gate = gate_x + F.conv2d(state, w_gate_h)
            candidate = torch.tanh(self.recurrent_norm(rec))
            u = torch.sigmoid(self.update_gate_norm(gate))
            state = u * candidate if state is None else u * candidate + (1 - u) * state
        h = torch.tanh(self.head(state.flatten(1)))  # flatten: [N, hidden*S*S]
        return self.energy(h).squeeze(-1)


# ------------------------------------------------------------------------------------------------------------
# C.2: fully-connected memory
# ------------------------------------------------------------------------------------------------------------


class _ImagePresets:
    """Data-set presets and the pattern shape shared by the image energy configs (frozen dataclasses)."""

    in_channels: int
    image_size: int

    def __post_init__(self) -> None:
        check_int_fields(self)  # every size, width and step count >= 1

    @classmethod
    def omniglot(cls, **overrides: object):
        """Omniglot, 1×32×32 with values in [0, 1]; ``overrides`` replace any field."""
        return cls(**{"in_channels": 1, "image_size": 32, **overrides})

    @classmethod
    def cifar10(cls, **overrides: object):
        """CIFAR-10, 3×32×32; ``overrides`` replace any field."""
        return cls(**{"in_channels": 3, "image_size": 32, **overrides})

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """Shape of one pattern, ``(C, H, W)``."""
        return (self.in_channels, self.image_size, self.image_size)


@dataclass(frozen=True)
class ResNetFCConfig(_ImagePresets):
    """Sizes of the ResNet energy with fully-connected memory (paper App. C.2).

    Attributes:
        in_channels: image channels (Omniglot 1, CIFAR-10 3).
        image_size: image height and width.
        channels: channels of the first encoder block (paper: 32; the blocks have ×1, ×2, ×3).
        encoder_size: size of the encoder output (paper: 256), the input of the writable layer.
        representation_size: size of ``x = tanh(concat(memory(x), static(x)))`` (paper: 512).
        hidden_size: size of the recurrent state (paper: 512).
        dynamic_size: memory units, the output size of the writable ``memory`` layer; writable floats
            ``(encoder_size + 1) · dynamic_size``. Not given in the paper; 32 gives 8224.
        hops: recurrent steps (paper: 3).
        head_size: width of the energy head (paper: 1024).
    """

    in_channels: int = 1
    image_size: int = 32
    channels: int = 32
    encoder_size: int = 256
    representation_size: int = 512
    hidden_size: int = 512
    dynamic_size: int = 32
    hops: int = 3
    head_size: int = 1024

    @property
    def memory_size(self) -> int:
        """Writable floats: the weight and bias of ``memory``."""
        return (self.encoder_size + 1) * self.dynamic_size

    @property
    def max_dynamic_size(self) -> int:
        """Largest allowed ``dynamic_size`` (the static part keeps at least one unit)."""
        return self.representation_size - 1


class ResNetFCEnergy(EnergyNet):
    """ResNet energy with fully-connected memory (paper App. C.2).

    ``h = encoder(x)`` (:class:`ResNetEncoder`, 256-d), ``x = tanh(concat(memory(h), static(h)))`` (512-d),
    then three gated hops ``c = LN(tanh(hidden(z)))``, ``u = σ(gate(z))``, ``state ← u·c + (1−u)·state`` with
    ``z = concat(x, state)``, and ``E = Linear(1)(tanh(Linear(1024)(state)))``. Only ``memory`` is written.

    Memory size: ``(encoder_size + 1) · dynamic_size``, 257 floats per unit; the default presets
    (``dynamic_size = 32``) have 8224. The paper's Omniglot sweep (about 2K–20K) is ``dynamic_size`` 8–80.

    Choices where the pseudocode is ambiguous:

    * ``state = u * c + (1 - u) * c`` is read as ``u * c + (1 - u) * state``: as written the gate does nothing
      and the state never carries over, while every other recurrence in the paper has the ``(1 − u)·state``
      form.
    * ``memory = Linear(input_size, dynamic_size)`` (``input_size`` is undefined in C.2) is applied after the
      encoder, so its input size is the encoder's 256.
    * The encoder's stride-2 blocks halve the resolution although they say ``downscale=False`` (see
      :class:`ResNetEncoder`).
    """

    def __init__(self, config: ResNetFCConfig = ResNetFCConfig()) -> None:
        super().__init__()
        if not 0 < config.dynamic_size <= config.max_dynamic_size:
            raise ValueError(
                f"dynamic_size must lie in [1, representation_size - 1 = {config.max_dynamic_size}]; "
                f"got {config.dynamic_size}. Use dynamic_size_for_budget(config, budget) to pick it."
            )
        self.config = config
        self.data_shape = config.data_shape
        r, h = config.representation_size, config.hidden_size
        self.encoder = ResNetEncoder(config.in_channels, config.image_size, config.channels, config.encoder_size)
        self.memory = MemoryLinear(config.encoder_size, config.dynamic_size)
        self.static = nn.Linear(config.encoder_size, r - config.dynamic_size)
        self.hidden = nn.Linear(r + h, h)
        self.hidden_norm = nn.LayerNorm(h)
        self.gate = nn.Linear(r + h, h)
        self.head = nn.Linear(h, config.head_size)
        self.energy = nn.Linear(config.head_size, 1, bias=False)  # a constant offset never gets a meta-gradient
        he_init_(self)
        init_input_bias_(self.encoder.block1.conv1)  # no all-zero fixed point (module docstring)

    def forward(self, x: Tensor, fast: FastWeights) -> Tensor:
        """Energies ``[B, M]`` of images ``x: [B, M, C, H, W]``."""
        _check_input(x, self.data_shape)
        B, M = x.shape[:2]
        R = self.config.representation_size
        h = self.encoder(x.reshape(B * M, *self.data_shape))  # [B*M, encoder_size]
        dynamic_part = self.memory(h.view(B, M, -1), fast).reshape(B * M, -1)  # [B*M, dynamic]
        x = torch.tanh(torch.cat([dynamic_part, self.static(h)], dim=-1))  # [B*M, representation]
        w_hidden_x, w_hidden_s = self.hidden.weight[:, :R], self.hidden.weight[:, R:]
        w_gate_x, w_gate_s = self.gate.weight[:, :R], self.gate.weight[:, R:]
        hidden_x = F.linear(x, w_hidden_x, self.hidden.bias)  # [B*M, hidden]
        gate_x = F.linear(x, w_gate_x, self.gate.bias)  # [B*M, hidden]
        state = None
        for _ in range(self.config.hops):
            if state is None:  # first hop: state = 0
                hidden, gate = hidden_x, gate_x
            else:
                hidden = hidden_x + state @ w_hidden_s.T
                gate = gate_x + state @ w_gate_s.T
            c = self.hidden_norm(torch.tanh(hidden))
            u = torch.sigmoid(gate)
            state = u * c if state is None else u * c + (1 - u) * state
        return self.energy(torch.tanh(self.head(state))).view(B, M)


# ------------------------------------------------------------------------------------------------------------
# C.3 / C.4: convolutional memory in bottleneck blocks
# ------------------------------------------------------------------------------------------------------------


class MemoryBottleneck(nn.Module):
    """The paper's ``resblock_bottleneck`` (C.3) with a writable 3×3 convolution.

    ``h = tanh(LN(conv1x1(x)))`` (``bottleneck_channels``), ``y = tanh(LN(concat(static(h), memory(h))))``
    with 3×3 ``static`` (``channels − dynamic_size`` outputs) and writable ``memory`` (``dynamic_size``
    outputs), both with stride 2 when downscaling, and ``out = y + conv1x1(pool(x))``. The pseudocode adds the
    skip only inside ``if downscale:``; it is added always here, because its projection is computed
    unconditionally and skip connections are what lets the energy refine its gradient (C.6).

    Args:
        in_channels: input channels.
        channels: output channels.
        bottleneck_channels: channels of ``h``.
        dynamic_size: writable output channels.
        downscale: whether the block halves H and W.
    """

    def __init__(
        self, in_channels: int, channels: int, bottleneck_channels: int, dynamic_size: int, downscale: bool
    ) -> None:
        super().__init__()
        self.downscale = downscale
        stride = 2 if downscale else 1
        self.reduce = nn.Conv2d(in_channels, bottleneck_channels, 1)
        self.reduce_norm = layer_norm_2d(bottleneck_channels)
        self.static = nn.Conv2d(bottleneck_channels, channels - dynamic_size, 3, stride=stride, padding=1)
        self.memory = MemoryConv2d(bottleneck_channels, dynamic_size, 3, stride=stride)
        self.norm = layer_norm_2d(channels)
        self.skip = nn.Conv2d(in_channels, channels, 1)

    def forward(self, x: Tensor, fast: FastWeights, episodes: int) -> Tensor:
        """``[M*B, C_in, H, W] -> [M*B, channels, H', W']``, pattern-major (see :func:`memory_conv`)."""
        h = torch.tanh(self.reduce_norm(self.reduce(x)))
        y = torch.cat([self.static(h), memory_conv(self.memory, h, fast, episodes)], dim=1)  # [M*B, C_out, ..]
        y = torch.tanh(self.norm(y))
        return y + self.skip(downscale(x) if self.downscale else x)


@dataclass(frozen=True)
class ResNetConvConfig(_ImagePresets):
    """Sizes of the ResNet energy with convolutional memory (paper App. C.3, and C.4 for ImageNet 64×64).

    Two ResBlocks (``channels·1``, ``·2``, each halving H and W), then one :class:`MemoryBottleneck` per entry
    of ``bottleneck_downscale`` (``channels·4`` outputs, ``channels·2`` inside), then the gated recurrence.

    Attributes:
        in_channels: image channels (Omniglot 1, CIFAR-10 and ImageNet 3).
        image_size: image height and width.
        channels: base width (paper: 32; ImageNet: 64).
        hidden_size: channels of the recurrent state (paper: 128; ImageNet: 256).
        dynamic_size: writable output channels of each bottleneck's 3×3 convolution (paper C.4: 8); writable
            floats ``len(bottleneck_downscale) · dynamic_size · (2·channels·9 + 1)``.
        bottleneck_downscale: one entry per bottleneck block, whether it halves H and W
            (C.3: ``(False, True)``, 32×32 → 16 → 8 → 8 → 4; C.4: ``(True, True)``, 64×64 → 32 → 16 → 8 → 4).
        hops: recurrent steps (paper: 3).
        head_size: width of the energy head (paper: 1024).
    """

    in_channels: int = 1
    image_size: int = 32
    channels: int = 32
    hidden_size: int = 128
    dynamic_size: int = 8
    bottleneck_downscale: tuple[bool, ...] = (False, True)
    hops: int = 3
    head_size: int = 1024

    @classmethod
    def imagenet64(cls, **overrides: object) -> ResNetConvConfig:
        """ImageNet 64×64 (C.4): channels 64, hidden 256, two downscaling bottlenecks; 3×64×64."""
        preset = {
            "in_channels": 3,
            "image_size": 64,
            "channels": 64,
            "hidden_size": 256,
            "dynamic_size": 8,
            "bottleneck_downscale": (True, True),
        }
        return cls(**{**preset, **overrides})

    @property
    def feature_size(self) -> int:
        """Height and width of the recurrent state."""
        size = _halve(_halve(self.image_size))
        for down in self.bottleneck_downscale:
            size = _halve(size) if down else size
        return size

    @property
    def memory_size(self) -> int:
        """Writable floats: weight and bias of each bottleneck's ``memory`` convolution."""
        return len(self.bottleneck_downscale) * self.dynamic_size * (2 * self.channels * 9 + 1)

    @property
    def max_dynamic_size(self) -> int:
        """Largest allowed ``dynamic_size`` (the static part keeps at least one channel)."""
        return 4 * self.channels - 1


class ResNetConvEnergy(EnergyNet):
    """ResNet energy with convolutional memory (paper App. C.3; C.4 with ``ResNetConvConfig.imagenet64()``).

    ``x → ResBlock(c) → ResBlock(2c) → MemoryBottleneck(4c, 2c) × 2 → ConvRecurrentHead``; the writable layers
    are the 3×3 ``memory`` convolutions of the bottlenecks, listed as ``bottlenecks.0.memory`` and
    ``bottlenecks.1.memory``.

    Memory size: ``2 · dynamic_size · (2·channels·9 + 1)``. Defaults (``dynamic_size = 8``): Omniglot and
    CIFAR-10 presets 9232 floats (1154 per unit; the Omniglot sweep 2K–20K+ is ``dynamic_size`` 2–20),
    ImageNet preset 18448 (2306 per unit).

    Choices where the pseudocode is ambiguous:

    * C.3 gives no ``dynamic_size``; 8 is taken from C.4/C.5.
    * C.4 "is effectively a slightly larger version" of C.3, and differs only in sizes and in its first
      bottleneck downscaling too (which brings 64×64 to the same 4×4 state), so it is this class with a
      preset.
    * The concatenation order ``[static, memory]`` follows the pseudocode (it matters only for parameter
      layout).
    * See the module docstring for the head, the norms, the ResBlock and the skip connections.
    """

    def __init__(self, config: ResNetConvConfig = ResNetConvConfig()) -> None:
        super().__init__()
        if not 0 < config.dynamic_size <= config.max_dynamic_size:
            raise ValueError(
                f"dynamic_size must lie in [1, 4·channels - 1 = {config.max_dynamic_size}]; "
                f"got {config.dynamic_size}. Use dynamic_size_for_budget(config, budget) to pick it."
            )
        if not config.bottleneck_downscale:
            raise ValueError("bottleneck_downscale needs at least one entry (the paper uses two)")
        self.config = config
        self.data_shape = config.data_shape
        c = config.channels
        self.block1 = ResBlock(config.in_channels, c)
        self.block2 = ResBlock(c, 2 * c)
        self.bottlenecks = nn.ModuleList(
            MemoryBottleneck(2 * c if i == 0 else 4 * c, 4 * c, 2 * c, config.dynamic_size, down)
            for i, down in enumerate(config.bottleneck_downscale)
        )
        self.recurrence = ConvRecurrentHead(
            4 * c, config.hidden_size, config.feature_size, config.hops, config.head_size
        )
        he_init_(self)
        init_input_bias_(self.block1.conv1)  # no all-zero fixed point (module docstring)

    def forward(self, x: Tensor, fast: FastWeights) -> Tensor:
        """Energies ``[B, M]`` of images ``x: [B, M, C, H, W]``."""
        _check_input(x, self.data_shape)
        B, M = x.shape[:2]
        h = x.transpose(0, 1).reshape(M * B, *self.data_shape)  # [M*B, C, H, W], pattern-major
        h = self.block2(self.block1(h))
        for block in self.bottlenecks:
            h = block(h, fast, B)
        return self.recurrence(h).view(M, B).t().contiguous()  # [B, M]


# ------------------------------------------------------------------------------------------------------------
# C.5: convolutional memory in the second residual block
# ------------------------------------------------------------------------------------------------------------


class LowerMemoryBlock(nn.Module):
    """The paper's C.5 ``resblock`` with writable 3×3 convolutions in both of its convolutions.

    ``h = tanh(LN(concat(static1(x), memory1(x))))`` (stride 2),
    ``y = tanh(LN(concat(static2(h), memory2(h)) + h))`` (stride 1), ``out = h + y + conv1x1(downscale(x))``.

    Args:
        in_channels: input channels.
        channels: output channels.
        dynamic_size: writable output channels of each convolution.
    """

    def __init__(self, in_channels: int, channels: int, dynamic_size: int) -> None:
        super().__init__()
        self.static1 = nn.Conv2d(in_channels, channels - dynamic_size, 3, stride=2, padding=1)
        self.memory1 = MemoryConv2d(in_channels, dynamic_size, 3, stride=2)
        self.norm1 = layer_norm_2d(channels)
        self.static2 = nn.Conv2d(channels, channels - dynamic_size, 3, padding=1)
        self.memory2 = MemoryConv2d(channels, dynamic_size, 3)
        self.norm2 = layer_norm_2d(channels)
        self.skip = nn.Conv2d(in_channels, channels, 1)

    def forward(self, x: Tensor, fast: FastWeights, episodes: int) -> Tensor:
        """``[M*B, C_in, H, W] -> [M*B, channels, H/2, W/2]``, pattern-major (see :func:`memory_conv`)."""
        h = torch.cat([self.static1(x), memory_conv(self.memory1, x, fast, episodes)], dim=1)
        h = torch.tanh(self.norm1(h))  # [M*B, channels, H/2, W/2]
        y = torch.cat([self.static2(h), memory_conv(self.memory2, h, fast, episodes)], dim=1)
        y = torch.tanh(self.norm2(y + h))
        return h + y + self.skip(downscale(x))


@dataclass(frozen=True)
class ResNetLowerConvConfig(_ImagePresets):
    """Sizes of the ResNet energy with lower-level convolutional memory (paper App. C.5).

    Attributes:
        in_channels: image channels (Omniglot 1, CIFAR-10 3).
        image_size: image height and width.
        channels: base width (paper: 32); the blocks have ``channels·1``, ``·2`` (writable), ``·4`` outputs.
        hidden_size: channels of the recurrent state (paper: 256).
        dynamic_size: writable output channels of each of the two writable convolutions (paper: 8); writable
            floats ``dynamic_size · ((channels·9 + 1) + (2·channels·9 + 1))``.
        hops: recurrent steps (paper: 3).
        head_size: width of the energy head (paper: 1024).
    """

    in_channels: int = 1
    image_size: int = 32
    channels: int = 32
    hidden_size: int = 256
    dynamic_size: int = 8
    hops: int = 3
    head_size: int = 1024

    @property
    def feature_size(self) -> int:
        """Height and width of the recurrent state."""
        return _halve(_halve(_halve(self.image_size)))

    @property
    def memory_size(self) -> int:
        """Writable floats: weights and biases of ``memory1`` and ``memory2``."""
        return self.dynamic_size * ((self.channels * 9 + 1) + (2 * self.channels * 9 + 1))

    @property
    def max_dynamic_size(self) -> int:
        """Largest allowed ``dynamic_size`` (the static part keeps at least one channel)."""
        return 2 * self.channels - 1


class ResNetLowerConvEnergy(EnergyNet):
    """ResNet energy with convolutional memory in the second residual block (paper App. C.5).

    ``x → ResBlock(c) → LowerMemoryBlock(2c) → ResBlock(4c) → ConvRecurrentHead``, each block halving H and W
    (32×32 → 16 → 8 → 4). The writable layers are ``block2.memory1`` and ``block2.memory2``. The paper found
    this placement compresses visual correlations within a batch better (App. A.7).

    Memory size: ``dynamic_size · ((channels·9 + 1) + (2·channels·9 + 1))``; the default presets
    (``dynamic_size = 8``) have 6928 floats (866 per unit; 2K–20K is ``dynamic_size`` 3–23).

    Choices where the pseudocode is ambiguous:

    * Both convolutions of the block are written "stride=2, downscale=True", but ``y += x`` needs ``y`` and
      ``x`` to have the same size, so only the first one has stride 2 and the block halves H and W once.
    * ``nonlinear(LayerNorm)(y)`` is read as ``tanh(LN(y))``, the nonlinearity used everywhere else.
    * See the module docstring for the head, the norms, the ResBlock and the skip connections.
    """

    def __init__(self, config: ResNetLowerConvConfig = ResNetLowerConvConfig()) -> None:
        super().__init__()
        if not 0 < config.dynamic_size <= config.max_dynamic_size:
            raise ValueError(
                f"dynamic_size must lie in [1, 2·channels - 1 = {config.max_dynamic_size}]; "
                f"got {config.dynamic_size}. Use dynamic_size_for_budget(config, budget) to pick it."
            )
        self.config = config
        self.data_shape = config.data_shape
        c = config.channels
        self.block1 = ResBlock(config.in_channels, c)
        self.block2 = LowerMemoryBlock(c, 2 * c, config.dynamic_size)
        self.block3 = ResBlock(2 * c, 4 * c)
        self.recurrence = ConvRecurrentHead(
            4 * c, config.hidden_size, config.feature_size, config.hops, config.head_size
        )
        he_init_(self)
        init_input_bias_(self.block1.conv1)  # no all-zero fixed point (module docstring)

    def forward(self, x: Tensor, fast: FastWeights) -> Tensor:
        """Energies ``[B, M]`` of images ``x: [B, M, C, H, W]``."""
        _check_input(x, self.data_shape)
        B, M = x.shape[:2]
        h = x.transpose(0, 1).reshape(M * B, *self.data_shape)  # [M*B, C, H, W], pattern-major
        h = self.block3(self.block2(self.block1(h), fast, B))
        return self.recurrence(h).view(M, B).t().contiguous()  # [B, M]


def dynamic_size_for_budget(config: ResNetFCConfig | ResNetConvConfig | ResNetLowerConvConfig, budget: int) -> int:
    """The largest ``dynamic_size`` whose memory size fits in ``budget`` floats.

    The memory size is ``dynamic_size`` times a per-unit cost that depends on the other fields (see each
    config's ``memory_size``), so the paper's memory-size sweeps are
    ``dataclasses.replace(config, dynamic_size=dynamic_size_for_budget(config, b))`` for each budget ``b``.

    Args:
        config: any ResNet energy config; only its other fields matter.
        budget: the memory size to stay within, in floats.

    Returns:
        ``dynamic_size`` in ``[1, config.max_dynamic_size]``.

    Raises:
        ValueError: if even one unit exceeds the budget, or the budget needs more units than the layer has.
    """
    per_unit = dataclasses.replace(config, dynamic_size=1).memory_size
    dynamic_size = budget // per_unit
    if dynamic_size < 1:
        raise ValueError(f"a budget of {budget} floats is below one memory unit ({per_unit} floats)")
    if dynamic_size > config.max_dynamic_size:
        raise ValueError(
            f"a budget of {budget} floats needs {dynamic_size} memory units but the layer has at most "
            f"{config.max_dynamic_size}; widen the network (channels, representation_size) or lower it"
        )
    return dynamic_size

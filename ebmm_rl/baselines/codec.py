"""The encoder and decoder every baseline puts around its memory (paper §4: "all models use the same encoder").

* Vectors ``(D,)``: a linear encoder ``D → F`` and a linear decoder ``F → D`` (logits).
* Images ``(C, H, W)``: the ResNet encoder of EBMM's C.2 energy (:class:`~ebmm_rl.energy.resnet.ResNetEncoder`,
  three stride-2 ResBlocks, ``Linear(F)``, ``LayerNorm``) and "its transposed version as a decoder" (C.2), which
  the paper does not spell out: ``Linear(F → 3c·h·w)``, then three :class:`UpBlock` that mirror the encoder's
  blocks (``3c → 2c → c → c`` channels, each doubling H and W back to the encoder's sizes), then a 3×3
  convolution to ``C`` logit channels. Upsampling is nearest-neighbour to the exact sizes the encoder went
  through, so odd sizes (28 → 14 → 7 → 4) come back exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmm_rl.energy.resnet import ResNetEncoder, init_input_bias_, layer_norm_2d
from ebmm_rl.layers import conv_out_size


class UpBlock(nn.Module):
    """The encoder's ResBlock transposed: upsample to ``size``, then ``y = tanh(LN(conv(tanh(LN(conv(x))))))``.

    ``out = y + conv1x1(upsample(x))``, the skip path as in :class:`~ebmm_rl.energy.resnet.ResBlock`.

    Args:
        in_channels: input channels.
        channels: output channels.
        size: output height and width.
    """

    def __init__(self, in_channels: int, channels: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.norm1 = layer_norm_2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = layer_norm_2d(channels)
        self.skip = nn.Conv2d(in_channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C_in, h, w] -> [N, channels, size, size]``."""
        x = F.interpolate(x, size=(self.size, self.size), mode="nearest")
        y = torch.tanh(self.norm1(self.conv1(x)))
        y = torch.tanh(self.norm2(self.conv2(y)))
        return y + self.skip(x)


class ResNetDecoder(nn.Module):
    """The transposed C.2 encoder: ``[N, F] -> [N, C, H, W]`` logits.

    Args:
        out_channels: image channels ``C``.
        image_size: image height and width.
        channels: channels of the encoder's first block.
        in_features: size of the code ``F``.
    """

    def __init__(self, out_channels: int, image_size: int, channels: int, in_features: int) -> None:
        super().__init__()
        sizes = [image_size]
        for _ in range(3):
            sizes.append(conv_out_size(sizes[-1], 3, 2, 1))  # the encoder's stride-2 blocks
        self.start = (3 * channels, sizes[3])
        self.fc = nn.Linear(in_features, 3 * channels * sizes[3] * sizes[3])
        self.block1 = UpBlock(3 * channels, 2 * channels, sizes[2])
        self.block2 = UpBlock(2 * channels, channels, sizes[1])
        self.block3 = UpBlock(channels, channels, sizes[0])
        self.out = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, h: Tensor) -> Tensor:
        """``[N, F] -> [N, C, H, W]`` logits."""
        c, s = self.start
        x = torch.tanh(self.fc(h)).view(-1, c, s, s)  # [N, 3c, h, w]
        return self.out(self.block3(self.block2(self.block1(x))))


class Codec(nn.Module):
    """Encoder ``[B, M, D...] -> [B, M, F]`` and decoder ``[B, M, F] -> [B, M, D...]`` (logits).

    Args:
        data_shape: ``(D,)`` or ``(C, H, W)`` (square images).
        feature_size: code size ``F``.
        channels: first ResNet block's channels (images only).
    """

    def __init__(self, data_shape: tuple[int, ...], feature_size: int, channels: int = 32) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.feature_size = feature_size
        if len(self.data_shape) == 1:
            self.encoder: nn.Module = nn.Linear(self.data_shape[0], feature_size)
            self.decoder: nn.Module = nn.Linear(feature_size, self.data_shape[0])
        elif len(self.data_shape) == 3 and self.data_shape[1] == self.data_shape[2]:
            c, size = self.data_shape[0], self.data_shape[1]
            self.encoder = ResNetEncoder(c, size, channels, feature_size)
            init_input_bias_(self.encoder.block1.conv1)  # see ebmm_rl.energy.resnet: avoids the all-zero image pole
            self.decoder = ResNetDecoder(c, size, channels, feature_size)
        else:
            raise ValueError(f"Codec needs data_shape (D,) or square (C, H, W), got {self.data_shape}")

    def encode(self, x: Tensor) -> Tensor:
        """``[B, M, D...] -> [B, M, F]``."""
        B, M = x.shape[:2]
        return self.encoder(x.reshape(B * M, *self.data_shape)).view(B, M, self.feature_size)

    def decode(self, h: Tensor) -> Tensor:
        """``[B, M, F] -> [B, M, D...]`` logits."""
        B, M = h.shape[:2]
        return self.decoder(h.reshape(B * M, self.feature_size)).view(B, M, *self.data_shape)


def default_feature_size(data_shape: tuple[int, ...]) -> int:
    """``D`` for vectors (the paper's binary baselines work on the 128-d pattern), 256 for images (C.2)."""
    return data_shape[0] if len(data_shape) == 1 else 256

"""Deep Image Prior (Ulyanov, Vedaldi & Lempitsky, 2018): a non-memory baseline of the paper's Table 2.

Nothing is written (memory size 0) and nothing is meta-trained. To read a distorted image, a fresh convolutional
encoder–decoder ``f_θ`` maps a fixed random input ``u`` to an image, and ``θ`` is fitted to the query by ``steps``
Adam updates of the squared error (the paper, App. A.3: 2000 updates per image); the fitted ``f_θ(u)`` is the
retrieved image. With a ``known_mask`` the error only counts the known pixels (the paper: "the network was
instructed about location of the occluded block", Table 2's asterisk), and the known pixels are then clamped as
every model's are (:mod:`ebmm_rl.baselines.base`); without one the whole distorted query is fitted, which stops
short of fitting the noise only by the fixed number of updates.

Network (the paper used the authors' network; a CPU budget needs a small one): ``depth`` stride-2 3×3
convolutions of ``width`` channels, each with instance normalisation (skipped on a 1×1 map) and LeakyReLU(0.2),
then ``depth``
nearest-neighbour upsamplings back to the encoder's sizes, each followed by the same convolution block, and a 1×1
convolution to the image channels through a sigmoid into ``data_range``; no skip connections (Ulyanov et al.'s
choice for inpainting large holes). The input ``u`` has ``input_channels`` channels of uniform noise in
``[0, input_scale]`` (theirs: 32 channels, scale 0.1).

Choices where the papers leave room:

* Every image starts from the same input and the same initial weights (drawn from ``seed``), so a read does not
  depend on which other images are fitted beside it. The images of one ``read`` are fitted together as one grouped
  network (one group per image, each with its own weights and Adam state): the same computation as fitting them
  one by one, up to float rounding, which the Adam steps of a non-convex fit amplify over hundreds of steps (as a
  change of hardware or thread count would), so the fitted images depend on how the images are grouped.
* Vectors ``(D,)`` are fitted as one-row images ``(1, 1, D)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebmm_rl.baselines.autoencoders import NoState, _NonMemory
from ebmm_rl.baselines.base import BaselineConfig, one_step_read
from ebmm_rl.layers import conv_out_size
from ebmm_rl.memory import MetaOutput, ReadResult


@dataclass(frozen=True)
class DIPConfig(BaselineConfig):
    """Deep Image Prior settings.

    Attributes:
        steps: Adam updates per image (paper: 2000).
        lr: Adam learning rate (Ulyanov et al.: 0.01).
        width: channels of every hidden layer.
        depth: stride-2 levels of the encoder (and upsampling levels of the decoder).
        input_channels: channels of the fixed random input.
        input_scale: the input is uniform in ``[0, input_scale]``.
        seed: seed of the input and the initial weights (the same for every image).
    """

    steps: int = 2000
    lr: float = 0.01
    width: int = 32
    depth: int = 3
    input_channels: int = 8
    input_scale: float = 0.1
    seed: int = 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` the network draws: the pattern shape, vectors as one-row images."""
        return (1, 1, self.data_shape[0]) if len(self.data_shape) == 1 else tuple(self.data_shape)


def _conv_shapes(config: DIPConfig) -> list[tuple[int, int, int]]:
    """``(out_channels, in_channels, kernel)`` of every convolution, encoder first, the output 1×1 last."""
    w = config.width
    shapes = [(w, config.input_channels, 3)] + [(w, w, 3)] * (config.depth - 1)  # encoder
    shapes += [(w, w, 3)] * config.depth  # decoder
    return [*shapes, (config.image_shape[0], w, 1)]


class DeepImagePrior(_NonMemory):
    """A randomly initialised encoder–decoder fitted to each distorted image.

    Args:
        config: settings.
    """

    def __init__(self, config: DIPConfig = DIPConfig()) -> None:
        super().__init__()
        if config.steps < 1 or config.width < 1 or config.depth < 1 or config.input_channels < 1:
            raise ValueError("DIPConfig: need steps, width, depth and input_channels >= 1")
        if not (config.lr > 0 and config.input_scale > 0):
            raise ValueError(f"DIPConfig: need lr > 0 and input_scale > 0, got {config.lr} and {config.input_scale}")
        self.config = config

    def initial_network(self, device: torch.device) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The fixed input ``u [input_channels, H, W]`` and initial ``(weight, bias)`` of each convolution.

        Weights and biases follow ``nn.Conv2d``'s default initialisation; all come from ``config.seed``.
        """
        c = self.config
        generator = torch.Generator().manual_seed(c.seed)
        _, h, w = c.image_shape
        u = c.input_scale * torch.rand(c.input_channels, h, w, generator=generator)
        layers = []
        for out_ch, in_ch, k in _conv_shapes(c):
            bound = 1 / math.sqrt(in_ch * k * k)  # kaiming_uniform(a=√5) of nn.Conv2d, and its bias
            weight = (2 * torch.rand(out_ch, in_ch, k, k, generator=generator) - 1) * bound
            bias = (2 * torch.rand(out_ch, generator=generator) - 1) * bound
            layers.append((weight.to(device), bias.to(device)))
        return u.to(device), layers

    def draw(self, u: Tensor, params: list[Tensor], groups: int) -> Tensor:
        """The grouped network: ``u [1, G·c_in, H, W]`` -> ``[G, C, H, W]`` logits (one network per group).

        Args:
            u: the input, repeated per group.
            params: weights ``[G·out, in, k, k]`` and biases ``[G·out]``, alternating, in :func:`_conv_shapes` order.
            groups: ``G``, the number of images.
        """
        c = self.config
        _, h, w = c.image_shape
        sizes = [(h, w)]
        for _ in range(c.depth):
            sizes.append((conv_out_size(sizes[-1][0], 3, 2, 1), conv_out_size(sizes[-1][1], 3, 2, 1)))
        x, p = u, iter(params)
        for level in range(2 * c.depth):
            if level >= c.depth:  # decoder: back to the encoder's size at this level
                x = F.interpolate(x, size=sizes[2 * c.depth - level - 1], mode="nearest")
            x = F.conv2d(x, next(p), next(p), stride=2 if level < c.depth else 1, padding=1, groups=groups)
            if x.shape[-2] * x.shape[-1] > 1:  # a 1×1 map would normalise to zero
                x = F.instance_norm(x)
            x = F.leaky_relu(x, 0.2)
        x = F.conv2d(x, next(p), next(p), groups=groups)  # [1, G·C, H, W]
        return x.view(groups, c.image_shape[0], h, w)

    def fit(self, images: Tensor, known: Tensor | None) -> Tensor:
        """Fit one network per image; returns the fitted networks' logits.

        Args:
            images: ``[G, C, H, W]`` the distorted images (values in ``data_range``).
            known: ``[G, C, H, W]`` bool, the pixels the error counts, or ``None`` (all).

        Returns:
            ``[G, C, H, W]`` logits after ``steps`` Adam updates (detached).
        """
        G = images.shape[0]
        u, layers = self.initial_network(images.device)
        params = []
        for weight, bias in layers:  # G independent copies, stacked along the output channels
            params += [nn.Parameter(weight.repeat(G, 1, 1, 1)), nn.Parameter(bias.repeat(G))]
        u = u.repeat(G, 1, 1).unsqueeze(0).to(images.dtype)  # [1, G·c_in, H, W]
        weights = torch.ones_like(images) if known is None else known.to(images.dtype)
        counts = weights.flatten(1).sum(1).clamp_min(1.0)  # [G]
        optimizer = torch.optim.Adam(params, lr=self.config.lr)
        with torch.enable_grad():
            for _ in range(self.config.steps):
                optimizer.zero_grad(set_to_none=True)
                out = self.to_range(self.draw(u, params, G))
                per_image = ((out - images).pow(2) * weights).flatten(1).sum(1) / counts  # [G]
                per_image.sum().backward()  # each network's gradient is that of its own image's error
                optimizer.step()
        with torch.no_grad():
            return self.draw(u, params, G)

    def read(self, queries: Tensor, state: NoState, known_mask: Tensor | None = None) -> ReadResult:
        """Fit a network to each query: ``iterates [2, B, M, D...]`` (the projected query and the fitted image).

        Args:
            queries: ``[B, M, D...]``.
            state: the (empty) state.
            known_mask: optional bool mask of the known query entries: the fit ignores the others, which are
                then the network's, while the known ones stay clamped.
        """
        known_mask, x0 = self.start_read(queries, state.batch_size, known_mask)
        B, M = queries.shape[:2]
        shape = self.config.image_shape
        images = queries.detach().reshape(B * M, *shape)
        known = None if known_mask is None else known_mask.reshape(B * M, *shape)
        logits = self.fit(images, known).view_as(queries)
        return one_step_read(x0, self.project(self.to_range(logits), queries, known_mask))

    def forward(self, patterns: Tensor, queries: Tensor, known_mask: Tensor | None = None) -> MetaOutput:
        """Fit ``queries`` and report the errors; the loss carries no gradient (nothing is meta-trained)."""
        state = self.write(patterns)
        result = self.read(queries, state, known_mask)
        loss, errors = self.meta_loss(patterns, result)
        return MetaOutput(loss, errors, result, state)

"""Encoders from memory rows to the patterns an EBMM stores, trained by the RL loss.

A row (:mod:`ebmm_rl.rl.rows`) is one step's observation flattened into a data range. The memory stores an
*encoded* row, the pattern ``p = enc(row)``, and reads with the encoded current row. Kinds (``encoder=`` of
:class:`~ebmm_rl.rl.EBMMExtractor`):

* ``"identity"``: ``p = row`` (``P = D``): small rows, and the ``ebmm/...`` probes' patterns, are stored as they are.
* ``"linear"``: ``p = tanh(W row + b)`` with ``P = pattern_size`` (default :data:`DEFAULT_PATTERN_SIZE`).
* ``"cnn"``: each image part of the row goes through a small CNN (3×3 convolutions, 16 then 32 channels, stride 2
  until the feature map is at most 8 wide), the other entries pass as they are, and ``p = tanh(W [cnn, rest] + b)``.
* ``"auto"`` (default): ``"cnn"`` if the row holds an image of at least 7×7 pixels, else ``"identity"`` up to
  :data:`IDENTITY_MAX` entries, else ``"linear"``.

Patterns of the learned kinds lie in ``(-1, 1)``; the memory's ``data_range`` is ``(-1, 1)`` then.
Cost per row (multiply-adds): identity 0, linear ``D·P``, cnn about ``H·W·(9·16·C + 9·32·16 / 4)`` plus ``F·P``
for the ``F`` CNN features; a memory write of one pattern costs ``T`` gradient steps of the energy, far more than
any of these at the default sizes (``docs/rl.md``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebmm_rl.rl.rows import RowLayout, Segment

__all__ = ["DEFAULT_PATTERN_SIZE", "ENCODER_KINDS", "IDENTITY_MAX", "RowEncoder", "choose_kind"]

ENCODER_KINDS = ("auto", "identity", "linear", "cnn")
IDENTITY_MAX = 64
"""Largest row that ``"auto"`` stores as it is."""
DEFAULT_PATTERN_SIZE = 32
"""Pattern size ``P`` of the learned encoders."""
MIN_IMAGE_SIDE = 7


def choose_kind(kind: str, row_size: int, layout: RowLayout | None) -> str:
    """The encoder kind ``"auto"`` resolves to (other kinds are returned as they are, after a check)."""
    if kind not in ENCODER_KINDS:
        raise ValueError(f"encoder must be one of {list(ENCODER_KINDS)} or an nn.Module, got {kind!r}")
    images = _images(layout)
    if kind == "cnn" and not images:
        raise ValueError(
            "encoder='cnn' needs rows that hold an image (a 3-d uint8 Box observation part); this observation has "
            "none: use 'linear' or 'identity'"
        )
    if kind != "auto":
        return kind
    if images:
        return "cnn"
    return "identity" if row_size <= IDENTITY_MAX else "linear"


def _images(layout: RowLayout | None) -> list[Segment]:
    if layout is None:
        return []
    return [s for s in layout.image_segments if min(_hw(s)) >= MIN_IMAGE_SIDE]


def _hw(segment: Segment) -> tuple[int, int]:
    shape = segment.shape
    return (shape[1], shape[2]) if segment.channels_first else (shape[0], shape[1])


class _SmallCNN(nn.Module):
    """``[n, C, H, W]`` -> ``[n, F]``: 3×3 convolutions, stride 2 until the map is at most 8 wide."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU()]
        c, h, w = 16, height, width
        while max(h, w) > 8:
            layers += [nn.Conv2d(c, 32, 3, stride=2, padding=1), nn.ReLU()]
            c, h, w = 32, math.ceil(h / 2), math.ceil(w / 2)
        if c == 16:
            layers += [nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()]
            c = 32
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_size = c * h * w

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class RowEncoder(nn.Module):
    """Maps rows ``[..., D]`` to patterns ``[..., P]`` (see the module docstring for the kinds).

    Args:
        kind: ``"auto"``, ``"identity"``, ``"linear"`` or ``"cnn"``.
        row_size: ``D``.
        row_range: the data range of the rows.
        layout: the rows' :class:`~ebmm_rl.rl.rows.RowLayout` (where the images are); ``None``: no images.
        pattern_size: ``P`` of the learned kinds.

    Attributes:
        kind: the resolved kind.
        pattern_size: ``P``.
        data_range: the range of the patterns (the memory's ``data_range``).
    """

    def __init__(
        self,
        kind: str,
        row_size: int,
        row_range: tuple[float, float],
        layout: RowLayout | None = None,
        pattern_size: int = DEFAULT_PATTERN_SIZE,
    ) -> None:
        super().__init__()
        if pattern_size < 1:
            raise ValueError(f"pattern_size must be >= 1, got {pattern_size}")
        self.kind = choose_kind(kind, row_size, layout)
        self.row_size = int(row_size)
        self.row_range = (float(row_range[0]), float(row_range[1]))
        self.images = _images(layout) if self.kind == "cnn" else []
        self.cnns = nn.ModuleList()
        if self.kind == "identity":
            self.pattern_size = self.row_size
            self.data_range = self.row_range
            return
        keep = [True] * self.row_size  # a plain list: the encoder is also built on the meta device
        features = 0
        for seg in self.images:
            channels = seg.shape[0] if seg.channels_first else seg.shape[2]
            cnn = _SmallCNN(channels, *_hw(seg))
            self.cnns.append(cnn)
            features += cnn.out_size
            keep[seg.offset : seg.offset + seg.size] = [False] * seg.size
        rest = [i for i, k in enumerate(keep) if k]
        self.register_buffer(
            "rest", torch.tensor(rest, dtype=torch.long), persistent=False
        )  # entries passed as they are
        self.project = nn.Linear(features + len(rest), int(pattern_size))
        self.pattern_size = int(pattern_size)
        self.data_range = (-1.0, 1.0)

    def forward(self, rows: Tensor) -> Tensor:
        """``rows: [..., D]`` -> patterns ``[..., P]``."""
        if rows.shape[-1] != self.row_size:
            raise ValueError(
                f"the encoder takes rows of {self.row_size} entries but got {rows.shape[-1]} (shape "
                f"{tuple(rows.shape)}): the environment's observations do not match the ones the model was built for"
            )
        if self.kind == "identity":
            return rows
        lead = rows.shape[:-1]
        flat = rows.reshape(-1, self.row_size)  # [n, D]
        parts = []
        for seg, cnn in zip(self.images, self.cnns, strict=True):
            image = flat[:, seg.offset : seg.offset + seg.size].reshape(-1, *seg.shape)
            if not seg.channels_first:
                image = image.permute(0, 3, 1, 2)  # [n, H, W, C] -> [n, C, H, W]
            parts.append(cnn(image))
        parts.append(flat[:, self.rest])
        return torch.tanh(self.project(torch.cat(parts, dim=1))).reshape(*lead, self.pattern_size)

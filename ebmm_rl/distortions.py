"""Distortions that turn stored images into queries, and the batch samplers of the image memory benchmarks.

A **distortion** is a callable ``(images [..., C, H, W], generator) -> (queries, known_mask)``: ``queries`` has
the shape of ``images`` and values in [0, 1] (given images in [0, 1]); ``known_mask`` is a bool tensor of the same
shape, ``True`` where the query still holds the true pixel (a reader may clamp those, as
:meth:`ebmm_rl.memory.EBMMemory.read` does), or ``None``. All randomness comes from the given
``torch.Generator``, so a seeded generator gives the same queries on every run; leading dimensions (``[B, N]`` for
a meta-batch) are processed in one pass, without Python loops.

Distortions (registry :data:`DISTORTIONS`, build one with :func:`make_distortion`):

* ``"block"`` (:class:`BlockNoise`): the paper's main distortion (§4.1–4.3): one randomly positioned square block
  per image, 16x16 on 32x32 images and 32x32 on 64x64 images (a quarter of the image), filled with noise.
  ``fill="binary"`` draws random 0/1 values (the paper's "randomly positioned binary distortions" on Omniglot);
  ``fill="uniform"`` draws values uniformly from [0, 1] independently per channel (used for CIFAR-10 and ImageNet:
  the paper only says "random masks"); a number fills the block with that constant. :func:`paper_distortion`
  picks the paper's setting for a data set.
* ``"salt_pepper"`` (:class:`SaltPepper`): each pixel position is hit with probability ``p`` (paper App. A.4/A.5:
  15%) and set to black (0) or white (1) with equal odds, all channels alike. On binary images about half of the
  hits leave the pixel as it was.
* ``"gaussian"`` (:class:`GaussianNoise`): ``clamp(x + std * noise, 0, 1)``; every pixel changes, none is known.
* ``"dropout"`` (:class:`PixelDropout`): each pixel position is set to ``value`` (0) with probability ``p``.
* ``"erase"`` (:func:`erase`): a block filled with a constant (0), i.e. ``BlockNoise(fill=0.0)``.

Known masks: the paper's image models are not told which pixels were distorted (§4.2 credits EBMM's ability "to
detect the distorted part of the image"), so distortions return ``known_mask=None`` unless built with
``return_known_mask=True``.

A **sampler** is a callable ``(generator) -> (patterns [B, N, C, H, W], queries, known_mask)``, the
:data:`ebmm_rl.training.Sampler` that :class:`ebmm_rl.training.MetaTrainer` takes: B episodes, each storing N
images ("a batch of N images" in the paper's words). :class:`UniformBatchSampler` draws the N images of an episode
uniformly without replacement (the paper's default); :class:`ClassBatchSampler` draws them from exactly k classes
(App. A.7: 32 images of exactly 2 classes). :func:`make_sampler` builds either::

    train = load_dataset("omniglot", "train")
    sampler = make_sampler(train, "block", batch_size=16, num_patterns=32)   # 16x16 binary block on 32x32
    trainer = MetaTrainer(memory, sampler, TrainConfig(device="cpu"))
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ebmm_rl.data import ImageDataset

__all__ = [
    "DISTORTIONS",
    "BlockNoise",
    "ClassBatchSampler",
    "Distortion",
    "GaussianNoise",
    "PixelDropout",
    "SaltPepper",
    "UniformBatchSampler",
    "erase",
    "make_distortion",
    "make_sampler",
    "paper_distortion",
]

Distortion = Callable[[Tensor, torch.Generator], tuple[Tensor, "Tensor | None"]]
"""``(images [..., C, H, W], generator) -> (queries [..., C, H, W], known_mask [..., C, H, W] bool or None)``."""

_FILLS = ("uniform", "binary")


def _check_images(images: Tensor, name: str) -> None:
    if images.dim() < 3 or not images.is_floating_point():
        raise ValueError(
            f"{name} needs float images [..., C, H, W] (e.g. [B, N, C, H, W]) in [0, 1]; got "
            f"{images.dtype} of shape {tuple(images.shape)}. Convert uint8 images with ImageDataset.get()."
        )


def _check_probability(p: float, name: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: p must be a probability in [0, 1], got {p}")


def _mask_out(known: Tensor, images: Tensor, requested: bool) -> Tensor | None:
    """``known [..., 1 or C, H, W]`` expanded to the shape of ``images``, when requested."""
    return known.expand_as(images).contiguous() if requested else None


@dataclass(frozen=True)
class BlockNoise:
    """One randomly positioned block of noise per image (the paper's query distortion).

    The block's top-left corner is uniform over all positions where the block fits inside the image, so a 16x16
    block always covers exactly a quarter of a 32x32 image; it covers all channels.

    Attributes:
        block_size: side of the square block, or ``(height, width)`` (paper: 16 on 32x32, 32 on 64x64).
        fill: ``"binary"`` (random 0/1 values), ``"uniform"`` (uniform in [0, 1], independent per channel), or a
            constant in [0, 1].
        return_known_mask: return ``known_mask`` (``False`` inside the block) instead of ``None``.
    """

    block_size: int | tuple[int, int] = 16
    fill: str | float = "uniform"
    return_known_mask: bool = False

    def __post_init__(self) -> None:
        h, w = self.block_hw
        if h < 1 or w < 1:
            raise ValueError(f"BlockNoise: block_size must be positive, got {self.block_size}")
        if isinstance(self.fill, str):
            if self.fill not in _FILLS:
                raise ValueError(f"BlockNoise: fill must be one of {_FILLS} or a number in [0, 1], got {self.fill!r}")
        elif not 0.0 <= float(self.fill) <= 1.0:
            raise ValueError(f"BlockNoise: a constant fill must lie in [0, 1], got {self.fill}")

    @property
    def block_hw(self) -> tuple[int, int]:
        """``(height, width)`` of the block."""
        if isinstance(self.block_size, int):
            return (self.block_size, self.block_size)
        h, w = self.block_size
        return (int(h), int(w))

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """Distort ``images [..., C, H, W]``; returns ``(queries, known_mask or None)`` of the same shape."""
        _check_images(images, "BlockNoise")
        h, w = self.block_hw
        H, W = images.shape[-2:]
        if h > H or w > W:
            raise ValueError(
                f"BlockNoise: a {h}x{w} block does not fit in {H}x{W} images; use block_size <= {min(H, W)} "
                f"(the paper uses half the image side)"
            )
        lead, device = images.shape[:-3], images.device
        top = torch.randint(0, H - h + 1, lead, generator=generator, device=device)  # [...]
        left = torch.randint(0, W - w + 1, lead, generator=generator, device=device)  # [...]
        rows = torch.arange(H, device=device)
        cols = torch.arange(W, device=device)
        in_rows = (rows >= top[..., None]) & (rows < top[..., None] + h)  # [..., H]
        in_cols = (cols >= left[..., None]) & (cols < left[..., None] + w)  # [..., W]
        block = (in_rows[..., :, None] & in_cols[..., None, :]).unsqueeze(-3)  # [..., 1, H, W]
        if self.fill == "uniform":
            noise = torch.rand(images.shape, generator=generator, device=device, dtype=images.dtype)
        elif self.fill == "binary":
            noise = torch.randint(0, 2, images.shape, generator=generator, device=device).to(images.dtype)
        else:
            noise = torch.full_like(images, float(self.fill))
        queries = torch.where(block, noise, images)  # [..., C, H, W]
        return queries, _mask_out(~block, images, self.return_known_mask)


@dataclass(frozen=True)
class SaltPepper:
    """Salt-and-pepper noise: each pixel position, with probability ``p``, becomes black (0) or white (1).

    Attributes:
        p: probability that a pixel position is hit (paper App. A.4: 0.15). All channels of a hit position get
            the same value, so colour images get black and white dots.
        return_known_mask: return ``known_mask`` (``False`` at hit positions) instead of ``None``.
    """

    p: float = 0.15
    return_known_mask: bool = False

    def __post_init__(self) -> None:
        _check_probability(self.p, "SaltPepper")

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """Distort ``images [..., C, H, W]``; returns ``(queries, known_mask or None)`` of the same shape."""
        _check_images(images, "SaltPepper")
        shape = (*images.shape[:-3], 1, *images.shape[-2:])  # [..., 1, H, W]: one draw per position
        hit = torch.rand(shape, generator=generator, device=images.device) < self.p
        white = torch.randint(0, 2, shape, generator=generator, device=images.device).to(images.dtype)
        queries = torch.where(hit, white, images)
        return queries, _mask_out(~hit, images, self.return_known_mask)


@dataclass(frozen=True)
class GaussianNoise:
    """Additive Gaussian noise, clipped to [0, 1]: ``clamp(x + std * n, 0, 1)`` with ``n ~ N(0, 1)`` per value.

    Attributes:
        std: standard deviation of the noise.
        return_known_mask: return an all-``False`` ``known_mask`` (every value is perturbed) instead of ``None``.
    """

    std: float = 0.1
    return_known_mask: bool = False

    def __post_init__(self) -> None:
        if not (self.std >= 0.0 and math.isfinite(self.std)):
            raise ValueError(f"GaussianNoise: std must be a finite number >= 0, got {self.std}")

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """Distort ``images [..., C, H, W]``; returns ``(queries, known_mask or None)`` of the same shape."""
        _check_images(images, "GaussianNoise")
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        queries = (images + self.std * noise).clamp_(0.0, 1.0)
        known = torch.zeros((1,) * images.dim(), dtype=torch.bool, device=images.device)
        return queries, _mask_out(known, images, self.return_known_mask)


@dataclass(frozen=True)
class PixelDropout:
    """Each pixel position is set to ``value`` (all channels) with probability ``p``.

    Attributes:
        p: probability that a pixel position is dropped.
        value: the value dropped pixels get, in [0, 1].
        return_known_mask: return ``known_mask`` (``False`` at dropped positions) instead of ``None``.
    """

    p: float = 0.25
    value: float = 0.0
    return_known_mask: bool = False

    def __post_init__(self) -> None:
        _check_probability(self.p, "PixelDropout")
        if not 0.0 <= self.value <= 1.0:
            raise ValueError(f"PixelDropout: value must lie in [0, 1], got {self.value}")

    def __call__(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """Distort ``images [..., C, H, W]``; returns ``(queries, known_mask or None)`` of the same shape."""
        _check_images(images, "PixelDropout")
        shape = (*images.shape[:-3], 1, *images.shape[-2:])  # [..., 1, H, W]
        drop = torch.rand(shape, generator=generator, device=images.device) < self.p
        queries = images.masked_fill(drop, self.value)
        return queries, _mask_out(~drop, images, self.return_known_mask)


def erase(block_size: int | tuple[int, int] = 16, value: float = 0.0, return_known_mask: bool = False) -> BlockNoise:
    """A randomly positioned block set to a constant (random erasing / occlusion): ``BlockNoise(fill=value)``.

    Args:
        block_size: side of the square block, or ``(height, width)``.
        value: the constant in [0, 1].
        return_known_mask: return ``known_mask`` instead of ``None``.

    Returns:
        The distortion.
    """
    return BlockNoise(block_size=block_size, fill=float(value), return_known_mask=return_known_mask)


DISTORTIONS: dict[str, Callable[..., Distortion]] = {
    "block": BlockNoise,
    "salt_pepper": SaltPepper,
    "gaussian": GaussianNoise,
    "dropout": PixelDropout,
    "erase": erase,
}
"""Distortion name -> constructor; keyword arguments are the constructor's (see each class)."""


def make_distortion(name: str, **kwargs: object) -> Distortion:
    """Build a registered distortion by name.

    Args:
        name: a key of :data:`DISTORTIONS`.
        **kwargs: arguments of its constructor, e.g. ``block_size=20`` or ``p=0.3``.

    Returns:
        The distortion.

    Raises:
        ValueError: unknown name (the message lists the known ones), unknown or invalid arguments.
    """
    try:
        factory = DISTORTIONS[name]
    except KeyError:
        raise ValueError(f"unknown distortion {name!r}; known: {', '.join(DISTORTIONS)}") from None
    accepted = list(inspect.signature(factory).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"distortion {name!r} takes {', '.join(accepted)}; got unknown argument(s) {unknown}")
    return factory(**kwargs)


def paper_distortion(dataset: ImageDataset, return_known_mask: bool = False) -> BlockNoise:
    """The paper's query distortion for a data set: a block of half the image side (a quarter of the image).

    16x16 on 32x32 (Omniglot, CIFAR-10, MNIST), 32x32 on 64x64 (ImageNet); random 0/1 values on binary data, uniform
    [0, 1] values otherwise.

    Args:
        dataset: the data set the queries are made from.
        return_known_mask: return ``known_mask`` instead of ``None``.

    Returns:
        The :class:`BlockNoise`.
    """
    _, h, w = dataset.data_shape
    fill = "binary" if dataset.binary else "uniform"
    return BlockNoise(block_size=(h // 2, w // 2), fill=fill, return_known_mask=return_known_mask)


# -------------------------------------------------------------------------------------------------- samplers
def _as_float(images: Tensor) -> Tensor:
    """uint8 0..255 (``load_dataset(..., uint8=True)``) to float32 in [0, 1]; float images unchanged."""
    return images.float().mul_(1.0 / 255.0) if images.dtype == torch.uint8 else images


class _EpisodeSampler:
    """Shared part of the samplers: the images on the device, the distortion, ``__call__``."""

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        num_patterns: int,
        distortion: Distortion | str | None,
        device: str | torch.device,
    ) -> None:
        if batch_size < 1 or num_patterns < 1:
            raise ValueError(f"need batch_size >= 1 and num_patterns >= 1, got {batch_size} and {num_patterns}")
        if num_patterns > len(dataset):
            raise ValueError(
                f"num_patterns={num_patterns} is more than the {len(dataset)} images of {dataset.name} "
                f"{dataset.split}; episodes draw without replacement"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_patterns = num_patterns
        self.images = dataset.images.to(device)  # [M, C, H, W] float32 or uint8
        self.device = self.images.device
        if distortion is None:
            distortion = paper_distortion(dataset)
        elif isinstance(distortion, str):
            distortion = make_distortion(distortion)
        self.distortion: Distortion = distortion
        # dry run on one image, so a distortion that does not fit the images fails here, not in training
        self.distortion(_as_float(self.images[:1]), torch.Generator(device=self.device))

    def sample_indices(self, generator: torch.Generator) -> Tensor:
        """Dataset indices of one meta-batch, ``[B, N]`` int64 (labels: ``dataset.labels[indices]``)."""
        raise NotImplementedError

    def _check_generator(self, generator: torch.Generator) -> None:
        if generator.device.type != self.device.type:
            raise ValueError(
                f"the generator is on {generator.device} but the sampler's images are on {self.device}; create it "
                f"with torch.Generator(device={str(self.device)!r}) (MetaTrainer does so for config.device)"
            )

    def __call__(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor | None]:
        """One meta-batch: ``(patterns [B, N, C, H, W], queries [B, N, C, H, W], known_mask or None)``."""
        self._check_generator(generator)
        index = self.sample_indices(generator)  # [B, N]
        patterns = _as_float(self.images[index])  # [B, N, C, H, W]
        queries, known_mask = self.distortion(patterns, generator)
        return patterns, queries, known_mask


class UniformBatchSampler(_EpisodeSampler):
    """Episodes of N images drawn uniformly without replacement (the paper's uncorrelated batches).

    Args:
        dataset: the images.
        batch_size: episodes per meta-batch, ``B``.
        num_patterns: images written per episode, ``N`` (the paper's "batch of images").
        distortion: a distortion, a name in :data:`DISTORTIONS` (default arguments), or ``None`` for
            :func:`paper_distortion`.
        device: where the images are kept and the batches made (the generator must live there too).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        num_patterns: int,
        distortion: Distortion | str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(dataset, batch_size, num_patterns, distortion, device)

    def sample_indices(self, generator: torch.Generator) -> Tensor:
        """``[B, N]`` indices, distinct within each episode, each N-subset equally likely, in random order."""
        B, N, M = self.batch_size, self.num_patterns, len(self.dataset)
        if N * N > M:  # many collisions expected: rank M random keys per episode
            keys = torch.rand(B, M, generator=generator, device=self.device)
            return keys.argsort(dim=1)[:, :N]
        # few collisions: draw with replacement and redraw episodes holding a repeat (exact rejection sampling)
        index = torch.randint(0, M, (B, N), generator=generator, device=self.device)
        while True:
            ordered = index.sort(dim=1).values
            repeated = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)  # [B]
            count = int(repeated.sum())
            if count == 0:
                return index
            index[repeated] = torch.randint(0, M, (count, N), generator=generator, device=self.device)


class ClassBatchSampler(_EpisodeSampler):
    """Episodes of N images from exactly k classes (App. A.7: each batch of 32 images has exactly 2 classes).

    An episode picks k distinct classes uniformly among those with at least ``ceil(N / k)`` images, takes
    ``N // k`` images of each (the first ``N % k`` picked classes one more), drawn without replacement, and
    shuffles them.

    Args:
        dataset: the images and labels.
        batch_size: episodes per meta-batch, ``B``.
        num_patterns: images written per episode, ``N``.
        classes_per_episode: ``k``.
        distortion: a distortion, a name in :data:`DISTORTIONS`, or ``None`` for :func:`paper_distortion`.
        device: where the images are kept and the batches made.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        num_patterns: int,
        classes_per_episode: int,
        distortion: Distortion | str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(dataset, batch_size, num_patterns, distortion, device)
        k = classes_per_episode
        if not 1 <= k <= num_patterns:
            raise ValueError(f"classes_per_episode must be in 1..num_patterns={num_patterns}, got {k}")
        self.classes_per_episode = k
        self.per_class = -(-num_patterns // k)  # ceil(N / k) drawn per class, surplus dropped below
        labels = dataset.labels.cpu()
        counts = torch.bincount(labels)
        eligible = torch.nonzero(counts >= self.per_class).flatten()
        if len(eligible) < k:
            raise ValueError(
                f"{dataset.name} {dataset.split} has {len(eligible)} classes with at least {self.per_class} images, "
                f"fewer than classes_per_episode={k}; lower num_patterns or classes_per_episode"
            )
        order = torch.argsort(labels, stable=True)  # dataset indices grouped by class
        starts = torch.cumsum(counts, 0) - counts
        width = int(counts[eligible].max())
        slot = torch.arange(width)
        self.class_counts = counts[eligible].to(self.device)  # [E]
        table = order[(starts[eligible, None] + slot).clamp(max=len(labels) - 1)]  # [E, width]
        self.class_table = table.to(self.device)  # row e: indices of class eligible[e], padded past its count
        self.class_ids = eligible.to(self.device)  # [E] label of each row
        quota = num_patterns // k + (torch.arange(k) < num_patterns % k).long()  # [k]
        self._keep = (slot[: self.per_class] < quota[:, None]).flatten().to(self.device)  # [k * per_class]

    def sample_indices(self, generator: torch.Generator) -> Tensor:
        """``[B, N]`` indices: N distinct images of exactly k classes per episode, in random order."""
        B, N, k, per = self.batch_size, self.num_patterns, self.classes_per_episode, self.per_class
        E, width = self.class_table.shape
        classes = torch.rand(B, E, generator=generator, device=self.device).argsort(dim=1)[:, :k]  # [B, k]
        keys = torch.rand(B, k, width, generator=generator, device=self.device)
        padding = torch.arange(width, device=self.device) >= self.class_counts[classes][..., None]  # [B, k, width]
        slots = keys.masked_fill(padding, 2.0).argsort(dim=-1)[..., :per]  # [B, k, per]: random real slots
        index = self.class_table[classes].gather(-1, slots).reshape(B, k * per)[:, self._keep]  # [B, N]
        shuffle = torch.rand(B, N, generator=generator, device=self.device).argsort(dim=1)
        return index.gather(1, shuffle)


def make_sampler(
    dataset: ImageDataset,
    distortion: Distortion | str | None,
    batch_size: int,
    num_patterns: int,
    classes_per_episode: int | None = None,
    device: str | torch.device = "cpu",
) -> UniformBatchSampler | ClassBatchSampler:
    """A meta-batch sampler for :class:`ebmm_rl.training.MetaTrainer`: episodes of images plus a distortion.

    Args:
        dataset: the images.
        distortion: a distortion, a name in :data:`DISTORTIONS`, or ``None`` for :func:`paper_distortion`.
        batch_size: episodes per meta-batch, ``B``.
        num_patterns: images written per episode, ``N``.
        classes_per_episode: ``None`` for uniform episodes, ``k`` for episodes of exactly k classes (App. A.7).
        device: where the images are kept and batches made; use the trainer's ``config.device``.

    Returns:
        A callable ``(generator) -> (patterns [B, N, C, H, W], queries, known_mask)``.
    """
    if classes_per_episode is None:
        return UniformBatchSampler(dataset, batch_size, num_patterns, distortion, device)
    return ClassBatchSampler(dataset, batch_size, num_patterns, classes_per_episode, distortion, device)

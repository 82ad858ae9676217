"""Evaluation of image memories as the paper reports it (§4.1–4.4, Figs 2–6, App. A.5–A.7).

* Metrics: Hamming distance for binary data (Omniglot, MNIST: retrieved pixels rounded at 0.5), squared error for
  continuous data (CIFAR-10, ImageNet 64x64), both per image, summed over its pixels (and channels). A batch's score
  is the mean over its episodes and queries; results are the mean over batches with 5/95 percentiles of the batch
  scores (the paper's error bars: "5- and 95-percentiles computed on 1000 random batches", App. A).
* Figs 2 and 4: :func:`iteration_grid` lays out the read iterations of a few patterns, one row per pattern, with
  columns query, iterate 1..K, original, and returns the energy of every cell.
* Fig. 6: :func:`energy_classes` gives the energies of memories (written patterns), non-memories (other images of
  the split, never written; :func:`draw_non_memories`), distorted memories (the queries) and, optionally,
  out-of-distribution images (the paper: binarised CIFAR under an Omniglot model; :func:`match_images`).
  :func:`familiarity_auroc` scores how well the energy alone tells memories from another class.
* Figs 3, 5, 9, Table 3: :func:`episode_errors` scores one model on many episodes (the paper's "batches": N
  images written into one memory, each read back from its distorted version); :func:`summarize_batches` gives
  the mean and 5/95 percentiles.

:class:`ImageEvaluator` bundles these as the ``evaluate`` callback of :class:`ebmm_rl.training.MetaTrainer`, and
logs the grid, the energy table and the energy histograms to TensorBoard when given a writer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ebmm_rl.data import ImageDataset
from ebmm_rl.distortions import ClassBatchSampler, Distortion, UniformBatchSampler, make_distortion, make_sampler
from ebmm_rl.memory import EBMMemory, MemoryState

__all__ = [
    "NOISES",
    "EvalResult",
    "ImageEvaluator",
    "draw_non_memories",
    "energy_classes",
    "energy_table",
    "episode_errors",
    "familiarity_auroc",
    "hamming_errors",
    "grid_column_names",
    "image_grid",
    "iteration_grid",
    "match_images",
    "metric_name",
    "noise_images",
    "query_distortion",
    "retrieval_errors",
    "squared_errors",
    "summarize_batches",
]

NOISES = ("block", "salt_pepper", "gaussian", "dropout", "erase")
"""Distortion names :func:`query_distortion` accepts (those of :data:`ebmm_rl.distortions.DISTORTIONS`)."""


# ------------------------------------------------------------------------------------------------ distortions
def query_distortion(
    dataset: ImageDataset, noise: str = "block", size: float | None = None, return_known_mask: bool = False
) -> Distortion:
    """The query distortion for ``dataset``, by name and a single size knob.

    Args:
        dataset: the data set the queries are made from (its image size and whether it is binary).
        noise: ``"block"`` (random noise in a square block: random 0/1 values on binary data, uniform values
            otherwise; with the default size this is :func:`~ebmm_rl.distortions.paper_distortion`),
            ``"erase"`` (a block of zeros), ``"salt_pepper"``, ``"dropout"`` or ``"gaussian"``.
        size: the block side in pixels for ``block``/``erase`` (default: half the image side, the paper's 16x16 on
            32x32 and 32x32 on 64x64), the probability per pixel for ``salt_pepper`` (default 0.15, App. A.4) and
            ``dropout`` (default 0.25), the standard deviation for ``gaussian`` (default 0.1).
        return_known_mask: let the distortion return which pixels are intact (a reader then clamps them).

    Returns:
        The distortion.

    Raises:
        ValueError: unknown ``noise`` or an invalid ``size``.
    """
    if noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}; use one of {', '.join(NOISES)}")
    if noise in ("block", "erase"):
        _, h, w = dataset.data_shape
        if size is not None and (size != int(size) or size < 1):
            raise ValueError(f"the {noise} size is a block side in pixels, a positive integer; got {size}")
        block = (h // 2, w // 2) if size is None else int(size)
        if noise == "erase":
            return make_distortion("erase", block_size=block, return_known_mask=return_known_mask)
        fill = "binary" if dataset.binary else "uniform"  # as paper_distortion
        return make_distortion("block", block_size=block, fill=fill, return_known_mask=return_known_mask)
    knob = {"salt_pepper": "p", "dropout": "p", "gaussian": "std"}[noise]
    kwargs: dict[str, Any] = {"return_known_mask": return_known_mask}
    if size is not None:
        kwargs[knob] = float(size)
    return make_distortion(noise, **kwargs)


# ------------------------------------------------------------------------------------------------------ metrics
def hamming_errors(retrieved: Tensor, patterns: Tensor) -> Tensor:
    """Wrong pixels per image after rounding at 0.5 (the paper's Omniglot metric).

    Args:
        retrieved: ``[B, M, C, H, W]`` values in [0, 1].
        patterns: ``[B, M, C, H, W]`` binary originals.

    Returns:
        ``[B, M]`` float counts.
    """
    return ((retrieved > 0.5) != (patterns > 0.5)).flatten(2).sum(dim=2).to(retrieved.dtype)


def squared_errors(retrieved: Tensor, patterns: Tensor) -> Tensor:
    """Squared error per image, ``‖x − x̂‖²`` summed over pixels and channels (the paper's CIFAR metric).

    Args:
        retrieved: ``[B, M, C, H, W]``.
        patterns: ``[B, M, C, H, W]``.

    Returns:
        ``[B, M]``.
    """
    return (retrieved - patterns).pow(2).flatten(2).sum(dim=2)


def metric_name(binary: bool) -> str:
    """``"hamming"`` for binary data, ``"squared_error"`` otherwise (the keys :class:`ImageEvaluator` reports)."""
    return "hamming" if binary else "squared_error"


def retrieval_errors(retrieved: Tensor, patterns: Tensor, binary: bool) -> Tensor:
    """:func:`hamming_errors` for binary data, else :func:`squared_errors`: ``[B, M]``."""
    return hamming_errors(retrieved, patterns) if binary else squared_errors(retrieved, patterns)


def summarize_batches(batch_scores: Sequence[float] | Tensor) -> dict[str, float]:
    """Mean and 5/95 percentiles (linear interpolation) of per-batch scores.

    Args:
        batch_scores: one score per evaluation batch (e.g. its mean error per image).

    Returns:
        ``{"mean", "p5", "p95"}``.

    Raises:
        ValueError: no scores.
    """
    scores = torch.as_tensor(batch_scores, dtype=torch.float64).flatten()
    if scores.numel() == 0:
        raise ValueError("summarize_batches needs at least one batch score; evaluate at least one batch")
    p5, p95 = torch.quantile(scores, torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
    return {"mean": float(scores.mean()), "p5": p5, "p95": p95}


# ------------------------------------------------------------------------------------------------------- grids
def image_grid(images: Tensor, padding: int = 2, pad_value: float = 0.5) -> Tensor:
    """Tile ``[rows, cols, C, H, W]`` images into one ``[C, rows·(H+p)+p, cols·(W+p)+p]`` image with borders.

    A plain-torch ``make_grid`` for :meth:`SummaryWriter.add_image` (``dataformats="CHW"``).

    Args:
        images: ``[rows, cols, C, H, W]``.
        padding: border width in pixels, around and between the images.
        pad_value: colour of the border.

    Returns:
        ``[C, rows·(H + padding) + padding, cols·(W + padding) + padding]``.
    """
    if images.dim() != 5:
        raise ValueError(f"image_grid needs images [rows, cols, C, H, W], got shape {tuple(images.shape)}")
    R, K, C, H, W = images.shape
    framed = F.pad(images, (0, padding, 0, padding), value=pad_value)  # [R, K, C, H+p, W+p]: right and bottom
    tiled = framed.permute(2, 0, 3, 1, 4).reshape(C, R * (H + padding), K * (W + padding))  # [C, R(H+p), K(W+p)]
    return F.pad(tiled, (padding, 0, padding, 0), value=pad_value)  # the top and left border


def _rows(batch_size: int, num_patterns: int, rows: int) -> tuple[Tensor, Tensor]:
    """``(episode, pattern)`` indices of ``rows`` cells: pattern 0 of each episode first, then pattern 1, ..."""
    i = torch.arange(min(rows, batch_size * num_patterns))
    return i % batch_size, i // batch_size


def iteration_grid(
    patterns: Tensor, iterates: Tensor, energies: Tensor, original_energies: Tensor, rows: int = 4, **grid: Any
) -> tuple[Tensor, Tensor]:
    """The paper's Figs 2 and 4: read iterations of a few patterns, with the energy of each cell.

    Row ``i`` shows pattern ``i // B`` of episode ``i % B`` (several episodes first); columns are the query
    ``x⁽⁰⁾``, the iterates ``x⁽¹⁾..x⁽ᴷ⁾`` and the original.

    Args:
        patterns: ``[B, M, C, H, W]`` originals.
        iterates: ``[K + 1, B, M, C, H, W]`` (``ReadResult.iterates``).
        energies: ``[K + 1, B, M]`` energies of the iterates (``ReadResult.energies``).
        original_energies: ``[B, M]`` energies of the originals under the same memory.
        rows: number of rows (at most ``B·M``).
        **grid: ``padding`` and ``pad_value`` of :func:`image_grid`.

    Returns:
        ``(grid [C, H', W'], cell_energies [rows, K + 2])``.
    """
    b, m = _rows(patterns.shape[0], patterns.shape[1], rows)
    cells = torch.cat([iterates[:, b, m].transpose(0, 1), patterns[b, m].unsqueeze(1)], dim=1)  # [R, K+2, C, H, W]
    cell_energies = torch.cat([energies[:, b, m].t(), original_energies[b, m].unsqueeze(1)], dim=1)  # [R, K+2]
    return image_grid(cells.detach().float().cpu(), **grid), cell_energies.detach().float().cpu()


def grid_column_names(num_columns: int) -> list[str]:
    """Names of :func:`iteration_grid`'s columns: ``query``, ``k=1`` .. ``k=K``, ``original`` (K + 2 columns)."""
    return ["query", *(f"k={k}" for k in range(1, num_columns - 1)), "original"]


def energy_table(cell_energies: Tensor) -> str:
    """A markdown table of :func:`iteration_grid`'s energies: one row per grid row, columns as in the grid."""
    R, cols = cell_energies.shape
    names = grid_column_names(cols)
    lines = ["|row|" + "|".join(names) + "|", "|-" * (cols + 1) + "|"]
    lines += [f"|{r}|" + "|".join(f"{e:.4g}" for e in cell_energies[r].tolist()) + "|" for r in range(R)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ Fig. 6 energy classes
def draw_non_memories(num_images: int, written: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """Indices of images that an episode did not write: ``count`` per episode, without replacement.

    Args:
        num_images: size of the split the indices point into.
        written: ``[B, N]`` indices of the written patterns of each episode.
        count: non-memories per episode, at most ``num_images − N``.
        generator: the source of randomness (on ``written``'s device).

    Returns:
        ``[B, count]`` indices, none of them in the same row of ``written``.
    """
    B, N = written.shape
    if not 0 <= count <= num_images - N:
        raise ValueError(f"count must lie in [0, num_images - N = {num_images - N}], got {count}")
    keys = torch.rand(B, num_images, generator=generator, device=written.device)  # [B, num_images]
    keys.scatter_(1, written, 2.0)  # written images sort last
    return keys.argsort(dim=1)[:, :count]


def energy_classes(
    memory: EBMMemory,
    state: MemoryState,
    patterns: Tensor,
    queries: Tensor,
    non_memories: Tensor | None = None,
    ood: Tensor | None = None,
) -> dict[str, Tensor]:
    """Energies of the pattern classes of the paper's Fig. 6 under a written memory, in one forward pass.

    Args:
        memory: the memory.
        state: the memory written with ``patterns`` (``B`` episodes).
        patterns: ``[B, N, C, H, W]`` the written patterns ("memories").
        queries: ``[B, N, C, H, W]`` their distorted versions ("distorted memories").
        non_memories: optional ``[B, N', C, H, W]`` images of the same data that were not written.
        ood: optional ``[B, N'', C, H, W]`` out-of-distribution images (the paper: binarised CIFAR).

    Returns:
        ``{"memories": [B, N], "distorted_memories": [B, N], "non_memories": [B, N'], "ood": [B, N'']}`` (the last
        two only when given).
    """
    parts = {"memories": patterns, "distorted_memories": queries, "non_memories": non_memories, "ood": ood}
    parts = {k: v for k, v in parts.items() if v is not None and v.shape[1] > 0}
    sizes = [v.shape[1] for v in parts.values()]
    energies = memory.energy(torch.cat(list(parts.values()), dim=1), state.fast_weights)  # [B, sum(sizes)]
    return dict(zip(parts, energies.split(sizes, dim=1), strict=True))


def match_images(images: Tensor, data_shape: tuple[int, int, int], binary: bool) -> Tensor:
    """Bring images of another data set to ``data_shape`` (for out-of-distribution energies, Fig. 6).

    Colour to grey is the channel mean, grey to colour repeats the channel; the size changes by area averaging
    (down) or bilinear interpolation (up); binary targets are thresholded at 0.5 (the paper's "binarized CIFAR").

    Args:
        images: ``[K, C', H', W']`` float in [0, 1] (or uint8 0..255).
        data_shape: ``(C, H, W)`` of the memory's patterns.
        binary: threshold at 0.5.

    Returns:
        ``[K, C, H, W]`` float32.
    """
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    C, H, W = data_shape
    if x.shape[1] != C:
        if C == 1:
            x = x.mean(dim=1, keepdim=True)
        elif x.shape[1] == 1:
            x = x.expand(-1, C, -1, -1)
        else:
            raise ValueError(f"cannot map {x.shape[1]}-channel images to {C} channels; give 1- or {C}-channel images")
    if tuple(x.shape[-2:]) != (H, W):
        down = x.shape[-2] >= H and x.shape[-1] >= W
        x = F.interpolate(x, size=(H, W), mode="area") if down else F.interpolate(x, (H, W), mode="bilinear")
    x = x.clamp(0.0, 1.0)
    return (x > 0.5).float() if binary else x.contiguous()


def familiarity_auroc(memories: Tensor, others: Tensor) -> float:
    """How well a low energy tells memories from another class: ``P(E(other) > E(memory)) + ½·P(tie)``.

    The area under the ROC curve of the energy as a familiarity score (Mann–Whitney U with average ranks for
    ties): 1 when every memory has a lower energy than every other pattern, 0.5 at chance.

    Args:
        memories: ``[n]`` energies of written patterns (any shape, flattened).
        others: ``[m]`` energies of the other class, e.g. non-memories (any shape, flattened).

    Returns:
        The AUROC in [0, 1].

    Raises:
        ValueError: either class is empty or holds non-finite energies.
    """
    a, b = memories.detach().flatten().double().cpu(), others.detach().flatten().double().cpu()
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("familiarity_auroc needs energies of both classes; got an empty tensor")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("familiarity_auroc got non-finite energies; the memory diverged, check the checkpoint")
    values, inverse, counts = torch.unique(torch.cat([a, b]), return_inverse=True, return_counts=True)
    ranks = (torch.cumsum(counts, 0) - (counts - 1) / 2.0).double()  # [U] 1-based average rank of each value
    rank_sum = ranks[inverse[a.numel() :]].sum()  # ranks of the other class
    m = b.numel()
    return float((rank_sum - m * (m + 1) / 2.0) / (a.numel() * m))


def noise_images(count: int, data_shape: tuple[int, int, int], binary: bool, generator: torch.Generator) -> Tensor:
    """Out-of-distribution images of pure noise: random 0/1 pixels on binary data, uniform [0, 1] otherwise.

    Args:
        count: number of images, ``K``.
        data_shape: ``(C, H, W)``.
        binary: draw 0/1 pixels with equal odds.
        generator: the source of randomness (CPU).

    Returns:
        ``[K, C, H, W]`` float32.
    """
    x = torch.rand(count, *data_shape, generator=generator)
    return (x > 0.5).float() if binary else x


@torch.no_grad()
def episode_errors(
    memory: EBMMemory | None, sampler: UniformBatchSampler | ClassBatchSampler, num_episodes: int, seed: int = 0
) -> Tensor:
    """Mean retrieval error per image of each of ``num_episodes`` test episodes (the paper's error bars, App. A).

    An episode writes ``N`` images into a fresh memory and reads each back from its distorted version (the
    paper's "batch of N images"); its score is the mean :func:`retrieval_errors` over its ``N`` images.
    The sampler's ``B`` episodes are processed together; the same ``seed`` gives the same episodes, so models
    evaluated with one seed see the same images and distortions (paired comparisons).

    Args:
        memory: the (meta-trained) memory, on the sampler's device; ``None`` scores the distorted queries
            themselves (no retrieval: the error a memory must beat).
        sampler: draws ``(patterns [B, N, C, H, W], queries, known_mask)``; its data set decides the metric.
        num_episodes: episodes to score (the paper: 1000).
        seed: seed of the episodes.

    Returns:
        ``[num_episodes]`` float64 scores (CPU).

    Raises:
        ValueError: ``num_episodes < 1`` or images of another shape than the memory's patterns.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    data_shape = sampler.dataset.data_shape
    if memory is not None and tuple(memory.data_shape) != data_shape:
        raise ValueError(
            f"the memory stores patterns of shape {tuple(memory.data_shape)} but {sampler.dataset.name} images are "
            f"{data_shape}; evaluate on the data set (and image size) the model was trained on"
        )
    generator = torch.Generator(device=sampler.device).manual_seed(seed)
    scores, done = [], 0
    while done < num_episodes:
        patterns, queries, known = sampler(generator)  # [B, N, C, H, W]
        retrieved = queries if memory is None else memory.read(queries, memory.write(patterns), known).retrieved
        scores.append(retrieval_errors(retrieved, patterns, sampler.dataset.binary).mean(dim=1).double().cpu())  # [B]
        done += patterns.shape[0]
    return torch.cat(scores)[:num_episodes]


# ------------------------------------------------------------------------------------------------- evaluator
@dataclass
class EvalResult:
    """What one :meth:`ImageEvaluator.evaluate` found.

    Attributes:
        metrics: scalars: ``{metric}``, ``{metric}_p5``, ``{metric}_p95`` (``metric`` is :func:`metric_name`),
            ``energy_query``, ``energy_k1``..``energy_kK``, ``energy_original`` (means over the first batch), and
            the mean energy of each class of :attr:`energies`.
        batch_scores: ``[num_batches]`` mean error per image of each batch.
        grid: ``[C, H', W']`` :func:`iteration_grid` of the first batch.
        cell_energies: ``[rows, K + 2]`` energies of the grid's cells.
        energies: Fig. 6 energies by class, each flattened over all evaluation batches.
        episode_scores: ``[num_batches · B]`` mean error per image of each episode (the paper's "batch").
        reference_scores: the same per-episode errors of two answers that use no memory, on the same episodes:
            ``"no_retrieval"`` (the distorted query itself) and ``"blank"`` (an all-zero image: the background of
            Omniglot and MNIST, black for colour images).
    """

    metrics: dict[str, float]
    batch_scores: Tensor
    grid: Tensor
    cell_energies: Tensor
    energies: dict[str, Tensor] = field(repr=False)
    episode_scores: Tensor = field(default_factory=lambda: torch.zeros(0), repr=False)
    reference_scores: dict[str, Tensor] = field(default_factory=dict, repr=False)


class ImageEvaluator:
    """Retrieval error on held-out images, iteration grids and energy classes: a ``MetaTrainer`` callback.

    Every call evaluates the same batches (drawn from a generator seeded with ``seed``), so successive
    evaluations during training are comparable. Non-memories are drawn from the same split, excluding each
    episode's written images; ``ood`` images, if given, are scored too.

    Args:
        dataset: the evaluation split.
        distortion: the query distortion (e.g. :func:`query_distortion`).
        batch_size: episodes per batch, ``B``.
        num_patterns: images written per episode, ``N``.
        classes_per_episode: ``None`` for uniform episodes, ``k`` for episodes of exactly k classes (App. A.7).
        num_batches: batches per evaluation (the paper: 1000).
        seed: seed of the evaluation batches.
        device: where the batches are made (the memory must be there).
        grid_rows: rows of the iteration grid.
        ood: optional ``[K, C, H, W]`` out-of-distribution images in the memory's format (:func:`match_images`).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        distortion: Distortion,
        batch_size: int,
        num_patterns: int,
        *,
        classes_per_episode: int | None = None,
        num_batches: int = 20,
        seed: int = 0,
        device: str | torch.device = "cpu",
        grid_rows: int = 4,
        ood: Tensor | None = None,
    ) -> None:
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.sampler = make_sampler(dataset, distortion, batch_size, num_patterns, classes_per_episode, device)
        self.device = self.sampler.device
        self.binary = dataset.binary
        self.metric = metric_name(dataset.binary)
        self.num_batches = num_batches
        self.seed = seed
        self.grid_rows = grid_rows
        self.num_non_memories = min(num_patterns, len(dataset) - num_patterns)
        if ood is not None and tuple(ood.shape[1:]) != dataset.data_shape:
            raise ValueError(
                f"ood images must have the data set's shape {dataset.data_shape}, got {tuple(ood.shape[1:])}; "
                f"convert them with match_images"
            )
        self.ood = None if ood is None else ood.to(self.device)
        self._writer: Callable[[], Any] | None = None
        self._step: Callable[[], int] | None = None

    def log_to(self, writer: Callable[[], Any], step: Callable[[], int]) -> None:
        """Log grids, energy tables and histograms to TensorBoard on every call.

        Args:
            writer: returns the ``SummaryWriter`` (or ``None`` to skip logging), e.g. the trainer's.
            step: returns the global step to log at, e.g. ``lambda: trainer.step``.
        """
        self._writer, self._step = writer, step

    def _batch(self, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """``(patterns, queries, known_mask, non_memories)`` of one batch."""
        index = self.sampler.sample_indices(generator)  # [B, N]
        images = self.sampler.images
        patterns = _as_float(images[index])  # [B, N, C, H, W]
        queries, known = self.sampler.distortion(patterns, generator)
        other = draw_non_memories(len(images), index, self.num_non_memories, generator)  # [B, N']
        return patterns, queries, known, _as_float(images[other])

    @torch.no_grad()
    def evaluate(self, memory: EBMMemory) -> EvalResult:
        """Write, read and score ``num_batches`` batches; energies of the first batch's iterates for the grid."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        scores, episode_scores, classes = [], [], {}
        references: dict[str, list[Tensor]] = {"no_retrieval": [], "blank": []}
        grid = cell_energies = None
        metrics: dict[str, float] = {}
        for i in range(self.num_batches):
            patterns, queries, known, others = self._batch(generator)
            B = patterns.shape[0]
            ood = None
            if self.ood is not None:  # N'' = N random ood images per episode
                pick = torch.randint(0, len(self.ood), (B, patterns.shape[1]), generator=generator, device=self.device)
                ood = self.ood[pick]
            state = memory.write(patterns)
            result = memory.read(queries, state, known, compute_energies=i == 0)
            errors = retrieval_errors(result.retrieved, patterns, self.binary)  # [B, N]
            scores.append(float(errors.mean()))
            episode_scores.append(errors.mean(dim=1).double().cpu())
            for name, answer in (("no_retrieval", queries), ("blank", torch.zeros_like(patterns))):
                references[name].append(retrieval_errors(answer, patterns, self.binary).mean(dim=1).double().cpu())
            for name, e in energy_classes(memory, state, patterns, queries, others, ood).items():
                classes.setdefault(name, []).append(e.flatten().float().cpu())
            if i == 0:
                grid, cell_energies = iteration_grid(
                    patterns, result.iterates, result.energies, classes["memories"][0].view(B, -1), self.grid_rows
                )
                means = result.energies.mean(dim=(1, 2)).tolist()  # [K + 1]
                metrics["energy_query"] = means[0]
                metrics.update({f"energy_k{k}": e for k, e in enumerate(means[1:], start=1)})
                metrics["energy_original"] = float(classes["memories"][0].mean())
        summary = summarize_batches(scores)
        metrics = {
            self.metric: summary["mean"],
            f"{self.metric}_p5": summary["p5"],
            f"{self.metric}_p95": summary["p95"],
            **metrics,
        }
        energies = {name: torch.cat(parts) for name, parts in classes.items()}
        metrics.update({f"energy_{name}": float(e.mean()) for name, e in energies.items()})
        reference_scores = {name: torch.cat(parts) for name, parts in references.items()}
        return EvalResult(
            metrics, torch.tensor(scores), grid, cell_energies, energies, torch.cat(episode_scores), reference_scores
        )

    def log(self, result: EvalResult, writer: Any, step: int) -> None:
        """Write ``result`` to a ``SummaryWriter``.

        Tags: ``read/iterations`` (the iteration grid), ``read/energies`` (its energies, a text table) and
        ``energy/<class>`` (histograms of the Fig. 6 energy classes).
        """
        writer.add_image("read/iterations", result.grid, step, dataformats="CHW")
        writer.add_text("read/energies", energy_table(result.cell_energies), step)
        for name, values in result.energies.items():
            if values.numel() and bool(torch.isfinite(values).all()):
                writer.add_histogram(f"energy/{name}", values, step)

    def __call__(self, memory: EBMMemory) -> dict[str, float]:
        """Evaluate (and log, see :meth:`log_to`); returns :attr:`EvalResult.metrics`."""
        result = self.evaluate(memory)
        writer = self._writer() if self._writer is not None else None
        if writer is not None:
            self.log(result, writer, self._step() if self._step is not None else 0)
        return result.metrics


def _as_float(images: Tensor) -> Tensor:
    """uint8 0..255 to float32 in [0, 1]; float images unchanged."""
    return images.float().mul_(1.0 / 255.0) if images.dtype == torch.uint8 else images

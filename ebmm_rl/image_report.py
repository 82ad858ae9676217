"""Tables and PNG plots of the image memory benchmarks (Figs 3, 5, 6, 9, 10, Tables 2, 3), with the paper's numbers.

* :data:`PAPER_POINTS`: the retrieval errors the paper prints as numbers (Table 3: EBMM on Omniglot batches of 32
  images at 4K and 5K memory; Table 2: the memory-free denoising auto-encoder and VAE under block and
  salt-and-pepper noise, and the Deep Image Prior on ImageNet). Its figures give no numbers.
* :func:`markdown_table`: a GitHub table from rows of values.
* :func:`plot_errors`: error against a setting (memory size, noise level) with a 5–95 percentile band and the
  paper's points as labelled markers or lines.
* :func:`plot_energy_histograms`: Fig. 6, one histogram per class of patterns.
* :func:`save_png`: an image grid (:func:`ebmm_rl.image_eval.iteration_grid`) as a PNG.

Plots use matplotlib's ``Agg`` backend (no display needed); matplotlib is part of the ``dev`` extra.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "PAPER_POINTS",
    "PaperPoint",
    "markdown_table",
    "paper_points",
    "plot_energy_histograms",
    "plot_errors",
    "save_png",
]


@dataclass(frozen=True)
class PaperPoint:
    """A retrieval error the paper reports as a number.

    Attributes:
        dataset: data set name (``"omniglot"``, ``"cifar10"``, ``"imagenet64"``).
        label: what was measured, for legends and table rows.
        value: the error (Hamming distance on Omniglot, squared error otherwise), per image.
        memory_size: memory size in floats, or ``None`` for a model without memory (a horizontal line in plots).
        num_patterns: images written per episode, ``N``, or ``None`` when it does not apply.
        source: where in the paper.
        noise: the query distortion it was measured under (:func:`ebmm_rl.image_eval.query_distortion` at its
            default size: ``"block"``, a random block of half the image side, or ``"salt_pepper"``, 15 %).
    """

    dataset: str
    label: str
    value: float
    memory_size: int | None
    num_patterns: int | None
    source: str
    noise: str = "block"


PAPER_POINTS = (
    PaperPoint("omniglot", "paper EBMM, uniform batches", 7.18, 4000, 32, "Table 3"),
    PaperPoint("omniglot", "paper EBMM, uniform batches", 5.37, 5000, 32, "Table 3"),
    PaperPoint("omniglot", "paper EBMM, 2-class batches", 6.22, 4000, 32, "Table 3"),
    PaperPoint("omniglot", "paper EBMM, 2-class batches", 2.57, 5000, 32, "Table 3"),
    PaperPoint("omniglot", "paper DAE (no memory)", 36.08, None, None, "Table 2"),
    PaperPoint("cifar10", "paper DAE (no memory)", 24.66, None, None, "Table 2"),
    PaperPoint("imagenet64", "paper DAE (no memory)", 141.07, None, None, "Table 2"),
    PaperPoint("omniglot", "paper VAE (no memory)", 109.08, None, None, "Table 2"),
    PaperPoint("cifar10", "paper VAE (no memory)", 544.72, None, None, "Table 2"),
    PaperPoint("omniglot", "paper DAE (no memory)", 9.57, None, None, "Table 2", "salt_pepper"),
    PaperPoint("cifar10", "paper DAE (no memory)", 8.82, None, None, "Table 2", "salt_pepper"),
    PaperPoint("omniglot", "paper VAE (no memory)", 84.08, None, None, "Table 2", "salt_pepper"),
    PaperPoint("cifar10", "paper VAE (no memory)", 430.33, None, None, "Table 2", "salt_pepper"),
    PaperPoint("imagenet64", "paper Deep Image Prior (no memory, told the block)", 170.36, None, None, "Table 2"),
    PaperPoint("imagenet64", "paper Deep Image Prior (no memory)", 467.92, None, None, "Table 2", "salt_pepper"),
)
"""The paper's numeric errors, under its main distortion (a random block of a quarter of the image) unless
``noise`` says otherwise (Table 2's 15 % salt-and-pepper rows).

Table 3 used the lower-conv model of App. C.5 (memory in the second residual block); Table 2's DAE has a
256-unit bottleneck and no memory. Figs 3 and 5 are plots without printed values.
"""


def paper_points(
    dataset: str, num_patterns: int | None = None, batches: str | None = None, noise: str = "block"
) -> list[PaperPoint]:
    """The :data:`PAPER_POINTS` of ``dataset`` under ``noise``.

    Args:
        dataset: data set name.
        num_patterns: keep memory points measured at this ``N`` only (memory-free points are always kept).
        batches: ``"uniform"`` or ``"2-class"`` keeps only Table 3's row of that batch kind; ``None`` keeps both.
        noise: the query distortion (``"block"``, ``"salt_pepper"``; others have no paper points).

    Returns:
        The matching points, in :data:`PAPER_POINTS` order.
    """
    points = [p for p in PAPER_POINTS if p.dataset == dataset and p.noise == noise]
    if num_patterns is not None:
        points = [p for p in points if p.num_patterns in (None, num_patterns)]
    if batches is not None:
        points = [p for p in points if p.memory_size is None or batches in p.label]
    return points


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub markdown table; floats are printed with ``digits`` decimals, ``None`` as ``–``.

    Args:
        header: column names.
        rows: one sequence of values per row, as long as ``header``.
        digits: decimals of floats.

    Returns:
        The table, one line per row, no trailing newline.
    """

    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} values for {len(header)} columns: {row}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(
            "plots need matplotlib: pip install matplotlib (or the dev extra, pip install -e .[dev])"
        ) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_errors(
    x: Sequence[float],
    summaries: Sequence[Mapping[str, float]],
    path: str | os.PathLike[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    label: str | Sequence[str] = "this model",
    references: Sequence[PaperPoint] = (),
    marker_x: float | None = None,
    log_x: bool = False,
) -> Path:
    """Error against a setting: the mean as a line with a shaded 5–95 percentile band (Figs 3, 5, 9).

    Args:
        x: ``[S]`` settings (memory sizes, block sizes, noise probabilities); empty when ``references`` alone
            are drawn (e.g. only memory-free models, as horizontal lines).
        summaries: ``[S]`` ``{"mean", "p5", "p95"}`` (:func:`ebmm_rl.image_eval.summarize_batches`).
        path: the PNG to write (folders are created).
        xlabel: x-axis label.
        ylabel: y-axis label (the metric).
        title: plot title.
        label: legend entry of the line, or ``[S]`` entries, one per setting: settings with the same entry form
            one line (e.g. models trained for different numbers of steps).
        references: paper (or measured memory-free) points: those with a memory size as labelled markers at
            that size, the others as labelled horizontal dashed lines.
        marker_x: draw a dotted vertical line here (e.g. the noise level the model was trained with).
        log_x: logarithmic x axis.

    Returns:
        ``path``.
    """
    if len(x) != len(summaries) or not (x or references):
        raise ValueError(
            f"plot_errors needs one summary per setting and at least one setting or reference; got {len(x)} "
            f"settings, {len(summaries)} summaries and {len(references)} references"
        )
    labels = [label] * len(x) if isinstance(label, str) else list(label)
    if len(labels) != len(x):
        raise ValueError(f"plot_errors got {len(labels)} labels for {len(x)} settings; give one label or one each")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=100)
    lines = list(dict.fromkeys(labels))  # in order of first appearance
    for c, name in enumerate(lines):
        order = sorted((i for i in range(len(x)) if labels[i] == name), key=lambda i: x[i])
        xs = [x[i] for i in order]
        mean, p5, p95 = ([summaries[i][k] for i in order] for k in ("mean", "p5", "p95"))
        below = [m - lo for m, lo in zip(mean, p5, strict=True)]
        above = [hi - m for m, hi in zip(mean, p95, strict=True)]
        ax.errorbar(xs, mean, yerr=[below, above], fmt="o-", color=f"C{c}", capsize=3, label=f"{name}, 5–95 percentile")
        if len(xs) > 1:
            ax.fill_between(xs, p5, p95, color=f"C{c}", alpha=0.2)
    markers = iter("xs^vD")
    for i, (name, group) in enumerate(_group(references).items(), start=len(lines) - 1):
        sized = [p for p in group if p.memory_size is not None]
        if sized:
            ax.plot(
                [p.memory_size for p in sized],
                [p.value for p in sized],
                next(markers, "x"),
                color=f"C{i + 1}",
                markersize=8,
                label=f"{name} ({sized[0].source}, N={sized[0].num_patterns})",
            )
        for p in group:
            if p.memory_size is None:
                style = "-." if p.source == "measured" else "--"
                ax.axhline(p.value, linestyle=style, color=f"C{i + 1}", label=f"{name} ({p.source})")
    if marker_x is not None:
        ax.axvline(marker_x, linestyle=":", color="gray", label="trained with")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(textwrap.fill(title, 90), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, plt, path)


def _group(points: Sequence[PaperPoint]) -> dict[str, list[PaperPoint]]:
    groups: dict[str, list[PaperPoint]] = {}
    for p in points:
        groups.setdefault(p.label, []).append(p)
    return groups


def plot_energy_histograms(
    energies: Mapping[str, Tensor], path: str | os.PathLike[str], *, title: str = "", bins: int = 60
) -> Path:
    """Fig. 6: overlaid histograms (densities) of the energies of each class of patterns.

    Args:
        energies: class name -> ``[n]`` energies (any shape, flattened); non-finite values are dropped.
        path: the PNG to write.
        title: plot title.
        bins: histogram bins, shared by all classes.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    values = {k: v.detach().flatten().double().cpu() for k, v in energies.items()}
    values = {k: v[torch.isfinite(v)] for k, v in values.items()}
    values = {k: v for k, v in values.items() if v.numel()}
    if not values:
        raise ValueError("plot_energy_histograms got no finite energies")
    lo = min(float(v.min()) for v in values.values())
    hi = max(float(v.max()) for v in values.values())
    edges = torch.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1).tolist()
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=100)
    for i, (name, v) in enumerate(values.items()):
        ax.hist(v.numpy(), bins=edges, density=True, alpha=0.45, color=f"C{i}", label=f"{name} (n={v.numel()})")
    ax.set_xlabel("energy")
    ax.set_ylabel("density")
    if title:
        ax.set_title(textwrap.fill(title, 90), fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_png(
    image: Tensor,
    path: str | os.PathLike[str],
    scale: int = 3,
    column_labels: Sequence[str] | None = None,
    padding: int = 2,
) -> Path:
    """Write ``image [C, H, W]`` (values in [0, 1], C = 1 or 3) as a PNG, enlarged ``scale`` times (nearest pixel).

    Args:
        image: ``[C, H, W]``, e.g. :func:`ebmm_rl.image_eval.iteration_grid`'s grid.
        path: the PNG to write.
        scale: integer enlargement factor.
        column_labels: names written above the grid's columns, centred on each (e.g.
            :func:`ebmm_rl.image_eval.grid_column_names`): the grid is taken to be ``len(column_labels)`` equal
            columns separated by ``padding`` pixels, as :func:`ebmm_rl.image_eval.image_grid` lays them out.
        padding: the grid's border width in pixels (before scaling), used to centre the labels.

    Returns:
        ``path``.
    """
    from PIL import Image, ImageDraw

    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"save_png needs an image [C, H, W] with C = 1 or 3, got shape {tuple(image.shape)}")
    pixels = (image.detach().float().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)  # [C, H, W]
    pixels = pixels.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)  # [C, sH, sW]
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()  # [sH, sW(, 3)]
    picture = Image.fromarray(array)
    if column_labels:
        header = 14  # pixels: pillow's default bitmap font is 11 high
        labelled = Image.new(picture.mode, (picture.width, picture.height + header), "white")
        labelled.paste(picture, (0, header))
        draw = ImageDraw.Draw(labelled)
        pitch = (picture.width - padding * scale) / len(column_labels)  # one cell plus its right border
        for i, label in enumerate(column_labels):
            centre = padding * scale + (i + 0.5) * pitch - padding * scale / 2
            width = draw.textlength(label)
            draw.text((centre - width / 2, 1), label, fill="black")
        picture = labelled
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path

"""Analyses of one meta-trained image memory (paper §4.4, App. A.5–A.7): four subcommands.

* ``energy`` (Fig. 6): energies of memories (written patterns), non-memories (test images not written), distorted
  memories (the queries) and out-of-distribution images (``--ood``: binarised CIFAR-10 as in the paper, MNIST,
  or pure noise); a histogram, summary statistics and the AUROC of the energy as a familiarity score (memories
  against each other class), plus the read-iteration grid of a few test patterns (Fig. 2).
* ``noise`` (Fig. 9): retrieval error at noise levels other than the trained one (block sides in pixels, or
  salt-and-pepper / dropout probabilities, gaussian std); a table and a plot.
* ``correlated`` (Table 3): retrieval error on uniform test batches and on batches of exactly k classes (App. A.7).
* ``mnist`` (Fig. 10): an Omniglot model reads MNIST digits, upscaled to its image size and binarised, with no
  fine-tuning; error and energies next to the same model on its own test split, and the read-iteration grid.

Errors are per image (Hamming distance on binary data, squared error otherwise), averaged over each episode's N
images; tables give the mean over ``--num-batches`` test episodes and the 5th/95th percentiles (the paper: 1000).
Outputs go to ``--out-dir`` as ``<subcommand>.md`` and PNGs.

Examples::

    python scripts/eval_image_memory.py energy --checkpoint runs/<run>/checkpoint.pt --ood noise --threads 1
    python scripts/eval_image_memory.py noise --checkpoint runs/<run>/checkpoint.pt --levels 8 12 16 20 24
    python scripts/eval_image_memory.py correlated --checkpoint runs/<run>/checkpoint.pt --classes-per-episode 2 4
    python scripts/eval_image_memory.py mnist --checkpoint runs/<run>/checkpoint.pt     # needs $EBMM_DATA_DIR/mnist
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import torch
import tyro
from eval_distortion_rate import (
    METRIC_LABELS,
    check_shape,
    describe_training,
    distortion_for,
    episode_sampler,
    open_memory,
    score,
)
from meta_train_images import Dataset, Noise, load_data

from ebmm_rl.data import ImageDataset
from ebmm_rl.image_eval import (
    EvalResult,
    ImageEvaluator,
    energy_table,
    familiarity_auroc,
    grid_column_names,
    match_images,
    metric_name,
    noise_images,
    summarize_batches,
)
from ebmm_rl.image_report import markdown_table, paper_points, plot_energy_histograms, plot_errors, save_png
from ebmm_rl.memory import EBMMemory

DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "block": (8, 12, 16, 20, 24),
    "erase": (8, 12, 16, 20, 24),
    "salt_pepper": (0.05, 0.1, 0.15, 0.2, 0.3, 0.4),
    "dropout": (0.1, 0.25, 0.4, 0.6),
    "gaussian": (0.05, 0.1, 0.2, 0.3),
}
"""Noise levels of ``noise`` when ``--levels`` is not given (block sides for 32x32 images; Fig. 9 goes to 20x20)."""

DEFAULT_SIZES = {"salt_pepper": 0.15, "dropout": 0.25, "gaussian": 0.1}
""":func:`ebmm_rl.image_eval.query_distortion`'s defaults; blocks default to half the image side."""


@dataclass
class Common:
    """Settings shared by every analysis."""

    checkpoint: str
    """the trained memory: checkpoint.pt / best.pt of a meta_train_images run, or a save_memory file"""
    dataset: Dataset = "omniglot"
    """data set the model was trained on; its test split is evaluated"""
    data_dir: str | None = None
    """folder holding omniglot/, cifar10/, mnist/, imagenet64/ (default: $EBMM_DATA_DIR)"""
    mnist_dir: str | None = None
    """folder holding the MNIST IDX files (default: <data-dir>/mnist)"""
    noise: Noise = "block"
    """query distortion (paper: block)"""
    clamp_known: bool = False
    """tell the reader which pixels are intact (the paper does not)"""
    num_patterns: int = 32
    """images written per episode, N"""
    num_batches: int = 1000
    """test episodes per setting (the paper's error bars: 1000)"""
    episodes_per_pass: int = 8
    """episodes written and read together (speed; it changes which episodes are drawn, not their distribution)"""
    seed: int = 0
    """seed of the test episodes"""
    out_dir: str = "runs/image_eval"
    """where tables and PNGs go"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    threads: int = 0
    """CPU threads for torch (0: torch's default; 1 is fastest on a busy machine)"""


@dataclass
class Distorted(Common):
    """Settings of the analyses that use one distortion."""

    noise_size: float | None = None
    """block side in pixels (default: half the image side), or salt_pepper/dropout probability, gaussian std"""


@dataclass
class EnergyArgs(Distorted):
    """Fig. 6: energies of memories, non-memories, distorted memories and out-of-distribution images."""

    ood: Literal["cifar10", "mnist", "noise", "none"] = "cifar10"
    """out-of-distribution images: binarised CIFAR-10 test images (the paper), MNIST, pure noise, or none"""
    ood_images: int = 1000
    """out-of-distribution images to draw from (episodes sample N of them each)"""
    bins: int = 60
    """histogram bins"""
    grid_rows: int = 8
    """test patterns in the read-iteration grid (energy_grid.png)"""


@dataclass
class NoiseArgs(Common):
    """Fig. 9: retrieval error at other noise levels than the trained one."""

    levels: list[float] = field(default_factory=list)
    """noise levels: block sides in pixels, or probabilities / std (default: DEFAULT_LEVELS of --noise)"""


@dataclass
class CorrelatedArgs(Distorted):
    """Table 3: uniform test batches against batches of exactly k classes."""

    classes_per_episode: list[int] = field(default_factory=lambda: [2])
    """k of the correlated batches (App. A.7: 2)"""


@dataclass
class MnistArgs(Distorted):
    """Fig. 10: Omniglot-to-MNIST transfer, no fine-tuning."""

    grid_rows: int = 8
    """MNIST test patterns in the read-iteration grid (mnist_grid.png)"""
    bins: int = 60
    """histogram bins of mnist_energy.png"""


Command = Union[  # noqa: UP007  (tyro reads the subcommand names from this Union)
    Annotated[EnergyArgs, tyro.conf.subcommand("energy")],
    Annotated[NoiseArgs, tyro.conf.subcommand("noise")],
    Annotated[CorrelatedArgs, tyro.conf.subcommand("correlated")],
    Annotated[MnistArgs, tyro.conf.subcommand("mnist")],
]


# ---------------------------------------------------------------------------------------------------- helpers
def setup(args: Common) -> tuple[EBMMemory, dict[str, Any], ImageDataset, Path]:
    """Threads, the memory (with its training record), the test split and the output folder."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"no checkpoint at {args.checkpoint}; pass --checkpoint runs/<run>/checkpoint.pt")
    memory, info = open_memory(args.checkpoint, args.device)
    test = load_data(args.data_dir, args.dataset, "test", args.mnist_dir)
    print(f"{args.checkpoint}: memory size {memory.memory_size}; {describe_training(info, args)}", flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return memory, info, test, out


def full_evaluation(args: Distorted, memory: EBMMemory, data: ImageDataset, ood: torch.Tensor | None, rows: int):
    """:class:`ImageEvaluator` over ``ceil(num_batches / episodes_per_pass)`` passes: errors, energies, grid."""
    check_shape(memory, data)
    passes = math.ceil(args.num_batches / args.episodes_per_pass)
    distortion = distortion_for(data, args.noise, args.noise_size, args.clamp_known)
    try:
        evaluator = ImageEvaluator(
            data,
            distortion,
            args.episodes_per_pass,
            args.num_patterns,
            num_batches=passes,
            seed=args.seed,
            device=args.device,
            grid_rows=rows,
            ood=ood,
        )
    except ValueError as err:
        raise SystemExit(f"{data.name} {data.split}: {err}") from None
    result = evaluator.evaluate(memory)
    result.episode_scores = result.episode_scores[: args.num_batches]
    result.reference_scores = {k: v[: args.num_batches] for k, v in result.reference_scores.items()}
    return result


def save_grid(result: EvalResult, path: Path) -> None:
    """The read-iteration grid as a PNG with its columns labelled (query, k=1 .. k=K, original)."""
    save_png(result.grid, path, column_labels=grid_column_names(result.cell_energies.shape[1]))


def energy_rows(result: EvalResult) -> list[list[Any]]:
    """Per class: count, mean, std, p5, p95 of the energies, and the AUROC of memories against the class."""
    memories = result.energies["memories"]
    rows = []
    for name, e in result.energies.items():
        e = e.double()
        p5, p95 = torch.quantile(e, torch.tensor([0.05, 0.95], dtype=torch.float64)).tolist()
        auroc = None if name == "memories" else familiarity_auroc(memories, e)
        rows.append([name, e.numel(), float(e.mean()), float(e.std()), p5, p95, auroc])
    return rows


ENERGY_HEADER = ["class", "count", "mean", "std", "p5", "p95", "AUROC vs memories"]


def error_cells(scores: torch.Tensor) -> list[float]:
    """``[mean, p5, p95]`` of per-episode scores."""
    s = summarize_batches(scores)
    return [s["mean"], s["p5"], s["p95"]]


def finish(out: Path, name: str, title: str, table: str, files: list[str]) -> None:
    """Write ``<name>.md`` and print the table and what was written."""
    (out / f"{name}.md").write_text(f"{title}\n\n{table}\n")
    print(f"\n{title}\n\n{table}\n\nwrote {', '.join([f'{name}.md', *files])} to {out}", flush=True)


def setting(args: Common, data: ImageDataset, noise: str = "") -> str:
    """The evaluation setting in words, for titles."""
    return (
        f"{data.name} test, {metric_name(data.binary)}, {args.num_batches} episodes of N={args.num_patterns}"
        f"{noise}, seed {args.seed}, checkpoint {args.checkpoint}"
    )


def noise_words(args: Distorted) -> str:
    """``", noise block 16"``-style suffix."""
    return f", noise {args.noise}" + ("" if args.noise_size is None else f" {args.noise_size:g}")


# ------------------------------------------------------------------------------------------------ subcommands
def run_energy(args: EnergyArgs) -> list[list[Any]]:
    """Fig. 6: energy histograms and statistics by class of pattern."""
    memory, _, test, out = setup(args)
    ood = None
    if args.ood == "noise":
        ood = noise_images(args.ood_images, test.data_shape, test.binary, torch.Generator().manual_seed(args.seed))
    elif args.ood != "none":
        options = {"image_size": test.data_shape[-1]} if args.ood == "mnist" else {}
        other = load_data(args.data_dir, args.ood, "test", args.mnist_dir, **options)
        ood = match_images(other.images[: args.ood_images], test.data_shape, test.binary)
    start = time.perf_counter()
    result = full_evaluation(args, memory, test, ood, args.grid_rows)
    energies = dict(result.energies)
    if "ood" in energies:
        energies[f"ood ({args.ood})"] = energies.pop("ood")
    result.energies = energies
    rows = energy_rows(result)
    title = f"Energies (Fig. 6): {setting(args, test, noise_words(args))}"
    plot_energy_histograms(energies, out / "energy.png", title=title, bins=args.bins)
    save_grid(result, out / "energy_grid.png")
    errors = error_cells(result.episode_scores)
    table = markdown_table(ENERGY_HEADER, rows, digits=3)
    table += f"\n\nRetrieval {metric_name(test.binary)}: {errors[0]:.2f} (p5 {errors[1]:.2f}, p95 {errors[2]:.2f})"
    table += f"; {time.perf_counter() - start:.0f} s\n\nEnergies along the read (energy_grid.png rows):\n\n"
    table += energy_table(result.cell_energies)
    finish(out, "energy", title, table, ["energy.png", "energy_grid.png"])
    return rows


def trained_level(info: dict[str, Any], noise: str, data: ImageDataset) -> float | None:
    """The noise level the checkpoint was trained with, when it was trained with ``noise``."""
    hp = info["hparams"]
    if hp.get("noise") != noise:
        return None
    if hp.get("noise_size") is not None:
        return float(hp["noise_size"])
    return float(data.data_shape[-1] // 2) if noise in ("block", "erase") else DEFAULT_SIZES[noise]


def run_noise(args: NoiseArgs) -> list[list[Any]]:
    """Fig. 9: error at each noise level."""
    memory, info, test, out = setup(args)
    levels = list(args.levels or DEFAULT_LEVELS[args.noise])
    trained = trained_level(info, args.noise, test)
    rows, summaries, baselines = [], [], []
    for level in sorted(levels):
        distortion = distortion_for(test, args.noise, level, args.clamp_known)
        sampler = episode_sampler(
            memory, test, distortion, args.episodes_per_pass, args.num_patterns, None, args.device
        )
        start = time.perf_counter()
        summary, _ = score(memory, sampler, args.num_batches, args.seed)
        no_retrieval, _ = score(None, sampler, args.num_batches, args.seed)  # the same queries, unread
        mark = " (trained)" if trained is not None and math.isclose(level, trained) else ""
        rows.append([f"{level:g}{mark}", summary["mean"], summary["p5"], summary["p95"], no_retrieval["mean"]])
        summaries.append(summary)
        baselines.append(no_retrieval)
        print(f"{args.noise} {level:g}: {summary['mean']:.2f} in {time.perf_counter() - start:.0f} s", flush=True)
    metric = metric_name(test.binary)
    title = f"Noise generalisation (Fig. 9): {setting(args, test, f', noise {args.noise}')}"
    unit = (
        "block side (pixels)"
        if args.noise in ("block", "erase")
        else {"gaussian": "std"}.get(args.noise, "probability")
    )
    plot_errors(
        sorted(levels) * 2,
        summaries + baselines,
        out / "noise.png",
        xlabel=f"{args.noise} noise: {unit}",
        ylabel=METRIC_LABELS[metric],
        title=title,
        label=["this model"] * len(levels) + ["distorted query, no retrieval"] * len(levels),
        marker_x=trained,
    )
    finish(
        out,
        "noise",
        title,
        markdown_table([f"{args.noise}: {unit}", "mean", "p5", "p95", "query (no retrieval)"], rows),
        ["noise.png"],
    )
    return rows


def run_correlated(args: CorrelatedArgs) -> list[list[Any]]:
    """Table 3: uniform against k-class test batches."""
    memory, info, test, out = setup(args)
    distortion = distortion_for(test, args.noise, args.noise_size, args.clamp_known)
    rows = []
    for k in [None, *args.classes_per_episode]:
        sampler = episode_sampler(memory, test, distortion, args.episodes_per_pass, args.num_patterns, k, args.device)
        summary, _ = score(memory, sampler, args.num_batches, args.seed)
        batches = "uniform (uncorrelated)" if k is None else f"{k} classes (correlated)"
        rows.append([batches, memory.memory_size, summary["mean"], summary["p5"], summary["p95"]])
        print(f"{batches}: {summary['mean']:.2f}", flush=True)
    trained = info["hparams"].get("classes_per_episode")
    trained_on = f"trained on {'uniform' if trained is None else f'{trained}-class'} batches" if info["hparams"] else ""
    references = [p for p in paper_points(args.dataset, args.num_patterns) if p.memory_size is not None]
    rows += [
        [f"{p.label} ({p.source}, trained on those batches)", p.memory_size, p.value, None, None] for p in references
    ]
    title = f"Correlated batches (Table 3): {setting(args, test, noise_words(args))}; {trained_on}"
    finish(out, "correlated", title, markdown_table(["test batches", "memory size", "mean", "p5", "p95"], rows), [])
    return rows


REFERENCE_ROWS = {"no_retrieval": "distorted query, no retrieval", "blank": "blank image (all background)"}
"""Rows of ``mnist.md`` under each data set's row: :attr:`EvalResult.reference_scores`, in words."""


def run_mnist(args: MnistArgs) -> list[list[Any]]:
    """Fig. 10: the model on MNIST next to the model on its own test split."""
    memory, _, test, out = setup(args)
    try:
        mnist = load_data(args.data_dir, "mnist", "test", args.mnist_dir, image_size=test.data_shape[-1])
    except SystemExit as err:
        raise SystemExit(
            f"Omniglot -> MNIST transfer needs the MNIST test IDX files t10k-images-idx3-ubyte and "
            f"t10k-labels-idx1-ubyte (plain or .gz) in $EBMM_DATA_DIR/mnist/ (or <--data-dir>/mnist/, or "
            f"--mnist-dir).\n{err}"
        ) from None
    rows, results = [], {}
    for data in (test, mnist):
        start = time.perf_counter()
        result = full_evaluation(args, memory, data, None, args.grid_rows)
        results[data.name] = result
        e = result.energies
        rows.append(
            [
                f"{data.name} test",
                *error_cells(result.episode_scores),
                float(e["memories"].mean()),
                float(e["non_memories"].mean()),
                float(e["distorted_memories"].mean()),
                familiarity_auroc(e["memories"], e["non_memories"]),
                f"{time.perf_counter() - start:.0f}",
            ]
        )
        print(f"{data.name}: {rows[-1][1]:.2f}", flush=True)
        for key, words in REFERENCE_ROWS.items():  # answers without a memory, scored on the same episodes
            rows.append([f"{data.name} test: {words}", *error_cells(result.reference_scores[key]), *[None] * 5])
    save_grid(results["mnist"], out / "mnist_grid.png")
    plot_energy_histograms(
        results["mnist"].energies, out / "mnist_energy.png", title="MNIST under the model", bins=args.bins
    )
    header = ["images", "mean", "p5", "p95", "E memories", "E non-memories", "E distorted", "AUROC", "seconds"]
    title = f"Transfer to MNIST (Fig. 10): {setting(args, mnist, noise_words(args))}"
    finish(out, "mnist", title, markdown_table(header, rows), ["mnist_grid.png", "mnist_energy.png"])
    return rows


RUNNERS = {EnergyArgs: run_energy, NoiseArgs: run_noise, CorrelatedArgs: run_correlated, MnistArgs: run_mnist}


def main(args: Common) -> list[list[Any]]:
    """Run the subcommand of ``args``; returns its table rows."""
    return RUNNERS[type(args)](args)


if __name__ == "__main__":
    main(tyro.cli(Command))

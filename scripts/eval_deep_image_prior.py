"""Deep Image Prior on distorted test images (the paper's Table 2, App. A.3): a network fitted to each image.

Each image of ``--images`` test images is read by :class:`~ebmm_rl.baselines.DeepImagePrior` (registry name
``deep_image_prior``): a fresh encoder–decoder fitted to the distorted image by ``--steps`` Adam updates (the paper:
2000). Under block noise (and ``erase``) the fit is told where the block is, as in the paper (Table 2's asterisk);
``--mask told`` / ``untold`` overrides that. The images are the first ``--images`` of the episodes that
``scripts/eval_distortion_rate.py`` scores for the same ``--num-patterns``, ``--episodes-per-pass`` and ``--seed``,
so the rows compare with its tables image for image.

The error is the paper's per image (Hamming distance on binary data, squared error otherwise); the table gives the
mean and the 5th/95th percentiles over images, next to the distorted query itself (no retrieval), a constant
image (blank on binary data, the mean test image otherwise) and the paper's Table 2 values for the data set (its
Deep Image Prior cells are on ImageNet 64x64 only). Writes ``deep_image_prior.md`` and ``.json`` to ``--out-dir``.

Example (about 7 CPU-seconds per 32x32 image at 2000 steps, one thread)::

    python scripts/eval_deep_image_prior.py --dataset cifar10 --noise block --images 64 --threads 1
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro
from meta_train_images import Dataset, Noise, load_data

from ebmm_rl.baselines import NoState
from ebmm_rl.cli import check_device, usage_error
from ebmm_rl.distortions import make_sampler
from ebmm_rl.image_eval import metric_name, query_distortion, retrieval_errors, summarize_batches
from ebmm_rl.image_report import PAPER_POINTS, markdown_table, paper_points
from ebmm_rl.protocol import build_memory

PROG = "eval_deep_image_prior.py"


@dataclass
class Args:
    """Deep Image Prior fitted to distorted test images."""

    dataset: Dataset = "cifar10"
    """data set; its test split is read"""
    data_dir: str | None = None
    """folder holding omniglot/, cifar10/, mnist/, imagenet64/ (default: $EBMM_DATA_DIR)"""
    mnist_dir: str | None = None
    """folder holding the MNIST IDX files (default: <data-dir>/mnist)"""
    noise: Noise = "block"
    """query distortion (paper: block)"""
    noise_size: float | None = None
    """block side in pixels (default: half the image side), or salt_pepper/dropout probability, gaussian std"""
    mask: Literal["auto", "told", "untold"] = "auto"
    """tell the fit which pixels are distorted: auto = told for block and erase (the paper's Table 2), else untold"""
    images: int = 32
    """test images to fit (the CPU cap)"""
    num_patterns: int = 32
    """images per episode of the sampler (decides which test images come first, as in eval_distortion_rate.py)"""
    episodes_per_pass: int = 8
    """episodes drawn together (as eval_distortion_rate.py's option of the same name)"""
    fit_batch: int = 32
    """images fitted together (one grouped network; speed only)"""
    steps: int = 2000
    """Adam updates per image (paper: 2000)"""
    lr: float = 0.01
    """Adam learning rate"""
    width: int = 32
    """channels of every hidden layer"""
    depth: int = 3
    """stride-2 levels of the encoder"""
    input_channels: int = 8
    """channels of the fixed random input"""
    net_seed: int = 0
    """seed of the input and the initial weights (the same for every image)"""
    seed: int = 0
    """seed of the test episodes"""
    out_dir: str = "runs/deep_image_prior"
    """where deep_image_prior.md and .json go"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    threads: int = 0
    """CPU threads for torch (0: torch's default; 1 is fastest on a busy machine)"""


def check_args(args: Args) -> None:
    """Usage errors (exit code 2) for settings out of range."""
    for name in ("images", "num_patterns", "episodes_per_pass", "fit_batch", "steps", "width", "depth"):
        if getattr(args, name) < 1:
            usage_error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", PROG)
    if not args.lr > 0:
        usage_error(f"--lr must be > 0, got {args.lr}", PROG)
    if args.threads < 0:
        usage_error(f"--threads must be >= 0, got {args.threads}", PROG)


def constant_image(test_images: torch.Tensor, binary: bool) -> torch.Tensor:
    """The constant answer of the reference row: blank (all background) on binary data, else the mean test image."""
    images = test_images.float()
    if images.max() > 1:
        images = images / 255.0
    return torch.zeros_like(images[0]) if binary else images.mean(dim=0)


def main(args: Args) -> dict:
    """Fit, score, print and write the table; returns the summary."""
    check_device(args.device)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    test = load_data(args.data_dir, args.dataset, "test", mnist_dir=args.mnist_dir)
    told = args.noise in ("block", "erase") if args.mask == "auto" else args.mask == "told"
    try:
        distortion = query_distortion(test, args.noise, args.noise_size, return_known_mask=told)
        memory = build_memory(
            "deep_image_prior", budget=1, data_shape=test.data_shape, data_range=(0.0, 1.0), steps=args.steps,
            lr=args.lr, width=args.width, depth=args.depth, input_channels=args.input_channels, seed=args.net_seed,
        )  # fmt: skip
        sampler = make_sampler(test, distortion, args.episodes_per_pass, args.num_patterns, None, args.device)
    except ValueError as err:
        usage_error(str(err), PROG)
    generator = torch.Generator(device=sampler.device).manual_seed(args.seed)
    drawn: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    count = 0
    while count < args.images:  # whole passes, in episode order, as episode_errors draws them
        patterns, queries, known = sampler(generator)
        flat = [None if t is None else t.flatten(0, 1) for t in (patterns, queries, known)]  # [B·N, C, H, W]
        drawn.append(tuple(flat))
        count += flat[0].shape[0]
    patterns, queries = (torch.cat([d[i] for d in drawn])[: args.images] for i in (0, 1))
    known = torch.cat([d[2] for d in drawn])[: args.images] if told else None
    binary, scores, start, start_cpu = test.binary, [], time.perf_counter(), time.process_time()
    for first in range(0, args.images, args.fit_batch):
        part = slice(first, first + args.fit_batch)
        retrieved = memory.recall(queries[None, part], NoState(1), None if known is None else known[None, part])
        scores.append(retrieval_errors(retrieved, patterns[None, part], binary)[0].double().cpu())  # [n]
        done = min(first + args.fit_batch, args.images)
        print(f"{done}/{args.images} images: mean so far {torch.cat(scores).mean():.2f} "
              f"({time.process_time() - start_cpu:.0f} CPU-s)", flush=True)  # fmt: skip
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    dip = torch.cat(scores)
    no_retrieval = retrieval_errors(queries[None], patterns[None], binary)[0].double().cpu()  # [images]
    constant = retrieval_errors(constant_image(test.images, binary).expand_as(patterns)[None], patterns[None], binary)[
        0
    ]
    metric = metric_name(binary)
    setting = (
        f"{test.name} test, {metric}, {args.images} images (first of episodes of N={args.num_patterns}, seed "
        f"{args.seed}), noise {args.noise}{'' if args.noise_size is None else f' {args.noise_size:g}'}, "
        f"{'told' if told else 'not told'} which pixels are distorted"
    )
    rows = []
    for label, values in [
        (f"Deep Image Prior, {args.steps} Adam steps, width {args.width}, depth {args.depth}", dip),
        ("distorted query, no retrieval", no_retrieval),
        ("blank image" if binary else "mean test image", constant.double().cpu()),
    ]:
        s = summarize_batches(values)
        rows.append([label, s["mean"], s["p5"], s["p95"]])
    memory_free = [p for p in paper_points(args.dataset, noise=args.noise) if p.memory_size is None]
    rows += [[f"{p.label} ({p.source})", p.value, None, None] for p in memory_free]
    others = [p for p in PAPER_POINTS if "Deep Image Prior" in p.label and p.noise == args.noise]
    rows += [[f"{p.label}, {p.dataset} ({p.source})", p.value, None, None] for p in others if p.dataset != args.dataset]
    table = markdown_table(["model", "mean", "p5", "p95"], rows)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "deep_image_prior.md").write_text(f"Deep Image Prior: {setting}\n\n{table}\n")
    summary = {
        "setting": setting,
        "metric": metric,
        "args": asdict(args),
        "told": told,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "scores": dip.tolist(),
        "no_retrieval": no_retrieval.tolist(),
    }
    (out / "deep_image_prior.json").write_text(json.dumps(summary, indent=1))
    print(f"\nDeep Image Prior: {setting}\n\n{table}\n\n{seconds:.0f} s ({cpu_seconds:.0f} CPU-s); wrote "
          f"deep_image_prior.md and .json to {out}")  # fmt: skip
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args, prog=PROG))

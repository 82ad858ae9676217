"""Distortion-rate analysis (paper Figs 3 and 5, Table 2): retrieval error against memory size, with 5/95 percentiles.

Each model is a checkpoint (``--checkpoints``: EBMM from ``scripts/meta_train_images.py`` or a baseline from
``scripts/meta_train_baseline.py``; it knows its memory size), an untrained memory of
:data:`ebmm_rl.protocol.MEMORIES` (``--memories modern_hopfield:budget=4624``), or meta-trained here first, one
per ``--sizes`` entry, for ``--train-steps`` steps with ``scripts/meta_train_images.py`` (``--train.*`` sets its
other arguments: architecture, layer sizes, learning rates, episodes per step, ...; the data set, noise, N, seed,
device and threads are this script's). A size whose run folder already holds a checkpoint of at least
``--train-steps`` steps is not trained again.

Every model is scored on the same ``--num-batches`` test episodes, the paper's protocol (App. A): an episode
writes N images into one memory and reads each back from a distorted version; its error is the mean over the N
images of the Hamming distance (binary data: Omniglot, MNIST) or the squared error (CIFAR-10, ImageNet); the
table gives the mean over episodes and the 5th and 95th percentiles (the paper: 1000 episodes).
Memory-free models (the denoising auto-encoder and VAE of Table 2, memory size 0) are table rows and horizontal
lines in the plot.

Writes to ``--out-dir``: ``distortion_rate.md`` (the table, with the paper's numeric results and the error of the
distorted queries themselves, no retrieval, as reference rows),
``distortion_rate.png`` (error against memory size with a 5–95 band and the paper's points) and
``distortion_rate.json`` (every episode's score).

Examples::

    python scripts/eval_distortion_rate.py --checkpoints runs/a/checkpoint.pt runs/b/checkpoint.pt --threads 1
    python scripts/eval_distortion_rate.py --sizes 2312 4624 9248 --train-steps 500 --threads 1
    python scripts/eval_distortion_rate.py --dataset cifar10 --num-patterns 64 --checkpoints runs/c/best.pt
    python scripts/eval_distortion_rate.py --checkpoints runs/memnet/checkpoint.pt runs/dae/checkpoint.pt \
        --memories modern_hopfield:budget=4624 --threads 1
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import tyro
from meta_train_baseline import parse_overrides
from meta_train_images import Args as TrainArgs
from meta_train_images import Dataset, Noise, load_data
from meta_train_images import main as meta_train

from ebmm_rl.checkpoint import build_memory as build_from_spec
from ebmm_rl.checkpoint import load_checkpoint, load_memory
from ebmm_rl.cli import check_device
from ebmm_rl.data import ImageDataset
from ebmm_rl.distortions import ClassBatchSampler, Distortion, UniformBatchSampler, make_sampler
from ebmm_rl.image_eval import episode_errors, metric_name, query_distortion, summarize_batches
from ebmm_rl.image_report import PaperPoint, markdown_table, paper_points, plot_errors
from ebmm_rl.memory import EBMMemory
from ebmm_rl.protocol import MEMORIES
from ebmm_rl.protocol import build_memory as build_registered
from ebmm_rl.training import CHECKPOINT_NAME

METRIC_LABELS = {"hamming": "Hamming distance (error bits per image)", "squared_error": "squared error per image"}


@dataclass
class Args:
    """Distortion-rate analysis: retrieval error of one model per memory size."""

    checkpoints: list[str] = field(default_factory=list)
    """trained checkpoints to evaluate (checkpoint.pt / best.pt of meta_train_images or meta_train_baseline runs,
    or save_memory files)"""
    memories: list[str] = field(default_factory=list)
    """untrained memories of ebmm_rl.protocol.MEMORIES as NAME[:KEY=VALUE,...], e.g. modern_hopfield:budget=4624
    (budget: memory size in floats; other keys set config fields)"""
    config_overrides: list[str] = field(default_factory=list)
    """KEY=VALUE config fields set on every baseline checkpoint before evaluation, e.g. read_steps=50 for a VAE
    meta-trained with --set read_steps=1 (its ELBO does not depend on the read, only its logging does)"""
    sizes: list[float] = field(default_factory=list)
    """memory sizes in floats: meta-train one model per size here first (--train-steps, --train.*)"""
    train_steps: int = 200
    """meta-steps of each model trained for --sizes"""
    train: TrainArgs = field(default_factory=lambda: TrainArgs(progress=False, eval_every=0, eval_batches=5))
    """meta-training of --sizes models (data set, data dir, noise, N, seed, device, threads, steps and memory size
    are taken from this script's flags, whatever --train.* says)"""
    dataset: Dataset = "omniglot"
    """data set; its test split is evaluated"""
    data_dir: str | None = None
    """folder holding omniglot/, cifar10/, mnist/, imagenet64/ (default: $EBMM_DATA_DIR)"""
    mnist_dir: str | None = None
    """folder holding the MNIST IDX files (default: <data-dir>/mnist)"""
    noise: Noise = "block"
    """query distortion (paper: block)"""
    noise_size: float | None = None
    """block side in pixels (default: half the image side), or salt_pepper/dropout probability, gaussian std"""
    clamp_known: bool = False
    """tell the reader which pixels are intact (the paper does not)"""
    num_patterns: int = 32
    """images written per episode, N (paper: 64 in Figs 3 and 5, 32 in Table 3 and on ImageNet)"""
    num_batches: int = 1000
    """test episodes per model (the paper's error bars: 1000)"""
    episodes_per_pass: int = 8
    """episodes written and read together (speed; it changes which episodes are drawn, not their distribution)"""
    seed: int = 0
    """seed of the test episodes (the same for every model) and of --sizes training"""
    out_dir: str = "runs/distortion_rate"
    """where the table, plot, scores and --sizes training runs go"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    threads: int = 0
    """CPU threads for torch (0: torch's default; 1 is fastest on a busy machine)"""


# ------------------------------------------------------------------------------------------------ shared pieces
def open_memory(
    path: str | Path, device: str, overrides: dict[str, object] | None = None
) -> tuple[EBMMemory, dict[str, Any]]:
    """A trained memory (eval mode) and its checkpoint's ``step`` and ``hparams``; SystemExit when unusable.

    Args:
        path: a training checkpoint or a ``save_memory`` file.
        device: where the memory goes.
        overrides: config fields of a baseline to replace before its meta-parameters are loaded (reading
            settings such as ``read_steps``; fields that change parameter shapes fail to load).
    """
    try:
        ckpt = load_checkpoint(path)
        if overrides:
            spec = ckpt.get("memory_spec", {})
            if "model_config" not in spec:
                raise ValueError("--config-overrides applies to baseline checkpoints only (meta_train_baseline.py)")
            unknown = sorted(set(overrides) - set(spec["model_config"]))
            if unknown:
                raise ValueError(
                    f"{spec['model']} has no config field {unknown}; fields: {sorted(spec['model_config'])}"
                )
            memory = build_from_spec({**spec, "model_config": {**spec["model_config"], **overrides}})
            memory.load_state_dict(ckpt["model"])
            memory = memory.to(device).eval()
        else:
            memory = load_memory(path, device).eval()
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        raise SystemExit(f"cannot load a memory from {path}: {err}") from None
    return memory, {"step": ckpt.get("step"), "hparams": ckpt.get("hparams", {})}


def check_shape(memory: EBMMemory, data: ImageDataset) -> None:
    """SystemExit when ``data``'s images are not the memory's patterns."""
    if tuple(memory.data_shape) != data.data_shape:
        raise SystemExit(
            f"the memory stores {tuple(memory.data_shape)} patterns but {data.name} images are {data.data_shape}; "
            f"evaluate on the data set the model was trained on (--dataset)"
        )


def distortion_for(data: ImageDataset, noise: str, size: float | None, clamp_known: bool) -> Distortion:
    """:func:`ebmm_rl.image_eval.query_distortion`, with SystemExit on an invalid size."""
    try:
        return query_distortion(data, noise, size, clamp_known)
    except ValueError as err:
        raise SystemExit(f"noise {noise} of size {size}: {err}") from None


def episode_sampler(
    memory: EBMMemory,
    data: ImageDataset,
    distortion: Distortion,
    episodes_per_pass: int,
    num_patterns: int,
    classes_per_episode: int | None = None,
    device: str = "cpu",
) -> UniformBatchSampler | ClassBatchSampler:
    """Episodes of ``data`` for ``memory``; SystemExit when the images do not fit the memory or the episodes."""
    check_shape(memory, data)
    try:
        return make_sampler(data, distortion, episodes_per_pass, num_patterns, classes_per_episode, device)
    except ValueError as err:
        raise SystemExit(f"{data.name} {data.split}: {err}") from None


def model_name(memory: Any) -> str:
    """The row name of ``memory``'s kind: ``EBMM (<energy class>)`` or a :data:`MEMORIES` row name."""
    if isinstance(memory, EBMMemory):
        return f"EBMM ({type(memory.energy).__name__})"
    rows = [e.row for e in MEMORIES.values() if type(memory) is e.cls]
    return rows[0] if rows else type(memory).__name__


def training_budget(info: dict[str, Any]) -> str:
    """How long a model was trained: ``"N meta-steps"``, ``"T CPU-min"`` (time-limited runs) or ``"untrained"``."""
    if info["step"] is None:
        return "untrained"
    minutes = info["hparams"].get("time_limit_min")
    return f"{minutes:g} CPU-min" if minutes else f"{info['step']} meta-steps"


def registered_memory(spec: str, data: ImageDataset, device: str) -> tuple[Any, dict[str, Any]]:
    """``NAME[:KEY=VALUE,...]`` -> an untrained memory of :data:`MEMORIES` for ``data``'s images, and its info.

    Raises:
        SystemExit: on an unknown or trainable name, a malformed override, or a budget the memory does not fit.
    """
    name, _, text = spec.partition(":")
    entry = MEMORIES.get(name)
    if entry is None or entry.trainable:
        untrained = sorted(k for k, e in MEMORIES.items() if not e.trainable and e.kind != "hopfield")
        raise SystemExit(
            f"--memories {spec!r}: not an untrained memory; choose one of {untrained} (trained ones: --checkpoints)"
        )
    overrides = parse_overrides([item for item in text.split(",") if item])
    budget = int(overrides.pop("budget", 8256))
    overrides = {"data_shape": data.data_shape, "data_range": (0.0, 1.0), **overrides}
    try:
        memory = build_registered(name, budget=budget, **overrides).to(device).eval()
    except (TypeError, ValueError) as err:
        raise SystemExit(f"--memories {spec!r}: {err}") from None
    return memory, {"step": None, "hparams": {}, "label": spec}


def describe_training(info: dict[str, Any], args: Any) -> str:
    """One line on how a checkpoint was trained, flagging settings that differ from this evaluation."""
    hp = info["hparams"]
    if info["step"] is None:
        return "untrained"
    if not hp:
        return "no training record (a save_memory file)"
    trained = {k: hp.get(k) for k in ("dataset", "num_patterns", "noise", "noise_size", "classes_per_episode")}
    text = ", ".join(f"{k}={v}" for k, v in trained.items() if v is not None)
    compared = [k for k in ("dataset", "num_patterns", "noise", "noise_size") if k in hp and hasattr(args, k)]
    differ = [k for k in compared if hp[k] != getattr(args, k)]
    return f"trained {info['step']} steps ({text})" + (f"; evaluated with other {', '.join(differ)}" if differ else "")


def score(memory: EBMMemory | None, sampler: Any, num_batches: int, seed: int) -> tuple[dict[str, float], torch.Tensor]:
    """``(summary {"mean", "p5", "p95"}, scores [num_batches])`` of ``memory`` on the sampler's episodes."""
    scores = episode_errors(memory, sampler, num_batches, seed)
    return summarize_batches(scores), scores


# --------------------------------------------------------------------------------------------------- training
def train_sizes(args: Args) -> list[Path]:
    """Meta-train one model per ``--sizes`` entry (or reuse a finished run); their checkpoint paths."""
    paths = []
    for size in args.sizes:
        run_dir = Path(args.out_dir) / "train" / f"{args.dataset}_mem{int(size)}_seed{args.seed}"
        path = run_dir / CHECKPOINT_NAME
        done = int(load_checkpoint(path)["step"]) if path.is_file() else 0
        if done < args.train_steps:
            train_args = dataclasses.replace(
                args.train,
                dataset=args.dataset,
                data_dir=args.data_dir,
                mnist_dir=args.mnist_dir,
                noise=args.noise,
                noise_size=args.noise_size,
                clamp_known=args.clamp_known,
                num_patterns=args.num_patterns,
                memory_size=size,
                dynamic_size=None,
                steps=args.train_steps,
                seed=args.seed,
                device=args.device,
                threads=args.threads,
                run_dir=str(run_dir),
                resume=path.is_file(),
            )
            meta_train(train_args)
        else:
            print(f"memory size {size:g}: reusing {path} ({done} steps)", flush=True)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------------- main
def main(args: Args) -> list[dict[str, Any]]:
    """Train (``--sizes``), evaluate every model, print and write the table, the plot and the scores."""
    check_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.checkpoints and not args.sizes and not args.memories:
        raise SystemExit(
            "nothing to evaluate: give --checkpoints PATH [PATH ...], --memories NAME [NAME ...] and/or "
            "--sizes SIZE [SIZE ...]"
        )
    missing = [p for p in args.checkpoints if not Path(p).is_file()]
    if missing:
        raise SystemExit(f"no checkpoint at {', '.join(missing)}; pass checkpoint.pt files of training runs")
    test = load_data(
        args.data_dir, args.dataset, "test", mnist_dir=args.mnist_dir
    )  # fail on missing data or bad noise before any training
    distortion = distortion_for(test, args.noise, args.noise_size, args.clamp_known)
    untrained = [registered_memory(spec, test, args.device) for spec in args.memories]
    paths = [Path(p) for p in args.checkpoints] + train_sizes(args)
    metric = metric_name(test.binary)
    rows = []
    overrides = parse_overrides(args.config_overrides)
    opened = [(p, open_memory(p, args.device, overrides)) for p in paths] + [(None, m) for m in untrained]
    for path, (memory, info) in opened:
        sampler = episode_sampler(
            memory, test, distortion, args.episodes_per_pass, args.num_patterns, None, args.device
        )
        start, start_cpu = time.perf_counter(), time.process_time()
        summary, scores = score(memory, sampler, args.num_batches, args.seed)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        name, label = model_name(memory), info["label"] if path is None else f"{path.parent.name}/{path.name}"
        print(
            f"{name} {label}: memory size {memory.memory_size}, {metric} {summary['mean']:.2f} "
            f"(p5 {summary['p5']:.2f}, p95 {summary['p95']:.2f}) on {args.num_batches} episodes of "
            f"{args.num_patterns} in {seconds:.0f} s ({cpu_seconds:.0f} CPU-s); {describe_training(info, args)}",
            flush=True,
        )
        rows.append(
            {
                "model": name,
                "label": label,
                "training": training_budget(info),
                "path": None if path is None else str(path),
                "memory_size": memory.memory_size,
                "steps": info["step"],
                **summary,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "scores": scores.tolist(),
            }
        )
    rows.sort(key=lambda r: (r["memory_size"], r["model"], r["label"]))
    no_retrieval, _ = score(None, sampler, args.num_batches, args.seed)  # the same episodes, queries as answers
    write_outputs(args, rows, metric, no_retrieval["mean"])
    return rows


def write_outputs(args: Args, rows: list[dict[str, Any]], metric: str, no_retrieval: float) -> None:
    """``distortion_rate.md``, ``.png`` and ``.json`` in ``--out-dir``; print the table."""
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    baseline = PaperPoint(args.dataset, "distorted query, no retrieval", no_retrieval, None, None, "measured")
    # the paper's points hold for its distortion sizes: the defaults (half-side block, 15 % salt-and-pepper)
    paper = paper_points(args.dataset, args.num_patterns, noise=args.noise) if args.noise_size is None else []
    table = markdown_table(
        ["model", "memory size", "meta-steps", "mean", "p5", "p95"],
        [[f"{r['model']}: {r['label']}", r["memory_size"], r["steps"], r["mean"], r["p5"], r["p95"]] for r in rows]
        + [[f"{p.label} ({p.source})", p.memory_size, None, p.value, None, None] for p in [*paper, baseline]],
    )
    setting = (
        f"{args.dataset} test, {metric}, {args.num_batches} episodes of N={args.num_patterns}, noise {args.noise}"
        f"{'' if args.noise_size is None else f' {args.noise_size:g}'}, seed {args.seed}"
    )
    (out / "distortion_rate.md").write_text(f"Distortion-rate: {setting}\n\n{table}\n")
    memories = [r for r in rows if r["memory_size"] > 0]  # memory-free models: horizontal lines, as the paper's DAE
    measured = [
        PaperPoint(args.dataset, f"{r['model']}, {r['training']}", r["mean"], None, None, "measured")
        for r in rows
        if r["memory_size"] == 0
    ]
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # e.g. a bare GPU machine: the table and scores are the results, the plot is a view
        print("matplotlib is not installed: distortion_rate.png not written (pip install matplotlib)")
    else:
        plot_distortion_rate(out, memories, metric, setting, [*paper, *measured, baseline])
    summary = {"setting": setting, "metric": metric, "args": _plain(args), "no_retrieval": no_retrieval, "models": rows}
    (out / "distortion_rate.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{table}\n\nwrote distortion_rate.md and .json (and .png with matplotlib) to {out}")


def plot_distortion_rate(out: Path, memories: list[dict], metric: str, setting: str, references: list) -> None:
    """``out/distortion_rate.png``: error against memory size with 5–95 bands and the reference points."""
    plot_errors(
        [r["memory_size"] for r in memories],
        memories,
        out / "distortion_rate.png",
        xlabel="memory size (float32 numbers)",
        ylabel=METRIC_LABELS[metric],
        title=f"Distortion-rate: {setting}",
        label=[f"{r['model']}, {r['training']}" for r in memories],
        references=references,
    )


def _plain(args: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(args), default=str))


if __name__ == "__main__":
    main(tyro.cli(Args))

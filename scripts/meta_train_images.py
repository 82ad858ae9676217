"""Meta-train EBMM on images (paper §4, App. A.5–A.7, C.2–C.5): Omniglot, CIFAR-10, ImageNet 64x64, MNIST.

By default: Omniglot (train = images_background, evaluation on images_evaluation), the convolutional-memory ResNet
(C.3) at a CPU size (channels 16, hidden 32, head 128; 4624 writable floats), 32 images per episode, 2 episodes per
meta-step, 16x16 random binary blocks as the query distortion. ``--size paper`` takes the paper's layer sizes.

Examples::

    python scripts/meta_train_images.py --threads 1                      # Omniglot, C.3, CPU size
    python scripts/meta_train_images.py --dataset cifar10 --memory-size 10000 --num-patterns 64 --device cuda
    python scripts/meta_train_images.py --arch lower-conv --classes-per-episode 2     # App. A.7
    torchrun --nproc-per-node 4 scripts/meta_train_images.py --size paper --device cuda   # data parallel

Data: ``--data-dir`` (default ``$EBMM_DATA_DIR``) holds ``omniglot/``, ``cifar10/cifar-10-batches-py/``,
``mnist/``, ``imagenet64/`` in their upstream formats (see :mod:`ebmm_rl.data`); ``--mnist-dir`` points at an
MNIST folder elsewhere (the IDX files themselves, not a parent holding ``mnist/``).

Budget: ``--steps`` meta-steps, or ``--time-limit-min`` minutes of this process's CPU time, whichever ends first.
Without a progress bar (``--no-progress``) a status line is printed every ``--status-every-s`` seconds.

TensorBoard (``tensorboard --logdir runs``): the trainer's ``meta/``, ``read/``, ``write/``, ``charts/`` scalars;
``eval/`` the mean test error (Hamming distance on binary data, squared error otherwise) with its 5/95 percentiles
over evaluation batches and mean energies; ``read/iterations`` the read iterations of a few test patterns
(columns: query, iterates 1..K, original; Figs 2 and 4) with their energies in ``read/energies``;
``energy/*`` histograms of the energies of memories, non-memories and distorted memories (Fig. 6).

Resume a killed run with ``--resume --run-dir runs/<name>``. Under ``torchrun`` each process draws its own
batches, gradients are averaged (``DistributedDataParallel``), and rank 0 logs and checkpoints.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

from ebmm_rl.checkpoint import load_checkpoint
from ebmm_rl.cli import RunArgs, start_run, train_or_exit
from ebmm_rl.data import DATA_DIR_VAR, FOLDERS, ImageDataset, load_dataset
from ebmm_rl.distortions import make_sampler
from ebmm_rl.distributed import (
    DistributedContext,
    DistributedMetaTrainer,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    parameter_checksum,
)
from ebmm_rl.energy import (
    ResNetConvConfig,
    ResNetConvEnergy,
    ResNetFCConfig,
    ResNetFCEnergy,
    ResNetLowerConvConfig,
    ResNetLowerConvEnergy,
    dynamic_size_for_budget,
)
from ebmm_rl.image_eval import ImageEvaluator, match_images, metric_name, query_distortion
from ebmm_rl.memory import EBMMConfig, EBMMemory
from ebmm_rl.precision import Precision
from ebmm_rl.training import CHECKPOINT_NAME, MetaTrainer, TrainConfig

Dataset = Literal["omniglot", "cifar10", "imagenet64", "mnist"]
Arch = Literal["fc", "conv", "imagenet", "lower-conv"]
Noise = Literal["block", "salt_pepper", "gaussian", "dropout", "erase"]

CPU_SIZES = {
    "fc": {"channels": 16, "encoder_size": 64, "representation_size": 64, "hidden_size": 32, "head_size": 128},
    "conv": {"channels": 16, "hidden_size": 32, "head_size": 128},
    "imagenet": {"channels": 16, "hidden_size": 32, "head_size": 128},
    "lower-conv": {"channels": 16, "hidden_size": 32, "head_size": 128},
}
"""Layer sizes of ``--size cpu`` (a meta-step of the default run takes a few seconds on one CPU thread)."""


@dataclass
class Args(RunArgs):
    """Meta-training EBMM on images."""

    dataset: Dataset = "omniglot"
    """data set: train split for meta-training, test split for evaluation"""
    data_dir: str | None = None
    """folder holding omniglot/, cifar10/, mnist/, imagenet64/ (default: $EBMM_DATA_DIR)"""
    mnist_dir: str | None = None
    """folder holding the MNIST IDX files (default: <data-dir>/mnist)"""
    arch: Arch = "conv"
    """energy network: fc (C.2), conv (C.3), imagenet (C.4), lower-conv (C.5, App. A.7)"""
    size: Literal["cpu", "paper"] = "cpu"
    """layer sizes: cpu (channels 16, hidden 32, head 128) or paper (App. C); the flags below override either"""
    channels: int | None = None
    """base width of the ResNet (paper: 32; ImageNet 64)"""
    hidden_size: int | None = None
    """recurrent state size (paper: conv 128, ImageNet and lower-conv 256, fc 512)"""
    head_size: int | None = None
    """width of the energy head (paper: 1024)"""
    memory_size: float | None = None
    """memory budget in float32 numbers; picks the largest dynamic_size that fits (the x-axis of Figs 3, 5)"""
    dynamic_size: int | None = None
    """memory units per writable layer (default: the architecture's, 8; fc 32); overrides --memory-size"""
    num_patterns: int = 32
    """images written per episode, N (paper: 64; 32 for ImageNet and App. A.7)"""
    batch_size: int = 2
    """episodes per meta-step (per process under torchrun)"""
    noise: Noise = "block"
    """query distortion (paper: block; App. A.4/A.5 also salt_pepper)"""
    noise_size: float | None = None
    """block side in pixels (default: half the image, the paper's 16 on 32x32), salt_pepper/dropout probability
    (default 0.15/0.25), gaussian std (default 0.1)"""
    clamp_known: bool = False
    """tell the reader which pixels are intact and clamp them (the paper does not)"""
    classes_per_episode: int | None = None
    """draw each episode from exactly this many classes (App. A.7: 2); default: uniform episodes"""
    steps: int = 2000
    """meta-steps in total"""
    time_limit_min: float = 0.0
    """stop after this many minutes of this process's CPU time in the training loop, then checkpoint and evaluate
    (0: no limit)"""
    precision: Precision = "fp32"
    """fp32, tf32 (CUDA TF32 matmuls and convolutions) or bf16 (autocast of the energy's products; updates stay
    fp32)"""
    lr: float = 1e-3
    """AdamW learning rate of the weights (paper: 5e-5 over 2e6 steps, far more than a CPU run has)"""
    schedule_lr: float = 1e-2
    """AdamW learning rate of step sizes, momenta and loss weights"""
    grad_clip: float = 0.05
    """global gradient-norm clipping (paper: 0.05)"""
    write_lr_init: float = 0.1
    """initial write learning rates (paper: 1e-4)"""
    read_step_init: float = 0.5
    """initial first read step size"""
    write_steps: int = 5
    """T (paper: 5)"""
    read_steps: int = 5
    """K (paper: 5)"""
    grad_norm_term: bool = True
    """include alpha*|grad_x E|^2 in the writing loss (App. D)"""
    eval_every: int = 200
    """steps between evaluations on the test split (0: only at the end)"""
    eval_batches: int = 20
    """batches per evaluation (the paper's error bars: 1000)"""
    grid_rows: int = 4
    """test patterns shown in the read-iteration grid"""
    ood_dataset: Dataset | None = None
    """also histogram the energies of this data set's test images, converted to this one's format (Fig. 6: cifar10
    under an Omniglot model)"""
    log_every: int = 10
    """steps between TensorBoard scalars"""
    checkpoint_every: int = 100
    """steps between checkpoints"""
    seed: int = 0
    """seed of initialisation and batches (rank r of a torchrun job draws batches from seed + r * 2**32)"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device (under torchrun, cuda means each rank's own GPU)"""
    threads: int = 0
    """CPU threads for torch (0: torch's default; 1 is fastest on a busy machine)"""
    status_every_s: float = 60.0
    """with --no-progress, print a status line (step, loss, error, episodes/s, CPU minutes) every this many seconds
    (0: never)"""


# ------------------------------------------------------------------------------------------------------ building
def load_split(args: Args, name: str, split: str) -> ImageDataset:
    """One split of a data set, from ``--data-dir`` or ``$EBMM_DATA_DIR`` (``--mnist-dir`` for MNIST)."""
    return load_data(args.data_dir, name, split, mnist_dir=args.mnist_dir)


def load_data(
    data_dir: str | None, name: str, split: str, mnist_dir: str | None = None, **options: object
) -> ImageDataset:
    """One split of a data set from ``data_dir`` (or ``$EBMM_DATA_DIR``); SystemExit with a hint when unusable.

    Args:
        data_dir: the folder holding ``omniglot/``, ``cifar10/``, ... (``None``: ``$EBMM_DATA_DIR``).
        name: data set name.
        split: ``"train"`` or ``"test"``.
        mnist_dir: the folder of the MNIST files themselves, wherever it is (``None``: ``<data_dir>/mnist``).
        **options: loader options (e.g. ``image_size`` for MNIST).

    Returns:
        The data set (ImageNet kept as uint8: 4x less memory).
    """
    if name == "mnist" and mnist_dir:
        root: Path | None = Path(mnist_dir)
    else:
        root = Path(data_dir) / FOLDERS[name] if data_dir else None
    try:
        return load_dataset(name, split, root, uint8=name == "imagenet64", **options)
    except FileNotFoundError as err:
        hint = f"Pass --data-dir <folder holding {FOLDERS[name]}/> or set ${DATA_DIR_VAR}"
        hint += " (or --mnist-dir <folder with the MNIST files>)." if name == "mnist" else "."
        raise SystemExit(f"{err}\n{hint}") from None
    except ValueError as err:  # damaged files: the message names the file
        raise SystemExit(f"{name} {split}: {err}") from None


def energy_config(
    args: Args, data_shape: tuple[int, int, int]
) -> ResNetFCConfig | ResNetConvConfig | ResNetLowerConvConfig:
    """The energy network's config for ``args`` and images of ``data_shape``."""
    C, H, W = data_shape
    if H != W:
        raise SystemExit(f"the ResNet energies take square images; {args.dataset} has {H}x{W}")
    classes = {
        "fc": ResNetFCConfig,
        "conv": ResNetConvConfig,
        "imagenet": ResNetConvConfig.imagenet64,
        "lower-conv": ResNetLowerConvConfig,
    }
    sizes = dict(CPU_SIZES[args.arch]) if args.size == "cpu" else {}
    explicit = {"channels": args.channels, "hidden_size": args.hidden_size, "head_size": args.head_size}
    sizes.update({k: v for k, v in explicit.items() if v is not None})
    config = classes[args.arch](in_channels=C, image_size=H, **sizes)
    if args.dynamic_size is not None:
        return dataclasses.replace(config, dynamic_size=args.dynamic_size)  # checked when the network is built
    if args.memory_size is not None:
        try:
            return dataclasses.replace(config, dynamic_size=dynamic_size_for_budget(config, int(args.memory_size)))
        except ValueError as err:
            raise SystemExit(f"--memory-size {args.memory_size:g}: {err}") from None
    return config


def build_memory(args: Args, data_shape: tuple[int, int, int]) -> EBMMemory:
    """The EBMM of ``args`` for images of ``data_shape``."""
    config = energy_config(args, data_shape)
    energy_class = {ResNetFCConfig: ResNetFCEnergy, ResNetLowerConvConfig: ResNetLowerConvEnergy}.get(
        type(config), ResNetConvEnergy
    )
    try:
        energy = energy_class(config)
    except ValueError as err:
        raise SystemExit(f"{args.arch}: {err}") from None
    ebmm = EBMMConfig(
        write_steps=args.write_steps,
        read_steps=args.read_steps,
        data_range=(0.0, 1.0),
        write_lr_init=args.write_lr_init,
        read_step_init=args.read_step_init,
        use_grad_norm_term=args.grad_norm_term,
    )
    return EBMMemory(energy, ebmm)


def make_evaluator(args: Args, test: ImageDataset, device: str) -> ImageEvaluator:
    """Test-split errors, read-iteration grids and energy histograms, every ``eval_every`` steps."""
    distortion = query_distortion(test, args.noise, args.noise_size, args.clamp_known)
    ood = None
    if args.ood_dataset is not None:
        other = load_split(args, args.ood_dataset, "test")
        ood = match_images(other.images[:1000], test.data_shape, test.binary)
    return ImageEvaluator(
        test,
        distortion,
        args.batch_size,
        args.num_patterns,
        classes_per_episode=args.classes_per_episode,
        num_batches=args.eval_batches,
        seed=10_000 + args.seed,
        device=device,
        grid_rows=args.grid_rows,
        ood=ood,
    )


def run_folder(args: Args, memory_size: int, context: DistributedContext) -> Path:
    """``--run-dir``, or a new ``run_root/{dataset}__{arch}-N{N}-mem{size}__{seed}__{time}`` (rank 0's name)."""
    if args.run_dir is not None:
        return Path(args.run_dir)
    name = f"{args.dataset}__{args.arch}-N{args.num_patterns}-mem{memory_size}__{args.seed}__{int(time.time())}"
    return Path(broadcast_object(str(Path(args.run_root) / name), context))


# ----------------------------------------------------------------------------------------------------------- main
def main(args: Args) -> None:
    """Meta-train, evaluate, checkpoint; print the final test error (and parameter checksums under torchrun)."""
    start_run(args, args.steps)
    context = init_distributed(args.device)
    try:
        train(args, context)
    finally:
        cleanup_distributed()


def train(args: Args, context: DistributedContext) -> None:
    """The body of :func:`main`, inside the (possibly one-process) process group."""
    if context.distributed and args.time_limit_min:
        raise SystemExit(
            "--time-limit-min is not available under torchrun: each rank would stop at its own step and the others "
            "would wait for it forever; give --steps instead"
        )
    torch.manual_seed(args.seed)
    train_set = load_split(args, args.dataset, "train")
    memory = build_memory(args, train_set.data_shape)
    run_dir = run_folder(args, memory.memory_size, context)
    distortion = query_distortion(train_set, args.noise, args.noise_size, args.clamp_known)
    try:
        sampler = make_sampler(
            train_set, distortion, args.batch_size, args.num_patterns, args.classes_per_episode, context.device
        )
    except ValueError as err:
        raise SystemExit(f"{args.dataset} train: {err}") from None
    evaluator = (
        make_evaluator(args, load_split(args, args.dataset, "test"), context.device) if context.is_main else None
    )
    config = TrainConfig.from_args(
        args,
        device=context.device,
        progress=args.progress and context.is_main,
        status_every_s=args.status_every_s if context.is_main else 0.0,
    )
    hparams = {**asdict(args), "world_size": context.world_size}
    if context.distributed:
        trainer: MetaTrainer = DistributedMetaTrainer(
            memory, sampler, config, run_dir, hparams, evaluator, context=context
        )
    else:
        trainer = MetaTrainer(memory, sampler, config, run_dir, hparams, evaluator)
    if evaluator is not None:
        # Workaround until MetaTrainer passes its writer to callbacks: log grids and histograms through it.
        evaluator.log_to(trainer._tensorboard, lambda: trainer.step)
    if context.is_main:
        print(
            f"EBMM {args.arch} on {args.dataset} {tuple(train_set.data_shape)}: memory size {memory.memory_size} "
            f"floats, N={args.num_patterns}, {args.batch_size} episodes/step x {context.world_size} process(es), "
            f"run folder {run_dir}",
            flush=True,
        )
    start_step = int(load_checkpoint(run_dir / CHECKPOINT_NAME)["step"]) if args.resume else 0
    start = time.perf_counter()
    result = train_or_exit(trainer, resume=args.resume)
    seconds = time.perf_counter() - start
    if context.is_main:
        metric = metric_name(train_set.binary)
        steps = max(trainer.step - start_step, 1)
        print(
            f"{args.dataset} test {metric}: {result[metric]:.2f} (p5 {result[metric + '_p5']:.2f}, p95 "
            f"{result[metric + '_p95']:.2f}, {args.eval_batches} batches of {args.batch_size}x{args.num_patterns}) "
            f"after {trainer.step} steps; {seconds / 60:.1f} min this session ({seconds / steps:.2f} s/step incl. "
            f"evaluation) on {context.device}; {trainer.summary()}; checkpoint {trainer.checkpoint_path}",
            flush=True,
        )
    if context.distributed:
        torch.distributed.barrier()
        print(f"rank {context.rank}: parameter checksum {parameter_checksum(trainer.memory)}", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args))

"""Meta-train a baseline memory on random binary patterns (paper App. A.2, Table 1 rows) or on images (§4).

Any trainable memory of :data:`ebmm_rl.protocol.MEMORIES` (``memnet``, ``mann``, ``lstm``, ``plasticity``,
``dkm``, ``dae``, ``vae``; ``ebmm_rnn`` too, though ``scripts/meta_train_binary.py`` has its tuned options) is built
at the memory budget, trained by :class:`~ebmm_rl.training.MetaTrainer` on batches whose ``N`` is drawn from
``--num-patterns``, and checkpointed for ``scripts/eval_binary.py --model NAME=run/checkpoint.pt``::

    python scripts/meta_train_baseline.py --model memnet --time-limit-min 6 --run-root /work/runs_base

With ``--dataset omniglot`` (or ``cifar10``, ``mnist``, ``imagenet64``) the memory gets the shared ResNet
encoder/decoder and is trained on episodes of ``N`` images with the ``--noise`` distortion (the paper's block by
default); ``scripts/eval_distortion_rate.py --checkpoints`` reads its checkpoint (distortion-rate points, Table 2)::

    python scripts/meta_train_baseline.py --model dae --dataset omniglot --num-patterns 32 --time-limit-min 6

TensorBoard: ``tensorboard --logdir runs``. Resume a stopped run with ``--resume --run-dir runs/<name>``.
"""

from __future__ import annotations

import ast
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import tyro

from ebmm_rl.binary import TABLE1_NUM_PATTERNS
from ebmm_rl.binary_training import binary_evaluator, binary_sampler
from ebmm_rl.cli import RunArgs, start_run, train_or_exit
from ebmm_rl.distortions import make_sampler
from ebmm_rl.image_eval import NOISES, episode_errors, metric_name, query_distortion
from ebmm_rl.protocol import HOPFIELD_BUDGET, MEMORIES, build_memory
from ebmm_rl.training import MetaTrainer, TrainConfig


@dataclass
class Args(RunArgs):
    """Meta-training of a baseline memory on random ±1 patterns."""

    model: str = "memnet"
    """registered memory to train (ebmm_rl.protocol.MEMORIES): memnet, mann, lstm, plasticity, dkm, dae, vae"""
    set: list[str] = field(default_factory=list)
    """config overrides KEY=VALUE (Python literals), e.g. read_steps=3"""
    num_patterns: list[int] = field(default_factory=lambda: list(TABLE1_NUM_PATTERNS))
    """patterns written per episode; each batch draws one of these values"""
    dataset: str = "binary"
    """binary (random ±1 patterns, App. A.2) or an image data set: omniglot, cifar10, mnist, imagenet64"""
    noise: str = "block"
    """image query distortion (block, erase, salt_pepper, dropout, gaussian; block is the paper's)"""
    noise_size: float | None = None
    """block side in pixels (default: half the image side), or salt_pepper/dropout probability (default 0.15),
    gaussian std"""
    data_dir: str | None = None
    """folder holding the image data sets (default: $EBMM_DATA_DIR)"""
    mnist_dir: str | None = None
    """folder holding the MNIST IDX files (default: <data-dir>/mnist)"""
    dim: int = 128
    """bits per pattern"""
    budget: int = HOPFIELD_BUDGET
    """memory budget in floats (the paper's: 128·127/2 + 128 = 8256)"""
    num_corrupted: int = 64
    """bits of each query set to random ±1; the others are known and clamped"""
    batch_size: int = 8
    """episodes per meta-step"""
    steps: int = 1_000_000
    """meta-steps in total (the time limit usually ends the run first)"""
    time_limit_min: float = 0.0
    """stop after this many minutes of this process's CPU time (0: none)"""
    lr: float = 1e-3
    """AdamW learning rate (paper: 5e-5 over 2e6 steps; a CPU budget needs a larger one)"""
    grad_clip: float = 0.05
    """global gradient-norm clipping (paper: 0.05)"""
    skip_grad_norm: float = 1e4
    """skip a step whose gradient norm exceeds this (divergence guard; image losses sum over many pixels and
    start near 1e4 without diverging: raise it there)"""
    eval_patterns: list[int] = field(default_factory=lambda: [32, 64, 96])
    """N of the periodic evaluations (their mean picks best.pt)"""
    eval_batches: int = 4
    """random batches of each periodic evaluation (0: no evaluation, the last step's loss is printed; saves the
    end-of-run evaluation of slow readers such as the VAE's 50 latent steps)"""
    eval_every: int = 200
    """steps between evaluations (0: only at the end)"""
    checkpoint_every: int = 100
    """steps between checkpoints"""


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``["key=value", ...]`` -> ``{key: literal value}`` (strings that are not literals stay strings)."""
    overrides: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value
    return overrides


def image_task(args: Args):
    """``(memory, sampler, evaluator)`` for episodes of ``N`` images with the ``--noise`` distortion."""
    from meta_train_images import load_data  # the image scripts' data loading, with their error messages

    if len(args.num_patterns) != 1:
        raise SystemExit(f"--dataset {args.dataset} needs one --num-patterns N, got {args.num_patterns}")
    n = args.num_patterns[0]
    train, test = (
        load_data(args.data_dir, args.dataset, split, mnist_dir=args.mnist_dir) for split in ("train", "test")
    )
    overrides = {"data_shape": train.data_shape, "data_range": (0.0, 1.0), **parse_overrides(args.set)}
    memory = build_memory(args.model, budget=args.budget, **overrides)
    if args.noise not in NOISES:
        raise SystemExit(f"--noise {args.noise!r} is not a query distortion; choose one of {list(NOISES)}")
    try:
        distortions = [query_distortion(split, args.noise, args.noise_size) for split in (train, test)]
    except ValueError as err:
        raise SystemExit(f"--noise {args.noise} --noise-size {args.noise_size}: {err}") from None
    train_sampler = make_sampler(train, distortions[0], args.batch_size, n, None, args.device)
    test_sampler = make_sampler(test, distortions[1], args.batch_size, n, None, args.device)
    metric = metric_name(test.binary)

    def evaluate(memory) -> dict[str, float]:
        scores = episode_errors(memory, test_sampler, args.eval_batches * args.batch_size, 10_000 + args.seed)
        return {metric: float(scores.mean())}

    return memory, train_sampler, evaluate


def main(args: Args) -> None:
    """Meta-train, checkpoint, and print the final error bits."""
    entry = MEMORIES.get(args.model)
    if entry is None or not entry.trainable:
        trainable = sorted(name for name, e in MEMORIES.items() if e.trainable)
        raise SystemExit(f"--model {args.model!r} is not a trainable memory; choose one of {trainable}")
    start_run(args, args.steps)
    torch.manual_seed(args.seed)
    name = f"{args.dataset}__{args.model}__{args.seed}__{int(time.time())}"
    run_dir = Path(args.run_dir or Path(args.run_root) / name)
    if args.dataset == "binary":
        memory = build_memory(args.model, args.dim, args.budget, **parse_overrides(args.set))
        sampler = binary_sampler(args.batch_size, args.num_patterns, args.dim, args.num_corrupted)
        evaluator = binary_evaluator(
            args.eval_patterns, args.eval_batches, args.batch_size, args.dim, args.num_corrupted,
            10_000 + args.seed, args.device,
        )  # fmt: skip
    else:
        memory, sampler, evaluator = image_task(args)
    params = sum(p.numel() for p in memory.parameters() if p.requires_grad)
    print(f"{entry.row}: memory size {memory.memory_size} floats, {params} meta-parameters, run folder {run_dir}")
    hparams = {**asdict(args), "memory_size": memory.memory_size, "meta_parameters": params}
    if args.dataset != "binary":  # one N, recorded as scripts/eval_distortion_rate.py reads it
        hparams["num_patterns"] = args.num_patterns[0]
    trainer = MetaTrainer(
        memory,
        sampler,
        TrainConfig.from_args(args),
        run_dir=run_dir,
        hparams=hparams,
        evaluate=evaluator if args.eval_batches else None,
    )
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    result = train_or_exit(trainer, resume=args.resume)
    wall, cpu = (time.perf_counter() - start_wall) / 60, (time.process_time() - start_cpu) / 60
    scores = ", ".join(f"{k} {v:.2f}" for k, v in result.items())
    print(
        f"{args.model}: {scores} ({args.eval_batches} batches of {args.batch_size}) after {trainer.step} steps, "
        f"{cpu:.1f} min CPU / {wall:.1f} min wall this session on {args.device}; {trainer.summary()}; checkpoint "
        f"{trainer.checkpoint_path} (best evaluation: {run_dir / 'best.pt'})"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))

"""Recall without RL: supervised sequence tasks through the agent's memory core, beside an LSTM and a GRU.

Each step shows one of ``--symbols`` symbols (a one-hot row in ``{-1, 1}``); the model names a symbol it saw:

* ``first``: at every step ``t ≥ 1``, the symbol of step 0;
* ``lag-<k>``: at every step ``t ≥ k``, the symbol of step ``t − k``;
* ``key-value``: the first half of the sequence shows ``(key, value)`` pairs with distinct keys, the second half
  shows a stored key alone (and a query flag); the model names the value stored with it.

Models: ``ebmm`` is :class:`~ebmm_rl.rl.core.MemoryCore` through its real :meth:`~ebmm_rl.rl.core.MemoryCore.unroll`
(gradients through every write since the sequence's start, into every map and meta-parameter; each sequence at a
random step clock, as an agent's clock runs on across episodes); ``lstm`` and ``gru`` are ``torch.nn`` recurrent
layers. Each gets a linear head on its features and is trained by cross-entropy with Adam on fresh batches, then
evaluated on ``--eval-batch`` fresh sequences of the training length and of twice it (``key-value``: twice as many
pairs). A lag task trains on sequences of ``max(--length, 2k)`` steps. Results go to a markdown table (and
``--json``)::

    python scripts/eval_recall.py --tasks first lag-4 key-value --steps 400
    python scripts/eval_recall.py --tasks lag-64 --models ebmm lstm --steps 600 --json /tmp/recall.json
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import tyro
from torch import Tensor, nn
from tqdm.auto import tqdm

from ebmm_rl.cli import usage_error
from ebmm_rl.rl.core import CoreConfig, MemoryCore

CLOCK_SPAN = 4096
"""A sequence starts at a random step clock below this."""


@dataclass
class Args:
    """Supervised recall through the memory core, an LSTM and a GRU."""

    tasks: tuple[str, ...] = ("first", "lag-4", "lag-16", "key-value")
    """tasks: first, lag-<k> (k >= 1), key-value"""
    models: tuple[str, ...] = ("ebmm", "lstm", "gru")
    """models: ebmm, lstm, gru"""
    length: int = 16
    """training sequence length (key-value: pairs + queries; a lag-k task uses at least 2k)"""
    symbols: int = 8
    """symbols (and keys and values of key-value)"""
    steps: int = 400
    """training steps (batches)"""
    batch_size: int = 32
    """sequences per training batch"""
    eval_batch: int = 512
    """sequences per evaluation"""
    lr: float = 3e-3
    """Adam learning rate"""
    lstm_hidden: int = 256
    """LSTM units"""
    gru_hidden: int = 256
    """GRU units"""
    core: str = "{}"
    """ebmm: CoreConfig fields overriding its defaults, as JSON (``--core '{"hidden_size": 32}'``)"""
    seed: int = 0
    """seed of the initialisation and the data"""
    threads: int = 1
    """torch CPU threads"""
    json: str | None = None
    """also write the results as JSON to this file"""
    progress: bool = True
    """show a progress bar per run"""


def make_batch(task: str, batch: int, length: int, symbols: int, generator: torch.Generator) -> tuple[Tensor, ...]:
    """``(rows [B, T, D], targets [B, T], scored [B, T] bool)`` of one task (module docstring)."""
    if task == "key-value":
        pairs = length // 2
        keys = torch.stack([torch.randperm(2 * symbols, generator=generator)[:pairs] for _ in range(batch)])  # [B, N]
        values = torch.randint(0, symbols, (batch, pairs), generator=generator)
        asked = torch.stack([torch.randperm(pairs, generator=generator) for _ in range(batch)])  # [B, N]
        key_rows = torch.cat([keys, keys.gather(1, asked)], dim=1)  # [B, 2N]
        value_rows = torch.cat([values, torch.zeros_like(values)], dim=1)
        rows = torch.cat(
            [
                F.one_hot(key_rows, 2 * symbols),
                F.one_hot(value_rows, symbols) * torch.arange(2 * pairs).ge(pairs).logical_not().view(1, -1, 1),
                torch.arange(2 * pairs).ge(pairs).view(1, -1, 1).expand(batch, -1, 1),
            ],
            dim=2,
        ).float()
        targets = torch.cat([values, values.gather(1, asked)], dim=1)
        scored = torch.arange(2 * pairs).ge(pairs).expand(batch, -1)
        return rows * 2 - 1, targets, scored
    seq = torch.randint(0, symbols, (batch, length), generator=generator)
    if task == "first":
        targets, lag = seq[:, :1].expand(batch, length), 1
    else:
        lag = int(task.split("-")[1])
        targets = torch.roll(seq, lag, dims=1)
    scored = torch.arange(length).ge(lag).expand(batch, -1)
    return F.one_hot(seq, symbols).float() * 2 - 1, targets, scored


class CoreModel(nn.Module):
    """The memory core through its real ``unroll``, and a linear head."""

    def __init__(self, row_size: int, classes: int, config: CoreConfig | None = None) -> None:
        super().__init__()
        self.core = MemoryCore(row_size, config or CoreConfig())
        self.head = nn.Linear(self.core.features_dim, classes)

    def forward(self, rows: Tensor, clock: Tensor) -> Tensor:
        """``rows [B, T, D]``, ``clock [B]`` -> logits ``[B, T, classes]`` (a sequence starts at step 0)."""
        B, T, _ = rows.shape
        starts = torch.zeros(B, T, dtype=torch.bool)
        starts[:, 0] = True
        features, _, _ = self.core.unroll(rows, starts, self.core.memory.initial_state(B), clock)
        return self.head(features).reshape(B, T, -1)

    def state_floats(self) -> int:
        """Floats the model carries from step to step: the memory size."""
        return self.core.memory.memory_size


class RecurrentModel(nn.Module):
    """An LSTM or a GRU, and a linear head."""

    def __init__(self, kind: str, row_size: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.kind, self.hidden = kind, hidden
        self.rnn = (nn.LSTM if kind == "lstm" else nn.GRU)(row_size, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, rows: Tensor, clock: Tensor) -> Tensor:
        """``rows [B, T, D]`` -> logits ``[B, T, classes]`` (``clock`` is unused)."""
        return self.head(self.rnn(rows)[0])

    def state_floats(self) -> int:
        """Floats the model carries from step to step: hidden (and cell) state."""
        return self.hidden * (2 if self.kind == "lstm" else 1)


def build(model: str, row_size: int, classes: int, args: Args) -> nn.Module:
    """One model of ``--models``."""
    if model == "ebmm":
        return CoreModel(row_size, classes, CoreConfig.build(**json.loads(args.core)))
    return RecurrentModel(model, row_size, args.lstm_hidden if model == "lstm" else args.gru_hidden, classes)


def train_length(task: str, args: Args) -> int:
    """Sequence length a task trains on."""
    if task.startswith("lag-"):
        return max(args.length, 2 * int(task.split("-")[1]))
    return args.length


def evaluate(net: nn.Module, task: str, length: int, args: Args, generator: torch.Generator) -> dict[str, float]:
    """Accuracy over the scored steps, and the lowest accuracy of any scored position."""
    rows, targets, scored = make_batch(task, args.eval_batch, length, args.symbols, generator)
    clock = torch.randint(0, CLOCK_SPAN, (args.eval_batch,), generator=generator)
    with torch.no_grad():
        right = (net(rows, clock).argmax(-1) == targets).float()
    per_position = (right * scored).sum(0)[scored[0]] / scored.sum(0)[scored[0]]
    return {"accuracy": float(right[scored].mean()), "worst_position": float(per_position.min())}


def run(task: str, model: str, args: Args) -> dict[str, float]:
    """Train one model on one task, evaluate it at the training length and at twice it."""
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    length = train_length(task, args)
    rows, _, _ = make_batch(task, 1, length, args.symbols, generator)
    net = build(model, rows.shape[2], args.symbols, args)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    start = time.process_time()
    bar = tqdm(range(args.steps), desc=f"{task} {model}", disable=not args.progress, leave=False)
    for _ in bar:
        rows, targets, scored = make_batch(task, args.batch_size, length, args.symbols, generator)
        clock = torch.randint(0, CLOCK_SPAN, (args.batch_size,), generator=generator)
        loss = F.cross_entropy(net(rows, clock)[scored], targets[scored])
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    cpu = time.process_time() - start
    held = torch.Generator().manual_seed(10_000 + args.seed)
    at_length = evaluate(net, task, length, args, held)
    at_double = evaluate(net, task, 2 * length, args, held)
    return {
        "task": task,
        "model": model,
        "train_length": length,
        "state_floats": net.state_floats(),
        "accuracy": at_length["accuracy"],
        "accuracy_2x": at_double["accuracy"],
        "worst_position_2x": at_double["worst_position"],
        "train_cpu_s": cpu,
    }


def check(args: Args) -> None:
    """Usage errors (exit code 2) for impossible settings."""
    for task in args.tasks:
        if task in ("first", "key-value"):
            continue
        name, _, k = task.partition("-")
        if name != "lag" or not k.isdigit() or int(k) < 1:
            usage_error(f"unknown task {task!r}; tasks are first, lag-<k> with k >= 1, key-value")
    bad = [m for m in args.models if m not in ("ebmm", "lstm", "gru")]
    if bad or not args.models:
        usage_error(f"--models takes ebmm, lstm and gru, got {list(args.models)}")
    for name in ("length", "symbols", "steps", "batch_size", "eval_batch", "lstm_hidden", "gru_hidden", "threads"):
        if getattr(args, name) < (2 if name in ("length", "symbols") else 1):
            usage_error(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    if not args.lr > 0:
        usage_error(f"--lr must be positive, got {args.lr}")
    try:
        fields = json.loads(args.core)
        CoreConfig.build(**fields)
    except (TypeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        usage_error(f"--core must be a JSON object of CoreConfig fields: {error}")


def main(args: Args) -> list[dict[str, float]]:
    """Run every task × model and print the table."""
    check(args)
    torch.set_num_threads(args.threads)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"eval_recall: {args.steps} steps of batch {args.batch_size}, Adam {args.lr}, {args.symbols} symbols, seed "
          f"{args.seed}; torch threads {torch.get_num_threads()}, load average {load}, {platform.machine()}, "
          f"torch {torch.__version__}")  # fmt: skip
    results = []
    for task in args.tasks:
        for model in args.models:
            results.append(run(task, model, args))
            r = results[-1]
            print(f"{task} {model}: {r['accuracy']:.4f} at length {r['train_length']}, {r['accuracy_2x']:.4f} at "
                  f"{2 * r['train_length']} ({r['train_cpu_s']:.0f} CPU-s)", flush=True)  # fmt: skip
    print("\n| task | train length | model | state floats | accuracy | accuracy at 2x | worst position at 2x | "
          "train CPU-s |\n|---|---:|---|---:|---:|---:|---:|---:|")  # fmt: skip
    for r in results:
        print(f"| {r['task']} | {r['train_length']} | {r['model']} | {r['state_floats']} | {r['accuracy']:.4f} | "
              f"{r['accuracy_2x']:.4f} | {r['worst_position_2x']:.3f} | {r['train_cpu_s']:.0f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"args": asdict(args), "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))

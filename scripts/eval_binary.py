"""Table 1 of the paper: error bits of retrieved random binary patterns, for Hopfield rules, EBMM and baselines.

Every cell writes ``N`` random 128-bit patterns per episode, corrupts 64 random bits of each (set to random ±1),
lets the model clamp the other 64, and counts wrong bits of the retrieved pattern; it prints ``mean (p5–p95)``
over ``--num-batches`` random batches next to the paper's value.

    python scripts/eval_binary.py                                            # the three Hopfield rows
    python scripts/eval_binary.py --rules --ebmm runs/binary__N32__0__*/checkpoint.pt   # EBMM only
    python scripts/eval_binary.py --rules --model memnet=runs/binary__memnet__0__*/best.pt modern_hopfield

Each EBMM checkpoint (from ``scripts/meta_train_binary.py``) gives one row, evaluated at every ``N``. Each
``--model`` gives one row of a registered memory (:data:`ebmm_rl.protocol.MEMORIES`): ``NAME=CHECKPOINT`` for a
meta-trained one (from ``scripts/meta_train_baseline.py``), ``NAME`` or ``NAME:KEY=VALUE,...`` (config
overrides, e.g. ``modern_hopfield:budget=12288``) for one that needs no training.
"""

from __future__ import annotations

import ast
import sys
import time
from dataclasses import dataclass, field

import torch
import tyro

from ebmm_rl.binary import PAPER_TABLE1, TABLE1_NUM_PATTERNS, evaluate, format_table, summarize
from ebmm_rl.checkpoint import load_checkpoint, load_memory
from ebmm_rl.cli import check_device
from ebmm_rl.hopfield import HopfieldConfig, hopfield_memory
from ebmm_rl.protocol import HOPFIELD_BUDGET, MEMORIES, build_memory

HOPFIELD_ROWS = {"hebb": "Hebb", "storkey": "Storkey", "pseudo_inverse": "pseudo-inverse"}
"""Rule name -> row name of :data:`ebmm_rl.binary.PAPER_TABLE1`."""


@dataclass
class Args:
    """Evaluate Table 1."""

    rules: list[str] = field(default_factory=lambda: list(HOPFIELD_ROWS))
    """Hopfield writing rules to evaluate (hebb, storkey, pseudo_inverse); pass none to skip them"""
    ebmm: list[str] = field(default_factory=list)
    """EBMM checkpoints (checkpoint.pt of scripts/meta_train_binary.py runs), one row each"""
    model: list[str] = field(default_factory=list)
    """registered memories, one row each: NAME=CHECKPOINT (meta-trained), NAME or NAME:KEY=VALUE,... (untrained)"""
    patterns: list[int] = field(default_factory=lambda: list(TABLE1_NUM_PATTERNS))
    """numbers of stored patterns N, one column each"""
    num_batches: int = 1000
    """random batches per cell (the paper's error bars use 1000)"""
    batch_size: int = 1
    """memories per batch. The paper's "batch" is the set of N patterns written into one memory, so the
    default 1 gives its protocol: p5/p95 over 1000 memories (larger values average memories first)"""
    num_corrupted: int = 64
    """corrupted bits per query (the others are clamped)"""
    seed: int = 0
    """seed of patterns, corruption and Hopfield update order (the same batches for every row)"""
    max_sweeps: int = 100
    """cap on asynchronous Hopfield sweeps per read"""
    batches_per_call: int = 64
    """batches stacked into one write/read call (speed only; changes the random stream)"""
    threads: int = 1
    """torch CPU threads (0: torch's default)"""
    device: str = "cpu"
    """torch device"""
    compile: bool = False
    """evaluate EBMM rows through torch.compile (forward only, closed-form energies; falls back to eager with a
    message where compilation fails). Compiling takes tens of seconds per N; it pays for large --num-batches"""


def evaluate_row(retrieve_for, args: Args, label: str, start: float) -> list[dict]:
    """Summaries of one model at every ``N`` of ``args.patterns``."""
    summaries = []
    for n in args.patterns:
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
        errors = evaluate(
            retrieve_for(generator), n, args.num_batches, args.batch_size, 128, args.num_corrupted,
            generator=generator, device=args.device, batches_per_call=args.batches_per_call,
        )  # fmt: skip
        summaries.append(summarize(errors))
        elapsed = time.perf_counter() - start
        print(f"{label} N={n}: {summaries[-1]['mean']:.2f} error bits ({elapsed:.0f} s)", file=sys.stderr, flush=True)
    return summaries


def _literal(value: str) -> object:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def load_model(spec: str, device: str) -> tuple[str, object, str]:
    """``NAME=CHECKPOINT``, ``NAME`` or ``NAME:KEY=VALUE,...`` -> ``(row name, memory, note)``.

    Raises:
        SystemExit: on an unknown name, a checkpoint of another model, or a trainable model without one.
    """
    head, sep, path = spec.partition("=")
    if ":" in head:  # NAME:KEY=VALUE,... (the first "=" belonged to the overrides)
        head, sep, path = spec, "", ""
    name, _, override_text = head.partition(":")
    entry = MEMORIES.get(name)
    if entry is None:
        raise SystemExit(f"--model {spec!r}: unknown memory {name!r}; choose from {sorted(MEMORIES)}")
    if sep:
        memory = load_memory(path, map_location=device).eval()
        if not isinstance(memory, entry.cls):
            raise SystemExit(f"--model {spec!r}: {path} holds a {type(memory).__name__}, not a {entry.cls.__name__}")
        info = load_checkpoint(path)
        hparams = info.get("hparams", {})
        trained_n = hparams.get("num_patterns", "?")
        note = f"{path}: {info.get('step', '?')} steps, trained at N = {trained_n}"
        return entry.row, memory, note
    if entry.trainable:
        raise SystemExit(f"--model {spec!r}: {name} must be meta-trained first; pass {name}=CHECKPOINT")
    overrides = dict(item.split("=", 1) for item in override_text.split(",") if item)
    overrides = {k: _literal(v) for k, v in overrides.items()}
    budget = int(overrides.pop("budget", HOPFIELD_BUDGET))
    memory = build_memory(name, 128, budget, **overrides)
    label = entry.row if not override_text else f"{entry.row} ({override_text})"
    return label, memory, "no training"


def ebmm_retrieve(memory, compile: bool):
    """``retrieve(patterns, queries, known) -> retrieved`` of an EBMM; compiled with ``torch.compile`` if asked.

    Compiled only on the closed-form path, under ``torch.no_grad`` (the autograd path differentiates inside the
    read, which ``torch.compile`` does not trace). A compilation error (no C++ compiler for the CPU backend, no
    Triton for CUDA, an unsupported op) prints one message and the evaluation goes on eagerly.
    """

    def eager(p, q, k):
        return memory.read(q, memory.write(p), k).retrieved

    if not compile:
        return eager
    if not memory.uses_closed_form:
        print("--compile: this energy has no closed form; evaluating eagerly", file=sys.stderr)
        return eager

    def forward(p, q, k):
        with torch.no_grad():
            return eager(p, q, k)

    current = {"fn": torch.compile(forward)}

    def retrieve(p, q, k):
        try:
            return current["fn"](p, q, k)
        except Exception as err:  # any backend failure: fall back rather than lose the evaluation
            if current["fn"] is forward:
                raise
            print(f"--compile failed ({type(err).__name__}: {str(err)[:200]}); evaluating eagerly", file=sys.stderr)
            current["fn"] = forward
            return forward(p, q, k)

    return retrieve


def main(args: Args) -> None:
    """Evaluate every requested row and print the table."""
    check_device(args.device)
    unknown = [r for r in args.rules if r not in HOPFIELD_ROWS]
    if unknown:
        raise SystemExit(f"unknown rule(s) {unknown}; choose from {list(HOPFIELD_ROWS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows: dict[str, list[dict]] = {}
    for rule in args.rules:
        memory = hopfield_memory(rule, HopfieldConfig(dim=128, max_sweeps=args.max_sweeps))

        def hopfield_for(generator, memory=memory):
            return lambda p, q, k: memory.read(q, memory.write(p), known_mask=k, generator=generator)

        rows[HOPFIELD_ROWS[rule]] = evaluate_row(hopfield_for, args, rule, start)
    for path in args.ebmm:
        memory = load_memory(path, map_location=args.device).eval()
        info = load_checkpoint(path)
        trained_n, steps = info.get("hparams", {}).get("num_patterns", "?"), info.get("step", "?")

        retrieve = ebmm_retrieve(memory, args.compile)

        def ebmm_for(generator, retrieve=retrieve):
            return retrieve

        rows[f"EBMM RNN (trained at N={trained_n}, {steps} steps)"] = evaluate_row(ebmm_for, args, path, start)
    notes = []
    for spec in args.model:
        label, memory, note = load_model(spec, args.device)
        while label in rows:
            label += " ′"
        notes.append(f"* {label}: memory size {memory.memory_size} floats; {note}")

        def model_for(generator, memory=memory):
            def retrieve(p, q, k):
                with torch.no_grad():
                    return memory.recall(q, memory.write(p), k)

            return retrieve

        rows[label] = evaluate_row(model_for, args, label, start)
    print(
        f"Error bits of retrieved 128-bit patterns ({args.num_corrupted} bits corrupted, the rest clamped): "
        f"mean (p5–p95 of per-batch means) over {args.num_batches} batches of {args.batch_size} episodes, "
        f"seed {args.seed}\n"
    )
    print(format_table(rows, args.patterns, paper=PAPER_TABLE1))
    if args.ebmm:
        paper = PAPER_TABLE1["EBMM RNN"]
        cells = [f"{paper[TABLE1_NUM_PATTERNS.index(n)]:g}" if n in TABLE1_NUM_PATTERNS else "–" for n in args.patterns]
        print("| EBMM RNN (paper) | " + " | ".join(cells) + " |")
    if notes:
        print("\n" + "\n".join(notes))
    print(f"\nwall time: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(tyro.cli(Args))

"""Print the Hopfield-network rows of the paper's Table 1 (random binary patterns, Appendix A.2).

For every writing rule and number of stored patterns ``N``, runs ``--num-batches`` random batches of
``--batch-size`` episodes: store ``N`` random 128-bit patterns, corrupt 64 random bits of each (set to random
-1/+1), clamp the other 64, retrieve with asynchronous Hopfield dynamics and count error bits. Prints a Markdown
table of "mean (p5–p95)" error bits per cell next to the paper's value, then the wall time.

Example::

    python scripts/eval_hopfield.py --num-batches 1000 --batch-size 32 --seed 0

The full default run took 52 minutes on a shared 2-core CPU. Per-batch means spread by about 0.2 bits, so
``--num-batches 100`` gives the same means to within about 0.05 bits in a tenth of the time.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import time
from dataclasses import dataclass, field

import torch

from ebmm_rl.binary import PAPER_TABLE1, TABLE1_NUM_PATTERNS, evaluate, format_table, summarize
from ebmm_rl.hopfield import HopfieldConfig, hopfield_memory

ROW_NAMES = {"hebb": "Hebb", "storkey": "Storkey", "pseudo_inverse": "pseudo-inverse"}
"""Rule name -> row name in :data:`ebmm_rl.binary.PAPER_TABLE1`."""


@dataclass
class Args:
    """Command-line arguments (each field's docstring is its ``--help``)."""

    num_batches: int = 1000
    """number of random batches per cell (the paper's error bars use 1000)"""
    batch_size: int = 32
    """episodes (independent memories) per batch; p5/p95 are over per-batch mean error bits"""
    seed: int = 0
    """random seed for patterns, corruption and update order"""
    patterns: list[int] = field(default_factory=lambda: list(TABLE1_NUM_PATTERNS))
    """numbers of stored patterns N, one table column each"""
    rules: list[str] = field(default_factory=lambda: list(ROW_NAMES))
    """writing rules to evaluate: hebb, storkey, pseudo_inverse"""
    dim: int = 128
    """pattern size D in bits"""
    num_corrupted: int = 64
    """corrupted (randomised) bits per query; the others are clamped"""
    max_sweeps: int = 100
    """cap on asynchronous update sweeps per read"""
    batches_per_call: int = 8
    """batches stacked into one write/read call (speed only; changes the random stream)"""
    threads: int = 1
    """torch CPU threads; reads are chains of small ops, for which 1 was fastest on 2 cores (0: torch default)"""
    device: str = "cpu"
    """torch device"""


def _field_docs(cls: type) -> dict[str, str]:
    """Map each dataclass field to the string literal that follows it in the class body."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = following.value.value.strip()
    return docs


def parse_args(argv: list[str] | None = None) -> Args:
    """Build an argparse parser from :class:`Args` and parse ``argv`` (default: ``sys.argv``)."""
    docs = _field_docs(Args)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    for f in dataclasses.fields(Args):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: dict = {"default": default, "help": docs.get(f.name, "")}
        if isinstance(default, list):
            kwargs.update(nargs="+", type=type(default[0]))
        else:
            kwargs.update(type=type(default))
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    return Args(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    """Evaluate the Hopfield rules and print the table."""
    args = parse_args(argv)
    unknown = [rule for rule in args.rules if rule not in ROW_NAMES]
    if unknown:
        raise SystemExit(f"unknown rule(s) {unknown}; choose from {list(ROW_NAMES)}.")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = HopfieldConfig(dim=args.dim, max_sweeps=args.max_sweeps)
    start = time.perf_counter()
    rows = {}
    for rule in args.rules:
        memory = hopfield_memory(rule, config)
        summaries = []
        for num_patterns in args.patterns:
            generator = torch.Generator(device=args.device).manual_seed(args.seed)

            def retrieve(patterns, queries, known_mask, memory=memory, generator=generator):
                return memory.read(queries, memory.write(patterns), known_mask=known_mask, generator=generator)

            errors = evaluate(
                retrieve,
                num_patterns,
                num_batches=args.num_batches,
                batch_size=args.batch_size,
                dim=args.dim,
                num_corrupted=args.num_corrupted,
                generator=generator,
                device=args.device,
                batches_per_call=args.batches_per_call,
            )
            summaries.append(summarize(errors))
            print(
                f"{rule} N={num_patterns}: {summaries[-1]['mean']:.2f} error bits "
                f"({time.perf_counter() - start:.0f} s elapsed)",
                file=sys.stderr,
                flush=True,
            )
        rows[ROW_NAMES[rule]] = summaries
    elapsed = time.perf_counter() - start
    print(
        f"Error bits of retrieved {args.dim}-bit patterns ({args.num_corrupted} bits corrupted, rest clamped); "
        f"mean (p5–p95 of per-batch means) over {args.num_batches} batches of {args.batch_size} episodes, "
        f"seed {args.seed}\n"
    )
    print(format_table(rows, args.patterns, paper=PAPER_TABLE1))
    print(f"\nwall time: {elapsed:.1f} s")


if __name__ == "__main__":
    main()

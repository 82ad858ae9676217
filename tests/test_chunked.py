"""scripts/eval_chunked.py: recall per chunk position of chunked online writing vs batch writing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebmm_rl.binary import corrupt, error_bits, sample_patterns

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import eval_chunked  # noqa: E402

TINY = eval_chunked.Args(num_patterns=6, dim=16, num_corrupted=8, hidden_size=16, dynamic_size=8, write_steps=2,
                         read_steps=2, batch_size=2, eval_batches=3, steps=2, progress=False)  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def evaluate(memory, chunk_size):
    a = TINY
    return eval_chunked.evaluate_chunked(memory, chunk_size, a.num_patterns, a.dim, a.num_corrupted, 3, 2, seed=1)


@pytest.mark.parametrize("energy", ["mlp", "rnn"])
def test_evaluate_chunked_reports_every_position_and_chunk(energy):
    torch.manual_seed(0)
    memory = eval_chunked.build_memory(eval_chunked.Args(**{**vars(TINY), "energy": energy}), chunk_size=4)
    assert memory.config.chunk_size == 4
    result = evaluate(memory, 4)
    assert result.chunk_size == 4 and result.num_queries == 3 * 2
    assert len(result.per_position) == 6 and len(result.per_chunk) == 2  # chunks [0:4], [4:6]
    assert result.first == pytest.approx(sum(result.per_position[:4]) / 4)
    assert result.last == pytest.approx(sum(result.per_position[4:]) / 2)
    # per position: the same batches written chunk by chunk and read back here, errors averaged per position
    generator = torch.Generator().manual_seed(1)
    errors = []
    with torch.no_grad():
        for _ in range(3):
            patterns = sample_patterns(2, 6, 16, generator=generator)
            queries, known = corrupt(patterns, 8, generator=generator)
            state = memory.write(patterns[:, 4:], memory.write(patterns[:, :4]))
            errors.append(error_bits(memory.read(queries, state, known).retrieved, patterns))
    torch.testing.assert_close(torch.tensor(result.per_position), torch.stack(errors).reshape(-1, 6).mean(dim=0))


def test_batch_writing_is_one_chunk_and_matches_a_plain_write():
    torch.manual_seed(0)
    memory = eval_chunked.build_memory(TINY, chunk_size=6)
    assert memory.config.chunk_size == 0  # C >= N: meta-training writes the batch at once
    batch = evaluate(memory, 99)
    assert batch.chunk_size == 6 and batch.per_chunk == [batch.mean] and batch.first == batch.last == batch.mean
    # the same batches written with memory.write directly
    generator = torch.Generator().manual_seed(1)
    errors = []
    with torch.no_grad():
        for _ in range(3):
            patterns = sample_patterns(2, 6, 16, generator=generator)
            queries, known = corrupt(patterns, 8, generator=generator)
            retrieved = memory.read(queries, memory.write(patterns), known).retrieved
            errors.append(error_bits(retrieved, patterns))
    reference = torch.stack(errors).reshape(-1, 6).mean(dim=0)
    torch.testing.assert_close(torch.tensor(batch.per_position), reference)
    online = evaluate(memory, 1)
    assert len(online.per_chunk) == 6 and online.per_chunk == online.per_position


def test_format_table_has_one_row_per_evaluation():
    result = eval_chunked.ChunkResult(2, [1.0, 2.0, 3.0, 5.0], 10)
    table = eval_chunked.format_table([(2, 0.5, result)], num_patterns=4)
    assert table.splitlines()[-1] == "| 2 | 0.5 | 2 | 2 | 1.50 | 4.00 | 2.75 |"


def test_script_runs_on_a_tiny_budget():
    args = [
        "--chunk-sizes", "1", "6", "--num-patterns", "6", "--dim", "16", "--num-corrupted", "8", "--hidden-size",
        "16", "--dynamic-size", "8", "--write-steps", "2", "--read-steps", "2", "--batch-size", "2",
        "--eval-batches", "2", "--steps", "2", "--no-progress",
    ]  # fmt: skip
    result = subprocess.run([sys.executable, "scripts/eval_chunked.py", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 4  # 2 trained models x 2 write chunk sizes


@pytest.mark.parametrize("anchor", ["initial", "previous"])
def test_prior_anchor_reaches_the_memory(anchor):
    memory = eval_chunked.build_memory(eval_chunked.Args(**{**vars(TINY), "prior_anchor": anchor}), chunk_size=2)
    assert memory.config.prior_anchor == anchor and memory.config.chunk_size == 2

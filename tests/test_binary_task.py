import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebmm_rl.binary import (
    PAPER_TABLE1,
    TABLE1_NUM_PATTERNS,
    corrupt,
    error_bits,
    evaluate,
    format_table,
    sample_patterns,
    summarize,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Tiny tensors: on a shared 2-core machine intra-op threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sample_patterns_shape_values_and_seed():
    gen = torch.Generator().manual_seed(0)
    patterns = sample_patterns(3, 5, dim=128, generator=gen)
    assert patterns.shape == (3, 5, 128)
    assert patterns.dtype == torch.float32
    assert set(patterns.unique().tolist()) == {-1.0, 1.0}
    again = sample_patterns(3, 5, dim=128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(patterns, again)
    # roughly balanced bits
    assert abs(float(patterns.mean())) < 0.1


@pytest.mark.parametrize("num_corrupted", [0, 1, 64, 128])
def test_corrupt_changes_exactly_the_chosen_positions(num_corrupted):
    gen = torch.Generator().manual_seed(1)
    patterns = sample_patterns(4, 6, generator=gen)
    original = patterns.clone()
    queries, known_mask = corrupt(patterns, num_corrupted=num_corrupted, generator=gen)
    assert queries.shape == known_mask.shape == patterns.shape
    assert known_mask.dtype == torch.bool
    # exactly num_corrupted unknown positions per query
    assert torch.equal((~known_mask).sum(-1), torch.full((4, 6), num_corrupted))
    # known positions keep their value; queries stay +-1
    assert torch.equal(queries[known_mask], patterns[known_mask])
    assert bool(((queries == 1) | (queries == -1)).all())
    assert torch.equal(patterns, original)  # input untouched


def test_corrupt_randomises_about_half_of_the_corrupted_bits():
    gen = torch.Generator().manual_seed(2)
    patterns = sample_patterns(64, 32, generator=gen)
    queries, known_mask = corrupt(patterns, num_corrupted=64, generator=gen)
    flipped = (queries != patterns).sum(-1).float()
    assert 30.0 < float(flipped.mean()) < 34.0  # random +-1 values: 32 flips on average, not 64
    # positions differ between queries
    assert not torch.equal(known_mask[0, 0], known_mask[0, 1])


def test_error_bits_known_cases():
    patterns = torch.tensor([[[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, 1.0, 1.0]]])  # [1, 2, 4]
    retrieved = torch.tensor([[[1.0, -1.0, 1.0, -1.0], [-0.5, 0.0, 2.0, -3.0]]])
    errors = error_bits(retrieved, patterns)
    assert errors.shape == (1, 2)
    # second: -0.5 -> -1 (error), 0 -> +1 (counts as +1: no error), 2 -> +1, -3 -> -1 (error)
    assert errors.tolist() == [[0.0, 2.0]]
    assert error_bits(-patterns, patterns).tolist() == [[4.0, 4.0]]


def test_summarize_percentiles_over_batch_means():
    # batch b has every error equal to b: per-batch means 0..99
    errors = torch.arange(100, dtype=torch.float32)[:, None, None].expand(100, 3, 4)
    summary = summarize(errors)
    assert summary["mean"] == pytest.approx(49.5)
    assert summary["p5"] == pytest.approx(4.95)
    assert summary["p95"] == pytest.approx(94.05)
    assert summary["num_batches"] == 100
    # a sequence of per-batch tensors gives the same result
    assert summarize(list(errors)) == summary


def test_summarize_uses_per_batch_means_not_per_query_values():
    errors = torch.tensor([[[0.0, 10.0]], [[0.0, 10.0]]])  # two batches, each with mean 5
    summary = summarize(errors)
    assert summary["p5"] == summary["p95"] == summary["mean"] == 5.0


def test_evaluate_shapes_and_perfect_oracle():
    gen = torch.Generator().manual_seed(3)
    errors = evaluate(lambda p, q, k: p, num_patterns=5, num_batches=7, batch_size=3, generator=gen, batches_per_call=3)
    assert errors.shape == (7, 3, 5)
    assert float(errors.sum()) == 0.0
    # returning the query itself: about 32 error bits
    errors = evaluate(lambda p, q, k: q, num_patterns=5, num_batches=4, batch_size=8, generator=gen)
    assert 28.0 < float(errors.mean()) < 36.0


def test_paper_table_and_format_table():
    assert set(PAPER_TABLE1) == {
        "Hebb",
        "Storkey",
        "pseudo-inverse",
        "differentiable plasticity",
        "MANN",
        "LSTM",
        "Memory Networks",
        "EBMM RNN",
    }
    assert all(len(row) == len(TABLE1_NUM_PATTERNS) for row in PAPER_TABLE1.values())
    assert PAPER_TABLE1["Hebb"] == (0.4, 5.0, 9.8, 13.0, 16.5)
    assert PAPER_TABLE1["MANN"][3] == 4.25
    summary = {"mean": 1.234, "p5": 1.0, "p95": 1.5, "num_batches": 10}
    table = format_table({"Hebb": [summary, summary], "mine": [summary, summary]}, num_patterns=[16, 64])
    lines = table.splitlines()
    assert lines[0] == "| model | N = 16 | N = 64 |"
    assert "1.2 (1.0–1.5) · paper 0.4" in lines[2]
    assert "paper 13" in lines[2]
    assert "paper" not in lines[3]
    with pytest.raises(ValueError, match="one summarize"):
        format_table({"Hebb": [summary]}, num_patterns=[16, 64])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: corrupt(torch.ones(4, 128)), r"shape \[B, N, D\]"),
        (lambda: corrupt(torch.ones(0, 3, 128)), "empty"),
        (lambda: corrupt(torch.zeros(1, 3, 128)), r"-1.0 and \+1.0"),
        (lambda: corrupt(torch.ones(1, 3, 8), num_corrupted=9), "num_corrupted"),
        (lambda: corrupt(torch.ones(1, 3, 8, dtype=torch.int64)), "floating-point"),
        (lambda: error_bits(torch.ones(1, 2, 8), torch.ones(1, 3, 8)), "same shape"),
        (lambda: error_bits(torch.ones(1, 2, 8), torch.zeros(1, 2, 8)), r"-1.0 and \+1.0"),
        (lambda: sample_patterns(0, 3), "batch_size"),
        (lambda: summarize([]), "empty"),
        (lambda: summarize(torch.zeros(0, 4)), "at least one batch"),
    ],
)
def test_bad_input_raises_helpful_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_eval_binary_script_smoke(tmp_path):
    from ebmm_rl.checkpoint import save_memory
    from ebmm_rl.energy import GatedRNNConfig, GatedRNNEnergy
    from ebmm_rl.memory import EBMMConfig, EBMMemory

    checkpoint = tmp_path / "ebmm.pt"
    energy = GatedRNNEnergy(GatedRNNConfig(hidden_size=72, dynamic_size=64, hops=2))
    save_memory(EBMMemory(energy, EBMMConfig(data_range=(-1.0, 1.0), write_steps=1, read_steps=1)), checkpoint)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "eval_binary.py"), "--num-batches", "5", "--batch-size", "2"]
    cmd += ["--patterns", "16", "32", "--threads", "1", "--ebmm", str(checkpoint)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "| model | N = 16 | N = 32 |" in out
    for row in ("| Hebb |", "| Storkey |", "| pseudo-inverse |", "| EBMM RNN (trained at N=?", "| EBMM RNN (paper) |"):
        assert row in out
    assert "paper 0.4" in out

    def means(label: str) -> list[float]:  # the mean of each N cell of the row whose model starts with label
        row = next(ln for ln in out.splitlines() if ln.startswith(f"| {label}"))
        return [float(cell.split()[0]) for cell in row.strip(" |").split(" | ")[1:]]

    hebb, pinv, untrained = means("Hebb"), means("pseudo-inverse"), means("EBMM RNN (trained at")
    # Hebb's error grows with the load (paper 0.4 -> 5.0); the pseudo-inverse rule stores 16 and 32 patterns exactly
    assert hebb[0] < 1.5 < 2.5 < hebb[1] < 7.5 and pinv == [0.0, 0.0]
    assert len(untrained) == 2 and all(0.0 <= e <= 64.0 for e in untrained)  # only corrupted bits can be wrong
    assert float(out.split("wall time: ")[1].split()[0]) > 0

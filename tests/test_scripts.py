"""Every core script runs end to end on a tiny budget, as a subprocess."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


TINY_BINARY = [
    "--num-patterns", "3", "--dim", "16", "--num-corrupted", "8", "--hidden-size", "16", "--dynamic-size", "8",
    "--batch-size", "2", "--eval-batches", "2", "--eval-every", "0", "--no-progress", "--threads", "1",
]  # fmt: skip


def test_meta_train_binary_runs_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    out = run("scripts/meta_train_binary.py", *TINY_BINARY, "--steps", "2", "--run-dir", str(run_dir))
    assert "error bits" in out and (run_dir / "checkpoint.pt").exists()
    out = run("scripts/meta_train_binary.py", *TINY_BINARY, "--steps", "3", "--run-dir", str(run_dir), "--resume")
    assert "after 3 steps" in out
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 3


def test_bench_memory_prints_the_table():
    out = run(
        "scripts/bench_memory.py", "--batch-size", "2", "--binary-patterns", "2", "--conv-patterns", "1",
        "--repeats", "1", "--threads", "1",
    )  # fmt: skip
    assert "binary   batched is" in out and "conv     batched is" in out


def test_bench_memory_peak_table_picks_the_card_and_precision():
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_memory import peak_tflops_of

    assert peak_tflops_of("NVIDIA H100 80GB HBM3", "tf32") == 494.5  # SXM: half the 989 TFLOP/s with sparsity
    assert peak_tflops_of("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops_of("NVIDIA H200", "fp32") == 67.0
    assert math.isnan(peak_tflops_of("Some Other GPU", "fp32"))
    assert peak_tflops_of("Some Other GPU", "fp32", override=10.0) == 10.0


@pytest.mark.slow  # torch.compile takes about a minute here
def test_eval_binary_compiled_gives_the_eager_table(tmp_path):
    run_dir = tmp_path / "run"
    run(
        "scripts/meta_train_binary.py", "--num-patterns", "3", "--hidden-size", "72", "--batch-size", "2",
        "--eval-batches", "1", "--eval-every", "0", "--no-progress", "--threads", "1", "--steps", "1",
        "--run-dir", str(run_dir),
    )  # fmt: skip
    common = ["scripts/eval_binary.py", "--rules", "--ebmm", str(run_dir / "checkpoint.pt"), "--num-batches", "3"]
    tables = [run(*common, *extra, "--patterns", "4", "8").split("wall time")[0] for extra in ([], ["--compile"])]
    assert "| EBMM RNN (trained at N=3, 1 steps) |" in tables[0]
    assert tables[0] == tables[1]


def test_bench_memory_reports_a_combination_that_runs_out_of_memory_and_keeps_the_others(monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_memory

    def peak(model, args, path, batched, precision):
        if path == "autograd":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return 1.0

    monkeypatch.setattr(bench_memory, "peak_memory_mib", peak)
    args = bench_memory.Args(
        models=["binary"], binary_hidden=72, binary_patterns=2, repeats=1, modes=["batched"], device="cpu"
    )
    rows = bench_memory.bench_model("binary", 2, args, torch.device("cpu"), "GFLOP/CPU-s")
    by_path = {r["path"]: r for r in rows}
    assert by_path["autograd"]["oom"] and not by_path["closed"]["oom"]
    assert by_path["closed"]["wall_s"] > 0 and by_path["closed"]["peak_mib"] == 1.0
    assert "autograd batched fp32: OOM" in capsys.readouterr().out

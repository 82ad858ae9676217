"""Every core script runs end to end on a tiny budget, as a subprocess."""

from __future__ import annotations

import re
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
    line = next(ln for ln in out.splitlines() if ln.startswith("N=3:"))
    figures = re.search(r"N=3: ([\d.]+) error bits .* chance \(query returned\) ([\d.]+), Hebb rule ([\d.]+)", line)
    assert figures, line
    model, chance, hebb = map(float, figures.groups())
    assert 0 <= model <= 8 and 0 <= hebb <= 8  # only the 8 corrupted bits can be wrong
    assert 2.5 < chance < 5.5  # half of the 8 random bits wrong on average (12 queries)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    out = run("scripts/meta_train_binary.py", *TINY_BINARY, "--steps", "3", "--run-dir", str(run_dir), "--resume")
    assert "after 3 steps" in out
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 3


def test_meta_train_binary_divergence_exits_1_and_names_the_step(tmp_path):
    args = [*TINY_BINARY, "--steps", "20", "--skip-grad-norm", "1e-12", "--max-consecutive-skips", "4",
            "--rollback-after", "2", "--run-dir", str(tmp_path / "run")]  # fmt: skip
    result = subprocess.run([sys.executable, "scripts/meta_train_binary.py", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "diverged" in result.stderr and "at step 3" in result.stderr and "Traceback" not in result.stderr
    assert "last healthy checkpoint: none written" in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_bench_memory_prints_the_table():
    out = run(
        "scripts/bench_memory.py", "--batch-size", "2", "--binary-patterns", "2", "--conv-patterns", "1",
        "--repeats", "1", "--threads", "1",
    )  # fmt: skip
    for model in ("binary", "conv"):
        ms = {}
        for mode in ("batched", "loop"):
            row = next(ln.split() for ln in out.splitlines() if ln.startswith(model) and f" {mode} " in ln)
            s_per_step, ms_per_episode, peak = map(float, row[4:7])
            assert s_per_step > 0 and peak > 0
            assert ms_per_episode == pytest.approx(1000 * s_per_step / 2, rel=0.02, abs=0.1)  # B = 2 episodes
            ms[mode] = ms_per_episode
        speedup = float(re.search(rf"{model}\s+batched is ([\d.]+)x", out).group(1))
        assert speedup == pytest.approx(ms["loop"] / ms["batched"], rel=0.02)

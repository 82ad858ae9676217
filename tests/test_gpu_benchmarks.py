"""scripts/gpu_benchmarks.sh: --smoke runs every stage on the CPU and writes summary.md; bad arguments exit 2."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_benchmarks.sh"
STAGES = [
    "setup", "pytest", "bench_binary", "bench_conv", "precision", "hopfield", "train_binary", "table1",
    "train_omniglot", "distortion_rate", "collect",
]  # fmt: skip


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        ["bash", str(SCRIPT), *args, "--python", sys.executable],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )  # fmt: skip


def test_smoke_runs_every_stage_and_writes_the_summary(tmp_path):
    start = time.perf_counter()
    result = run("--smoke", "--out", str(tmp_path / "out"))
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    summary = (tmp_path / "out" / "summary.md").read_text()
    statuses = dict(re.findall(r"^\| (\w+) \| ([^|]+?) \| \d+ \|$", summary, flags=re.M))
    assert list(statuses) == STAGES, summary
    assert all(status == "ok" for status in statuses.values()), statuses
    # the figures of the stages are in it: bench rows, Table 1 (Hopfield and EBMM rows), the distortion-rate table
    assert re.search(r"^binary\s+4\s+4\s+8256 closed\s+batched\s+bf16", summary, flags=re.M)
    assert "| pseudo-inverse |" in summary and "| EBMM RNN (trained at N=4" in summary
    assert "EBMM (ResNetConvEnergy)" in summary and "passed" in summary and "all-bf16" in summary
    files = list((tmp_path / "out").iterdir())
    assert len(files) <= 8 and all(f.stat().st_size <= 16 * 2**20 for f in files)
    assert {"summary.md", "binary_memory.pt", "omniglot_memory.pt", "logs.tar.gz"} <= {f.name for f in files}
    assert seconds < 180, f"--smoke took {seconds:.0f} s (the target is under 3 minutes)"


def test_bad_arguments_are_usage_errors(tmp_path):
    for args in (["--smoke"], ["--out", str(tmp_path), "--budget-min", "soon"], ["--out", str(tmp_path), "--wat"]):
        result = run(*args, timeout=30)
        assert result.returncode == 2, (args, result.stderr)
        assert "gpu_benchmarks.sh: error:" in result.stderr and "Traceback" not in result.stderr
    result = run("--out", str(tmp_path), "--precision", "fp16", timeout=30)
    assert result.returncode == 2 and "fp32, tf32 or bf16" in result.stderr

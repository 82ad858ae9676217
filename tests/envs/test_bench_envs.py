"""Smoke run of scripts/bench_envs.py as a subprocess with a tiny budget."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_envs.py"


def test_bench_envs_smoke():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "200", "--repeats", "1", "--level", "Easy"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=SCRIPT.parents[1],
    )
    assert done.returncode == 0, done.stderr
    for family in ("BinaryRecall", "KeyValueRecall", "ImageRecall", "Familiarity", "DelayedRecall"):
        assert f"| ebmm/{family}-Easy-v0 |" in done.stdout
    assert "sync x2" in done.stdout and "async x2" in done.stdout


def test_bench_envs_flags_come_from_the_args_dataclass():
    run = dict(capture_output=True, text=True, timeout=120, cwd=SCRIPT.parents[1])
    done = subprocess.run([sys.executable, str(SCRIPT), "--steps", "50", "--repeats", "1", "--level", "Easy",
                           "--no-vector"], **run)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| ebmm/BinaryRecall-Easy-v0 |" in done.stdout and "sync x2" not in done.stdout
    bad = subprocess.run([sys.executable, str(SCRIPT), "--level", "Extreme"], **run)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "Easy" in bad.stderr + bad.stdout  # the usage error names the choices
    helped = subprocess.run([sys.executable, str(SCRIPT), "--help"], **run)
    assert helped.returncode == 0 and "sub-environments of the vector environments" in helped.stdout

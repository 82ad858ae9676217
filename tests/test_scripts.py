"""Every core script runs end to end on a tiny budget, as a subprocess."""

from __future__ import annotations

import json
import math
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
    line = out.splitlines()[-1]
    figures = re.search(
        r"^EBMM ([\d.]+) error bits at N = 3; same batches, 136-float Hopfield rules: Hebb ([\d.]+), Storkey ([\d.]+), "
        r"pseudo-inverse ([\d.]+); chance \(query returned\) ([\d.]+)\.",
        line,
    )
    assert figures, line
    model, hebb, storkey, pseudo_inverse, chance = map(float, figures.groups())
    assert all(0 <= v <= 8 for v in (model, hebb, storkey, pseudo_inverse))  # only the 8 corrupted bits can be wrong
    assert 2.5 < chance < 5.5  # half of the 8 random bits wrong on average (12 queries)
    assert f"N=3: {model:.2f} error bits" in out
    assert ("Not yet at a Hopfield rule after 2 steps" in line) == (model > max(hebb, storkey, pseudo_inverse))
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    out = run("scripts/meta_train_binary.py", *TINY_BINARY, "--steps", "3", "--run-dir", str(run_dir), "--resume")
    assert "after 3 steps" in out
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 3


def test_meta_train_binary_off_a_terminal_prints_status_lines_and_the_rules_last(tmp_path):
    args = [arg for arg in TINY_BINARY if arg != "--no-progress"]  # the default: a progress bar on a terminal
    command = [sys.executable, "scripts/meta_train_binary.py", *args, "--steps", "20", "--log-every", "2",
               "--status-every-s", "1e-9", "--run-dir", str(tmp_path / "run")]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\r" not in result.stdout + result.stderr and "meta-train" not in result.stderr  # no tqdm bar in a pipe
    status = [line for line in result.stdout.splitlines() if re.match(r"step \d+/20: loss", line)]
    assert [line.split(":")[0] for line in status] == [f"step {k}/20" for k in range(2, 21, 2)]  # one per log step
    assert len(result.stdout.splitlines()) <= len(status) + 4  # the header, the summary and the final line
    final = result.stdout.splitlines()[-1]
    for name in ("chance (query returned)", "Hebb", "Storkey", "pseudo-inverse"):
        assert name in final


def load_binary_script():
    import runpy

    return runpy.run_path(str(ROOT / "scripts" / "meta_train_binary.py"), run_name="not_main")


def test_meta_train_binary_verdict_names_the_rules_beaten_or_the_way_on():
    script = load_binary_script()
    args = script["Args"](num_patterns=16, steps=300, device="cpu")
    rules = {"Hebb": 0.35, "Storkey": 0.0, "pseudo-inverse": 0.0}
    line = script["verdict"](args, 0.2, 31.9, rules, 300, "runs/x")
    assert line.startswith("EBMM 0.20 error bits at N = 16; same batches, 8256-float Hopfield rules: Hebb 0.35, ")
    assert line.endswith("; chance (query returned) 31.90. EBMM is at or below the Hebb rule.")
    both = script["verdict"](args, 0.0, 31.9, rules, 300, "runs/x")
    assert both.endswith("at or below the Hebb and Storkey and pseudo-inverse rules.")
    finished = script["verdict"](args, 18.6, 31.9, rules, 300, "runs/x")
    assert "Not yet at a Hopfield rule after 300 steps; a longer run: python scripts/meta_train_binary.py " in finished
    assert "--num-patterns 16 --steps 2200." in finished and "2200 steps reached 0.1 error bits" in finished
    stopped = script["verdict"](script["Args"](num_patterns=5, steps=900, device="cpu"), 20.0, 32.0, rules, 400, "r")
    resume = "python scripts/meta_train_binary.py --run-dir r --resume --num-patterns 5 --steps 900"
    assert f"after 400 steps; train on with: {resume}" in stopped
    assert "docs/results.md" not in stopped  # no longer run recorded at N = 5


def test_meta_train_binary_divergence_exits_1_and_names_the_step(tmp_path):
    args = [*TINY_BINARY, "--steps", "20", "--skip-grad-norm", "1e-12", "--max-consecutive-skips", "4",
            "--rollback-after", "2", "--max-skipped-fraction", "1", "--run-dir", str(tmp_path / "run")]  # fmt: skip
    result = subprocess.run([sys.executable, "scripts/meta_train_binary.py", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "diverged" in result.stderr and "at step 3" in result.stderr and "Traceback" not in result.stderr
    assert "last healthy checkpoint: none written" in result.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_meta_train_binary_stops_at_the_skipped_fraction_with_rollback_on(tmp_path):
    args = [*TINY_BINARY, "--steps", "20", "--checkpoint-every", "1", "--rollback-after", "2",
            "--max-skipped-fraction", "0.25", "--run-dir", str(tmp_path / "run")]  # fmt: skip
    run("scripts/meta_train_binary.py", *args[:-2], "--steps", "3", "--run-dir", str(tmp_path / "run"))
    # resumed with every step exploding: 0.25 of 20 steps is 5, the 6th skip (step 8, after 2 rollbacks) stops it
    command = [sys.executable, "scripts/meta_train_binary.py", *args, "--skip-grad-norm", "1e-12", "--resume"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "6 of 20 steps were skipped" in result.stderr and "2 rollback(s)" in result.stderr
    assert "at step 8" in result.stderr and "Traceback" not in result.stderr
    assert f"last healthy checkpoint: {tmp_path / 'run' / 'checkpoint.pt'} (step 3)" in result.stderr


def test_meta_train_binary_final_line_counts_skips_and_a_finished_run_has_nothing_to_do(tmp_path):
    run_dir = tmp_path / "run"
    out = run("scripts/meta_train_binary.py", *TINY_BINARY, "--steps", "2", "--run-dir", str(run_dir))
    summary = next(line for line in out.splitlines() if line.startswith("N=3:"))
    assert "after 2 steps" in out and "0 of 2 steps skipped, 0 rollback(s)" in summary
    before = (run_dir / "checkpoint.pt").read_bytes()
    for steps in ("2", "1"):
        out = run("scripts/meta_train_binary.py", *TINY_BINARY, "--steps", steps, "--run-dir", str(run_dir), "--resume")
        assert f"is already at step 2 (--steps {steps}): nothing to do" in out and "--steps above 2" in out
    assert (run_dir / "checkpoint.pt").read_bytes() == before


def test_bench_memory_prints_the_table():
    out = run(
        "scripts/bench_memory.py", "--batch-size", "2", "--binary-patterns", "2", "--conv-patterns", "1",
        "--repeats", "1", "--threads", "1",
    )  # fmt: skip
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        # model B N memory path mode precision wall-s CPU-s CPU-ms/episode GFLOP GFLOP/CPU-s %matmul [peak MiB]
        if len(cells) >= 13 and cells[0] in ("binary", "conv", "mlp") and cells[1].isdigit():
            cpu_s, ms_ep, gflop = map(float, cells[8:11])
            rows[(cells[0], cells[4], cells[5])] = dict(cpu_s=cpu_s, ms_ep=ms_ep, gflop=gflop)
    assert {m for m, _, _ in rows} == {"binary", "conv", "mlp"}
    for row in rows.values():
        assert row["cpu_s"] > 0 and row["gflop"] > 0
        assert row["ms_ep"] == pytest.approx(1000 * row["cpu_s"] / 2, rel=0.02, abs=0.1)  # B = 2 episodes
    for model, path in {(m, p) for m, p, _ in rows}:
        pattern = rf"{model}\s+batched is ([\d.]+)x faster per episode than the loop \({path} path"
        speedup = float(re.search(pattern, out).group(1))
        ratio = rows[(model, path, "loop")]["ms_ep"] / rows[(model, path, "batched")]["ms_ep"]
        assert speedup == pytest.approx(ratio, rel=0.02)
    for model in ("binary", "conv", "mlp"):  # the op count of every row of the model, and more ops in the loop
        line = re.search(rf"{model}\s+aten ops per meta-step, forward and backward: (.*)", out).group(1)
        ops = {tuple(part.split()[:2]): int(part.split()[3].replace(",", "")) for part in line.split(", ")}
        assert set(ops) == {(p, m) for mm, p, m in rows if mm == model}
        for path in {p for p, _ in ops}:
            assert ops[(path, "loop")] > ops[(path, "batched")] > 0  # the loop runs the ops once per episode (B=2)
    # the two paths do the same matmuls: equal FLOP counts within 2%
    assert rows[("binary", "closed", "batched")]["gflop"] == pytest.approx(
        rows[("binary", "autograd", "batched")]["gflop"], rel=0.02
    )


def test_bench_scaling_prints_one_row_per_route_and_length():
    out = run("scripts/bench_scaling.py", "--lengths", "4", "8", "--routes", "ebmm-recurrent", "lstm",
              "--steps", "32", "--n-envs", "2", "--n-steps", "8", "--batch-size", "16", "--n-epochs", "1")  # fmt: skip
    rows = [
        line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ebmm") or line.startswith("| lstm")
    ]
    assert [(r[0].strip(), int(r[1])) for r in rows] == [("ebmm-recurrent", 4), ("ebmm-recurrent", 8),
                                                         ("lstm", 4), ("lstm", 8)]  # fmt: skip
    for r in rows:
        rollout, update, peak = float(r[2]), float(r[3]), float(r[5])
        assert rollout > 0 and update > 0 and peak > 0
    assert [r[4].strip() for r in rows][::2] == ["1.00x", "1.00x"]  # each route's first L is the reference
    assert "torch threads 1" in out


def test_peak_tensor_mib_by_hand():
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_scaling import peak_tensor_mib

    def allocate():
        a = torch.ones(25 * 2**20)  # 100 MiB of float32, freed before the next 50 + 50
        del a
        b = torch.ones(25 * 2**19)
        c = b * 2
        del b, c

    assert peak_tensor_mib(allocate) == pytest.approx(100, abs=0.5)


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


def test_bench_write_chain_times_the_current_code_beside_a_revision():
    out = run(
        "scripts/bench_write_chain.py", "--against", "HEAD", "--rounds", "1", "--writes", "2", "--batch-size", "2"
    )
    rows = re.findall(
        r"^\| (defaults|fast) \| (HEAD|current) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \| ([\d.]+) \|$", out, re.M
    )
    assert {(kind, code) for kind, code, *_ in rows} == {
        (k, c) for k in ("defaults", "fast") for c in ("HEAD", "current")
    }
    for *_, forward, total, _, _ in rows:
        assert int(total.replace(",", "")) > int(forward.replace(",", "")) > 0  # the backward adds ops
    assert re.search(r"fast: current / HEAD CPU time, forward [\d.]+x", out)
    bad = subprocess.run(
        [sys.executable, "scripts/bench_write_chain.py", "--against", "no-such-revision"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "usage error" in bad.stderr and "Traceback" not in bad.stderr


def test_eval_recall_learns_the_first_symbol_and_compares_recurrent_layers(tmp_path):
    """The supervised recall test through the core's real unroll: a short run learns ``first`` beyond chance."""
    out = tmp_path / "recall.json"
    cmd = [sys.executable, "scripts/eval_recall.py", "--tasks", "first", "lag-2", "--models", "ebmm", "gru",
           "--length", "6", "--steps", "80", "--batch-size", "16", "--eval-batch", "64", "--json", str(out),
           "--no-progress"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| first | 6 | ebmm |" in result.stdout and "| lag-2 | 6 | gru |" in result.stdout
    rows = {(r["task"], r["model"]): r for r in json.loads(out.read_text())["results"]}
    assert rows[("first", "ebmm")]["accuracy"] > 0.9  # chance: 1 / 8
    assert rows[("first", "ebmm")]["train_length"] == 6 and rows[("lag-2", "gru")]["train_length"] == 6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "lag-0"], "unknown task"),
        (["--tasks", "second"], "unknown task"),
        (["--models", "tcn"], "--models"),
        (["--length", "1"], "--length"),
        (["--lr", "0"], "--lr"),
    ],  # fmt: skip
)
def test_eval_recall_usage_errors(argv, message):
    result = subprocess.run([sys.executable, "scripts/eval_recall.py", *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr

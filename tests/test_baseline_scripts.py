"""The baseline scripts run end to end on a tiny budget, as subprocesses."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import eval_binary  # noqa: E402
import meta_train_baseline  # noqa: E402


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_meta_train_baseline_then_eval_binary_rows(tmp_path):
    run_dir = tmp_path / "memnet"
    out = run(
        "scripts/meta_train_baseline.py", "--model", "memnet", "--num-patterns", "4", "--batch-size", "2",
        "--steps", "3", "--eval-patterns", "4", "--eval-batches", "1", "--eval-every", "0", "--no-progress",
        "--run-dir", str(run_dir),
    ).stdout  # fmt: skip
    assert "memory size 8192 floats" in out and "after 3 steps" in out
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["memory_spec"]["model"] == "MemoryNetwork"
    out = run(
        "scripts/eval_binary.py", "--rules", "--patterns", "16", "--num-batches", "2", "--model",
        f"memnet={run_dir / 'checkpoint.pt'}", "modern_hopfield", "modern_hopfield:capacity=96,budget=12288",
    ).stdout  # fmt: skip
    assert "| Memory Networks | " in out and "paper 0" in out
    assert "| modern Hopfield | 0.0" in out and "| modern Hopfield (capacity=96,budget=12288) | 0.0" in out
    assert "memory size 12288 floats" in out


def test_scripts_refuse_bad_models(tmp_path):
    with pytest.raises(SystemExit, match="not a trainable memory"):
        meta_train_baseline.main(meta_train_baseline.Args(model="hebb", run_dir=str(tmp_path)))
    with pytest.raises(SystemExit, match="must be meta-trained first"):
        eval_binary.load_model("memnet", "cpu")
    with pytest.raises(SystemExit, match="unknown memory"):
        eval_binary.load_model("nope=x.pt", "cpu")
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        meta_train_baseline.parse_overrides(["read_steps"])


def test_meta_train_baseline_on_images(tmp_path, monkeypatch, capsys):
    import meta_train_images

    from ebmm_rl.data import ImageDataset

    def fake_data(data_dir, name, split, mnist_dir=None):  # 12 binary 16x16 images instead of Omniglot files
        images = (torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(len(split))) > 0.5).float()
        return ImageDataset(images, torch.arange(12) % 3, name, split, binary=True)

    monkeypatch.setattr(meta_train_images, "load_data", fake_data)
    args = meta_train_baseline.Args(
        model="dae", dataset="omniglot", num_patterns=[3], batch_size=2, steps=2, eval_batches=1, eval_every=0,
        set=["channels=2", "bottleneck=8"], run_dir=str(tmp_path / "dae"), progress=False, device="cpu",
    )  # fmt: skip
    meta_train_baseline.main(args)
    out = capsys.readouterr().out
    assert "memory size 0 floats" in out and "hamming" in out and "after 2 steps" in out
    spec = torch.load(tmp_path / "dae" / "checkpoint.pt", weights_only=True)["memory_spec"]
    assert spec["model"] == "DenoisingAutoencoder" and tuple(spec["model_config"]["data_shape"]) == (1, 16, 16)
    with pytest.raises(SystemExit, match="one --num-patterns"):
        meta_train_baseline.main(dataclasses.replace(args, num_patterns=[3, 4]))
    # other distortions reach the image task, their size too, and are recorded for eval_distortion_rate.py
    salt = dataclasses.replace(args, noise="salt_pepper", noise_size=0.3, run_dir=str(tmp_path / "salt"))
    meta_train_baseline.main(salt)
    hparams = torch.load(tmp_path / "salt" / "checkpoint.pt", weights_only=True)["hparams"]
    assert (hparams["noise"], hparams["noise_size"]) == ("salt_pepper", 0.3)
    with pytest.raises(SystemExit, match="not a query distortion"):
        meta_train_baseline.main(dataclasses.replace(args, noise="blur"))
    with pytest.raises(SystemExit, match="positive integer"):
        meta_train_baseline.main(dataclasses.replace(args, noise_size=2.5))

"""scripts/rl_results.py: the resumable sweep that writes the results table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import rl_results  # noqa: E402


def test_mean_ci():
    assert rl_results.mean_ci([0.5]) == (0.5, 0.0)
    mean, half = rl_results.mean_ci([0.0, 1.0, 2.0])
    assert mean == pytest.approx(1.0) and half == pytest.approx(4.303 / 3**0.5)


def test_oracle_reaches_the_maximum_return():
    chance, best, oracle = rl_results.reference_returns("ebmm/KeyValueRecall-Easy-v0", episodes=5)
    assert (chance, best, oracle) == (0.25, 1.0, 1.0)


def test_write_doc_replaces_only_the_generated_block(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\ntext before\n")
    rl_results.write_doc(doc, "table 1")
    rl_results.write_doc(doc, "table 2")
    text = doc.read_text()
    assert text.startswith("# Title\n\ntext before\n") and "table 2" in text and "table 1" not in text
    assert text.count(rl_results.BEGIN) == 1


def test_sweep_writes_the_table_and_resumes(tmp_path):
    out_dir, doc = tmp_path / "runs", tmp_path / "results.md"
    args = [
        "scripts/rl_results.py", "--envs", "ebmm/BinaryRecall-Easy-v0", "--agents", "mlp", "ebmm", "--seeds", "0",
        "--steps", "64", "--eval-episodes", "2", "--out-dir", str(out_dir), "--doc", str(doc), "--no-progress",
    ]  # fmt: skip
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list(out_dir.glob("*.json"))) == 2
    table = doc.read_text()
    assert "| env | mlp | ebmm | chance | oracle |" in table
    assert "| BinaryRecall-Easy-v0 |" in table and "0.750 | 1.000 |" in table  # chance and oracle
    again = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "seed 0: return" not in again.stdout  # nothing re-trained


def test_meta_agent_uses_a_frozen_env_checkpoint(tmp_path):
    import torch

    from ebmm_rl.checkpoint import save_memory
    from ebmm_rl.energy.mlp import MLPConfig, MLPEnergy
    from ebmm_rl.memory import EBMMConfig, EBMMemory

    env_id = "ebmm/BinaryRecall-Easy-v0"
    with pytest.raises(FileNotFoundError, match="meta_train_env.py --env ebmm/BinaryRecall-Easy-v0"):
        rl_results.agent_args(env_id, rl_results.META_AGENT, tmp_path)
    torch.manual_seed(0)
    memory = EBMMemory(
        MLPEnergy(MLPConfig(input_size=8, hidden_size=8, dynamic_size=4)),
        EBMMConfig(read_steps=2, data_range=(-1.0, 1.0)),
    )
    checkpoint = rl_results.meta_checkpoint(tmp_path, env_id)
    checkpoint.parent.mkdir(parents=True)
    save_memory(memory, checkpoint)
    fields = rl_results.agent_args(env_id, rl_results.META_AGENT, tmp_path)
    assert fields == dict(memory="ebmm", memory_checkpoint=str(checkpoint), freeze_memory=True)
    assert rl_results.agent_args(env_id, "mlp") == dict(memory="mlp")
    overrides = dict(gamma=0.0, net_arch=(), n_epochs=2)
    result = rl_results.run_one(env_id, rl_results.META_AGENT, 0, 64, 2, meta_dir=tmp_path, overrides=overrides)
    assert result["agent"] == "ebmm-meta" and result["train_args"]["freeze_memory"]
    assert result["train_args"]["gamma"] == 0.0 and list(result["train_args"]["net_arch"]) == []
    assert result["steps"] >= 64 and len(result["returns"]) == 2


def test_plot_of_normalised_scores(tmp_path):
    results = [
        dict(env="ebmm/KeyValueRecall-Easy-v0", agent=agent, mean_return=value)
        for agent, values in (("mlp", (0.25, 0.25)), ("ebmm", (1.0, 0.625)))
        for value in values
    ]
    scores = rl_results.normalised_scores(results, ["ebmm/KeyValueRecall-Easy-v0"], ["mlp", "ebmm"], episodes=3)
    (mlp, ebmm) = (scores["ebmm/KeyValueRecall-Easy-v0"][a] for a in ("mlp", "ebmm"))
    assert mlp == (0.0, 0.0)  # chance 0.25 -> 0, oracle 1.0 -> 1
    assert ebmm[0] == pytest.approx(0.75) and ebmm[1] == pytest.approx(12.706 * 0.25)  # t(1) * std / sqrt(2)
    pytest.importorskip("matplotlib")
    rl_results.plot_scores(scores, ["mlp", "ebmm"], tmp_path / "scores.png", "test")
    assert (tmp_path / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

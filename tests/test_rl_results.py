"""scripts/rl_results.py: the resumable sweep that writes the results table."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import rl_results  # noqa: E402


def test_mean_ci():
    assert rl_results.mean_ci([0.5]) == (0.5, 0.0)
    mean, half = rl_results.mean_ci([0.0, 1.0, 2.0])  # s = 1; t_{0.975, 2} = 0.95 / sqrt(2 * 0.975 * 0.025)
    assert mean == pytest.approx(1.0) and half == pytest.approx(0.95 / math.sqrt(0.04875) / math.sqrt(3), rel=1e-10)


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
        "--plot", str(tmp_path / "returns.png"),
    ]  # fmt: skip
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list(out_dir.glob("*.json"))) == 2
    table = doc.read_text()
    assert "| env | mlp | ebmm | chance | oracle |" in table
    assert "| BinaryRecall-Easy-v0 |" in table and "0.750 | 1.000 |" in table  # chance and oracle
    assert (tmp_path / "returns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "seed 0: return" not in again.stdout  # nothing re-trained


def test_the_fast_agent_trains_the_fast_core_with_ebmm_recurrent_ppo():
    fields = rl_results.agent_args("ebmm/CartPole-NoVel-v1", rl_results.FAST_AGENT)
    assert fields == dict(memory="ebmm-recurrent", embed_size=32, key_size=8, value_size=8, hidden_size=32,
                          dynamic_size=16, write_steps=2, read_steps=2)  # fmt: skip
    from dataclasses import replace

    from agents.train import Args, build_model, make_env

    args = replace(Args(), env="ebmm/CartPole-NoVel-v1", n_steps=16, batch_size=16, n_epochs=1, n_envs=2,
                   vec_env="dummy", **fields)  # fmt: skip
    model = build_model(args, make_env(args))
    core = model.policy.core
    assert type(model).__name__ == "EBMMRecurrentPPO" and model.policy.bptt_steps == 8
    assert (core.config.hidden_size, core.config.dynamic_size, core.config.embed_size) == (32, 16, 32)
    assert (core.memory.config.write_steps, core.memory.config.read_steps) == (2, 2)


ABLATIONS = [("ebmm-recurrent-whole", None, 0.0, True), ("ebmm-recurrent-aux", 8, 1.0, True),
             ("ebmm-recurrent-fresh", 8, 0.0, False)]  # fmt: skip


@pytest.mark.parametrize(("agent", "bptt_steps", "aux_coef", "prior"), ABLATIONS)
def test_the_ablation_agents_change_one_setting(agent, bptt_steps, aux_coef, prior):
    from dataclasses import replace

    from agents.train import Args, build_model, make_env

    fields = rl_results.agent_args("ebmm/CartPole-NoVel-v1", agent)
    args = replace(Args(), env="ebmm/CartPole-NoVel-v1", n_steps=16, batch_size=16, n_epochs=1, n_envs=2,
                   vec_env="dummy", **fields)  # fmt: skip
    policy = build_model(args, make_env(args)).policy
    assert (policy.bptt_steps, policy.aux_coef) == (bptt_steps, aux_coef)
    assert (policy.core.prior is not None) == prior


def test_pretrained_agent_starts_from_the_env_checkpoint_and_the_old_design_says_where_it_runs(tmp_path):
    import torch

    from ebmm_rl.rl.core import CoreConfig, MemoryCore
    from ebmm_rl.rl.pretrain import save_core

    env_id = "ebmm/CartPole-NoVel-v1"
    with pytest.raises(FileNotFoundError, match="meta_train_env.py --env ebmm/CartPole-NoVel-v1"):
        rl_results.agent_args(env_id, rl_results.PRETRAINED_AGENT, tmp_path)
    with pytest.raises(FileNotFoundError, match=f"git worktree add /tmp/old {rl_results.OLD_REVISION}"):
        rl_results.agent_args(env_id, rl_results.OLD_AGENT, tmp_path)
    torch.manual_seed(0)
    core = MemoryCore(2 + 2 + 1, CoreConfig.build(embed_size=8, key_size=4, value_size=4, hidden_size=8,
                                                  dynamic_size=4))  # fmt: skip
    checkpoint = rl_results.meta_checkpoint(tmp_path, env_id)
    checkpoint.parent.mkdir(parents=True)
    save_core(core, checkpoint)
    fields = rl_results.agent_args(env_id, rl_results.PRETRAINED_AGENT, tmp_path)
    assert fields == dict(memory="ebmm-recurrent", memory_checkpoint=str(checkpoint))
    assert rl_results.agent_args(env_id, "mlp") == dict(memory="mlp")
    overrides = dict(gamma=0.0, net_arch=(), n_epochs=2, n_steps=32, batch_size=32)
    result = rl_results.run_one(env_id, rl_results.PRETRAINED_AGENT, 0, 64, 2, meta_dir=tmp_path, overrides=overrides)
    assert result["agent"] == "ebmm-recurrent-pre" and result["train_args"]["memory_checkpoint"] == str(checkpoint)
    assert result["train_args"]["gamma"] == 0.0 and list(result["train_args"]["net_arch"]) == []
    assert result["steps"] >= 64 and len(result["returns"]) == 2


def test_table_round_trip_and_plot(tmp_path):
    env_ids = ["ebmm/KeyValueRecall-Easy-v0", "ebmm/BinaryRecall-Easy-v0"]
    results = [
        dict(env=env_ids[0], agent=agent, mean_return=value)
        for agent, values in (("mlp", (0.25, 0.25)), ("ebmm-meta", (1.0, 0.625)))
        for value in values
    ] + [dict(env=env_ids[1], agent="mlp", mean_return=0.5)]
    table = rl_results.format_table(results, env_ids, ["mlp", "ebmm-meta"], episodes=3, num_seeds=2)
    setting = "64 env steps per run (--steps 64), seeds 0, 1, 3 deterministic evaluation episodes per run; mean"
    doc = tmp_path / "doc.md"
    rl_results.write_doc(doc, f"{table}\n\n{setting}. Training and evaluation took 1 CPU min (2 min wall).")
    agents, stats, references, parsed_setting = rl_results.parse_table(doc.read_text())
    assert agents == ["mlp", "ebmm-meta"] and parsed_setting == setting
    assert references == {env_ids[0]: (0.25, 1.0), env_ids[1]: (0.75, 1.0)}  # chance, oracle
    assert stats[env_ids[0]]["mlp"] == (0.25, 0.0, 2)
    half = 12.7062047361747 * 0.375 / 2  # t_{0.975, 1} * std / sqrt(2), std of (1, 0.625) = 0.375 / sqrt(2) * 2
    assert stats[env_ids[0]]["ebmm-meta"] == pytest.approx((0.812, round(half, 3), 2))  # 3 decimals, as printed
    assert stats[env_ids[1]] == {"mlp": (0.5, 0.0, 1)} and "ebmm-meta" not in stats[env_ids[1]]
    pytest.importorskip("matplotlib")
    rl_results.plot_returns(stats, references, agents, tmp_path / "returns.png", setting)
    assert (tmp_path / "returns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "before key/value rows" in rl_results.agent_description("ebmm-old")
    assert rl_results.agent_description("mlp") == "PPO/A2C, no memory"


def test_replot_needs_plot(tmp_path):
    done = subprocess.run([sys.executable, "scripts/rl_results.py", "--replot", "docs/rl_results.md"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "--plot" in done.stderr and "Traceback" not in done.stderr


def test_speed_table_by_hand():
    runs = [
        dict(env="ebmm/A-v0", agent="x", steps=1000, train_cpu_seconds=2.0, cpu_seconds=4.0),
        dict(env="ebmm/A-v0", agent="x", steps=1000, train_cpu_seconds=4.0, cpu_seconds=5.0),
        dict(env="ebmm/A-v0", agent="old", steps=900, cpu_seconds=3.0),  # an older run: training and evaluation
    ]
    table = rl_results.speed_table(runs, ["ebmm/A-v0", "ebmm/B-v0"], ["x", "old"])
    assert table.splitlines()[2] == "| A-v0 | 375 | 300* |"  # (500 + 250) / 2; 900 / 3
    assert table.splitlines()[3] == "| B-v0 | – | – |"

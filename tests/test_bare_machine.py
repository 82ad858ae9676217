"""A machine with only torch (the GPU machine): the core, trainer and binary/image scripts need no gymnasium/SB3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebmm_rl.binary import corrupt, sample_patterns
from ebmm_rl.energy import GatedRNNConfig, GatedRNNEnergy
from ebmm_rl.memory import EBMMConfig, EBMMemory
from ebmm_rl.training import MetaTrainer, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
BLOCK = "import sys\nfor m in ('gymnasium', 'stable_baselines3', 'sb3_contrib'):\n    sys.modules[m] = None\n"


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_core_and_scripts_import_without_gymnasium_or_sb3():
    code = (
        "import runpy\n"
        "import ebmm_rl, ebmm_rl.training, ebmm_rl.binary_training, ebmm_rl.image_eval, ebmm_rl.hopfield\n"
        "sys.path.insert(0, 'scripts')\n"
        "for name in ('meta_train_binary', 'eval_binary', 'meta_train_images', 'eval_distortion_rate',"
        " 'bench_memory'):\n"
        "    runpy.run_path(f'scripts/{name}.py', run_name='not_main')\n"
        "assert 'gymnasium' not in sys.modules or sys.modules['gymnasium'] is None\n"
        "print('imported')\n"
    )
    result = run_blocked(code)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr
    # and what needs gymnasium says so
    result = run_blocked("import envs")
    assert result.returncode != 0 and "gymnasium" in result.stderr


def test_trainer_runs_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    torch.manual_seed(0)
    energy = GatedRNNEnergy(GatedRNNConfig(input_size=16, hidden_size=32, dynamic_size=8, hops=3))
    memory = EBMMemory(energy, EBMMConfig(data_range=(-1.0, 1.0), write_steps=2, read_steps=2))

    def sampler(generator):
        patterns = sample_patterns(2, 3, 16, generator=generator)
        return (patterns, *corrupt(patterns, 8, generator=generator))

    trainer = MetaTrainer(memory, sampler, TrainConfig(steps=2, progress=False), run_dir=tmp_path)
    with pytest.warns(UserWarning, match="tensorboard is not installed"):
        trainer.train()
    assert trainer.step == 2 and (tmp_path / "checkpoint.pt").exists()
    assert not list(tmp_path.glob("events.out.tfevents*"))

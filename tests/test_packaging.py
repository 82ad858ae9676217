"""Packaging: the wheel carries LICENSE and the py.typed markers; SB3's progress bar works on a plain install."""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import gymnasium as gym
import pytest

import envs  # noqa: F401  (registers the ids)

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_license_py_typed_and_the_progress_bar_dependencies(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for package in ("ebmm_rl", "envs", "agents"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        capture_output=True, text=True, timeout=300, cwd=source,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("ebmm_rl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = email.message_from_bytes(archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
        license_name = next(n for n in names if n.endswith("/LICENSE"))
        license_text = archive.read(license_name).decode()
    assert "ebmm_rl/py.typed" in names and "envs/py.typed" in names
    assert "agents/presets/KeyValueRecall.yml" in names  # agents.train --preset on an installed package
    assert license_text.startswith("MIT License") and "the ebmm_rl authors" in license_text
    assert metadata["License"] == "MIT"
    required = {re.match(r"[A-Za-z0-9_.-]+", r).group() for r in metadata.get_all("Requires-Dist")}
    assert {"pyyaml"} <= required  # the presets' reader
    assert {"rich", "tqdm"} <= required  # what stable_baselines3.common.callbacks.ProgressBarCallback imports


def test_sb3_progress_bar_runs():
    pytest.importorskip("rich", reason="rich is a declared dependency: `pip install -e .` installs it")
    from stable_baselines3 import PPO

    model = PPO("MultiInputPolicy", gym.make("ebmm/BinaryRecall-Easy-v0"), n_steps=16, batch_size=16, n_epochs=1,
                seed=0, device="cpu")  # fmt: skip
    model.learn(16, progress_bar=True)  # SB3 raises ImportError here when tqdm or rich is missing
    assert model.num_timesteps == 16

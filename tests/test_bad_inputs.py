"""Every bad input gets a clear error: a table over the public API and the command-line scripts.

API cases: the exception type and a message that names what was expected. CLI cases: exit code 2 (a usage
error), no traceback, and no run folder left behind.
"""

from __future__ import annotations

import math
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the ebmm/ ids)
from ebmm_rl.binary import corrupt, error_bits, sample_patterns
from ebmm_rl.checkpoint import build_memory, load_checkpoint, load_memory, memory_spec
from ebmm_rl.data import load_cifar10, load_imagenet64, load_mnist, load_omniglot
from ebmm_rl.energy import (
    GatedRNNConfig,
    MLPConfig,
    MLPEnergy,
    ResNetConvConfig,
    ResNetFCConfig,
    ResNetLowerConvConfig,
)
from ebmm_rl.hopfield import HopfieldConfig
from ebmm_rl.memory import EBMMConfig, EBMMemory, MemoryState, NonFiniteState
from ebmm_rl.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
INF, NAN = math.inf, math.nan


def mlp_memory(dynamic_size: int = 4) -> EBMMemory:
    torch.manual_seed(0)
    return EBMMemory(MLPEnergy(MLPConfig(input_size=6, hidden_size=10, dynamic_size=dynamic_size)), EBMMConfig())


def patterns(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def foreign_state_read():
    return mlp_memory(4).read(patterns(2, 3, 6), mlp_memory(5).write(patterns(2, 3, 6)))


def foreign_state_write():
    return mlp_memory(4).write(patterns(2, 3, 6), mlp_memory(5).initial_state(2))


def state_with(value: float, name: str = "memory.weight") -> MemoryState:
    """A written state of ``mlp_memory()`` whose fast weight ``name`` holds ``value`` in one entry."""
    state = mlp_memory().write(patterns(2, 3, 6))
    fast = dict(state.fast_weights)
    fast[name] = fast[name].detach().clone()
    fast[name].view(-1)[1] = value
    return MemoryState(fast, state.num_written)


def read_result():
    memory = mlp_memory()
    return memory.read(patterns(2, 3, 6), memory.write(patterns(2, 3, 6)))


def pattern_with(value: float) -> torch.Tensor:
    x = patterns(2, 3, 6)
    x[1, 2, 3] = value
    return x


def file_with(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    return path


def huge_spec_checkpoint(tmp_path: Path) -> Path:
    """A small checkpoint whose spec asks for a 10¹²-parameter energy."""
    memory = mlp_memory()
    spec = memory_spec(memory)
    spec["energy_config"] = {**spec["energy_config"], "input_size": 10**6, "hidden_size": 10**6, "dynamic_size": 10**6}
    path = tmp_path / "huge.pt"
    torch.save({"memory_spec": spec, "model": memory.state_dict()}, path)
    return path


API_CASES = [
    # EBMMemory.write / read
    ("float64 patterns", lambda: mlp_memory().write(patterns(2, 3, 6, dtype=torch.float64)), TypeError, "cast"),
    ("float16 patterns", lambda: mlp_memory().write(patterns(2, 3, 6, dtype=torch.float16)), TypeError, "cast"),
    (
        "float64 queries",
        lambda: mlp_memory().read(patterns(1, 2, 6).double(), mlp_memory().initial_state(1)),
        TypeError,
        "cast",
    ),  # fmt: skip
    ("read(x, None)", lambda: mlp_memory().read(patterns(2, 3, 6), None), TypeError, "MemoryState"),
    ("read(x, dict)", lambda: mlp_memory().read(patterns(2, 3, 6), {}), TypeError, "MemoryState"),
    ("write(x, tensor)", lambda: mlp_memory().write(patterns(2, 3, 6), torch.zeros(2)), TypeError, "MemoryState"),
    ("state of another dynamic_size (read)", foreign_state_read, ValueError, "dynamic_size"),
    ("state of another dynamic_size (write)", foreign_state_write, ValueError, "dynamic_size"),
    (
        "state with other B",
        lambda: mlp_memory().read(patterns(2, 3, 6), mlp_memory().initial_state(3)),
        ValueError,
        "episodes",
    ),  # fmt: skip
    ("patterns out of range", lambda: mlp_memory().write(patterns(2, 3, 6) + 2), ValueError, "data_range"),
    ("patterns of a wrong size", lambda: mlp_memory().write(patterns(2, 3, 5)), ValueError, "shape"),
    ("int patterns", lambda: mlp_memory().write(torch.ones(2, 3, 6, dtype=torch.long)), ValueError, "floating"),
    ("list patterns", lambda: mlp_memory().write([[0.0] * 6]), ValueError, "torch.Tensor"),
    ("chunk_size 0", lambda: mlp_memory().write_chunked(patterns(2, 3, 6), 0), ValueError, "chunk_size"),
    ("write_chunked rank-1", lambda: mlp_memory().write_chunked(patterns(6), 2), ValueError, r"\[B, N, 6\]"),
    ("write_chunked of a list", lambda: mlp_memory().write_chunked([[0.0] * 6], 2), ValueError, "torch.Tensor"),
    (
        "read a NaN state",
        lambda: mlp_memory().read(patterns(2, 3, 6), state_with(NAN)),
        NonFiniteState,
        "NaN or inf in fast weight.*'memory.weight'",
    ),
    (
        "read an +inf state",
        lambda: mlp_memory().read(patterns(2, 3, 6), state_with(INF, "memory.bias")),
        NonFiniteState,
        "'memory.bias'",
    ),
    (
        "write into a NaN state",
        lambda: mlp_memory().write(patterns(2, 3, 6), state_with(NAN)),
        NonFiniteState,
        "'memory.weight'",
    ),
    (
        "write_chunked into an -inf state",
        lambda: mlp_memory().write_chunked(patterns(2, 3, 6), 1, state_with(-INF)),
        NonFiniteState,
        "'memory.weight'",
    ),
    (
        "meta_loss of NaN patterns",
        lambda: mlp_memory().meta_loss(pattern_with(NAN), read_result()),
        ValueError,
        "patterns contains NaN or inf",
    ),
    (
        "meta_loss of +inf patterns",
        lambda: mlp_memory().meta_loss(pattern_with(INF), read_result()),
        ValueError,
        "patterns contains NaN or inf",
    ),
    (
        "meta_loss(patterns, tensor)",
        lambda: mlp_memory().meta_loss(patterns(2, 3, 6), read_result().iterates),
        TypeError,
        "ReadResult",
    ),
    ("meta_loss(list, result)", lambda: mlp_memory().meta_loss([[0.0]], read_result()), TypeError, "torch.Tensor"),
    # EBMMConfig
    ("alpha_init=inf", lambda: EBMMConfig(alpha_init=INF), ValueError, "alpha_init"),
    ("alpha_init=nan", lambda: EBMMConfig(alpha_init=NAN), ValueError, "alpha_init"),
    ("beta_init=-1", lambda: EBMMConfig(beta_init=-1.0), ValueError, "beta_init"),
    ("read_step_max=inf", lambda: EBMMConfig(read_step_max=INF), ValueError, "read_step_max"),
    ("read_step_init > max", lambda: EBMMConfig(read_step_init=20.0), ValueError, "read_step"),
    ("write_lr_init=nan", lambda: EBMMConfig(write_lr_init=NAN), ValueError, "write_lr_init"),
    ("write_lr_init=0", lambda: EBMMConfig(write_lr_init=0.0), ValueError, "write_lr_init"),
    ("momentum_init=1", lambda: EBMMConfig(momentum_init=1.0), ValueError, "momentum_init"),
    ("write_steps=0", lambda: EBMMConfig(write_steps=0), ValueError, "write_steps"),
    ("read_steps=2.5", lambda: EBMMConfig(read_steps=2.5), ValueError, "read_steps"),
    ("chunk_size=-1", lambda: EBMMConfig(chunk_size=-1), ValueError, "chunk_size"),
    ("prior_anchor='last'", lambda: EBMMConfig(prior_anchor="last"), ValueError, "prior_anchor"),
    ("data_range=(0, inf)", lambda: EBMMConfig(data_range=(0.0, INF)), ValueError, "data_range"),
    ("data_range=(1, 0)", lambda: EBMMConfig(data_range=(1.0, 0.0)), ValueError, "data_range"),
    ("data_range=(0,)", lambda: EBMMConfig(data_range=(0.0,)), ValueError, "data_range"),
    # energy configs
    ("MLPConfig(hops=-1)", lambda: MLPConfig(hops=-1), ValueError, "hops"),
    ("MLPConfig(input_size=0)", lambda: MLPConfig(input_size=0), ValueError, "input_size"),
    (
        "MLPEnergy dynamic > hidden",
        lambda: MLPEnergy(MLPConfig(hidden_size=8, dynamic_size=9)),
        ValueError,
        "dynamic_size",
    ),  # fmt: skip
    ("GatedRNNConfig(input_size=0)", lambda: GatedRNNConfig(input_size=0), ValueError, "input_size"),
    ("GatedRNNConfig(hops=0)", lambda: GatedRNNConfig(hops=0), ValueError, "hops"),
    ("ResNetConvConfig(image_size=-32)", lambda: ResNetConvConfig(image_size=-32), ValueError, "image_size"),
    ("ResNetFCConfig(channels=0)", lambda: ResNetFCConfig(channels=0), ValueError, "channels"),
    ("ResNetLowerConvConfig(hops=-1)", lambda: ResNetLowerConvConfig(hops=-1), ValueError, "hops"),
    (
        "ResNetConvConfig.cifar10(dynamic_size=0)",
        lambda: ResNetConvConfig.cifar10(dynamic_size=0),
        ValueError,
        "dynamic_size",
    ),  # fmt: skip
    ("HopfieldConfig(dim=1)", lambda: HopfieldConfig(dim=1), ValueError, "dim"),
    # training settings
    ("lr=nan", lambda: TrainConfig(lr=NAN), ValueError, "lr"),
    ("lr=inf", lambda: TrainConfig(lr=INF), ValueError, "lr"),
    ("lr=-1", lambda: TrainConfig(lr=-1.0), ValueError, "lr"),
    ("schedule_lr=nan", lambda: TrainConfig(schedule_lr=NAN), ValueError, "schedule_lr"),
    ("schedule_lr=0", lambda: TrainConfig(schedule_lr=0.0), ValueError, "schedule_lr"),
    ("grad_clip=inf", lambda: TrainConfig(grad_clip=INF), ValueError, "grad_clip"),
    ("weight_decay=-1", lambda: TrainConfig(weight_decay=-1.0), ValueError, "weight_decay"),
    ("skip_grad_norm=nan", lambda: TrainConfig(skip_grad_norm=NAN), ValueError, "skip_grad_norm"),
    ("steps=-1", lambda: TrainConfig(steps=-1), ValueError, "steps"),
    ("max_rollbacks=-1", lambda: TrainConfig(max_rollbacks=-1), ValueError, "max_rollbacks"),
    ("time_limit_s=nan", lambda: TrainConfig(time_limit_s=NAN), ValueError, "time_limit_s"),
    # binary task
    ("corrupt too many bits", lambda: corrupt(sample_patterns(1, 2, 8), 9), ValueError, "num_corrupted"),
    ("error_bits shapes differ", lambda: error_bits(torch.ones(1, 2, 8), torch.ones(1, 3, 8)), ValueError, "shape"),
    # environments
    (
        "DelayedRecall delay=10**12",
        lambda: gym.make("ebmm/DelayedRecall-v0", delay=10**12),
        ValueError,
        "MAX_EPISODE_LENGTH",
    ),  # fmt: skip
    ("DelayedRecall delay=-1", lambda: gym.make("ebmm/DelayedRecall-v0", delay=-1), ValueError, "delay"),
    # checkpoints
    (
        "build_memory of a huge spec",
        lambda: build_memory(
            {
                "energy": "MLPEnergy",
                "energy_config": {"input_size": 10**6, "hidden_size": 10**6, "dynamic_size": 10**6},
                "ebmm_config": {},
            }
        ),
        ValueError,
        "parameters",
    ),  # fmt: skip
    (
        "build_memory of an unknown energy",
        lambda: build_memory({"energy": "Nope", "energy_config": {}, "ebmm_config": {}}),
        ValueError,
        "unknown energy",
    ),  # fmt: skip
    (
        "build_memory with an unknown field",
        lambda: build_memory({"energy": "MLPEnergy", "energy_config": {"width": 3}, "ebmm_config": {}}),
        ValueError,
        "config",
    ),  # fmt: skip
    ("build_memory of a list", lambda: build_memory([1, 2]), ValueError, "dict"),
    # data sets (checked before any file is read)
    ("load_mnist(image_size=0)", lambda: load_mnist(root="/nonexistent", image_size=0), ValueError, "image_size"),
    (
        "load_omniglot(image_size=2.5)",
        lambda: load_omniglot(root="/nonexistent", image_size=2.5),
        ValueError,
        "image_size",
    ),
    # training settings
    ("max_skipped_fraction=2", lambda: TrainConfig(max_skipped_fraction=2.0), ValueError, "max_skipped_fraction"),
]


@pytest.mark.parametrize("name, call, error, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_raises_a_clear_error(name, call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_extractor_rejects_a_negative_cache_size():
    from ebmm_rl.rl import EpisodeMemoryWrapper
    from ebmm_rl.rl.extractor import EBMMExtractor

    space = EpisodeMemoryWrapper(gym.make("ebmm/BinaryRecall-Easy-v0")).observation_space
    with pytest.raises(ValueError, match="cache_size"):
        EBMMExtractor(space, cache_size=-1)
    with pytest.raises(TypeError, match="memory must be an ebmm_rl.rl.CoreConfig or a dict of its fields"):
        EBMMExtractor(space, memory=5)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"not a checkpoint at all", "cannot be read"), (b"PK\x03\x04trunc", "cannot be read")],
    ids=["empty", "garbage", "truncated zip"],
)
def test_unreadable_checkpoint_names_the_file(tmp_path, content, message):
    path = file_with(tmp_path, content)
    for load in (load_checkpoint, load_memory):
        with pytest.raises(ValueError, match=message) as info:
            load(path)
        assert str(path) in str(info.value)


def test_checkpoint_spec_larger_than_its_weights_is_refused_before_allocating(tmp_path):
    with pytest.raises(ValueError, match="parameters"):
        load_memory(huge_spec_checkpoint(tmp_path))


TINY = ["--num-patterns", "3", "--dim", "16", "--num-corrupted", "8", "--hidden-size", "16", "--dynamic-size", "8",
        "--batch-size", "2", "--eval-batches", "1", "--no-progress", "--threads", "1"]  # fmt: skip
CLI_CASES = [
    ("steps 0", "meta_train_binary.py", ["--steps", "0"], "--steps"),
    ("lr nan", "meta_train_binary.py", ["--lr", "nan"], "lr"),
    ("lr inf", "meta_train_binary.py", ["--lr", "inf"], "lr"),
    ("lr negative", "meta_train_binary.py", ["--lr", "-1"], "lr"),
    ("schedule-lr nan", "meta_train_binary.py", ["--schedule-lr", "nan"], "schedule_lr"),
    ("lr not a number", "meta_train_binary.py", ["--lr", "abc"], "lr"),
    ("unknown flag", "meta_train_binary.py", ["--no-such-flag"], "no-such-flag"),
    ("num-corrupted > dim", "meta_train_binary.py", ["--num-corrupted", "99"], "num-corrupted"),
    ("batch-size 0", "meta_train_binary.py", ["--batch-size", "0"], "batch-size"),
    ("rollback-after too large", "meta_train_binary.py", ["--rollback-after", "500"], "rollback_after"),
    ("resume without run-dir", "meta_train_binary.py", ["--resume"], "--run-dir"),
    ("resume from nothing", "meta_train_binary.py", ["--resume", "--run-dir", "{tmp}/missing"], "checkpoint"),
    ("device bogus", "meta_train_binary.py", ["--device", "bogus"], "device"),
    ("bench_rl unknown agent", "bench_rl.py", ["--agents", "gru"], "unknown agents"),
    ("bench_rl bptt 0", "bench_rl.py", ["--bptt-steps", "0"], "--bptt-steps"),
]
if not torch.cuda.is_available():
    CLI_CASES += [
        ("device cuda on a CPU build", "meta_train_binary.py", ["--device", "cuda"], "CUDA"),
        ("meta_train_env device cuda", "meta_train_env.py", ["--device", "cuda"], "CUDA"),
        ("eval_binary device cuda", "eval_binary.py", ["--device", "cuda"], "CUDA"),
    ]


@pytest.mark.parametrize("name, script, args, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_a_usage_error(tmp_path, name, script, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    extra = TINY if script == "meta_train_binary.py" else []
    result = subprocess.run(
        [sys.executable, f"scripts/{script}", *extra, *args, "--run-root", str(tmp_path / "runs")]
        if script == "meta_train_binary.py"
        else [sys.executable, f"scripts/{script}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and message in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "missing").exists()


# ------------------------------------------------------------------------------------------------ data files
class Touch:
    """Unpickling it creates ``path``: a stand-in for any code a crafted pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_cifar_labels_that_are_not_numbers_name_the_file(tmp_path):
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": ["cat", "dog"]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match="'labels' must be integers 0..9, got .* 'cat'") as info:
        load_cifar10("test", tmp_path)
    assert str(tmp_path / "test_batch") in str(info.value)


def test_an_imagenet_npz_of_pickled_objects_is_refused_unread(tmp_path):
    marker = tmp_path / "ran"
    np.savez(tmp_path / "val_data.npz", data=np.zeros((1, 12288), np.uint8), labels=np.array([Touch(marker)]))
    with pytest.raises(ValueError, match="pickled Python objects.*re-download") as info:
        load_imagenet64("test", tmp_path)
    assert str(tmp_path / "val_data.npz") in str(info.value) and "allow_pickle" not in str(info.value)
    assert not marker.exists()
    np.savez(tmp_path / "val_data.npz", data=np.zeros((1, 12288), np.uint8), labels=np.array(["n01440764"]))
    with pytest.raises(ValueError, match="'labels' must be integers 1..1000, got .* 'n01440764'"):
        load_imagenet64("test", tmp_path)


# ------------------------------------------------------------------------------------------- agent commands
def write_agent_files(tmp: Path) -> None:
    """The broken inputs of AGENT_CASES: zips, run folders and presets."""
    (tmp / "empty.zip").write_bytes(b"")
    (tmp / "random.zip").write_bytes(bytes(range(256)) * 8)
    (tmp / "json").mkdir()
    (tmp / "json" / "args.json").write_text('{"algo": "PPO", "args": {"env": ')
    tensors = tmp / "policy.pth"
    torch.save({"weight": torch.zeros(2)}, tensors)
    with zipfile.ZipFile(tmp / "json" / "model.zip", "w") as archive:  # readable: the args.json beside it is not
        archive.writestr("data", "{}")
        archive.writestr("policy.pth", tensors.read_bytes())
    (tmp / "ckpt").mkdir()
    (tmp / "ckpt" / "args.json").write_text('{"algo": "PPO", "args": {"env": "ebmm/DelayedRecall-Easy-v0"}}')
    with zipfile.ZipFile(tmp / "whole.zip", "w") as archive:
        archive.writestr("data", "{}" * 2000)
        archive.writestr("policy.pth", b"\0" * 4000)
    (tmp / "ckpt" / "checkpoint.zip").write_bytes((tmp / "whole.zip").read_bytes()[:3000])  # cut off mid-write
    (tmp / "yaml.yml").write_text("n_envs: [1, 2\nmemory: mlp\n")
    (tmp / "n_envs.yml").write_text("memory: mlp\nn_envs: four\n")


AGENT_CASES = [
    ("evaluate an empty zip", ["agents.evaluate", "{tmp}/empty.zip"], "is empty (0 bytes)"),
    (
        "evaluate a random zip",
        ["agents.evaluate", "{tmp}/random.zip", "--env", "ebmm/DelayedRecall-Easy-v0", "--memory", "mlp"],
        "cannot be read as a zip",
    ),  # fmt: skip
    (
        "evaluate beside a malformed args.json",
        ["agents.evaluate", "{tmp}/json/model.zip"],
        "args.json is not valid JSON",
    ),
    ("resume from a truncated checkpoint.zip", ["agents.train", "--resume", "{tmp}/ckpt"], "cannot be read as a zip"),
    ("preset of malformed YAML", ["agents.train", "--preset", "{tmp}/yaml.yml"], "is not valid YAML (line 2)"),
    (
        "preset with a non-integer n_envs",
        ["agents.train", "--preset", "{tmp}/n_envs.yml"],
        "n_envs must be an integer, got 'four'",
    ),  # fmt: skip
]


@pytest.mark.parametrize("name, args, message", AGENT_CASES, ids=[c[0] for c in AGENT_CASES])
def test_agent_command_bad_input_is_a_usage_error(tmp_path, name, args, message):
    write_agent_files(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    command = [sys.executable, "-m", *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and message in result.stderr, result.stderr
    assert sorted(tmp_path.rglob("*")) == before  # no run folder, nothing written

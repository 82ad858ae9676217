"""The scripts' shared run arguments (ebmm_rl.cli.RunArgs) and TrainConfig.from_args."""

from __future__ import annotations

import dataclasses
import runpy
import sys
from pathlib import Path

import pytest
import torch

from ebmm_rl.cli import RunArgs, start_run
from ebmm_rl.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("meta_train_binary", "meta_train_images", "meta_train_env", "meta_train_baseline", "meta_train_prior")


def script_args(name: str) -> type:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return runpy.run_path(str(ROOT / "scripts" / f"{name}.py"), run_name="not_main")["Args"]
    finally:
        sys.path.remove(str(ROOT / "scripts"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_meta_training_script_takes_the_run_arguments(name):
    args_class = script_args(name)
    assert issubclass(args_class, RunArgs)
    run_fields = [f.name for f in dataclasses.fields(RunArgs)]
    assert run_fields == ["seed", "device", "threads", "run_root", "run_dir", "resume", "progress"]
    assert set(run_fields) <= {f.name for f in dataclasses.fields(args_class)}


@pytest.mark.parametrize("name", SCRIPTS)
def test_from_args_takes_every_field_of_the_same_name(name):
    args = script_args(name)(seed=7, device="cpu", steps=123, time_limit_min=0.5, progress=False)
    config = TrainConfig.from_args(args)
    shared = {f.name for f in dataclasses.fields(TrainConfig)} & {f.name for f in dataclasses.fields(args)}
    assert {"steps", "lr", "grad_clip", "checkpoint_every", "eval_every", "seed", "device", "progress"} <= shared
    for field in shared:  # by hand: the value of the script's field, whatever its default
        assert getattr(config, field) == getattr(args, field), field
    assert config.time_limit_s == 30.0  # minutes become seconds
    for field in {f.name for f in dataclasses.fields(TrainConfig)} - shared - {"time_limit_s"}:
        assert getattr(config, field) == getattr(TrainConfig(), field), field  # the rest keeps TrainConfig's default


def test_from_args_overrides_and_refuses_unknown_fields():
    @dataclasses.dataclass
    class Args(RunArgs):
        steps: int = 10
        lr: float = 1e-3
        unrelated: str = "x"

    config = TrainConfig.from_args(Args(device="cpu"), steps=3, progress=False)
    assert (config.steps, config.lr, config.progress, config.time_limit_s) == (3, 1e-3, False, 0.0)
    with pytest.raises(TypeError, match="no fields .*stepz"):
        TrainConfig.from_args(Args(), stepz=3)
    with pytest.raises(ValueError, match="lr must be a finite number"):
        TrainConfig.from_args(Args(lr=float("nan")))


def test_start_run_usage_errors_and_threads(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        assert start_run(RunArgs(device="cpu", threads=1), steps=5) == torch.device("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    for args, message in [
        (RunArgs(device="cpu", resume=True), "--resume needs --run-dir"),
        (RunArgs(device="cpu", threads=-1), "--threads must be >= 0"),
        (RunArgs(device="gpu0"), "is not a torch device"),
        (RunArgs(device="cpu", resume=True, run_dir=str(tmp_path)), "cannot be resumed from"),
    ]:
        with pytest.raises(SystemExit) as stop:
            start_run(args, steps=5)
        assert stop.value.code == 2 and message in capsys.readouterr().err

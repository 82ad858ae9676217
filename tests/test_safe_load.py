"""Agent zips load without running code from them: crafted pickles are replaced or refused, tensors weights-only."""

from __future__ import annotations

import base64
import json
import pathlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import cloudpickle
import pytest
import torch
from stable_baselines3.common.save_util import load_from_zip_file

import envs  # noqa: F401
from agents import evaluate as evaluate_module
from agents import train
from agents.safe_load import AgentZipError, read_zip
from agents.train import UsageError
from ebmm_rl.checkpoint import save_memory

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--env", "ebmm/DelayedRecall-Easy-v0", "--n-envs", "1", "--n-steps", "16", "--batch-size", "16",
    "--n-epochs", "1", "--net-arch", "8", "--eval-freq", "0", "--no-progress-bar",
]  # fmt: skip


class Touch:
    """Unpickling it creates ``path``: a stand-in for any code a crafted pickle runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def serialized(payload) -> dict[str, str]:
    """``payload`` as SB3 writes a pickled entry of ``data``."""
    return {":type:": "<class 'object'>", ":serialized:": base64.b64encode(cloudpickle.dumps(payload)).decode()}


def craft(source: Path, target: Path, entries: dict | None = None, tensors: dict | None = None) -> Path:
    """A copy of the zip ``source`` at ``target`` with other ``data`` keys ``entries`` and tensor files ``tensors``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename == "data" and entries:
                content = json.dumps({**json.loads(content), **entries}).encode()
            if tensors and item.filename in tensors:
                content = tensors[item.filename]
            dst.writestr(item, content)
    return target


def run_copy(run_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory) -> Path:
    """A 32-step PPO run (learning rate 7e-4, clip range 0.15) with a checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    train.cli([*TINY, "--memory", "mlp", "--total-timesteps", "32", "--checkpoint-freq", "16", "--learning-rate",
               "7e-4", "--clip-range", "0.15", "--run-root", str(root)])  # fmt: skip
    (run_dir,) = root.iterdir()
    return run_dir


def same_weights(a, b) -> bool:
    sa, sb = a.policy.state_dict(), b.policy.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def trusted(path: Path):
    """SB3's own loader on an untouched zip of this test (the reference)."""
    return train.algorithm_class("PPO").load(path, device="cpu")


def test_sb3_runs_the_crafted_payload(mlp_run, tmp_path):
    """The reference: SB3's loader unpickles a crafted entry, and that runs its code."""
    marker = tmp_path / "ran"
    crafted = craft(
        mlp_run / "model.zip", tmp_path / "run" / "model.zip", {"observation_space": serialized(Touch(marker))}
    )
    load_from_zip_file(crafted)
    assert marker.exists()


@pytest.mark.parametrize(
    "key",
    [
        "observation_space",
        "action_space",
        "policy_class",
        "lr_schedule",
        "clip_range",
        "policy_kwargs",
        "_last_obs",
        "ep_info_buffer",
        "rollout_buffer_class",
    ],  # fmt: skip
)
def test_pickles_of_known_entries_are_rebuilt_not_run(mlp_run, tmp_path, key):
    marker = tmp_path / "ran"
    run_dir = run_copy(mlp_run, tmp_path)
    craft(mlp_run / "model.zip", run_dir / "model.zip", {key: serialized(Touch(marker))})
    model, args = evaluate_module.load_model(run_dir / "model.zip")
    assert not marker.exists()
    assert same_weights(model, trusted(mlp_run / "model.zip"))
    assert (model.lr_schedule(1.0), model.clip_range(1.0)) == (7e-4, 0.15)  # the run's settings, from args.json
    assert model.policy.net_arch == [8] and args.memory == "mlp"


def test_a_pickle_of_any_other_entry_is_refused(mlp_run, tmp_path):
    marker = tmp_path / "ran"
    run_dir = run_copy(mlp_run, tmp_path)
    craft(mlp_run / "model.zip", run_dir / "model.zip", {"gift": serialized(Touch(marker))})
    with pytest.raises(UsageError, match="gift.*--trust-pickled"):
        evaluate_module.load_model(run_dir / "model.zip")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["policy.pth", "policy.optimizer.pth", "pytorch_variables.pth"])
def test_tensor_files_load_weights_only(mlp_run, tmp_path, name):
    marker = tmp_path / "ran"
    run_dir = run_copy(mlp_run, tmp_path)
    payload = tmp_path / "payload.pth"
    torch.save({"weight": Touch(marker)}, payload)
    craft(mlp_run / "model.zip", run_dir / "model.zip", tensors={name: payload.read_bytes()})
    with pytest.raises(UsageError, match=f"{name} is not a plain tensor file.*weights_only"):
        evaluate_module.load_model(run_dir / "model.zip")
    assert not marker.exists()


def test_evaluate_command_runs_nothing_and_trust_pickled_restores_sb3(mlp_run, tmp_path):
    marker = tmp_path / "ran"
    run_dir = run_copy(mlp_run, tmp_path)
    entries = {k: serialized(Touch(marker)) for k in ("observation_space", "policy_class", "lr_schedule")}
    craft(mlp_run / "model.zip", run_dir / "model.zip", entries)
    command = [sys.executable, "-m", "agents.evaluate", str(run_dir / "model.zip"), "--episodes", "2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and "over 2 episodes" in result.stdout, result.stderr
    assert not marker.exists()

    craft(mlp_run / "model.zip", run_dir / "other.zip", {"gift": serialized(Touch(marker))})
    result = subprocess.run(command[:3] + [str(run_dir / "other.zip")], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "gift" in result.stderr and "--trust-pickled" in result.stderr and not marker.exists()

    result = subprocess.run([*command, "--trust-pickled"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            check=False)  # fmt: skip
    assert marker.exists()  # the opt-in unpickles, as SB3 does: for trusted files only


def test_a_bare_zip_loads_from_env_and_memory(mlp_run, tmp_path):
    marker = tmp_path / "ran"
    bare = craft(mlp_run / "model.zip", tmp_path / "bare" / "model.zip", {"action_space": serialized(Touch(marker))})
    model, args = evaluate_module.load_model(bare, env="ebmm/DelayedRecall-Easy-v0", memory="mlp")
    assert not marker.exists() and same_weights(model, trusted(mlp_run / "model.zip"))
    assert type(model).__name__ == "PPO" and model.policy.net_arch == [8]  # net_arch: plain JSON


def test_resume_from_a_crafted_checkpoint_runs_nothing(mlp_run, tmp_path):
    marker = tmp_path / "ran"
    run_dir = run_copy(mlp_run, tmp_path)
    entries = {k: serialized(Touch(marker)) for k in ("observation_space", "clip_range", "_last_obs")}
    craft(mlp_run / "checkpoint.zip", run_dir / "checkpoint.zip", entries)
    model = train.cli(["--resume", str(run_dir), "--total-timesteps", "48"])
    assert model.num_timesteps == 48 and not marker.exists()
    assert (model.lr_schedule(1.0), model.clip_range(1.0)) == (7e-4, 0.15)

    craft(mlp_run / "checkpoint.zip", run_dir / "checkpoint.zip", {"gift": serialized(Touch(marker))})
    command = [sys.executable, "-m", "agents.train", "--resume", str(run_dir), "--total-timesteps", "64"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "gift" in result.stderr and not marker.exists()


def test_resume_of_a_finished_run_has_nothing_to_do(mlp_run, tmp_path, capsys):
    run_dir = run_copy(mlp_run, tmp_path)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    for steps in ("32", "16"):
        assert train.cli(["--resume", str(run_dir), "--total-timesteps", steps]) is None
        out = capsys.readouterr().out
        assert "already at step 32" in out and "nothing to do" in out and "--total-timesteps above 32" in out
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def fresh_memory(path: Path) -> None:
    """A memory core for DelayedRecall's 2-entry patterns, saved as scripts/meta_train_env.py saves one."""
    from ebmm_rl.rl.core import CoreConfig, MemoryCore

    torch.manual_seed(0)
    core = MemoryCore(2, CoreConfig.build(embed_size=4, key_size=2, value_size=2, hidden_size=8, dynamic_size=4))
    save_memory(core, path)


def test_a_memory_checkpoint_run_loads_without_the_checkpoint(tmp_path):
    fresh_memory(tmp_path / "memory.pt")
    train.cli([*TINY, "--memory", "ebmm", "--total-timesteps", "16", "--memory-checkpoint", str(tmp_path / "memory.pt"),
               "--checkpoint-freq", "16", "--run-root", str(tmp_path / "runs")])  # fmt: skip
    (run_dir,) = (tmp_path / "runs").iterdir()
    record = json.loads((run_dir / "args.json").read_text())["memory_checkpoint"]
    spec = record["memory_spec"]["core"]
    assert spec["config"]["hidden_size"] == 8 and spec["row_size"] == 2
    reference = trusted(run_dir / "model.zip")  # SB3's loader: the memory object travels pickled in the zip
    (tmp_path / "memory.pt").unlink()
    model, _ = evaluate_module.load_model(run_dir / "model.zip")
    assert same_weights(model, reference)
    assert train.cli(["--resume", str(run_dir), "--total-timesteps", "32"]).num_timesteps == 32
    assert json.loads((run_dir / "args.json").read_text())["memory_checkpoint"] == record  # kept for the next load

    sidecar = json.loads((run_dir / "args.json").read_text())
    del sidecar["memory_checkpoint"]  # a run folder written before args.json described the memory
    (run_dir / "args.json").write_text(json.dumps(sidecar))
    with pytest.raises(UsageError, match="put the file back"):
        evaluate_module.load_model(run_dir / "model.zip")


def test_read_zip_names_what_is_wrong(mlp_run, tmp_path):
    cases = {
        "empty.zip": (b"", "empty"),
        "random.zip": (b"\x00" * 100, "cannot be read as a zip"),
        "truncated.zip": ((mlp_run / "model.zip").read_bytes()[:2000], "cannot be read as a zip"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AgentZipError, match=message):
            read_zip(tmp_path / name)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("data", "{}")
    with pytest.raises(AgentZipError, match="no 'policy.pth'"):
        read_zip(tmp_path / "other.zip")
    craft(mlp_run / "model.zip", tmp_path / "x" / "model.zip")
    assert read_zip(tmp_path / "x" / "model.zip").parameters == sum(
        p.numel() for p in trusted(mlp_run / "model.zip").policy.state_dict().values()
    )


def test_weights_that_do_not_fit_the_env_are_a_usage_error(mlp_run):
    with pytest.raises(UsageError, match="do not fit.*ebmm/BinaryRecall-Easy-v0 wrapped for --memory mlp"):
        evaluate_module.load_model(mlp_run / "model.zip", env="ebmm/BinaryRecall-Easy-v0")

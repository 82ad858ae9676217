"""agents.train's presets, checkpoints, resume and usage errors; agents.evaluate; the quickstart; learning curves."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from stable_baselines3.common.save_util import load_from_zip_file

import envs  # noqa: F401
from agents import evaluate as evaluate_module
from agents import train
from agents.train import Args, UsageError, parse_args

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("BinaryRecall", "KeyValueRecall", "ImageRecall", "Familiarity", "DelayedRecall")
sys.path.insert(0, str(ROOT / "scripts"))

import plot_curves  # noqa: E402
import quickstart  # noqa: E402

TINY = [
    "--env", "ebmm/DelayedRecall-Easy-v0", "--memory", "ebmm", "--n-envs", "2", "--vec-env", "dummy",
    "--n-steps", "16", "--batch-size", "16", "--n-epochs", "2", "--hidden-size", "8", "--dynamic-size", "4",
    "--write-steps", "1", "--read-steps", "1", "--eval-episodes", "2", "--no-progress-bar",
]  # fmt: skip
"""A tiny EBMM agent: 2 envs x 16 steps per rollout, so a rollout is 32 env steps."""


# ------------------------------------------------------------------------------------------------------ presets
def test_preset_values_land_in_args_and_flags_override_them():
    file = ROOT / "agents" / "presets" / "KeyValueRecall.yml"
    entry = yaml.safe_load(file.read_text())["KeyValueRecall-Medium/mlp"]
    # docs/rl_results.md's sweep: --steps 100000 --gamma 0 --learning-rate 1e-3 --n-epochs 10 --net-arch --n-envs 8
    assert (entry["total_timesteps"], entry["gamma"], entry["learning_rate"]) == (100_000, 0.0, 1e-3)
    assert (entry["n_epochs"], entry["net_arch"], entry["n_envs"], entry["vec_env"]) == (10, [], 8, "dummy")

    args = parse_args(["--preset", "KeyValueRecall-Medium/mlp"])
    assert (args.env, args.memory, args.gamma, args.learning_rate) == ("ebmm/KeyValueRecall-Medium-v0", "mlp", 0, 1e-3)
    assert (args.n_epochs, args.net_arch, args.n_envs, args.vec_env, args.total_timesteps) == (
        10,
        (),
        8,
        "dummy",
        10**5,
    )
    assert args.batch_size == 64 and args.seed == 0

    # explicit flags win, before or after --preset; the preset's other values stay
    args = parse_args(["--gamma", "0.5", "--preset", "KeyValueRecall-Medium/mlp", "--net-arch", "32", "--seed", "4"])
    assert (args.gamma, args.net_arch, args.seed) == (0.5, (32,), 4)
    assert (args.learning_rate, args.n_epochs, args.n_envs, args.memory) == (1e-3, 10, 8, "mlp")
    assert Args().gamma == 0.99  # the preset did not change the class defaults


def test_every_preset_names_its_family_and_a_known_memory():
    names = train.preset_names()
    medium = [f"{f}-Medium/{a}" for f in FAMILIES for a in ("mlp", "frame-stack", "lstm", "ebmm-meta")]
    assert sorted(names) == sorted([*medium, "DelayedRecall-Easy/mlp", "DelayedRecall-Easy/ebmm"])
    for name in names:
        fields = train.load_preset(name)
        family_level, agent = name.split("/")
        assert fields["env"] == f"ebmm/{family_level}-v0"
        assert fields["memory"] == ("ebmm" if agent == "ebmm-meta" else agent)
        assert fields["memory"] in train.MEMORIES


def test_the_library_half_imports_without_the_command_line():
    code = (
        "import sys, agents.common, agents.evaluate\n"
        "assert 'agents.train' not in sys.modules, 'agents.common or agents.evaluate imports the CLI'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr
    from agents import common

    defined = [
        n
        for n, v in vars(common).items()
        if not n.startswith("_") and getattr(v, "__module__", None) == common.__name__
    ]
    assert {"Args", "make_env", "build_model", "validate", "read_run", "MemoryKind", "UsageError"} <= set(defined)
    for name in defined:  # every name agents.train had before the split is still there, the same object
        assert getattr(train, name) is getattr(common, name), name
    for name in ("MEMORIES", "SIDECAR", "CHECKPOINT", "RESUME_FIELDS", "PRESETS_DIR", "EpisodeMemoryWrapper"):
        assert getattr(train, name) is getattr(common, name), name


@pytest.mark.parametrize("memory", ["mlp", "ebmm"])
def test_quickstart_agents_are_the_easy_presets(memory):
    preset = dataclasses.asdict(parse_args(["--preset", f"DelayedRecall-Easy/{memory}"]))
    used = dataclasses.asdict(quickstart.train_args(quickstart.Args(), memory))
    assert preset.pop("preset") == f"DelayedRecall-Easy/{memory}" and used.pop("preset") is None
    assert preset.pop("log_stdout") and not used.pop("log_stdout")  # the quickstart prints its own table
    assert preset == used


def test_preset_from_a_yaml_file(tmp_path):
    file = tmp_path / "mine.yml"
    file.write_text("memory: lstm\nnet_arch: [16, 16]\nn_envs: 3\n")
    args = parse_args(["--preset", str(file), "--n-envs", "2"])
    assert (args.memory, args.net_arch, args.n_envs) == ("lstm", (16, 16), 2)
    file.write_text("memroy: lstm\n")
    with pytest.raises(UsageError, match="memroy"):
        parse_args(["--preset", str(file)])


# ----------------------------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "NoSuchFamily-Medium/mlp"], "unknown preset"),
        (["--n-envs", "0"], "--n-envs must be at least 1"),
        (["--total-timesteps", "-10"], "--total-timesteps must be at least 1"),
        (["--env", "ebmm/NoSuchProbe-v0"], "unknown --env"),
        (["--env", "NoSuchEnv-v3"], "unknown --env"),
        (["--memory", "no-such-memory"], "unknown --memory"),
        (["--memory", "lstm", "--algo", "a2c"], "RecurrentPPO"),
        (["--algo", "a2c", "--clip-range", "0.1"], "PPO settings"),
        (["--memory-checkpoint", "/no/such/file.pt"], "no such file"),
        (["--device", "no-such-device"], "not a torch device"),
        (["--max-patterns", "0"], "--max-patterns must be at least 1"),
        (["--aux-coef", "-1"], "--aux-coef must be"),
        (["--memory", "ebmm-recurrent", "--bptt-steps", "0"], "--bptt-steps must be at least 1"),
        (["--heads", "time", "space"], "--heads takes one or more of time, content, key, first"),
        (["--memory-prior", "missing.pt"], "--memory-prior missing.pt: no such file"),
        (["--dynamic-size", "128"], "--dynamic-size (128) must not exceed --hidden-size"),
        (["--memory", "ebmm-recurrent", "--bptt-steps", "0"], "--bptt-steps must be at least 1"),
        *([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA device")]),
    ],
)
def test_cli_mistakes_exit_2_before_creating_anything(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        train.cli([*argv, "--run-root", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err
    assert not (tmp_path / "runs").exists()


def test_cli_mistake_in_a_subprocess_has_no_traceback(tmp_path):
    command = [sys.executable, "-m", "agents.train", "--preset", "Nope/mlp", "--run-root", str(tmp_path / "r")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert "unknown preset 'Nope/mlp'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------- checkpoints, resume
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 64-step tiny EBMM run with checkpoints every 32 steps and evaluations every 32 (copied per test)."""
    root = tmp_path_factory.mktemp("runs")
    train.cli(
        [*TINY, "--total-timesteps", "64", "--checkpoint-freq", "32", "--eval-freq", "32", "--run-root", str(root)]
    )
    (run_dir,) = root.iterdir()
    return run_dir


def test_checkpoint_and_sidecar_are_written(tiny_run):
    data, _, _ = load_from_zip_file(tiny_run / "checkpoint.zip")
    assert data["num_timesteps"] == 64  # 2 rollouts of 2 envs x 16 steps
    record = json.loads((tiny_run / "args.json").read_text())
    assert record["algo"] == "PPO" and record["args"]["memory"] == "ebmm" and record["args"]["n_steps"] == 16
    assert not list(tiny_run.glob("*.tmp*"))  # the atomic writes left nothing behind


def test_resume_continues_the_step_count(tiny_run, tmp_path):
    run_dir = tmp_path / tiny_run.name
    shutil.copytree(tiny_run, run_dir)
    (run_dir / "model.zip").unlink()
    model = train.cli(["--resume", str(run_dir), "--total-timesteps", "128"])
    assert model.num_timesteps == 128
    # 2 rollouts before, 2 after, 2 epochs of 2 minibatches each: the update counter went on from the checkpoint's
    assert model._n_updates == 4 * 2
    data, _, _ = load_from_zip_file(run_dir / "checkpoint.zip")
    assert data["num_timesteps"] == 128
    with np.load(run_dir / "evaluations.npz") as evaluations:
        assert list(evaluations["timesteps"]) == [32, 64, 96, 128]  # the first run's evaluations were kept
    assert json.loads((run_dir / "args.json").read_text())["args"]["total_timesteps"] == 128


def test_resume_refuses_other_settings(tiny_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.cli(["--resume", str(tiny_run), "--learning-rate", "0.1"])
    assert exit_info.value.code == 2 and "--learning-rate" in capsys.readouterr().err


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.cli(["--resume", str(tmp_path)])
    assert exit_info.value.code == 2 and "checkpoint.zip" in capsys.readouterr().err


def test_non_finite_weights_are_not_saved(tiny_run, tmp_path):
    model = evaluate_module.load_model(tiny_run / "checkpoint.zip")[0]
    next(iter(model.policy.parameters())).data.fill_(math.nan)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert not train.save_atomically(model, tmp_path / "bad.zip")
    assert not list(tmp_path.iterdir())


def test_ppo_knobs_reach_the_model():
    args = parse_args(["--gae-lambda", "0.9", "--clip-range", "0.1", "--vf-coef", "0.25", "--max-grad-norm", "2",
                       "--target-kl", "0.02", "--memory", "mlp", "--n-steps", "16", "--batch-size", "16"])  # fmt: skip
    model = train.build_model(args, train.make_env(args))
    assert (model.gae_lambda, model.clip_range(1.0), model.vf_coef, model.max_grad_norm, model.target_kl) == (
        0.9, 0.1, 0.25, 2.0, 0.02)  # fmt: skip
    a2c = train.build_model(parse_args(["--algo", "a2c", "--memory", "mlp"]), train.make_env(Args(memory="mlp")))
    assert a2c.gae_lambda == 1.0  # unset knobs keep the algorithm's own default


def test_bptt_steps_trains_with_ebmm_recurrent_ppo():
    argv = ["--env", "ebmm/CartPole-NoVel-v1", "--memory", "ebmm-recurrent", "--bptt-steps", "2", "--n-steps", "16",
            "--batch-size", "16"]  # fmt: skip
    args = parse_args(argv)
    model = train.build_model(args, train.make_env(args))
    assert type(model).__name__ == "EBMMRecurrentPPO" and model.policy.bptt_steps == 2
    assert train.algorithm_class(train.algorithm_name(args)) is type(model)  # what agents.evaluate loads it with
    model.learn(32)


# --------------------------------------------------------------------------------------------------- evaluate
def _play(model, env: gym.Env, episodes: int, seed: int) -> list[float]:
    """Deterministic episodes of ``model`` on ``env``, a plain loop (first reset seeded, the next ones not)."""
    returns, obs = [], env.reset(seed=seed)[0]
    for _ in range(episodes):
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
        obs = env.reset()[0]
    return returns


def test_evaluate_replays_the_training_wrappers(tiny_run, tmp_path):
    result = evaluate_module.evaluate(evaluate_module.Args(model=str(tiny_run / "model.zip"), episodes=6, seed=5))
    model, _ = evaluate_module.load_model(tiny_run / "model.zip")
    raw = gym.make("ebmm/DelayedRecall-Easy-v0")
    wrapped = train.EpisodeMemoryWrapper(raw, write_phases=(0,))  # what --memory ebmm trains on
    assert result["returns"] == _play(model, wrapped, 6, seed=5)
    assert (result["algo"], result["chance"], result["max"]) == ("PPO", 0.5, 1.0)

    # without args.json: --env and --memory say how to wrap; the same episodes give the same returns
    bare = tmp_path / "model.zip"
    shutil.copy(tiny_run / "model.zip", bare)
    with pytest.raises(UsageError, match="--env and --memory"):
        evaluate_module.evaluate(evaluate_module.Args(model=str(bare), episodes=6, seed=5))
    again = evaluate_module.evaluate(
        evaluate_module.Args(model=str(bare), env="ebmm/DelayedRecall-Easy-v0", memory="ebmm", episodes=6, seed=5)
    )
    assert again["returns"] == result["returns"] and again["algo"] == "PPO"


def test_evaluate_command(tiny_run, tmp_path):
    command = [sys.executable, "-m", "agents.evaluate", str(tiny_run / "model.zip"), "--episodes", "3"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "over 3 episodes; chance 0.500, max 1.000" in result.stdout
    command = [sys.executable, "-m", "agents.evaluate", str(tmp_path / "missing.zip")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2 and "no such model file" in result.stderr and "Traceback" not in result.stderr


def test_evaluate_video(tiny_run, tmp_path):
    args = evaluate_module.Args(model=str(tiny_run / "model.zip"), episodes=2, video_dir=str(tmp_path / "videos"))
    try:
        import moviepy  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="moviepy"):
            evaluate_module.evaluate(args)
        return
    evaluate_module.evaluate(args)
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 2


# ------------------------------------------------------------------------------------------------- quickstart
def test_quickstart_prints_the_table(tmp_path):
    command = [sys.executable, "scripts/quickstart.py", "--total-timesteps", "64", "--eval-episodes", "4",
               "--run-root", str(tmp_path)]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    for agent in ("mlp", "ebmm"):
        value = float(rows[agent].split("|")[2])
        assert 0.0 <= value <= 1.0 and value * 4 * 2 == round(value * 4 * 2)  # 4 episodes of 2 bits: k / 8
        assert int(rows[agent].split("|")[3]) == 8 * 128  # 64 steps round up to one rollout of 8 envs x 128 steps
    assert float(rows["chance (best memoryless policy, exact)"].split("|")[2]) == 0.5  # half the bits, no memory
    assert float(rows["oracle (plays the answer, 4 episodes)"].split("|")[2]) == 1.0
    assert f"TensorBoard: tensorboard --logdir {tmp_path}" in result.stdout
    assert sorted(p.name.split("__")[1] for p in tmp_path.iterdir()) == ["ebmm", "mlp"]
    # a quiet first run: output that is not a terminal gets a few progress lines, no bar, no logger tables
    lines = result.stdout.splitlines()
    assert len(lines) <= 40 and "\r" not in result.stdout and result.stderr == ""
    for agent in ("mlp", "ebmm"):
        progress = [
            line for line in lines if line.startswith(f"ebmm/DelayedRecall-Easy-v0 {agent}: ") and "% of " in line
        ]
        assert progress == [
            line
            for line in progress
            if line.startswith(f"ebmm/DelayedRecall-Easy-v0 {agent}: 1024 steps (100% of 64), ")
        ]
    assert not [line for line in lines if line.startswith(("| time/", "| rollout/", "| train/"))]


def test_quickstart_verbose_prints_the_logger_tables(tmp_path):
    command = [sys.executable, "scripts/quickstart.py", "--agents", "mlp", "--total-timesteps", "2048",
               "--eval-episodes", "4", "--run-root", str(tmp_path), "--verbose"]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("| rollout/") for line in lines) == 2  # a table per rollout of 8 x 128 steps
    assert sum(line.startswith("| time/") for line in lines) >= 2
    progress = [line.split(": ")[1].split(")")[0] for line in lines if "% of " in line]
    assert progress == ["1024 steps (50% of 2048", "2048 steps (100% of 2048"]  # the rollouts end at 50% and 100%


@pytest.mark.parametrize("stdout_is_a_terminal", [True, False])
def test_progress_bar_on_a_terminal_and_lines_elsewhere(monkeypatch, stdout_is_a_terminal):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: stdout_is_a_terminal)
    lines, bar = train.progress_callbacks(train.Args())
    if stdout_is_a_terminal:
        assert (lines, bar) == ([], True)
    else:
        assert not bar and [type(c).__name__ for c in lines] == ["ProgressLines"]
    assert train.progress_callbacks(train.Args(progress_bar=False)) == ([], False)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(env="CartPole-v1"), "not a memory probe"),
        (dict(total_timesteps=0), "--total-timesteps must be at least 1"),
        (dict(agents=("mlp", "no-such")), "unknown --memory"),
    ],
)
def test_quickstart_mistakes_stop_before_training(tmp_path, changes, message):
    args = quickstart.Args(run_root=str(tmp_path / "runs"), **changes)
    with pytest.raises(UsageError, match=message):
        quickstart.main(args)
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------------------ curves
def _fake_run(root: Path, memory: str, seed: int, steps: list[int], results: list[list[float]]) -> None:
    run_dir = root / f"run_{memory}_{seed}"
    run_dir.mkdir()
    record = dict(algo="PPO", args=dict(env="ebmm/DelayedRecall-Easy-v0", memory=memory, seed=seed))
    (run_dir / "args.json").write_text(json.dumps(record))
    np.savez(run_dir / "evaluations.npz", timesteps=np.array(steps), results=np.array(results),
             ep_lengths=np.ones_like(np.array(results)))  # fmt: skip


def test_learning_curves_mean_and_t_interval_over_seeds(tmp_path):
    _fake_run(tmp_path, "ebmm", 0, [10, 20, 30], [[0.5, 0.5], [0.5, 1.0], [1.0, 1.0]])
    _fake_run(tmp_path, "ebmm", 1, [10, 20], [[0.0, 0.5], [1.0, 1.0]])  # stopped early: steps 10, 20 are common
    _fake_run(tmp_path, "ebmm", 2, [10, 20, 30], [[0.5, 0.5], [0.5, 0.5], [1.0, 1.0]])
    _fake_run(tmp_path, "mlp", 0, [10, 20], [[0.5, 0.5], [0.5, 0.5]])
    groups = plot_curves.main(plot_curves.Args(roots=(str(tmp_path),), out=str(tmp_path / "c.png")))
    steps, mean, ci = plot_curves.aggregate(groups["ebmm/DelayedRecall-Easy-v0"]["ebmm"])
    assert list(steps) == [10, 20]
    # step 20: per-seed means 0.75, 1.0, 0.5 -> mean 0.75, s = 0.25, t_{0.975, 2} = 4.302652729906 (tables)
    assert mean == pytest.approx([(0.5 + 0.25 + 0.5) / 3, 0.75])
    assert ci[1] == pytest.approx(4.302652729906 * 0.25 / math.sqrt(3), rel=1e-9)
    assert (tmp_path / "c.png").stat().st_size > 0


class _NoRender(gym.Env):
    metadata = {"render_modes": []}
    observation_space = gym.spaces.Box(-1, 1, (2,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode


def test_video_only_from_envs_that_render_rgb_arrays():
    gym.register("test/NoRender-v0", entry_point=_NoRender)
    try:
        assert evaluate_module._make_rendering("test/NoRender-v0") is None
    finally:
        gym.registry.pop("test/NoRender-v0")
    env = evaluate_module._make_rendering("ebmm/DelayedRecall-Easy-v0")
    env.reset(seed=0)
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8

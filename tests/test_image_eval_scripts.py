"""Image-memory evaluations: the distortion-rate and analysis scripts end to end on tiny data (and the real Omniglot
when ``EBMM_DATA_DIR`` has it), their files, their errors on bad input, and the helpers they are built on."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ebmm_rl import data as ebmm_data
from ebmm_rl.checkpoint import memory_spec, save_atomic, save_memory
from ebmm_rl.data import ImageDataset
from ebmm_rl.distortions import make_sampler, paper_distortion
from ebmm_rl.energy import ResNetConvConfig, ResNetConvEnergy
from ebmm_rl.image_eval import episode_errors, familiarity_auroc, image_grid, noise_images
from ebmm_rl.image_report import markdown_table, paper_points, plot_energy_histograms, plot_errors, save_png
from ebmm_rl.memory import EBMMConfig, EBMMemory
from ebmm_rl.protocol import build_memory as build_registered

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
USER_CACHE_DIR = os.environ.get("EBMM_CACHE_DIR")  # read before the fixture below replaces it
PNG = b"\x89PNG\r\n\x1a\n"
CHARACTERS, DRAWERS = 4, 4  # 16 images per split: episodes of 4, 2-class episodes, 4 non-memories
TINY_LAYERS = {"channels": 2, "hidden_size": 4, "head_size": 8}
FAST = ["--num-patterns", "4", "--num-batches", "3", "--episodes-per-pass", "2", "--threads", "1", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Decoded-data caches go under tmp_path, never into the user's cache."""
    monkeypatch.setenv("EBMM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def scripts():
    """``(eval_distortion_rate, eval_image_memory)`` imported from scripts/ (they import meta_train_images)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module("eval_distortion_rate"), importlib.import_module("eval_image_memory")
    finally:
        sys.path.remove(str(SCRIPTS))


# --------------------------------------------------------------------------------------------------- tiny data
def write_omniglot(root: Path) -> None:
    """Both Omniglot zips: 105x105 1-bit PNGs, black strokes (a bar per character, a square per drawer) on white."""
    image_module = pytest.importorskip("PIL.Image")
    root.mkdir(parents=True, exist_ok=True)
    for stem in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(root / f"{stem}.zip", "w") as archive:
            for c in range(CHARACTERS):
                for d in range(DRAWERS):
                    pixels = np.ones((105, 105), dtype=bool)
                    pixels[10 + 20 * c : 25 + 20 * c, 5:100] = False
                    pixels[40 : 40 + 15 * (d + 1), 10 + 20 * d : 40 + 20 * d] = False
                    out = io.BytesIO()
                    image_module.fromarray(pixels).convert("1").save(out, format="PNG")
                    archive.writestr(f"{stem}/Alpha/character{c + 1:02d}/{c + 1:04d}_{d + 1:02d}.png", out.getvalue())


def write_mnist(root: Path, n: int = 12) -> None:
    """The four MNIST IDX files, with bright bars as digits."""
    root.mkdir(parents=True, exist_ok=True)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        images[i, 4 + i : 12 + i, 3 + i : 20] = 255
    labels = np.arange(n, dtype=np.uint8) % 10
    for prefix in ("train", "t10k"):
        for kind, array in (("images", images), ("labels", labels)):
            header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
            (root / f"{prefix}-{kind}-idx{array.ndim}-ubyte").write_bytes(header + array.tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_omniglot(root / "omniglot")
    write_mnist(root / "mnist")
    return root


def tiny_memory(image_size: int = 32) -> EBMMemory:
    torch.manual_seed(0)
    config = ResNetConvConfig(in_channels=1, image_size=image_size, dynamic_size=2, **TINY_LAYERS)
    return EBMMemory(ResNetConvEnergy(config), EBMMConfig(write_steps=1, read_steps=2, data_range=(0.0, 1.0)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny memory with a training record, as a meta_train_images checkpoint has."""
    memory = tiny_memory()
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    hparams = {"dataset": "omniglot", "num_patterns": 4, "noise": "block", "noise_size": None}
    save_atomic({"memory_spec": memory_spec(memory), "model": memory.state_dict(), "step": 2, "hparams": hparams}, path)
    return path


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


# ------------------------------------------------------------------------------------------- distortion rate
def test_distortion_rate_evaluates_checkpoints_trains_sizes_and_writes_table_and_plot(
    scripts, data_dir, checkpoint, tmp_path, capsys
):
    rate, _ = scripts
    per_unit = ResNetConvConfig(in_channels=1, image_size=32, dynamic_size=1, **TINY_LAYERS).memory_size
    train = ["--train.channels", "2", "--train.hidden-size", "4", "--train.head-size", "8", "--train.batch-size", "1"]
    train += ["--train.write-steps", "1", "--train.read-steps", "2", "--train.eval-batches", "1"]
    out = tmp_path / "rate"
    argv = [*FAST, "--data-dir", str(data_dir), "--out-dir", str(out), "--checkpoints", str(checkpoint)]
    argv += ["--sizes", str(3 * per_unit), "--train-steps", "2", *train]
    rows = rate.main(rate.tyro.cli(rate.Args, args=argv))
    assert [r["memory_size"] for r in rows] == [2 * per_unit, 3 * per_unit]  # sorted by memory size
    assert [r["steps"] for r in rows] == [2, 2] and all(r["p5"] <= r["mean"] <= r["p95"] for r in rows)
    assert all(len(r["scores"]) == 3 for r in rows)
    table = (out / "distortion_rate.md").read_text()
    assert "| model | memory size | meta-steps | mean | p5 | p95 |" in table
    assert "paper DAE (no memory) (Table 2) | – | – | 36.08" in table
    assert "Table 3" not in table  # its points are for N = 32 only
    assert "| distorted query, no retrieval (measured) | – | – |" in table
    assert is_png(out / "distortion_rate.png")
    saved = json.loads((out / "distortion_rate.json").read_text())
    assert saved["metric"] == "hamming" and len(saved["models"]) == 2 and saved["no_retrieval"] > 0
    # a second run reuses the trained model instead of training again; same seed, same episodes, same scores
    capsys.readouterr()
    again = rate.main(rate.tyro.cli(rate.Args, args=[a for a in argv if a != str(checkpoint) and a != "--checkpoints"]))
    assert "reusing" in capsys.readouterr().out and again[0]["scores"] == rows[1]["scores"]


def baseline_checkpoint(path: Path, name: str, budget: int, hparams: dict, **config) -> Path:
    """An untrained tiny baseline saved as scripts/meta_train_baseline.py saves one."""
    torch.manual_seed(0)
    memory = build_registered(name, budget=budget, data_shape=(1, 32, 32), data_range=(0.0, 1.0), **config)
    save_atomic({"memory_spec": memory_spec(memory), "model": memory.state_dict(), "step": 3, "hparams": hparams}, path)
    return path


def test_distortion_rate_mixes_ebmm_baseline_checkpoints_and_untrained_memories(
    scripts, data_dir, checkpoint, tmp_path
):
    rate, _ = scripts
    hparams = {"dataset": "omniglot", "num_patterns": 4, "noise": "block", "time_limit_min": 3.0}
    memnet = baseline_checkpoint(tmp_path / "memnet" / "checkpoint.pt", "memnet", 64, hparams, channels=2, slot_size=8)
    dae = baseline_checkpoint(tmp_path / "dae" / "checkpoint.pt", "dae", 1, hparams, channels=2, bottleneck=8)
    out = tmp_path / "rate"
    argv = [*FAST, "--data-dir", str(data_dir), "--out-dir", str(out)]
    argv += ["--checkpoints", str(checkpoint), str(memnet), str(dae), "--memories", "modern_hopfield:budget=2048"]
    rows = rate.main(rate.tyro.cli(rate.Args, args=argv))
    assert [(r["model"], r["memory_size"], r["training"]) for r in rows] == [
        ("denoising auto-encoder", 0, "3 CPU-min"),
        ("Memory Networks", 64, "3 CPU-min"),
        ("EBMM (ResNetConvEnergy)", tiny_memory().memory_size, "2 meta-steps"),
        ("modern Hopfield", 2048, "untrained"),
    ]
    assert all(len(r["scores"]) == 3 and r["p5"] <= r["mean"] <= r["p95"] for r in rows)
    table = (out / "distortion_rate.md").read_text()
    assert "| Memory Networks: memnet/checkpoint.pt | 64 | 3 |" in table
    assert "| modern Hopfield: modern_hopfield:budget=2048 | 2048 | – |" in table
    assert "paper VAE (no memory) (Table 2) | – | – | 109.08" in table and "9.57" not in table
    assert is_png(out / "distortion_rate.png")
    # memory-free models alone (Table 2): salt-and-pepper rows of the paper, a plot of horizontal lines
    argv = [*FAST, "--data-dir", str(data_dir), "--out-dir", str(out), "--noise", "salt_pepper"]
    rows = rate.main(rate.tyro.cli(rate.Args, args=[*argv, "--checkpoints", str(dae)]))
    assert [r["model"] for r in rows] == ["denoising auto-encoder"]
    table = (out / "distortion_rate.md").read_text()
    assert "paper DAE (no memory) (Table 2) | – | – | 9.57" in table and "36.08" not in table
    assert "84.08" in table and is_png(out / "distortion_rate.png")
    rows = rate.main(rate.tyro.cli(rate.Args, args=[*argv, "--noise-size", "0.3", "--checkpoints", str(dae)]))
    assert "paper" not in (out / "distortion_rate.md").read_text()  # other noise level: no paper rows
    # reading settings of a baseline checkpoint can be changed at evaluation (a VAE trained with read_steps=1)
    memory, _ = rate.open_memory(dae, "cpu", {"read_steps": 2})
    assert memory.config.read_steps == 2 and memory.config.bottleneck == 8
    with pytest.raises(SystemExit, match="no config field"):
        rate.open_memory(dae, "cpu", {"steps": 2})
    with pytest.raises(SystemExit, match="baseline checkpoints only"):
        rate.main(rate.tyro.cli(rate.Args, args=[*argv, "--checkpoints", str(checkpoint), "--config-overrides", "a=1"]))
    with pytest.raises(SystemExit, match="not an untrained memory.*modern_hopfield"):
        rate.main(rate.tyro.cli(rate.Args, args=[*argv, "--memories", "memnet"]))
    with pytest.raises(SystemExit, match="holds no pattern"):
        rate.main(rate.tyro.cli(rate.Args, args=[*argv, "--memories", "modern_hopfield:budget=100"]))


def test_distortion_rate_table_shows_table_3_at_32_patterns(scripts, data_dir, checkpoint, tmp_path):
    rate, _ = scripts
    args = [*FAST, "--num-patterns", "8", "--data-dir", str(data_dir), "--out-dir", str(tmp_path)]
    rate.main(rate.tyro.cli(rate.Args, args=[*args, "--checkpoints", str(checkpoint)]))
    rows = [p for p in paper_points("omniglot", 32) if p.memory_size]
    assert [(p.memory_size, p.value) for p in rows] == [(4000, 7.18), (5000, 5.37), (4000, 6.22), (5000, 2.57)]


def test_distortion_rate_explains_bad_input(scripts, data_dir, checkpoint, tmp_path, monkeypatch):
    rate, _ = scripts
    cli = lambda *a: rate.main(rate.tyro.cli(rate.Args, args=[*FAST, "--out-dir", str(tmp_path), *a]))  # noqa: E731
    with pytest.raises(SystemExit, match="nothing to evaluate"):
        cli("--data-dir", str(data_dir))
    with pytest.raises(SystemExit, match="no checkpoint at .*missing.pt"):
        cli("--data-dir", str(data_dir), "--checkpoints", str(tmp_path / "missing.pt"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not an EBMM checkpoint"):
        cli("--data-dir", str(data_dir), "--checkpoints", str(tmp_path / "other.pt"))
    save_memory(tiny_memory(16), tmp_path / "small.pt")
    with pytest.raises(SystemExit, match=r"stores \(1, 16, 16\) patterns but omniglot images are \(1, 32, 32\)"):
        cli("--data-dir", str(data_dir), "--checkpoints", str(tmp_path / "small.pt"))
    monkeypatch.delenv("EBMM_DATA_DIR", raising=False)
    with pytest.raises(SystemExit, match=r"(?s)EBMM_DATA_DIR is not set.*--data-dir"):
        cli("--checkpoints", str(checkpoint))


# ------------------------------------------------------------------------------------------------ the analyses
def run(module, *argv: str):
    return module.main(module.tyro.cli(module.Command, args=list(argv)))


def test_energy_analysis_writes_histograms_grid_and_familiarity(scripts, data_dir, checkpoint, tmp_path):
    _, image = scripts
    common = ["--checkpoint", str(checkpoint), "--data-dir", str(data_dir), *FAST]
    rows = run(image, "energy", *common, "--ood", "noise", "--grid-rows", "3", "--out-dir", str(tmp_path / "a"))
    assert [r[0] for r in rows] == ["memories", "distorted_memories", "non_memories", "ood (noise)"]
    assert all(r[1] == 4 * 4 for r in rows)  # 2 passes x 2 episodes x 4 patterns (at least 3 episodes asked)
    assert rows[0][-1] is None and all(0.0 <= r[-1] <= 1.0 for r in rows[1:])
    assert is_png(tmp_path / "a" / "energy.png") and is_png(tmp_path / "a" / "energy_grid.png")
    assert "AUROC vs memories" in (tmp_path / "a" / "energy.md").read_text()
    rows = run(image, "energy", *common, "--ood", "mnist", "--out-dir", str(tmp_path / "b"))
    assert rows[-1][0] == "ood (mnist)"


def test_noise_generalisation_marks_the_trained_level_and_rejects_bad_levels(scripts, data_dir, checkpoint, tmp_path):
    _, image = scripts
    common = ["--checkpoint", str(checkpoint), "--data-dir", str(data_dir), *FAST, "--out-dir", str(tmp_path)]
    rows = run(image, "noise", *common, "--levels", "16", "4", "8")
    assert [r[0] for r in rows] == ["4", "8", "16 (trained)"]  # trained with the default block, half of 32
    assert (
        is_png(tmp_path / "noise.png")
        and "| block: block side (pixels) | mean | p5 | p95 | query (no retrieval) |"
        in (tmp_path / "noise.md").read_text()
    )
    rows = run(image, "noise", *common, "--noise", "salt_pepper")
    assert [r[0] for r in rows] == ["0.05", "0.1", "0.15", "0.2", "0.3", "0.4"]  # no "(trained)": other noise
    with pytest.raises(SystemExit, match="omniglot test: .*does not fit in 32x32"):
        run(image, "noise", *common, "--levels", "40")


def test_correlated_batches_table(scripts, data_dir, checkpoint, tmp_path):
    _, image = scripts
    common = ["--checkpoint", str(checkpoint), "--data-dir", str(data_dir), *FAST, "--out-dir", str(tmp_path)]
    rows = run(image, "correlated", *common, "--classes-per-episode", "1", "2")
    assert [r[0] for r in rows] == ["uniform (uncorrelated)", "1 classes (correlated)", "2 classes (correlated)"]
    assert "trained on uniform batches" in (tmp_path / "correlated.md").read_text()
    with pytest.raises(SystemExit, match="fewer than classes_per_episode=5"):
        run(image, "correlated", *common, "--num-patterns", "8", "--classes-per-episode", "5")


def test_mnist_transfer_on_tiny_idx_files_and_missing_mnist(scripts, data_dir, checkpoint, tmp_path):
    _, image = scripts
    common = ["--checkpoint", str(checkpoint), *FAST, "--grid-rows", "2", "--out-dir", str(tmp_path)]
    rows = run(image, "mnist", *common, "--data-dir", str(data_dir))
    names = ["distorted query, no retrieval", "blank image (all background)"]
    assert [r[0] for r in rows] == [
        f"{d} test{w}" for d in ("omniglot", "mnist") for w in ("", *(f": {n}" for n in names))
    ]
    mnist = ebmm_data.load_mnist("test", data_dir / "mnist")
    blank = mnist.images.sum(dim=(1, 2, 3))  # ink pixels per image: the error of answering with a blank image
    assert blank.min() <= rows[5][1] <= blank.max() and rows[5][2] <= rows[5][1] <= rows[5][3]
    table = (tmp_path / "mnist.md").read_text()
    assert "| mnist test: blank image (all background) |" in table and "| omniglot test: distorted query" in table
    assert is_png(tmp_path / "mnist_grid.png") and is_png(tmp_path / "mnist_energy.png")
    elsewhere = tmp_path / "elsewhere"  # --mnist-dir: MNIST need not sit beside Omniglot
    (data_dir / "mnist").rename(elsewhere)
    try:
        moved = run(image, "mnist", *common, "--data-dir", str(data_dir), "--mnist-dir", str(elsewhere))
    finally:
        elsewhere.rename(data_dir / "mnist")
    assert moved == [[*r[:-1], moved[i][-1]] for i, r in enumerate(rows)]  # the same numbers; only the seconds differ
    no_mnist = tmp_path / "no_mnist"
    write_omniglot(no_mnist / "omniglot")
    with pytest.raises(SystemExit, match=r"t10k-images-idx3-ubyte.*\$EBMM_DATA_DIR/mnist/"):
        run(image, "mnist", *common, "--data-dir", str(no_mnist))


def test_analyses_explain_a_missing_checkpoint(scripts, data_dir, tmp_path):
    _, image = scripts
    with pytest.raises(SystemExit, match="no checkpoint at .*nope.pt"):
        run(image, "energy", "--checkpoint", str(tmp_path / "nope.pt"), "--data-dir", str(data_dir))


def test_scripts_run_as_commands(data_dir, checkpoint, tmp_path):
    env = {**os.environ, "EBMM_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = ["--checkpoint", str(checkpoint), "--data-dir", str(data_dir), *FAST, "--out-dir", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "eval_image_memory.py"), "correlated", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| uniform (uncorrelated) | " in result.stdout
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / "eval_distortion_rate.py"), "--checkpoints", str(tmp_path / "nope.pt")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "no checkpoint at" in result.stderr


# ------------------------------------------------------------------------------------------------- real data
def test_real_omniglot_distortion_rate_and_energy(scripts, checkpoint, tmp_path, monkeypatch):
    base = os.environ.get("EBMM_DATA_DIR")
    needed = ["omniglot/images_evaluation.zip"]
    if not base or not all((Path(base) / r).exists() for r in needed):
        message = f"real data absent: {', '.join(needed)} under EBMM_DATA_DIR={base!r}"
        if os.environ.get("EBMM_REQUIRE_DATA") == "1":
            pytest.fail(f"EBMM_REQUIRE_DATA=1 but {message}")
        pytest.skip(message)
    if USER_CACHE_DIR:  # the user's cache, so the real zip is decoded once per machine
        monkeypatch.setenv("EBMM_CACHE_DIR", USER_CACHE_DIR)
    else:
        monkeypatch.delenv("EBMM_CACHE_DIR")
    rate, image = scripts
    fast = ["--num-patterns", "8", "--num-batches", "2", "--episodes-per-pass", "2", "--threads", "1"]
    rows = rate.main(
        rate.tyro.cli(rate.Args, args=[*fast, "--checkpoints", str(checkpoint), "--out-dir", str(tmp_path)])
    )
    assert rows[0]["memory_size"] == tiny_memory().memory_size and 0 <= rows[0]["mean"] <= 1024
    assert is_png(tmp_path / "distortion_rate.png")
    energy = run(image, "energy", "--checkpoint", str(checkpoint), *fast, "--ood", "noise", "--out-dir", str(tmp_path))
    assert energy[2][0] == "non_memories" and is_png(tmp_path / "energy.png")


# ------------------------------------------------------------------------------------------------------ helpers
def test_familiarity_auroc_matches_pair_counting():
    low, high = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0])
    assert familiarity_auroc(low, high) == 1.0 and familiarity_auroc(high, low) == 0.0
    assert familiarity_auroc(torch.ones(4), torch.ones(3)) == 0.5
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 5, (40,), generator=g).float(), torch.randint(0, 6, (30,), generator=g).float()
    pairs = (b[None, :] > a[:, None]).double().mean() + 0.5 * (b[None, :] == a[:, None]).double().mean()
    assert familiarity_auroc(a, b) == pytest.approx(float(pairs))
    with pytest.raises(ValueError, match="non-finite"):
        familiarity_auroc(torch.tensor([float("nan")]), b)


def test_episode_errors_are_per_episode_and_repeatable():
    images = (torch.rand(10, 1, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    data = ImageDataset(images, torch.arange(10) % 2, "toy", "test", binary=True)
    sampler = make_sampler(data, paper_distortion(data), batch_size=2, num_patterns=3)
    memory = tiny_memory()
    scores = episode_errors(memory, sampler, 5, seed=3)
    assert scores.shape == (5,) and scores.dtype == torch.float64 and (scores >= 0).all()
    assert torch.equal(scores, episode_errors(memory, sampler, 5, seed=3))
    with pytest.raises(ValueError, match="stores patterns of shape"):
        episode_errors(tiny_memory(16), sampler, 1)
    # no memory: the queries are the answers; a 16x16 block of random bits gets about half of its 256 pixels wrong
    assert 0 < float(episode_errors(None, sampler, 20).mean()) < 256
    noise = noise_images(4, (1, 8, 8), True, torch.Generator().manual_seed(0))
    assert noise.shape == (4, 1, 8, 8) and set(noise.unique().tolist()) <= {0.0, 1.0}


def test_report_tables_and_plots(tmp_path):
    table = markdown_table(["a", "b"], [["x|y", 1.234], [3, None]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1.23 |", "| 3 | – |"]
    with pytest.raises(ValueError, match="2 columns"):
        markdown_table(["a", "b"], [[1]])
    summaries = [{"mean": 5.0, "p5": 4.0, "p95": 6.0}, {"mean": 3.0, "p5": 2.0, "p95": 4.5}]
    assert is_png(plot_errors([2000, 4000], summaries, tmp_path / "e.png", xlabel="x", ylabel="y",
                              references=paper_points("omniglot"), marker_x=3000))  # fmt: skip
    energies = {"memories": torch.randn(50), "ood": torch.tensor([1.0, float("inf")])}
    assert is_png(plot_energy_histograms(energies, tmp_path / "h.png", title="t"))
    assert is_png(save_png(torch.rand(3, 5, 6), tmp_path / "g.png", scale=2))


def test_grid_png_has_labelled_columns(tmp_path):
    from PIL import Image

    grid = image_grid(torch.zeros(2, 4, 1, 10, 10), padding=2, pad_value=0.5)  # 2 rows, 4 black columns
    plain = save_png(grid, tmp_path / "plain.png", scale=3)
    labelled = save_png(grid, tmp_path / "labelled.png", scale=3, column_labels=["query", "k=1", "k=2", "original"])
    with Image.open(plain) as a, Image.open(labelled) as b:
        plain_px, labelled_px = np.asarray(a), np.asarray(b)
    header = labelled_px.shape[0] - plain_px.shape[0]
    assert header > 8 and labelled_px.shape[1] == plain_px.shape[1]
    np.testing.assert_array_equal(labelled_px[header:], plain_px)  # the grid itself is unchanged, below the labels
    ink = labelled_px[:header] < 128  # dark text on a white strip
    pitch = 12 * 3  # one 10-pixel cell and its 2-pixel border, scaled 3 times
    for column in range(4):  # each label sits over its own column
        assert ink[:, 6 + column * pitch : 6 + (column + 1) * pitch - 6].any(), column
    assert not ink[:, :3].any() and not ink[:, -3:].any()
    with pytest.raises(ValueError, match="C = 1 or 3"):
        save_png(torch.rand(2, 5, 5), tmp_path / "bad.png")

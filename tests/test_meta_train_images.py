"""Image meta-training: the script on every data format, TensorBoard contents, resume, DDP (gloo), evaluation
helpers, and the all-zero-pattern NaN regression of the ResNet energies."""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ebmm_rl.checkpoint import load_memory
from ebmm_rl.data import ImageDataset
from ebmm_rl.distortions import BlockNoise, SaltPepper, paper_distortion
from ebmm_rl.distributed import DistributedContext, DistributedMetaTrainer, parameter_checksum, rank_seed
from ebmm_rl.energy import (
    ResNetConvConfig,
    ResNetConvEnergy,
    ResNetFCConfig,
    ResNetFCEnergy,
    ResNetLowerConvConfig,
    ResNetLowerConvEnergy,
)
from ebmm_rl.image_eval import (
    ImageEvaluator,
    draw_non_memories,
    energy_table,
    hamming_errors,
    image_grid,
    match_images,
    query_distortion,
    squared_errors,
    summarize_batches,
)
from ebmm_rl.memory import EBMMConfig, EBMMemory
from ebmm_rl.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "meta_train_images.py"

TINY_BUDGET = [
    "--channels", "2", "--hidden-size", "4", "--head-size", "8", "--num-patterns", "3", "--batch-size", "2",
    "--write-steps", "1", "--read-steps", "2", "--eval-batches", "2", "--eval-every", "0", "--grid-rows", "3",
    "--no-progress", "--threads", "1", "--device", "cpu",
]  # fmt: skip
TINY = [*TINY_BUDGET, "--dynamic-size", "2"]


# ------------------------------------------------------------------------------------ tiny data in upstream formats
def write_omniglot(root: Path, characters: int = 3, drawers: int = 3) -> None:
    """``images_background.zip`` and ``images_evaluation.zip`` of 105x105 1-bit PNGs (black strokes on white)."""
    image_module = pytest.importorskip("PIL.Image")
    root.mkdir(parents=True, exist_ok=True)
    for stem in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(root / f"{stem}.zip", "w") as archive:
            for c in range(characters):
                for d in range(drawers):
                    pixels = np.ones((105, 105), dtype=bool)
                    pixels[10 + 20 * c : 43 + 20 * c, 10 + 20 * d : 43 + 20 * d] = False
                    out = io.BytesIO()
                    image_module.fromarray(pixels).convert("1").save(out, format="PNG")
                    archive.writestr(f"{stem}/Alpha/character{c + 1:02d}/{c + 1:04d}_{d + 1:02d}.png", out.getvalue())


def write_cifar(root: Path, n: int = 8) -> None:
    """``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` pickles of random images."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"labels": rng.integers(0, 10, n).tolist(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))


def write_mnist(root: Path, n: int = 8) -> None:
    """The four IDX files, with bright squares as digits."""
    root.mkdir(parents=True, exist_ok=True)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        images[i, 4 + i : 14 + i, 6:20] = 255
    labels = np.arange(n, dtype=np.uint8) % 10
    for prefix in ("train", "t10k"):
        for kind, array in (("images", images), ("labels", labels)):
            header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">i4").tobytes()
            (root / f"{prefix}-{kind}-idx{array.ndim}-ubyte").write_bytes(header + array.tobytes())


def write_imagenet(root: Path, n: int = 8) -> None:
    """``train_data_batch_1.npz`` and ``val_data.npz`` of random 64x64 images."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("train_data_batch_1.npz", "val_data.npz"):
        np.savez(root / name, data=rng.integers(0, 256, (n, 12288), dtype=np.uint8), labels=rng.integers(1, 11, n))


WRITERS = {
    "omniglot": lambda d: write_omniglot(d / "omniglot"),
    "cifar10": lambda d: write_cifar(d / "cifar10" / "cifar-10-batches-py"),
    "mnist": lambda d: write_mnist(d / "mnist"),
    "imagenet64": lambda d: write_imagenet(d / "imagenet64"),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One folder with all four data sets, as ``$EBMM_DATA_DIR`` would hold them."""
    root = tmp_path_factory.mktemp("data")
    for write in WRITERS.values():
        write(root)
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Decoded-data caches go under tmp_path, never into the user's cache."""
    monkeypatch.setenv("EBMM_CACHE_DIR", str(tmp_path / "cache"))


def run_script(*args: str, torchrun: int = 0, cache: Path) -> str:
    env = {**os.environ, "EBMM_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={torchrun}"]
    result = subprocess.run(
        [*launcher, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def load_script():
    """The script as a module, to run ``main`` in this process (no second torch start-up)."""
    spec = importlib.util.spec_from_file_location("meta_train_images", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # tyro and dataclasses resolve the annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def tensorboard_events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
    events.Reload()
    return events


# --------------------------------------------------------------------------------------------------- the script
def test_script_trains_on_omniglot_logs_grids_and_histograms_and_resumes(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    common = [*TINY, "--data-dir", str(data_dir), "--run-dir", str(run_dir)]
    out = run_script(*common, "--steps", "2", cache=tmp_path / "cache")
    assert "omniglot test hamming:" in out and "after 2 steps" in out and (run_dir / "checkpoint.pt").exists()
    events = tensorboard_events(run_dir)
    tags = events.Tags()
    assert "read/iterations" in tags["images"]
    assert {"energy/memories", "energy/non_memories", "energy/distorted_memories"} <= set(tags["histograms"])
    assert {"eval/hamming", "eval/hamming_p5", "eval/hamming_p95", "meta/loss"} <= set(tags["scalars"])
    image = events.Images("read/iterations")[-1]
    # 3 rows (--grid-rows) and K + 2 = 4 columns (query, 2 iterates, original) of 32x32 images with 2-pixel borders
    assert (image.height, image.width) == (3 * 34 + 2, 4 * 34 + 2)
    assert "read/energies/text_summary" in tags["tensors"]

    out = run_script(*common, "--steps", "3", "--resume", cache=tmp_path / "cache")
    assert "after 3 steps" in out
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 3


@pytest.mark.filterwarnings("ignore:ImageNet 64x64. found 1 of 10 training batches")
@pytest.mark.parametrize(
    ("dataset", "arch", "extra"),
    [
        ("cifar10", "fc", ["--memory-size", "200"]),
        ("mnist", "lower-conv", ["--noise", "salt_pepper", "--noise-size", "0.3", "--clamp-known"]),
        ("imagenet64", "imagenet", ["--ood-dataset", "cifar10"]),
        ("omniglot", "conv", ["--classes-per-episode", "2", "--no-grad-norm-term", "--noise-size", "8"]),
    ],
)
def test_script_runs_on_every_data_format_and_architecture(data_dir, tmp_path, dataset, arch, extra, capsys):
    script = load_script()
    run_dir = tmp_path / "run"
    sizes = TINY_BUDGET if "--memory-size" in extra else TINY
    argv = [*sizes, "--dataset", dataset, "--arch", arch, *extra, "--steps", "2"]
    args = script.tyro.cli(script.Args, args=[*argv, "--data-dir", str(data_dir), "--run-dir", str(run_dir)])
    script.main(args)
    out = capsys.readouterr().out
    metric = "hamming" if dataset in ("omniglot", "mnist") else "squared_error"
    assert f"{dataset} test {metric}:" in out and "after 2 steps" in out
    memory = load_memory(run_dir / "checkpoint.pt")
    if arch == "fc":  # --memory-size picks dynamic_size: 65 floats per unit (encoder_size 64 + bias), 3 fit in 200
        assert memory.energy.config.dynamic_size == 3 and memory.memory_size == 195
    expected = {"cifar10": (3, 32, 32), "mnist": (1, 32, 32), "imagenet64": (3, 64, 64), "omniglot": (1, 32, 32)}
    assert memory.data_shape == expected[dataset]


def test_script_explains_missing_data_and_bad_budgets(tmp_path, data_dir, monkeypatch, capsys):
    script = load_script()
    monkeypatch.delenv("EBMM_DATA_DIR", raising=False)
    with pytest.raises(SystemExit, match=r"--data-dir"):
        script.main(script.tyro.cli(script.Args, args=[*TINY, "--run-dir", str(tmp_path / "r")]))
    too_small = [*TINY_BUDGET, "--memory-size", "5", "--data-dir", str(data_dir)]
    with pytest.raises(SystemExit, match=r"--memory-size 5: .*below one memory unit"):
        script.main(script.tyro.cli(script.Args, args=[*too_small, "--run-dir", str(tmp_path / "r")]))
    with pytest.raises(SystemExit) as stop:
        script.main(script.tyro.cli(script.Args, args=[*TINY, "--resume"]))
    assert stop.value.code == 2 and "--resume needs --run-dir" in capsys.readouterr().err  # a usage error


def test_script_time_limit_status_lines_and_mnist_dir(data_dir, tmp_path, capsys):
    script = load_script()
    base = [*TINY, "--data-dir", str(tmp_path / "nowhere")]  # no data sets under it: MNIST must come from --mnist-dir
    argv = [*base, "--dataset", "mnist", "--mnist-dir", str(data_dir / "mnist"), "--steps", "1000", "--log-every", "1"]
    argv += ["--time-limit-min", "0.005", "--status-every-s", "1e-9", "--run-dir", str(tmp_path / "run")]
    script.main(script.tyro.cli(script.Args, args=argv))  # 0.3 CPU-s: a few of the 1000 steps
    out = capsys.readouterr().out
    steps = int(re.search(r"step (\d+): stopped at the time limit \(0.3 s of CPU time\)", out).group(1))
    assert 0 < steps < 1000 and f"after {steps} steps" in out
    status = re.findall(r"^step (\d+)/1000: loss \S+, error \S+, grad norm \S+, \S+ episodes/s", out, re.MULTILINE)
    assert status == [str(k) for k in range(1, steps + 1)]  # a line at every logging step (--status-every-s ~0)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == steps
    with pytest.raises(SystemExit, match=r"(?s)train-images-idx3-ubyte.* under .*empty.*--mnist-dir"):
        bad = [*base, "--dataset", "mnist", "--mnist-dir", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "r")]
        script.main(script.tyro.cli(script.Args, args=bad))


def test_ddp_gloo_two_ranks_end_with_identical_parameters(data_dir, tmp_path):
    run_dir = tmp_path / "ddp"
    args = [*TINY, "--data-dir", str(data_dir), "--run-dir", str(run_dir), "--steps", "2"]
    out = run_script(*args, torchrun=2, cache=tmp_path / "cache")
    sums = dict(re.findall(r"rank (\d): parameter checksum ([0-9a-f]+)", out))
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"], out
    assert out.count("omniglot test hamming:") == 1  # rank 0 alone evaluates and reports
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["hparams"]["world_size"] == 2
    generators = ckpt["rank_generators"]
    assert len(generators) == 2 and not torch.equal(generators[0], generators[1])  # each rank its own batches
    assert parameter_checksum(load_memory(run_dir / "checkpoint.pt")) == sums["0"]


def _ddp_gradient_worker(rank: int, folder: str, patterns, queries) -> None:
    """Rank ``rank`` of 2 meta-trains on episode ``rank`` only and saves its gradients (after DDP) and loss."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2)
    try:
        context = DistributedContext(rank, rank, 2, "cpu", "gloo")
        trainer = DistributedMetaTrainer(
            tiny_memory((1, 16, 16)),
            lambda generator: (patterns[rank : rank + 1], queries[rank : rank + 1], None),
            TrainConfig(grad_clip=1e9, progress=False),
            context=context,
        )
        trainer.optimizer.step = lambda *args, **kwargs: None  # keep the gradients, no update
        stats = trainer.train_step()
        grads = {n: p.grad for n, p in trainer.memory.named_parameters() if p.grad is not None}
        torch.save({"loss": stats.loss, "grads": grads}, f"{folder}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_gradient_is_the_gradient_of_all_ranks_episodes(tmp_path):
    g = torch.Generator().manual_seed(1)
    patterns, queries = torch.rand(2, 3, 1, 16, 16, generator=g), torch.rand(2, 3, 1, 16, 16, generator=g)
    args = (str(tmp_path), patterns, queries)
    torch.multiprocessing.start_processes(_ddp_gradient_worker, args, nprocs=2, start_method="spawn")
    reference = tiny_memory((1, 16, 16))  # one process, both episodes in one batch
    out = reference(patterns, queries)
    out.loss.backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result["loss"] == pytest.approx(out.loss.item(), rel=1e-5)  # the mean over ranks is logged
        assert result["grads"].keys() == expected.keys()
        for name, grad in result["grads"].items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6 * float(expected[name].abs().max()))


@pytest.mark.slow
def test_ddp_resume_continues_exactly(data_dir, tmp_path):
    args = [*TINY, "--data-dir", str(data_dir), "--eval-batches", "1"]
    straight = run_script(*args, "--steps", "3", "--run-dir", str(tmp_path / "a"), torchrun=2, cache=tmp_path / "c")
    run_script(*args, "--steps", "2", "--run-dir", str(tmp_path / "b"), torchrun=2, cache=tmp_path / "c")
    resumed = run_script(
        *args, "--steps", "3", "--run-dir", str(tmp_path / "b"), "--resume", torchrun=2, cache=tmp_path / "c"
    )
    checksum = re.compile(r"rank 0: parameter checksum ([0-9a-f]+)")
    assert checksum.search(straight).group(1) == checksum.search(resumed).group(1)  # same batches, same steps


def test_rank_seeds_differ_and_rank_zero_keeps_the_seed():
    assert rank_seed(7, 0) == 7 and len({rank_seed(s, r) for s in range(3) for r in range(4)}) == 12


# ------------------------------------------------------------------------------------------------ evaluation helpers
def test_image_grid_places_images_between_borders():
    images = torch.arange(2 * 3).float().view(2, 3, 1, 1, 1).expand(2, 3, 1, 2, 2)  # [rows, cols, C, H, W]
    grid = image_grid(images, padding=1, pad_value=-1.0)
    assert grid.shape == (1, 2 * 3 + 1, 3 * 3 + 1)
    for r in range(2):
        for c in range(3):
            top, left = 1 + 3 * r, 1 + 3 * c
            assert (grid[0, top : top + 2, left : left + 2] == 3 * r + c).all()
    assert (grid[0, 0] == -1).all() and (grid[0, :, 0] == -1).all() and (grid[0, 3] == -1).all()
    with pytest.raises(ValueError, match="rows, cols, C, H, W"):
        image_grid(torch.zeros(2, 1, 4, 4))


def test_metrics_and_batch_summary():
    patterns = torch.zeros(1, 2, 1, 2, 2)
    retrieved = patterns.clone()
    retrieved[0, 0, 0, 0, 0] = 0.6  # rounds to 1: one wrong bit
    retrieved[0, 1, 0, 1, 1] = 0.4  # rounds to 0: right
    assert hamming_errors(retrieved, patterns).tolist() == [[1.0, 0.0]]
    torch.testing.assert_close(squared_errors(retrieved, patterns), torch.tensor([[0.36, 0.16]]))
    summary = summarize_batches(torch.arange(101.0))
    assert summary == pytest.approx({"mean": 50.0, "p5": 5.0, "p95": 95.0})
    with pytest.raises(ValueError, match="at least one batch"):
        summarize_batches([])


def test_non_memories_are_never_written_and_distinct():
    generator = torch.Generator().manual_seed(0)
    written = torch.tensor([[0, 1, 2], [5, 6, 7]])
    other = draw_non_memories(8, written, 5, generator)
    assert other.shape == (2, 5)
    for row, w in zip(other.tolist(), written.tolist(), strict=True):
        assert len(set(row)) == 5 and not set(row) & set(w)
    with pytest.raises(ValueError, match="count must lie"):
        draw_non_memories(8, written, 6, generator)


def tiny_dataset(binary: bool, n: int = 10, size: int = 16) -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1 if binary else 3, size, size, generator=g)
    images = (images > 0.7).float() if binary else images
    return ImageDataset(images, torch.arange(n) % 3, "tiny", "test", binary)


def test_query_distortion_defaults_follow_the_paper():
    binary, colour = tiny_dataset(True), tiny_dataset(False)
    assert query_distortion(binary) == paper_distortion(binary) == BlockNoise((8, 8), "binary")
    assert query_distortion(colour, "block", 4) == BlockNoise(4, "uniform")
    assert query_distortion(colour, "salt_pepper", 0.3, return_known_mask=True) == SaltPepper(0.3, True)
    assert query_distortion(colour, "erase").fill == 0.0
    with pytest.raises(ValueError, match="block side in pixels"):
        query_distortion(binary, "block", 2.5)
    with pytest.raises(ValueError, match="unknown noise"):
        query_distortion(binary, "blur")


def test_match_images_binarises_and_resizes_other_data():
    colour = torch.zeros(2, 3, 64, 64)
    colour[:, :, :32] = 1.0  # top half white
    out = match_images(colour, (1, 32, 32), binary=True)
    assert out.shape == (2, 1, 32, 32) and set(out.unique().tolist()) == {0.0, 1.0}
    assert out[:, :, :16].eq(1).all() and out[:, :, 16:].eq(0).all()
    assert match_images(torch.rand(2, 1, 16, 16), (3, 32, 32), binary=False).shape == (2, 3, 32, 32)


def tiny_memory(data_shape, **ebmm) -> EBMMemory:
    torch.manual_seed(0)
    config = ResNetConvConfig(
        in_channels=data_shape[0], image_size=data_shape[1], channels=2, hidden_size=4, dynamic_size=2, head_size=8
    )
    return EBMMemory(ResNetConvEnergy(config), EBMMConfig(write_steps=1, read_steps=2, **ebmm))


def test_image_evaluator_reports_errors_grid_and_energy_classes():
    data = tiny_dataset(binary=True)
    memory = tiny_memory(data.data_shape)
    ood = match_images(torch.rand(5, 3, 16, 16), data.data_shape, binary=True)
    evaluator = ImageEvaluator(data, paper_distortion(data), 2, 4, num_batches=3, grid_rows=5, ood=ood)
    logged = []

    class Writer:
        def add_image(self, tag, image, step, dataformats):
            logged.append((tag, tuple(image.shape), step))

        def add_text(self, tag, text, step):
            logged.append((tag, text.count("\n"), step))

        def add_histogram(self, tag, values, step):
            logged.append((tag, values.numel(), step))

    evaluator.log_to(lambda: Writer(), lambda: 7)
    metrics = evaluator(memory)
    assert {"hamming", "hamming_p5", "hamming_p95", "energy_query", "energy_k2", "energy_original"} <= set(metrics)
    assert metrics["hamming_p5"] <= metrics["hamming"] <= metrics["hamming_p95"]
    assert {"energy_memories", "energy_non_memories", "energy_distorted_memories", "energy_ood"} <= set(metrics)
    # 3 batches x 2 episodes x 4 patterns per class; 10 - 4 = 6 >= 4 non-memories per episode
    assert ("energy/memories", 24, 7) in logged and ("energy/non_memories", 24, 7) in logged
    assert ("energy/ood", 24, 7) in logged and ("read/energies", 6, 7) in logged  # header, rule, 5 rows
    assert ("read/iterations", (1, 5 * 18 + 2, 4 * 18 + 2), 7) in logged
    again = evaluator.evaluate(memory)  # the same batches every time
    assert again.metrics == pytest.approx(metrics)
    assert energy_table(again.cell_energies).startswith("|row|query|k=1|k=2|original|")


def test_image_evaluator_reference_scores_by_hand():
    # every image all ink and an erasing block of 4x4: the query differs from its image in exactly 16 pixels,
    # the blank image in all 256, whatever the memory does
    data = ImageDataset(torch.ones(10, 1, 16, 16), torch.arange(10), "ones", "test", True)
    evaluator = ImageEvaluator(data, query_distortion(data, "erase", 4), 2, 3, num_batches=2)
    result = evaluator.evaluate(tiny_memory(data.data_shape))
    assert set(result.reference_scores) == {"no_retrieval", "blank"}
    assert result.reference_scores["no_retrieval"].tolist() == [16.0] * 4  # 2 batches x 2 episodes
    assert result.reference_scores["blank"].tolist() == [256.0] * 4


# ------------------------------------------------------------------------------- NaN regression (all-zero pattern)
SMALL = {"channels": 2, "hidden_size": 4, "dynamic_size": 2, "head_size": 8, "image_size": 16}
TINY_ENERGIES = [
    (ResNetConvEnergy, ResNetConvConfig(**SMALL)),
    (ResNetLowerConvEnergy, ResNetLowerConvConfig(**SMALL)),
    (ResNetFCEnergy, ResNetFCConfig(**SMALL, encoder_size=8, representation_size=8)),
]


@pytest.mark.parametrize(("energy_class", "config"), TINY_ENERGIES, ids=["conv", "lower-conv", "fc"])
def test_all_zero_patterns_give_a_finite_meta_loss_with_the_grad_norm_term(energy_class, config):
    # He init with zero biases made 0 a fixed point of every layer: each LayerNorm saw zero variance and scaled the
    # gradient by 1/sqrt(eps); ||grad_x E||^2 overflowed and the meta-loss was NaN. The first conv's bias fixes it.
    torch.manual_seed(0)
    memory = EBMMemory(energy_class(config), EBMMConfig(write_steps=2, read_steps=2, use_grad_norm_term=True))
    patterns = torch.zeros(2, 3, 1, 16, 16)
    patterns[1] = (torch.rand(3, 1, 16, 16) > 0.8).float()
    out = memory(patterns, torch.rand_like(patterns))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in memory.parameters() if p.grad is not None)
    x = torch.zeros(1, 1, 1, 16, 16, requires_grad=True)
    fast = {n: w.unsqueeze(0) for n, w in memory.energy.memory_parameters().items()}
    (grad,) = torch.autograd.grad(memory.energy(x, fast).sum(), x)
    assert grad.norm() < 1e3  # was about 1e24

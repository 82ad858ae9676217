"""The Deep Image Prior baseline: its network and fit against torch.nn, the told block, independent images."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ebmm_rl.baselines import DeepImagePrior, DIPConfig, NoState
from ebmm_rl.data import ImageDataset
from ebmm_rl.distortions import make_sampler
from ebmm_rl.image_eval import episode_errors, query_distortion
from ebmm_rl.protocol import MEMORIES, build_memory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

SHAPE = (1, 8, 8)


def dip(**overrides) -> DeepImagePrior:
    config = {"data_shape": SHAPE, "data_range": (0.0, 1.0), "width": 4, "depth": 2, "steps": 5, **overrides}
    return DeepImagePrior(DIPConfig(**config))


def reference_fit(memory: DeepImagePrior, image: torch.Tensor, known: torch.Tensor | None) -> torch.Tensor:
    """One image fitted with torch.nn modules carrying the same initial weights: the network's logits."""
    c = memory.config
    u, layers = memory.initial_network(torch.device("cpu"))
    convs = [nn.Conv2d(i, o, k, stride=2 if n < c.depth else 1, padding=k // 2) for n, (o, i, k) in
             enumerate([(w.shape[0], w.shape[1], w.shape[2]) for w, _ in layers])]  # fmt: skip
    with torch.no_grad():
        for conv, (w, b) in zip(convs, layers, strict=True):
            conv.weight.copy_(w)
            conv.bias.copy_(b)
    sizes = [(8, 8), (4, 4), (2, 2)]  # depth 2 on 8x8
    blocks = []
    for n in range(2 * c.depth):
        up = [nn.Upsample(size=sizes[2 * c.depth - n - 1], mode="nearest")] if n >= c.depth else []
        blocks += [*up, convs[n], nn.InstanceNorm2d(c.width), nn.LeakyReLU(0.2)]
    net = nn.Sequential(*blocks, convs[-1])
    weights = torch.ones_like(image) if known is None else known.float()
    optimizer = torch.optim.Adam(net.parameters(), lr=c.lr)
    for _ in range(c.steps):
        optimizer.zero_grad()
        out = torch.sigmoid(net(u.unsqueeze(0))[0])  # data_range (0, 1)
        ((out - image).pow(2) * weights).sum().div(weights.sum()).backward()
        optimizer.step()
    with torch.no_grad():
        return net(u.unsqueeze(0))[0]


def test_fit_matches_a_torch_nn_reference_with_and_without_a_mask():
    memory = dip()
    images = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    known = torch.ones_like(images, dtype=torch.bool)
    known[:, :, 2:6, 1:5] = False
    for mask in (None, known):
        logits = memory.fit(images, mask)
        for g in range(2):
            want = reference_fit(memory, images[g], None if mask is None else mask[g])
            torch.testing.assert_close(logits[g], want, rtol=1e-4, atol=1e-5)


def test_fitting_images_together_equals_fitting_them_one_by_one():
    memory = dip(steps=5)  # over many more steps Adam amplifies float rounding, as it would on other hardware
    images = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(1))
    together = memory.fit(images, None)
    for g in range(3):
        torch.testing.assert_close(together[g : g + 1], memory.fit(images[g : g + 1], None), rtol=1e-4, atol=1e-5)


def test_told_block_is_ignored_by_the_fit_and_known_pixels_stay_clamped():
    memory = dip(steps=30)
    images = torch.rand(1, 2, *SHAPE, generator=torch.Generator().manual_seed(2))
    known = torch.ones_like(images, dtype=torch.bool)
    known[..., 0:4, 0:4] = False
    other = torch.where(known, images, 1 - images)  # a different block content, the same known pixels
    state = memory.write(images)
    first, second = memory.recall(images, state, known), memory.recall(other, state, known)
    torch.testing.assert_close(first, second)  # the block's values never reach the fit
    torch.testing.assert_close(first[known], images[known])
    assert not torch.equal(first[~known], images[~known])  # the block is drawn by the network


def test_more_steps_fit_the_query_closer():
    images = torch.rand(1, 3, *SHAPE, generator=torch.Generator().manual_seed(3))
    errors = [(dip(steps=s).recall(images, NoState(1)) - images).pow(2).mean().item() for s in (1, 100)]
    assert errors[1] < 0.5 * errors[0]


def test_registry_entry_and_bad_settings():
    entry = MEMORIES["deep_image_prior"]
    assert entry.kind == "non-memory" and not entry.trainable
    memory = build_memory("deep_image_prior", budget=1, data_shape=(3, 32, 32), data_range=(0.0, 1.0))
    assert memory.memory_size == 0 and memory.config.steps == 2000 and not list(memory.parameters())
    vectors = build_memory("deep_image_prior", dim=16, steps=2, width=2)  # one-row images (1, 1, 16)
    patterns = torch.rand(2, 3, 16) * 2 - 1
    assert vectors.recall(patterns, vectors.write(patterns)).shape == (2, 3, 16)
    with pytest.raises(ValueError, match="steps"):
        dip(steps=0)
    with pytest.raises(ValueError, match="lr > 0"):
        dip(lr=0.0)


# ------------------------------------------------------------------------------------------------------- script
ROOT = Path(__file__).resolve().parents[1]


def fake_data(data_dir, name, split, mnist_dir=None):  # 12 small images instead of the data set's files
    generator = torch.Generator().manual_seed(len(split))
    if name == "cifar10":  # colour, continuous
        return ImageDataset(torch.rand(12, 3, 16, 16, generator=generator), torch.arange(12) % 3, name, split)
    images = (torch.rand(12, 1, 16, 16, generator=generator) > 0.5).float()
    return ImageDataset(images, torch.arange(12) % 3, name, split, binary=True)


def test_script_fits_the_first_images_of_the_scored_episodes(tmp_path, monkeypatch, capsys):
    import eval_deep_image_prior as script

    monkeypatch.setattr(script, "load_data", fake_data)
    args = script.Args(
        dataset="omniglot", images=5, num_patterns=3, episodes_per_pass=1, fit_batch=2, steps=3, width=2, depth=2,
        out_dir=str(tmp_path), device="cpu",
    )  # fmt: skip
    for dataset in ("cifar10", "omniglot"):  # one error per image, summed over channels on colour images
        summary = script.main(dataclasses.replace(args, dataset=dataset))
        assert summary["told"] and len(summary["scores"]) == len(summary["no_retrieval"]) == 5  # told the block
        test = fake_data(None, dataset, "test")
        sampler = make_sampler(test, query_distortion(test, "block"), 1, 3)
        first_episode = episode_errors(None, sampler, 1, seed=0)  # eval_distortion_rate.py's first episode
        no_retrieval = torch.tensor(summary["no_retrieval"][:3], dtype=torch.float64)
        torch.testing.assert_close(no_retrieval.mean(), first_episode[0])
    out = capsys.readouterr().out
    assert "| Deep Image Prior, 3 Adam steps" in out and "| blank image |" in out
    assert (tmp_path / "deep_image_prior.md").is_file()
    salt = script.main(dataclasses.replace(args, noise="salt_pepper", images=2))
    assert (
        not salt["told"]
        and "paper Deep Image Prior (no memory), imagenet64 (Table 2) | 467.92" in capsys.readouterr().out
    )
    with pytest.raises(SystemExit) as err:
        script.main(dataclasses.replace(args, noise_size=2.5))
    assert err.value.code == 2


def test_script_misuse_is_a_usage_error_without_traceback():
    result = subprocess.run(
        [sys.executable, "scripts/eval_deep_image_prior.py", "--images", "0", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "usage error: --images must be >= 1" in result.stderr
    assert "Traceback" not in result.stderr

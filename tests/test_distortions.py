"""Distortions (block, salt-and-pepper, others by name) and the episode samplers that feed MetaTrainer."""

from __future__ import annotations

import math

import pytest
import torch

from ebmm_rl.data import ImageDataset
from ebmm_rl.distortions import (
    DISTORTIONS,
    BlockNoise,
    ClassBatchSampler,
    SaltPepper,
    UniformBatchSampler,
    make_distortion,
    make_sampler,
    paper_distortion,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(B: int = 4, N: int = 8, C: int = 3, H: int = 32, W: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, N, C, H, W, generator=gen(seed + 100))


def toy_dataset(num_classes: int = 6, per_class: int = 20, size: int = 8, binary: bool = False) -> ImageDataset:
    """Image i is filled with i / num_images, so a pattern tells which image it is."""
    n = num_classes * per_class
    values = torch.arange(n, dtype=torch.float32) / n
    imgs = values[:, None, None, None].expand(n, 1, size, size).contiguous()
    labels = torch.arange(n) % num_classes  # classes interleaved, to test the grouping
    return ImageDataset(imgs, labels, "toy", "train", binary=binary)


def image_ids(patterns: torch.Tensor, n: int) -> torch.Tensor:
    return (patterns[..., 0, 0, 0] * n).round().long()  # [B, N]


# ------------------------------------------------------------------------------------------------ block noise
def test_block_covers_exactly_a_quarter_and_only_changes_the_block():
    x = images()
    queries, known = BlockNoise(16, "uniform", return_known_mask=True)(x, gen())
    assert known.shape == x.shape and known.dtype == torch.bool
    assert (~known).sum(dim=(-1, -2)).eq(256).all()  # per image and channel: 16 * 16 of 1024 pixels
    assert (~known).sum(dim=(-1, -2, -3)).eq(768).all()  # 3 channels
    assert torch.equal(known, known[:, :, :1].expand_as(known))  # the same block in every channel
    rows, cols = (~known[..., 0, :, :]).any(-1), (~known[..., 0, :, :]).any(-2)  # [B, N, H], [B, N, W]
    assert rows.sum(-1).eq(16).all() and cols.sum(-1).eq(16).all()  # a square, not scattered pixels
    assert torch.equal(queries[known], x[known])
    assert (queries[~known] != x[~known]).float().mean() > 0.99


def test_block_positions_reach_every_corner():
    known = BlockNoise(16, return_known_mask=True)(torch.zeros(64, 16, 1, 32, 32), gen())[1][..., 0, :, :]
    top = (~known).any(-1).float().argmax(-1)  # first blocked row
    assert top.min() == 0 and top.max() == 16 and len(top.unique()) == 17


@pytest.mark.parametrize("fill", ["binary", "uniform", 0.25])
def test_block_fill_values(fill):
    x = torch.zeros(8, 8, 1, 32, 32)
    queries, _ = BlockNoise((16, 8), fill)(x, gen())
    inside = queries[queries != 0] if fill != 0.25 else queries[queries == 0.25]
    assert inside.numel() > 0
    if fill == "binary":
        assert set(queries.unique().tolist()) == {0.0, 1.0}
        assert queries.sum() == pytest.approx(0.5 * 64 * 128, rel=0.05)
    elif fill == "uniform":
        assert len(queries.unique()) > 1000 and 0 <= queries.min() and queries.max() <= 1
    else:
        assert (queries == 0.25).sum() == 64 * 128  # a 16x8 block per image


def test_block_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"does not fit in 32x32 images; use block_size <= 32"):
        BlockNoise(33)(images(), gen())
    with pytest.raises(ValueError, match="positive"):
        BlockNoise(0)
    with pytest.raises(ValueError, match="fill must be one of"):
        BlockNoise(8, "gaussian")
    with pytest.raises(ValueError, match="constant fill"):
        BlockNoise(8, 1.5)
    with pytest.raises(ValueError, match=r"float images \[\.\.\., C, H, W\]"):
        BlockNoise(8)(torch.zeros(4, 32, 32, dtype=torch.uint8), gen())


def test_paper_distortion_uses_half_the_side_and_binary_noise_on_binary_data():
    omniglot_like = ImageDataset(torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.long), "o", "train", True)
    imagenet_like = ImageDataset(torch.zeros(2, 3, 64, 64), torch.zeros(2, dtype=torch.long), "i", "train")
    assert paper_distortion(omniglot_like) == BlockNoise((16, 16), "binary")
    assert paper_distortion(imagenet_like, return_known_mask=True) == BlockNoise((32, 32), "uniform", True)


# ------------------------------------------------------------------------------------------ salt and pepper, others
def test_salt_and_pepper_hits_fifteen_percent_of_pixel_positions():
    x = images(B=8, N=16, C=3)
    queries, known = SaltPepper(0.15, return_known_mask=True)(x, gen())
    hits = int((~known[:, :, 0]).sum())
    n = 8 * 16 * 32 * 32
    assert abs(hits - 0.15 * n) < 5 * math.sqrt(n * 0.15 * 0.85)  # binomial: 5 standard deviations
    assert torch.equal(known, known[:, :, :1].expand_as(known))
    assert set(queries[~known].unique().tolist()) == {0.0, 1.0}
    hit_values = queries.permute(0, 1, 3, 4, 2)[~known[:, :, 0]]  # [hits, C]
    assert torch.equal(hit_values, hit_values[:, :1].expand_as(hit_values))  # black or white, not coloured
    assert torch.equal(queries[known], x[known])


@pytest.mark.parametrize(("name", "kwargs"), [("salt_pepper", {"p": 1.5}), ("dropout", {"p": -0.1})])
def test_probabilities_outside_the_unit_interval_are_refused(name, kwargs):
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]"):
        make_distortion(name, **kwargs)


def test_make_distortion_names_and_arguments():
    with pytest.raises(ValueError, match="known: block, salt_pepper, gaussian, dropout, erase"):
        make_distortion("blur")
    with pytest.raises(ValueError, match=r"takes p, return_known_mask; got unknown argument\(s\) \['block_size'\]"):
        make_distortion("salt_pepper", block_size=4)
    with pytest.raises(ValueError, match="std"):
        make_distortion("gaussian", std=-1.0)
    assert make_distortion("block", block_size=20) == BlockNoise(20)
    queries, known = make_distortion("erase", block_size=8, return_known_mask=True)(torch.ones(2, 1, 1, 16, 16), gen())
    assert torch.equal(queries[~known], torch.zeros(2 * 64))


@pytest.mark.parametrize("name", list(DISTORTIONS))
def test_every_distortion_is_deterministic_batched_and_in_range(name):
    x = images(B=3, N=5, C=3, H=32, W=32)
    distortion = make_distortion(name, return_known_mask=True)
    q1, m1 = distortion(x, gen(7))
    q2, m2 = distortion(x, gen(7))
    q3, _ = distortion(x, gen(8))
    assert q1.shape == x.shape and m1.shape == x.shape and m1.dtype == torch.bool
    assert torch.equal(q1, q2) and torch.equal(m1, m2) and not torch.equal(q1, q3)
    assert q1.min() >= 0 and q1.max() <= 1
    assert torch.equal(q1[m1], x[m1])  # known pixels are true pixels
    assert make_distortion(name)(x, gen(7))[1] is None  # no mask unless asked for (the paper gives none)
    # one call on the batch equals the same call per image, with the generator consumed in the same order
    flat, _ = distortion(x.reshape(15, 3, 32, 32), gen(7))
    assert torch.equal(flat.reshape_as(x), q1)


# ---------------------------------------------------------------------------------------------------- samplers
def test_uniform_sampler_draws_distinct_images_uniformly_and_reproducibly():
    data = toy_dataset()
    sampler = UniformBatchSampler(data, batch_size=64, num_patterns=10, distortion="salt_pepper")
    patterns, queries, known = sampler(gen(1))
    assert patterns.shape == queries.shape == (64, 10, 1, 8, 8) and known is None
    ids = image_ids(patterns, len(data))
    assert all(len(row.unique()) == 10 for row in ids)
    again = sampler(gen(1))
    assert torch.equal(again[0], patterns) and torch.equal(again[1], queries)
    many = torch.cat([sampler.sample_indices(gen(s)).flatten() for s in range(20)])
    freq = torch.bincount(many, minlength=len(data)).float()  # expected 12800 / 120 ≈ 107 each
    assert freq.min() > 60 and freq.max() < 160


def test_uniform_sampler_covers_whole_dataset_when_n_is_large():
    data = toy_dataset(num_classes=2, per_class=5)
    ids = UniformBatchSampler(data, 3, 10).sample_indices(gen())
    assert all(sorted(row.tolist()) == list(range(10)) for row in ids)
    with pytest.raises(ValueError, match="more than the 10 images"):
        UniformBatchSampler(data, 3, 11)


def test_class_sampler_gives_exactly_k_classes_with_equal_shares():
    data = toy_dataset(num_classes=6, per_class=20)
    sampler = ClassBatchSampler(data, batch_size=32, num_patterns=32, classes_per_episode=2)
    index = sampler.sample_indices(gen(3))
    assert index.shape == (32, 32)
    for row in index:
        labels = data.labels[row]
        assert len(row.unique()) == 32  # no repeats
        assert len(labels.unique()) == 2 and torch.bincount(labels).max() == 16
    assert index[:, :16].eq(index.sort(dim=1).values[:, :16]).all(dim=1).float().mean() < 0.2  # shuffled
    for row in ClassBatchSampler(data, 8, 7, classes_per_episode=3).sample_indices(gen()):  # 7 = 3 + 2 + 2
        shares = torch.bincount(data.labels[row])
        assert sorted(shares[shares > 0].tolist()) == [2, 2, 3]
    seen = torch.cat([ClassBatchSampler(data, 16, 4, 4).sample_indices(gen(s)) for s in range(10)]).flatten()
    assert len(data.labels[seen].unique()) == 6  # all classes get picked


def test_class_sampler_skips_classes_that_are_too_small_and_checks_arguments():
    labels = torch.tensor([0] * 20 + [1] * 20 + [2] * 5)
    data = ImageDataset(torch.rand(45, 1, 4, 4), labels, "toy", "train")
    index = ClassBatchSampler(data, 64, 32, classes_per_episode=2).sample_indices(gen())
    assert set(data.labels[index].unique().tolist()) == {0, 1}  # class 2 has fewer than 16 images
    with pytest.raises(ValueError, match="2 classes with at least 11 images, fewer than classes_per_episode=3"):
        ClassBatchSampler(data, 4, 32, classes_per_episode=3)
    with pytest.raises(ValueError, match="classes_per_episode must be in 1..num_patterns"):
        ClassBatchSampler(data, 4, 4, classes_per_episode=5)


def test_make_sampler_with_uint8_images_and_the_paper_distortion():
    data = toy_dataset(binary=True)
    as_bytes = ImageDataset((data.images * 255).round().to(torch.uint8), data.labels, "toy", "train", binary=True)
    sampler = make_sampler(as_bytes, None, batch_size=2, num_patterns=4, classes_per_episode=2)
    patterns, queries, known = sampler(gen())
    assert patterns.dtype == torch.float32 and patterns.max() <= 1 and known is None
    assert isinstance(sampler.distortion, BlockNoise) and sampler.distortion.block_hw == (4, 4)
    assert ((queries != patterns).sum(dim=(-1, -2)) <= 16).all()


@pytest.fixture
def one_thread():
    """A tiny model runs fastest on one thread (and does not fight a busy machine for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sampler_plugs_into_meta_trainer(one_thread):
    from ebmm_rl.energy import ResNetConvConfig, ResNetConvEnergy
    from ebmm_rl.memory import EBMMConfig, EBMMemory
    from ebmm_rl.training import MetaTrainer, TrainConfig

    torch.manual_seed(0)
    config = ResNetConvConfig(in_channels=1, image_size=8, channels=4, hidden_size=4, dynamic_size=2, head_size=8)
    memory = EBMMemory(ResNetConvEnergy(config), EBMMConfig(write_steps=1, read_steps=2))
    bits = (torch.rand(40, 1, 8, 8, generator=gen()) < 0.3).float()
    data = ImageDataset(bits, torch.arange(40) % 4, "toy", "train", binary=True)
    with pytest.raises(ValueError, match="a 16x16 block does not fit in 8x8 images"):  # found before training
        make_sampler(data, "block", batch_size=2, num_patterns=3)
    block = make_distortion("block", block_size=4, fill="binary")
    sampler = make_sampler(data, block, batch_size=2, num_patterns=3, classes_per_episode=2)
    trainer = MetaTrainer(memory, sampler, TrainConfig(steps=1, progress=False))
    stats = trainer.train_step()
    assert math.isfinite(stats.loss) and stats.episodes == 2

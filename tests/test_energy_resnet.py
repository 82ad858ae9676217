"""Tests of the ResNet image energies (paper App. C.2–C.5)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ebmm_rl.energy import (
    ResNetConvConfig,
    ResNetConvEnergy,
    ResNetFCConfig,
    ResNetFCEnergy,
    ResNetLowerConvConfig,
    ResNetLowerConvEnergy,
    dynamic_size_for_budget,
)
from ebmm_rl.energy.resnet import ConvRecurrentHead

B, M = 2, 3
D = 3  # dynamic_size of the tiny configs

# (name, energy class, tiny config, writable layer names, hand-counted memory size)
TINY = [
    (
        "fc",
        ResNetFCEnergy,
        ResNetFCConfig(
            in_channels=1,
            image_size=16,
            channels=4,
            encoder_size=8,
            representation_size=8,
            hidden_size=8,
            dynamic_size=D,
            hops=2,
            head_size=8,
        ),
        {"memory"},
        (8 + 1) * D,  # Linear(encoder_size=8 -> D) with bias
    ),
    (
        "conv",
        ResNetConvEnergy,
        ResNetConvConfig(
            in_channels=2,
            image_size=16,
            channels=2,
            hidden_size=4,
            dynamic_size=D,
            bottleneck_downscale=(False, True),
            hops=2,
            head_size=8,
        ),
        {"bottlenecks.0.memory", "bottlenecks.1.memory"},
        2 * (D * (2 * 2) * 3 * 3 + D),  # two 3x3 convs from 2*channels=4 inputs to D outputs, with bias
    ),
    (
        "conv_imagenet",
        ResNetConvEnergy,
        ResNetConvConfig(
            in_channels=3,
            image_size=16,
            channels=2,
            hidden_size=4,
            dynamic_size=D,
            bottleneck_downscale=(True, True),
            hops=2,
            head_size=8,
        ),
        {"bottlenecks.0.memory", "bottlenecks.1.memory"},
        2 * (D * (2 * 2) * 3 * 3 + D),
    ),
    (
        "lower_conv",
        ResNetLowerConvEnergy,
        ResNetLowerConvConfig(
            in_channels=1, image_size=16, channels=4, hidden_size=4, dynamic_size=D, hops=2, head_size=8
        ),
        {"block2.memory1", "block2.memory2"},
        (D * 4 * 3 * 3 + D) + (D * 8 * 3 * 3 + D),  # 3x3 convs from channels=4, then 2*channels=8, inputs
    ),
]
TINY_IDS = [case[0] for case in TINY]


def episode_fast_weights(net, batch: int) -> dict[str, torch.Tensor]:
    """Fast weights that differ per episode: theta_bar plus small noise."""
    return {
        n: p.detach().unsqueeze(0).repeat(batch, *[1] * p.dim()) + 0.01 * torch.randn(batch, *p.shape, dtype=p.dtype)
        for n, p in net.memory_parameters().items()
    }


def build(cls, config, dtype=torch.float64):
    torch.manual_seed(0)
    return cls(config).to(dtype)


@pytest.mark.parametrize(("name", "cls", "config", "layer_names", "expected_size"), TINY, ids=TINY_IDS)
def test_shape_layers_and_memory_size(name, cls, config, layer_names, expected_size):
    net = build(cls, config, torch.float32)
    x = torch.rand(B, M, *config.data_shape)
    energy = net(x, episode_fast_weights(net, B))
    assert energy.shape == (B, M)
    assert torch.isfinite(energy).all()
    assert set(net.memory_layers()) == layer_names
    assert all("memory" in n for n in net.memory_parameters())
    assert net.memory_size == expected_size == config.memory_size
    static = net.static_parameters()
    assert not set(static) & set(net.memory_parameters())


@pytest.mark.parametrize(("name", "cls", "config", "layer_names", "expected_size"), TINY, ids=TINY_IDS)
def test_batched_equals_per_episode(name, cls, config, layer_names, expected_size):
    net = build(cls, config)
    x = torch.rand(B, M, *config.data_shape, dtype=torch.float64)
    fast = episode_fast_weights(net, B)
    batched = net(x, fast)
    # B == 1 takes the plain linear / conv path of the memory layers: a genuinely different code path.
    looped = torch.cat([net(x[b : b + 1], {n: w[b : b + 1] for n, w in fast.items()}) for b in range(B)])
    torch.testing.assert_close(batched, looped, rtol=1e-10, atol=1e-12)
    # The episodes' fast weights differ, so swapping them changes the energies.
    swapped = net(x, {n: w.flip(0) for n, w in fast.items()})
    assert not torch.allclose(swapped, batched)


@pytest.mark.parametrize(("name", "cls", "config", "layer_names", "expected_size"), TINY, ids=TINY_IDS)
def test_energy_differentiable_to_third_order(name, cls, config, layer_names, expected_size):
    net = build(cls, config)
    x = torch.rand(B, M, *config.data_shape, dtype=torch.float64, requires_grad=True)
    fast = {n: w.requires_grad_() for n, w in episode_fast_weights(net, B).items()}
    energy = net(x, fast)
    (grad_x,) = torch.autograd.grad(energy.sum(), x, create_graph=True)
    assert torch.isfinite(grad_x).all() and grad_x.abs().sum() > 0
    grad_fast = torch.autograd.grad((grad_x**2).sum(), list(fast.values()), create_graph=True)
    for n, g in zip(fast, grad_fast, strict=True):
        assert torch.isfinite(g).all(), n
        assert g.abs().sum() > 0, f"no second-order gradient reaches {n}"
    # Third order: the meta-gradient of a write step reaches the slow weights, first and last layer.
    static = net.static_parameters()
    first = next(n for n in static if n.endswith("block1.conv1.weight"))
    last = next(n for n in static if n.endswith("energy.weight"))
    third = torch.autograd.grad(sum((g**2).sum() for g in grad_fast), [static[first], static[last]])
    for n, g in zip((first, last), third, strict=True):
        assert torch.isfinite(g).all() and g.abs().sum() > 0, f"no third-order gradient reaches {n}"


PRESETS = [
    ("fc_omniglot", ResNetFCEnergy, ResNetFCConfig.omniglot(), (1, 32, 32), 8224),
    ("fc_cifar10", ResNetFCEnergy, ResNetFCConfig.cifar10(), (3, 32, 32), 8224),
    ("conv_omniglot", ResNetConvEnergy, ResNetConvConfig.omniglot(), (1, 32, 32), 9232),
    ("conv_cifar10", ResNetConvEnergy, ResNetConvConfig.cifar10(), (3, 32, 32), 9232),
    ("conv_imagenet64", ResNetConvEnergy, ResNetConvConfig.imagenet64(), (3, 64, 64), 18448),
    ("lower_conv_omniglot", ResNetLowerConvEnergy, ResNetLowerConvConfig.omniglot(), (1, 32, 32), 6928),
    ("lower_conv_cifar10", ResNetLowerConvEnergy, ResNetLowerConvConfig.cifar10(), (3, 32, 32), 6928),
]


@pytest.mark.parametrize(("name", "cls", "config", "data_shape", "memory_size"), PRESETS, ids=[p[0] for p in PRESETS])
def test_paper_presets(name, cls, config, data_shape, memory_size):
    """The paper-sized networks run and have the memory sizes their docstrings state."""
    net = cls(config)
    assert net.data_shape == data_shape
    assert net.memory_size == config.memory_size == memory_size > 0
    if hasattr(config, "feature_size"):
        assert config.feature_size == 4  # the paper's 4x4 hidden_state
    fast = {n: p.detach().unsqueeze(0) for n, p in net.memory_parameters().items()}
    with torch.no_grad():
        energy = net(torch.rand(1, 2, *data_shape), fast)
    assert energy.shape == (1, 2) and torch.isfinite(energy).all()


def test_conv_recurrent_head_matches_concatenation():
    """The split-weight recurrence equals convolving concat(x, state) at every hop, as the paper writes it."""
    torch.manual_seed(0)
    head = ConvRecurrentHead(in_channels=3, hidden_size=4, feature_size=2, hops=3, head_size=5).double()
    x = torch.randn(6, 3, 2, 2, dtype=torch.float64)
    state = torch.zeros(6, 4, 2, 2, dtype=torch.float64)
    for _ in range(3):
        z = torch.cat([x, state], dim=1)
        candidate = torch.tanh(head.recurrent_norm(head.recurrent(z)))
        u = torch.sigmoid(head.update_gate_norm(head.update_gate(z)))
        state = u * candidate + (1 - u) * state
    reference = head.energy(torch.tanh(head.head(state.flatten(1)))).squeeze(-1)
    torch.testing.assert_close(head(x), reference, rtol=1e-10, atol=1e-12)


def test_skip_pools_before_projecting():
    """Pooling then 1x1-projecting (what the blocks do) equals projecting then pooling (the paper's order)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    w, b = torch.randn(5, 3, 1, 1, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    pool = dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)
    torch.testing.assert_close(
        F.conv2d(F.avg_pool2d(x, **pool), w, b),
        F.avg_pool2d(F.conv2d(x, w, b), **pool),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize(
    "config",
    [
        ResNetFCConfig.omniglot(),
        ResNetConvConfig.omniglot(),
        ResNetConvConfig.imagenet64(),
        ResNetLowerConvConfig(),
    ],
    ids=["fc", "conv", "conv_imagenet64", "lower_conv"],
)
def test_dynamic_size_for_budget(config):
    for budget in (2500, 5000, 10000, 20000):
        d = dynamic_size_for_budget(config, budget)
        assert dataclasses.replace(config, dynamic_size=d).memory_size <= budget
        assert dataclasses.replace(config, dynamic_size=d + 1).memory_size > budget
    with pytest.raises(ValueError, match="below one memory unit"):
        dynamic_size_for_budget(config, 10)
    with pytest.raises(ValueError, match="at most"):
        dynamic_size_for_budget(config, 10**9)


@pytest.mark.parametrize(("name", "cls", "config", "layer_names", "expected_size"), TINY, ids=TINY_IDS)
def test_helpful_errors(name, cls, config, layer_names, expected_size):
    with pytest.raises(ValueError, match="dynamic_size must lie"):
        cls(dataclasses.replace(config, dynamic_size=config.max_dynamic_size + 1))
    net = cls(config)
    fast = {n: p.detach().unsqueeze(0) for n, p in net.memory_parameters().items()}
    with pytest.raises(ValueError, match="channels first"):
        net(torch.rand(1, 2, 16, 16, config.in_channels), fast)

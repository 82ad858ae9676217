"""The memory prior: synthetic rows, its objective against a loop, saving and loading, the shipped priors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebmm_rl.memory import stepwise_loss
from ebmm_rl.rl.core import FAST_CORE, CoreConfig, MemoryCore, position_code
from ebmm_rl.rl.prior import (
    PRIOR_DIR,
    head_masks,
    load_prior,
    prior_forward,
    save_prior,
    shipped_prior,
    synthetic_rows,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(embed_size=6, key_size=3, value_size=4, position_periods=(4.0, 8.0), hidden_size=12, dynamic_size=6,
             ebmm=dict(write_steps=2, read_steps=3), memory_prior=None)  # fmt: skip


def small_core(seed: int = 0, **overrides) -> MemoryCore:
    torch.manual_seed(seed)
    return MemoryCore(5, CoreConfig.build(**{**SMALL, **overrides})).double()


def test_synthetic_rows_hold_the_position_code_and_bounded_keys_and_values():
    core = small_core()
    x = synthetic_rows(core, 3, 6, torch.Generator().manual_seed(0))
    S = core.position_size
    assert x.shape == (3, 6, core.pattern_size)
    clocks = torch.arange(4096 + 6)
    phases = position_code(clocks, clocks + 1, core.periods)[:, : S - 1]  # [clock, sin and cos]
    for b in range(3):  # each window: consecutive clocks from a random start, the first-step flag at step 0 only
        start = int((phases - x[b, 0, : S - 1]).abs().amax(1).argmin())
        torch.testing.assert_close(x[b, :, : S - 1], phases[start : start + 6], rtol=0, atol=1e-5)
        assert x[b, :, S - 1].tolist() == [1.0] + [-1.0] * 5
    assert bool((x[..., S:].abs() < 1).all()) and float(x[..., S:].std()) > 0.2


def test_prior_objective_equals_a_loop_over_steps_and_head_kinds():
    """Write row by row with ``core.write``; read each step's drawn earlier row three ways and row 0 by its flag."""
    core = small_core()
    x = synthetic_rows(core, 2, 4, torch.Generator().manual_seed(1)).double()
    torch.manual_seed(7)
    out = prior_forward(core, x)
    torch.manual_seed(7)
    draws = torch.rand(2, 3, dtype=torch.float32)
    S, K, P = core.position_size, core.key_size, core.pattern_size
    masks = torch.zeros(4, P, dtype=torch.bool)
    masks[0, :S], masks[1, S : S + K], masks[2, : S + K], masks[3, S - 1] = True, True, True, True
    targets, queries, states = [], [], []
    for b in range(2):
        state = core.memory.initial_state(1)
        memories = []
        for t in range(4):
            memories.append(state)
            u = torch.zeros(1, core.config.embed_size, dtype=torch.float64)
            state = core.write(x[b, t : t + 1], state, u, create_graph=True)
        for t in range(1, 4):
            s = int(draws[b, t - 1] * t)
            target = torch.stack([x[b, s], x[b, s], x[b, s], x[b, 0]])  # the first head reads row 0
            targets.append(target)
            queries.append(torch.where(masks, target, torch.zeros_like(target)))
            states.append(memories[t])
    losses = []
    for target, query, state in zip(targets, queries, states, strict=True):
        result = core.memory.read(query.unsqueeze(0), state, masks.unsqueeze(0))
        losses.append(stepwise_loss(target.unsqueeze(0), result)[0])
    torch.testing.assert_close(out.loss, torch.stack(losses).mean(), rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(out.loss, list(core.memory.parameters()), allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)  # meta-gradients reach the memory


def test_head_masks_are_the_three_kinds():
    core = small_core()
    S, K, V = core.position_size, core.key_size, core.value_size
    masks = head_masks(core).tolist()
    assert masks == [[True] * S + [False] * (K + V), [False] * S + [True] * K + [False] * V,
                     [True] * (S + K) + [False] * V, [False] * (S - 1) + [True] + [False] * (K + V)]  # fmt: skip


def test_meta_training_the_prior_lowers_its_read_error():
    core = small_core()
    params = [p for p in core.memory.parameters()] + [core.retention_raw]
    opt = torch.optim.Adam(params, lr=3e-3)
    g = torch.Generator().manual_seed(0)
    held = synthetic_rows(core, 64, 6, torch.Generator().manual_seed(99)).double()

    def held_error() -> float:
        torch.manual_seed(5)
        with torch.no_grad():
            return float(prior_forward(core, held).errors[-1])

    before = held_error()
    for _ in range(40):
        loss = prior_forward(core, synthetic_rows(core, 16, 6, g).double()).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_error() < 0.9 * before


def test_save_load_round_trip_and_clear_refusals(tmp_path):
    core = small_core(seed=3)
    with torch.no_grad():
        core.retention_raw.add_(0.5)
    save_prior(core, tmp_path / "p.pt")
    fresh = small_core(seed=4)
    load_prior(fresh, tmp_path / "p.pt")
    for name, value in core.state_dict().items():
        if name.startswith("memory.") or name == "retention_raw":
            torch.testing.assert_close(fresh.state_dict()[name], value, rtol=0, atol=0)
        elif name.startswith("key_map"):
            assert not torch.equal(fresh.state_dict()[name], value)  # the maps stay the core's own
    loaded = MemoryCore(5, CoreConfig.build(**{**SMALL, "memory_prior": str(tmp_path / "p.pt")}))
    assert loaded.prior == str(tmp_path / "p.pt")
    with pytest.raises(ValueError, match="fits another core: hidden_size 12"):
        MemoryCore(5, CoreConfig.build(**{**SMALL, "hidden_size": 16, "memory_prior": str(tmp_path / "p.pt")}))
    (tmp_path / "junk.pt").write_bytes(b"not a prior")
    with pytest.raises(ValueError, match="is not a memory prior"):
        load_prior(fresh, tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        load_prior(fresh, tmp_path / "missing.pt")
    with torch.no_grad():
        core.retention_raw[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        save_prior(core, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_a_prior_file_that_pickles_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"architecture": {}, "state": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="is not a memory prior"):
        load_prior(small_core(), tmp_path / "evil.pt")


@pytest.mark.parametrize("fast", [False, True])
def test_the_shipped_priors_fit_the_default_cores_and_recall(fast):
    """A fresh default core starts from its shipped prior, and that memory recalls a row by its clamped position."""
    torch.manual_seed(0)
    config = CoreConfig.build(**(FAST_CORE if fast else {}))
    core = MemoryCore(7, config)
    assert core.prior is not None and Path(core.prior).parent == PRIOR_DIR
    assert shipped_prior(core) == Path(core.prior)
    assert MemoryCore(7, CoreConfig.build(**(FAST_CORE if fast else {}), memory_prior=None)).prior is None
    other = {**(FAST_CORE if fast else {}), "value_size": 5}  # no shipped prior fits: a fresh memory
    assert MemoryCore(7, CoreConfig.build(**other)).prior is None

    def recall_gap(core: MemoryCore) -> float:
        """Read each row 2 steps back by its position: error to that row minus error to the row 3 steps back."""
        x = synthetic_rows(core, 128, 10, torch.Generator().manual_seed(1))
        u = x.new_zeros(128, 10, core.config.embed_size)
        with torch.no_grad():
            before, _ = core.chain(x, u, core.memory.initial_state(128))
            gaps = []
            mask = head_masks(core)[0]
            for t in range(3, 10):
                query = torch.where(mask, x[:, t - 2], torch.zeros_like(x[:, t - 2])).unsqueeze(1)
                got = core.memory.read(query, before[t], mask.expand_as(query)).iterates[-1][:, 0]
                gaps.append(((got - x[:, t - 2]) ** 2).mean() - ((got - x[:, t - 3]) ** 2).mean())
        return float(torch.stack(gaps).mean())

    fresh = MemoryCore(7, CoreConfig.build(**(FAST_CORE if fast else {}), memory_prior=None))
    assert recall_gap(core) < -0.05  # the prior's read lands nearer the row asked for than its neighbour
    assert recall_gap(core) < recall_gap(fresh) - 0.05


def test_meta_train_prior_script_exports_a_prior_that_loads(tmp_path):
    out = subprocess.run(
        [sys.executable, "scripts/meta_train_prior.py", "--steps", "3", "--window", "4", "--batch-size", "4",
         "--eval-windows", "8", "--run-root", str(tmp_path), "--export", str(tmp_path / "p.pt"), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "before: read_error" in out.stdout and "after 3 meta-steps" in out.stdout
    core = MemoryCore(3, CoreConfig(memory_prior=str(tmp_path / "p.pt")))
    assert core.prior == str(tmp_path / "p.pt")
    bad = subprocess.run([sys.executable, "scripts/meta_train_prior.py", "--window", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert bad.returncode == 2 and "--window must be >= 2" in bad.stderr and "Traceback" not in bad.stderr

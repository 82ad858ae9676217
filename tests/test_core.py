"""The agent's memory core: position code, queries, retention, the write loop, its three paths, the truncation."""

from __future__ import annotations

import math

import pytest
import torch

from ebmm_rl.memory import MemoryState, stepwise_loss
from ebmm_rl.rl.core import CoreConfig, MemoryCore, position_code, step_counts

SMALL = dict(embed_size=6, key_size=3, value_size=4, position_periods=(4.0, 8.0), hidden_size=12, dynamic_size=6,
             ebmm=dict(write_steps=2, read_steps=3))  # fmt: skip
TOL = dict(rtol=1e-10, atol=1e-10)


def make_core(seed: int = 0, **overrides) -> MemoryCore:
    torch.manual_seed(seed)
    return MemoryCore(5, CoreConfig.build(**{**SMALL, **overrides})).double()


def written_state(core: MemoryCore, n: int, seed: int = 1) -> MemoryState:
    """A memory away from θ̄ (every term of the rules acts)."""
    g = torch.Generator().manual_seed(seed)
    fast = {k: p.detach() + 0.3 * torch.randn(n, *p.shape, generator=g, dtype=p.dtype)
            for k, p in core.memory.energy.memory_parameters().items()}  # fmt: skip
    return MemoryState(fast, torch.tensor([2, 0, 5][:n]))


def rows(n: int, T: int | None = None, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 5) if T is None else (n, T, 5)
    return torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1


# --------------------------------------------------------------------------------------------- position code
def test_position_code_by_hand():
    periods = torch.tensor([4.0, 8.0], dtype=torch.float64)
    code = position_code(torch.tensor([0, 3]), torch.tensor([0, 2]), periods)
    # clock 0: sin 0, 0; cos 1, 1; first step (count 0): +1. clock 3: sin(3π/2) = -1, sin(3π/4); cos 0, cos(3π/4)
    expected = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0],
                             [-1.0, math.sin(0.75 * math.pi), 0.0, math.cos(0.75 * math.pi), -1.0]],
                            dtype=torch.float64)  # fmt: skip
    torch.testing.assert_close(code, expected, rtol=0, atol=1e-12)


def test_step_counts_by_hand():
    starts = torch.tensor([[False, False, True, False], [True, False, False, False], [False] * 4])
    counts = step_counts(torch.tensor([5, 9, 1]), starts)
    assert counts.tolist() == [[5, 6, 0, 1], [0, 1, 2, 3], [1, 2, 3, 4]]


def test_time_queries_are_translation_equivariant():
    """A time head with z = e^{-iωk}, c = 0 asks for position n - k at every n; z = 0, c = p_0 for the first step."""
    core = make_core(heads=("time", "content"))
    S, nf = core.position_size, 2
    omega = 2 * math.pi / torch.tensor([4.0, 8.0], dtype=torch.float64)
    k = 3
    with torch.no_grad():
        core.query_time_map.weight.zero_()
        bias = core.query_time_map.bias.view(2, -1)
        bias.zero_()
        bias[0, :nf], bias[0, nf : 2 * nf] = torch.cos(omega * k), -torch.sin(omega * k)  # head 0: k steps ago
        bias[0, -1] = -1.0  # not the first step
        bias[1, 2 * nf :] = position_code(torch.tensor(0), torch.tensor(0), omega.new_tensor([4.0, 8.0]))  # head 1
    u = torch.zeros(4, core.config.embed_size, dtype=torch.float64)
    clock = torch.tensor([3, 10, 100, 1001])
    count = torch.tensor([3, 10, 11, 12])
    q = core.queries(u, count, clock)  # [4, 2, P]
    periods = omega.new_tensor([4.0, 8.0])
    wanted = position_code(clock - k, count - k, periods)
    torch.testing.assert_close(q[:, 0, : S - 1], wanted[:, : S - 1], rtol=0, atol=1e-12)  # sin and cos of n - k
    assert (q[:, 0, S - 1] == -1).all()  # the flag is c's alone
    assert torch.equal(q[:, 1, :S], torch.zeros_like(q[:, 1, :S]))  # a content head leaves the position free
    assert torch.equal(q[:, :, S + core.key_size :], torch.zeros_like(q[:, :, S + core.key_size :]))  # values at 0
    core = make_core(heads=("time",))
    with torch.no_grad():
        core.query_time_map.weight.zero_()
        core.query_time_map.bias.zero_()
        core.query_time_map.bias[2 * nf :] = position_code(torch.tensor(0), torch.tensor(0), periods)
    q = core.queries(u, count, clock)
    torch.testing.assert_close(q[:, 0, :S], position_code(0 * clock, 0 * count, periods).expand(4, -1), rtol=0,
                               atol=1e-12)  # fmt: skip


def test_heads_clamp_what_their_kind_names():
    core = make_core(heads=("time", "content", "key"))
    S, K, V = core.position_size, core.key_size, core.value_size
    known = core.known.tolist()
    assert known[0] == [True] * S + [False] * (K + V)
    assert known[1] == [False] * S + [True] * K + [False] * V
    assert known[2] == [True] * (S + K) + [False] * V
    assert core.features_dim == core.config.embed_size + (K + V) + (S + V) + V + 2 * 3 + 2


# ------------------------------------------------------------------------------------------------- writing
def test_retention_keeps_each_units_fraction_of_the_deviation():
    core = make_core(retention_half_lives=(2.0, 32.0))
    state = written_state(core, 2)
    h = torch.tensor([2.0 * 16.0 ** (j / 5) for j in range(6)], dtype=torch.float64)  # log-uniform in [2, 32]
    torch.testing.assert_close(core.half_lives, h)  # to float32's precision: the parameter was made in float32
    rho = 0.5 ** (1 / core.half_lives.detach())
    retained = core.retain(state)
    for name, bar in core.memory.energy.memory_parameters().items():
        w = state.fast_weights[name]
        expected = bar + rho.view(-1, *[1] * (bar.dim() - 1)) * (w - bar)  # unit j: row j of weight, entry j of bias
        torch.testing.assert_close(retained.fast_weights[name], expected, **TOL)


@pytest.mark.parametrize("gate", [False, True])
def test_a_step_write_is_retention_then_the_paper_write_anchored_there_then_the_gate(gate):
    """Against the memory's autograd path from the retained memory, its prior anchored there, gated by hand."""
    core = make_core(write_gate=gate)
    assert core.memory.config.prior_anchor == "previous"
    state = written_state(core, 3)
    u = core.embed(rows(3))
    x = core.patterns(u, state.num_written, torch.tensor([7, 0, 30]))
    with torch.no_grad():
        got = core.write(x, state, u)
        retained = core.retain(state)
        core.memory.energy.closed_form = False
        written = core.memory.write(x.unsqueeze(1), retained)  # anchored at its start: the retained memory
        core.memory.energy.closed_form = True
        g = torch.sigmoid(core.gate_map(u))[:, 0] if gate else torch.ones(3, dtype=torch.float64)
    for name, w in written.fast_weights.items():
        r = retained.fast_weights[name]
        expected = r + g.view(-1, *[1] * (w.dim() - 1)) * (w - r)
        torch.testing.assert_close(got.fast_weights[name], expected, **TOL)
    assert got.num_written.tolist() == [3, 1, 6]
    masked = core.write(x, state, u, mask=torch.tensor([True, False, True]))  # padding: nothing, no retention
    assert torch.equal(masked.index(slice(1, 2)).flatten(), state.index(slice(1, 2)).flatten())


# ------------------------------------------------------------------------------------------------- reading
def test_features_are_a_clamped_read_and_energies_by_hand():
    core = make_core()
    state = written_state(core, 3)
    u = core.embed(rows(3))
    count, clock = state.num_written, torch.tensor([7, 0, 30])
    with torch.no_grad():
        got = core.read_features(u, count, clock, state)
        q = core.queries(u, count, clock)  # [3, H, P]
        core.memory.energy.closed_form = False
        with torch.enable_grad():
            result = core.memory.read(q, state, core.known, create_graph=False)
        core.memory.energy.closed_form = True
        x = core.patterns(u, count, clock)
        energy = core.memory.energy
        first = energy(result.iterates[0], state.fast_weights)  # [3, H]
        last = energy(result.iterates[-1], state.fast_weights)
        own = energy(x.unsqueeze(1), state.fast_weights)  # [3, 1]
    retrieved = result.retrieved
    assert torch.equal(torch.where(core.known, retrieved, 0.0), torch.where(core.known, q, 0.0))  # clamped
    free = torch.cat([retrieved[:, h][:, ~core.known[h]] for h in range(core.num_heads)], dim=1)
    expected = torch.cat([u, free, torch.asinh(first), torch.asinh(last), torch.asinh(own),
                          torch.log1p(count.double()).unsqueeze(1)], dim=1)  # fmt: skip
    torch.testing.assert_close(got, expected, **TOL)


# ----------------------------------------------------------------------------------------------- the paths
def _reference_features(core, x_rows, starts, state, clock0):
    """A loop over the steps: reset, read, then write (the definition the three paths must agree with)."""
    features, memory = [], state
    n, T, _ = x_rows.shape
    with torch.no_grad():
        for t in range(T):
            memory = core.memory.reset(memory, starts[:, t])
            u = core.embed(x_rows[:, t])
            features.append(core.read_features(u, memory.num_written, clock0 + t, memory))
            memory = core.write(core.patterns(u, memory.num_written, clock0 + t), memory, u)
    return torch.stack(features, 1).reshape(n * T, -1), memory


@pytest.mark.parametrize("gate", [False, True])
def test_rollout_whole_sequence_and_windows_compute_the_same_features(gate):
    core = make_core(write_gate=gate)
    n, T = 3, 7
    x_rows = rows(n, T)
    starts = torch.zeros(n, T, dtype=torch.bool)
    starts[1, 3] = starts[2, 0] = True
    state, clock = written_state(core, n), torch.tensor([5, 0, 100])
    expected, final = _reference_features(core, x_rows, starts, state, clock)
    stepped, memory, stored = [], state, []
    for t in range(T):  # the rollout: one lockstep call per env step
        stored.append(core.memory.reset(memory, starts[:, t]))
        f, memory = core.step(x_rows[:, t], memory, clock + t, starts[:, t])
        stepped.append(f)
    torch.testing.assert_close(torch.stack(stepped, 1).reshape(n * T, -1), expected, **TOL)
    torch.testing.assert_close(memory.flatten(), final.flatten(), **TOL)
    stored = MemoryState.stack(stored)
    whole, after, _ = core.unroll(x_rows, starts, state, clock)
    torch.testing.assert_close(whole, expected, **TOL)
    torch.testing.assert_close(after.flatten(), final.flatten(), **TOL)
    for mode in ("block", "sliding"):
        core.window_mode = mode
        for k in (1, 3, 8):
            for given in (None, stored):
                windowed, _, _ = core.unroll(x_rows, starts, state, clock, window=k, stored=given)
                torch.testing.assert_close(windowed, expected, **TOL, msg=f"{mode} {k}")
        keep = torch.tensor([0, 4, 9, 20])
        kept, _, _ = core.unroll(x_rows, starts, state, clock, window=3, stored=stored, keep=keep)
        torch.testing.assert_close(kept, expected[keep], **TOL)


@pytest.mark.parametrize("mode", ["block", "sliding"])
def test_a_read_backpropagates_through_exactly_the_writes_of_its_window(mode):
    """``block``: the writes since its block of k began; ``sliding``: its last k writes."""
    core = make_core()
    core.window_mode = mode
    T, k = 7, 3
    x_rows = rows(1, T).requires_grad_(True)
    starts = torch.zeros(1, T, dtype=torch.bool)
    for t in range(T):
        features, _, _ = core.unroll(x_rows, starts, core.memory.initial_state(1), torch.tensor([0]), window=k)
        (grad,) = torch.autograd.grad(features[t].sum(), x_rows)
        reached = [s for s in range(T) if grad[0, s].abs().max() > 0]
        first = t - t % k if mode == "block" else max(t - k, 0)
        assert reached == list(range(first, t + 1)), (t, reached)  # the step itself: its embedding and query


# ------------------------------------------------------------------------------------------------ aux loss
def test_recall_loss_reads_rows_from_their_clamped_keys_and_detaches_the_targets():
    core = make_core()
    state = written_state(core, 3)
    u = core.embed(rows(3))
    x = core.patterns(u, state.num_written, torch.tensor([7, 0, 30]))
    loss, errors = core.recall_loss(x, state)
    key = torch.zeros(core.pattern_size, dtype=torch.bool)
    key[: core.position_size + core.key_size] = True
    query = torch.where(key, x, 0.0).detach().unsqueeze(1)
    core.memory.energy.closed_form = False
    result = core.memory.read(query, state, key)
    core.memory.energy.closed_form = True
    expected, expected_errors = stepwise_loss(x.detach().unsqueeze(1), result)
    torch.testing.assert_close(loss, expected, **TOL)
    torch.testing.assert_close(errors, expected_errors, **TOL)
    assert core.last_aux_loss == pytest.approx(expected.item())
    loss.backward()
    assert core.value_map.weight.grad is None  # the rows are targets: no gradient into what made them
    assert core.memory.read_step_raw.grad is not None and core.memory.read_step_raw.grad.abs() > 0


def test_aux_loss_uses_earlier_rows_of_the_same_episode_only():
    core = make_core()
    n, T = 2, 6
    starts = torch.zeros(n, T, dtype=torch.bool)
    starts[0, 0] = starts[0, 3] = True  # steps 0 and 3 start episodes: nothing earlier in their episode
    starts[1, 0] = True
    u = core.embed(rows(n, T))
    counts = step_counts(torch.zeros(n, dtype=torch.long), starts)
    x = core.patterns(u, counts, counts)
    before, _ = core.chain(x, u, core.memory.initial_state(n), starts)
    reads = MemoryState.stack(before)
    picked = []

    def spy(target, state):
        picked.append(target.detach())
        return torch.zeros((), dtype=target.dtype), torch.zeros(3)

    core.recall_loss = spy  # type: ignore[method-assign]
    for seed in range(20):
        torch.manual_seed(seed)
        core.aux_loss(x, starts, reads)
    flat = x.detach().reshape(n * T, -1)
    allowed = {1: [0], 2: [0, 1], 4: [3], 5: [3, 4], 7: [6], 8: [6, 7], 9: [6, 7, 8], 10: [6, 7, 8, 9],
               11: [6, 7, 8, 9, 10]}  # fmt: skip
    for batch in picked:
        assert batch.shape[0] == len(allowed)  # steps 0, 3 and 6 have no earlier row of their episode
        for (step, sources), target in zip(allowed.items(), batch, strict=True):
            assert any(torch.equal(target, flat[s]) for s in sources), step


# ---------------------------------------------------------------------------------------------- checkpoints
def test_a_saved_core_comes_back_identical_and_old_checkpoints_say_what_changed(tmp_path):
    from ebmm_rl.checkpoint import save_memory
    from ebmm_rl.energy.mlp import MLPConfig, MLPEnergy
    from ebmm_rl.memory import EBMMemory
    from ebmm_rl.rl.pretrain import load_core, save_core

    core = make_core(write_gate=True, heads=("key", "time")).float()
    save_core(core, tmp_path / "core.pt")
    loaded = load_core(tmp_path / "core.pt")
    assert loaded.config == core.config
    state = core.memory.initial_state(3)
    r, clock = rows(3).float(), torch.tensor([1, 2, 3])
    torch.testing.assert_close(loaded.step(r, state, clock)[0], core.step(r, state, clock)[0])
    save_memory(EBMMemory(MLPEnergy(MLPConfig(input_size=5, hidden_size=8, dynamic_size=4))), tmp_path / "flat.pt")
    with pytest.raises(ValueError, match="before key/value rows"):
        load_core(tmp_path / "flat.pt")
    with pytest.raises(ValueError, match="before key/value rows"):
        MemoryCore(5, CoreConfig(), memory=EBMMemory(MLPEnergy(MLPConfig(input_size=5, hidden_size=8, dynamic_size=4))))


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(heads=()), "heads"),
        (dict(heads=("time", "where")), "heads"),
        (dict(retention_half_lives=(0.0, 4.0)), "retention_half_lives"),
        (dict(retention_half_lives=(8.0, 4.0)), "retention_half_lives"),
        (dict(position_periods=(4.0, -1.0)), "position_periods"),
        (dict(encoder="identity"), "encoder"),
        (dict(key_size=0), "key_size"),
        (dict(colour=3), "unknown memory settings"),
    ],
)
def test_bad_settings_are_refused_with_the_field_named(bad, match):
    with pytest.raises(ValueError, match=match):
        CoreConfig.build(**bad)

import itertools

import pytest
import torch

from ebmm_rl.binary import corrupt, error_bits, evaluate, sample_patterns
from ebmm_rl.hopfield import (
    HebbMemory,
    HopfieldConfig,
    HopfieldState,
    PseudoInverseMemory,
    StorkeyMemory,
    hopfield_memory,
)

RULES = ["hebb", "storkey", "pseudo_inverse"]


def _episode(batch_size, num_patterns, dim=128, seed=0, num_corrupted=None):
    gen = torch.Generator().manual_seed(seed)
    patterns = sample_patterns(batch_size, num_patterns, dim, generator=gen)
    queries, known_mask = corrupt(patterns, dim // 2 if num_corrupted is None else num_corrupted, generator=gen)
    return patterns, queries, known_mask, gen


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # Reads are long chains of tiny ops: on a shared 2-core machine intra-op threads only add contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _storkey_reference(patterns, field):
    """Literal transcription of the Storkey rule for one episode in plain Python: patterns [N, D] -> W [D, D]."""
    num_patterns, dim = patterns.shape
    w = [[0.0] * dim for _ in range(dim)]
    for xi in patterns.tolist():
        h = [[0.0] * dim for _ in range(dim)]  # h[i][j] from the weights before this pattern
        for i, j in itertools.product(range(dim), range(dim)):
            excluded = (i, j) if field == "local" else ()
            h[i][j] = sum(w[i][k] * xi[k] for k in range(dim) if k not in excluded)
        w = [
            [0.0 if i == j else w[i][j] + (xi[i] * xi[j] - xi[i] * h[j][i] - h[i][j] * xi[j]) / dim for j in range(dim)]
            for i in range(dim)
        ]
    return torch.tensor(w, dtype=torch.float64)


@pytest.mark.parametrize("rule", RULES)
def test_memory_size_is_the_papers_budget(rule):
    assert hopfield_memory(rule).memory_size == 128 * 127 // 2 + 128 == 8256
    assert hopfield_memory(rule, HopfieldConfig(dim=4)).memory_size == 6 + 4


@pytest.mark.parametrize("field", ["full", "local"])
def test_storkey_tiny_case_matches_hand_computed_reference(field):
    patterns = torch.tensor([[[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0]]])  # [1, 2, 4]
    memory = StorkeyMemory(HopfieldConfig(dim=4, storkey_field=field))
    weights = memory.write(patterns).weights[0].to(torch.float64)
    # after the first pattern (zero weights, zero field): w_ij = xi_i xi_j / 4
    first = memory.write(patterns[:, :1]).weights[0]
    assert torch.equal(first, (torch.outer(patterns[0, 0], patterns[0, 0]) * (1 - torch.eye(4))) / 4)
    # second pattern worked by hand: h = W xi = [-1/4, 1/4, -1/4, 1/4]
    expected = {"full": (-1 / 8, 1 / 8, -5 / 8), "local": (0.0, 0.0, -3 / 4)}[field]
    assert weights[0, 1].item() == pytest.approx(expected[0])
    assert weights[0, 2].item() == pytest.approx(expected[1])
    assert weights[0, 3].item() == pytest.approx(expected[2])
    torch.testing.assert_close(weights, _storkey_reference(patterns[0], field))
    torch.testing.assert_close(weights, weights.T)
    assert torch.equal(weights.diagonal(), torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("field", ["full", "local"])
def test_storkey_matches_literal_rule_on_random_patterns(field):
    patterns = sample_patterns(2, 3, dim=6, generator=torch.Generator().manual_seed(5))
    weights = StorkeyMemory(HopfieldConfig(dim=6, storkey_field=field)).write(patterns).weights
    for b in range(2):
        torch.testing.assert_close(weights[b].to(torch.float64), _storkey_reference(patterns[b], field))


def test_hebb_weights_and_pseudo_inverse_projector():
    patterns = sample_patterns(2, 5, dim=16, generator=torch.Generator().manual_seed(1))
    config = HopfieldConfig(dim=16)
    hebb = HebbMemory(config).write(patterns).weights
    for b in range(2):
        expected = patterns[b].T @ patterns[b] / 16
        expected.fill_diagonal_(0)
        torch.testing.assert_close(hebb[b], expected)
    projector = PseudoInverseMemory(config).write(patterns).weights  # keeps its diagonal for chunked writing
    torch.testing.assert_close(projector @ projector, projector, atol=1e-5, rtol=0)
    torch.testing.assert_close(projector @ patterns.transpose(1, 2), patterns.transpose(1, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(projector.diagonal(dim1=1, dim2=2).sum(-1), torch.full((2,), 5.0))


@pytest.mark.parametrize("rule", RULES)
def test_chunked_writing_equals_one_shot_writing(rule):
    patterns = sample_patterns(3, 12, dim=32, generator=torch.Generator().manual_seed(2))
    memory = hopfield_memory(rule, HopfieldConfig(dim=32))
    whole = memory.write(patterns)
    state = memory.write(patterns[:, :5])
    state = memory.write(patterns[:, 5:], state)
    assert state.num_written == whole.num_written == 12
    torch.testing.assert_close(state.weights, whole.weights, atol=1e-5, rtol=1e-5)


def test_pseudo_inverse_recalls_16_patterns_perfectly():
    memory = PseudoInverseMemory()
    gen = torch.Generator().manual_seed(3)

    def clean(patterns, queries, known_mask):
        return memory.read(patterns, memory.write(patterns), generator=gen)

    def corrupted(patterns, queries, known_mask):
        return memory.read(queries, memory.write(patterns), known_mask=known_mask, generator=gen)

    errors = evaluate(clean, 16, num_batches=20, batch_size=4, generator=gen, batches_per_call=20)
    assert float(errors.max()) == 0.0
    errors = evaluate(corrupted, 16, num_batches=20, batch_size=4, generator=gen, batches_per_call=20)
    assert float(errors.max()) == 0.0


def test_hebb_error_grows_with_number_of_patterns():
    memory = HebbMemory()
    gen = torch.Generator().manual_seed(4)

    def retrieve(patterns, queries, known_mask):
        return memory.read(queries, memory.write(patterns), known_mask=known_mask, generator=gen)

    means = [float(evaluate(retrieve, n, num_batches=2, batch_size=4, generator=gen).mean()) for n in (16, 48, 96)]
    assert means[0] < means[1] < means[2]
    assert means[0] < 2.0 and 5.0 < means[1] < 15.0 and 12.0 < means[2] < 21.0  # paper: 0.4, 9.8, 16.5


@pytest.mark.parametrize("dynamics", ["async", "sync"])
@pytest.mark.parametrize("rule", RULES)
def test_clamped_bits_never_change_and_result_is_binary(rule, dynamics):
    patterns, queries, known_mask, gen = _episode(3, 40, seed=6)
    memory = hopfield_memory(rule, HopfieldConfig(dynamics=dynamics))
    retrieved = memory.read(queries, memory.write(patterns), known_mask=known_mask, generator=gen)
    assert retrieved.shape == queries.shape
    assert torch.equal(retrieved[known_mask], queries[known_mask])
    assert bool(((retrieved == 1) | (retrieved == -1)).all())
    # inputs untouched
    assert torch.equal(queries, _episode(3, 40, seed=6)[1])


@pytest.mark.parametrize("rule", RULES)
def test_async_read_stops_at_a_fixed_point(rule):
    patterns, queries, known_mask, gen = _episode(2, 48, seed=7)
    memory = hopfield_memory(rule)
    state = memory.write(patterns)
    retrieved = memory.read(queries, state, known_mask=known_mask, generator=gen)
    weights = state.weights.clone()
    weights.diagonal(dim1=1, dim2=2).zero_()
    field = torch.bmm(retrieved, weights)  # [B, M, D], weights symmetric
    stable = (torch.sign(field) == retrieved) | (field == 0) | known_mask
    assert bool(stable.all())


@pytest.mark.parametrize("rule", RULES)
def test_stored_patterns_are_fixed_points_at_low_load(rule):
    patterns, _, _, gen = _episode(2, 8, seed=8)
    memory = hopfield_memory(rule)
    retrieved = memory.read(patterns, memory.write(patterns), generator=gen)
    assert torch.equal(retrieved, patterns)


def _read_reference(weights, query, free, dynamics, max_sweeps=100):
    """Hopfield dynamics for one query in plain Python, units in index order.

    weights [D, D] (diagonal ignored), query [D], free [D] bool -> final state (list of floats). Async: each free
    unit in turn takes the sign of its field ``sum_{j != i} w_ij x_j`` (zero keeps it) until a sweep changes
    nothing. Sync: all free units at once from the previous state.
    """
    w, x, free = weights.tolist(), query.tolist(), free.tolist()
    dim = len(x)

    def field(state, i):
        return sum(w[i][j] * state[j] for j in range(dim) if j != i)

    def sign_or_keep(h, old):
        return 1.0 if h > 0 else -1.0 if h < 0 else old

    for _ in range(max_sweeps):
        if dynamics == "async":
            changed = False
            for i in range(dim):
                if free[i]:
                    new = sign_or_keep(field(x, i), x[i])
                    changed |= new != x[i]
                    x[i] = new
        else:
            new_x = [sign_or_keep(field(x, i), x[i]) if free[i] else x[i] for i in range(dim)]
            changed = new_x != x
            x = new_x
        if not changed:
            break
    return x


@pytest.mark.parametrize("dynamics", ["async", "sync"])
@pytest.mark.parametrize("rule", RULES)
def test_read_matches_a_plain_python_reference(rule, dynamics):
    patterns, queries, known_mask, _ = _episode(2, 5, dim=16, seed=9, num_corrupted=8)
    memory = hopfield_memory(rule, HopfieldConfig(dim=16, update_order="fixed", dynamics=dynamics))
    state = memory.write(patterns)
    batched = memory.read(queries, state, known_mask=known_mask)
    moved = 0
    for b, m in itertools.product(range(2), range(5)):
        expected = _read_reference(state.weights[b], queries[b, m], ~known_mask[b, m], dynamics)
        assert batched[b, m].tolist() == expected, (b, m)
        moved += expected != queries[b, m].tolist()
    assert moved > 0  # the dynamics did something to check


def test_random_order_read_is_seeded():
    patterns, queries, known_mask, _ = _episode(2, 48, seed=10)
    memory = StorkeyMemory()
    state = memory.write(patterns)
    first = memory.read(queries, state, known_mask, generator=torch.Generator().manual_seed(0))
    second = memory.read(queries, state, known_mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, second)
    other = memory.read(queries, state, known_mask, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(first, other)  # the order is random, and drawn from the generator
    # Storkey at N = 48: 6.7 error bits over 32000 memories (module docstring); 96 queries here
    assert 4.0 < float(error_bits(first, patterns).mean()) < 9.5


def test_queries_and_patterns_may_differ_in_count():
    patterns, queries, known_mask, gen = _episode(2, 10, seed=11)
    memory = HebbMemory()
    retrieved = memory.read(queries[:, :3], memory.write(patterns), known_mask=known_mask[:, :3], generator=gen)
    assert retrieved.shape == (2, 3, 128)


def _bad_calls():
    memory = HebbMemory()
    patterns = torch.ones(2, 3, 128)
    state = memory.write(patterns)
    return [
        (lambda: memory.write(torch.ones(3, 128)), r"shape \[B, N, D\]"),
        (lambda: memory.write(torch.ones(2, 3, 64)), r"dim=64"),
        (lambda: memory.write(torch.zeros(2, 3, 128)), r"-1.0 and \+1.0"),
        (lambda: memory.write(torch.ones(0, 3, 128)), "empty"),
        (lambda: memory.write(torch.ones(2, 3, 128, dtype=torch.int64)), "floating-point"),
        (lambda: memory.write(torch.ones(1, 3, 128), state), "same B"),
        (lambda: memory.read(torch.ones(3, 3, 128), state), "same B|B used for write"),
        (lambda: memory.read(torch.ones(2, 3, 128) * 0.5, state), r"-1.0 and \+1.0"),
        (lambda: memory.read(patterns, state, known_mask=torch.ones(2, 3, 128)), "bool"),
        (lambda: memory.read(patterns, state, known_mask=torch.ones(2, 3, 64, dtype=torch.bool)), "shape"),
        (lambda: hopfield_memory("oja"), "unknown Hopfield rule"),
        (lambda: HopfieldConfig(dim=1), "dim"),
        (lambda: HopfieldConfig(update_order="backwards"), "update_order"),
        (lambda: HopfieldConfig(storkey_field="half"), "storkey_field"),
        (lambda: memory.init_state(0), "batch_size"),
    ]


@pytest.mark.parametrize("index", range(len(_bad_calls())))
def test_bad_input_raises_helpful_value_error(index):
    call, match = _bad_calls()[index]
    with pytest.raises(ValueError, match=match):
        call()


def test_state_and_factory():
    state = HebbMemory(HopfieldConfig(dim=8)).init_state(3)
    assert isinstance(state, HopfieldState)
    assert state.batch_size == 3 and state.weights.shape == (3, 8, 8) and state.thresholds.shape == (3, 8)
    assert isinstance(hopfield_memory("pseudo-inverse"), PseudoInverseMemory)
    assert isinstance(hopfield_memory("Storkey"), StorkeyMemory)

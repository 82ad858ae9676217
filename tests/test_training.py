"""Meta-training: the loss goes down, resuming is exact, divergence guards, checkpoints."""

from __future__ import annotations

import math
import re
import sys
import time
from dataclasses import replace as dataclasses_replace
from types import SimpleNamespace

import pytest
import torch

from ebmm_rl.binary import corrupt, sample_patterns
from ebmm_rl.binary_training import binary_read_metrics
from ebmm_rl.checkpoint import load_checkpoint, load_memory, save_memory
from ebmm_rl.energy import GatedRNNConfig, GatedRNNEnergy
from ebmm_rl.memory import EBMMConfig, EBMMemory, MemoryState, MetaOutput, NonFiniteState, ReadResult
from ebmm_rl.training import MetaTrainer, TrainConfig, TrainingDiverged


def tiny_memory(seed: int = 0) -> EBMMemory:
    torch.manual_seed(seed)
    energy = GatedRNNEnergy(GatedRNNConfig(input_size=16, hidden_size=32, dynamic_size=8, hops=3))
    return EBMMemory(energy, EBMMConfig(data_range=(-1.0, 1.0), write_steps=2, read_steps=3, write_lr_init=0.3))


def sampler(generator: torch.Generator):
    patterns = sample_patterns(8, 4, 16, generator=generator)
    queries, known = corrupt(patterns, 8, generator=generator)
    return patterns, queries, known


def fixed_batch_loss(memory: EBMMemory) -> float:
    batch = sampler(torch.Generator().manual_seed(1234))
    return memory(*batch).loss.item()


def config(**overrides) -> TrainConfig:
    """Tiny settings; the skipped-fraction guard is off unless a test sets it (it tests the other guards alone)."""
    base = dict(steps=6, lr=3e-3, schedule_lr=3e-3, grad_clip=1.0, checkpoint_every=3, progress=False, log_every=2,
                max_skipped_fraction=1.0)  # fmt: skip
    return TrainConfig(**{**base, **overrides})


def test_short_meta_training_lowers_the_meta_loss():
    memory = tiny_memory()
    before = fixed_batch_loss(memory)
    MetaTrainer(memory, sampler, config(steps=30, lr=1e-2, schedule_lr=1e-2)).train()
    after = fixed_batch_loss(memory)
    assert after < 0.96 * before, (before, after)  # deterministic: 41.1 -> 38.5 at the time of writing


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path):
    straight = tiny_memory()
    MetaTrainer(straight, sampler, config(steps=6), run_dir=tmp_path / "straight").train()

    first = tiny_memory()
    MetaTrainer(first, sampler, config(steps=3), run_dir=tmp_path / "split").train()
    resumed = tiny_memory(seed=99)  # different init: everything must come from the checkpoint
    trainer = MetaTrainer(resumed, sampler, config(steps=6), run_dir=tmp_path / "split")
    trainer.train(resume=True)

    assert trainer.step == 6
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{name} differs after resuming")


def test_resume_without_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        MetaTrainer(tiny_memory(), sampler, config(), run_dir=tmp_path).train(resume=True)


def test_huge_gradient_steps_are_skipped_and_training_stops(tmp_path):
    memory = tiny_memory()
    before = {k: v.clone() for k, v in memory.state_dict().items()}
    trainer = MetaTrainer(memory, sampler, config(steps=10, skip_grad_norm=1e-12, max_consecutive_skips=3))
    with pytest.raises(TrainingDiverged, match="consecutive steps"):
        trainer.train()
    assert trainer.skipped_total == 3
    for k, v in memory.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed during a skipped step"


def test_non_finite_loss_is_skipped():
    memory = tiny_memory()
    real_forward = memory.forward
    calls = {"n": 0}

    def flaky_forward(patterns, queries, known_mask=None):
        out = real_forward(patterns, queries, known_mask)
        calls["n"] += 1
        if calls["n"] == 2:
            return MetaOutput(out.loss * math.nan, out.errors, out.read, out.state)
        return out

    memory.forward = flaky_forward
    trainer = MetaTrainer(memory, sampler, config(steps=4))
    trainer.train()
    assert trainer.skipped_total == 1 and trainer.step == 4


def test_checkpoint_is_data_only_and_rebuilds_the_memory(tmp_path):
    memory = tiny_memory()
    trainer = MetaTrainer(memory, sampler, config(steps=2), run_dir=tmp_path)
    trainer.train()
    path = tmp_path / "checkpoint.pt"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 2 and ckpt["memory_spec"]["energy"] == "GatedRNNEnergy"
    rebuilt = load_memory(path)
    batch = sampler(torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = memory.read(batch[1], memory.write(batch[0]), batch[2]).retrieved
        b = rebuilt.read(batch[1], rebuilt.write(batch[0]), batch[2]).retrieved
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    save_memory(memory, tmp_path / "memory.pt")
    assert load_memory(tmp_path / "memory.pt").memory_size == memory.memory_size
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_memory(tmp_path / "missing.pt")


def test_tensorboard_scalars_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    seen = []

    def metrics(batch, out):  # what the trainer logs must be what read_metrics returned for that step's batch
        values = binary_read_metrics(batch, out)
        seen.append(values["error_bits"])
        return values

    MetaTrainer(tiny_memory(), sampler, config(steps=4), run_dir=tmp_path, read_metrics=metrics).train()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"meta/loss", "meta/grad_norm", "read/sq_error_k3", "read/error_bits_k3", "read/gamma_k1", "write/alpha"}
    assert expected <= tags and "read/error_k3" not in tags
    assert "write/lr_memory_energy_t2" in tags and "charts/episodes_per_s" in tags
    assert len(seen) == 2  # computed on logged steps only (log_every=2)
    logged = [e.value for e in events.Scalars("read/error_bits_k3")]
    assert logged == pytest.approx([v[2] for v in seen])


def test_binary_read_metrics_count_wrong_signs_of_every_iterate():
    patterns = torch.tensor([[[1.0, -1.0, 1.0, -1.0]]])  # [B=1, N=1, D=4]
    iterates = torch.tensor([[[0.5, 0.5, 0.5, 0.5]], [[0.9, -0.2, -0.1, 0.3]], [[1.0, -1.0, 0.0, -0.5]]])
    out = SimpleNamespace(read=ReadResult(iterates.unsqueeze(1)))  # [K + 1 = 3, B, N, D]
    # iterate 1: signs + - - + -> bits 3 and 4 wrong; iterate 2: + - + - (0 counts as +1) -> none wrong
    assert binary_read_metrics((patterns,), out) == {"error_bits": [2.0, 0.0]}


def test_best_evaluation_is_kept_and_skipping_runs_do_not_overwrite(tmp_path):
    scores = iter([3.0, 1.0, 2.0])
    evaluations = []

    def evaluate(memory):
        evaluations.append({k: v.clone() for k, v in memory.state_dict().items()})
        return {"error": next(scores)}

    trainer = MetaTrainer(
        tiny_memory(), sampler, config(steps=3, eval_every=1, checkpoint_every=1), tmp_path, evaluate=evaluate
    )
    trainer.train()
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["step"] == 2 and best["best_score"] == 1.0
    for k, v in best["model"].items():
        assert torch.equal(v, evaluations[1][k])
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_cosine_schedule_decays_to_the_floor_and_resumes_exactly(tmp_path):
    trainer = MetaTrainer(tiny_memory(), sampler, config(steps=10, lr_schedule="cosine", min_lr_ratio=0.1))
    assert trainer.lr_factor(0) == pytest.approx(1.0)
    assert trainer.lr_factor(5) == pytest.approx(0.55)
    assert trainer.lr_factor(10) == pytest.approx(0.1)
    used = []  # the weights' rate at each optimizer step
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    trainer.train()
    expected = [3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 10))) for s in range(10)]
    assert used == pytest.approx(expected, rel=1e-12)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)  # the rate of step 10, the floor

    cosine = config(steps=6, lr_schedule="cosine")
    straight = tiny_memory()
    MetaTrainer(straight, sampler, cosine, run_dir=tmp_path / "a").train()
    calls = {"n": 0}

    def killed_after_three(generator):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return sampler(generator)

    with pytest.raises(KeyboardInterrupt):  # checkpoint written at step 3
        MetaTrainer(tiny_memory(), killed_after_three, cosine, run_dir=tmp_path / "b").train()
    resumed = tiny_memory(seed=5)
    MetaTrainer(resumed, sampler, cosine, run_dir=tmp_path / "b").train(resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_rollback_restores_the_healthy_snapshot_and_lowers_the_learning_rates():
    memory = tiny_memory()
    real_forward = memory.forward
    calls, seen = {"n": 0}, {}

    def exploding_forward(patterns, queries, known_mask=None):
        calls["n"] += 1
        if calls["n"] in (3, 6):  # weights after step 2 (the snapshot), and after the rollback
            seen[calls["n"]] = {k: v.clone() for k, v in memory.state_dict().items()}
        out = real_forward(patterns, queries, known_mask)
        if calls["n"] in (4, 5):
            return MetaOutput(out.loss * math.nan, out.errors, out.read, out.state)
        return out

    memory.forward = exploding_forward
    trainer = MetaTrainer(memory, sampler, config(steps=6, checkpoint_every=2, rollback_after=2))
    trainer.train()
    assert trainer.rollbacks == 1 and trainer.skipped_total == 2 and trainer.step == 6
    assert trainer.summary() == "2 of 6 steps skipped, 1 rollback(s)"
    for name, value in seen[6].items():
        torch.testing.assert_close(value, seen[3][name], rtol=0, atol=0, msg=name)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([1.5e-3, 1.5e-3])
    assert trainer.scheduler.base_lrs == pytest.approx([3e-3, 3e-3])


def test_bad_schedule_settings_raise():
    with pytest.raises(ValueError, match="lr_schedule"):
        config(lr_schedule="linear")
    with pytest.raises(ValueError, match="rollback_after"):
        config(rollback_after=200, max_consecutive_skips=100)


def test_rollback_halves_the_cosine_schedule_and_the_scheduler_state_resumes(tmp_path):
    memory = tiny_memory()
    real_forward = memory.forward
    calls = {"n": 0}

    def exploding_forward(patterns, queries, known_mask=None):
        calls["n"] += 1
        out = real_forward(patterns, queries, known_mask)
        return MetaOutput(out.loss * math.nan, out.errors, out.read, out.state) if calls["n"] in (4, 5) else out

    memory.forward = exploding_forward
    cfg = config(steps=8, checkpoint_every=2, rollback_after=2, lr_schedule="cosine", min_lr_ratio=0.1)
    trainer = MetaTrainer(memory, sampler, cfg, run_dir=tmp_path)
    used = []
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: used.append((trainer.step, opt.param_groups[0]["lr"]))
    )
    trainer.train()

    def cosine(s):  # hand-written reference of the schedule
        return 3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 8)))

    # steps 3 and 4 are skipped (no optimizer step); the rollback after step 4 halves every later rate
    assert [s for s, _ in used] == [0, 1, 2, 5, 6, 7]
    assert [lr for _, lr in used] == pytest.approx([cosine(s) * (0.5 if s >= 5 else 1.0) for s, _ in used], rel=1e-12)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")  # loads with weights_only=True
    assert saved["scheduler"]["last_epoch"] == 8 and saved["rollbacks"] == 1
    resumed = MetaTrainer(tiny_memory(), sampler, dataclasses_replace(cfg, steps=10), run_dir=tmp_path)
    resumed.load_checkpoint()
    assert resumed.scheduler.last_epoch == 8
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(
        0.5 * 3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.8)))
    )


def test_checkpoints_without_scheduler_state_still_resume_on_schedule(tmp_path):
    cfg = config(steps=6, lr_schedule="cosine", min_lr_ratio=0.1)
    trainer = MetaTrainer(
        tiny_memory(), sampler, config(steps=3, lr_schedule="cosine", min_lr_ratio=0.1), run_dir=tmp_path
    )
    trainer.train()
    old = load_checkpoint(tmp_path / "checkpoint.pt")
    del old["scheduler"]  # the layout before the scheduler: each group carried its base rate as "base_lr"
    for group in old["optimizer"]["param_groups"]:
        group["base_lr"] = 3e-3
    torch.save(old, tmp_path / "checkpoint.pt")
    resumed = MetaTrainer(tiny_memory(), sampler, cfg, run_dir=tmp_path)
    resumed.load_checkpoint()
    assert resumed.step == 3 and resumed.scheduler.base_lrs == pytest.approx([3e-3, 3e-3])
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(
        3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    )


def test_status_lines_without_a_progress_bar(capsys):
    MetaTrainer(tiny_memory(), sampler, config(steps=4, log_every=2, status_every_s=1e-9)).train()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 2/4", "step 4/4"]
    assert all(
        re.search(r"loss \S+, error \S+, grad norm \S+, \S+ episodes/s, \S+ CPU-min, 0 skipped", ln) for ln in lines
    )
    MetaTrainer(tiny_memory(), sampler, config(steps=4, log_every=2)).train()  # default: one line a minute at most
    assert "step 2/4" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="status_every_s"):
        config(status_every_s=-1)


def test_progress_bar_on_a_terminal_status_lines_elsewhere(capsys, monkeypatch):
    MetaTrainer(tiny_memory(), sampler, config(steps=4, log_every=2, status_every_s=1e-9, progress=True)).train()
    captured = capsys.readouterr()  # stderr is no terminal under pytest: lines, as without a bar
    assert "meta-train" not in captured.err and "\r" not in captured.err
    assert [ln.split(":")[0] for ln in captured.out.splitlines() if ln.startswith("step ")] == ["step 2/4", "step 4/4"]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    MetaTrainer(tiny_memory(), sampler, config(steps=4, log_every=2, status_every_s=1e-9, progress=True)).train()
    captured = capsys.readouterr()
    assert "meta-train" in captured.err and "step 2/4" not in captured.out  # the bar, and no status lines beside it


def exploding(memory: EBMMemory, bad_calls) -> None:
    """Make ``memory``'s forward return a NaN loss on the calls (1-based) for which ``bad_calls(n)`` holds."""
    real_forward, calls = memory.forward, {"n": 0}

    def forward(patterns, queries, known_mask=None):
        calls["n"] += 1
        out = real_forward(patterns, queries, known_mask)
        return MetaOutput(out.loss * math.nan, out.errors, out.read, out.state) if bad_calls(calls["n"]) else out

    memory.forward = forward


def test_rollbacks_do_not_reset_the_divergence_count():
    memory = tiny_memory()
    exploding(memory, lambda n: n > 2)  # healthy for two steps, then every step explodes
    trainer = MetaTrainer(memory, sampler, config(steps=50, checkpoint_every=1, rollback_after=2,
                                                  max_consecutive_skips=7, max_rollbacks=10))  # fmt: skip
    with pytest.raises(TrainingDiverged, match="7 consecutive steps .* 3 rollback"):
        trainer.train()
    assert trainer.step == 2 + 6 and trainer.rollbacks == 3


def test_too_many_rollbacks_stop_training():
    memory = tiny_memory()
    exploding(memory, lambda n: n % 3 != 0)  # two exploding steps, one good one, again and again
    trainer = MetaTrainer(memory, sampler, config(steps=50, checkpoint_every=1, rollback_after=2,
                                                  max_consecutive_skips=5, max_rollbacks=2))  # fmt: skip
    with pytest.raises(TrainingDiverged, match="after 2 rollbacks"):
        trainer.train()
    assert trainer.rollbacks == 2


def test_no_checkpoint_from_skipping_or_non_finite_weights(tmp_path):
    memory = tiny_memory()
    exploding(memory, lambda n: n > 4)  # steps 5 and 6 skipped: the final save must not happen
    trainer = MetaTrainer(memory, sampler, config(steps=6, checkpoint_every=2), run_dir=tmp_path)
    trainer.train()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
    with torch.no_grad():
        memory.alpha_raw.fill_(math.nan)
    trainer.consecutive_skips = 0
    with pytest.raises(ValueError, match="NaN or inf"):
        trainer.save_checkpoint()
    with pytest.raises(ValueError, match="NaN or inf"):
        save_memory(memory, tmp_path / "memory.pt")
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4 and not (tmp_path / "memory.pt").exists()


def test_stale_temporary_checkpoint_files_are_removed_on_start(tmp_path):
    stale = [tmp_path / ".checkpoint.pt.abc123.tmp", tmp_path / ".best.pt.x.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    keep = tmp_path / "notes.tmp"
    keep.write_text("not ours")
    MetaTrainer(tiny_memory(), sampler, config(steps=1), run_dir=tmp_path).train()
    assert not any(p.exists() for p in stale) and keep.exists()


@pytest.mark.parametrize("field", ["lr", "schedule_lr", "grad_clip", "skip_grad_norm", "weight_decay"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_config_rejects_non_finite_or_negative_rates(field, value):
    with pytest.raises(ValueError, match=field):
        config(**{field: value})


def test_specs_written_before_prior_anchor_existed_load_as_initial():
    from ebmm_rl.checkpoint import build_memory, memory_spec

    spec = memory_spec(tiny_memory())
    del spec["ebmm_config"]["prior_anchor"]
    assert build_memory(spec).config.prior_anchor == "initial"


def test_skips_that_come_and_go_stop_at_the_skipped_fraction():
    memory = tiny_memory()
    exploding(memory, lambda n: n % 2 == 0)  # every other step explodes: no run of skips, no rollback
    cfg = config(steps=20, checkpoint_every=1, rollback_after=2, max_consecutive_skips=5, max_skipped_fraction=0.25)
    trainer = MetaTrainer(memory, sampler, cfg)
    # 0.25 of 20 steps is 5: the 6th skip (call 12, step 11) is one too many; the run stops there
    with pytest.raises(TrainingDiverged, match=r"6 of 20 steps were skipped, more than max_skipped_fraction \(0.25\)"):
        trainer.train()
    assert (trainer.skipped_total, trainer.step, trainer.rollbacks) == (6, 11, 0)
    memory = tiny_memory()
    exploding(memory, lambda n: n % 2 == 0)
    trainer = MetaTrainer(memory, sampler, dataclasses_replace(cfg, max_skipped_fraction=0.5))
    trainer.train()  # 10 of 20 skipped: not more than half
    assert trainer.skipped_total == 10 and trainer.step == 20


def test_a_run_stopped_by_its_time_limit_is_held_to_the_steps_it_took(monkeypatch):
    import ebmm_rl.training as training

    clock = iter(range(100))  # one CPU second per call: the start, then one check per step
    monkeypatch.setattr(
        training, "time", SimpleNamespace(process_time=lambda: next(clock), perf_counter=time.perf_counter)
    )
    memory = tiny_memory()
    exploding(memory, lambda n: n >= 2)  # steps 1 and 2 (of the 3 the limit allows) explode
    trainer = MetaTrainer(memory, sampler, config(steps=10, time_limit_s=4, max_skipped_fraction=0.5))
    with pytest.raises(TrainingDiverged, match="2 of 3 steps were skipped.*at step 3"):
        trainer.train()  # 2 of 10 would pass; 2 of the 3 steps taken do not
    assert trainer.step == 3


def test_a_finished_run_still_returns_its_evaluation(tmp_path):
    calls = []

    def evaluate(memory):
        calls.append(1)
        return {"score": float(len(calls))}

    MetaTrainer(tiny_memory(), sampler, config(steps=4, eval_every=2), run_dir=tmp_path, evaluate=evaluate).train()
    assert len(calls) == 2  # steps 2 and 4, none after the loop
    resumed = MetaTrainer(tiny_memory(), sampler, config(steps=4, eval_every=2), run_dir=tmp_path, evaluate=evaluate)
    assert resumed.train(resume=True) == {"score": 3.0} and resumed.step == 4


def test_skipped_fraction_outside_0_1_is_refused():
    for value in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="max_skipped_fraction"):
            config(max_skipped_fraction=value)


@pytest.mark.parametrize("chunk_size", [0, 2], ids=["one write", "chunked"])
def test_a_diverged_write_inside_forward_is_a_nan_loss_and_refused_outside(chunk_size):
    memory = tiny_memory()
    memory = EBMMemory(memory.energy, dataclasses_replace(memory.config, chunk_size=chunk_size))
    with torch.no_grad():
        dict(memory.energy.named_parameters())["memory.weight"].fill_(math.inf)  # θ̄: every write starts from inf
    patterns, queries, known = sampler(torch.Generator().manual_seed(0))
    out = memory(patterns, queries, known)  # the states between its writes and its read are its own
    assert not math.isfinite(out.loss.item())
    with pytest.raises(NonFiniteState, match="memory.weight"):
        memory.read(queries, out.state, known)  # a state handed in from outside is checked


def test_a_forward_whose_read_refuses_its_state_is_a_skipped_step():
    calls = {"n": 0}

    def forward(memory, batch):
        patterns, queries, known = batch
        calls["n"] += 1
        state = memory.write(patterns)
        if calls["n"] == 2:  # this write "diverged"
            state = MemoryState({n: w * math.nan for n, w in state.fast_weights.items()}, state.num_written)
        result = memory.read(queries, state, known)
        loss, errors = memory.meta_loss(patterns, result)
        return MetaOutput(loss, errors, result, state)

    trainer = MetaTrainer(tiny_memory(), sampler, config(steps=4), forward=forward)
    trainer.train()
    assert (trainer.skipped_total, trainer.step) == (1, 4)

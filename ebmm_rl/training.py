"""Meta-training of an :class:`EBMMemory` (paper eq. 5) or a baseline memory: a trainer with guards and checkpoints.

Any ``nn.Module`` whose ``forward(patterns, queries, known_mask)`` returns a :class:`~ebmm_rl.memory.MetaOutput`
(``loss``, ``errors`` per read step) and that :mod:`ebmm_rl.checkpoint` can describe can be trained; a
``schedule_parameters()`` method (EBMM's step sizes) is optional, and EBMM's write/read schedules are logged
to TensorBoard only for EBMM.

The trainer samples a batch ``(patterns, queries, known_mask)`` from a user sampler driven by its own
``torch.Generator`` (so a resumed run draws exactly the batches an uninterrupted one would), writes and reads
it, and takes an AdamW step on the step-wise reconstruction loss.

Divergence guards (docs/design.md: the binary model diverged without them): a step whose loss or gradient norm is
non-finite, or whose gradient norm exceeds ``skip_grad_norm``, is skipped and counted (TensorBoard
``meta/skipped_steps``); after ``max_consecutive_skips`` skips in a row (rollbacks in between do not reset the
count), when a rollback would exceed ``max_rollbacks``, or once more than ``max_skipped_fraction`` of the run's
steps were skipped (the run can no longer end below it; a run stopped early by its time limit is held to the
fraction of the steps it took), training stops with :class:`TrainingDiverged`. Skips that come and go never reach
the first rule, since every applied step resets it; the fraction catches them. The
write and read step sizes are bounded inside :class:`EBMMemory`. No checkpoint is written from non-finite
weights or while steps are being skipped (the final one included), and temporary files that a killed write left
behind in the run folder are removed when training starts.

A forward whose read refuses the state it has just written (:class:`~ebmm_rl.memory.NonFiniteState`: the write
produced NaN or inf fast weights) is skipped in the same way.

Skipping alone does not rescue a run whose weights have reached a region where every batch explodes (seen on
the binary model at N = 64 around step 2000: gradient norms jumped from about 1e2 to 1e11-1e15 and stayed
there). With ``rollback_after > 0`` the trainer then restores the weights and optimiser state of its last
checkpoint-time snapshot taken while training was healthy and multiplies every learning rate by
``rollback_lr_factor`` (TensorBoard ``meta/rollbacks`` and ``meta/lr_*``), instead of skipping on.

Learning-rate schedule: ``"constant"`` (the paper) or ``"cosine"`` (decay from the base rate to
``min_lr_ratio`` times it over ``steps``), run by a ``torch.optim.lr_scheduler.LambdaLR`` whose factor is
:meth:`MetaTrainer.lr_factor` (times ``rollback_lr_factor`` per rollback). ``LambdaLR`` rather than
``CosineAnnealingLR``: the latter takes one absolute ``eta_min`` for every parameter group and updates the rate
recursively, while here each group (weights, step sizes) decays to its own ``min_lr_ratio`` of its base rate, in
closed form. The scheduler's state (base rates, step) goes into the checkpoint, so a resumed run follows the
schedule exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ebmm_rl.checkpoint import load_checkpoint, memory_spec, non_finite_tensors, remove_stale_temp_files, save_atomic
from ebmm_rl.memory import WRITE_TERMS, EBMMemory, NonFiniteState
from ebmm_rl.precision import Precision, autocast_context, check_precision, set_matmul_precision

Batch = tuple[Tensor, Tensor, "Tensor | None"]
"""``(patterns [B, N, D...], queries [B, N, D...], known_mask [B, N, D...] or None)``; with a custom ``forward``,
any tuple of tensors whose first entry has the episodes along dimension 0."""
Sampler = Callable[[torch.Generator], Batch]
"""Draws one meta-training batch using only the given generator (on the trainer's device)."""
ReadMetrics = Callable[[tuple[Tensor, ...], Any], dict[str, list[float]]]
"""``read_metrics(batch, out) -> {name: [K] values}``: task-specific figures of each read iterate (e.g. error
bits), logged as ``read/{name}_k{k}`` and shown (last iterate) in the progress bar."""

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
"""Checkpoint of the best evaluation so far (lowest first value of the ``evaluate`` callback)."""


class TrainingDiverged(RuntimeError):
    """Raised when too many consecutive meta-steps had non-finite or huge gradients."""


@dataclass(frozen=True)
class TrainConfig:
    """Meta-training settings (defaults: the paper's App. A).

    Attributes:
        steps: total meta-steps (a resumed run continues up to this number).
        lr: AdamW learning rate of the network weights (paper: 5e-5).
        schedule_lr: learning rate of step sizes, momenta and loss weights; ``None`` means ``lr``.
        weight_decay: AdamW weight decay (paper: 1e-6), applied to the network weights only.
        grad_clip: global gradient-norm clipping (paper: 0.05).
        skip_grad_norm: skip a step whose gradient norm (before clipping) exceeds this.
        max_consecutive_skips: stop with :class:`TrainingDiverged` after this many skipped steps in a row.
        log_every: steps between TensorBoard scalars.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        eval_every: steps between calls of the ``evaluate`` callback (0: never during training).
        lr_schedule: ``"constant"`` or ``"cosine"`` (to ``min_lr_ratio`` of the base rate at ``steps``).
        min_lr_ratio: final learning rate of the cosine schedule, as a fraction of the base rate.
        rollback_after: after this many skipped steps in a row, restore the last healthy snapshot (taken every
            ``checkpoint_every`` steps) and scale the learning rates by ``rollback_lr_factor``; 0 disables it.
        rollback_lr_factor: learning-rate multiplier applied at each rollback.
        max_rollbacks: stop with :class:`TrainingDiverged` instead of rolling back more than this many times.
        max_skipped_fraction: stop with :class:`TrainingDiverged` once more than this fraction of ``steps`` was
            skipped (1: never).
        time_limit_s: stop after this many seconds of this process's CPU time in :meth:`MetaTrainer.train`
            (one core's time when torch uses one thread), then checkpoint and evaluate as at the end; 0: no
            limit. A compute budget that does not depend on how busy a shared machine is.
        seed: seed of the batch generator and of the weights' initialisation.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        precision: ``"fp32"``, ``"tf32"`` (CUDA matmuls/convolutions on TF32 tensor cores) or ``"bf16"``
            (``torch.autocast`` around the forward of each step; fast weights, update rules, step sizes and the
            loss stay float32): see :mod:`ebmm_rl.precision`.
        progress: show a progress bar (on stderr, when it is a terminal; otherwise status lines).
        status_every_s: without a progress bar (``progress=False``, or stderr not a terminal), print a status line
            (step, loss, error, gradient norm, episodes/s, CPU minutes) at the first logging step after every this
            many seconds of wall time; 0: never.
    """

    steps: int = 10_000
    lr: float = 5e-5
    schedule_lr: float | None = None
    weight_decay: float = 1e-6
    grad_clip: float = 0.05
    skip_grad_norm: float = 1e4
    max_consecutive_skips: int = 100
    log_every: int = 10
    checkpoint_every: int = 200
    eval_every: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.05
    rollback_after: int = 0
    rollback_lr_factor: float = 0.5
    max_rollbacks: int = 5
    max_skipped_fraction: float = 0.1
    time_limit_s: float = 0.0
    seed: int = 0
    device: str = "cpu"
    precision: Precision = "fp32"
    progress: bool = True
    status_every_s: float = 60.0

    @classmethod
    def from_args(cls, args: Any, **overrides: Any) -> TrainConfig:
        """The config of a script's ``Args``: every field of the same name, then ``overrides``.

        ``args.time_limit_min`` (minutes), where the script has it, becomes ``time_limit_s``.

        Raises:
            TypeError: an override that is no field of :class:`TrainConfig`.
            ValueError: a value :class:`TrainConfig` rejects.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"TrainConfig has no fields {unknown}")
        values = {name: getattr(args, name) for name in names if hasattr(args, name)}
        if hasattr(args, "time_limit_min"):
            values["time_limit_s"] = 60.0 * args.time_limit_min
        return cls(**{**values, **overrides})

    def __post_init__(self) -> None:
        for name in ("lr", "schedule_lr", "weight_decay", "grad_clip", "skip_grad_norm", "min_lr_ratio",
                     "rollback_lr_factor", "max_skipped_fraction", "time_limit_s"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise ValueError(f"TrainConfig.{name} must be a finite number, got {value!r}")
        if self.schedule_lr is not None and self.schedule_lr <= 0:
            raise ValueError(f"TrainConfig.schedule_lr must be > 0 (or None: same as lr), got {self.schedule_lr}")
        if self.weight_decay < 0 or self.skip_grad_norm <= 0:
            raise ValueError(
                f"TrainConfig: need weight_decay >= 0 and skip_grad_norm > 0, got {self.weight_decay} and "
                f"{self.skip_grad_norm}"
            )
        if self.max_consecutive_skips < 1 or self.max_rollbacks < 0 or self.eval_every < 0:
            raise ValueError(
                "TrainConfig: need max_consecutive_skips >= 1, max_rollbacks >= 0 and eval_every >= 0, got "
                f"{self.max_consecutive_skips}, {self.max_rollbacks} and {self.eval_every}"
            )
        if self.steps < 0 or self.lr <= 0 or self.grad_clip <= 0 or self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError(
                "TrainConfig: need steps >= 0, lr > 0, grad_clip > 0, log_every >= 1, checkpoint_every >= 1"
            )
        check_precision(self.precision)
        if self.status_every_s < 0:
            raise ValueError(f"TrainConfig.status_every_s must be >= 0 (0: never), got {self.status_every_s}")
        if self.time_limit_s < 0:
            raise ValueError(f"TrainConfig.time_limit_s must be >= 0 (0: no limit), got {self.time_limit_s}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"TrainConfig.lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if not 0.0 <= self.max_skipped_fraction <= 1.0:
            raise ValueError(
                f"TrainConfig.max_skipped_fraction must lie in [0, 1] (1: never stop), got {self.max_skipped_fraction}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0 or not 0.0 < self.rollback_lr_factor <= 1.0:
            raise ValueError("TrainConfig: need 0 <= min_lr_ratio <= 1 and 0 < rollback_lr_factor <= 1")
        if self.rollback_after < 0 or (self.rollback_after and self.rollback_after >= self.max_consecutive_skips):
            raise ValueError(
                "TrainConfig.rollback_after must be 0 (off) or smaller than max_consecutive_skips "
                f"({self.max_consecutive_skips}), got {self.rollback_after}"
            )


@dataclass
class StepStats:
    """What one meta-step did."""

    step: int
    loss: float
    errors: list[float]
    grad_norm: float
    skipped: bool
    episodes: int
    metrics: dict[str, list[float]] = dataclasses.field(default_factory=dict)


class MetaTrainer:
    """Meta-trains an :class:`EBMMemory` (or a baseline memory module) on batches from ``sample_batch``.

    Args:
        memory: the memory to train (moved to ``config.device``): an :class:`EBMMemory` or any module whose
            ``forward(patterns, queries, known_mask)`` returns a ``MetaOutput``.
        sample_batch: draws a batch from a ``torch.Generator``.
        config: training settings.
        run_dir: folder for TensorBoard events and ``checkpoint.pt``; ``None`` logs and saves nothing.
        hparams: extra values logged as a text table and stored in checkpoints (e.g. the script's arguments).
        evaluate: optional ``evaluate(memory) -> {name: value}``, run every ``eval_every`` steps and at the end.
            Its first value is the score (lower is better): the best evaluation is also saved as ``best.pt``.
        forward: optional ``forward(memory, batch) -> MetaOutput`` for tasks other than "write the patterns, read
            their distorted copies" (e.g. :func:`ebmm_rl.rl.env_meta.recall_forward`); default
            ``memory(*batch)``.
        read_metrics: optional ``read_metrics(batch, out) -> {name: [K] values}`` per read iterate, computed
            without gradients on every logged step (e.g. :func:`ebmm_rl.binary_training.binary_read_metrics`).
    """

    def __init__(
        self,
        memory: nn.Module,
        sample_batch: Sampler,
        config: TrainConfig = TrainConfig(),
        run_dir: str | Path | None = None,
        hparams: dict[str, Any] | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        forward: Callable[[nn.Module, tuple[Tensor, ...]], Any] | None = None,
        read_metrics: ReadMetrics | None = None,
    ) -> None:
        self.config = config
        self.forward = forward
        self.read_metrics = read_metrics
        self.device = torch.device(config.device)
        set_matmul_precision(config.precision, self.device)
        self.memory = memory.to(self.device)
        self.sample_batch = sample_batch
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.hparams = dict(hparams or {})
        self.evaluate = evaluate
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        schedules = list(memory.schedule_parameters()) if hasattr(memory, "schedule_parameters") else []
        schedule_ids = {id(p) for p in schedules}
        weights = [p for p in memory.parameters() if id(p) not in schedule_ids and p.requires_grad]
        if not weights and not schedules:
            raise ValueError(
                f"{type(memory).__name__} has no trainable parameters: there is nothing to meta-train (use it as is)"
            )
        groups = [{"params": weights, "lr": config.lr, "weight_decay": config.weight_decay, "name": "weights"}]
        if schedules:  # EBMM's step sizes, momenta and loss weights
            lr = config.schedule_lr or config.lr
            groups.append({"params": schedules, "lr": lr, "weight_decay": 0.0, "name": "schedules"})
        self.optimizer = torch.optim.AdamW(groups)
        self.step = 0
        self.skipped_total = 0
        self.consecutive_skips = 0  # since the last applied step; a rollback does not reset it
        self._skips_since_rollback = 0
        self.best_score = math.inf
        self.rollbacks = 0
        # lr of group g at step s = scheduler.base_lrs[g] * lr_factor(s); stepped once per meta-step, skipped or not
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: self.lr_factor(step))
        self._healthy: dict[str, Any] | None = None  # in-memory snapshot for rollbacks
        self._writer = None

    # -------------------------------------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        """``run_dir/checkpoint.pt``, or ``None`` without a run folder."""
        return None if self.run_dir is None else self.run_dir / CHECKPOINT_NAME

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly where it stopped."""
        return {
            "memory_spec": memory_spec(self.memory),
            "model": self.memory.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "skipped_total": self.skipped_total,
            "best_score": self.best_score,
            "rollbacks": self.rollbacks,
            "generator": self.generator.get_state(),
            "train_config": dataclasses.asdict(self.config),
            "hparams": _plain(self.hparams),
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint atomically (default: ``run_dir/checkpoint.pt``).

        Raises:
            ValueError: if any weight is NaN or inf (such a checkpoint would replace a good one).
        """
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: give run_dir to the trainer or a path here")
        bad = non_finite_tensors(self.memory.state_dict())
        if bad:
            raise ValueError(
                f"not writing {path}: {len(bad)} weight tensor(s) hold NaN or inf ({', '.join(bad[:3])}); the last "
                f"healthy checkpoint is kept"
            )
        save_atomic(self.state_dict(), path)
        return path

    @property
    def healthy(self) -> bool:
        """No skipped step since the last applied one, and every weight finite: safe to checkpoint."""
        return self.consecutive_skips == 0 and not non_finite_tensors(self.memory.state_dict())

    def _save_if_healthy(self, write: Callable[[str], None]) -> bool:
        """Write ``checkpoint.pt`` if :attr:`healthy`; otherwise say why not (via ``write``) and keep the old one."""
        if self.healthy:
            self.save_checkpoint()
            return True
        write(
            f"step {self.step}: checkpoint not written ({self.consecutive_skips} skipped in a row, or non-finite "
            f"weights); keeping {self.checkpoint_path if self.checkpoint_path.exists() else 'none'}"
        )
        return False

    def load_checkpoint(self, path: str | Path | None = None) -> dict[str, Any]:
        """Restore model, optimiser, step counter and batch generator from a checkpoint; returns its contents."""
        path = Path(path) if path is not None else self.checkpoint_path
        ckpt = load_checkpoint(path, map_location=self.device)
        self.memory.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.skipped_total = int(ckpt["skipped_total"])
        self.best_score = float(ckpt.get("best_score", math.inf))
        self.rollbacks = int(ckpt.get("rollbacks", 0))
        if "scheduler" in ckpt:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        else:  # checkpoints from before the scheduler kept each group's rollback-scaled base rate as "base_lr"
            scale = self.config.rollback_lr_factor**self.rollbacks
            self.scheduler.base_lrs = [g.get("base_lr", g["lr"]) / scale for g in self.optimizer.param_groups]
            self.scheduler.last_epoch = self.step
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base * self.lr_factor()  # this config's schedule (a resume may change ``steps``)
        self.generator.set_state(ckpt["generator"].cpu())  # generator states are CPU byte tensors
        return ckpt

    # ---------------------------------------------------------------------------------------------- training
    def train_step(self) -> StepStats:
        """One meta-step: sample, write, read, backpropagate, guard, update."""
        self.memory.train()
        batch = self.sample_batch(self.generator)
        try:
            with autocast_context(self.config.precision, self.device):  # bf16: only the energy's products
                out = self.memory(*batch) if self.forward is None else self.forward(self.memory, batch)
        except NonFiniteState:  # a forward that reads the state it wrote, checked: the write diverged
            self.optimizer.zero_grad(set_to_none=True)
            self._apply_or_skip(True, math.nan, math.nan)
            return StepStats(self.step, math.nan, [math.nan], math.nan, True, batch[0].shape[0])
        self.optimizer.zero_grad(set_to_none=True)
        loss = out.loss.float()
        grad_norm = math.nan
        skipped = not torch.isfinite(loss)
        if not skipped:
            loss.backward()
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip))
            skipped = not math.isfinite(grad_norm) or grad_norm > self.config.skip_grad_norm
        metrics = {}
        logged = (self.step + 1) % self.config.log_every == 0 or self.step + 1 == self.config.steps
        if self.read_metrics is not None and logged:
            with torch.no_grad():
                metrics = self.read_metrics(batch, out)
        self._apply_or_skip(skipped, float(loss.detach()), grad_norm)
        episodes = batch[0].shape[0]
        errors = out.errors.tolist()
        return StepStats(self.step, float(loss.detach()), errors, grad_norm, skipped, episodes, metrics)

    def lr_factor(self, step: int | None = None) -> float:
        """Multiplier of the base learning rates at ``step`` (default: the current step).

        The schedule's factor (1, or the cosine from 1 to ``min_lr_ratio`` over ``steps``) times
        ``rollback_lr_factor`` to the power of the rollbacks so far.
        """
        cfg, step = self.config, self.step if step is None else step
        rollback = cfg.rollback_lr_factor**self.rollbacks
        if cfg.lr_schedule == "constant" or cfg.steps == 0:
            return rollback
        progress = min(step / cfg.steps, 1.0)
        return rollback * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def _advance_schedule(self) -> None:
        """Step the scheduler to ``self.step``: sets every group's rate to its base rate times :meth:`lr_factor`."""
        with warnings.catch_warnings():  # a skipped first step calls scheduler.step() before any optimizer.step()
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.scheduler.step()

    def _snapshot_healthy(self) -> None:
        """Remember the current weights and optimiser state as the target of a later rollback."""
        if self.config.rollback_after and self.consecutive_skips == 0:
            self._healthy = copy.deepcopy({"model": self.memory.state_dict(), "optimizer": self.optimizer.state_dict()})

    def _rollback(self) -> None:
        """Restore the last healthy snapshot and scale every learning rate by ``rollback_lr_factor``."""
        self.memory.load_state_dict(self._healthy["model"])
        self.optimizer.load_state_dict(self._healthy["optimizer"])
        self.rollbacks += 1  # lr_factor now scales every rate by rollback_lr_factor once more
        self._skips_since_rollback = 0  # consecutive_skips goes on counting: TrainingDiverged can still fire
        scale = self.config.rollback_lr_factor**self.rollbacks
        tqdm.write(
            f"step {self.step}: rolled back to the last healthy snapshot (rollback {self.rollbacks}); base learning "
            f"rates now "
            + ", ".join(
                f"{g['name']} {base * scale:.3g}"
                for g, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True)
            )
        )

    def _apply_or_skip(self, skipped: bool, loss: float, grad_norm: float) -> None:
        """Take the optimiser step, or count a skipped one (roll back or stop after too many); advance ``step``."""
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_total += 1
            self.consecutive_skips += 1
            self._skips_since_rollback += 1
            advice = (
                f"(last: loss {loss:.4g}, grad norm {grad_norm:.4g}) at step {self.step}. Lower the learning rates "
                f"(lr, schedule_lr) or the step-size bounds (EBMMConfig.read_step_max, max_prior_step), or resume "
                f"from an earlier checkpoint."
            )
            if self.skipped_total > self.config.max_skipped_fraction * self.config.steps:
                raise TrainingDiverged(self._fraction_message(self.config.steps) + f" {advice}")
            if self.consecutive_skips >= self.config.max_consecutive_skips:
                raise TrainingDiverged(
                    f"meta-training diverged: {self.consecutive_skips} consecutive steps had a non-finite loss or "
                    f"a gradient norm above {self.config.skip_grad_norm:g}, {self.rollbacks} rollback(s) "
                    f"included {advice}"
                )
            if (
                self.config.rollback_after
                and self._skips_since_rollback >= self.config.rollback_after
                and self._healthy is not None
            ):
                if self.rollbacks >= self.config.max_rollbacks:
                    raise TrainingDiverged(
                        f"meta-training diverged: it kept exploding after {self.rollbacks} rollbacks "
                        f"(max_rollbacks) {advice}"
                    )
                self._rollback()
        else:
            self.optimizer.step()
            self.consecutive_skips = 0
            self._skips_since_rollback = 0
        self.step += 1
        self._advance_schedule()

    def _fraction_message(self, steps: int) -> str:
        return (
            f"meta-training diverged: {self.skipped_total} of {steps} steps were skipped, more than "
            f"max_skipped_fraction ({self.config.max_skipped_fraction:g}) of them, with {self.rollbacks} rollback(s)"
        )

    def summary(self) -> str:
        """``"{skipped} of {step} steps skipped, {rollbacks} rollback(s)"``: the guards' count, for a final line."""
        return f"{self.skipped_total} of {self.step} steps skipped, {self.rollbacks} rollback(s)"

    def train(self, resume: bool = False) -> dict[str, float]:
        """Train up to ``config.steps`` meta-steps; with ``resume``, continue from ``run_dir/checkpoint.pt``.

        Returns:
            The last evaluation, run at the last step (also when there was nothing left to train), or the last
            step's loss when there is no ``evaluate`` callback.

        Raises:
            TrainingDiverged: a divergence guard fired (module docstring); no checkpoint is written then.
        """
        if resume:
            if self.checkpoint_path is None or not self.checkpoint_path.exists():
                raise FileNotFoundError(f"cannot resume: no checkpoint at {self.checkpoint_path}")
            self.load_checkpoint()
        if self.run_dir is not None:
            remove_stale_temp_files(self.run_dir)
        self._snapshot_healthy()
        writer = self._tensorboard()
        cfg = self.config
        show_bar = cfg.progress and sys.stderr.isatty()  # a log file or a pipe gets status lines instead
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not show_bar, desc="meta-train", unit="step")
        last: dict[str, float] = {}
        evaluated_at: int | None = None
        episodes, window_start = 0, time.perf_counter()
        cpu_start = time.process_time()
        last_status = time.perf_counter()
        try:
            while self.step < cfg.steps:
                if cfg.time_limit_s and time.process_time() - cpu_start >= cfg.time_limit_s:
                    bar.write(f"step {self.step}: stopped at the time limit ({cfg.time_limit_s:g} s of CPU time)")
                    break
                stats = self.train_step()
                episodes += stats.episodes
                bar.update(1)
                if stats.skipped:
                    bar.write(f"step {stats.step}: skipped (loss {stats.loss:.4g}, grad norm {stats.grad_norm:.4g})")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rate = episodes / max(time.perf_counter() - window_start, 1e-9)
                    episodes, window_start = 0, time.perf_counter()
                    shown = {name: f"{values[-1]:.2f}" for name, values in stats.metrics.items()}
                    bar.set_postfix(
                        loss=f"{stats.loss:.3f}", sq_err=f"{stats.errors[-1]:.3f}", **shown,
                        gnorm=f"{stats.grad_norm:.2g}"
                    )  # fmt: skip
                    if writer is not None:
                        self._log_scalars(writer, stats, rate)
                    last = {"loss": stats.loss}
                    if not show_bar and cfg.status_every_s and time.perf_counter() - last_status >= cfg.status_every_s:
                        last_status = time.perf_counter()
                        print(self._status_line(stats, rate, time.process_time() - cpu_start), flush=True)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.evaluate is not None:
                    last, evaluated_at = self._run_eval(writer), self.step
                if self.step % cfg.checkpoint_every == 0:
                    self._snapshot_healthy()
                if self.run_dir is not None and self.step % cfg.checkpoint_every == 0:
                    # weights that just produced exploding gradients must not replace a good checkpoint
                    self._save_if_healthy(bar.write)
        finally:
            bar.close()
        if self.skipped_total > cfg.max_skipped_fraction * self.step:  # stopped early: held to the steps it took
            raise TrainingDiverged(
                f"{self._fraction_message(self.step)}, at step {self.step}. Lower the learning rates (lr, schedule_lr) "
                f"or resume from an earlier checkpoint."
            )
        if self.run_dir is not None:
            self._save_if_healthy(tqdm.write)
        if self.evaluate is not None and evaluated_at != self.step:
            last = self._run_eval(writer)
        if writer is not None:
            writer.flush()
        return last

    # ------------------------------------------------------------------------------------------------ logging
    def _status_line(self, stats: StepStats, episodes_per_s: float, cpu_seconds: float) -> str:
        """One line on where training stands, for runs without a progress bar."""
        return (
            f"step {self.step}/{self.config.steps}: loss {stats.loss:.4g}, error {stats.errors[-1]:.4g}, grad norm "
            f"{stats.grad_norm:.3g}, {episodes_per_s:.1f} episodes/s, {cpu_seconds / 60:.1f} CPU-min, "
            f"{self.skipped_total} skipped"
        )

    def _tensorboard(self):
        if self.run_dir is None:
            return None
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed (a bare GPU machine): train and checkpoint without logs
                if not getattr(self, "_warned_no_tensorboard", False):
                    self._warned_no_tensorboard = True
                    warnings.warn(
                        "tensorboard is not installed: no TensorBoard logs (pip install tensorboard)", stacklevel=2
                    )
                return None
            self._writer = SummaryWriter(str(self.run_dir))
            rows = {**_plain(self.hparams), **dataclasses.asdict(self.config), "memory_size": self.memory.memory_size}
            table = "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in rows.items())
            self._writer.add_text("hyperparameters", table, self.step)
        return self._writer

    def _log_scalars(self, writer, stats: StepStats, episodes_per_s: float) -> None:
        s, m = stats.step, self.memory
        writer.add_scalar("meta/loss", stats.loss, s)
        writer.add_scalar("meta/grad_norm", stats.grad_norm, s)
        writer.add_scalar("meta/skipped_steps", self.skipped_total, s)
        writer.add_scalar("meta/rollbacks", self.rollbacks, s)
        for group in self.optimizer.param_groups:
            writer.add_scalar(f"meta/lr_{group['name']}", group["lr"], s)
        writer.add_scalar("charts/episodes_per_s", episodes_per_s, s)
        for k, err in enumerate(stats.errors, start=1):  # summed over a pattern's dims, mean over patterns
            writer.add_scalar(f"read/sq_error_k{k}", err, s)
        for name, values in stats.metrics.items():
            for k, value in enumerate(values, start=1):
                writer.add_scalar(f"read/{name}_k{k}", value, s)
        if not isinstance(m, EBMMemory):
            return
        with torch.no_grad():
            for k, (g, p) in enumerate(zip(m.read_step_sizes.tolist(), m.momenta.tolist(), strict=True), start=1):
                writer.add_scalar(f"read/gamma_k{k}", g, s)
                writer.add_scalar(f"read/psi_k{k}", p, s)
            writer.add_scalar("write/alpha", m.alpha.item(), s)
            writer.add_scalar("write/beta", m.beta.item(), s)
            lrs = m.write_lrs  # [T, L, 3]
            for t in range(lrs.shape[0]):
                for li, layer in enumerate(m.layer_names):
                    for ti, term in enumerate(WRITE_TERMS):
                        writer.add_scalar(f"write/lr_{layer}_{term}_t{t + 1}", lrs[t, li, ti].item(), s)

    def _run_eval(self, writer) -> dict[str, float]:
        self.memory.eval()
        results = self.evaluate(self.memory)
        self.memory.train()
        if writer is not None:
            for name, value in results.items():
                writer.add_scalar(f"eval/{name}", value, self.step)
        tqdm.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in results.items()))
        score = next(iter(results.values()), math.nan)
        if self.run_dir is not None and score < self.best_score:  # training can still diverge later: keep the best
            self.best_score = score
            self._save_best()
        return results

    def _save_best(self) -> None:
        """Write ``run_dir/best.pt`` (called only where evaluation runs)."""
        self.save_checkpoint(self.run_dir / BEST_NAME)


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """Keep what ``weights_only`` loading accepts: numbers, strings, bools, None, and lists/tuples of them."""
    out = {}
    for k, v in values.items():
        if isinstance(v, (int, float, str, bool, type(None))):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float, str, bool)) for x in v):
            out[k] = list(v)
        else:
            out[k] = str(v)
    return out

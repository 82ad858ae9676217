"""Data-parallel meta-training across processes (``torchrun``), with ``DistributedDataParallel``.

Each process (rank) draws its own meta-batches (its batch generator is seeded with :func:`rank_seed`), writes and
reads them, and ``DistributedDataParallel`` averages the meta-gradients across ranks during ``backward``; every
rank then takes the same optimiser step, so all ranks hold identical parameters. Rank 0 alone writes TensorBoard
events and checkpoints and runs the evaluation; a checkpoint stores the batch-generator state of every rank, so a
resumed run draws the batches an uninterrupted one would.

Launch a script that uses :func:`init_distributed` with ``torchrun --nproc-per-node <G> script.py ...``: one
process per GPU (``nccl``) or, for tests, several CPU processes (``gloo``). The effective batch is ``G`` times the
per-rank batch.

Facts this relies on (torch 2.13):

* ``DistributedDataParallel`` returns the module's output object verbatim unless ``find_unused_parameters`` or
  ``static_graph`` is set, so :class:`~ebmm_rl.memory.MetaOutput` (a dataclass) passes through.
* Some parameters never get a meta-gradient: the bias of the energy's output layer shifts ``E`` by a constant,
  which changes neither ``∇ₓE`` (reading) nor ``∇_θE`` (writing). DDP would wait for their gradients forever
  (it raises "Expected to have finished reduction in the prior iteration"). :func:`parameters_without_meta_gradient`
  finds them with one tiny write and read, and they are left out of DDP (their values never change, so the ranks
  stay identical), rather than paying ``find_unused_parameters``' graph traversal on every step.
* The ``torch.autograd.grad`` calls inside the write and read steps compute gradients with respect to the fast
  weights and the patterns only, never into ``.grad``, so they do not fire DDP's gradient hooks; the meta-loss's
  ``backward`` is the one that all-reduces.
* A rank that skipped ``backward`` would leave the others waiting in the all-reduce forever. So every rank always
  calls ``backward``, and steps are skipped after it, by one decision shared by all ranks (a non-finite loss on any
  rank gives non-finite averaged gradients on every rank).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ebmm_rl.checkpoint import non_finite_tensors, save_atomic
from ebmm_rl.memory import EBMMemory
from ebmm_rl.precision import autocast_context
from ebmm_rl.training import BEST_NAME, MetaTrainer, Sampler, StepStats, TrainConfig

__all__ = [
    "DistributedContext",
    "DistributedMetaTrainer",
    "broadcast_object",
    "cleanup_distributed",
    "init_distributed",
    "parameter_checksum",
    "parameters_without_meta_gradient",
    "rank_seed",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank (0 in a single-process run).
        local_rank: rank on this machine (selects the GPU).
        world_size: number of processes (1: not distributed).
        device: this rank's torch device (``cuda:<local_rank>`` for CUDA runs).
        backend: ``"nccl"``, ``"gloo"``, or ``None`` when not distributed.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this rank logs, checkpoints and evaluates (rank 0)."""
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistributedContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1); otherwise do nothing.

    Uses ``nccl`` for CUDA devices (each rank takes GPU ``LOCAL_RANK``) and ``gloo`` for the CPU.

    Args:
        device: the requested device: ``"cpu"``, ``"cuda"`` (or ``"cuda:<i>"``, whose index is replaced by the
            local rank when distributed).

    Returns:
        The :class:`DistributedContext`.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; start at most that "
                f"many processes per node (torchrun --nproc-per-node)"
            )
        torch.cuda.set_device(local_rank)
        device, backend = f"cuda:{local_rank}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistributedContext(rank, local_rank, world_size, device, backend)


def cleanup_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The batch-generator seed of ``rank``: ``seed + rank·2³²``.

    Rank 0 keeps ``seed`` (a one-process run draws a plain run's batches); runs with seeds below ``2³²`` never
    share a stream.
    """
    return seed + rank * 2**32


def broadcast_object(value: Any, context: DistributedContext) -> Any:
    """Rank 0's ``value`` on every rank (e.g. a run folder named after the time); identity when not distributed."""
    if not context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def parameter_checksum(module: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of all parameters' bytes, in order: equal iff the parameters are identical."""
    digest = hashlib.sha256()
    for name, p in module.named_parameters():
        digest.update(name.encode())
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def parameters_without_meta_gradient(memory: EBMMemory) -> list[str]:
    """Names of the parameters that a meta-step leaves without a gradient, found by one tiny write and read.

    One episode of one random pattern in ``memory.config.data_range``, read back from itself; the structure of the
    graph, not the values, decides which parameters it reaches. Gradients are cleared afterwards.

    Args:
        memory: the memory (on its training device).

    Returns:
        Qualified parameter names, e.g. ``["energy.recurrence.energy.bias"]``.
    """
    device = next(memory.parameters()).device
    lo, hi = memory.config.data_range
    pattern = lo + (hi - lo) * torch.rand(1, 1, *memory.data_shape, device=device)  # [1, 1, D...]
    saved = {n: p.grad for n, p in memory.named_parameters()}
    memory.zero_grad(set_to_none=True)
    memory(pattern, pattern).loss.backward()
    unused = [n for n, p in memory.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in memory.named_parameters():
        p.grad = saved[n]
    return unused


class DistributedMetaTrainer(MetaTrainer):
    """A :class:`~ebmm_rl.training.MetaTrainer` that trains one memory in data parallel across ranks.

    Construct it on every rank with the same arguments, except the sampler, which may differ, and ``evaluate``,
    which only rank 0 runs. ``config.seed`` is the run's seed; rank ``r`` draws batches from a generator seeded with
    :func:`rank_seed`. ``run_dir`` must be the same folder on every rank (rank 0 writes it, all ranks read it to
    resume). ``self.memory`` stays the plain :class:`~ebmm_rl.memory.EBMMemory` (checkpoints, logging, evaluation);
    ``self.ddp`` is its ``DistributedDataParallel`` wrapper, used for the training forward pass.

    Args:
        memory: the memory (identical on all ranks after construction: DDP broadcasts rank 0's parameters).
        sample_batch: this rank's batch sampler.
        config: training settings (``device`` is this rank's device).
        run_dir: the run folder, the same on all ranks.
        hparams: logged by rank 0 and stored in checkpoints.
        evaluate: the evaluation callback; run on rank 0 only.
        context: from :func:`init_distributed`; a non-distributed context falls back to plain training.
    """

    def __init__(
        self,
        memory: EBMMemory,
        sample_batch: Sampler,
        config: TrainConfig,
        run_dir: str | Path | None = None,
        hparams: dict[str, Any] | None = None,
        evaluate: Callable[[EBMMemory], dict[str, float]] | None = None,
        *,
        context: DistributedContext,
    ) -> None:
        self.context = context
        main = context.is_main
        if not main:
            config = dataclasses.replace(config, progress=False)
        super().__init__(memory, sample_batch, config, run_dir, hparams, evaluate if main else None)
        self.generator.manual_seed(rank_seed(config.seed, context.rank))
        if context.distributed:
            self.unused_parameters = parameters_without_meta_gradient(self.memory)
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.memory, self.unused_parameters)
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp: nn.Module = DistributedDataParallel(self.memory, device_ids=device_ids)
            # 1-channel images: conv weights [C, 1, 3, 3] get grads whose stride differs in the size-1 dimension
            # only, which changes nothing but makes DDP warn on every rank.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        else:
            self.ddp = self.memory

    # ------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The base checkpoint plus ``rank_generators``: every rank's batch-generator state (a collective call)."""
        state = super().state_dict()
        generators = [self.generator.get_state().cpu()]
        if self.context.distributed:
            generators = [None] * self.context.world_size
            dist.all_gather_object(generators, self.generator.get_state().cpu())
        state["rank_generators"] = generators
        return state

    def _save_best(self) -> None:
        """Rank 0 writes ``best.pt`` alone: evaluation may run on one rank only, so no collective call here."""
        if self.context.is_main and self.run_dir is not None:
            save_atomic(MetaTrainer.state_dict(self), self.run_dir / BEST_NAME)

    def save_checkpoint(self, path: str | Path | None = None) -> Path | None:
        """Write a checkpoint from rank 0; every rank must call this (it gathers the generator states).

        Returns:
            The path on rank 0, ``None`` on the other ranks.
        """
        bad = non_finite_tensors(self.memory.state_dict())  # the same weights on every rank: all raise or none
        if bad:
            raise ValueError(f"not writing a checkpoint: weights {', '.join(bad[:3])} hold NaN or inf")
        state = self.state_dict()  # collective: every rank takes part
        if not self.context.is_main:
            return None
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: give run_dir to the trainer or a path here")
        save_atomic(state, path)
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> dict[str, Any]:
        """Restore as the base trainer does, then this rank's own batch generator (every rank reads the file)."""
        ckpt = super().load_checkpoint(path)
        states = ckpt.get("rank_generators") or [ckpt["generator"]]
        if self.context.rank < len(states):
            self.generator.set_state(states[self.context.rank].cpu())  # generator states are CPU byte tensors
        else:
            warnings.warn(
                f"the checkpoint holds batch generators for {len(states)} rank(s), not for rank {self.context.rank}: "
                f"this rank starts a fresh batch stream (resume with the same --nproc-per-node to continue exactly)",
                stacklevel=2,
            )
            self.generator.manual_seed(rank_seed(self.config.seed, self.context.rank) + self.step)
        return ckpt

    def _tensorboard(self):
        return super()._tensorboard() if self.context.is_main else None

    # ---------------------------------------------------------------------------------------------- training
    def train_step(self) -> StepStats:
        """One data-parallel meta-step: every rank runs forward and backward; all skip or all step together."""
        if not self.context.distributed:
            return super().train_step()
        world = self.context.world_size
        self.memory.train()
        patterns, queries, known_mask = self.sample_batch(self.generator)
        with autocast_context(self.config.precision, self.device):  # bf16: see ebmm_rl.precision
            out = self.ddp(patterns, queries, known_mask)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()  # always, on every rank: DDP all-reduces the gradients in here
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip))
        local_skip = not torch.isfinite(out.loss) or not grad_norm <= self.config.skip_grad_norm
        # one decision for all ranks (the averaged gradients agree already; this also covers rounding differences)
        flag = torch.tensor([float(local_skip)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        skipped = bool(flag.item() > 0)
        means = torch.cat([out.loss.detach().reshape(1), out.errors.to(self.device)])  # [1 + K]: loss, errors
        dist.all_reduce(means, op=dist.ReduceOp.SUM)
        means /= world
        loss, errors = float(means[0]), means[1:].tolist()
        self._apply_or_skip(skipped, loss, grad_norm)
        return StepStats(self.step, loss, errors, grad_norm, skipped, patterns.shape[0] * world)

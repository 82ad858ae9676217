"""One protocol for every associative memory, and the registry of all of them by name.

Every memory — :class:`~ebmm_rl.memory.EBMMemory`, the classical Hopfield rules (:mod:`ebmm_rl.hopfield`) and
the baselines (:mod:`ebmm_rl.baselines`) — writes patterns into an explicit state and recalls queries from it::

    state = memory.write(patterns)                         # patterns [B, N, D...]
    retrieved = memory.recall(queries, state, known_mask)  # queries [B, M, D...] -> [B, M, D...]
    memory.memory_size                                     # float32 values written per episode

Memory size is the paper's (§4): "the number of float32 numbers used to represent a modifiable part of the
model": the writable weights for EBMM, the state for recurrent models and slot memories. The sizes at the
binary task's 8256-float budget (``D = 128``) are in each baseline's module docstring and in ``docs/baselines.md``.

Meta-trainable memories are also ``nn.Module`` s whose ``forward(patterns, queries, known_mask)`` returns a
:class:`~ebmm_rl.memory.MetaOutput`, so :class:`~ebmm_rl.training.MetaTrainer` trains any of them.

:data:`MEMORIES` builds a memory by name for random binary patterns of ``dim`` bits within a ``budget``::

    memory = build_memory("memnet", dim=128, budget=8256)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from torch import Tensor

from ebmm_rl import baselines as bl
from ebmm_rl.energy import GatedRNNConfig, GatedRNNEnergy
from ebmm_rl.hopfield import HopfieldConfig, HopfieldMemory, hopfield_memory
from ebmm_rl.memory import EBMMConfig, EBMMemory

HOPFIELD_BUDGET = 128 * 127 // 2 + 128
"""8256: the paper's budget for 128-bit patterns (App. A.2), a symmetric matrix and a vector."""


@runtime_checkable
class AssociativeMemory(Protocol):
    """What every memory provides: explicit state, batched over ``B`` episodes."""

    @property
    def memory_size(self) -> int:
        """Float32 values written per episode (the paper's memory size)."""
        ...

    def write(self, patterns: Tensor, state: Any = None) -> Any:
        """Store ``patterns [B, N, D...]``, continuing from ``state`` (``None``: an empty memory)."""
        ...

    def recall(self, queries: Tensor, state: Any, known_mask: Tensor | None = None) -> Tensor:
        """Retrieve ``[B, M, D...]`` from ``queries [B, M, D...]``; ``known_mask`` marks clamped entries."""
        ...


Kind = Literal["hopfield", "ebmm", "memory", "non-memory", "reference"]


@dataclass(frozen=True)
class MemoryEntry:
    """One registered memory.

    Attributes:
        factory: ``factory(dim, budget, **overrides) -> memory`` for ``dim``-bit ±1 patterns; ``overrides``
            replace config fields (``data_shape`` and ``data_range`` too, for the baselines on images).
        row: the row name in tables (the key of :data:`ebmm_rl.binary.PAPER_TABLE1` where the paper has one).
        kind: ``"hopfield"``, ``"ebmm"``, ``"memory"`` (meta-trained baselines), ``"non-memory"`` or
            ``"reference"`` (untrained modern Hopfield).
        trainable: whether it must be meta-trained (with ``scripts/meta_train_baseline.py``) before use.
        reference: the paper it implements.
        cls: the class ``factory`` builds (a checkpoint's model is checked against it).
    """

    factory: Callable[..., AssociativeMemory]
    row: str
    kind: Kind
    trainable: bool
    reference: str
    cls: type


def _hopfield(rule: str) -> Callable[..., AssociativeMemory]:
    def build(dim: int = 128, budget: int = HOPFIELD_BUDGET, **overrides: Any) -> AssociativeMemory:
        return hopfield_memory(rule, HopfieldConfig(dim=dim, **overrides))

    return build


def _ebmm_rnn(dim: int = 128, budget: int = HOPFIELD_BUDGET, **overrides: Any) -> EBMMemory:
    """C.1 gated-RNN EBMM with ``dynamic_size = ⌊budget / (D + 1)⌋`` (64 at 8256: exactly 8256 floats)."""
    energy_fields = {f.name for f in dataclasses.fields(GatedRNNConfig)}
    energy = {"hidden_size": 256, "dynamic_size": budget // (dim + 1)}
    energy.update({k: v for k, v in overrides.items() if k in energy_fields})
    rules = {"data_range": (-1.0, 1.0), "write_lr_init": 0.1, "read_step_init": 2.0}
    rules.update({k: v for k, v in overrides.items() if k not in energy_fields})
    return EBMMemory(GatedRNNEnergy(GatedRNNConfig(input_size=dim, **energy)), EBMMConfig(**rules))


def _baseline_entry(
    cls: type[bl.BaselineMemory], row: str, kind: Kind, reference: str, trainable: bool = True
) -> MemoryEntry:
    config_cls = bl.MODEL_CONFIGS[cls]

    def build(dim: int = 128, budget: int = HOPFIELD_BUDGET, **overrides: Any) -> AssociativeMemory:
        return cls(config_cls(**{"data_shape": (dim,), "data_range": (-1.0, 1.0), "budget": budget, **overrides}))

    return MemoryEntry(build, row, kind, trainable, reference, cls)


MEMORIES: dict[str, MemoryEntry] = {
    "hebb": MemoryEntry(_hopfield("hebb"), "Hebb", "hopfield", False, "Hopfield (1982)", HopfieldMemory),
    "storkey": MemoryEntry(
        _hopfield("storkey"), "Storkey", "hopfield", False, "Storkey & Valabregue (1999)", HopfieldMemory
    ),
    "pseudo_inverse": MemoryEntry(
        _hopfield("pseudo_inverse"), "pseudo-inverse", "hopfield", False, "Personnaz et al. (1985)", HopfieldMemory
    ),
    "ebmm_rnn": MemoryEntry(_ebmm_rnn, "EBMM RNN", "ebmm", True, "Bartunov et al. (2020), App. C.1", EBMMemory),
    "memnet": _baseline_entry(bl.MemoryNetwork, "Memory Networks", "memory", "Weston et al. (2014)"),
    "mann": _baseline_entry(bl.MANN, "MANN", "memory", "Santoro et al. (2016)"),
    "lstm": _baseline_entry(bl.LSTMMemory, "LSTM", "memory", "Hochreiter & Schmidhuber (1997)"),
    "plasticity": _baseline_entry(bl.PlasticityMemory, "differentiable plasticity", "memory", "Miconi et al. (2018)"),
    "dkm": _baseline_entry(bl.DynamicKanervaMachine, "Dynamic Kanerva Machine", "memory", "Wu et al. (2018)"),
    "dae": _baseline_entry(bl.DenoisingAutoencoder, "denoising auto-encoder", "non-memory", "App. A.3"),
    "vae": _baseline_entry(bl.VariationalAutoencoder, "VAE", "non-memory", "App. A.3"),
    "deep_image_prior": _baseline_entry(
        bl.DeepImagePrior, "Deep Image Prior", "non-memory", "Ulyanov et al. (2018)", trainable=False
    ),
    "modern_hopfield": _baseline_entry(
        bl.ModernHopfield, "modern Hopfield", "reference", "Ramsauer et al. (2020)", trainable=False
    ),
}
"""Every memory by name; tests and ``scripts/eval_binary.py`` iterate over this table."""


def build_memory(name: str, dim: int = 128, budget: int = HOPFIELD_BUDGET, **overrides: Any) -> AssociativeMemory:
    """Build the registered memory ``name`` for ``dim``-bit patterns within ``budget`` floats.

    Raises:
        ValueError: for an unknown name, or when the memory does not fit the budget.
    """
    if name not in MEMORIES:
        raise ValueError(f"unknown memory {name!r}; choose one of {sorted(MEMORIES)}")
    memory = MEMORIES[name].factory(dim, budget, **overrides)
    if memory.memory_size > budget:
        raise ValueError(
            f"{name} needs {memory.memory_size} floats for dim={dim}, more than the budget {budget}; raise the budget"
        )
    return memory

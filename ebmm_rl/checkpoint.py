"""Safe, atomic checkpoints and rebuilding an :class:`EBMMemory` from one.

Checkpoints are plain dictionaries of tensors and primitive values, written to a temporary file and renamed
into place (a kill mid-write leaves the previous checkpoint intact), and loaded with ``weights_only=True``, so
loading a checkpoint never executes code from it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ebmm_rl.energy import (
    GatedRNNConfig,
    GatedRNNEnergy,
    MLPConfig,
    MLPEnergy,
    ResNetConvConfig,
    ResNetConvEnergy,
    ResNetFCConfig,
    ResNetFCEnergy,
    ResNetLowerConvConfig,
    ResNetLowerConvEnergy,
)
from ebmm_rl.layers import EnergyNet
from ebmm_rl.memory import EBMMConfig, EBMMemory

ENERGIES: dict[str, tuple[type[EnergyNet], type]] = {
    "GatedRNNEnergy": (GatedRNNEnergy, GatedRNNConfig),
    "MLPEnergy": (MLPEnergy, MLPConfig),
    "ResNetFCEnergy": (ResNetFCEnergy, ResNetFCConfig),
    "ResNetConvEnergy": (ResNetConvEnergy, ResNetConvConfig),
    "ResNetLowerConvEnergy": (ResNetLowerConvEnergy, ResNetLowerConvConfig),
}
"""Energy networks that :func:`build_memory` can rebuild, by class name: ``(class, config class)``."""


def register_energy(energy_class: type[EnergyNet], config_class: type) -> None:
    """Make ``energy_class`` (built as ``energy_class(config_class(**fields))``) loadable from checkpoints."""
    ENERGIES[energy_class.__name__] = (energy_class, config_class)


def save_atomic(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` (``weights_only=True``: data only, no code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass the checkpoint.pt file of a training run")
    return torch.load(path, map_location=map_location, weights_only=True)


def memory_spec(memory: EBMMemory) -> dict[str, Any]:
    """Everything needed to rebuild ``memory``'s architecture: plain values only."""
    name = type(memory.energy).__name__
    if name not in ENERGIES:
        raise ValueError(f"energy {name} is not registered; call ebmm_rl.checkpoint.register_energy first")
    return {
        "energy": name,
        "energy_config": dataclasses.asdict(memory.energy.config),
        "ebmm_config": dataclasses.asdict(memory.config),
    }


def build_memory(spec: dict[str, Any]) -> EBMMemory:
    """Rebuild an (untrained) :class:`EBMMemory` from :func:`memory_spec`'s output."""
    try:
        energy_class, config_class = ENERGIES[spec["energy"]]
    except KeyError:
        raise ValueError(f"unknown energy {spec.get('energy')!r}; known: {sorted(ENERGIES)}") from None
    energy_config = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["energy_config"].items()}
    ebmm = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["ebmm_config"].items()}
    return EBMMemory(energy_class(config_class(**energy_config)), EBMMConfig(**ebmm))


def load_memory(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> EBMMemory:
    """Rebuild a meta-trained :class:`EBMMemory` from a training checkpoint (or a ``save_memory`` file)."""
    ckpt = load_checkpoint(path, map_location)
    if "memory_spec" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not an EBMM checkpoint (it lacks 'memory_spec' and 'model')")
    memory = build_memory(ckpt["memory_spec"])
    memory.load_state_dict(ckpt["model"])
    return memory.to(map_location)


def save_memory(memory: EBMMemory, path: str | os.PathLike) -> None:
    """Save a memory's architecture and meta-parameters (atomically) for :func:`load_memory`."""
    save_atomic({"memory_spec": memory_spec(memory), "model": memory.state_dict()}, path)

"""Safe, atomic checkpoints and rebuilding a memory (:class:`EBMMemory` or a baseline) from one.

Checkpoints are plain dictionaries of tensors and primitive values, written to a temporary file and renamed
into place (a kill mid-write leaves the previous checkpoint intact), and loaded with ``weights_only=True``, so
loading a checkpoint never executes code from it.

A memory spec names the architecture with plain values: ``{"energy", "energy_config", "ebmm_config"}`` for an
EBMM (its energy network registered in :data:`ENERGIES`), ``{"model", "model_config"}`` for any other module
registered in :data:`MODELS` by class name with a dataclass config, ``{"core"}`` for an agent's
:class:`~ebmm_rl.rl.core.MemoryCore`.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ebmm_rl.baselines import MODEL_CONFIGS
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


MODELS: dict[str, tuple[type[nn.Module], type]] = {cls.__name__: (cls, cfg) for cls, cfg in MODEL_CONFIGS.items()}
"""Non-EBMM memories that :func:`build_memory` can rebuild, by class name: ``(class, config dataclass)``."""


def register_model(model_class: type[nn.Module], config_class: type) -> None:
    """Make ``model_class`` (built as ``model_class(config_class(**fields))``, config in ``.config``) loadable."""
    MODELS[model_class.__name__] = (model_class, config_class)


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


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.<random>.tmp`` files that :func:`save_atomic` leaves when killed mid-write."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(".*.pt.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def non_finite_tensors(state: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors in ``state`` (a ``state_dict``) that hold NaN or inf."""
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic` (``weights_only=True``: data only, no code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; pass the checkpoint.pt file of a training run")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): its write was cut off; use an earlier checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, ValueError) as error:
        raise ValueError(
            f"checkpoint {path} cannot be read ({type(error).__name__}: {error}); it is truncated, corrupt or not "
            f"a file written by ebmm_rl"
        ) from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not the dictionary ebmm_rl writes")
    return ckpt


def memory_spec(memory: nn.Module) -> dict[str, Any]:
    """Everything needed to rebuild ``memory``'s architecture: plain values only."""
    if type(memory).__name__ == "MemoryCore":  # an agent's key/value core (ebmm_rl.rl.core)
        return {"core": memory.spec()}
    if isinstance(memory, EBMMemory):
        name = type(memory.energy).__name__
        if name not in ENERGIES:
            raise ValueError(f"energy {name} is not registered; call ebmm_rl.checkpoint.register_energy first")
        return {
            "energy": name,
            "energy_config": dataclasses.asdict(memory.energy.config),
            "ebmm_config": dataclasses.asdict(memory.config),
        }
    name = type(memory).__name__
    if name not in MODELS:
        raise ValueError(f"model {name} is not registered; call ebmm_rl.checkpoint.register_model first")
    return {"model": name, "model_config": dataclasses.asdict(memory.config)}


def _fields(values: dict[str, Any]) -> dict[str, Any]:
    """Config fields from a spec: lists back to tuples (``data_range``, ``data_shape``)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


MAX_PARAMETERS = 2**31
"""Default bound on the parameter count of a memory rebuilt from a spec (8 GiB of float32)."""


def build_memory(spec: dict[str, Any], max_parameters: int = MAX_PARAMETERS) -> nn.Module:
    """Rebuild an (untrained) memory from :func:`memory_spec`'s output.

    The architecture is first built on the ``meta`` device (no memory allocated) and refused if it has more
    than ``max_parameters`` values, so that a corrupt or hostile spec cannot ask for an arbitrary allocation.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"a memory spec must be a dict (memory_spec's output), got {type(spec).__name__}")
    with torch.device("meta"):
        try:
            numel = sum(p.numel() for p in _build(spec).parameters())
        except TypeError as error:  # unknown or missing config fields
            raise ValueError(f"memory spec does not match its config class: {error}") from None
    if numel > max_parameters:
        raise ValueError(
            f"memory spec asks for {numel} parameters, more than the bound of {max_parameters}; the spec is corrupt "
            f"or does not belong to these weights"
        )
    return _build(spec)


def _build(spec: dict[str, Any]) -> nn.Module:
    """Build the memory of ``spec``; checkpoints written before ``prior_anchor`` existed were trained with "initial"."""
    if "core" in spec:
        from ebmm_rl.rl.core import MemoryCore  # needs gymnasium; only a core checkpoint asks for it

        return MemoryCore.from_spec(spec["core"])
    if "model" in spec:
        try:
            model_class, config_class = MODELS[spec["model"]]
        except KeyError:
            raise ValueError(f"unknown model {spec.get('model')!r}; known: {sorted(MODELS)}") from None
        return model_class(config_class(**_fields(spec["model_config"])))
    try:
        energy_class, config_class = ENERGIES[spec["energy"]]
    except KeyError:
        raise ValueError(f"unknown energy {spec.get('energy')!r}; known: {sorted(ENERGIES)}") from None
    return EBMMemory(
        energy_class(config_class(**_fields(spec["energy_config"]))),
        EBMMConfig(**{"prior_anchor": "initial", **_fields(spec["ebmm_config"])}),
    )


def load_memory(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a meta-trained memory (EBMM or baseline) from a training checkpoint (or a ``save_memory`` file)."""
    ckpt = load_checkpoint(path, map_location)
    if "memory_spec" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not an EBMM checkpoint (it lacks 'memory_spec' and 'model')")
    stored = sum(v.numel() for v in ckpt["model"].values() if isinstance(v, torch.Tensor))
    memory = build_memory(ckpt["memory_spec"], max_parameters=stored)  # every parameter must come from the file
    memory.load_state_dict(ckpt["model"])
    return memory.to(map_location)


def save_memory(memory: nn.Module, path: str | os.PathLike) -> None:
    """Save a memory's architecture and meta-parameters (atomically) for :func:`load_memory`."""
    bad = non_finite_tensors(memory.state_dict())
    if bad:
        raise ValueError(f"not saving {path}: weights {', '.join(bad[:3])} hold NaN or inf")
    save_atomic({"memory_spec": memory_spec(memory), "model": memory.state_dict()}, path)

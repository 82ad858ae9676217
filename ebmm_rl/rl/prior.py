"""The memory prior: a core's EBMM meta-trained once on synthetic key/value rows, shipped, and loaded by fresh cores.

A freshly initialised energy network is not yet an associative memory: written with a few rows and read with a
clamped key, it returns free dimensions that are no closer to the stored row than to any other (``docs/design.md``,
"The memory prior"). The paper meta-learns the memory on a distribution of patterns before it is used. An agent's
rows are ``[p_t ; k_t ; v_t]`` whatever its environment: a position code, then a key and a value from ``tanh`` maps.
So the part of the core that stores and recalls (``θ̄`` and the rest of the energy network, the write rates, read
step sizes and momenta, the retention) is meta-trained once on synthetic rows of that form, and a fresh
:class:`~ebmm_rl.rl.core.MemoryCore` starts from it (``CoreConfig.memory_prior``); the maps stay fresh and RL trains
everything from there.

Synthetic rows (:func:`synthetic_rows`): windows of ``L`` steps at a random step clock, keys and values
``tanh(s · N(0, 1))`` entry by entry with one scale ``s ~ U(0.5, 2)`` per window. The objective
(:func:`prior_forward`): write the window one row per step (retention, then the write, as the agent does), and at
every step ``t ≥ 1`` read a uniformly drawn earlier row ``s < t`` three ways and the first row once, as the query
heads read (:data:`~ebmm_rl.rl.core.HEAD_KINDS`): the position clamped, the learned key clamped, both, and the
first-step flag alone; the step-wise loss of App. B.4 over the free dimensions.

A prior file holds the architecture it fits (:func:`prior_architecture`) and the tensors (:func:`prior_state`); it
loads with ``weights_only=True`` and only into a core of the same architecture.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ebmm_rl.memory import MemoryState, MetaOutput, stepwise_loss
from ebmm_rl.rl.core import MemoryCore, position_code
from ebmm_rl.rl.pretrain import CLOCK_SPAN

__all__ = [
    "PRIOR_DIR",
    "head_masks",
    "load_prior",
    "prior_architecture",
    "prior_forward",
    "prior_state",
    "save_prior",
    "shipped_prior",
    "synthetic_rows",
]

PRIOR_DIR = Path(__file__).parent / "priors"
"""Where the shipped priors live (package data; ``scripts/meta_train_prior.py --export`` writes them)."""
SCALES = (0.5, 2.0)
"""Range of the per-window scale ``s`` of synthetic keys and values ``tanh(s · N(0, 1))``."""


def prior_architecture(core: MemoryCore) -> dict[str, Any]:
    """What a prior must match: the row layout ``[position | key | value]``, the energy network, the rules."""
    c = core.config
    ebmm = dataclasses.asdict(c.ebmm)
    return {
        "position_periods": list(c.position_periods),
        "key_size": c.key_size,
        "value_size": c.value_size,
        "hidden_size": c.hidden_size,
        "dynamic_size": c.dynamic_size,
        "hops": c.hops,
        "write_steps": ebmm["write_steps"],
        "read_steps": ebmm["read_steps"],
        "use_grad_norm_term": ebmm["use_grad_norm_term"],
    }


def prior_state(core: MemoryCore) -> dict[str, Tensor]:
    """The tensors a prior holds: the memory's (energy network, rates, step sizes, momenta) and the retention."""
    return {
        k: v.detach().clone() for k, v in core.state_dict().items() if k.startswith("memory.") or k == "retention_raw"
    }


def save_prior(core: MemoryCore, path: str | os.PathLike) -> None:
    """Write ``core``'s prior to ``path`` atomically.

    Raises:
        ValueError: a tensor holds NaN or inf (nothing is written).
    """
    state = prior_state(core)
    bad = [k for k, v in state.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"not saving a prior with non-finite tensors: {bad}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"architecture": prior_architecture(core), "state": state}, tmp)
    os.replace(tmp, path)


def load_prior(core: MemoryCore, path: str | os.PathLike) -> None:
    """Load the prior in ``path`` into ``core`` (in place; data only, ``weights_only=True``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a prior, or it fits another architecture (the message names the fields).
    """
    try:
        data = torch.load(Path(path), map_location="cpu", weights_only=True)
        architecture, state = data["architecture"], data["state"]
    except FileNotFoundError:
        raise
    except Exception as error:  # noqa: BLE001  (any unreadable file: say which and why)
        raise ValueError(f"{path} is not a memory prior ({type(error).__name__}: {error})") from None
    wanted = prior_architecture(core)
    differ = sorted(k for k in wanted.keys() | architecture.keys() if wanted.get(k) != architecture.get(k))
    if differ:
        raise ValueError(
            f"the memory prior {path} fits another core: {', '.join(f'{k} {architecture.get(k)}' for k in differ)} "
            f"(this core: {', '.join(f'{k} {wanted.get(k)}' for k in differ)}); use memory_prior=None for a fresh "
            "memory, or meta-train a prior for these sizes with scripts/meta_train_prior.py"
        )
    own = core.state_dict()
    for key, value in state.items():
        if key not in own or own[key].shape != value.shape:
            raise ValueError(
                f"the memory prior {path} holds {key} of shape {tuple(value.shape)}, which this core lacks"
            )
    core.load_state_dict(state, strict=False)


def shipped_prior(core: MemoryCore) -> Path | None:
    """The shipped prior file that fits ``core``'s architecture, or ``None``."""
    wanted = prior_architecture(core)
    return next((path for path, architecture in _shipped() if architecture == wanted), None)


@functools.cache
def _shipped() -> tuple[tuple[Path, dict[str, Any]], ...]:
    """``(file, architecture)`` of every shipped prior, read once per process (data only)."""
    found = []
    for path in sorted(PRIOR_DIR.glob("*.pt")):
        try:
            found.append((path, torch.load(path, map_location="cpu", weights_only=True)["architecture"]))
        except Exception:  # noqa: BLE001, S112  (a damaged package file is skipped, never executed)
            continue
    return tuple(found)


def head_masks(core: MemoryCore) -> Tensor:
    """``[4, P]`` bool: the dimensions a ``"time"``, a ``"content"``, a ``"key"`` and a ``"first"`` head clamp."""
    S, K, P = core.position_size, core.key_size, core.pattern_size
    masks = torch.zeros(4, P, dtype=torch.bool, device=core.known.device)
    masks[0, :S] = True
    masks[1, S : S + K] = True
    masks[2, : S + K] = True
    masks[3, S - 1] = True
    return masks


def synthetic_rows(core: MemoryCore, batch_size: int, length: int, generator: torch.Generator) -> Tensor:
    """``[B, L, P]`` synthetic rows: position codes from a random clock, keys and values ``tanh(s · N(0, 1))``."""
    if batch_size < 1 or length < 2:
        raise ValueError(f"need batch_size >= 1 and length >= 2, got {batch_size} and {length}")
    device = generator.device
    count = torch.arange(length, device=device).expand(batch_size, length)
    clock = torch.randint(0, CLOCK_SPAN, (batch_size, 1), generator=generator, device=device) + count
    p = position_code(clock, count, core.periods.to(device))
    lo, hi = SCALES
    scale = lo + (hi - lo) * torch.rand(batch_size, 1, 1, generator=generator, device=device)
    noise = torch.randn(batch_size, length, core.key_size + core.value_size, generator=generator, device=device)
    return torch.cat([p, torch.tanh(scale * noise)], dim=-1)


def prior_forward(core: MemoryCore, batch: Tensor | tuple[Tensor, ...]) -> MetaOutput:
    """A :class:`~ebmm_rl.training.MetaTrainer` ``forward``: write each window, read earlier rows as the heads do.

    Args:
        core: the core whose memory learns.
        batch: ``[B, L, P]`` rows (:func:`synthetic_rows`), or a 1-tuple of them.

    Returns:
        The step-wise loss over the ``B (L − 1)`` reads of each of the four head kinds; ``errors [K]`` per read
        iterate.
    """
    x = batch[0] if isinstance(batch, tuple) else batch
    B, L, P = x.shape
    if L < 2:
        raise ValueError(f"windows of at least 2 rows are needed (a row is read back later), got {L}")
    u = x.new_zeros(B, L, core.config.embed_size)  # no gate in a prior: the embedding is never looked at
    before, _ = core.chain(x, u, core.memory.initial_state(B), create_graph=torch.is_grad_enabled())
    reads = MemoryState.stack(before[1:])  # episode-major: b · (L − 1) + (t − 1)
    t = torch.arange(1, L, device=x.device).expand(B, L - 1)
    s = (torch.rand(B, L - 1, device=x.device) * t).long().clamp(max=L - 2)  # a uniform earlier step s < t
    earlier = x.gather(1, s.unsqueeze(-1).expand(B, L - 1, P)).reshape(B * (L - 1), 1, P)
    first = x[:, :1].expand(B, L - 1, P).reshape(B * (L - 1), 1, P)
    target = torch.cat([earlier.expand(-1, 3, P), first], dim=1)  # time, content, key: row s; first: row 0
    masks = head_masks(core)
    query = torch.where(masks, target, torch.zeros_like(target))
    result = core.memory.read(query, reads, masks.expand_as(query), create_graph=torch.is_grad_enabled())
    loss, errors = stepwise_loss(target, result)
    return MetaOutput(loss, errors, result, reads)

"""``MemoryLoggerCallback``: the memory's own curves in an SB3 run's TensorBoard, under ``memory/``.

Add it to any SB3 run whose policy holds a :class:`~ebmm_rl.rl.core.MemoryCore` (``EBMMRecurrentPPO``,
``RecurrentPPO(EBMMRecurrentPolicy, ...)``, PPO or A2C with :class:`~ebmm_rl.rl.EBMMExtractor`)::

    model.learn(100_000, callback=MemoryLoggerCallback())

At the end of every rollout it records (SB3's logger writes them with the rollout's other scalars):

* ``memory/retention_half_life_{min,median,max}``: the learned half-lives of the memory units, in env steps;
* ``memory/read_step_{k}``, ``memory/read_momentum_{k}``: the learned read step sizes ``γ⁽ᵏ⁾`` and momenta;
* ``memory/write_lr_energy``: the mean learned write rate of the energy term;
* ``memory/gate_bias``: the write gate's bias (``write_gate=True``);
* ``memory/aux_loss``: the auxiliary loss of the last update (``aux_coef > 0``);
* ``memory/cache_hit_rate``: cached lookups over all lookups since the last rollout (the extractor route);

and every ``probe_every`` rollouts, a probe of the memory on the experience just collected
(:func:`experience_probe`): ``memory/recall_value_error`` and ``memory/recall_value_error_start``, the squared error
of the value dimensions when one earlier row of each window of the rollout is read back from its clamped key,
and of the query as it starts (the pre-training objective, ``scripts/meta_train_env.py``, on the agent's own
rows; reading should lower it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from torch import Tensor

from ebmm_rl.rl.core import MemoryCore
from ebmm_rl.rl.extractor import EBMMExtractor
from ebmm_rl.rl.history import history_lengths
from ebmm_rl.rl.pretrain import recall_metrics

__all__ = ["MemoryLoggerCallback", "experience_probe", "policy_core", "rollout_windows"]


def policy_core(policy: Any) -> MemoryCore:
    """The :class:`MemoryCore` of an SB3 policy (the recurrent policy's own, or its extractor's).

    Raises:
        ValueError: the policy has none.
    """
    core = getattr(policy, "core", None)
    if isinstance(core, MemoryCore):
        return core
    extractor = getattr(policy, "features_extractor", None)
    if isinstance(extractor, EBMMExtractor):
        return extractor.core
    raise ValueError(
        f"{type(policy).__name__} holds no EBMM memory core; MemoryLoggerCallback needs EBMMRecurrentPolicy or a "
        "policy with features_extractor_class=EBMMExtractor"
    )


def rollout_windows(policy: Any, buffer: Any, window: int) -> tuple[Tensor, Tensor, Tensor] | None:
    """Windows of the rows each env stored in the last rollout: ``(rows [W, window, D], lengths [W], clock [W])``.

    The recurrent route: each env's consecutive steps, cut at episode starts and after ``window`` rows, with the
    clock the rollout ran at. The extractor route: each env's last observation's history (its clock is its
    window position). Call it at the end of a rollout, before the update flattens the buffer; ``None`` after that.
    """
    if getattr(buffer, "generator_ready", False):  # an update has flattened the buffer already: too late
        return None
    extractor = policy.features_extractor
    obs = buffer.observations
    device = policy.device
    if isinstance(extractor, EBMMExtractor):
        history = torch.as_tensor(obs["history"][-1], device=device)  # [n_envs, L, D]
        lengths = history_lengths(torch.as_tensor(obs["history_len"][-1], device=device).float(), history.shape[1])
        return history, lengths, torch.zeros_like(lengths)
    n_steps, n_envs = buffer.episode_starts.shape[:2]
    flat = {k: v.reshape(n_steps * n_envs, *v.shape[2:]) for k, v in obs.items()} if isinstance(obs, dict) else None
    raw = flat if flat is not None else obs.reshape(n_steps * n_envs, *obs.shape[2:])
    with torch.no_grad():
        tensors = {k: torch.as_tensor(v, device=device) for k, v in raw.items()} if flat else torch.as_tensor(raw)
        rows = extractor(tensors).reshape(n_steps, n_envs, -1).cpu()
    clocks = torch.as_tensor(buffer.cell_states_pi[:, 0, :, 1]).round().long()  # [n_steps, n_envs]
    starts = buffer.episode_starts > 0.5
    out, lengths, clock = [], [], []
    for e in range(n_envs):
        start = 0
        for t in range(1, n_steps + 1):
            if t == n_steps or starts[t, e] or t - start == window:
                out.append(torch.nn.functional.pad(rows[start:t, e], (0, 0, 0, window - (t - start))))
                lengths.append(t - start)
                clock.append(int(clocks[start, e]))
                start = t
    if not out:
        return None
    return torch.stack(out).to(device), torch.tensor(lengths, device=device), torch.tensor(clock, device=device)


def experience_probe(core: MemoryCore, windows: tuple[Tensor, Tensor, Tensor], generator: torch.Generator) -> dict:
    """:func:`~ebmm_rl.rl.pretrain.recall_metrics` of ``core`` on windows of its own rows (``memory/recall_*``)."""
    rows, lengths, clock = windows
    keep = lengths >= 2
    if not bool(keep.any()):
        return {}
    metrics = recall_metrics(core, (rows[keep], lengths[keep], clock[keep]), generator)
    return {f"memory/recall_{k}": v for k, v in metrics.items()}


class MemoryLoggerCallback(BaseCallback):
    """Logs the core's scalars at the end of every rollout, and the experience probe (module docstring).

    Args:
        probe_every: run :func:`experience_probe` every ``probe_every`` rollouts (0: never).
        window: rows per window of the probe on the recurrent route.
        seed: seed of the probe's draws.
        verbose: SB3's verbosity.

    Raises:
        ValueError: (at the start of training) the policy has no memory core.
    """

    def __init__(self, probe_every: int = 1, window: int = 32, seed: int = 0, verbose: int = 0) -> None:
        super().__init__(verbose)
        if probe_every < 0 or window < 2:
            raise ValueError(f"MemoryLoggerCallback needs probe_every >= 0 and window >= 2, got {probe_every}, "
                             f"{window}")  # fmt: skip
        self.probe_every, self.window, self.seed = probe_every, window, seed
        self._hits = self._lookups = self._rollouts = 0
        self._generator: torch.Generator | None = None

    def _on_training_start(self) -> None:
        core = policy_core(self.model.policy)
        extractor = self.model.policy.features_extractor
        self._hits, self._lookups = getattr(extractor, "cache_hits", 0), getattr(extractor, "cache_lookups", 0)
        self._generator = torch.Generator(device=next(core.parameters()).device).manual_seed(self.seed)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        policy = self.model.policy
        core = policy_core(policy)
        for key, value in core.scalars().items():
            self.logger.record(f"memory/{key}", value)
        extractor = policy.features_extractor
        if isinstance(extractor, EBMMExtractor):
            lookups = extractor.cache_lookups - self._lookups
            if lookups:
                self.logger.record("memory/cache_hit_rate", (extractor.cache_hits - self._hits) / lookups)
            self._hits, self._lookups = extractor.cache_hits, extractor.cache_lookups
        self._rollouts += 1
        if self.probe_every and self._rollouts % self.probe_every == 0:
            windows = rollout_windows(policy, self.model.rollout_buffer, self.window)
            if windows is not None and self._generator is not None:
                for key, value in experience_probe(core, windows, self._generator).items():
                    if np.isfinite(value):
                        self.logger.record(key, value)

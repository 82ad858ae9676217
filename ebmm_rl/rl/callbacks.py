"""``MemoryLoggerCallback``: the memory's own curves in an SB3 run's TensorBoard, under ``memory/``.

Add it to any SB3 run whose policy holds an :class:`~ebmm_rl.rl.EBMMExtractor` (``EBMMPolicy``,
``EBMMRecurrentPolicy``, ``"MultiInputPolicy"`` with the extractor)::

    model.learn(100_000, callback=MemoryLoggerCallback())

At the end of every rollout it records (SB3's logger writes them with the rollout's other scalars):

* ``memory/energy_query``, ``memory/energy_retrieved``: the mean energy of the queries and of what was retrieved
  in the last batch of reads (retrieval should lower it: familiar patterns sit in minima, paper §4.4);
* ``memory/read_change``: mean squared distance between the retrieved pattern and the query;
* ``memory/write_lr_t{t}``: the mean learned write rate of write step ``t`` (over layers and loss terms);
* ``memory/read_step_k{k}``, ``memory/momentum_k{k}``: the learned read step sizes ``γ⁽ᵏ⁾`` and momenta ``ψ⁽ᵏ⁾``;
* ``memory/alpha``, ``memory/beta``: the writing loss weights;
* ``memory/cache_hit_rate``: cached lookups over all lookups since the last rollout (the PPO route);
* ``memory/aux_loss``: the auxiliary reconstruction loss of the last update (``aux_coef > 0``).

and, from a probe of the memory on the rollout just collected (:func:`experience_probe`, every ``probe_every``
rollouts; any environment, both routes):

* ``memory/energy_stored``: the mean energy of the rows an episode stored, in the memory written from them;
* ``memory/energy_distorted``: the same rows with half their entries replaced by noise (the stored rows should
  sit lower: writing makes them minima);
* ``memory/recall_error``, ``memory/recall_error_query``: mean squared error per noised entry of what reading
  from the distorted rows retrieves, and of the distorted rows themselves (reading should lower it). This is the
  objective of the self-supervised meta-training (``scripts/meta_train_env.py``), measured on the agent's own
  experience;

and, where the task exposes its truth (the ``ebmm/...`` memory probes under ``EpisodeMemoryWrapper``'s probe
protocol, whose ``get_state()`` names the stored row each query asks for; :func:`truth_probe` on a fixed batch
drawn once at the start):

* ``memory/truth_error``, ``memory/truth_error_query``: mean squared error per entry between the stored row the
  query asks for and what the memory retrieves, and the query itself.

The generic protocol and foreign environments have no truth: the ``truth_*`` tags are absent there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from torch import Tensor

from ebmm_rl.rl.extractor import EBMMExtractor
from ebmm_rl.rl.self_supervised import distort

__all__ = ["MemoryLoggerCallback", "experience_probe", "memory_scalars", "stored_rows", "truth_probe"]


def memory_scalars(extractor: EBMMExtractor) -> dict[str, float]:
    """The ``memory/...`` scalars of ``extractor`` now (see the module docstring)."""
    memory = extractor.memory
    out: dict[str, float] = {}
    for t, rate in enumerate(memory.write_lrs.detach().mean(dim=(1, 2)).tolist()):
        out[f"memory/write_lr_t{t}"] = rate
    gammas, psis = memory.read_step_sizes.detach().tolist(), memory.momenta.detach().tolist()
    for k, (gamma, psi) in enumerate(zip(gammas, psis, strict=True)):
        out[f"memory/read_step_k{k}"] = gamma
        out[f"memory/momentum_k{k}"] = psi
    out["memory/alpha"] = float(memory.alpha.detach())
    out["memory/beta"] = float(memory.beta.detach())
    out.update({f"memory/{k}": v for k, v in extractor.last_read.items()})
    if extractor.last_aux_loss is not None:
        out["memory/aux_loss"] = extractor.last_aux_loss
    return out


def _mean_sq(a: Tensor, b: Tensor, mask: Tensor) -> float:
    """Mean of ``(a - b)²`` over the entries where ``mask`` (broadcast to ``a``) holds."""
    weight = mask.expand_as(a).to(a.dtype)
    return float(((a - b).pow(2) * weight).sum() / weight.sum().clamp(min=1))


def experience_probe(
    extractor: EBMMExtractor, patterns: Tensor, lengths: Tensor, generator: torch.Generator, keep_fraction: float = 0.5
) -> dict[str, float]:
    """Energies and recall of the memory on stored rows of the agent's own episodes (no labels).

    Writes each episode's rows as the agent does (:meth:`EBMMExtractor.write`), then reads every stored row back
    from a copy with ``1 - keep_fraction`` of its entries replaced by uniform noise (the others clamped as known,
    as in the self-supervised meta-training).

    Args:
        extractor: holds the memory.
        patterns: ``[B, L, P]`` encoded rows, padded.
        lengths: ``[B]`` valid rows of each episode (episodes with none are left out).
        generator: random source of the distortion.
        keep_fraction: fraction of entries kept.

    Returns:
        ``{"memory/energy_stored", "memory/energy_distorted", "memory/recall_error", "memory/recall_error_query"}``,
        or ``{}`` when no episode stored anything.
    """
    keep = lengths > 0
    if not bool(keep.any()):
        return {}
    patterns, lengths = patterns[keep].detach(), lengths[keep]
    memory = extractor.memory
    valid = torch.arange(patterns.shape[1], device=patterns.device) < lengths.unsqueeze(1)  # [B, L]
    state = extractor.write(patterns, lengths, create_graph=False)
    queries, known = distort(patterns, extractor.data_range, keep_fraction, generator)
    with torch.no_grad():
        energies = memory.energies(torch.stack([patterns, queries]), state)  # [2, B, L]
    result = memory.read(queries, state, known, create_graph=False)
    unknown = valid.unsqueeze(-1) & ~known  # [B, L, P]
    weight = valid.to(energies.dtype)
    stored, distorted = ((energies * weight).sum(dim=(1, 2)) / weight.sum()).tolist()
    return {
        "memory/energy_stored": stored,
        "memory/energy_distorted": distorted,
        "memory/recall_error": _mean_sq(result.retrieved.detach(), patterns, unknown),
        "memory/recall_error_query": _mean_sq(queries, patterns, unknown),
    }


def truth_probe(extractor: EBMMExtractor, history: Tensor, lengths: Tensor, queries: Tensor, targets: Tensor):
    """How close the memory's reads come to the stored rows the queries ask for (the task's truth).

    Args:
        extractor: holds the encoder and the memory.
        history: ``[B, L, D]`` stored rows (unencoded, as in the observation), padded.
        lengths: ``[B]`` valid rows.
        queries: ``[B, D]`` the query rows.
        targets: ``[B, D]`` the stored row each query asks for (``EnvRecallSampler``).

    Returns:
        ``{"memory/truth_error", "memory/truth_error_query"}``: mean squared error per encoded entry of the
        retrieved pattern and of the encoded query against the encoded target.
    """
    with torch.no_grad():
        patterns, query, target = (extractor.encode(t) for t in (history, queries, targets))
    state = extractor.write(patterns, lengths, create_graph=False)
    retrieved = extractor.memory.read(query.unsqueeze(1), state, create_graph=False).retrieved[:, 0].detach()
    everywhere = torch.ones_like(target, dtype=torch.bool)
    return {
        "memory/truth_error": _mean_sq(retrieved, target, everywhere),
        "memory/truth_error_query": _mean_sq(query, target, everywhere),
    }


def _episode_segments(starts: np.ndarray, window: int) -> list[tuple[int, int]]:
    """Per env, ``(begin, end)`` of the longest run of steps within one episode in a rollout, at most ``window``.

    Args:
        starts: ``[T, n_envs]`` 1 where a step begins an episode (SB3's ``episode_starts``).
        window: cap on the run's length (its last ``window`` steps are kept).
    """
    segments = []
    T = starts.shape[0]
    for env in range(starts.shape[1]):
        cuts = [0, *[t for t in range(1, T) if starts[t, env] > 0.5], T]
        begin, end = max(zip(cuts[:-1], cuts[1:], strict=True), key=lambda c: c[1] - c[0])
        segments.append((max(begin, end - window), end))
    return segments


def stored_rows(extractor: EBMMExtractor, buffer: Any, window: int = 32) -> tuple[Tensor, Tensor]:
    """Encoded rows that episodes of the last rollout stored, per env: ``(patterns [n_envs, L, P], lengths)``.

    With a ``"history"`` observation (``EpisodeMemoryWrapper``; the PPO route and the probes) each env's fullest
    history of the rollout; with raw observations (``EBMMRecurrentPolicy`` on the raw env) each env's longest run
    of steps within one episode, at most ``window`` rows.

    Args:
        extractor: holds the encoder.
        buffer: SB3's (recurrent) rollout buffer, after collection.
        window: cap on the rows of the raw-observation case.
    """
    obs = buffer.observations
    device = _device(extractor)
    if extractor.mode == "history":
        lengths = np.asarray(obs["history_len"]).reshape(obs["history_len"].shape[:2])  # [T, n_envs]
        step = lengths.argmax(axis=0)  # [n_envs]
        envs = np.arange(lengths.shape[1])
        history = torch.as_tensor(obs["history"][step, envs], device=device)  # [n_envs, L, D]
        with torch.no_grad():
            patterns = extractor.encode(history)
        return patterns, torch.as_tensor(lengths[step, envs], device=device).long()
    segments = _episode_segments(np.asarray(buffer.episode_starts), window)
    rows = []
    for env, (begin, end) in enumerate(segments):
        if isinstance(obs, dict):
            part = {k: torch.as_tensor(v[begin:end, env], device=device) for k, v in obs.items()}
        else:
            part = torch.as_tensor(obs[begin:end, env], device=device)
        with torch.no_grad():
            rows.append(extractor.encode(extractor.rows(part)))  # [T_env, P]
    lengths = torch.as_tensor([r.shape[0] for r in rows], device=device)
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True), lengths  # [n_envs, L, P], zero-padded


def _device(extractor: EBMMExtractor) -> torch.device:
    return next(extractor.memory.parameters()).device


class MemoryLoggerCallback(BaseCallback):
    """Logs :func:`memory_scalars` of the policy's EBMM extractor at the end of every rollout, and the probes.

    Args:
        probe_every: run :func:`experience_probe` (and :func:`truth_probe` where the task has a truth) every
            ``probe_every`` rollouts; 0 turns the probes off. Each costs about one rollout step's write and read
            for every env (``truth_batch`` rows for the truth).
        truth_batch: query rows of the fixed truth batch.
        window: rows per env of the experience probe on raw observations (the recurrent route).
        seed: seed of the truth batch and of the distortions.
        verbose: SB3's verbosity.

    Raises:
        ValueError: (at the start of training) the policy has no :class:`EBMMExtractor`.
    """

    def __init__(
        self, probe_every: int = 1, truth_batch: int = 64, window: int = 32, seed: int = 0, verbose: int = 0
    ) -> None:
        super().__init__(verbose)
        if probe_every < 0 or truth_batch < 1 or window < 1:
            raise ValueError(f"MemoryLoggerCallback needs probe_every >= 0, truth_batch >= 1 and window >= 1, got "
                             f"{probe_every}, {truth_batch}, {window}")  # fmt: skip
        self.probe_every, self.truth_batch, self.window, self.seed = probe_every, truth_batch, window, seed
        self._hits = 0
        self._lookups = 0
        self._rollouts = 0
        self._generator: torch.Generator | None = None
        self._truth: tuple[Tensor, Tensor, Tensor, Tensor] | None = None

    def _extractor(self) -> EBMMExtractor:
        extractor = getattr(self.model.policy, "features_extractor", None)
        if not isinstance(extractor, EBMMExtractor):
            raise ValueError(
                f"MemoryLoggerCallback needs a policy with an EBMMExtractor, got {type(extractor).__name__}; use "
                "EBMMPolicy, EBMMRecurrentPolicy or features_extractor_class=EBMMExtractor"
            )
        return extractor

    def _on_training_start(self) -> None:
        extractor = self._extractor()
        self._hits, self._lookups = extractor.cache_hits, extractor.cache_lookups
        self._generator = torch.Generator(device=_device(extractor)).manual_seed(self.seed)
        if self.probe_every:
            self._truth = self._truth_batch(extractor)

    def _truth_batch(self, extractor: EBMMExtractor) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """A fixed batch of the task's truth, if the training env is an ``ebmm/...`` probe under the probe protocol."""
        if extractor.mode != "history" or extractor.layout is not None:
            return None  # raw observations or the generic protocol: no stored row is named by the task
        env = self.training_env
        try:
            spec, write_phases, data_range = (env.get_attr(a, [0])[0] for a in ("spec", "write_phases", "data_range"))
        except AttributeError:
            return None
        if spec is None or not spec.id.startswith("ebmm/"):
            return None
        from ebmm_rl.rl.env_meta import EnvRecallSampler

        try:
            sampler = EnvRecallSampler(spec.id, write_phases=tuple(write_phases), env_kwargs=dict(spec.kwargs))
        except ValueError:  # a probe family without a recall target
            return None
        if (
            sampler.max_patterns > extractor.max_patterns
            or sampler.pattern_size != extractor.row_size
            or tuple(sampler.data_range) != tuple(data_range)
        ):
            return None  # the training wrapper stores rows another way than the sampler's: they would not match
        generator = torch.Generator().manual_seed(self.seed)
        history, lengths, queries, targets = sampler.sample(self.truth_batch, generator).as_tuple()
        pad = extractor.max_patterns - history.shape[1]
        history = torch.nn.functional.pad(history, (0, 0, 0, pad))
        device = _device(extractor)
        return history.to(device), lengths.to(device), queries.to(device), targets.to(device)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        extractor = self._extractor()
        for key, value in memory_scalars(extractor).items():
            self.logger.record(key, value)
        lookups = extractor.cache_lookups - self._lookups
        if lookups:
            self.logger.record("memory/cache_hit_rate", (extractor.cache_hits - self._hits) / lookups)
        self._hits, self._lookups = extractor.cache_hits, extractor.cache_lookups
        self._rollouts += 1
        if self.probe_every and self._rollouts % self.probe_every == 0:
            for key, value in self.probes(extractor).items():
                self.logger.record(key, value)

    def probes(self, extractor: EBMMExtractor) -> dict[str, float]:
        """:func:`experience_probe` on the last rollout and :func:`truth_probe` on the fixed batch, now."""
        assert self._generator is not None, "call probes() during training"
        was_training = extractor.training
        extractor.eval()
        try:
            patterns, lengths = stored_rows(extractor, self.model.rollout_buffer, self.window)
            out = experience_probe(extractor, patterns, lengths, self._generator)
            if self._truth is not None:
                out.update(truth_probe(extractor, *self._truth))
        finally:
            extractor.train(was_training)
        return out

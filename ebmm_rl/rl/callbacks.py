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
"""

from __future__ import annotations

from stable_baselines3.common.callbacks import BaseCallback

from ebmm_rl.rl.extractor import EBMMExtractor

__all__ = ["MemoryLoggerCallback", "memory_scalars"]


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


class MemoryLoggerCallback(BaseCallback):
    """Logs :func:`memory_scalars` of the policy's EBMM extractor at the end of every rollout.

    Raises:
        ValueError: (at the start of training) the policy has no :class:`EBMMExtractor`.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._hits = 0
        self._lookups = 0

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

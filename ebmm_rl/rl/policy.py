"""``EBMMPolicy``: SB3's ``MultiInputPolicy`` with the EBMM extractor, and clear errors on unwrapped observations."""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.policies import MultiInputActorCriticPolicy

from ebmm_rl.rl.extractor import EBMMExtractor
from ebmm_rl.rl.rows import check_model_observation

__all__ = ["EBMMPolicy"]


class EBMMPolicy(MultiInputActorCriticPolicy):
    """``MultiInputActorCriticPolicy`` whose features extractor defaults to :class:`EBMMExtractor`.

    ``PPO(EBMMPolicy, EpisodeMemoryWrapper(env))`` is ``PPO("MultiInputPolicy", ..., policy_kwargs=
    dict(features_extractor_class=EBMMExtractor))``, except that ``predict`` on an observation of the unwrapped
    environment raises a ``ValueError`` that names the wrapper call to apply, instead of an ``IndexError``.
    """

    def __init__(self, *args: Any, features_extractor_class: type = EBMMExtractor, **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)

    def obs_to_tensor(self, observation: Any) -> Any:
        """SB3's conversion, after checking that ``observation`` is a wrapped one."""
        check_model_observation(observation, self.observation_space)
        return super().obs_to_tensor(observation)

"""``EBMMRecurrentPolicy``: an EBMM memory as the recurrent core of sb3-contrib's ``RecurrentPPO``.

Recipe::

    env = EpisodeMemoryWrapper(gym.make("ebmm/BinaryRecall-Medium-v0"))
    model = RecurrentPPO(EBMMRecurrentPolicy, env)

Where :class:`~ebmm_rl.rl.extractor.EBMMExtractor` rebuilds each observation's memory from its ``"history"``, this
policy carries the memory across env steps as RecurrentPPO carries LSTM state: the recurrent state is the fast
weights (as the deviation ``θ − θ̄``, so that the all-zero state RecurrentPPO starts from and resets to is ``θ̄``)
and the number of patterns written. Each step writes the pattern stored since the previous step (the newest row of
``"history"``, one pattern per chunk), then reads with ``"query"``; features are those of the extractor. RecurrentPPO
stores the state once per sequence start and unrolls each minibatch sequence from it with gradients through every
write, so an update writes each pattern once instead of re-writing every observation's whole history.

State layout (RecurrentPPO's ``(hidden, cell)`` pair, each ``[1, n_envs, memory_size]``): ``hidden`` holds
``θ − θ̄`` flattened in the order of ``memory.energy.memory_parameters()``; ``cell[..., 0]`` holds the number of
patterns written, the rest is zero. The actor and the critic share the memory (``RNNStates.vf`` is ``.pi``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn

from ebmm_rl.memory import MemoryState
from ebmm_rl.rl.extractor import EBMMExtractor, _lengths

__all__ = ["EBMMRecurrentPolicy"]

State = tuple[Tensor, Tensor]
"""``(hidden [1, n, memory_size], cell [1, n, memory_size])``: ``θ − θ̄`` and the count of written patterns."""


class EBMMRecurrentPolicy(RecurrentActorCriticPolicy):
    """RecurrentPPO policy whose recurrent core is an EBMM memory (online writing, one pattern per step).

    Takes the arguments of SB3's ``ActorCriticPolicy``; ``features_extractor_kwargs`` configure the
    :class:`EBMMExtractor` that holds the memory and builds the features (``memory``, ``energy``, ``ebmm``,
    ``freeze_memory``, ``net_arch``, ``similarities``; ``chunk_size`` must be 1). The observation space must come
    from :class:`~ebmm_rl.rl.wrappers.EpisodeMemoryWrapper`. There is no LSTM: the MLP heads (``net_arch``) sit on
    the memory features.

    Raises:
        ValueError: ``share_features_extractor=False``, a features extractor other than :class:`EBMMExtractor`,
            or ``chunk_size != 1``.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = EBMMExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not share_features_extractor:
            raise ValueError("EBMMRecurrentPolicy keeps one memory for the actor and the critic: use the default "
                             "share_features_extractor=True")  # fmt: skip
        if not (isinstance(features_extractor_class, type) and issubclass(features_extractor_class, EBMMExtractor)):
            raise ValueError(f"EBMMRecurrentPolicy needs features_extractor_class=EBMMExtractor (the memory lives "
                             f"there), got {features_extractor_class}")  # fmt: skip
        if int((features_extractor_kwargs or {}).get("chunk_size", 1)) != 1:
            raise ValueError("EBMMRecurrentPolicy writes one pattern per env step: chunk_size must be 1 (use the "
                             "EBMMExtractor route with PPO for chunked writing)")  # fmt: skip
        # RecurrentActorCriticPolicy.__init__ would build LSTMs; only ActorCriticPolicy's set-up is wanted.
        ActorCriticPolicy.__init__(
            self,
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            share_features_extractor,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )
        self.memory_size = self.features_extractor.memory.memory_size
        self.lstm_hidden_state_shape = (1, 1, self.memory_size)  # predict() starts from zeros of this shape: θ̄

    @property
    def lstm_actor(self) -> SimpleNamespace:
        """What ``RecurrentPPO`` reads to size its state buffers: one "layer" of ``memory_size`` floats."""
        return SimpleNamespace(num_layers=1, hidden_size=self.memory_size)

    def _build_mlp_extractor(self) -> None:
        ActorCriticPolicy._build_mlp_extractor(self)  # on the memory features (no LSTM output in between)

    # ------------------------------------------------------------------------------------------------- state
    def _to_memory(self, state: State) -> MemoryState:
        """``(hidden, cell)`` ``[1, n, S]`` -> the :class:`MemoryState` of ``n`` episodes (``θ̄ + hidden``)."""
        memory = self.features_extractor.memory
        delta = state[0][0]  # [n, S]
        fast, offset = {}, 0
        for name, p in memory.energy.memory_parameters().items():
            part = delta[:, offset : offset + p.numel()].reshape(-1, *p.shape)  # [n, *shape]
            fast[name] = p.unsqueeze(0) + part
            offset += p.numel()
        return MemoryState(fast, state[1][0, :, 0].round().long())

    def _from_memory(self, memory_state: MemoryState) -> State:
        """The :class:`MemoryState` of ``n`` episodes -> ``(hidden, cell)`` ``[1, n, S]``."""
        theta_bar = self.features_extractor.memory.energy.memory_parameters()
        n = memory_state.batch_size
        fast = memory_state.fast_weights
        delta = torch.cat([(fast[name] - p).reshape(n, -1) for name, p in theta_bar.items()], dim=1)  # [n, S]
        cell = torch.zeros_like(delta)
        cell[:, 0] = memory_state.num_written.to(delta.dtype)
        return delta.unsqueeze(0), cell.unsqueeze(0)

    def unroll(self, obs: dict[str, Tensor], state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
        """Features of a batch of sequences and the state after them.

        Args:
            obs: observations (not preprocessed), ``n_seq * T`` rows ordered sequence by sequence (RecurrentPPO's
                layout; ``T = 1`` when collecting rollouts, ``n_seq`` = number of envs).
            state: the state before the first step of each sequence, ``[1, n_seq, S]`` each.
            episode_starts: ``[n_seq * T]`` 1 where a new episode starts (the memory is reset to ``θ̄`` before that
                step).

        Returns:
            ``(features [n_seq * T, features_dim], state after the last step)``.
        """
        ext: EBMMExtractor = self.features_extractor  # type: ignore[assignment]
        pre = preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
        n_seq = state[0].shape[1]
        lengths = _lengths(pre["history_len"], ext.max_patterns).reshape(n_seq, -1)  # [n_seq, T]
        history = pre["history"].reshape(n_seq, -1, *pre["history"].shape[1:])  # [n_seq, T, L, D]
        starts = episode_starts.reshape(n_seq, -1) > 0.5  # [n_seq, T]
        create_graph = ext.needs_graph()
        memory_state = self._to_memory(state)
        theta_bar = ext.memory.initial_state(n_seq)
        steps: list[MemoryState] = []
        for t in range(lengths.shape[1]):
            if bool(starts[:, t].any()):  # reset: θ̄ and nothing written
                reset = starts[:, t]
                fast = {
                    n: torch.where(reset.view(-1, *[1] * (w.dim() - 1)), theta_bar.fast_weights[n], w)
                    for n, w in memory_state.fast_weights.items()
                }
                memory_state = MemoryState(fast, torch.where(reset, 0, memory_state.num_written))
            memory_state = ext.write_new(history[:, t], lengths[:, t], memory_state, create_graph)
            steps.append(memory_state)
        # Reads do not depend on each other: one batched read over every (sequence, step), sequence-major.
        stacked = MemoryState(
            {n: torch.stack([s.fast_weights[n] for s in steps], 1).flatten(0, 1) for n in memory_state.fast_weights},
            torch.stack([s.num_written for s in steps], 1).flatten(),
        )  # [n_seq * T, ...]
        features = ext.head(ext.read_features(pre, stacked, lengths.flatten()))
        return features, self._from_memory(memory_state)

    # ------------------------------------------------------------------------------------ RecurrentPPO hooks
    def forward(
        self, obs: dict[str, Tensor], lstm_states: RNNStates, episode_starts: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, RNNStates]:
        """Actions, values, log-probabilities and the next state (rollout collection)."""
        features, state = self.unroll(obs, lstm_states.pi, episode_starts)
        latent_pi, latent_vf = self.mlp_extractor(features)
        values = self.value_net(latent_vf)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, values, log_prob, RNNStates(state, state)

    def get_distribution(
        self, obs: dict[str, Tensor], lstm_states: State, episode_starts: Tensor
    ) -> tuple[Distribution, State]:
        """The action distribution and the next state (``predict``)."""
        features, state = self.unroll(obs, lstm_states, episode_starts)
        latent_pi = self.mlp_extractor.forward_actor(features)
        return self._get_action_dist_from_latent(latent_pi), state

    def predict_values(self, obs: dict[str, Tensor], lstm_states: State, episode_starts: Tensor) -> Tensor:
        """Values of ``obs`` (bootstrapping at the end of a rollout)."""
        features, _ = self.unroll(obs, lstm_states, episode_starts)
        return self.value_net(self.mlp_extractor.forward_critic(features))

    def evaluate_actions(
        self, obs: dict[str, Tensor], actions: Tensor, lstm_states: RNNStates, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Values, log-probabilities and entropy of ``actions`` (PPO update, gradients through the sequence)."""
        features, _ = self.unroll(obs, lstm_states.pi, episode_starts)
        latent_pi, latent_vf = self.mlp_extractor(features)
        distribution = self._get_action_dist_from_latent(latent_pi)
        if isinstance(self.action_space, spaces.MultiBinary):  # the recurrent buffer hands them over as int8
            actions = actions.float()
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()

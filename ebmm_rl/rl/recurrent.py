"""``EBMMRecurrentPolicy`` and ``EBMMRecurrentPPO``: the key/value EBMM as the recurrent core of ``RecurrentPPO``.

Recipe (any environment, unwrapped)::

    model = EBMMRecurrentPPO(env=gym.make("CartPole-v1"))            # previous action and reward fed back
    model = RecurrentPPO(EBMMRecurrentPolicy, gym.make("CartPole-v1"))  # sb3-contrib's own algorithm

The policy owns a :class:`~ebmm_rl.rl.core.MemoryCore` as sb3-contrib's policy owns its LSTM, in three stages:
the features extractor (:class:`RowsExtractor`, stateless: an observation becomes a memory row), the core (the
recurrent stage: it reads the memory of the episode's earlier steps, then writes this step's key/value row), and
the MLP heads on the core's features.

The recurrent state is RecurrentPPO's ``(hidden, cell)`` pair, each ``[1, n_envs, S]`` with ``S`` the memory size:
``hidden`` holds ``θ − θ̄`` flattened in the order of ``memory.energy.memory_parameters()``; ``cell[..., 0]`` the
rows written in the episode and ``cell[..., 1]`` the step clock of the position code (it runs on across episodes),
the rest zero. So the all-zero state RecurrentPPO starts from and resets to is ``θ̄`` with nothing written. The
actor and the critic share the memory (``RNNStates.vf`` is ``.pi``).

RecurrentPPO stores each sequence's first state and unrolls every minibatch sequence from it
(``bptt_steps=None``: gradients through every write since the sequence's start, as for an LSTM).
:class:`EBMMRecurrentPPO` also keeps every step's state, so that an update backpropagates each read through a
window of its last ``bptt_steps`` writes, as batched writes, from the state the rollout stored.
"""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor, nn

from ebmm_rl.memory import MemoryState
from ebmm_rl.rl.core import CoreConfig, MemoryCore
from ebmm_rl.rl.losses import inject_loss
from ebmm_rl.rl.rows import RowLayout, RowsBox, check_model_observation
from ebmm_rl.rl.wrappers import PreviousActionReward

__all__ = ["DEFAULT_BPTT_STEPS", "EBMMRecurrentPPO", "EBMMRecurrentPolicy", "RowsExtractor"]

State = tuple[Tensor, Tensor]
"""``(hidden [1, n, S], cell [1, n, S])``: ``θ − θ̄``, and the rows written and the step clock."""

DEFAULT_BPTT_STEPS = 8
""":class:`EBMMRecurrentPPO`'s truncation window: each read backpropagates through its last 8 writes."""

ROW_CHECK_STEPS = 512
"""Rollout rows the policy looks at before it warns about rows that barely vary (then it stops looking)."""


class RowsExtractor(BaseFeaturesExtractor):
    """The policy's stateless first stage: raw observations -> memory rows ``[n, D]`` (:class:`RowLayout`).

    It reads observations as the environment gives them (not SB3's preprocessed ones): ``Discrete`` parts one-hot,
    bounded boxes mapped linearly onto ``(-1, 1)``, unbounded ones squashed (see :mod:`ebmm_rl.rl.rows`).

    Args:
        observation_space: any space of :data:`~ebmm_rl.rl.rows.SUPPORTED_SPACES` that SB3 can store.
        codes: ``uint8`` observations hold integer codes below this number (MiniGrid's symbolic grid: 11); each
            entry becomes a one-hot.
        squash_scale: unbounded entries ``x`` become ``tanh(x / squash_scale)``.

    Raises:
        ValueError: an unsupported space, or arguments of the extractor that held the memory before key/value rows.
    """

    def __init__(
        self, observation_space: spaces.Space, codes: int | None = None, squash_scale: float = 1.0, **old: Any
    ) -> None:
        if old:
            raise ValueError(
                f"features_extractor_kwargs {sorted(old)} configured the memory of EBMMRecurrentPolicy before it "
                "wrote key/value rows (the memory lived in EBMMExtractor then). The policy now owns a MemoryCore: "
                "pass policy_kwargs=dict(memory=dict(...)) with fields of ebmm_rl.rl.CoreConfig (hidden_size, "
                "dynamic_size, ebmm=dict(write_steps=...), ...), and features_extractor_kwargs=dict(codes=...) for "
                "observations of small integer codes"
            )
        layout = RowLayout(observation_space, codes=codes, squash_scale=squash_scale)
        super().__init__(observation_space, features_dim=layout.size)
        self.layout = layout
        self.image_layout = observation_space.layout if isinstance(observation_space, RowsBox) else layout

    def forward(self, observations: Any) -> Tensor:
        """``[n, D]`` rows of a batch of raw observations (tensors as ``obs_as_tensor`` gives them)."""
        return self.layout.torch_rows(observations, check=True)


class EBMMRecurrentPolicy(RecurrentActorCriticPolicy):
    """RecurrentPPO policy whose recurrent core is a key/value EBMM (:class:`~ebmm_rl.rl.core.MemoryCore`).

    Takes the arguments of SB3's ``ActorCriticPolicy``, and:

    Args:
        memory: the core's settings: a :class:`CoreConfig` or a dict of its fields (``ebmm`` may be a dict of
            :class:`~ebmm_rl.memory.EBMMConfig` fields); default ``CoreConfig()``.
        core: a ready :class:`MemoryCore` (or the path of a core checkpoint of ``scripts/meta_train_env.py``) to
            start from, instead of a fresh one. Pass the object when the model is to be saved: it travels inside
            ``model.zip``; a path must still exist when the model is loaded.
        bptt_steps: ``None``: each read backpropagates through every write since the start of its minibatch
            sequence (``T`` sequential writes with a graph, as RecurrentPPO does for an LSTM); ``k``: through its
            last ``k`` writes only, from the memory before them without a graph (``k`` batched writes; the stored
            state of every step when trained by :class:`EBMMRecurrentPPO`, else recomputed). Features are the
            same for every ``bptt_steps``; only the gradient changes.
        aux_coef: weight of :meth:`MemoryCore.aux_loss`, the paper's objective on the agent's own rows, added to
            the RL loss in every update (0: none).

    Raises:
        ValueError: a bad ``bptt_steps`` or ``aux_coef``, ``share_features_extractor=False``, another features
            extractor than :class:`RowsExtractor`, or a model of the design before key/value rows.
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
        features_extractor_class: type[BaseFeaturesExtractor] = RowsExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        memory: CoreConfig | dict[str, Any] | None = None,
        core: MemoryCore | str | os.PathLike | None = None,
        bptt_steps: int | None = None,
        aux_coef: float = 0.0,
        critic_gradient: bool = False,
    ) -> None:
        if bptt_steps is not None and (
            isinstance(bptt_steps, bool) or not isinstance(bptt_steps, int) or bptt_steps < 1
        ):
            raise ValueError(f"bptt_steps must be None (the whole sequence) or an int >= 1, got {bptt_steps!r}")
        if not (isinstance(aux_coef, int | float) and np.isfinite(aux_coef) and aux_coef >= 0):
            raise ValueError(f"aux_coef must be a finite number >= 0, got {aux_coef!r}")
        if not share_features_extractor:
            raise ValueError("EBMMRecurrentPolicy keeps one memory for the actor and the critic: use the default "
                             "share_features_extractor=True")  # fmt: skip
        if not (isinstance(features_extractor_class, type) and issubclass(features_extractor_class, RowsExtractor)):
            raise ValueError(
                f"EBMMRecurrentPolicy builds rows with RowsExtractor and owns its memory core; got "
                f"features_extractor_class={getattr(features_extractor_class, '__name__', features_extractor_class)}"
                ". (A model saved before key/value rows kept its memory in EBMMExtractor: it cannot be loaded into "
                "this design; train it again.)"
            )
        history = observation_space.spaces.get("history") if isinstance(observation_space, spaces.Dict) else None
        if isinstance(history, RowsBox):
            raise ValueError("EBMMRecurrentPolicy carries the memory itself and needs no history: pass the raw env "
                             "instead of one wrapped by EpisodeMemoryWrapper")  # fmt: skip
        if isinstance(memory, dict):
            memory = CoreConfig.build(**memory)
        elif memory is None:
            memory = CoreConfig()
        elif not isinstance(memory, CoreConfig):
            raise ValueError(f"memory must be a CoreConfig, a dict of its fields or None, got {type(memory).__name__}")
        if core is not None and not isinstance(core, MemoryCore):
            from ebmm_rl.rl.pretrain import load_core  # a checkpoint path

            core = load_core(core)
        self.memory_config = memory
        object.__setattr__(self, "_given_core", core)  # a module, kept aside until _build_mlp_extractor registers it
        self.bptt_steps = bptt_steps
        self.aux_coef = float(aux_coef)
        self.critic_gradient = bool(critic_gradient)
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
        self.state_size = max(self.core.memory.memory_size, 2)
        self.lstm_hidden_state_shape = (1, 1, self.state_size)  # predict() starts from zeros of this shape: θ̄
        self._row_range: tuple[Tensor, Tensor] | None = None
        self._rows_seen = 0

    def _build_mlp_extractor(self) -> None:
        """Build the core on the extractor's rows, then SB3's MLPs on the core's features (no LSTM in between)."""
        extractor: RowsExtractor = self.features_extractor  # type: ignore[assignment]
        core = self._given_core
        if core is None:
            core = MemoryCore(extractor.layout.size, self.memory_config, extractor.image_layout)
        elif core.row_size != extractor.layout.size:
            raise ValueError(
                f"the given core embeds rows of {core.row_size} entries but this environment's observations give "
                f"rows of {extractor.layout.size}: it was built for another environment"
            )
        self.core = core
        object.__setattr__(self, "_given_core", None)
        self.features_dim = core.features_dim
        ActorCriticPolicy._build_mlp_extractor(self)

    @property
    def lstm_actor(self) -> SimpleNamespace:
        """What ``RecurrentPPO`` reads to size its state buffers: one "layer" of ``S`` floats."""
        return SimpleNamespace(num_layers=1, hidden_size=self.state_size)

    # ------------------------------------------------------------------------------------------------- state
    def unpack(self, state: State) -> tuple[MemoryState, Tensor]:
        """``(hidden, cell)`` ``[1, n, S]`` -> (the :class:`MemoryState` of ``n`` episodes, the step clock ``[n]``).

        Raises:
            ValueError: a state of another shape, or one holding NaN or inf.
        """
        size = self.core.memory.memory_size
        shapes = [tuple(x.shape) for x in state[:2]]
        if len(state) < 2 or any(len(s) != 3 or s[0] != 1 or s[2] != self.state_size for s in shapes):
            raise ValueError(
                f"the recurrent state must be (hidden, cell), each [1, n_envs, {self.state_size}] (the memory size); "
                f"got shapes {shapes}: pass the state this model's predict() returned, or None to start anew"
            )
        if not (bool(torch.isfinite(state[0]).all()) and bool(torch.isfinite(state[1]).all())):
            raise ValueError("the recurrent state holds NaN or inf: it did not come from this model's predict(); pass "
                             "None to start anew")  # fmt: skip
        cell = state[1][0]
        memory_state = self.core.memory.from_deviation(state[0][0, :, :size], cell[:, 0].round().long())
        return memory_state, cell[:, 1].round().long()

    def pack(self, memory_state: MemoryState, clock: Tensor) -> State:
        """The inverse of :meth:`unpack`."""
        delta = self.core.memory.deviation(memory_state)  # [n, memory_size]
        n = delta.shape[0]
        hidden = delta.new_zeros(n, self.state_size)
        hidden[:, : delta.shape[1]] = delta
        cell = torch.zeros_like(hidden)
        cell[:, 0] = memory_state.num_written.to(hidden.dtype)
        cell[:, 1] = clock.to(hidden.dtype)
        return hidden.unsqueeze(0), cell.unsqueeze(0)

    # ------------------------------------------------------------------------------------------------ unroll
    def unroll(
        self,
        obs: Any,
        state: State,
        episode_starts: Tensor,
        step_states: State | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, State | None]:
        """Features of a batch of sequences and the state after them.

        Args:
            obs: raw observations, ``n_seq * T`` of them ordered sequence by sequence (RecurrentPPO's layout;
                ``T = 1`` when collecting rollouts, ``n_seq`` = number of envs).
            state: the state before the first step of each sequence, ``[1, n_seq, S]`` each.
            episode_starts: ``[n_seq * T]``, 1 where a new episode starts (the memory is reset before that step).
            step_states: with ``bptt_steps``, the state before every step (``[1, n_seq * T, S]`` each) as the
                rollout stored it (:class:`EBMMRecurrentPPO`).
            valid: with ``bptt_steps``, optional ``[n_seq * T]`` bool, the steps that are not padding; only these
                are computed, the others get zero features (RecurrentPPO masks them out of its loss).

        Returns:
            ``(features [n_seq * T, F], the state after the last step, or None in a windowed update)``.
        """
        n_seq = state[0].shape[1]
        rows = self.features_extractor(obs)  # [n_seq * T, D]
        starts = episode_starts.reshape(n_seq, -1) > 0.5  # [n_seq, T]
        T = starts.shape[1]
        memory_state, clock = self.unpack(state)
        if not torch.is_grad_enabled() and T == 1:  # a rollout or predict step: read and write in lockstep
            self._watch_rows(rows)
            features, after = self.core.step(rows, memory_state, clock, starts[:, 0])
            return features, self.pack(after, clock + 1)
        window = self.bptt_steps if torch.is_grad_enabled() else None
        stored = keep = None
        if window is not None and step_states is not None:
            stored, _ = self.unpack(step_states)
            if valid is not None and not bool(valid.all()):
                keep = valid.reshape(-1).nonzero().squeeze(1)  # the real steps; padding costs nothing
        features, after, aux = self.core.unroll(
            rows.reshape(n_seq, T, -1), starts, memory_state, clock, window, stored, keep, self.aux_coef
        )
        if keep is not None:
            features = features.new_zeros(n_seq * T, features.shape[1]).index_copy(0, keep, features)
        if aux is not None:
            features = inject_loss(features, aux, self.aux_coef)
        return features, None if after is None else self.pack(after, clock + T)

    def _watch_rows(self, rows: Tensor) -> None:
        """Warn once if the first rollout rows barely vary (an observation of small codes mapped from [0, 255])."""
        if self._rows_seen >= ROW_CHECK_STEPS:
            return
        lo, hi = rows.min(dim=0).values, rows.max(dim=0).values
        if self._row_range is not None:
            lo, hi = torch.minimum(lo, self._row_range[0]), torch.maximum(hi, self._row_range[1])
        self._row_range = (lo, hi)
        self._rows_seen += rows.shape[0]
        if self._rows_seen >= ROW_CHECK_STEPS:
            spread = float((hi - lo).max())
            if spread < 0.1:
                warnings.warn(
                    f"the memory rows of the first {self._rows_seen} rollout steps barely vary (largest range of an "
                    f"entry {spread:.3g} of 2): the memory can hardly tell steps apart. If the observation holds small "
                    "integer codes in a uint8 Box (MiniGrid's symbolic grid), pass policy_kwargs=dict("
                    "features_extractor_kwargs=dict(codes=<number of codes>)); if its entries are tiny, scale them",
                    stacklevel=2,
                )

    # ------------------------------------------------------------------------------------ RecurrentPPO hooks
    def obs_to_tensor(self, observation: Any) -> Any:
        """SB3's conversion, after checking that ``observation`` fits (or naming the wrapper it lacks)."""
        space = self.observation_space
        if isinstance(space, spaces.Dict) and all(k in space.spaces for k in PreviousActionReward.KEYS):
            if not (isinstance(observation, dict) and all(k in observation for k in PreviousActionReward.KEYS)):
                raise ValueError(
                    "this model also reads the previous action and reward ('prev_action', 'prev_reward'): step it "
                    "on model.get_env(), or on env = ebmm_rl.PreviousActionReward(env) (evaluate_policy(model, env) "
                    "too)"
                )
        check_model_observation(observation, space)
        return super().obs_to_tensor(observation)

    def forward(
        self, obs: Any, lstm_states: RNNStates, episode_starts: Tensor, deterministic: bool = False
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

    def get_distribution(self, obs: Any, lstm_states: State, episode_starts: Tensor) -> tuple[Distribution, State]:
        """The action distribution and the next state (``predict``)."""
        features, state = self.unroll(obs, lstm_states, episode_starts)
        latent_pi = self.mlp_extractor.forward_actor(features)
        return self._get_action_dist_from_latent(latent_pi), state

    def predict_values(self, obs: Any, lstm_states: State, episode_starts: Tensor) -> Tensor:
        """Values of ``obs`` (bootstrapping at the end of a rollout)."""
        features, _ = self.unroll(obs, lstm_states, episode_starts)
        return self.value_net(self.mlp_extractor.forward_critic(features))

    def evaluate_actions(
        self, obs: Any, actions: Tensor, lstm_states: RNNStates, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Values, log-probabilities and entropy of ``actions`` (PPO update, gradients through the writes).

        :class:`EBMMRecurrentPPO`'s buffer hands over the stored state of every step in ``lstm_states.vf`` (the
        critic shares the actor's memory, so that slot is free) and the padding mask as its third entry.
        """
        step_states = valid = None
        if self.bptt_steps is not None and lstm_states.vf[0].shape[1] == episode_starts.numel():
            step_states = (lstm_states.vf[0], lstm_states.vf[1])
            valid = lstm_states.vf[2] if len(lstm_states.vf) > 2 else None
        features, _ = self.unroll(obs, lstm_states.pi, episode_starts, step_states, valid)
        latent_pi = self.mlp_extractor.forward_actor(features)
        # the value loss trains the critic's head only, as sb3-contrib does for a shared LSTM (shared_lstm=True)
        latent_vf = self.mlp_extractor.forward_critic(features if self.critic_gradient else features.detach())
        distribution = self._get_action_dist_from_latent(latent_pi)
        if isinstance(self.action_space, spaces.MultiBinary):  # the recurrent buffer hands them over as int8
            actions = actions.float()
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()


class _StepStates:
    """Rollout-buffer mixin: samples carry the stored state of every step and the padding mask in ``lstm_states.vf``.

    ``lstm_states.vf`` is ``(hidden [1, n, S], cell [1, n, S], valid [n] bool)`` for the ``n`` padded steps.
    """

    def _get_samples(self, batch_inds: np.ndarray, env_change: np.ndarray, env: Any = None) -> Any:
        samples = super()._get_samples(batch_inds, env_change, env)  # type: ignore[misc]
        size = self.hidden_states_pi.shape[-1]  # type: ignore[attr-defined]
        hidden = self.pad(self.hidden_states_pi[batch_inds]).reshape(1, -1, size)  # type: ignore[attr-defined]
        cell = self.pad(self.cell_states_pi[batch_inds]).reshape(1, -1, size)  # type: ignore[attr-defined]
        valid = samples.mask > 0.5
        return samples._replace(lstm_states=RNNStates(samples.lstm_states.pi, (hidden, cell, valid)))


class _StepStatesBuffer(_StepStates, RecurrentRolloutBuffer):
    pass


class _StepStatesDictBuffer(_StepStates, RecurrentDictRolloutBuffer):
    pass


class EBMMRecurrentPPO(RecurrentPPO):
    """``RecurrentPPO`` for :class:`EBMMRecurrentPolicy`: the previous action and reward, and windowed updates.

    * The environment is wrapped with :class:`~ebmm_rl.rl.wrappers.PreviousActionReward` (also when the model is
      loaded with an env or given one by ``set_env``), so every row holds the previous action and reward.
    * The rollout buffer keeps every step's state, and the policy's ``bptt_steps`` defaults to
      :data:`DEFAULT_BPTT_STEPS`: an update backpropagates each read through its last ``bptt_steps`` writes,
      starting from the state the rollout stored (the weights of the rollout, up to ``n_epochs`` updates old: the
      "stored state" of recurrent replay, Kapturowski et al. 2019), as ``bptt_steps`` batched writes.

    Takes RecurrentPPO's arguments; ``policy`` defaults to :class:`EBMMRecurrentPolicy`.

    Raises:
        ValueError: an observation space SB3's rollout buffers cannot store (``Tuple``, nested ``Dict``); the
            message names :class:`~ebmm_rl.rl.wrappers.RowObservation`, which fixes it.
    """

    def __init__(self, policy: Any = None, env: Any = None, *args: Any, **kwargs: Any) -> None:
        policy = EBMMRecurrentPolicy if policy is None else policy
        if hasattr(env, "observation_space"):  # SB3 would stop at a Tuple or nested Dict without naming the fix
            _check_storable(env.observation_space)
        policy_kwargs = dict(kwargs.pop("policy_kwargs", None) or {})
        policy_kwargs.setdefault("bptt_steps", DEFAULT_BPTT_STEPS)
        super().__init__(policy, env, *args, policy_kwargs=policy_kwargs, **kwargs)

    @staticmethod
    def _wrap_env(env: Any, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        venv = RecurrentPPO._wrap_env(env, verbose, monitor_wrapper)
        space = venv.observation_space
        if isinstance(space, spaces.Dict) and all(k in space.spaces for k in PreviousActionReward.KEYS):
            return venv  # wrapped already
        return PreviousActionReward(venv)

    def _setup_model(self) -> None:
        super()._setup_model()
        if not isinstance(self.policy, EBMMRecurrentPolicy):
            raise ValueError(f"EBMMRecurrentPPO needs EBMMRecurrentPolicy, got {type(self.policy).__name__}")
        old = self.rollout_buffer
        cls = _StepStatesDictBuffer if isinstance(old, RecurrentDictRolloutBuffer) else _StepStatesBuffer
        lstm = self.policy.lstm_actor
        self.rollout_buffer = cls(
            self.n_steps,
            self.observation_space,
            self.action_space,
            (self.n_steps, lstm.num_layers, self.n_envs, lstm.hidden_size),
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )


def _check_storable(space: spaces.Space) -> None:
    """Raise ValueError, naming the wrapper that fixes it, for a space SB3's rollout buffers cannot store.

    SB3 stores ``Box``, ``Discrete``, ``MultiDiscrete``, ``MultiBinary`` and flat ``Dict`` observations; it rejects
    ``Tuple`` and nested ``Dict`` spaces with a bare ``NotImplementedError`` while building its buffer.
    """
    parts = space.spaces.values() if isinstance(space, spaces.Dict) else ()
    if isinstance(space, spaces.Tuple) or any(isinstance(s, spaces.Dict | spaces.Tuple) for s in parts):
        raise ValueError(
            f"SB3's rollout buffers cannot store this observation space ({space}); wrap the environment so that "
            "each observation becomes one flat row: env = ebmm_rl.RowObservation(env) (with a VecEnv: "
            "make_vec_env(..., wrapper_class=RowObservation))"
        )
    if not isinstance(space, spaces.Box | spaces.Discrete | spaces.MultiDiscrete | spaces.MultiBinary | spaces.Dict):
        raise ValueError(
            f"{type(space).__name__} observations cannot be stored in a memory row ({space}); supported: Box, "
            "Discrete, MultiDiscrete, MultiBinary and Dict of these. Wrap the env with an ObservationWrapper that "
            "turns it into one of these (a Text mission: drop it, as minigrid's ImgObsWrapper does)"
        )

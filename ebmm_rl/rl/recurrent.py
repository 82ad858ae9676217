"""``EBMMRecurrentPolicy``: an EBMM memory as the recurrent core of sb3-contrib's ``RecurrentPPO``.

Recipe (any environment, unwrapped, as ``RecurrentPPO("MlpLstmPolicy", env)``)::

    model = RecurrentPPO(EBMMRecurrentPolicy, gym.make("CartPole-v1"))

Where :class:`~ebmm_rl.rl.extractor.EBMMExtractor` rebuilds each observation's memory from its ``"history"``, this
policy carries the memory across env steps as RecurrentPPO carries LSTM state: the recurrent state is the fast
weights (as the deviation ``θ − θ̄``, so that the all-zero state RecurrentPPO starts from and resets to is ``θ̄``)
and the number of patterns written. Nothing is stored in the observation.

* On a raw environment (any space of :data:`~ebmm_rl.rl.rows.SUPPORTED_SPACES` that SB3 takes; ``Tuple`` and
  nested ``Dict`` through :class:`~ebmm_rl.rl.wrappers.RowObservation`, which can also add the previous action and
  reward) each step's observation becomes a row (:class:`~ebmm_rl.rl.rows.RowLayout`), is encoded into a pattern,
  is read with (the memory holds the episode's earlier steps), then written: one write and one read per step,
  whatever the episode's length.
* On an ``ebmm/...`` probe wrapped by :class:`~ebmm_rl.rl.wrappers.EpisodeMemoryWrapper` (its probe protocol) each
  step writes the pattern stored since the previous step (the newest row of ``"history"``), then reads with
  ``"query"``, so only the probe's write steps are stored.

RecurrentPPO stores the state once per sequence start and unrolls each minibatch sequence from it with gradients
through every write (truncated backpropagation through the sequence, as for an LSTM), so an update writes each
step once.

State layout (RecurrentPPO's ``(hidden, cell)`` pair, each ``[1, n_envs, memory_size]``): ``hidden`` holds
``θ − θ̄`` flattened in the order of ``memory.energy.memory_parameters()``; ``cell[..., 0]`` holds the number of
patterns written, the rest is zero. The actor and the critic share the memory (``RNNStates.vf`` is ``.pi``).
"""

from __future__ import annotations

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
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn

from ebmm_rl.memory import MemoryState
from ebmm_rl.rl.extractor import EBMMExtractor, _lengths, inject_loss
from ebmm_rl.rl.rows import RowsBox, check_model_observation

__all__ = ["EBMMRecurrentPPO", "EBMMRecurrentPolicy"]

State = tuple[Tensor, Tensor]
"""``(hidden [1, n, memory_size], cell [1, n, memory_size])``: ``θ − θ̄`` and the count of written patterns."""


class EBMMRecurrentPolicy(RecurrentActorCriticPolicy):
    """RecurrentPPO policy whose recurrent core is an EBMM memory (online writing, one pattern per step).

    Takes the arguments of SB3's ``ActorCriticPolicy``; ``features_extractor_kwargs`` configure the
    :class:`EBMMExtractor` that holds the encoder and the memory and builds the features (``memory``, ``energy``,
    ``ebmm``, ``encoder``, ``pattern_size``, ``freeze_memory``, ``net_arch``, ``aux_coef``; on the probes also
    ``similarities``; ``chunk_size`` must be 1). There is no LSTM: the MLP heads (``net_arch``) sit on the memory
    features.

    ``bptt_steps`` (raw observations only) truncates the gradient of an update: ``None`` backpropagates every read
    through every write since the start of its minibatch sequence (as RecurrentPPO does for an LSTM, ``T``
    sequential writes with a graph); ``k`` backpropagates each read through the last ``k`` writes before it
    only. The memory before those ``k`` writes is computed first without a graph, with the current weights, and
    enters as a constant deviation from ``θ̄`` (as the sequence's stored start state does). The ``k`` writes then
    run for every step of the minibatch at once, as ``k`` batched writes instead of ``T`` sequential ones. The
    features are the same for every ``bptt_steps``; only the gradient changes. Measured in ``docs/rl.md``.

    Raises:
        ValueError: ``share_features_extractor=False``, a features extractor other than :class:`EBMMExtractor`,
            ``chunk_size != 1``, or an observation space made by ``EpisodeMemoryWrapper``'s generic protocol (the
            recurrent route needs no history: pass the raw env or :class:`~ebmm_rl.rl.wrappers.RowObservation`).
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
        bptt_steps: int | None = None,
    ) -> None:
        if bptt_steps is not None and (
            isinstance(bptt_steps, bool) or not isinstance(bptt_steps, int) or bptt_steps < 1
        ):
            raise ValueError(f"bptt_steps must be None (the whole sequence) or an int >= 1, got {bptt_steps!r}")
        if not share_features_extractor:
            raise ValueError("EBMMRecurrentPolicy keeps one memory for the actor and the critic: use the default "
                             "share_features_extractor=True")  # fmt: skip
        if not (isinstance(features_extractor_class, type) and issubclass(features_extractor_class, EBMMExtractor)):
            raise ValueError(f"EBMMRecurrentPolicy needs features_extractor_class=EBMMExtractor (the memory lives "
                             f"there), got {features_extractor_class}")  # fmt: skip
        if int((features_extractor_kwargs or {}).get("chunk_size", 1)) != 1:
            raise ValueError("EBMMRecurrentPolicy writes one pattern per env step: chunk_size must be 1 (use the "
                             "EBMMExtractor route with PPO for chunked writing)")  # fmt: skip
        history = observation_space.spaces.get("history") if isinstance(observation_space, spaces.Dict) else None
        if isinstance(history, RowsBox) and history.layout is not None:
            raise ValueError("EBMMRecurrentPolicy carries the memory itself and needs no history: pass the raw env "
                             "(or RowObservation(env, include_action_reward=True)) instead of EpisodeMemoryWrapper's "
                             "generic protocol")  # fmt: skip
        features_extractor_kwargs = {**(features_extractor_kwargs or {}), "recurrent": True}
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
        if bptt_steps is not None and self.features_extractor.mode != "rows":
            raise ValueError("bptt_steps applies to the raw-observation route; on EpisodeMemoryWrapper's probe "
                             "protocol leave it None")  # fmt: skip
        self.bptt_steps = bptt_steps
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

    def unroll(
        self,
        obs: Any,
        state: State,
        episode_starts: Tensor,
        step_states: State | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, State]:
        """Features of a batch of sequences and the state after them.

        Args:
            obs: observations (not preprocessed), ``n_seq * T`` rows ordered sequence by sequence (RecurrentPPO's
                layout; ``T = 1`` when collecting rollouts, ``n_seq`` = number of envs).
            state: the state before the first step of each sequence, ``[1, n_seq, S]`` each.
            episode_starts: ``[n_seq * T]`` 1 where a new episode starts (the memory is reset to ``θ̄`` before that
                step).
            step_states: optional, the state before every step, ``[1, n_seq * T, S]`` each, as the rollout stored
                it (:class:`EBMMRecurrentPPO`); used with ``bptt_steps`` during updates instead of recomputing the
                chain of writes.
            valid: optional ``[n_seq * T]`` bool, the steps that are not padding (RecurrentPPO pads every
                minibatch sequence to the longest one and masks the padding out of its loss). With ``bptt_steps``
                and no auxiliary loss, only these steps are written and read (each step's truncated chain lies
                inside its own sequence, and padding only follows a sequence's real steps); the features of the
                others are zeros. Ignored otherwise.

        Returns:
            ``(features [n_seq * T, features_dim], state after the last step)``.
        """
        ext: EBMMExtractor = self.features_extractor  # type: ignore[assignment]
        n_seq = state[0].shape[1]
        starts = episode_starts.reshape(n_seq, -1) > 0.5  # [n_seq, T]
        create_graph = ext.needs_graph()
        memory_state = self._to_memory(state)
        if ext.mode == "history":
            pre = preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
            lengths = _lengths(pre["history_len"], ext.max_patterns).reshape(n_seq, -1)  # [n_seq, T]
            patterns = ext.encode(pre["history"]).reshape(n_seq, lengths.shape[1], *pre["history"].shape[1:-1], -1)
            queries = ext.encode(pre["query"])  # [n_seq * T, P]
            phase = pre["phase"].reshape(queries.shape[0], -1) if "phase" in ext.features else None
        else:
            queries = ext.encode(ext.rows(obs))  # [n_seq * T, P]
            patterns = queries.reshape(n_seq, -1, queries.shape[-1])  # [n_seq, T, P]
        ext.memory.check_patterns(patterns.reshape(patterns.shape[0], -1, patterns.shape[-1]), "encoded rows")
        if ext.mode == "rows":  # read with each step's row from the earlier steps' memory, then write the row
            if not torch.is_grad_enabled() and starts.shape[1] == 1:  # a rollout step: write and read in lockstep
                memory_state = self._reset(memory_state, starts[:, 0]) if bool(starts.any()) else memory_state
                after, result = ext.memory.write_and_read(patterns, queries.unsqueeze(1), memory_state, check=False)
                features = ext.read_features(queries, memory_state, result=result)
                return ext.head(features), self._from_memory(after)
            if create_graph and self.bptt_steps is not None:
                if step_states is None:
                    chain, memory_state = self._chain(patterns, starts, memory_state, create_graph=False)
                else:  # the rollout's stored state of every step (EBMMRecurrentPPO); the state after is not needed
                    chain = self._reset(self._to_memory(step_states), starts.reshape(-1))
                keep = None
                if valid is not None and ext.aux_coef == 0 and not bool(valid.all()):
                    keep = valid.reshape(-1).nonzero().squeeze(1)  # the real steps; padding costs nothing
                stacked = self._truncated_steps(patterns, starts, chain, self.bptt_steps, keep)
                if keep is not None:
                    features = ext.head(ext.read_features(queries[keep], stacked))
                    full = features.new_zeros(queries.shape[0], features.shape[1])
                    return full.index_copy(0, keep, features), self._from_memory(memory_state)
            else:
                stacked, memory_state = self._chain(patterns, starts, memory_state, create_graph)
            features = ext.read_features(queries, stacked)  # one batched read over every (sequence, step)
            if ext.aux_coef > 0 and create_graph:
                features = self._with_aux_loss(features, patterns, starts, stacked)
            return ext.head(features), self._from_memory(memory_state)
        steps: list[MemoryState] = []  # the memory each step reads from
        schedule = ext.memory.schedule(create_graph)  # one copy of the rates for every write of the sequence
        for t in range(starts.shape[1]):
            if bool(starts[:, t].any()):  # reset: θ̄ and nothing written
                memory_state = self._reset(memory_state, starts[:, t])
            # the rows stored since the last step, then read
            memory_state = ext.write_new(patterns[:, t], lengths[:, t], memory_state, create_graph, schedule)
            steps.append(memory_state)
        # Reads do not depend on each other: one batched read over every (sequence, step), sequence-major.
        stacked = _stack_steps(steps)  # [n_seq * T, ...]
        stored = patterns.flatten(0, 1) if "similarities" in ext.features else None  # [n_seq * T, L, P]
        features = ext.read_features(queries, stacked, phase, stored, lengths.flatten())
        return ext.head(features), self._from_memory(memory_state)

    def _reset(self, memory_state: MemoryState, reset: Tensor) -> MemoryState:
        """``memory_state`` with the episodes where ``reset`` ([n] bool) holds set back to ``θ̄`` and nothing written."""
        theta_bar = self.features_extractor.memory.energy.memory_parameters()
        fast = {
            n: torch.where(reset.view(-1, *[1] * (w.dim() - 1)), theta_bar[n].unsqueeze(0), w)
            for n, w in memory_state.fast_weights.items()
        }
        return MemoryState(fast, torch.where(reset, 0, memory_state.num_written))

    def _chain(
        self, patterns: Tensor, starts: Tensor, initial: MemoryState, create_graph: bool
    ) -> tuple[MemoryState, MemoryState]:
        """The memory every step reads from (after its reset) and the memory after the last step: ``T`` writes.

        Args:
            patterns: ``[n_seq, T, P]`` encoded rows.
            starts: ``[n_seq, T]`` bool, an episode starts at that step.
            initial: the memory before step 0 of each sequence.
            create_graph: keep the graph through every write (the whole-sequence gradient).

        Returns:
            ``(memories [n_seq * T] sequence-major, the memory after the last step)``.
        """
        memory = self.features_extractor.memory
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            schedule = memory.schedule(create_graph)  # one copy of the rates for the T writes
            chain, state = [], initial
            for t in range(patterns.shape[1]):
                if bool(starts[:, t].any()):
                    state = self._reset(state, starts[:, t])
                chain.append(state)
                state = memory.write(
                    patterns[:, t : t + 1], state, create_graph=create_graph, check=False, schedule=schedule
                )
        return _stack_steps(chain), state

    def _truncated_steps(
        self, patterns: Tensor, starts: Tensor, chain: MemoryState, k: int, keep: Tensor | None = None
    ) -> MemoryState:
        """The memory each step reads from, with gradients through its last ``k`` writes only (``bptt_steps``).

        Args:
            patterns: ``[n_seq, T, P]`` encoded rows.
            starts: ``[n_seq, T]`` bool, an episode starts at that step (the memory is reset before it).
            chain: ``[n_seq * T]`` sequence-major, the memory each step reads from, without a graph (after the
                step's reset): recomputed by :meth:`_chain`, or stored by the rollout (:class:`EBMMRecurrentPPO`).
            k: writes with a graph per read.
            keep: optional indices into the ``n_seq * T`` steps: compute only these (in this order).

        Returns:
            ``[n_seq * T]`` sequence-major (or ``[len(keep)]``): step ``t`` reads from rows ``max(t - k, 0) .. t - 1``
            written with a graph onto ``θ̄ + const``, ``const`` the deviation of ``chain`` at step ``max(t - k, 0)``,
            with the episode resets in between (and at ``t``).
        """
        memory = self.features_extractor.memory
        n_seq, T, _ = patterns.shape
        theta_bar = memory.energy.memory_parameters()
        t_flat = torch.arange(T, device=patterns.device).repeat(n_seq)  # [n_seq * T]
        seq_offset = torch.arange(n_seq, device=patterns.device).repeat_interleave(T) * T  # [n_seq * T]
        if keep is not None:
            t_flat, seq_offset = t_flat[keep], seq_offset[keep]
        base_t = (t_flat - k).clamp(min=0)  # the step each read's chain starts from
        base = seq_offset + base_t
        fast = {n: theta_bar[n].unsqueeze(0) + (w[base] - theta_bar[n]).detach() for n, w in chain.fast_weights.items()}
        current = MemoryState(fast, chain.num_written[base])
        starts_flat = starts.reshape(-1)
        flat_patterns = patterns.reshape(n_seq * T, -1)
        schedule = memory.schedule(create_graph=True)
        for j in range(k):
            r = t_flat - k + j  # the row this round writes, for every (sequence, step)
            valid = r >= base_t  # rows before a chain's start (t < k) are not written
            index = seq_offset + r.clamp(min=0)
            reset = valid & (r > base_t) & starts_flat[index]  # an episode starts at row r
            if bool(reset.any()):
                current = self._reset(current, reset)
            rows = flat_patterns[index].unsqueeze(1)  # [n_seq * T, 1, P]
            current = memory.write(
                rows, current, pattern_mask=valid.unsqueeze(1), create_graph=True, check=False, schedule=schedule
            )
        at_start = starts_flat[seq_offset + t_flat] & (t_flat > base_t)  # the reading step itself begins an episode
        if bool(at_start.any()):
            current = self._reset(current, at_start)
        return current

    def _with_aux_loss(self, features: Tensor, patterns: Tensor, starts: Tensor, stacked: MemoryState) -> Tensor:
        """Add the extractor's auxiliary loss: at each step, read back the previous step's pattern (just written).

        Args:
            features: ``[n_seq * T, F]``.
            patterns: ``[n_seq, T, P]`` this batch's encoded rows.
            starts: ``[n_seq, T]`` episode starts.
            stacked: the memory each step reads from, ``[n_seq * T]`` sequence-major (step ``t`` holds the rows
                before ``t``).
        """
        ext: EBMMExtractor = self.features_extractor  # type: ignore[assignment]
        n_seq, T, _ = patterns.shape
        if T < 2:
            return features
        # Step t (t >= 1, not an episode start) holds row t - 1; its memory is steps[t].
        valid = ~starts[:, 1:]  # [n_seq, T - 1]
        later = (torch.arange(n_seq * T, device=patterns.device) % T) >= 1  # steps t >= 1
        stacked = MemoryState({n: w[later] for n, w in stacked.fast_weights.items()}, stacked.num_written[later])
        previous = patterns[:, :-1].reshape(n_seq * (T - 1), 1, -1)  # [n_seq * (T - 1), 1, P]
        loss = ext.aux_loss(previous, valid.reshape(-1, 1), stacked)
        return features if loss is None else inject_loss(features, loss, ext.aux_coef)

    # ------------------------------------------------------------------------------------ RecurrentPPO hooks
    def obs_to_tensor(self, observation: Any) -> Any:
        """SB3's conversion, after checking that ``observation`` fits (or naming the wrapper it lacks)."""
        check_model_observation(observation, self.observation_space)
        return super().obs_to_tensor(observation)

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
        """Values, log-probabilities and entropy of ``actions`` (PPO update, gradients through the sequence).

        :class:`EBMMRecurrentPPO`'s buffer hands over the stored state of every step in ``lstm_states.vf`` (the
        critic shares the actor's memory, so that slot is free), and the padding mask as its third entry; with
        ``bptt_steps`` they are used and padded steps are not computed (their outputs are those of zero features,
        which PPO's loss masks out).
        """
        step_states = valid = None
        if self.bptt_steps is not None and lstm_states.vf[0].shape[1] == episode_starts.numel():
            step_states = (lstm_states.vf[0], lstm_states.vf[1])
            valid = lstm_states.vf[2] if len(lstm_states.vf) > 2 else None
        features, _ = self.unroll(obs, lstm_states.pi, episode_starts, step_states, valid)
        latent_pi, latent_vf = self.mlp_extractor(features)
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
    """``RecurrentPPO`` whose updates start each read's truncated gradient from the state the rollout stored.

    With ``EBMMRecurrentPolicy(bptt_steps=k)`` (the default here: ``k = 1``) an update needs the memory before
    every step. Plain ``RecurrentPPO`` keeps only each sequence's first state, so the policy recomputes the others
    by ``T`` sequential writes without a graph; this class's rollout buffer keeps every step's state (RecurrentPPO
    stores it anyway) and hands it over, so that an update is ``k`` batched writes with a graph and no sequential
    chain. The stored states come from the weights of the rollout, up to ``n_epochs`` updates old (the "stored
    state" of recurrent replay in R2D2, Kapturowski et al. 2019); the chain recomputed by plain RecurrentPPO uses
    the current weights. Takes RecurrentPPO's arguments. With the smaller memory
    :data:`~ebmm_rl.rl.extractor.FAST_RL_MEMORY` (``policy_kwargs=dict(features_extractor_kwargs=FAST_RL_MEMORY)``)
    it trained faster than RecurrentPPO's LSTM on masked CartPole (``docs/rl.md``).

    Raises:
        ValueError: the environment's observation space is one SB3's rollout buffers cannot store (``Tuple``,
            nested ``Dict``); the message names :class:`~ebmm_rl.rl.wrappers.RowObservation`, which fixes it.
    """

    def __init__(self, policy: Any = None, env: Any = None, *args: Any, **kwargs: Any) -> None:
        policy = EBMMRecurrentPolicy if policy is None else policy
        if hasattr(env, "observation_space"):  # SB3 would stop at a Tuple or nested Dict without naming the fix
            _check_storable(env.observation_space)
        policy_kwargs = dict(kwargs.pop("policy_kwargs", None) or {})
        policy_kwargs.setdefault("bptt_steps", 1)
        super().__init__(policy, env, *args, policy_kwargs=policy_kwargs, **kwargs)

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


def _stack_steps(steps: list[MemoryState]) -> MemoryState:
    """The memories of ``T`` steps of ``n_seq`` sequences as one batch of ``n_seq * T`` episodes, sequence-major."""
    return MemoryState(
        {n: torch.stack([s.fast_weights[n] for s in steps], 1).flatten(0, 1) for n in steps[0].fast_weights},
        torch.stack([s.num_written for s in steps], 1).flatten(),
    )

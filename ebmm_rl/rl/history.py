"""What the memory extractors over ``EpisodeMemoryWrapper`` observations share (``"history"`` mode).

:class:`HistoryFeaturesExtractor` is the base of :class:`~ebmm_rl.rl.extractor.EBMMExtractor` and
:class:`~ebmm_rl.rl.memory_extractor.MemoryExtractor`: the observation space check, the feature parts, the MLP head
and SB3's ``forward``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import obs_as_tensor
from torch import Tensor, nn

from ebmm_rl.rl.rows import RowLayout, RowsBox

__all__ = ["FEATURE_PARTS", "HistoryFeaturesExtractor", "feature_parts", "history_lengths", "similarity_features"]

_REQUIRED_KEYS = ("history", "history_len", "query")

FEATURE_PARTS = ("retrieved", "energies", "query", "phase", "similarities")
"""Names of the parts a memory extractor's features can hold."""


class HistoryFeaturesExtractor(BaseFeaturesExtractor):
    """What every memory extractor shares: the observation space, the feature parts, the head, ``forward``, ``apply``.

    The observation space is :class:`~ebmm_rl.rl.wrappers.EpisodeMemoryWrapper`'s ``Dict`` (``history``,
    ``history_len``, ``query``): every observation carries its episode's rows, so the features are a function of
    the observation alone, as PPO and A2C need.

    A subclass builds its memory, then calls :meth:`_build_head`, and implements ``_raw_features(obs) -> [B, F]``
    (the chosen parts, concatenated in :attr:`features` order). ``PARTS`` lists the part names it can compute.

    Args:
        observation_space: ``EpisodeMemoryWrapper``'s space.
        similarities: add the ``similarities`` part to the default parts.
        features: the parts to use, in order, from ``PARTS`` (default: every part but ``similarities``).

    Attributes:
        row_size: ``D``, entries of a row; ``row_range``: the box rows lie in.
        layout: the :class:`~ebmm_rl.rl.rows.RowLayout` of the rows' parts (``None`` for a probe's patterns).
        max_patterns: ``L``, rows of ``"history"``.
        pattern_size, data_range: what the memory stores (the rows themselves unless a subclass encodes them).
    """

    PARTS: tuple[str, ...] = FEATURE_PARTS

    def __init__(
        self,
        observation_space: spaces.Space,
        similarities: bool = False,
        features: Sequence[str] | None = None,
    ) -> None:
        owner = type(self).__name__
        _check_space(observation_space, owner=owner)
        super().__init__(observation_space, features_dim=1)  # the real size is found by _build_head's dry pass
        history_space = observation_space["history"]
        self.max_patterns, self.row_size = (int(n) for n in history_space.shape)
        self.row_range = (float(np.min(history_space.low)), float(np.max(history_space.high)))
        self.layout: RowLayout | None = history_space.layout if isinstance(history_space, RowsBox) else None
        has_phase = isinstance(observation_space.spaces.get("phase"), spaces.Discrete)
        self.pattern_size, self.data_range = self.row_size, self.row_range
        self.features = feature_parts(features, similarities, has_phase, self.PARTS, owner)
        self.head: nn.Module = nn.Identity()

    def _build_head(self, observation_space: spaces.Space, net_arch: Sequence[int]) -> None:
        """Size the raw features by a dry pass on an empty history, then add the ReLU MLP ``net_arch`` on top."""
        bad = [w for w in net_arch if isinstance(w, bool) or not isinstance(w, int | np.integer) or w < 1]
        if bad:
            raise ValueError(f"net_arch must be a list of layer widths >= 1, got {list(net_arch)}")
        with torch.no_grad():
            size = self._dry_features(observation_space).shape[1]
        layers: list[nn.Module] = []
        for width in net_arch:
            layers += [nn.Linear(size, int(width)), nn.ReLU()]
            size = int(width)
        if layers:
            self.head = nn.Sequential(*layers)
        self._features_dim = size

    def _dry_features(self, observation_space: spaces.Space) -> Tensor:
        return self._raw_features(_dummy_observation(observation_space))

    def _raw_features(self, obs: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        """Features ``[B, features_dim]`` of a batch of preprocessed observations (SB3's ``preprocess_obs``).

        Args:
            observations: ``history: [B, L, D]``, ``history_len: [B, L + 1]`` (one-hot; ``[B, 1, L + 1]`` from a
                rollout buffer) or ``[B]``/``[B, 1]``, ``query: [B, D]``, ``phase: [B, 3]`` (one-hot), other keys
                ignored.

        Raises:
            ValueError: a key of the wrapper's observation is missing, or the batch is empty.
        """
        missing = [k for k in _REQUIRED_KEYS if k not in observations]
        if missing:
            raise ValueError(f"{type(self).__name__}: the observation lacks {missing}; it must come from the "
                             "EpisodeMemoryWrapper the model was built with")  # fmt: skip
        if observations["history"].shape[0] == 0:
            raise ValueError(f"{type(self).__name__}: the batch of observations is empty")
        return self.head(self._raw_features(observations))

    def apply(self, fn) -> HistoryFeaturesExtractor:  # noqa: ANN001
        """Apply ``fn`` to the head only: the memory keeps its own initialisation.

        SB3's ``ActorCriticPolicy`` (``ortho_init=True``, the default) re-initialises every ``nn.Linear`` of the
        features extractor orthogonally through ``apply``; that would overwrite a pre-trained memory and the
        memories' own initialisations (an energy network's He init, MemNet's identity attention maps, the core's
        query maps).
        """
        self.head.apply(fn)
        fn(self)
        return self


def _check_space(space: spaces.Space, owner: str = "EBMMExtractor") -> None:
    """Raise ValueError unless ``space`` is ``EpisodeMemoryWrapper``'s; ``owner`` names the extractor in messages."""
    fix = (
        "wrap the environment with ebmm_rl.rl.EpisodeMemoryWrapper (env = EpisodeMemoryWrapper(env)), or train "
        "ebmm_rl.EBMMRecurrentPPO(env=env), which carries the memory itself"
    )
    if not isinstance(space, spaces.Dict):
        raise ValueError(
            f"{owner} needs a Dict observation space with keys {list(_REQUIRED_KEYS)}, got {space}; {fix} "
            "and use the 'MultiInputPolicy'"
        )
    missing = [k for k in _REQUIRED_KEYS if k not in space.spaces]
    if missing:
        raise ValueError(f"{owner}: the observation space lacks {missing} (it has {list(space.spaces)}); {fix}")
    history, length, query = (space[k] for k in _REQUIRED_KEYS)
    if not isinstance(history, spaces.Box) or len(history.shape) != 2:
        raise ValueError(f"'history' must be a Box of shape (max_patterns, D), got {history}; {fix}")
    if not isinstance(query, spaces.Box) or query.shape != history.shape[1:]:
        raise ValueError(f"'query' must be a Box of shape {history.shape[1:]}, got {query}; {fix}")
    if not isinstance(length, spaces.Discrete | spaces.Box):
        raise ValueError(f"'history_len' must be Discrete(max_patterns + 1), got {length}; {fix}")


def feature_parts(
    features: Sequence[str] | None, similarities: bool, has_phase: bool, allowed: Sequence[str], owner: str
) -> tuple[str, ...]:
    """The feature parts an extractor uses: ``features`` checked against ``allowed``, or the default list.

    The default is every allowed part but ``similarities`` (``phase`` only if the space has one), then
    ``similarities`` if asked for.

    Raises:
        ValueError: an unknown or repeated name, an empty list, ``phase`` without a phase in the space, or
            ``similarities=True`` with a list that lacks it.
    """
    if features is None:
        chosen = [n for n in allowed if n != "similarities" and (n != "phase" or has_phase)]
        return (*chosen, "similarities") if similarities else tuple(chosen)
    chosen = tuple(str(n) for n in features)
    unknown = [n for n in chosen if n not in allowed]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"{owner}: features must be distinct names among {list(allowed)}, got {list(chosen)}")
    if "phase" in chosen and not has_phase:
        raise ValueError(f"{owner}: the observation space has no 'phase' key; drop 'phase' from features")
    if similarities and "similarities" not in chosen:
        raise ValueError(f"{owner}: similarities=True but features {list(chosen)} lack 'similarities'; add it")
    return chosen


def similarity_features(retrieved: Tensor, history: Tensor, lengths: Tensor) -> Tensor:
    """Which stored row was recalled: how close the retrieved pattern is to each row, standardised per episode.

    The similarity to a row is the negative mean squared distance, ``-mean_d (retrieved_d - row_d)^2``; each
    episode's similarities are then z-scored over its valid rows (mean 0, standard deviation 1; all 0 if they are
    equal), so the recalled row stands out by about the same margin whatever the images' contrast. Raw distances
    differ between rows by a few hundredths and share a large common part, and a linear policy head learned
    nothing from them in 30,000 PPO steps on ``ImageRecall`` (``docs/rl_results.md``). Padding rows get
    ``-sqrt(L)``, below any z-score of ``L`` or fewer values.

    Args:
        retrieved: ``[B, D]`` retrieved patterns.
        history: ``[B, L, D]`` stored rows, padded.
        lengths: ``[B]`` valid rows of each history.

    Returns:
        ``[B, L]``.
    """
    L = history.shape[1]
    sim = -(retrieved.unsqueeze(1) - history).pow(2).mean(dim=2)  # [B, L]
    valid = torch.arange(L, device=history.device) < lengths.unsqueeze(1)  # [B, L]
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)  # [B, 1]
    mean = torch.where(valid, sim, 0.0).sum(dim=1, keepdim=True) / count
    var = torch.where(valid, (sim - mean).pow(2), 0.0).sum(dim=1, keepdim=True) / count
    std = var.clamp(min=1e-12).sqrt()  # clamped: sqrt has an infinite gradient at 0 (one valid row, equal rows)
    z = (sim - mean) / (std + 1e-6)
    return torch.where(valid, z, torch.full_like(sim, -(L**0.5)))


def history_lengths(encoded: Tensor, max_patterns: int) -> Tensor:
    """``[B]`` history lengths from SB3's one-hot ``[B, L + 1]`` (``Discrete``) or a ``[B]``/``[B, 1]`` count.

    Raises:
        ValueError: a count outside ``[0, max_patterns]`` (an observation of another window size).
    """
    encoded = encoded.reshape(encoded.shape[0], -1)  # the rollout buffer adds a dimension: [B, 1, L + 1]
    if encoded.shape[1] == max_patterns + 1:
        return encoded.argmax(dim=1)
    counts = encoded[:, 0].round().long()
    if counts.numel() and (int(counts.min()) < 0 or int(counts.max()) > max_patterns):
        raise ValueError(
            f"history_len must lie in [0, {max_patterns}] (the history holds {max_patterns} rows), got values in "
            f"[{int(counts.min())}, {int(counts.max())}]: the observation comes from another EpisodeMemoryWrapper"
        )
    return counts


def _raw_sample(space: spaces.Space) -> Tensor | dict[str, Tensor] | tuple:
    """One raw observation of ``space`` as a batch of one tensor (or a dict / tuple of them)."""
    return _as_batch(space, space.sample())


def _as_batch(space: spaces.Space, value: Any) -> Any:
    if isinstance(space, spaces.Dict):
        return {k: _as_batch(s, value[k]) for k, s in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_as_batch(s, value[i]) for i, s in enumerate(space.spaces))
    return torch.as_tensor(np.asarray(value)).unsqueeze(0)


def _dummy_observation(space: spaces.Dict) -> dict[str, Tensor]:
    """One preprocessed observation with an empty history (for the dry forward pass)."""
    sample = space.sample()
    sample["history_len"] = np.zeros_like(sample["history_len"])
    batch = {k: np.expand_dims(np.asarray(v), 0) for k, v in sample.items()}
    return preprocess_obs(obs_as_tensor(batch, torch.device("cpu")), space)  # type: ignore[return-value]

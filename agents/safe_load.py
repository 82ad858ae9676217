"""Load an SB3 agent zip (``model.zip``, ``best_model.zip``, ``checkpoint.zip``) without running code from it.

SB3's ``BaseAlgorithm.load`` unpickles (cloudpickle) every entry of the zip's ``data`` file that was saved as
``":serialized:"`` (the spaces, the policy class, the schedules, the last observation), and unpickling a file can
call any importable function. Here ``data`` is read as JSON only; each serialized entry is replaced by an object
the caller rebuilt from what it knows (:class:`KnownAgent`: the run's settings, the environment's spaces, the
policy registry) and handed to SB3's ``load`` through ``custom_objects``, so that SB3 unpickles nothing. A zip
with a serialized entry that has no rebuilt replacement is refused, naming the entry. The tensor files
(``policy.pth``, ``policy.optimizer.pth``, ``pytorch_variables.pth``) are read with ``torch.load(weights_only=True)``
here first, so a tensor file that holds anything but tensors and plain values is refused before SB3 reads it.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm

__all__ = ["AgentZipError", "KnownAgent", "ZipContents", "WeightsMismatch", "load_agent", "read_zip"]

SERIALIZED = ":serialized:"
"""The key of SB3's cloudpickled entries in a zip's ``data``."""

TRUST_HINT = (
    "pass --trust-pickled to load it with SB3's own loader, which runs the pickled code: only for a zip from a "
    "source you trust"
)


class AgentZipError(ValueError):
    """An agent zip that cannot be loaded safely: unreadable, not SB3's layout, or pickling objects not rebuilt."""


class WeightsMismatch(AgentZipError):
    """The zip's weights do not fit the policy rebuilt for the given environment."""


@dataclass(frozen=True)
class ZipContents:
    """What :func:`read_zip` found, without unpickling anything.

    Attributes:
        data: the zip's ``data`` as plain JSON (serialized entries stay base64 strings).
        parameters: the number of values in ``policy.pth`` (a bound for what the rebuilt policy may allocate).
        raw: the zip's bytes, read once: SB3 loads these, not the file again.
    """

    data: dict[str, Any]
    parameters: int
    raw: bytes

    @property
    def serialized(self) -> list[str]:
        """The keys of ``data`` whose value SB3 would unpickle."""
        return [key for key, value in self.data.items() if isinstance(value, dict) and SERIALIZED in value]


@dataclass(frozen=True)
class KnownAgent:
    """The objects of an agent that the caller rebuilt from trusted sources, to stand in for the zip's pickles.

    Attributes:
        algorithm: the SB3 class that saved the zip (``PPO``, ``A2C``, ``RecurrentPPO``, ...).
        policy: the policy class or a registered name of ``algorithm`` (``"MlpPolicy"``).
        policy_kwargs: the keyword arguments the policy was built with (used only if the zip pickled its own).
        observation_space: the (wrapped) environment's observation space.
        action_space: the environment's action space.
        clip_range: PPO's clipping range (``None``: the algorithm has none or uses its default).
    """

    algorithm: type[BaseAlgorithm]
    policy: str | type
    policy_kwargs: dict[str, Any]
    observation_space: spaces.Space
    action_space: spaces.Space
    clip_range: float | None = None


def read_zip(path: str | Path) -> ZipContents:
    """The ``data`` of the agent zip at ``path`` (as JSON) and the size of its policy, after checking its tensors.

    Every ``.pth`` entry is loaded with ``torch.load(weights_only=True)``: tensors and plain values only.

    Raises:
        AgentZipError: no such file, not a zip, truncated, no ``data`` or ``policy.pth``, ``data`` not JSON, or a
            tensor file that holds other objects.
    """
    path = Path(path)
    if not path.is_file():
        raise AgentZipError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise AgentZipError(f"{path} is empty (0 bytes): its write was cut off; use another checkpoint of the run")
    raw = path.read_bytes()
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            names = archive.namelist()
            for required in ("data", "policy.pth"):
                if required not in names:
                    raise AgentZipError(
                        f"{path} has no {required!r} entry: it is not an agent saved by Stable-Baselines3 "
                        f"(entries: {names[:8]})"
                    )
            content = archive.read("data")
            tensors = {name: archive.read(name) for name in names if name.endswith(".pth")}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as error:
        raise AgentZipError(
            f"{path} cannot be read as a zip ({type(error).__name__}: {error}): it is truncated, corrupt or not an "
            f"agent saved by Stable-Baselines3"
        ) from None
    try:
        data = json.loads(content.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AgentZipError(f"{path}: its 'data' entry is not JSON ({error}); the zip is corrupt") from None
    if not isinstance(data, dict):
        raise AgentZipError(f"{path}: its 'data' entry holds a {type(data).__name__}, not SB3's mapping")
    parameters = 0
    for name, content in tensors.items():
        try:
            loaded = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise AgentZipError(
                f"{path}: {name} is not a plain tensor file ({first}); tensors are loaded with weights_only=True, "
                f"which builds tensors and plain values only"
            ) from None
        if name == "policy.pth":
            if not isinstance(loaded, dict):
                raise AgentZipError(f"{path}: policy.pth holds a {type(loaded).__name__}, not a state_dict")
            parameters = sum(v.numel() for v in loaded.values() if isinstance(v, torch.Tensor))
    return ZipContents(data, parameters, raw)


def _constant_schedule(value: float) -> Any:
    """SB3's constant schedule of ``value`` (``FloatSchedule`` from SB3 2.6, ``get_schedule_fn`` before)."""
    try:
        from stable_baselines3.common.utils import FloatSchedule
    except ImportError:  # pragma: no cover  (SB3 < 2.6)
        from stable_baselines3.common.utils import get_schedule_fn

        return get_schedule_fn(float(value))
    return FloatSchedule(float(value))


def rebuilt_objects(contents: ZipContents, known: KnownAgent) -> dict[str, Any]:
    """Replacements for the serialized entries of ``contents.data``, keyed as there.

    Entries SB3 recreates itself (the last observation, episode buffers, rollout-buffer class) become ``None`` or
    empty; the spaces, policy class and policy kwargs come from ``known``; the schedules are constants of the
    saved ``learning_rate`` (plain JSON) and ``known.clip_range``. The spaces and the policy class are replaced
    even where the zip holds them as plain JSON.

    Raises:
        AgentZipError: a serialized entry that none of these rebuilds (its name is in the message).
    """
    data = contents.data
    shell = known.algorithm(known.policy, env=None, policy_kwargs=dict(known.policy_kwargs), _init_setup_model=False)
    window = data.get("_stats_window_size", 100)
    window = window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else 100
    rate = data.get("learning_rate")
    rate = rate if isinstance(rate, int | float) and not isinstance(rate, bool) else shell.learning_rate
    clip_range = known.clip_range if known.clip_range is not None else getattr(shell, "clip_range", 0.2)
    available: dict[str, Any] = {
        "observation_space": known.observation_space,
        "action_space": known.action_space,
        "policy_class": shell.policy_class,  # the algorithm resolves a registered name (MlpPolicy) to its class
        "policy_kwargs": shell.policy_kwargs,  # with the algorithm's own additions (A2C: RMSprop)
        "lr_schedule": _constant_schedule(rate),
        "clip_range": _constant_schedule(clip_range),
        "_last_obs": None,  # SB3 resets the environment when training goes on
        "_last_episode_starts": None,
        "_last_original_obs": None,
        "ep_info_buffer": deque(maxlen=window),
        "ep_success_buffer": deque(maxlen=window),
        "rollout_buffer_class": None,  # the algorithm picks its buffer for the observation space
    }
    unknown = [key for key in contents.serialized if key not in available]
    if unknown:
        raise AgentZipError(
            f"the zip holds pickled objects this project does not rebuild ({', '.join(unknown)}); loading them "
            f"would run code from the file. It was not saved by agents.train, or by another version; {TRUST_HINT}"
        )
    always = [key for key in ("observation_space", "action_space", "policy_class") if key in data]
    return {key: available[key] for key in [*contents.serialized, *always]}


def load_agent(
    path: str | Path, known: KnownAgent, env: Any = None, device: str = "cpu", contents: ZipContents | None = None
) -> BaseAlgorithm:
    """The agent saved at ``path``, with every pickled entry replaced by its rebuilt object (nothing unpickled).

    Args:
        path: the zip.
        known: the rebuilt objects (:class:`KnownAgent`).
        env: the environment to train on (``--resume``); ``None`` for prediction only.
        device: torch device of the policy.
        contents: :func:`read_zip`'s result for ``path`` if the caller has it (it is read otherwise).

    Raises:
        AgentZipError: the zip cannot be read, holds pickles this loader does not rebuild, or SB3 cannot build
            the agent from it; :class:`WeightsMismatch` when its weights do not fit the rebuilt policy.
    """
    contents = read_zip(path) if contents is None else contents
    try:
        custom = rebuilt_objects(contents, known)
    except AgentZipError as error:
        raise AgentZipError(f"{path}: {error}") from None
    try:
        return known.algorithm.load(io.BytesIO(contents.raw), env=env, device=device, custom_objects=custom)
    except RuntimeError as error:
        if "state_dict" in str(error) or "size mismatch" in str(error):
            lines = [line.strip() for line in str(error).strip().splitlines()]
            detail = next(
                (line for line in lines if line.startswith(("size mismatch", "Missing", "Unexpected"))), lines[0]
            )
            raise WeightsMismatch(
                f"{path}: its weights do not fit the policy for observations {known.observation_space} ({detail})"
            ) from None
        raise AgentZipError(f"{path}: SB3 cannot build the agent ({type(error).__name__}: {error})") from None
    except (KeyError, TypeError, ValueError, AttributeError, AssertionError, IndexError) as error:
        raise AgentZipError(
            f"{path}: SB3 cannot build the agent from its data ({type(error).__name__}: {error}); the zip is corrupt "
            f"or was saved by another version"
        ) from None

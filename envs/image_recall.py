"""ImageRecall: store character images, then say which one an occluded query shows."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.core import Episode, MemoryProbeEnv, check_fraction, check_int, random_indices
from envs.images import GlyphSet, find_omniglot, load_omniglot, procedural_glyphs

__all__ = ["MIN_CNN_SIZE", "ImageRecallEnv"]

logger = logging.getLogger(__name__)

MIN_CNN_SIZE = 36
"""Smallest image side SB3's NatureCNN (``CnnPolicy``, and image keys of ``MultiInputPolicy``) accepts."""

_DEFAULT_SIZE = {"vector": 16, "pixels": 40}
_SOURCES = ("auto", "omniglot", "procedural")
_ASCII_RAMP = " .:-=+*#%@"


class ImageRecallEnv(MemoryProbeEnv):
    """Recognition of an occluded image among the images stored in the episode.

    ## Description
    The image task of "Meta-Learning Deep Energy-Based Memory Models" as a decision: in the writing
    phase the agent sees ``num_patterns`` images of different characters, one per step; after
    ``delay`` blank steps come ``num_queries`` queries, each one of the stored images (uniform, with
    replacement) with a random square block, ``round(occlusion * image_size)`` pixels wide, replaced
    by random binary noise (the paper's block distortion: a 16x16 block of a 32x32 image is
    ``occlusion=0.5``). The agent says which of the stored images it is.

    Images come from Omniglot when it is available (``source="auto"`` looks for
    ``$EBMM_DATA_DIR/omniglot/images_background.zip``), otherwise from a fixed procedural set of
    random-stroke glyphs that ships with the code (``envs.images.procedural_glyphs``), so the task runs
    anywhere. Both are ink images, 1 where the character is drawn; ``self.image_source`` tells
    which one is in use. Pass ``source="omniglot"`` to fail rather than fall back.

    ## Action Space
    ``Discrete(num_patterns)``: the position of the query's image in the order the images were shown
    (0 = first). Python ints, numpy integers and 0-d integer arrays are accepted. The action is
    checked but ignored outside the query phase.

    ## Observation Space
    ``Dict`` with ``"phase"`` (``Discrete(3)``: ``0`` write, ``1`` query, ``2`` delay), ``"step"``
    (``Discrete(T + 1)``, ``T = num_patterns + delay + num_queries``) and ``"pattern"``, the image
    (blank on delay steps and in the final observation), in one of two forms:

    * ``obs_type="vector"`` (default): ``Box(0, 1, (S * S,), float32)``, the image flattened row by
      row, for MLP or memory extractors. Default ``S = 16``.
    * ``obs_type="pixels"``: ``Box(0, 255, (S, S, 1), uint8)``, an image by SB3's ``is_image_space``
      rules (uint8, bounds 0 and 255, channel last), so ``MultiInputPolicy`` encodes it with NatureCNN
      (SB3 transposes it to channel-first itself). Default ``S = 40``; NatureCNN needs ``S >= 36``
      (smaller sizes work only with a custom CNN, and SB3's ``check_env`` warns).

    ## Rewards
    1 for naming the right image at a query, else 0. The maximum return is ``num_queries``; the
    order of the images is random, so a memoryless policy gets ``num_queries / num_patterns``.

    ## Starting State
    New characters (and, with ``drawers > 1``, drawings), order, queries, block positions and
    noise, drawn from ``self.np_random`` at reset.

    ## Episode End
    Terminates after the last query (``T`` steps). No truncation.

    ## Arguments
    ```python
    gymnasium.make("ebmm/ImageRecall-v0", num_patterns=5, occlusion=0.5, obs_type="vector",
                   image_size=None, source="auto", data_dir=None, pool_size=None, drawers=1,
                   num_queries=1, delay=0, render_mode=None)
    ```
    * ``num_patterns``: images stored per episode (N), 2 <= N <= pool size.
    * ``occlusion``: side of the noise block as a fraction of the image side, in [0, 1].
    * ``obs_type``: ``"vector"`` or ``"pixels"``, see above.
    * ``image_size``: side S of the images, >= 4; ``None`` = 16 for vectors, 40 for pixels.
    * ``source``: ``"auto"`` (Omniglot if found, else procedural), ``"omniglot"`` or ``"procedural"``.
    * ``data_dir``: folder holding ``omniglot/images_background.zip``; ``None`` reads ``EBMM_DATA_DIR``.
    * ``pool_size``: characters to draw from, spread evenly over the source; ``None`` = all (964
      Omniglot background characters, or 1024 procedural glyphs).
    * ``drawers``: drawings loaded per Omniglot character, 1..20; each episode picks one at random.
      Loading grows with it (about 0.15 s per drawer, once per process).
    * ``num_queries``: queries per episode, >= 1.
    * ``delay``: blank steps between the last image and the first query, >= 0.
    * ``render_mode``: ``None``, ``"ansi"`` (text picture) or ``"rgb_array"``.

    ``get_state()`` adds ``"images"`` ``[N, S, S]`` float32, ``"queries"`` ``[Q, S, S]``,
    ``"target_indices"`` ``[Q]``, ``"characters"`` ``[N]`` (rows of the pool) and ``"names"``
    (their character names) to the common keys.

    ## Version History
    * v0: initial version.
    """

    def __init__(
        self,
        num_patterns: int = 5,
        occlusion: float = 0.5,
        obs_type: str = "vector",
        image_size: int | None = None,
        source: str = "auto",
        data_dir: str | os.PathLike[str] | None = None,
        pool_size: int | None = None,
        drawers: int = 1,
        num_queries: int = 1,
        delay: int = 0,
        render_mode: str | None = None,
    ) -> None:
        super().__init__(render_mode)
        if obs_type not in _DEFAULT_SIZE:
            raise ValueError(f"obs_type must be 'vector' or 'pixels', got {obs_type!r}.")
        if source not in _SOURCES:
            raise ValueError(f"source must be one of {_SOURCES}, got {source!r}.")
        self.obs_type = obs_type
        size = _DEFAULT_SIZE[obs_type] if image_size is None else image_size
        self.image_size = check_int("image_size", size, 4, 256)
        self.occlusion = check_fraction("occlusion", occlusion)
        self.block_size = int(round(self.occlusion * self.image_size))
        self.drawers = check_int("drawers", drawers, 1, 20)

        glyphs = self._load_glyphs(source, data_dir)
        self.image_source = glyphs.source
        total = glyphs.images.shape[0]
        if pool_size is None:
            rows = np.arange(total)
        else:
            pool_size = check_int("pool_size", pool_size, 2, total)
            rows = np.unique(np.linspace(0, total - 1, pool_size).round().astype(np.int64))
        self.pool_size = len(rows)
        self.num_patterns = check_int("num_patterns", num_patterns, 2, self.pool_size)
        self._glyphs = glyphs.images  # [C, R, S, S] float32 ink, shared read-only with other envs
        self._rows = rows  # [P] rows of the pool in `self._glyphs`
        self._pool_names = tuple(glyphs.names[i] for i in rows)

        s = self.image_size
        if obs_type == "vector":
            self.pattern_space = spaces.Box(0.0, 1.0, shape=(s * s,), dtype=np.float32)
        else:
            self.pattern_space = spaces.Box(0, 255, shape=(s, s, 1), dtype=np.uint8)
        self.action_space = spaces.Discrete(self.num_patterns)
        self._setup_schedule(self.num_patterns, check_int("delay", delay, 0), check_int("num_queries", num_queries, 1))

    def _load_glyphs(self, source: str, data_dir: str | os.PathLike[str] | None) -> GlyphSet:
        if source != "procedural":
            path = find_omniglot(data_dir)
            if path is not None:
                return load_omniglot(path, self.image_size, self.drawers)
            if source == "omniglot":
                where = data_dir if data_dir is not None else os.environ.get("EBMM_DATA_DIR", "<unset>")
                raise FileNotFoundError(
                    f"source='omniglot' but there is no omniglot/images_background.zip under {where}. Set "
                    "EBMM_DATA_DIR (or data_dir=) to the folder that holds it, or use source='procedural'."
                )
            logger.info("Omniglot not found (EBMM_DATA_DIR); ImageRecall uses procedural glyphs.")
        return procedural_glyphs(1024, self.image_size)

    @property
    def max_return(self) -> float:  # noqa: D102
        return float(self.num_queries)

    @property
    def chance_return(self) -> float:  # noqa: D102
        return self.num_queries / self.num_patterns

    def _sample_episode(self, rng: np.random.Generator) -> Episode:
        n, q, s, b = self.num_patterns, self.num_queries, self.image_size, self.block_size
        characters = rng.choice(self.pool_size, size=n, replace=False)  # [N] distinct characters
        drawings = random_indices(rng, self._glyphs.shape[1], n)  # [N]
        images = self._glyphs[self._rows[characters], drawings]  # [N, S, S] (a copy)
        target_indices = random_indices(rng, n, q)  # [Q]
        queries = images[target_indices]  # [Q, S, S] (a copy)
        corners = random_indices(rng, s - b + 1, 2 * q).reshape(q, 2)  # [Q, 2] top-left (y, x)
        noise = (rng.random((q, b, b)) < 0.5).astype(np.float32)  # [Q, b, b]
        for j, (y, x) in enumerate(corners):
            queries[j, y : y + b, x : x + b] = noise[j]

        if self.obs_type == "vector":
            writes, shown = images.reshape(n, s * s), queries.reshape(q, s * s)
        else:
            writes = _to_pixels(images)[..., None]  # [N, S, S, 1]
            shown = _to_pixels(queries)[..., None]  # [Q, S, S, 1]
        answers: list[Any] = [None] * (self.num_write + self.delay) + [int(i) for i in target_indices]
        state = {
            "images": images,
            "queries": queries,
            "target_indices": target_indices,
            "characters": characters,
            "names": [self._pool_names[i] for i in characters],
        }
        return Episode(self._assemble(writes, shown), answers, state)

    def _check_action(self, action: Any) -> None:
        self._check_discrete(action, self.num_patterns)

    def _score(self, action: Any, answer: int) -> float:
        return 1.0 if int(action) == answer else 0.0

    def _current_image(self) -> np.ndarray:
        assert self._episode is not None
        pattern = self._episode.patterns[self._t]
        s = self.image_size
        if self.obs_type == "vector":
            return pattern.reshape(s, s)
        return pattern[..., 0].astype(np.float32) / 255.0

    def _render_pattern(self, pattern: np.ndarray) -> str:
        image = self._current_image()
        top = len(_ASCII_RAMP) - 1
        levels = np.minimum((image * len(_ASCII_RAMP)).astype(np.int64), top)
        return "\n".join("".join(_ASCII_RAMP[v] for v in row) for row in levels)

    def _render_rgb(self) -> np.ndarray:
        """The current image as ``[H, W, 3]`` uint8, ink dark on white, enlarged to >= 128 pixels."""
        scale = max(1, -(-128 // self.image_size))
        gray = 255 - _to_pixels(self._current_image())
        big = np.repeat(np.repeat(gray, scale, axis=0), scale, axis=1)
        return np.repeat(big[..., None], 3, axis=2)


def _to_pixels(images: np.ndarray) -> np.ndarray:
    """Ink in [0, 1] to uint8 0..255, same shape."""
    return (images * 255.0 + 0.5).astype(np.uint8)

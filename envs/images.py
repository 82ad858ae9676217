"""Image sources for :class:`envs.image_recall.ImageRecallEnv`: Omniglot or procedural glyphs.

numpy (no torch). Omniglot is read straight from the upstream zip (``images_background.zip`` holding
``images_background/<Alphabet>/characterNN/XXXX_YY.png``, 105x105 1-bit PNGs), so no unzipped copy is
needed; the PNGs are decoded with pillow, imported only then (``import envs`` stays numpy + gymnasium).
Images are downscaled by area averaging and cached per process, so creating many environments is cheap.

All images here are "ink" images: float32 in [0, 1], 1 where the character is drawn.
"""

from __future__ import annotations

import functools
import io
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "OMNIGLOT_ZIP",
    "GlyphSet",
    "PNGFormatError",
    "area_resize",
    "decode_png",
    "find_omniglot",
    "load_omniglot",
    "procedural_glyphs",
]

OMNIGLOT_ZIP = Path("omniglot") / "images_background.zip"
"""Where Omniglot's background set is looked for, relative to the data directory."""

DATA_DIR_VAR = "EBMM_DATA_DIR"
"""Environment variable naming the data directory."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PNGFormatError(ValueError):
    """The bytes are not a PNG file, or a damaged one."""


@dataclass(frozen=True)
class GlyphSet:
    """A pool of character images, shared read-only between environments.

    Attributes:
        images: ``[C, R, S, S]`` float32 ink in [0, 1]: C characters, R drawings of each, S x S pixels.
        names: C character names (``"<Alphabet>/characterNN"`` for Omniglot).
        source: ``"omniglot:<path of the zip>"`` or ``"procedural"``.
    """

    images: np.ndarray
    names: tuple[str, ...]
    source: str


# ---------------------------------------------------------------------------------------- PNG
def decode_png(data: bytes) -> np.ndarray:
    """Decode a PNG file to an 8-bit grayscale image, with pillow.

    Every colour type (gray, RGB, palette, with or without alpha), bit depth and interlacing that pillow reads.
    Colour is converted to luminance with ITU-R 601 weights (``(299 R + 587 G + 114 B + 500) // 1000``, computed
    here rather than by pillow's fixed-point ``convert("L")``, which can differ by one), alpha is dropped, 16-bit
    samples keep their high byte, and low bit depths are scaled to 0..255 (a 1-bit pixel reads 0 or 255).

    Args:
        data: the bytes of a PNG file.

    Returns:
        ``[H, W]`` uint8 image.

    Raises:
        PNGFormatError: not a PNG, or a damaged one (truncated, failing a chunk CRC, undecodable image data).
    """
    from PIL import Image, UnidentifiedImageError

    if data[:8] != _PNG_SIGNATURE:
        raise PNGFormatError("Not a PNG file: the 8-byte PNG signature is missing.")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.verify()  # every chunk's CRC (load() alone does not check them)
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
            return _gray(image)
    except UnidentifiedImageError as err:
        raise PNGFormatError(
            "Damaged PNG: pillow finds no image in it (a damaged chunk type or header, or no IHDR/IDAT chunk)."
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error) as err:  # pillow's ways of saying "damaged"
        raise PNGFormatError(f"Damaged PNG: {err}.") from err


def _gray(image: Any) -> np.ndarray:
    """``[H, W]`` uint8 gray levels of a loaded ``PIL.Image.Image`` (see :func:`decode_png` for the conversion)."""
    mode = image.mode
    if mode == "1":
        return np.asarray(image, dtype=np.uint8) * np.uint8(255)
    if mode.startswith("I"):  # 16-bit gray ("I;16", "I;16B", or "I" in older pillow): the high byte
        return (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
    if mode in ("L", "LA"):
        return np.asarray(image.getchannel(0), dtype=np.uint8).copy()
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint32)  # [H, W, 3]; palettes resolved, alpha dropped
    return ((rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000).astype(np.uint8)


# ---------------------------------------------------------------------------------------- resizing
@functools.lru_cache(maxsize=32)
def _area_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` float32 weights: output pixel i averages input pixels by overlap."""
    edges = np.arange(size_out + 1, dtype=np.float64) * (size_in / size_out)  # output pixel borders
    j = np.arange(size_in, dtype=np.float64)
    overlap = np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j)  # [out, in]
    weights = (np.clip(overlap, 0.0, None) * (size_out / size_in)).astype(np.float32)
    weights.flags.writeable = False
    return weights


def area_resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resize square or rectangular images to ``size x size`` by area averaging (box filter).

    Each output pixel is the mean of the input area it covers (fractional overlaps weighted), so
    the mean intensity is preserved; works for any ratio, up or down.

    Args:
        images: ``[..., H, W]`` images.
        size: output height and width.

    Returns:
        ``[..., size, size]`` float32.
    """
    rows = _area_matrix(images.shape[-2], size)  # [size, H]
    cols = _area_matrix(images.shape[-1], size)  # [size, W]
    return rows @ images.astype(np.float32) @ cols.T


# ---------------------------------------------------------------------------------------- Omniglot
def find_omniglot(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Locate Omniglot's ``images_background.zip``.

    Args:
        data_dir: data directory; ``None`` reads the ``EBMM_DATA_DIR`` environment variable.

    Returns:
        The path of ``<data_dir>/omniglot/images_background.zip`` if that file exists, else None.
    """
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_VAR)
        if not data_dir:
            return None
    path = Path(data_dir).expanduser() / OMNIGLOT_ZIP
    return path.resolve() if path.is_file() else None


def load_omniglot(path: str | os.PathLike[str], image_size: int, drawers: int = 1) -> GlyphSet:
    """Read Omniglot characters from an upstream zip, downscaled; cached per process.

    Args:
        path: a zip in the upstream layout, ``<root>/<Alphabet>/characterNN/XXXX_YY.png`` (for example
            ``images_background.zip``, ``images_evaluation.zip`` or the ``_small`` variants).
        image_size: side S of the returned images.
        drawers: drawings R read per character, the first ones by file name (Omniglot has 20).

    Returns:
        A :class:`GlyphSet` with images ``[C, R, S, S]``, characters sorted by alphabet and name.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the zip is not in the upstream layout or has fewer than ``drawers`` drawings of
            some character.
    """
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise FileNotFoundError(
            f"No Omniglot zip at {resolved}. Point EBMM_DATA_DIR at a folder holding {OMNIGLOT_ZIP}."
        )
    stat = resolved.stat()  # part of the cache key: a changed file is read again
    return _load_omniglot(str(resolved), stat.st_mtime_ns, stat.st_size, int(image_size), int(drawers))


@functools.lru_cache(maxsize=4)
def _load_omniglot(path: str, _mtime_ns: int, _size: int, image_size: int, drawers: int) -> GlyphSet:
    with zipfile.ZipFile(path) as archive:
        characters: dict[str, list[str]] = {}
        for name in archive.namelist():
            parts = name.split("/")
            if len(parts) >= 4 and parts[-1].lower().endswith(".png"):
                characters.setdefault(f"{parts[-3]}/{parts[-2]}", []).append(name)
        if not characters:
            raise ValueError(f"{path} holds no PNGs in the Omniglot layout <root>/<Alphabet>/characterNN/XXXX_YY.png.")
        names = tuple(sorted(characters))
        images = np.empty((len(names), drawers, image_size, image_size), dtype=np.float32)
        for c, character in enumerate(names):
            files = sorted(characters[character])
            if len(files) < drawers:
                raise ValueError(
                    f"{path}: character {character} has {len(files)} drawings, fewer than drawers={drawers}."
                )
            for r, member in enumerate(files[:drawers]):
                pixels = decode_png(archive.read(member))  # [H, W] uint8, strokes dark
                ink = 1.0 - pixels.astype(np.float32) * (1.0 / 255.0)
                images[c, r] = area_resize(ink, image_size)
    np.clip(images, 0.0, 1.0, out=images)
    images.flags.writeable = False
    return GlyphSet(images=images, names=names, source=f"omniglot:{path}")


# ---------------------------------------------------------------------------------------- procedural
_CANVAS = 105  # the procedural glyphs are drawn at Omniglot's resolution, then downscaled alike


@functools.lru_cache(maxsize=4)
def procedural_glyphs(num_glyphs: int = 1024, image_size: int = 16, seed: int = 0) -> GlyphSet:
    """A fixed, seeded set of random-stroke glyphs that stands in for Omniglot anywhere.

    Each glyph is 2 to 4 pen strokes, each a quadratic Bezier curve drawn with a round brush on a
    105x105 canvas (Omniglot's size), then area-downscaled. The set depends only on the arguments
    (it is a data set, not environment randomness) and is cached per process.

    Args:
        num_glyphs: characters C in the set.
        image_size: side S of the returned images.
        seed: seed of the generator that draws the set.

    Returns:
        A :class:`GlyphSet` with images ``[C, 1, S, S]``.
    """
    rng = np.random.default_rng(seed)
    radius = 2
    dy, dx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = np.stack([dy[dy**2 + dx**2 <= radius**2], dx[dy**2 + dx**2 <= radius**2]], axis=1)  # [K, 2]
    t = np.linspace(0.0, 1.0, 40)[:, None]  # [P, 1]
    canvas = np.empty((_CANVAS, _CANVAS), dtype=np.float32)
    images = np.empty((num_glyphs, 1, image_size, image_size), dtype=np.float32)  # [C, 1, S, S]
    margin = 14
    for g in range(num_glyphs):
        canvas[:] = 0.0
        strokes = int(rng.integers(2, 5))
        ends = rng.uniform(margin, _CANVAS - 1 - margin, size=(strokes, 3, 2))  # [strokes, 3 points, yx]
        p0, p1, p2 = ends[:, 0, None], ends[:, 1, None], ends[:, 2, None]  # [strokes, 1, 2] each
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # [strokes, P, 2]
        dots = np.rint(curve.reshape(-1, 2)).astype(np.int64)[:, None, :] + disc[None]  # [strokes*P, K, 2]
        dots = np.clip(dots.reshape(-1, 2), 0, _CANVAS - 1)
        canvas[dots[:, 0], dots[:, 1]] = 1.0
        images[g, 0] = area_resize(canvas, image_size)
    np.clip(images, 0.0, 1.0, out=images)
    images.flags.writeable = False
    return GlyphSet(images=images, names=tuple(f"glyph{g:04d}" for g in range(num_glyphs)), source="procedural")

"""MNIST from its IDX files, upscaled to 32x32 and binarised for the paper's Omniglot-to-MNIST check (App. A.6).

The paper says "upscaled (to match the dimensionality) and binarized". Here 28x28 is resized to 32x32 bilinearly
(``align_corners=False``), so the digit grows with the image as "upscaled" says, rather than gaining a 2-pixel
border, then thresholded ``> 0.5``. MNIST ink is already bright, so strokes are 1, as for Omniglot.
"""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ebmm_rl.data.core import (
    LAYOUTS,
    ImageDataset,
    canonical_split,
    check_image_size,
    check_not_empty,
    missing_files,
    resolve_root,
    to_dataset,
)

__all__ = ["load_mnist"]

_MNIST_PREFIX = {"train": "train", "test": "t10k"}


def load_mnist(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    image_size: int = 32,
    binarize: bool = True,
    uint8: bool = False,
) -> ImageDataset:
    """MNIST from IDX files, upscaled and binarised as for the paper's Omniglot-to-MNIST check (App. A.6).

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (also found: dotted names
            ``train-images.idx3-ubyte`` and torchvision's ``MNIST/raw/``); ``None`` means ``$EBMM_DATA_DIR/mnist``.
        image_size: side after bilinear resizing (28 keeps the originals).
        binarize: threshold at 0.5 after resizing.
        uint8: keep pixels as uint8 0..255 (see :class:`ImageDataset`).

    Returns:
        The data set, strokes bright (1), labels 0..9.
    """
    split = canonical_split(split, "mnist")
    image_size = check_image_size(image_size)
    base = resolve_root(root, "mnist")
    prefix = _MNIST_PREFIX[split]
    images = _read_idx(_find_idx(base, prefix, "images", 3), ndim=3)
    labels = _read_idx(_find_idx(base, prefix, "labels", 1), ndim=1)
    if images.shape[0] != labels.shape[0] or (labels.size and labels.max() > 9):
        raise ValueError(
            f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels (max {labels.max(initial=0)}); "
            f"the image and label files do not belong together, re-download them"
        )
    x = torch.from_numpy(images).unsqueeze(1).float().mul_(1.0 / 255.0)  # [N, 1, 28, 28]
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = torch.cat(
            [
                F.interpolate(part, size=(image_size, image_size), mode="bilinear", align_corners=False)
                for part in x.split(8192)
            ]
        ).clamp_(0.0, 1.0)
    if binarize:
        x = (x > 0.5).float()
    return to_dataset(x.numpy(), labels, "mnist", split, uint8, binarize)


def _find_idx(base: Path, prefix: str, kind: str, ndim: int) -> Path:
    """The first non-empty IDX file among the known names and folders (plain before ``.gz``).

    An empty file (an interrupted download) is passed over, with a warning, when another candidate, such as the
    ``.gz`` beside it, is not empty; when every candidate is empty, the first one is returned (and reading it
    raises an error naming it).
    """
    names = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    found = [
        candidate
        for folder in (base, base / "MNIST" / "raw", base / "raw")
        for name in names
        for candidate in (folder / name, folder / f"{name}.gz")
        if candidate.is_file()
    ]
    if not found:
        raise missing_files("mnist", f"{names[0]} or {names[0]}.gz", base)
    filled = [path for path in found if path.stat().st_size > 0]
    if not filled:
        return found[0]
    empty = found[: found.index(filled[0])]
    if empty:
        warnings.warn(f"MNIST: {empty[0]} is empty (0 bytes); reading {filled[0]} instead", stacklevel=3)
    return filled[0]


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes: 2 zero bytes, type 0x08, ndim, ndim big-endian int32 sizes, data.

    Gzipped files are recognised by their magic bytes, whatever their name.
    """
    check_not_empty(path, "mnist")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except EOFError as err:
        raise ValueError(f"{path}: the gzip stream ends early ({err}): the file is truncated, re-download it") from err
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err}); re-download the MNIST file") from err
    offset = 4 + 4 * ndim
    if len(raw) < offset and raw[: min(len(raw), 4)] == bytes([0, 0, 8, ndim])[: len(raw)]:
        raise ValueError(
            f"{path}: {len(raw)} bytes, shorter than the {offset}-byte IDX header: truncated, re-download it"
        )
    if len(raw) < offset or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise ValueError(
            f"{path} is not an IDX file of {ndim}-D unsigned bytes (header {raw[:4].hex()}, expected "
            f"000008{ndim:02x}); {LAYOUTS['mnist']}"
        )
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if len(raw) - offset != int(np.prod(shape)):
        raise ValueError(
            f"{path}: the header says {shape} = {int(np.prod(shape))} bytes of data, the file has "
            f"{len(raw) - offset}; the file is truncated, re-download it"
        )
    return np.frombuffer(bytearray(raw), dtype=np.uint8, offset=offset).reshape(shape)  # bytearray: writable

"""Image data sets of the paper's memory benchmarks (§4.1–4.3, App. A.6), read from their upstream formats.

Every loader returns an :class:`ImageDataset`: ``images [num_images, C, H, W]`` float32 in [0, 1] and integer
``labels [num_images]``. One entry point covers them all::

    train = load_dataset("omniglot", "train")        # 19,280 x 1 x 32 x 32, binary
    test = load_dataset("cifar10", "test")           # 10,000 x 3 x 32 x 32 (here: the files you have)

Files are looked for under ``root``, by default ``$EBMM_DATA_DIR/<folder>`` (folders in :data:`FOLDERS`):

* ``omniglot``: ``$EBMM_DATA_DIR/omniglot/`` holds ``images_background.zip`` (train) and ``images_evaluation.zip``
  (test), or their extracted folders ``images_background/<Alphabet>/characterNN/*.png``.
* ``cifar10``: ``$EBMM_DATA_DIR/cifar10/cifar-10-batches-py/`` holds ``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch`` (the python version of CIFAR-10).
* ``mnist``: ``$EBMM_DATA_DIR/mnist/`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or ``.gz`` (an empty plain file, left by an
  interrupted download, is passed over for the ``.gz`` beside it).
* ``imagenet64``: ``$EBMM_DATA_DIR/imagenet64/`` holds ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz``
  and ``val_data.npz`` (downsampled ImageNet, npz version).

An empty or truncated file stops a loader with a ``ValueError`` that names the file.

Preprocessing choices (the paper states the first two and leaves the details open):

* Omniglot (§4.1): ink is 1 and background 0 (the PNGs store strokes as black, 0, on white, 1; we invert, the
  usual convention). 105x105 is downscaled to 32x32 with an area (box) filter, each output pixel the mean ink
  of the input area it covers, fractional overlaps weighted (OpenCV's ``INTER_AREA``); then ``ink > 0.5`` is 1.
  Labels are the character class index, characters sorted by ``"<Alphabet>/characterNN"``. The decoded arrays
  are cached as an ``.npz`` in ``$EBMM_CACHE_DIR`` (default ``~/.cache/ebmm_rl``), keyed by the source's path,
  size, mtime and the preprocessing, so the decode runs once.
* MNIST (App. A.6, "upscaled ... and binarized"): 28x28 is resized to 32x32 bilinearly (``align_corners=False``,
  the stroke width grows with the digit, as "upscaled" says, rather than a 2-pixel border), then binarised
  ``> 0.5``. MNIST ink is already bright, so strokes are 1 as for Omniglot.
* CIFAR-10 and ImageNet 64x64: ``uint8 / 255``, channels first, nothing else. CIFAR batches are pickles, read with
  :class:`RestrictedUnpickler`, which builds nothing but numpy arrays, dtypes and byte strings.

``uint8=True`` keeps pixels as ``uint8`` 0..255 (binary data: 0 or 255), a quarter of the memory, for the full
ImageNet 64x64 training set (15.7 GB as uint8, 63 GB as float32); :meth:`ImageDataset.get` returns float32 in
either case.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ebmm_rl.data.cifar import RefusedGlobal, RestrictedUnpickler, load_cifar10, restricted_load
from ebmm_rl.data.core import CACHE_DIR_VAR, DATA_DIR_VAR, FOLDERS, ImageDataset, cache_dir
from ebmm_rl.data.imagenet import load_imagenet64
from ebmm_rl.data.mnist import load_mnist
from ebmm_rl.data.omniglot import load_omniglot

__all__ = [
    "CACHE_DIR_VAR",
    "DATASETS",
    "DATA_DIR_VAR",
    "FOLDERS",
    "ImageDataset",
    "RefusedGlobal",
    "RestrictedUnpickler",
    "cache_dir",
    "load_cifar10",
    "load_dataset",
    "load_imagenet64",
    "load_mnist",
    "load_omniglot",
    "restricted_load",
]

DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "omniglot": load_omniglot,
    "cifar10": load_cifar10,
    "mnist": load_mnist,
    "imagenet64": load_imagenet64,
}
"""Data set name -> loader ``(split, root=None, **options) -> ImageDataset``; folders are in :data:`FOLDERS`."""


def load_dataset(name: str, split: str, root: str | os.PathLike[str] | None = None, **options: Any) -> ImageDataset:
    """Load one split of a data set from its upstream files.

    Args:
        name: a key of :data:`DATASETS`: ``"omniglot"``, ``"cifar10"``, ``"mnist"`` or ``"imagenet64"``
            (case, ``-`` and ``_`` are ignored: ``"CIFAR-10"`` works).
        split: ``"train"`` or ``"test"`` (aliases: ``"background"``, ``"evaluation"``, ``"val"``).
        root: folder holding the files; ``None`` means ``$EBMM_DATA_DIR/<FOLDERS[name]>``.
        **options: passed to the loader: ``uint8`` for all; ``image_size`` and ``binarize`` for Omniglot and
            MNIST; ``cache`` for Omniglot.

    Returns:
        The :class:`ImageDataset`.

    Raises:
        ValueError: unknown name or split, or malformed files.
        FileNotFoundError: the files are not where they are expected; the message says where that is.
    """
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[key](split, root, **options)

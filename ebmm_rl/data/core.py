"""Shared parts of the data loaders: :class:`ImageDataset`, where files are looked for, the decoded-data cache."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

DATA_DIR_VAR = "EBMM_DATA_DIR"
"""Environment variable naming the folder that holds ``omniglot/``, ``cifar10/``, ``mnist/``, ``imagenet64/``."""

CACHE_DIR_VAR = "EBMM_CACHE_DIR"
"""Environment variable naming the cache folder (default ``$XDG_CACHE_HOME/ebmm_rl`` or ``~/.cache/ebmm_rl``)."""

_CACHE_VERSION = 1  # bump when the preprocessing changes, so stale cache files are not read
_SPLITS = {"train": "train", "test": "test", "background": "train", "evaluation": "test", "val": "test"}


FOLDERS = {
    "omniglot": "omniglot",
    "cifar10": "cifar10/cifar-10-batches-py",
    "mnist": "mnist",
    "imagenet64": "imagenet64",
}
"""Data set name -> its folder below ``$EBMM_DATA_DIR``."""

LAYOUTS = {
    "omniglot": "the upstream images_background.zip / images_evaluation.zip, or their extracted folders "
    "images_background/<Alphabet>/characterNN/*.png",
    "cifar10": "the python version of CIFAR-10: data_batch_1 .. data_batch_5 and test_batch from "
    "cifar-10-python.tar.gz",
    "mnist": "the IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte, plain or .gz",
    "imagenet64": "downsampled ImageNet 64x64, npz version: train_data_batch_1.npz .. train_data_batch_10.npz "
    "and val_data.npz",
}
"""Data set name -> the files its loader expects, in words (used in error messages)."""


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image data set held in memory.

    Attributes:
        images: ``[num_images, C, H, W]`` float32 in [0, 1], or uint8 0..255 when loaded with ``uint8=True``.
        labels: ``[num_images]`` int64 class indices, 0-based.
        name: data set name (a key of :data:`DATASETS`).
        split: ``"train"`` or ``"test"``.
        binary: whether every pixel is 0 or 1 (Omniglot and MNIST as the paper uses them).
        class_names: names of the classes, indexed by label (Omniglot: ``"<Alphabet>/characterNN"``), or ``()``.
    """

    images: Tensor
    labels: Tensor
    name: str
    split: str
    binary: bool = False
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"ImageDataset needs images [num_images, C, H, W] and labels [num_images]; got "
                f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}"
            )
        if self.images.dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"images must be float32 in [0, 1] or uint8 0..255, got {self.images.dtype}")

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """Shape of one pattern, ``(C, H, W)``."""
        c, h, w = self.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        """Number of classes, ``max(labels) + 1`` (or ``len(class_names)`` when given)."""
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def get(self, index: Tensor) -> Tensor:
        """Images at ``index`` as float32 in [0, 1], whatever the storage.

        Args:
            index: integer indices of any shape ``[...]`` (on the device of ``images``).

        Returns:
            ``[..., C, H, W]`` float32.
        """
        x = self.images[index]
        return x.float().mul_(1.0 / 255.0) if x.dtype == torch.uint8 else x


def canonical_split(split: str, dataset: str) -> str:
    """``"train"`` or ``"test"`` for ``split`` or one of its aliases (``background``, ``evaluation``, ``val``)."""
    try:
        return _SPLITS[split.lower()]
    except KeyError:
        raise ValueError(f"unknown split {split!r} for {dataset}; use 'train' or 'test'") from None


def resolve_root(root: str | os.PathLike[str] | None, dataset: str) -> Path:
    """``root``, or ``$EBMM_DATA_DIR/<folder>``; FileNotFoundError naming the layout when neither is given."""
    if root is not None:
        return Path(root).expanduser()
    folder = FOLDERS[dataset]
    base = os.environ.get(DATA_DIR_VAR)
    if not base:
        raise FileNotFoundError(
            f"{dataset}: no root given and ${DATA_DIR_VAR} is not set. Set {DATA_DIR_VAR} to the folder that holds "
            f"{folder}/ ({LAYOUTS[dataset]}), or pass root= to the loader."
        )
    return Path(base).expanduser() / folder


def missing_files(dataset: str, expected: Path | str, root: Path) -> FileNotFoundError:
    """The error for absent files: what was expected, where, in which layout, and how to point the loader there."""
    return FileNotFoundError(
        f"{dataset}: expected {expected} under {root} ({LAYOUTS[dataset]}). Point ${DATA_DIR_VAR} at the folder "
        f"holding {FOLDERS[dataset]}/ (now {os.environ.get(DATA_DIR_VAR)!r}) or pass root=."
    )


def check_image_size(image_size: object) -> int:
    """``image_size``, or ValueError unless it is an integer >= 1 (the side of the resized square images)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be an integer >= 1 (the side of the square images), got {image_size!r}")
    return image_size


def integer_labels(values: object, path: Path, expected: str) -> np.ndarray:
    """``values`` as an int64 array, or ValueError naming ``path`` when they are not numbers (text, objects, ...)."""
    try:
        array = np.asarray(values if values is not None else [])
    except ValueError as err:  # ragged nesting
        raise ValueError(f"{path}: 'labels' must be a flat list of {expected} ({err})") from None
    if array.size and array.dtype.kind not in "iuf":
        first = array.reshape(-1)[0]
        first = first.item() if isinstance(first, np.generic) else first
        raise ValueError(f"{path}: 'labels' must be {expected}, got {array.dtype} values such as {first!r}")
    return array.astype(np.int64)


def check_not_empty(path: Path, dataset: str) -> Path:
    """``path``, or ValueError naming it when the file is empty (an interrupted download or copy leaves 0 bytes)."""
    if path.stat().st_size == 0:
        raise ValueError(
            f"{dataset}: {path} is empty (0 bytes), probably an interrupted download or copy; delete it and fetch "
            f"it again ({LAYOUTS[dataset]})"
        )
    return path


def to_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    name: str,
    split: str,
    uint8: bool,
    binary: bool,
    classes: Sequence[str] = (),
) -> ImageDataset:
    """Wrap ``images [N, C, H, W]`` (uint8 0..255 or float in [0, 1]) as float32 or uint8 tensors."""
    if uint8:
        if images.dtype != np.uint8:
            images = np.rint(np.asarray(images, np.float32) * 255.0).astype(np.uint8)
        tensor = torch.from_numpy(np.ascontiguousarray(images))
    elif images.dtype == np.uint8:
        tensor = torch.from_numpy(np.ascontiguousarray(images)).float().mul_(1.0 / 255.0)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return ImageDataset(tensor, torch.from_numpy(labels.astype(np.int64)), name, split, binary, tuple(classes))


# ---------------------------------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """Folder of decoded-data caches: ``$EBMM_CACHE_DIR``, else ``$XDG_CACHE_HOME/ebmm_rl`` or ``~/.cache/ebmm_rl``."""
    if os.environ.get(CACHE_DIR_VAR):
        return Path(os.environ[CACHE_DIR_VAR]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "ebmm_rl"


def file_fingerprint(path: Path) -> dict[str, int]:
    """Size and mtime of a file: part of a cache key, so a replaced file is decoded again."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def folder_fingerprint(folder: Path) -> dict[str, int | str]:
    """Size and mtime of every file below ``folder``, hashed: any added, removed or changed file changes it."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"files": digest.hexdigest()}


def cache_path(dataset: str, split: str, key: dict[str, Any]) -> Path:
    """``cache_dir()/<dataset>-<split>-<hash of key>.npz``; ``key`` is a JSON-able description of source and options."""
    blob = json.dumps({"version": _CACHE_VERSION, **key}, sort_keys=True).encode()
    return cache_dir() / f"{dataset}-{split}-{hashlib.sha256(blob).hexdigest()[:20]}.npz"


def cache_read(dataset: str, split: str, key: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The cached arrays for ``key``, or None when there are none (or they cannot be read: then warn)."""
    path = cache_path(dataset, split, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        warnings.warn(f"ignoring unreadable cache file {path} ({err}); decoding the source again", stacklevel=3)
        return None


def cache_write(dataset: str, split: str, key: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write the cache atomically (temporary file, then rename); warn and go on when the folder is not writable."""
    path = cache_path(dataset, split, key)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600
        os.replace(tmp_name, path)  # atomic: readers see the old state or the whole new file
        tmp_name = None
    except OSError as err:
        warnings.warn(
            f"could not write the {dataset} cache to {path} ({err}); set ${CACHE_DIR_VAR} to a writable folder "
            f"to skip decoding next time",
            stacklevel=3,
        )
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)

"""Downsampled ImageNet 64x64 (Chrabaszcz et al., 2017), npz version, for the paper's §4.3."""

from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ebmm_rl.data.core import (
    LAYOUTS,
    ImageDataset,
    canonical_split,
    check_not_empty,
    integer_labels,
    missing_files,
    resolve_root,
    to_dataset,
)

__all__ = ["load_imagenet64"]


def load_imagenet64(
    split: str = "train", root: str | os.PathLike[str] | None = None, *, uint8: bool = False
) -> ImageDataset:
    """Downsampled ImageNet (Chrabaszcz et al., 2017), npz version, 3x64x64 in [0, 1].

    Each file has ``data [N, 3*S*S]`` uint8, R then G then B planes of ``S x S`` row-major (S = 64; the 32x32
    and 16x16 versions load too), and 1-based ``labels``, returned 0-based. Files are read with
    ``allow_pickle=False``.

    Args:
        split: ``"train"`` (``train_data_batch_1.npz`` .. ``_10.npz``, whichever are present, warning when some
            are missing) or ``"test"`` (``val_data.npz``).
        root: folder with the npz files (or subfolders holding them, as the official zips extract);
            ``None`` means ``$EBMM_DATA_DIR/imagenet64``.
        uint8: keep pixels as uint8 (the full training set is 15.7 GB as uint8, four times that as float32).

    Returns:
        The data set, labels 0..999.
    """
    split = canonical_split(split, "imagenet64")
    base = resolve_root(root, "imagenet64")
    if split == "train":
        paths = [p for i in range(1, 11) for p in _find_npz(base, f"train_data_batch_{i}.npz")]
        expected = "train_data_batch_1.npz"
        if paths and len(paths) < 10:
            warnings.warn(
                f"ImageNet 64x64: found {len(paths)} of 10 training batches under {base}; training on those",
                stacklevel=2,
            )
    else:
        paths, expected = _find_npz(base, "val_data.npz"), "val_data.npz"
    if not paths:
        raise missing_files("imagenet64", expected, base)
    images, labels = [], []
    for path in paths:
        data, lab = _imagenet_arrays(path)
        images.append(data)
        labels.append(lab)
    if len({im.shape[1:] for im in images}) != 1:
        raise ValueError(f"ImageNet files under {base} mix image sizes; keep one resolution per folder")
    return to_dataset(np.concatenate(images), np.concatenate(labels), "imagenet64", split, uint8, False)


def _find_npz(base: Path, name: str) -> list[Path]:
    """``base/name``, or the first ``base/*/name`` (official zips extract into a subfolder)."""
    if (base / name).is_file():
        return [base / name]
    return sorted(base.glob(f"*/{name}"))[:1] if base.is_dir() else []


def _imagenet_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``images [N, 3, S, S]`` uint8 and 0-based ``labels [N]`` of one npz file, checked."""
    check_not_empty(path, "imagenet64")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"{path} holds a single array, not an npz archive ({LAYOUTS['imagenet64']})")
        with loaded as npz:
            files = list(npz.files)
            arrays = {key: npz[key] for key in ("data", "labels") if key in files}
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise ValueError(f"{path} is not a readable npz file, or a truncated one ({err}); re-download it") from err
    except ValueError as err:
        if "pickle" not in str(err) and "Object arrays" not in str(err):
            raise
        raise ValueError(
            f"{path} holds pickled Python objects, not the plain uint8 'data' and integer 'labels' arrays of "
            f"ImageNet 64x64; they are not loaded, since unpickling a file can run code: re-download it "
            f"({LAYOUTS['imagenet64']})"
        ) from None
    if set(arrays) != {"data", "labels"}:
        raise ValueError(f"{path} has keys {files}; expected 'data' and 'labels' ({LAYOUTS['imagenet64']})")
    data, labels = arrays["data"], integer_labels(arrays["labels"], path, "integers 1..1000").reshape(-1)
    side = int(round((data.shape[1] // 3) ** 0.5)) if data.ndim == 2 else 0
    if data.dtype != np.uint8 or data.ndim != 2 or side == 0 or 3 * side * side != data.shape[1]:
        raise ValueError(f"{path}: 'data' must be uint8 [N, 3*S*S] (S = 64), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 1 or labels.max() > 1000)):
        raise ValueError(f"{path}: 'labels' must hold {data.shape[0]} values in 1..1000 (1-based)")
    return data.reshape(-1, 3, side, side), labels - 1  # rows are R, G, B planes, row-major

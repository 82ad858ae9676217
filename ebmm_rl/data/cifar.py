"""CIFAR-10 (Krizhevsky, 2009) from the python batches, and the restricted unpickler that reads them safely.

The python version of CIFAR-10 is a set of pickles, and loading a pickle can call any importable function.
:class:`RestrictedUnpickler` resolves only the globals that CIFAR batches use and refuses every other one before
it is called: ``numpy.ndarray``, ``numpy.dtype`` and ``numpy.core.multiarray._reconstruct`` (the upstream
Python-2 pickles), the same under ``numpy._core`` plus ``_codecs.encode`` for latin-1 byte strings (protocol-2
re-pickles written with numpy 2, such as the files in ``$EBMM_DATA_DIR``; checked with ``pickletools``), and
``numpy.(_)core.numeric._frombuffer`` (protocol-5 re-pickles). None of them can run code.
"""

from __future__ import annotations

import codecs
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, BinaryIO

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

__all__ = ["RefusedGlobal", "RestrictedUnpickler", "load_cifar10", "restricted_load"]

_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def load_cifar10(
    split: str = "train", root: str | os.PathLike[str] | None = None, *, uint8: bool = False
) -> ImageDataset:
    """CIFAR-10 (Krizhevsky, 2009) from the python batches, 3x32x32 in [0, 1].

    Training reads whichever of ``data_batch_1`` .. ``data_batch_5`` are present, in order, and warns when some
    are missing. The pickles are parsed with :class:`RestrictedUnpickler`.

    Args:
        split: ``"train"`` or ``"test"`` (``test_batch``).
        root: the ``cifar-10-batches-py`` folder (or its parent); ``None`` means
            ``$EBMM_DATA_DIR/cifar10/cifar-10-batches-py``.
        uint8: keep pixels as uint8 0..255 (see :class:`ImageDataset`).

    Returns:
        The data set, labels 0..9.
    """
    split = canonical_split(split, "cifar10")
    base = resolve_root(root, "cifar10")
    if not (base / "test_batch").exists() and (base / "cifar-10-batches-py").is_dir():
        base = base / "cifar-10-batches-py"
    names = _CIFAR_TRAIN if split == "train" else ("test_batch",)
    paths = [base / n for n in names if (base / n).is_file()]
    if not paths:
        raise missing_files("cifar10", names[0], base)
    if split == "train" and len(paths) < len(_CIFAR_TRAIN):
        absent = [n for n in _CIFAR_TRAIN if not (base / n).is_file()]
        warnings.warn(
            f"CIFAR-10: found {len(paths)} of 5 training batches in {base} (missing {', '.join(absent)}); "
            f"training on the images that are there",
            stacklevel=2,
        )
    images, labels = [], []
    for path in paths:
        check_not_empty(path, "cifar10")
        with path.open("rb") as f:
            try:
                batch = restricted_load(f)
            except RefusedGlobal:
                raise
            except Exception as err:  # a damaged pickle can fail in many ways; all mean "not a CIFAR batch"
                if isinstance(err, EOFError) or "truncated" in str(err):
                    raise ValueError(
                        f"{path} ends early ({path.stat().st_size:,} bytes): the batch is truncated, re-download it"
                    ) from err
                raise ValueError(f"{path} is not a CIFAR-10 python batch ({err!r}); {LAYOUTS['cifar10']}") from err
        data, lab = _cifar_arrays(batch, path)
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R, G, B planes of 32x32, row-major
        labels.append(lab)
    return to_dataset(np.concatenate(images), np.concatenate(labels), "cifar10", split, uint8, False)


def _cifar_arrays(batch: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, dict):
        raise ValueError(f"{path} holds a {type(batch).__name__}, not the dict of a CIFAR-10 python batch")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' must be a uint8 array [N, 3072]; {LAYOUTS['cifar10']}")
    labels = integer_labels(labels, path, "integers 0..9")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise ValueError(f"{path}: 'labels' must hold {data.shape[0]} values in 0..9")
    return data, labels


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global (function or class) that :class:`RestrictedUnpickler` does not allow."""


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for byte strings (latin-1 only)."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(obj, str):
        raise RefusedGlobal(f"refused _codecs.encode with encoding {encoding!r} (only latin-1 is needed)")
    return codecs.encode(obj, "latin1", errors)


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct, whichever numpy this is
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy.(_)core.numeric._frombuffer (pickle protocol 5)
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only plain containers, numbers, strings, bytes and numpy arrays.

    A pickle can call any importable function while it loads; this one resolves only the globals that CIFAR-10's
    python batches need (numpy's array and dtype reconstruction, and ``_codecs.encode`` for latin-1 byte strings
    written with pickle protocol 2) and refuses every other one before it is called.
    """

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global or raise :class:`RefusedGlobal` (a ``pickle.UnpicklingError``) naming it."""
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS)
            raise RefusedGlobal(
                f"refused global {module}.{name}: this pickle is not a plain data file (allowed: {allowed}). "
                f"Do not load it; re-download CIFAR-10 from its official source."
            ) from None


def restricted_load(file: BinaryIO, encoding: str = "bytes") -> Any:
    """Load a pickle with :class:`RestrictedUnpickler` (Python 2 strings become ``bytes`` by default)."""
    return RestrictedUnpickler(file, encoding=encoding).load()

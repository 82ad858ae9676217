"""Omniglot (Lake et al., 2015) from the upstream zips or their extracted folders, as the paper's §4.1 uses it.

Ink is 1 and background 0: the PNGs store strokes black (0) on white (1), which is inverted here (the usual
convention; the paper does not say). The 105x105 images are downscaled to 32x32 by exact area averaging: each
output pixel is the mean ink of the input area it covers, partly covered input pixels weighted by the covered
fraction (as OpenCV's ``INTER_AREA``; PIL's ``Image.BOX`` instead counts an input pixel fully or not at all by
where its centre falls, which differs by up to 0.15 at 105 -> 32). Then ``ink > 0.5`` is 1 (the paper's 0.5
threshold). PNGs are decoded with Pillow. The result is cached (see :func:`ebmm_rl.data.cache_dir`).
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ebmm_rl.data.core import (
    ImageDataset,
    cache_read,
    cache_write,
    canonical_split,
    check_image_size,
    check_not_empty,
    file_fingerprint,
    folder_fingerprint,
    missing_files,
    resolve_root,
    to_dataset,
)

__all__ = ["load_omniglot"]

_OMNIGLOT_FILES = {"train": "images_background", "test": "images_evaluation"}


def load_omniglot(
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    image_size: int = 32,
    binarize: bool = True,
    cache: bool = True,
    uint8: bool = False,
) -> ImageDataset:
    """Omniglot (Lake et al., 2015) as in the paper's §4.1: 32x32, binarised, strokes 1 on a 0 background.

    Reads ``<root>/images_background.zip`` (train) or ``images_evaluation.zip`` (test), or, when the zip is
    absent, the extracted folder ``<root>/images_background/<Alphabet>/characterNN/*.png``.

    Args:
        split: ``"train"`` (background set, 964 characters, 19,280 images) or ``"test"`` (evaluation set, 659
            characters, 13,180 images).
        root: folder holding the zips or folders; ``None`` means ``$EBMM_DATA_DIR/omniglot``.
        image_size: side of the (area-downscaled) square images.
        binarize: threshold the downscaled ink at 0.5 (``ink > 0.5`` is 1).
        cache: read and write the decoded arrays in :func:`cache_dir`.
        uint8: keep pixels as uint8 0..255 (see :class:`ImageDataset`).

    Returns:
        The data set; labels are character indices, ``class_names`` the ``"<Alphabet>/characterNN"`` names.
    """
    split = canonical_split(split, "omniglot")
    image_size = check_image_size(image_size)
    base = resolve_root(root, "omniglot")
    stem = _OMNIGLOT_FILES[split]
    zip_path, folder = base / f"{stem}.zip", base / stem
    if zip_path.is_file():
        source, fingerprint = zip_path, file_fingerprint(zip_path)
    elif folder.is_dir():
        source, fingerprint = folder, folder_fingerprint(folder)
    else:
        raise missing_files("omniglot", f"{stem}.zip or the folder {stem}/", base)
    key = {"source": str(source.resolve()), **fingerprint, "image_size": image_size, "binarize": binarize}
    arrays = cache_read("omniglot", split, key) if cache else None
    if arrays is None or not {"images", "labels", "class_names"} <= arrays.keys():
        arrays = _decode_omniglot(source, image_size, binarize)
        if cache:
            cache_write("omniglot", split, key, arrays)
    names = tuple(str(n) for n in arrays["class_names"])
    return to_dataset(arrays["images"], arrays["labels"], "omniglot", split, uint8, binarize, names)


def _omniglot_members(names: list[str], where: Path) -> dict[str, list[str]]:
    """Group PNG paths ``.../<Alphabet>/characterNN/XXXX_YY.png`` by ``"<Alphabet>/characterNN"``."""
    characters: dict[str, list[str]] = {}
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if len(parts) >= 3 and parts[-1].lower().endswith(".png") and "__MACOSX" not in parts:
            characters.setdefault(f"{parts[-3]}/{parts[-2]}", []).append(name)
    if not characters:
        raise ValueError(
            f"{where} holds no PNGs in the Omniglot layout <Alphabet>/characterNN/XXXX_YY.png; use the upstream "
            f"images_background.zip / images_evaluation.zip or their extracted folders."
        )
    return characters


def _decode_omniglot(source: Path, image_size: int, binarize: bool) -> dict[str, np.ndarray]:
    if source.is_file():
        check_not_empty(source, "omniglot")
        try:
            archive = zipfile.ZipFile(source)
        except zipfile.BadZipFile as err:
            raise ValueError(
                f"{source} is not a zip file, or a truncated one ({err}); re-download the upstream Omniglot zip."
            ) from err
        with archive:
            members = _omniglot_members(archive.namelist(), source)
            return _decode_characters(members, archive.read, image_size, binarize, source)
    paths = [str(p.relative_to(source)) for p in source.rglob("*") if p.suffix.lower() == ".png"]
    members = _omniglot_members(paths, source)
    return _decode_characters(members, lambda rel: (source / rel).read_bytes(), image_size, binarize, source)


def _decode_characters(
    members: dict[str, list[str]], read: Callable[[str], bytes], image_size: int, binarize: bool, source: Path
) -> dict[str, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    class_names = sorted(members)
    order = [(c, m) for c, name in enumerate(class_names) for m in sorted(members[name])]
    images = np.empty((len(order), 1, image_size, image_size), dtype=np.float32)
    chunk: list[np.ndarray] = []
    start = 0
    for i, (_, member) in enumerate(order):
        try:
            with Image.open(io.BytesIO(read(member))) as png:
                gray = np.asarray(png if png.mode == "1" else png.convert("L"))  # [H, W], bool or uint8
        except (UnidentifiedImageError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise ValueError(
                f"{source}: cannot read or decode {member} ({err}); the file is damaged or truncated, fetch it again."
            ) from err
        # ink: strokes 1, background 0
        chunk.append((~gray).astype(np.float32) if gray.dtype == bool else (255.0 - gray) * np.float32(1 / 255))
        if len(chunk) == 512 or i == len(order) - 1:
            if len({a.shape for a in chunk}) != 1:
                raise ValueError(f"{source}: images of different sizes; Omniglot images are all 105x105.")
            images[start : start + len(chunk), 0] = _area_resize(np.stack(chunk), image_size)  # [n, S, S]
            start += len(chunk)
            chunk = []
    np.clip(images, 0.0, 1.0, out=images)
    stored = (images > 0.5).astype(np.uint8) * 255 if binarize else images
    labels = np.array([c for c, _ in order], dtype=np.int64)
    return {"images": stored, "labels": labels, "class_names": np.array(class_names)}


def _area_weights(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]``: output pixel i averages the input pixels it overlaps, weighted by overlap."""
    edges = np.arange(size_out + 1, dtype=np.float64) * (size_in / size_out)  # output pixel borders
    j = np.arange(size_in, dtype=np.float64)
    overlap = np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j)  # [out, in]
    return (np.clip(overlap, 0.0, None) * (size_out / size_in)).astype(np.float32)


def _area_resize(images: np.ndarray, size: int) -> np.ndarray:
    """Area-average ``[..., H, W]`` float images to ``[..., size, size]`` (any ratio, down or up)."""
    rows = _area_weights(images.shape[-2], size)  # [size, H]
    cols = _area_weights(images.shape[-1], size)  # [size, W]
    return rows @ images @ cols.T

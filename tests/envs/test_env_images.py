"""Image sources of ImageRecall: the PNG decoder, Omniglot zips, procedural glyphs, resizing."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib

import numpy as np
import pytest

from envs import ImageRecallEnv
from envs.images import (
    PNGFormatError,
    area_resize,
    decode_png,
    find_omniglot,
    load_omniglot,
    procedural_glyphs,
)

CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


# ------------------------------------------------------------------------------- a small PNG encoder
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def encode_png(samples: np.ndarray, depth: int = 8, colour: int = 0, filters=(0,)) -> bytes:
    """Encode ``[H, W]`` or ``[H, W, C]`` samples; row y uses filter ``filters[y % len(filters)]``."""
    height, width = samples.shape[:2]
    flat = samples.reshape(height, -1).astype(np.uint8)  # [H, W * C]
    if depth < 8:
        bits = ((flat[:, :, None] >> np.arange(depth - 1, -1, -1)) & 1).reshape(height, -1)
        rows = np.packbits(bits, axis=1)
    else:
        rows = flat
    bpp = max(1, CHANNELS[colour] * depth // 8)
    out, prior = [], np.zeros(rows.shape[1], dtype=np.int64)
    for y in range(height):
        cur = rows[y].astype(np.int64)
        kind = filters[y % len(filters)]
        line = []
        for i in range(len(cur)):
            left = cur[i - bpp] if i >= bpp else 0
            upleft = prior[i - bpp] if i >= bpp else 0
            pred = [0, left, prior[i], (left + prior[i]) >> 1, _paeth(left, prior[i], upleft)][kind]
            line.append((cur[i] - pred) % 256)
        out.append(bytes([kind]) + bytes(line))
        prior = cur
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    body = zlib.compress(b"".join(out))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


# ------------------------------------------------------------------------------- decoder
@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)], ids=str)
def test_decode_gray8_every_filter(filters):
    image = np.random.default_rng(0).integers(0, 256, size=(9, 13), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(image, filters=filters)), image)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_decode_low_bit_depths(depth):
    samples = np.random.default_rng(depth).integers(0, 2**depth, size=(7, 11), dtype=np.uint8)
    decoded = decode_png(encode_png(samples, depth=depth, filters=(0, 1, 2, 3, 4)))
    np.testing.assert_array_equal(decoded, samples * (255 // (2**depth - 1)))


@pytest.mark.parametrize("colour", [2, 4, 6])
def test_decode_colour_to_luminance(colour):
    samples = np.random.default_rng(colour).integers(0, 256, size=(5, 6, CHANNELS[colour]), dtype=np.uint8)
    decoded = decode_png(encode_png(samples, colour=colour, filters=(4, 3, 1)))
    if colour == 4:
        expected = samples[..., 0]
    else:
        rgb = samples[..., :3].astype(np.int64)
        expected = (rgb[..., 0] * 299 + rgb[..., 1] * 587 + rgb[..., 2] * 114 + 500) // 1000
    np.testing.assert_array_equal(decoded, expected)


def test_decoder_agrees_with_pillow():
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    for depth, filters in [(1, (0, 1, 2, 3, 4)), (8, (4, 3, 2, 1, 0))]:
        samples = rng.integers(0, 2**depth, size=(21, 19), dtype=np.uint8)
        data = encode_png(samples, depth=depth, filters=filters)
        with image_module.open(io.BytesIO(data)) as im:
            np.testing.assert_array_equal(decode_png(data), np.asarray(im.convert("L")))


def test_decoder_rejects_damaged_files():
    data = encode_png(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(PNGFormatError, match="signature"):
        decode_png(b"GIF89a" + data[6:])
    damaged = bytearray(data)
    damaged[45] ^= 0xFF  # in the IDAT chunk's data (byte 33 starts the chunk: length, type, data)
    with pytest.raises(PNGFormatError, match="checksum"):
        decode_png(bytes(damaged))
    damaged = bytearray(data)
    damaged[40] ^= 0xFF  # the chunk type "IDAT" itself
    with pytest.raises(PNGFormatError, match="Damaged PNG"):
        decode_png(bytes(damaged))
    with pytest.raises(PNGFormatError, match="Damaged PNG"):
        decode_png(data[:20])  # truncated inside IHDR
    assert issubclass(PNGFormatError, ValueError)


# ------------------------------------------------------------------------------- resizing, glyphs
def test_area_resize():
    image = np.random.default_rng(0).random((105, 105)).astype(np.float32)
    blocks = image.reshape(35, 3, 35, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(area_resize(image, 35), blocks, atol=1e-5)
    np.testing.assert_allclose(area_resize(image, 16).mean(), image.mean(), atol=1e-5)
    np.testing.assert_allclose(area_resize(np.full((105, 105), 0.3), 40), 0.3, atol=1e-5)
    assert area_resize(np.zeros((2, 3, 105, 105)), 16).shape == (2, 3, 16, 16)


def test_procedural_glyphs_are_a_fixed_data_set():
    glyphs = procedural_glyphs(64, 16, 0)
    again = procedural_glyphs.__wrapped__(64, 16, 0)  # bypass the cache
    np.testing.assert_array_equal(glyphs.images, again.images)
    assert not np.array_equal(glyphs.images, procedural_glyphs.__wrapped__(64, 16, 1).images)
    assert glyphs.images.shape == (64, 1, 16, 16) and not glyphs.images.flags.writeable
    flat = glyphs.images.reshape(64, -1)
    distances = ((flat[:, None] - flat[None]) ** 2).sum(-1) + np.eye(64) * 1e9
    assert distances.min() > 0.5  # all glyphs differ visibly
    assert 0.02 < glyphs.images.mean() < 0.2


# ------------------------------------------------------------------------------- Omniglot layout
def _write_tiny_omniglot(root, alphabets=("Bravo", "Alpha"), characters=2, drawers=3) -> tuple:
    """A zip in the upstream layout: 105x105 1-bit PNGs, white paper, one black square per drawing."""
    path = root / "omniglot" / "images_background.zip"
    path.parent.mkdir(parents=True)
    squares = {}
    with zipfile.ZipFile(path, "w") as archive:
        number = 0
        for alphabet in alphabets:
            for c in range(1, characters + 1):
                number += 1
                for r in range(1, drawers + 1):
                    paper = np.ones((105, 105), dtype=np.uint8)
                    y, x = 7 * number, 5 * r
                    paper[y : y + 21, x : x + 21] = 0  # ink
                    name = f"images_background/{alphabet}/character{c:02d}/{number:04d}_{r:02d}.png"
                    archive.writestr(name, encode_png(paper, depth=1, filters=(0, 1, 2, 3, 4)))
                    squares[(f"{alphabet}/character{c:02d}", r)] = (y, x)
    return path, squares


def test_load_tiny_omniglot_zip(tmp_path):
    path, squares = _write_tiny_omniglot(tmp_path)
    assert find_omniglot(tmp_path) == path.resolve()
    glyphs = load_omniglot(path, image_size=21, drawers=2)
    assert glyphs.images.shape == (4, 2, 21, 21)
    assert glyphs.names == (
        "Alpha/character01",
        "Alpha/character02",
        "Bravo/character01",
        "Bravo/character02",
    )
    assert glyphs.source == f"omniglot:{path.resolve()}"
    for c, name in enumerate(glyphs.names):
        for r in range(2):
            y, x = squares[(name, r + 1)]
            expected = np.zeros((105, 105), dtype=np.float32)
            expected[y : y + 21, x : x + 21] = 1.0
            np.testing.assert_allclose(glyphs.images[c, r], area_resize(expected, 21), atol=1e-5)
    assert load_omniglot(path, image_size=21, drawers=2) is glyphs  # cached per process
    with pytest.raises(ValueError, match="fewer than drawers"):
        load_omniglot(path, image_size=21, drawers=4)


def test_image_recall_on_tiny_omniglot(tmp_path):
    _write_tiny_omniglot(tmp_path)
    env = ImageRecallEnv(num_patterns=3, source="omniglot", data_dir=tmp_path, drawers=3)
    assert env.image_source.startswith("omniglot:") and env.pool_size == 4
    env.reset(seed=0)
    total = 0.0
    for _ in range(env.episode_length):
        state = env.get_state()
        answer = state["answer"] if state["answer"] is not None else 0
        total += env.step(answer)[1]
    assert total == env.max_return
    assert ImageRecallEnv(source="auto", data_dir=tmp_path / "nothing").image_source == "procedural"


def test_load_omniglot_rejects_other_layouts(tmp_path):
    path = tmp_path / "flat.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.png", encode_png(np.zeros((4, 4), dtype=np.uint8)))
    with pytest.raises(ValueError, match="Omniglot layout"):
        load_omniglot(path, 16)
    with pytest.raises(FileNotFoundError, match="EBMM_DATA_DIR"):
        load_omniglot(tmp_path / "missing.zip", 16)


# ------------------------------------------------------------------------------- the real file
def _real_omniglot():
    path = find_omniglot()
    if path is None:
        message = "no $EBMM_DATA_DIR/omniglot/images_background.zip"
        if os.environ.get("EBMM_REQUIRE_DATA") == "1":
            pytest.fail(f"EBMM_REQUIRE_DATA=1 but {message} (EBMM_DATA_DIR={os.environ.get('EBMM_DATA_DIR')!r}).")
        pytest.skip(message)
    return path


def test_real_omniglot_background_set():
    path = _real_omniglot()
    glyphs = load_omniglot(path, 16)
    assert glyphs.images.shape == (964, 1, 16, 16)
    assert len({name.split("/")[0] for name in glyphs.names}) == 30
    assert 0.02 < glyphs.images.mean() < 0.2  # thin strokes on white paper
    env = ImageRecallEnv(source="omniglot", obs_type="pixels")
    assert env.image_source == f"omniglot:{path}"
    obs, _ = env.reset(seed=0)
    assert obs["pattern"].shape == (40, 40, 1) and obs["pattern"].max() > 128


def test_real_omniglot_decoder_agrees_with_pillow():
    path = _real_omniglot()
    image_module = pytest.importorskip("PIL.Image")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(".png")][::997]
        for name in names:
            data = archive.read(name)
            with image_module.open(io.BytesIO(data)) as im:
                np.testing.assert_array_equal(decode_png(data), np.asarray(im.convert("L")))

"""Data loaders: each upstream format on tiny files written here, the restricted unpickler, and the real files."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ebmm_rl.data import (
    DATASETS,
    ImageDataset,
    RefusedGlobal,
    cache_dir,
    load_cifar10,
    load_dataset,
    load_imagenet64,
    load_mnist,
    load_omniglot,
    restricted_load,
)

Image = pytest.importorskip("PIL.Image")

USER_CACHE_DIR = os.environ.get("EBMM_CACHE_DIR")  # read before the fixture below replaces it


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Tests write their caches under tmp_path, never into the user's cache."""
    monkeypatch.setenv("EBMM_CACHE_DIR", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------------ real-data rule
def require_data(*relative: str) -> Path:
    """``$EBMM_DATA_DIR`` if it holds every path in ``relative``; else skip, or fail when ``EBMM_REQUIRE_DATA=1``."""
    base = os.environ.get("EBMM_DATA_DIR")
    missing = [r for r in relative if not base or not (Path(base) / r).exists()]
    if missing:
        message = f"real data absent: {', '.join(missing)} under EBMM_DATA_DIR={base!r}"
        if os.environ.get("EBMM_REQUIRE_DATA") == "1":
            pytest.fail(f"EBMM_REQUIRE_DATA=1 but {message}")
        pytest.skip(message)
    return Path(base)


# ---------------------------------------------------------------------------------------------------- Omniglot
OMNIGLOT_CHARACTERS = ["Alpha/character01", "Alpha/character02", "Beta/character01"]
DRAWERS = 3


def omniglot_png(character: int, drawer: int) -> bytes:
    """A 105x105 1-bit PNG as upstream: white (1) background, a black (0) stroke square whose place encodes ids."""
    pixels = np.ones((105, 105), dtype=bool)
    top, left = 10 + 20 * character, 10 + 20 * drawer
    pixels[top : top + 33, left : left + 33] = False  # 33 px ≈ 10 px after 105 -> 32
    out = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(out, format="PNG")
    return out.getvalue()


def write_omniglot(root: Path, stem: str = "images_background", as_zip: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        f"{stem}/{character}/{c + 1:04d}_{d + 1:02d}.png": omniglot_png(c, d)
        for c, character in enumerate(OMNIGLOT_CHARACTERS)
        for d in range(DRAWERS)
    }
    if as_zip:
        with zipfile.ZipFile(root / f"{stem}.zip", "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    else:
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)


def expected_omniglot(character: int, drawer: int) -> torch.Tensor:
    """The square of ``omniglot_png`` as 32x32 binary ink, computed independently of the loader's resize."""
    out = torch.zeros(32, 32)
    top, left = 10 + 20 * character, 10 + 20 * drawer
    scale = 32 / 105
    for i in range(32):
        for j in range(32):
            # covered fraction of output pixel (i, j) by the square [top, top+33) x [left, left+33)
            fy = max(0.0, min((i + 1) / scale, top + 33) - max(i / scale, top)) * scale
            fx = max(0.0, min((j + 1) / scale, left + 33) - max(j / scale, left)) * scale
            out[i, j] = float(fy * fx > 0.5)
    return out


@pytest.mark.parametrize("as_zip", [True, False], ids=["zip", "folder"])
def test_omniglot_reads_the_upstream_layout(tmp_path, as_zip):
    write_omniglot(tmp_path, as_zip=as_zip)
    data = load_omniglot("train", tmp_path)
    assert data.images.shape == (len(OMNIGLOT_CHARACTERS) * DRAWERS, 1, 32, 32)
    assert data.images.dtype == torch.float32 and data.binary and data.data_shape == (1, 32, 32)
    assert data.class_names == tuple(sorted(OMNIGLOT_CHARACTERS))
    assert data.labels.tolist() == [c for c in range(3) for _ in range(DRAWERS)]
    assert set(data.images.unique().tolist()) == {0.0, 1.0}
    for c in range(3):
        for d in range(DRAWERS):
            torch.testing.assert_close(data.images[c * DRAWERS + d, 0], expected_omniglot(c, d))


def test_omniglot_grayscale_option_and_uint8(tmp_path):
    write_omniglot(tmp_path)
    gray = load_omniglot("train", tmp_path, binarize=False, image_size=21)  # 105 / 21 = 5: exact block means
    assert gray.images.shape[-2:] == (21, 21) and not gray.binary
    assert gray.images.min() >= 0 and gray.images.max() <= 1 and len(gray.images.unique()) > 2
    as_bytes = load_omniglot("train", tmp_path, uint8=True)
    assert as_bytes.images.dtype == torch.uint8 and set(as_bytes.images.unique().tolist()) == {0, 255}
    torch.testing.assert_close(as_bytes.get(torch.arange(len(as_bytes))), load_omniglot("train", tmp_path).images)


def test_omniglot_cache_is_written_once_and_used(tmp_path, monkeypatch):
    write_omniglot(tmp_path)
    first = load_omniglot("train", tmp_path)
    files = list(cache_dir().glob("omniglot-train-*.npz"))
    assert len(files) == 1 and not list(cache_dir().glob(".*"))  # no temporary file left behind
    import ebmm_rl.data.omniglot as omniglot

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(omniglot, "_decode_omniglot", no_decode)
    torch.testing.assert_close(load_omniglot("train", tmp_path).images, first.images)
    with pytest.raises(AssertionError, match="decoded again"):  # another resolution is another cache entry
        load_omniglot("train", tmp_path, image_size=16)
    zip_path = tmp_path / "images_background.zip"
    os.utime(zip_path, ns=(zip_path.stat().st_atime_ns, zip_path.stat().st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):  # a changed source invalidates the cache
        load_omniglot("train", tmp_path)


def test_omniglot_cache_can_be_disabled(tmp_path):
    write_omniglot(tmp_path)
    load_omniglot("train", tmp_path, cache=False)
    assert not cache_dir().exists() or not list(cache_dir().iterdir())


def test_omniglot_errors_name_the_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMM_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"images_evaluation\.zip.*EBMM_DATA_DIR"):
        load_dataset("omniglot", "test")
    monkeypatch.delenv("EBMM_DATA_DIR")
    with pytest.raises(FileNotFoundError, match="EBMM_DATA_DIR is not set"):
        load_dataset("omniglot", "train")
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as archive:
        archive.writestr("readme.txt", "no images")
    with pytest.raises(ValueError, match="no PNGs in the Omniglot layout"):
        load_omniglot("train", tmp_path)
    (tmp_path / "images_background.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a zip file"):
        load_omniglot("train", tmp_path)


# ---------------------------------------------------------------------------------------------------- CIFAR-10
def cifar_batch(n: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch",
        b"labels": rng.integers(0, 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def write_cifar(root: Path, batches: range = range(1, 6), n: int = 4, protocol: int = 2) -> dict[str, dict]:
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in batches] + ["test_batch"]:
        written[name] = cifar_batch(n, seed=len(written))
        with (root / name).open("wb") as f:
            pickle.dump(written[name], f, protocol=protocol)
    return written


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_reads_python_batches(tmp_path, protocol):
    written = write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all five batches: no warning
        train = load_cifar10("train", tmp_path / "cifar-10-batches-py")
    assert train.images.shape == (20, 3, 32, 32) and train.labels.shape == (20,)
    raw = np.concatenate([written[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    np.testing.assert_array_equal((train.images * 255).round().to(torch.uint8).numpy().reshape(20, 3072), raw)
    # channel planes: data[:, 1024 * c + 32 * y + x] is channel c at row y, column x
    assert train.images[3, 2, 5, 7] * 255 == pytest.approx(float(raw[3, 2 * 1024 + 5 * 32 + 7]), abs=1e-3)
    test = load_cifar10("test", tmp_path)  # the parent folder works too
    assert test.labels.tolist() == written["test_batch"][b"labels"]
    assert load_cifar10("test", tmp_path, uint8=True).images.dtype == torch.uint8


def test_cifar_warns_when_training_batches_are_missing(tmp_path):
    write_cifar(tmp_path, batches=range(1, 2))
    with pytest.warns(UserWarning, match=r"found 1 of 5 training batches .*data_batch_2"):
        train = load_cifar10("train", tmp_path)
    assert len(train) == 4


def test_cifar_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMM_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"data_batch_1 .*python version of CIFAR-10.*EBMM_DATA_DIR"):
        load_dataset("cifar10", "train")
    root = tmp_path / "cifar10" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    (root / "test_batch").write_bytes(pickle.dumps(cifar_batch(3, 0), protocol=2)[:-40])  # truncated
    with pytest.raises(ValueError, match=r"test_batch ends early .*truncated"):
        load_dataset("cifar10", "test")
    (root / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        load_dataset("cifar10", "test")
    (root / "test_batch").write_bytes(pickle.dumps({b"data": [1, 2, 3]}, protocol=2))
    with pytest.raises(ValueError, match=r"'data' must be a uint8 array \[N, 3072\]"):
        load_dataset("cifar10", "test")


class _Malicious:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_and_never_runs_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Malicious(marker)}, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match=r"refused global (posix|nt|os)\.system"):
        restricted_load(io.BytesIO(payload))
    for protocol in (0, pickle.HIGHEST_PROTOCOL):
        with pytest.raises(RefusedGlobal, match=r"refused global (__builtin__|builtins)\.eval"):
            restricted_load(io.BytesIO(pickle.dumps(_Reduce(eval, ("1 + 1",)), protocol=protocol)))
    (tmp_path / "test_batch").write_bytes(payload)  # and through the loader
    with pytest.raises(RefusedGlobal, match="system"):
        load_cifar10("test", tmp_path)
    assert not marker.exists()
    # _codecs.encode is allowed only as protocol 2 uses it, for latin-1 byte strings
    evil_codec = b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcq\x01X\x03\x00\x00\x00hexq\x02\x86q\x03Rq\x04."
    with pytest.raises(RefusedGlobal, match="encoding 'hex'"):
        restricted_load(io.BytesIO(evil_codec))
    assert restricted_load(io.BytesIO(pickle.dumps(b"\xff\x00bytes", protocol=2))) == b"\xff\x00bytes"


class _Reduce:
    def __init__(self, fn, args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


# ---------------------------------------------------------------------------------------------------- MNIST
def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.tobytes()


def write_mnist(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for kind, array, ndim in (("images", images, 3), ("labels", labels, 1)):
        name = f"{prefix}-{kind}-idx{ndim}-ubyte"
        data = idx_bytes(array)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_mnist_reads_idx_upscales_and_binarises(tmp_path, gz):
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    images[:, 7:21, 7:21] = 255  # a bright 14x14 square: strokes are bright in MNIST
    images[1, 0, 0] = 100
    labels = np.arange(5, dtype=np.uint8)
    write_mnist(tmp_path, "t10k", images, labels, gz)
    data = load_mnist("test", tmp_path)
    assert data.images.shape == (5, 1, 32, 32) and data.binary and data.labels.tolist() == [0, 1, 2, 3, 4]
    assert set(data.images.unique().tolist()) == {0.0, 1.0}
    assert data.images[0, 0].sum() == 16 * 16  # 14 px scaled by 32/28 = 16 px, the border pixels cut at 0.5
    assert data.images[0, 0, 16, 16] == 1 and data.images[0, 0, 0, 0] == 0
    raw = load_mnist("test", tmp_path, image_size=28, binarize=False)
    np.testing.assert_allclose(raw.images[:, 0].numpy() * 255, images, atol=1e-3)


def test_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist("train", tmp_path)
    images, labels = np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8)
    write_mnist(tmp_path, "train", images, labels, gz=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)  # float type code
    with pytest.raises(ValueError, match="not an IDX file"):
        load_mnist("train", tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images)[:-10])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist("train", tmp_path)
    write_mnist(tmp_path, "train", images, np.zeros(3, np.uint8), gz=False)
    with pytest.raises(ValueError, match="do not belong together"):
        load_mnist("train", tmp_path)


# ---------------------------------------------------------------------------------------------------- ImageNet
def write_imagenet(path: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 12288), dtype=np.uint8)
    labels = rng.integers(1, 1001, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, data=data, labels=labels, mean=np.zeros(12288))
    return data, labels


def test_imagenet64_reads_npz_batches(tmp_path):
    data1, labels1 = write_imagenet(tmp_path / "train_data_batch_1.npz", 3, 0)
    data2, labels2 = write_imagenet(tmp_path / "train_data_batch_2.npz", 2, 1)
    with pytest.warns(UserWarning, match="found 2 of 10 training batches"):
        train = load_imagenet64("train", tmp_path)
    assert train.images.shape == (5, 3, 64, 64) and train.data_shape == (3, 64, 64)
    assert train.labels.tolist() == (np.concatenate([labels1, labels2]) - 1).tolist()
    # CHW planar: data[:, 4096 * c + 64 * y + x]
    assert train.images[4, 1, 10, 20] * 255 == pytest.approx(float(data2[1, 4096 + 640 + 20]), abs=1e-3)
    val_data, _ = write_imagenet(tmp_path / "Imagenet64_val" / "val_data.npz", 2, 2)  # a subfolder works too
    val = load_dataset("imagenet64", "val", tmp_path, uint8=True)
    np.testing.assert_array_equal(val.images.numpy().reshape(2, -1), val_data)


def test_imagenet64_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="val_data.npz"):
        load_imagenet64("test", tmp_path)
    np.savez(tmp_path / "val_data.npz", pixels=np.zeros((1, 12288), np.uint8))
    with pytest.raises(ValueError, match="expected 'data' and 'labels'"):
        load_imagenet64("test", tmp_path)
    np.savez(tmp_path / "val_data.npz", data=np.zeros((1, 100), np.uint8), labels=np.ones(1))
    with pytest.raises(ValueError, match=r"uint8 \[N, 3\*S\*S\]"):
        load_imagenet64("test", tmp_path)
    np.savez(tmp_path / "val_data.npz", data=np.zeros((1, 12288), np.uint8), labels=np.array([[0]], dtype=object))
    with pytest.raises(ValueError):  # object arrays need pickle: refused
        load_imagenet64("test", tmp_path)


# ---------------------------------------------------------------------------------------------------- entry point
def test_load_dataset_resolves_names_splits_and_default_roots(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMM_DATA_DIR", str(tmp_path))
    write_omniglot(tmp_path / "omniglot", "images_evaluation")
    write_cifar(tmp_path / "cifar10" / "cifar-10-batches-py")
    assert load_dataset("omniglot", "evaluation").split == "test"
    data = load_dataset("CIFAR-10", "test")
    assert (data.name, data.split, len(data)) == ("cifar10", "test", 4)
    with pytest.raises(ValueError, match="known: cifar10, imagenet64, mnist, omniglot"):
        load_dataset("svhn", "train")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_dataset("cifar10", "dev")
    assert set(DATASETS) == {"omniglot", "cifar10", "mnist", "imagenet64"}


def test_image_dataset_checks_shapes():
    with pytest.raises(ValueError, match=r"\[num_images, C, H, W\]"):
        ImageDataset(torch.zeros(3, 32, 32), torch.zeros(3, dtype=torch.long), "x", "train")
    with pytest.raises(ValueError, match="float32 in"):
        ImageDataset(torch.zeros(3, 1, 2, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.long), "x", "train")


# ---------------------------------------------------------------------------------------------------- real files
def test_real_omniglot_counts_and_values_through_the_user_cache(monkeypatch):
    base = require_data("omniglot/images_background.zip", "omniglot/images_evaluation.zip")
    # the user's cache ($EBMM_CACHE_DIR or ~/.cache/ebmm_rl), so the real zips are decoded only once per machine
    if USER_CACHE_DIR:
        monkeypatch.setenv("EBMM_CACHE_DIR", USER_CACHE_DIR)
    else:
        monkeypatch.delenv("EBMM_CACHE_DIR")
    for split, count, classes in (("train", 19_280, 964), ("test", 13_180, 659)):
        load_dataset("omniglot", split, base / "omniglot")  # decodes on the first run, then reads the cache
        start = time.perf_counter()
        data = load_dataset("omniglot", split, base / "omniglot")
        assert time.perf_counter() - start < 5.0, "the cached load should take well under a second"
        assert data.images.shape == (count, 1, 32, 32) and data.labels.shape == (count,)
        assert data.num_classes == classes and int(data.labels.max()) == classes - 1
        assert torch.bincount(data.labels).eq(20).all()  # 20 drawers per character
        assert bool(((data.images == 0) | (data.images == 1)).all())
        assert 0.03 < data.images.mean() < 0.2  # strokes are 1 and sparse


def test_real_cifar10_counts_values_and_first_labels():
    base = require_data("cifar10/cifar-10-batches-py/data_batch_1", "cifar10/cifar-10-batches-py/test_batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stored copy has only data_batch_1
        train = load_dataset("cifar10", "train", base / "cifar10" / "cifar-10-batches-py")
    test = load_dataset("cifar10", "test", base / "cifar10" / "cifar-10-batches-py")
    assert train.images.shape[1:] == test.images.shape[1:] == (3, 32, 32)
    assert len(train) >= 4_000 and len(test) >= 1_000
    if len(train) == 4_000:  # the partial copy described in data/SOURCES.md
        assert len(test) == 1_000
    for data in (train, test):
        assert data.images.dtype == torch.float32 and data.images.min() >= 0 and data.images.max() <= 1
        assert set(data.labels.unique().tolist()) == set(range(10))
    # upstream values quoted in SOURCES.md
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert (train.images[0, :2, 0, :3] * 255).round().tolist() == [[59, 43, 50], [62, 46, 48]]
    assert (test.images[0, 0, 0, :3] * 255).round().tolist() == [158, 159, 165]


# ---------------------------------------------------------------------------------------- empty and truncated files
@pytest.mark.parametrize("name", ["omniglot", "cifar10", "mnist", "imagenet64"])
def test_an_empty_file_is_named_in_the_error(tmp_path, name):
    files = {
        "omniglot": "images_evaluation.zip",
        "cifar10": "test_batch",
        "mnist": "t10k-images-idx3-ubyte",
        "imagenet64": "val_data.npz",
    }
    if name == "mnist":
        write_mnist(tmp_path, "t10k", np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8), gz=False)
    empty = tmp_path / files[name]
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{files[name]} is empty \(0 bytes\).*fetch it again"):
        load_dataset(name, "test", tmp_path, **({"cache": False} if name == "omniglot" else {}))


def test_mnist_reads_the_gz_when_the_plain_file_is_empty(tmp_path):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[:, 7:21, 7:21] = 255
    labels = np.array([4, 5, 6], dtype=np.uint8)
    write_mnist(tmp_path, "t10k", images, labels, gz=True)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"")  # an interrupted gunzip beside a good .gz
    with pytest.warns(UserWarning, match=r"t10k-images-idx3-ubyte is empty .*reading .*t10k-images-idx3-ubyte\.gz"):
        data = load_mnist("test", tmp_path, image_size=28, binarize=False)
    np.testing.assert_allclose(data.images[:, 0].numpy() * 255, images, atol=1e-3)
    assert data.labels.tolist() == [4, 5, 6]


def test_truncated_files_are_named_in_the_error(tmp_path):
    images, labels = np.zeros((2, 28, 28), np.uint8), np.zeros(2, np.uint8)
    mnist = tmp_path / "mnist"
    write_mnist(mnist, "t10k", images, labels, gz=True)
    gz = mnist / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-12])  # the gzip stream loses its end
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: the gzip stream ends early.*truncated"):
        load_mnist("test", mnist)
    gz.write_bytes(gzip.compress(idx_bytes(images)[:6]))  # cut inside the header
    with pytest.raises(ValueError, match=r"6 bytes, shorter than the 16-byte IDX header: truncated"):
        load_mnist("test", mnist)
    omniglot = tmp_path / "omniglot"
    write_omniglot(omniglot, "images_evaluation")
    archive = omniglot / "images_evaluation.zip"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"images_evaluation\.zip is not a zip file, or a truncated one"):
        load_omniglot("test", omniglot, cache=False)
    imagenet = tmp_path / "imagenet64"
    write_imagenet(imagenet / "val_data.npz", 2, 0)
    npz = imagenet / "val_data.npz"
    npz.write_bytes(npz.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"val_data\.npz is not a readable npz file, or a truncated one"):
        load_imagenet64("test", imagenet)

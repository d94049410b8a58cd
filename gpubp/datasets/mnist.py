"""MNIST from the four standard IDX files, found locally or downloaded and verified.

Lookup: each file is searched, as ``NAME.gz`` or raw ``NAME``, in the ``data_dir``
argument, then ``$GPUBP_DATA``, then the per-user cache (``$XDG_CACHE_HOME/gpubp/mnist``,
by default ``~/.cache/gpubp/mnist``); in each directory and its ``mnist/`` subdirectory.
Every file is checked against its published sha256 before use.

Download: a missing file is fetched from each mirror in turn (the ``mirrors`` argument,
else ``$GPUBP_MNIST_MIRRORS``, comma-separated, else the defaults), verified, and renamed
into place in the cache.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np

from gpubp.datasets.dataset import Dataset
from gpubp.datasets.idx import read_idx
from gpubp.errors import DataError
from gpubp.fileio import atomic_writer, user_cache_dir

DATA_ENV = "GPUBP_DATA"
MIRRORS_ENV = "GPUBP_MNIST_MIRRORS"
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
# The widely published sums of the distributed .gz files, and of their contents.
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MAX_DOWNLOAD_BYTES = 64 << 20  # the largest file is 9.9 MB; a server sending more is wrong
TIMEOUT_S = 30.0


def load_mnist(data_dir=None, *, download: bool = True, mirrors=None) -> Dataset:
    """MNIST as X (N, 784) float32 in [0, 1] and y (N,) int64: 60,000 train, 10,000 test.

    Raises:
        DataError: a file is corrupt or fails its checksum, or is missing and
            ``download`` is False or every mirror failed.
    """
    dirs = search_dirs(data_dir)
    arrays = {}
    for name in (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS):
        path = find_file(name, dirs)
        if path is None:
            if not download:
                raise DataError(
                    f"MNIST file {name}(.gz) not found in {[str(d) for d in dirs]} "
                    "and download=False"
                )
            path = fetch_file(f"{name}.gz", SHA256[f"{name}.gz"], cache_dir(), mirrors)
        arrays[name] = read_idx(path)
    X_train, y_train = _images_and_labels(arrays[TRAIN_IMAGES], arrays[TRAIN_LABELS])
    X_test, y_test = _images_and_labels(arrays[TEST_IMAGES], arrays[TEST_LABELS])
    return Dataset("mnist", X_train, y_train, X_test, y_test, classes=np.arange(10))


def _images_and_labels(images: np.ndarray, labels: np.ndarray):
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels) or not len(labels):
        raise DataError(f"MNIST: images {images.shape} and labels {labels.shape} do not pair")
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(f"MNIST: images ({images.dtype}) and labels ({labels.dtype}) must be "
                        "unsigned bytes")
    if labels.max() > 9:
        raise DataError(f"MNIST: label {labels.max()} out of range 0..9")
    X = images.reshape(len(images), -1).astype(np.float32) / np.float32(255)
    return X, labels.astype(np.int64)


def search_dirs(data_dir=None) -> list[Path]:
    """The directories searched, in order: ``data_dir``, ``$GPUBP_DATA``, the cache."""
    dirs = [Path(data_dir)] if data_dir is not None else []
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]))
    dirs.append(cache_dir())
    return dirs


def cache_dir() -> Path:
    """The per-user cache for MNIST: ``$XDG_CACHE_HOME/gpubp/mnist``."""
    return user_cache_dir("mnist")


def find_file(name: str, dirs) -> Path | None:
    """The first ``name.gz`` or ``name`` in ``dirs`` (or their ``mnist/``), checksum verified.

    Raises DataError for a file that is there but fails its checksum: it is never used.
    """
    for d in dirs:
        for folder in (d, d / "mnist"):
            for candidate in (folder / f"{name}.gz", folder / name):
                if candidate.is_file():
                    _verify(candidate, SHA256[candidate.name])
                    return candidate
    return None


def _verify(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise DataError(
            f"{path}: sha256 {digest.hexdigest()} does not match the published {expected}; "
            "the file is corrupt or not the original. Delete it to download a fresh copy."
        )


def mirror_list(mirrors=None) -> list[str]:
    """Mirror base URLs: the argument, else ``$GPUBP_MNIST_MIRRORS``, else the defaults."""
    if mirrors is None:
        env = os.environ.get(MIRRORS_ENV, "")
        mirrors = [m.strip() for m in env.split(",") if m.strip()] or DEFAULT_MIRRORS
    elif isinstance(mirrors, str):
        mirrors = [mirrors]
    return list(mirrors)


def fetch_file(name: str, sha256: str, dest_dir, mirrors=None) -> Path:
    """Download ``name`` from the first mirror that serves it with the right sha256.

    The bytes go to a temporary file in ``dest_dir``, are hashed on the way, and are
    renamed to ``dest_dir/name`` only after the checksum matches.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    for base in mirror_list(mirrors):
        url = base.rstrip("/") + "/" + name
        try:
            return _download_verified(url, dest_dir / name, sha256)
        except (OSError, ValueError) as e:  # URLError/HTTPError; DataError or a malformed URL
            failures.append(f"{url}: {e}")
    raise DataError(f"could not download {name}:\n  " + "\n  ".join(failures))


def _download_verified(url: str, dest: Path, sha256: str) -> Path:
    digest, size = hashlib.sha256(), 0
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, atomic_writer(dest) as out:
        for chunk in iter(lambda: response.read(1 << 16), b""):
            size += len(chunk)
            if size > MAX_DOWNLOAD_BYTES:
                raise DataError(f"more than {MAX_DOWNLOAD_BYTES} bytes; not an MNIST file")
            digest.update(chunk)
            out.write(chunk)
        if digest.hexdigest() != sha256:
            raise DataError(f"sha256 {digest.hexdigest()} does not match {sha256}")
    return dest

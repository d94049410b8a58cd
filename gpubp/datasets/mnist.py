"""MNIST from the four standard IDX files, found locally or downloaded and verified.

Lookup: each file is searched, as ``NAME.gz`` or raw ``NAME``, in the ``data_dir``
argument, then ``$GPUBP_DATA``, then the per-user cache (``$XDG_CACHE_HOME/gpubp/mnist``,
by default ``~/.cache/gpubp/mnist``); in each directory and its ``mnist/`` subdirectory.
Every file is checked against its published sha256 before use.

Download: a missing file is fetched from each mirror in turn (the ``mirrors`` argument,
else ``$GPUBP_MNIST_MIRRORS``, comma-separated, else the defaults), verified, and renamed
into place in the cache. Each mirror has ``DOWNLOAD_DEADLINE_S`` for the whole file, then
the next one is tried.

A file that is there but cannot be used (not a regular file, too large, failing its
checksum) is an error, never skipped; the error lists every such file, the files
missing and the directories searched.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import socket
import threading
import urllib.request
from pathlib import Path

import numpy as np

from gpubp.datasets.dataset import Dataset
from gpubp.datasets.idx import read_idx
from gpubp.errors import DataError
from gpubp.fileio import atomic_writer, open_regular, user_cache_dir

DATA_ENV = "GPUBP_DATA"
MIRRORS_ENV = "GPUBP_MNIST_MIRRORS"
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
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
# The largest file is 9.9 MB (47 MB raw): a server sending more, or a local file larger,
# is not MNIST (and a local one is not hashed).
MAX_DOWNLOAD_BYTES = 64 << 20
TIMEOUT_S = 30.0  # a connect, or one read, within a download
# A whole file from one mirror (9.9 MB: 33 kB/s at least). The socket timeout bounds
# each read only; a server sending a byte every few seconds never trips it.
DOWNLOAD_DEADLINE_S = 300.0


def load_mnist(data_dir=None, *, download: bool = True, mirrors=None) -> Dataset:
    """MNIST as X (N, 784) float32 in [0, 1] and y (N,) int64: 60,000 train, 10,000 test.

    Raises:
        DataError: a file is corrupt, fails its checksum or is not a regular file; or
            files are missing and ``download`` is False or every mirror failed. The
            message lists the directories searched, the files missing and each file
            that cannot be used.
    """
    dirs = search_dirs(data_dir)
    found, missing, unusable = {}, [], []
    for name in NAMES:  # all four looked at first, so that one error tells everything
        try:
            path = find_file(name, dirs)
        except DataError as e:
            unusable.append(str(e))
            continue
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if unusable or (missing and not download):
        raise DataError(_lookup_report(dirs, missing, unusable, download))
    for name in missing:
        try:
            found[name] = fetch_file(f"{name}.gz", SHA256[f"{name}.gz"], cache_dir(), mirrors)
        except DataError as e:
            raise DataError(f"{_lookup_report(dirs, missing, [], True)}\n{e}") from e
    arrays = {name: read_idx(found[name]) for name in NAMES}
    X_train, y_train = _images_and_labels(arrays[TRAIN_IMAGES], arrays[TRAIN_LABELS])
    X_test, y_test = _images_and_labels(arrays[TEST_IMAGES], arrays[TEST_LABELS])
    return Dataset("mnist", X_train, y_train, X_test, y_test, classes=np.arange(10))


def _lookup_report(dirs, missing, unusable, download: bool) -> str:
    """Why the lookup failed: the files that cannot be used, those missing, and where
    they were looked for."""
    where = ", ".join(str(d) for d in dirs)
    lines = []
    if unusable:
        lines.append(f"MNIST: {len(unusable)} of the 4 files cannot be used (delete or "
                     "replace them; a file that fails is never used):")
        lines += [f"  {problem}" for problem in unusable]
    if missing:
        names = ", ".join(f"{name}(.gz)" for name in missing)
        lines.append(f"MNIST: {len(missing)} of the 4 files not found ({names}) in {where} "
                     "or their mnist/ subdirectories"
                     + ("" if download else ", and download=False"))
    else:
        lines.append(f"MNIST: searched {where} and their mnist/ subdirectories")
    return "\n".join(lines)


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

    Raises DataError for anything there under that name that cannot be used: not a
    regular file (a FIFO, a device, a directory), larger than any MNIST file, or
    failing its checksum. It is never used, nor looked past.
    """
    for d in dirs:
        for folder in (d, d / "mnist"):
            for candidate in (folder / f"{name}.gz", folder / name):
                if candidate.exists():  # a FIFO or a folder too: is_file() would skip them
                    _verify(candidate, SHA256[candidate.name])
                    return candidate
    return None


def _verify(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open_regular(path, DataError) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_DOWNLOAD_BYTES:  # not hashed: a 3 GiB file would take seconds
            raise DataError(f"{path}: {size:,} bytes, larger than any MNIST file "
                            f"({MAX_DOWNLOAD_BYTES:,} at most); not the original")
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


def fetch_file(name: str, sha256: str, dest_dir, mirrors=None, *,
               deadline_s: float | None = None) -> Path:
    """Download ``name`` from the first mirror that serves it with the right sha256.

    The bytes go to a temporary file in ``dest_dir``, are hashed on the way, and are
    renamed to ``dest_dir/name`` only after the checksum matches. Each mirror has
    ``deadline_s`` (default ``DOWNLOAD_DEADLINE_S``) for the whole file.

    Raises:
        DataError: every mirror failed; the message gives each one's failure.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    for base in mirror_list(mirrors):
        url = base.rstrip("/") + "/" + name
        try:
            return _download_verified(url, dest_dir / name, sha256, deadline_s)
        # URLError/HTTPError and socket errors; DataError or a malformed URL; a malformed
        # or cut response (http.client.HTTPException is neither OSError nor ValueError).
        except (OSError, ValueError, http.client.HTTPException) as e:
            failures.append(f"{url}: {type(e).__name__}: {e}")
    raise DataError(f"could not download {name}:\n  " + "\n  ".join(failures))


def _download_verified(url: str, dest: Path, sha256: str, deadline_s: float | None = None) -> Path:
    """Download ``url`` to ``dest`` if its sha256 matches, all within ``deadline_s``."""
    seconds = DOWNLOAD_DEADLINE_S if deadline_s is None else deadline_s
    digest, size = hashlib.sha256(), 0
    with _Deadline(seconds) as deadline:
        try:
            with deadline.opener().open(url, timeout=min(TIMEOUT_S, seconds)) as response, \
                    atomic_writer(dest) as out:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    size += len(chunk)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise DataError(f"more than {MAX_DOWNLOAD_BYTES} bytes; not an MNIST file")
                    digest.update(chunk)
                    out.write(chunk)
                if digest.hexdigest() != sha256:
                    deadline.check(size)  # a read the deadline cut short ends like the file
                    raise DataError(f"sha256 {digest.hexdigest()} does not match {sha256}")
        except (OSError, http.client.HTTPException):
            deadline.check(size)  # the deadline's own doing: say so
            raise
    return dest


class _Deadline:
    """A time limit on a whole download. The sockets its opener connects are shut down
    when the time is up, which ends a read blocked on them however slowly the server
    sends; :meth:`check` then raises the DataError that says so."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._sockets = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()

    def check(self, size: int) -> None:
        if self.expired:
            raise DataError(f"no complete file within {self.seconds:g} s, the deadline for "
                            f"a whole download ({size:,} bytes came); too slow or stalled")

    def watch(self, sock) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener (redirects, proxies, https) whose connections are watched."""
        deadline = self

        class Connection(http.client.HTTPConnection):
            def connect(self):
                super().connect()
                deadline.watch(self.sock)

        class SecureConnection(http.client.HTTPSConnection):
            def connect(self):
                super().connect()
                deadline.watch(self.sock)

        class Handler(urllib.request.HTTPHandler):
            def http_open(self, req):
                return self.do_open(Connection, req)

        class SecureHandler(urllib.request.HTTPSHandler):
            def https_open(self, req):
                return self.do_open(SecureConnection, req)

        return urllib.request.build_opener(Handler, SecureHandler)


def _shut(sock) -> None:
    """End both directions of ``sock`` at the OS level (not TLS's own shutdown, which
    would write to it); a read blocked on it returns."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)

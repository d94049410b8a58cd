"""The IDX format of the MNIST files: a 4-byte magic (0, 0, type, ndim), ndim big-endian
uint32 sizes, then the array in C order, big-endian. Files may be gzip-compressed.

The reader never allocates more than the data actually present: the size the header
claims is checked against the bytes that follow it before any array is made.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np

from gpubp.errors import DataError

TYPE_CODES = {
    0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 20


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file (raw or .gz), in native byte order.

    Raises:
        DataError: the file is truncated, has trailing bytes, a bad header, or bad gzip data.
    """
    path = Path(path)
    with open(path, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            return _parse(f, path)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: corrupt {'gzip ' if compressed else ''}data ({e})") from e


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """:func:`read_idx` on the uncompressed bytes of an IDX file."""
    return _parse(io.BytesIO(data), name)


def _parse(f, name) -> np.ndarray:
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0":
        raise DataError(f"{name}: not an IDX file (magic {magic.hex() or 'missing'})")
    dtype = TYPE_CODES.get(magic[2])
    if dtype is None:
        raise DataError(f"{name}: unknown IDX element type 0x{magic[2]:02x}")
    ndim = magic[3]
    if ndim == 0:
        raise DataError(f"{name}: IDX header declares 0 dimensions")
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    expected = dtype.itemsize
    for d in shape:
        expected *= d  # Python ints: no overflow, however large the claim
    data = _read_at_most(f, expected + 1)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {problem}: header claims shape {shape} ({expected} bytes of data)"
            + (f", found {len(data)}" if len(data) < expected else "")
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _read_at_most(f, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``f``, in chunks, so a false size claim allocates nothing."""
    parts, total = [], 0
    while total < limit:
        part = f.read(min(CHUNK, limit - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def write_idx(array: np.ndarray) -> bytes:
    """The IDX bytes (uncompressed) of ``array``."""
    codes = {dt.newbyteorder("="): code for code, dt in TYPE_CODES.items()}
    array = np.asarray(array)
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"array: dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(TYPE_CODES[code], copy=False).tobytes()

"""The IDX format of the MNIST files: a 4-byte magic (0, 0, type, ndim), ndim big-endian
uint32 sizes, then the array in C order, big-endian. Files may be gzip-compressed.

The reader never allocates more than the data actually present: the size the header
claims is compared with the memory this process may use, then read in chunks up to
the claim plus one byte (gzip decompresses no further than asked), and the array is
made in place from those bytes.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np

from gpubp.errors import DataError
from gpubp.fileio import open_regular, read_declared

TYPE_CODES = {
    0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
MAX_DIMS = 64  # NumPy's limit on an array's dimensions; the IDX byte allows 255


def read_idx(path) -> np.ndarray:
    """The array stored in an IDX file (raw or .gz), in native byte order.

    Raises:
        FileNotFoundError: nothing at ``path``.
        DataError: not a regular file (a FIFO, a device, a directory); the file is
            truncated, has trailing bytes, a bad header, bad gzip data, or declares more
            data than this process may allocate.
    """
    path = Path(path)
    with open_regular(path, DataError) as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        try:
            if not compressed:
                return _parse(raw, path)
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
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
    if ndim > MAX_DIMS:
        raise DataError(f"{name}: IDX header declares {ndim} dimensions; NumPy arrays have "
                        f"at most {MAX_DIMS}")
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    expected = dtype.itemsize
    for d in shape:
        expected *= d  # Python ints: no overflow, however large the claim
    data = read_declared(f, expected, name, DataError, f"its array of shape {shape}")
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {problem}: header claims shape {shape} ({expected} bytes of data)"
            + (f", found {len(data)}" if len(data) < expected else "")
        )
    # The array is the buffer just read (writable), swapped to native order in place:
    # no second copy of the data.
    array = np.frombuffer(data, dtype=dtype)
    if not dtype.isnative:
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    try:
        return array.reshape(shape)
    except ValueError as e:  # whatever else NumPy refuses in a shape
        raise DataError(f"{name}: IDX shape {shape} is not one NumPy can make ({e})") from e


def write_idx(array: np.ndarray) -> bytes:
    """The IDX bytes (uncompressed) of ``array``."""
    codes = {dt.newbyteorder("="): code for code, dt in TYPE_CODES.items()}
    array = np.asarray(array)
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"array: dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(TYPE_CODES[code], copy=False).tobytes()

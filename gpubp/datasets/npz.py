"""Reading arrays from a user's ``.npz`` archive without trusting it.

``numpy.load`` allocates the array a member's header claims before reading its bytes,
so a 200-byte file claiming 10^12 elements asks for terabytes. Here each ``.npy``
member's header is parsed first and its bytes are read in chunks, up to what the
header claims plus one; an array is made only from bytes actually present. Object
arrays (pickles) are refused. Every failure is a :class:`DataError`.
"""

from __future__ import annotations

import contextlib
import math
import tokenize
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

from gpubp.errors import DataError

# Element kinds a user's data may hold: bool, integers, floats, and byte or unicode
# strings (labels may be names).
ALLOWED_KINDS = "biufSU"
CHUNK = 1 << 20
# zipfile raises these for archives it cannot read: encrypted members (RuntimeError),
# unknown compression methods (NotImplementedError), bad CRCs and headers (BadZipFile);
# NumPy's .npy header parser lets tokenize.TokenError and SyntaxError through.
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
              NotImplementedError, ValueError, OverflowError, tokenize.TokenError, SyntaxError)


def npz_names(path) -> set[str]:
    """The array names in the archive at ``path``."""
    with _open_npz(path) as (_, names):
        return names


def read_npz(path, keys) -> dict:
    """{key: array} for ``keys`` from the .npz at ``path``; never unpickles.

    Raises:
        FileNotFoundError: nothing at ``path``.
        DataError: not a zip archive, a member missing, truncated, corrupt, or of a
            dtype other than bool/int/float/string.
    """
    with _open_npz(path) as (archive, names):
        missing = [k for k in keys if k not in names]
        if missing:
            raise DataError(f"{path}: .npz lacks arrays {missing} (has {sorted(names)})")
        return {k: _read_member(archive, f"{k}.npy", path) for k in keys}


@contextlib.contextmanager
def _open_npz(path):
    """(the zip archive at ``path``, its array names); what zipfile or a member's
    reading raises for an unreadable archive becomes a DataError."""
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive, {n[:-4] for n in archive.namelist() if n.endswith(".npy")}
    except (DataError, FileNotFoundError):
        raise
    except ZIP_ERRORS as e:
        raise DataError(f"{path}: not a readable .npz archive ({e})") from e


def _read_member(archive: zipfile.ZipFile, name: str, path) -> np.ndarray:
    with archive.open(name) as f:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise DataError(f"{path}: not a readable .npz archive ({name}: unsupported .npy "
                            f"version {version})")
        if dtype.hasobject or dtype.kind not in ALLOWED_KINDS or dtype.itemsize == 0:
            raise DataError(f"{path}: not a readable .npz archive ({name}: dtype {dtype} is "
                            "not allowed; bool, integer, float or string arrays only, no pickles)")
        expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        data = _read_at_most(f, expected + 1)
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{path}: not a readable .npz archive ({name} {problem}: its header "
                        f"claims shape {shape} of {dtype}, {expected} bytes; found {len(data)})")
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _read_at_most(f, limit: int) -> bytearray:
    """Up to ``limit`` bytes of ``f``, in chunks: memory follows what is really there."""
    data = bytearray()
    while len(data) < limit:
        part = f.read(min(CHUNK, limit - len(data)))
        if not part:
            break
        data += part
    return data

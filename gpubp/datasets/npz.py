"""Reading arrays from a user's ``.npz`` archive without trusting it, and writing one
block of rows at a time (:class:`SpooledNpz`).

``numpy.load`` allocates the array a member's header claims before reading its bytes,
so a 200-byte file claiming 10^12 elements asks for terabytes. Here each ``.npy``
member's header is parsed first, the size it claims is compared with the memory this
process may use, and its bytes are read in chunks, up to what the header claims plus
one; an array is made only from bytes actually present. Object arrays (pickles) are
refused. Every failure is a :class:`DataError`.

Members are decompressed here, not by :mod:`zipfile`: its reader stops at the size the
zip directory declares (the archive's word, not checked) and inflates bzip2 and lzma
input whole, with no bound on the output, so 1.4 KB of bzip2 became 1.25 GiB at once.
Here every method (stored, deflate, bzip2, lzma) makes at most the bytes asked for.
"""

from __future__ import annotations

import bz2
import contextlib
import io
import lzma
import math
import shutil
import struct
import tempfile
import tokenize
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

from gpubp.errors import DataError
from gpubp.fileio import open_regular, read_declared

# Element kinds a user's data may hold: bool, integers, floats, and byte or unicode
# strings (labels may be names).
ALLOWED_KINDS = "biufSU"
INPUT_CHUNK = 1 << 16  # compressed bytes handed to a decoder at a time
LZMA_FIRST_DICTIONARY = 1 << 20  # grown only when a member's matches reach further back
# NumPy's own default limit on a .npy header (numpy.load refuses longer ones).
MAX_NPY_HEADER = 10_000
# Magic and version (8 bytes), then the header length: 2 bytes in version 1, 4 in 2.
NPY_PREFIX = {(1, 0): 10, (2, 0): 12}
LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip member's local file header
LOCAL_MAGIC = b"PK\x03\x04"
# zipfile raises these for archives it cannot read: encrypted members (RuntimeError),
# unknown compression methods (NotImplementedError), bad CRCs and headers (BadZipFile);
# the decoders raise zlib.error, OSError (bzip2) and LZMAError; NumPy's .npy header
# parser lets tokenize.TokenError and SyntaxError through.
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, RuntimeError,
              NotImplementedError, ValueError, OverflowError, tokenize.TokenError, SyntaxError)


def npz_names(path) -> set[str]:
    """The array names in the archive at ``path``."""
    with _open_npz(path) as (_, _, names):
        return names


def read_npz(path, keys) -> dict:
    """{key: array} for ``keys`` from the .npz at ``path``; never unpickles.

    Raises:
        FileNotFoundError: nothing at ``path``.
        DataError: not a regular file (a FIFO, a device, a directory), not a zip
            archive, a member missing, truncated, corrupt, of a dtype other than
            bool/int/float/string, or declaring more than this process may allocate.
    """
    with _open_npz(path) as (raw, archive, names):
        missing = [k for k in keys if k not in names]
        if missing:
            raise DataError(f"{path}: .npz lacks arrays {missing} (has {sorted(names)})")
        return {k: _read_member(raw, archive.getinfo(f"{k}.npy"), path) for k in keys}


@contextlib.contextmanager
def _open_npz(path):
    """(the open file, the zip archive at ``path``, its array names); what zipfile or a
    member's reading raises for an unreadable archive becomes a DataError."""
    try:
        with open_regular(path, DataError) as raw, zipfile.ZipFile(raw) as archive:
            yield raw, archive, {n[:-4] for n in archive.namelist() if n.endswith(".npy")}
    except (DataError, FileNotFoundError):
        raise
    except MemoryError:  # e.g. zipfile reads the whole directory the archive's end claims
        raise DataError(f"{path}: not a readable .npz archive (out of memory reading "
                        "it)") from None
    except ZIP_ERRORS as e:
        raise DataError(f"{path}: not a readable .npz archive ({e})") from e


def iter_npz_rows(path, key: str, rows: int):
    """Yield the 2-D member ``key`` of the .npz at ``path`` in blocks of up to ``rows``
    rows (one empty block when it has none), decompressing one block at a time: a file
    larger than memory streams. (A
    column-major member cannot be cut by rows; it is read whole, within the memory
    bound, as :func:`read_npz` reads it.) Errors are :func:`read_npz`'s, raised from the
    block where they are found; the CRC is checked after the last block."""
    with _open_npz(path) as (raw, archive, names):
        if key not in names:
            raise DataError(f"{path}: .npz lacks the array {key!r} (has {sorted(names)})")
        info = archive.getinfo(f"{key}.npy")
        shape, fortran_order, dtype, start = _member_header(raw, info, path)
        if len(shape) != 2:
            raise DataError(f"{path}: {key} must be a 2-D array, got shape {shape}")
        if fortran_order:
            whole = _read_member(raw, info, path)
            for i in range(0, shape[0] or 1, rows):  # no rows: one empty block
                yield whole[i:i + rows]
            return
        row_bytes = shape[1] * dtype.itemsize
        with _MemberStream(raw, info, window=start + shape[0] * row_bytes + 1) as f:
            _read_exactly(f, start, info.filename)
            for i in range(0, shape[0] or 1, rows):  # no rows: one empty block
                n = min(rows, shape[0] - i)
                block = _read_exactly(f, n * row_bytes, info.filename,
                                      f"rows {i}..{i + n - 1} of the {shape} its header claims")
                yield np.frombuffer(block, dtype=dtype).reshape(n, shape[1])
            if f.read(1):  # also checks the CRC once the member is read to its end
                raise DataError(f"{path}: not a readable .npz archive ({info.filename} has "
                                f"trailing bytes after its {shape} of {dtype})")


def _member_header(raw, info: zipfile.ZipInfo, path):
    """(shape, fortran_order, dtype, bytes up to the data) of an archive member, its
    dtype and shape checked."""
    name = info.filename
    with _MemberStream(raw, info, window=NPY_PREFIX[2, 0] + MAX_NPY_HEADER) as f:
        shape, fortran_order, dtype, start = _read_npy_header(f, name, path)
    if dtype.hasobject or dtype.kind not in ALLOWED_KINDS or dtype.itemsize == 0:
        raise DataError(f"{path}: not a readable .npz archive ({name}: dtype {dtype} is "
                        "not allowed; bool, integer, float or string arrays only, no pickles)")
    if any(d < 0 for d in shape):
        raise DataError(f"{path}: not a readable .npz archive ({name}: negative shape {shape})")
    return shape, fortran_order, dtype, start


def _read_member(raw, info: zipfile.ZipInfo, path) -> np.ndarray:
    name = info.filename
    shape, fortran_order, dtype, start = _member_header(raw, info, path)
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    # Read again from the start, now that the reach is known: an lzma decoder allocates
    # its whole dictionary at once, and needs none larger than what will be read.
    # (The header above cost a dictionary of its own length at most.)
    with _MemberStream(raw, info, window=start + expected + 1) as f:
        _read_exactly(f, start, name)
        data = read_declared(f, expected, path, DataError,
                             f"member {name} (shape {shape} of {dtype})")
    if len(data) != expected:
        problem = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(f"{path}: not a readable .npz archive ({name} {problem}: its header "
                        f"claims shape {shape} of {dtype}, {expected} bytes; found {len(data)})")
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _read_npy_header(f, name: str, path):
    """(shape, fortran_order, dtype, bytes up to the data) of the .npy stream ``f``;
    the header's length is checked before the header is read."""
    prefix = _read_exactly(f, NPY_PREFIX[1, 0], name)
    version = npy_format.read_magic(io.BytesIO(prefix))
    if version not in NPY_PREFIX:
        raise DataError(f"{path}: not a readable .npz archive ({name}: unsupported .npy "
                        f"version {version})")
    prefix += _read_exactly(f, NPY_PREFIX[version] - len(prefix), name)
    length = int.from_bytes(prefix[8:], "little")
    if length > MAX_NPY_HEADER:
        raise DataError(f"{path}: not a readable .npz archive ({name}: a .npy header of "
                        f"{length:,} bytes, more than the {MAX_NPY_HEADER:,} NumPy accepts)")
    header = io.BytesIO(prefix[8:] + _read_exactly(f, length, name))
    read = (npy_format.read_array_header_1_0 if version == (1, 0)
            else npy_format.read_array_header_2_0)
    try:
        shape, fortran_order, dtype = read(header)
    except TypeError as e:  # NumPy's parser on a header dict whose keys mix bytes and str
        raise DataError(f"{path}: not a readable .npz archive ({name}: a malformed .npy "
                        f"header: {e})") from None
    return shape, fortran_order, dtype, len(prefix) + length


def _read_exactly(f, n: int, name: str, what: str = "its .npy header") -> bytes:
    data = bytearray()
    while len(data) < n:
        part = f.read(n - len(data))
        if not part:
            raise EOFError(f"{name}: ends within {what}")
        data += part
    return bytes(data)


class _MemberStream:
    """One zip member's decompressed bytes as a stream whose ``read(n)`` makes at most
    ``n`` bytes, whatever the compression method, and that checks the CRC at the end.

    The compressed bytes are read from the archive file itself, as long as the zip
    directory says (they are on disk, so that bound is the file's). ``window``: the
    most that will be read. An lzma dictionary (allocated whole when decoding starts)
    is first cut to LZMA_FIRST_DICTIONARY; a match reaching further back than that
    fails, and the member is then decoded again from its start with a dictionary
    twice as large or covering what was read, up to what the member asks and the
    window: memory follows the data decoded, not what the member's properties say.
    """

    def __init__(self, raw, info: zipfile.ZipInfo, window: int):
        if info.flag_bits & 0x1:
            raise RuntimeError(f"{info.filename} is encrypted")
        self.name = info.filename
        self._raw, self._info, self._window = raw, info, window
        self._crc, self._expected_crc = 0, info.CRC
        self._produced = 0  # bytes returned so far
        self._start(min(window, LZMA_FIRST_DICTIONARY))

    def _start(self, dictionary: int) -> None:
        self._chunks = _compressed_chunks(self._raw, self._info)
        self._decoder = _decoder(self._info.compress_type, dictionary)  # None: stored
        self._stored, self._at = b"", 0  # a stored member's current chunk
        self._ended = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._chunks.close()

    def read(self, n: int) -> bytes:
        while True:
            try:
                out = self._next(n)
                break
            except lzma.LZMAError:
                if not self._grow_dictionary(n):
                    raise
        self._produced += len(out)
        if out:
            self._crc = zlib.crc32(out, self._crc)
        elif self._ended and self._crc != self._expected_crc:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {self.name!r}")
        return out

    def _next(self, n: int) -> bytes:
        """Up to ``n`` more bytes of the member; b"" at its end."""
        out = b""
        while n > 0 and not out and not self._ended:
            if self._decoder is None:
                if self._at == len(self._stored):
                    self._stored, self._at = next(self._chunks, b""), 0
                out = self._stored[self._at:self._at + n]
                self._at += len(out)
                self._ended = not out
            elif self._decoder.eof:
                self._ended = True
            else:
                data = next(self._chunks, None) if self._decoder.needs_input else b""
                out = self._decoder.decompress(data or b"", n)
                # No more input and nothing pending: the end, as zipfile takes it too
                # (an lzma stream need not mark its end); the CRC tells a cut stream.
                self._ended = data is None and not out
        return out

    def _grow_dictionary(self, n: int) -> bool:
        """After an lzma error: decode again from the start with a larger dictionary,
        if this one was cut below what the member asks; False when it was not (the
        error is the data's). The bytes already returned are decoded and dropped."""
        decoder = self._decoder
        used = getattr(decoder, "dictionary", None)
        if used is None or used >= min(decoder.asked, self._window):
            return False
        self._chunks.close()
        self._start(min(decoder.asked, self._window,
                        max(2 * used, self._produced + n + 1)))
        left = self._produced
        while left:
            part = self._next(min(left, 1 << 20))
            if not part:
                raise lzma.LZMAError("the stream ended early when decoded again")
            left -= len(part)
        return True


def _compressed_chunks(raw, info: zipfile.ZipInfo):
    """Yield the compressed bytes of the member ``info`` from the archive file ``raw``,
    in chunks; the position is kept here, so other reads of ``raw`` may come between."""
    raw.seek(info.header_offset)
    head = raw.read(LOCAL_HEADER.size)
    if len(head) < LOCAL_HEADER.size or not head.startswith(LOCAL_MAGIC):
        raise zipfile.BadZipFile(f"{info.filename}: bad local file header")
    *_, name_length, extra_length = LOCAL_HEADER.unpack(head)
    at = info.header_offset + LOCAL_HEADER.size + name_length + extra_length
    left = info.compress_size
    while left > 0:
        raw.seek(at)
        part = raw.read(min(INPUT_CHUNK, left))
        if not part:
            raise EOFError(f"{info.filename}: the archive ends within its compressed data")
        at, left = at + len(part), left - len(part)
        yield part


def _decoder(method: int, lzma_dictionary: int):
    """A decoder with bz2's interface (``decompress(data, max_length)``, ``needs_input``,
    ``eof``) for a zip compression method; None for stored members."""
    if method == zipfile.ZIP_STORED:
        return None
    if method == zipfile.ZIP_DEFLATED:
        return _Inflate()
    if method == zipfile.ZIP_BZIP2:
        return bz2.BZ2Decompressor()
    if method == zipfile.ZIP_LZMA:
        return _ZipLzma(lzma_dictionary)
    raise NotImplementedError(f"compression method {method} is not supported (stored, "
                              "deflate, bzip2 and lzma are)")


class _Inflate:
    """Raw deflate (zlib) behind bz2's decoder interface: input the output limit left
    unread waits in ``unconsumed_tail``."""

    def __init__(self):
        self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)

    @property
    def needs_input(self) -> bool:
        return not self._zlib.unconsumed_tail

    @property
    def eof(self) -> bool:
        return self._zlib.eof

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return self._zlib.decompress(self._zlib.unconsumed_tail + data, max_length)


class _ZipLzma:
    """A zip member's lzma data: a 4-byte head (version, length of the properties), the
    LZMA1 properties (lc, lp, pb in one byte, then the dictionary size), then a raw
    LZMA1 stream. liblzma allocates the dictionary whole when it starts (up to 4 GiB,
    as the properties say), so it is cut to ``limit`` (see :class:`_MemberStream`).
    ``asked`` and ``dictionary``: the size the properties ask and the one used."""

    def __init__(self, limit: int):
        self._limit = limit
        self._head = b""
        self._lzma = None
        self.asked = self.dictionary = None

    @property
    def needs_input(self) -> bool:
        return self._lzma is None or self._lzma.needs_input

    @property
    def eof(self) -> bool:
        return self._lzma is not None and self._lzma.eof

    def decompress(self, data: bytes, max_length: int) -> bytes:
        if self._lzma is None:
            self._head += data
            if len(self._head) < 9:  # the head and the 5 bytes LZMA1's properties take
                return b""
            size = int.from_bytes(self._head[2:4], "little")
            if size != 5:
                raise lzma.LZMAError(f"lzma properties of {size} bytes; LZMA1 has 5")
            properties, data = self._head[4:9], self._head[9:]
            pb, rest = divmod(properties[0], 45)
            lp, lc = divmod(rest, 9)
            if pb > 4:
                raise lzma.LZMAError(f"lzma properties byte {properties[0]} is out of range")
            asked = int.from_bytes(properties[1:], "little")
            dictionary = max(4096, min(asked, self._limit))  # liblzma's least is 4 KiB
            self._lzma = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{
                "id": lzma.FILTER_LZMA1, "lc": lc, "lp": lp, "pb": pb,
                "dict_size": dictionary}])
            self.asked, self.dictionary = asked, dictionary
        return self._lzma.decompress(data, max_length)


class SpooledNpz:
    """An ``.npz`` whose arrays are built block by block (rows appended) and written at the
    end, the blocks held in temporary files meanwhile, not in memory.

        with SpooledNpz() as spool:
            for block in ...: spool.add("labels", block)
            spool.write(f, classes=small_array)

    Each array keeps the dtype and row shape of its first block. The archive is what
    ``np.savez`` writes (stored members, no pickles), read back by ``np.load``.
    """

    def __init__(self):
        self._spools: dict[str, list] = {}  # name -> [temporary file, dtype, row shape, rows]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for spool in self._spools.values():
            spool[0].close()

    def add(self, name: str, block) -> None:
        block = np.ascontiguousarray(block)
        spool = self._spools.get(name)
        if spool is None:
            spool = self._spools[name] = [tempfile.TemporaryFile(), block.dtype,
                                          block.shape[1:], 0]
        if block.dtype != spool[1] or block.shape[1:] != spool[2]:
            raise ValueError(f"{name}: a block of {block.dtype}{block.shape[1:]} after blocks "
                             f"of {spool[1]}{spool[2]}")
        spool[0].write(block.tobytes())
        spool[3] += block.shape[0]

    def write(self, f, **whole) -> None:
        """Write the archive to the binary file ``f``: the spooled arrays, then the arrays
        in ``whole`` as they are."""
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, (spool, dtype, row_shape, rows) in self._spools.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    npy_format.write_array_header_1_0(member, {
                        "descr": npy_format.dtype_to_descr(dtype), "fortran_order": False,
                        "shape": (rows, *row_shape)})
                    spool.seek(0)
                    shutil.copyfileobj(spool, member, 1 << 20)
            for name, array in whole.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    npy_format.write_array(member, np.asarray(array), allow_pickle=False)

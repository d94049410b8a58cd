"""Hostile conditions for every loader of a user's file: non-regular files (a FIFO with
no writer, /dev/zero, a directory), a 3 GiB sparse file, decompression bombs under every
compression method, headers claiming more than memory or more dimensions than NumPy
has, a download that trickles, and MNIST lookups that fail.

The loaders run in a child process under a 1 GiB address-space limit and a wall-clock
limit (the harness, :func:`run_hostile` and tests/hostile_worker.py), so that a hang
or a MemoryError fails its own test, not the suite: all cases share one worker, each
in a fork of it."""

import base64
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import QuietHandler
from safetensors.numpy import save as safetensors_save

import gpubp
from gpubp import checkpoint, fileio
from gpubp.datasets import load_mnist, mnist, parse_idx, write_idx
from gpubp.errors import DataError, ModelFileError
from gpubp.fileio import SAFETENSORS_HEADER_LIMIT, cgroup_memory_room, read_safetensors_bytes

WORKER = Path(__file__).with_name("hostile_worker.py")
ADDRESS_SPACE = 1 << 30  # the child's: gpubp and NumPy take about 120 MiB of it
CASE_TIMEOUT_S = 20.0
GIB_125 = 1280 << 20  # what the bombs inflate to or claim: more than the child may use
SPARSE = 3 << 30
CLAIM = r"needs 1,342,177,280 bytes, more than the [\d,]+ this process may still allocate"


# ---- the harness ---------------------------------------------------------------------

def run_hostile(cases, *, limit=ADDRESS_SPACE, timeout=CASE_TIMEOUT_S, env=None):
    """Run loader calls in a child process under RLIMIT_AS ``limit``, each case
    ({"id", "loader", "path", "kwargs"}; loaders: hostile_worker.loaders) in a fork of
    it, killed after ``timeout`` seconds.

    Returns (the child's import report, {id: result}), a result being {"outcome":
    "returned" | "raised" | "hung" | "crashed", "type": the exception's class name,
    "message", "seconds"}.
    """
    request = json.dumps({"limit": limit, "timeout": timeout, "cases": cases})
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    try:
        child = subprocess.run([sys.executable, str(WORKER)], input=request, text=True,
                               capture_output=True, env=env,
                               timeout=len(cases) * (timeout + 5) + 60)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the harness's worker itself hung ({e})")
    lines = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    if not lines:
        pytest.fail(f"the harness's worker did not start: {child.stderr[-2000:]}")
    return lines[0], {result["id"]: result for result in lines[1:]}


def run_in_child(loader: str, path, **kwargs) -> dict:
    """One loader call under the harness; its result."""
    _, results = run_hostile([{"id": "one", "loader": loader, "path": str(path),
                               "kwargs": kwargs}])
    return results["one"]


def assert_refused(result: dict, error: str, *patterns) -> None:
    """The call raised ``error`` (a class name) with a message matching ``patterns``:
    not a hang, a crash, a MemoryError or another exception."""
    assert result is not None, "no result: the worker stopped before this case"
    assert result["outcome"] != "hung", f"hung: {result['message']}"
    assert result["outcome"] != "crashed", result["message"]
    assert result["outcome"] == "raised", f"returned instead of raising {error}"
    assert result["type"] == error, f"{result['type']}: {result['message']}"
    for pattern in patterns:
        assert re.search(pattern, result["message"]), (pattern, result["message"])


def test_the_harness_reports_each_outcome():
    cases = [{"id": name, "loader": name, "path": "-"}
             for name in ("return", "raise", "hang", "allocate", "die")]
    head, results = run_hostile(cases, timeout=1.0)
    assert head["import"] == "ok"
    assert results["return"]["outcome"] == "returned"
    assert results["raise"]["outcome"] == "raised" and results["raise"]["type"] == "KeyError"
    assert results["hang"]["outcome"] == "hung" and results["hang"]["seconds"] < 5
    assert results["allocate"]["type"] == "MemoryError"  # the address-space limit holds
    assert results["die"]["outcome"] == "crashed" and "signal 9" in results["die"]["message"]


# ---- files for the child -------------------------------------------------------------

# Made once by compressing a .npy header claiming shape (10,) of float64 (80 bytes),
# then 1.25 GiB of zeros, as one stream (bzip2 level 9; raw LZMA1 behind the zip lzma
# head, lc=3 lp=0 pb=2, 1 MiB dictionary); both then zlib-compressed and base64-encoded
# here. Too slow to make per run (10 s), and a single stream cannot be pieced together.
BZIP2_BOMB = (
    "eNpzisqwNHSMVAuOVFLYqc9a53B/wQMBhycJVxiZnRTWu97l4mBg4FBgKJH0dWsxW5zR1nOh/0qVo2jw"
    "lSOXld2cGZSVPfK6GFYtchBlCA20eMsYwDLJQ/mK1MES5okni06eTxf/UZN/mOvrGpZT9UVnU+XfzJ3V"
    "e/xVRsBG349zDvkvEUk6wanA4KnSBHUCH+ej+4zxfQ4MB8CWGjT4ujktUF3J1TB9VH5UflSe1vJLyqR/"
    "MIRyu4DkWcAqzrBqLgviVDvqoTJP70lXwULFaz+2MwEAfE1SOw=="
)
LZMA_BOMB = (
    "eNrtzftPFAQAAOBrBpNFQkNNykvLFEIze4x0DOZccWMKJagTKemHxOUDobJlOpeZrtlMD4YebbAeMpR0"
    "5pytaSqUqznTxMd0qDQQK8oYoxVHnjv/Drfv+we+pHsTAq8GAqmBQEHt5l2d5z9Ys6zs/gnTs79qaJhT"
    "2Hd95Q/Bv5Ye7egbu2vm4Wj9pYKMSd0PPrnmjWdnVIYmZn8Xi9UN3xlNbbuavHjxjs/iWR9/m/BeaM7s"
    "L0LXfht/ZKgkOpgXO9NVvfzCQO70Qyd/7t19+akNByPVH46L1zzUu/7Kw+EpA8fntiUGdwymBBteCiw/"
    "G9q6ZH9XWbQonvdj8/y30ir76/M7v2nv2fpLZmUwN1z/3IphL6anbdzS8Hft5xdX1lz4pKOiq+jP3PqC"
    "0ZPrhkL/F/1e3F2TuCC98YXG7nM9+f/N6/9o9ZRpV75/eV74sZ2Jw8pPVuWMbH3m+UjTqHua/vgyKetm"
    "S3zRpL1vJo+uaT42Y9vjXVWNzRPKb2ae2tReF9myPis8kLF6ML01MVIYuX15/8XtKScmlkT/DWc/ndD0"
    "dd+qtqrCUHJ7+IGWfa8FD585kDHmldLNvRXFC4/1vrO3tOdGWcLwoZ869sVuFU9++/QjZeNnDV0ryY0+"
    "8XpSzvunslb8eiin/8TRqeUtKXmzK2ZtTxsRT62NVr9bGr3vdLwuMz9lT2xd561Pp01d0Lpt0z8bN7Qu"
    "UavVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9Vq"
    "tVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1W"
    "q9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1"
    "Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar"
    "1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVa"
    "rVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvV"
    "arVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqt"
    "VqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9Vq"
    "tVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1W"
    "q9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1Wq1"
    "Wq1Wq9VqtVqtVqvVarVarVar1Wq1Wq1Wq9VqtVqtVqvVarVarVar1eq7vi59NLZqbTw+0D0zcAcrjl3V"
)

# zip structures (APPNOTE 4.3.7, 4.3.12, 4.3.16), written by hand: zipfile cannot store
# bytes already compressed.
LOCAL = struct.Struct("<4s5H3L2H")
CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
END = struct.Struct("<4s4H2LH")


def zip_archive(members) -> bytes:
    """A zip archive of (name, method, compressed bytes); the CRC is 0 and both sizes
    the compressed length: the archive's word, which the reader must not need."""
    out, directory = bytearray(), bytearray()
    for name, method, data in members:
        name = name.encode()
        offset = len(out)
        out += LOCAL.pack(b"PK\x03\x04", 63, 0, method, 0, 0x21, 0, len(data), len(data),
                          len(name), 0) + name + data
        directory += CENTRAL.pack(b"PK\x01\x02", 63, 3, 63, 0, 0, method, 0, 0x21, 0,
                                  len(data), len(data), len(name), 0, 0, 0, 0, 0,
                                  offset) + name
    end = END.pack(b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), len(out), 0)
    return bytes(out + directory + end)


def npy_header(shape, descr="|u1") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return out.getvalue()


def deflate_zeros(head: bytes, mib: int) -> bytes:
    """A raw deflate stream of ``head`` then ``mib`` MiB of zeros, about 1 KB a MiB:
    one compressed MiB repeated. Each ends in a full flush, which resets the
    compressor, so every copy is the same and decodes on its own."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = c.compress(head) + c.flush(zlib.Z_FULL_FLUSH)
    one = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH) == one
    return start + one * mib + c.flush()


def gzip_zeros(head: bytes, mib: int) -> bytes:
    """A gzip file of ``head`` then ``mib`` MiB of zeros: gzip members concatenated."""
    return gzip.compress(head, mtime=0) + gzip.compress(bytes(1 << 20), mtime=0) * mib


def zip_lzma(data: bytes) -> bytes:
    """``data`` as a zip member's lzma stream: the 4-byte head, the 5 bytes of LZMA1
    properties, the raw stream."""
    filters = [{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 20, "lc": 3, "lp": 0, "pb": 2}]
    properties = bytes([(2 * 5 + 0) * 9 + 3]) + (1 << 20).to_bytes(4, "little")
    return (struct.pack("<BBH", 9, 4, 5) + properties
            + lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters))


def npz_bomb(method: int, member: bytes) -> bytes:
    y = npy_bytes(np.zeros(10))
    return zip_archive([("X.npy", method, member), ("y.npy", zipfile.ZIP_STORED, y)])


def npy_bytes(array) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def sparse(path: Path, head: bytes = b"") -> Path:
    """A SPARSE-byte file at ``path``: ``head``, then zeros that take no disk."""
    path.write_bytes(head)
    os.truncate(path, SPARSE)
    return path


LOADERS = ("read_idx", "load_npz", "read_npz", "npz_names", "load_mnist",
           "read_safetensors_bytes")
SUFFIX = {"read_idx": "x.idx.gz", "read_safetensors_bytes": "m.safetensors",
          "load_mnist": f"{mnist.TRAIN_IMAGES}.gz"}
NON_REGULAR = {"fifo": "is a FIFO", "dev-zero": "is a character device",
               "directory": "is a directory"}
SPARSE_MESSAGE = {  # a 3 GiB file of zeros: refused on its first bytes, or on its size
    "read_idx": "unknown IDX element type 0x00", "load_npz": "not a readable .npz archive",
    "read_npz": "not a readable .npz archive", "npz_names": "not a readable .npz archive",
    "load_mnist": "larger than any MNIST file",
    "read_safetensors_bytes": "header is not valid JSON",
}


def special_cases(root: Path) -> list:
    """(case, loader, path given, path named in the error) for each loader and kind."""
    cases = []
    for kind in (*NON_REGULAR, "sparse-3g"):
        for loader in LOADERS:
            folder = root / f"{kind}-{loader}"
            folder.mkdir()
            path = folder / SUFFIX.get(loader, "x.npz")
            if kind == "fifo":
                os.mkfifo(path)  # no writer: a blocking open would wait forever
            elif kind == "directory":
                path.mkdir()
            elif kind == "dev-zero":
                if loader == "load_mnist":
                    path.symlink_to("/dev/zero")
                else:
                    path = Path("/dev/zero")
            else:
                sparse(path)
            given = folder if loader == "load_mnist" else path  # MNIST: its data_dir
            cases.append((f"{kind}/{loader}", loader, given, path))
    return cases


def bomb_cases(root: Path) -> list:
    """(case, loaders, path, kwargs) for the decompression bombs and odd headers."""
    small = npy_header((10,), "<f8")  # claims 80 bytes; 1.25 GiB follow it
    claims = npy_header((1280, 1024, 1024))  # claims 1.25 GiB
    idx_claims = b"\0\0\x08\x03" + np.array([1280, 1024, 1024], ">u4").tobytes()
    idx_small = b"\0\0\x08\x01" + np.array([10], ">u4").tobytes()
    files = {
        "gzip-idx-claiming-1.25GiB.gz": gzip_zeros(idx_claims, GIB_125 >> 20),
        "gzip-idx-1.25GiB-behind-a-small-claim.gz": gzip_zeros(idx_small, GIB_125 >> 20),
        "deflate-npz-claiming-1.25GiB.npz": npz_bomb(
            zipfile.ZIP_DEFLATED, deflate_zeros(claims, GIB_125 >> 20)),
        "deflate-npz-1.25GiB-behind-a-small-claim.npz": npz_bomb(
            zipfile.ZIP_DEFLATED, deflate_zeros(small, GIB_125 >> 20)),
        "bzip2-npz-claiming-1.25GiB.npz": npz_bomb(
            zipfile.ZIP_BZIP2, bz2.compress(claims + bytes(2 << 20))),
        "bzip2-npz-1.25GiB-behind-a-small-claim.npz": npz_bomb(
            zipfile.ZIP_BZIP2, zlib.decompress(base64.b64decode("".join(BZIP2_BOMB)))),
        "lzma-npz-claiming-1.25GiB.npz": npz_bomb(
            zipfile.ZIP_LZMA, zip_lzma(claims + bytes(2 << 20))),
        "lzma-npz-1.25GiB-behind-a-small-claim.npz": npz_bomb(
            zipfile.ZIP_LZMA, zlib.decompress(base64.b64decode("".join(LZMA_BOMB)))),
        "idx-65-dimensions.idx": b"\0\0\x08\x41" + bytes(4 * 65),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    header = json.dumps({"w": {"dtype": "U8", "shape": [SPARSE],
                               "data_offsets": [0, SPARSE]}}).encode()
    sparse(root / "claims-3GiB.safetensors", len(header).to_bytes(8, "little") + header)
    os.truncate(root / "claims-3GiB.safetensors", 8 + len(header) + SPARSE)
    (root / "header-over-100MB.safetensors").write_bytes(
        (SAFETENSORS_HEADER_LIMIT + 1).to_bytes(8, "little") + b"{}")
    npz = ("load_npz", "read_npz")
    return [(name, ("read_idx",) if name.startswith("gzip") else npz, root / name)
            for name in files if "npz" in name or name.startswith("gzip")] + [
        ("idx-65-dimensions.idx", ("read_idx", "parse_idx"), root / "idx-65-dimensions.idx"),
        ("claims-3GiB.safetensors", ("read_safetensors_bytes",),
         root / "claims-3GiB.safetensors"),
        ("header-over-100MB.safetensors", ("read_safetensors_bytes",),
         root / "header-over-100MB.safetensors"),
    ]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Every case of this file's child-process tests, run once in one worker:
    {"head": the import report, case id: (result, path named in the error)}."""
    root = tmp_path_factory.mktemp("hostile")
    cases, named = [], {}
    for case, loader, given, path in special_cases(root):
        cases.append({"id": case, "loader": loader, "path": str(given)})
        named[case] = path
    for name, loaders, path in bomb_cases(root):
        for loader in loaders:
            cases.append({"id": f"{name}/{loader}", "loader": loader, "path": str(path)})
            named[f"{name}/{loader}"] = path
    empty = tmp_path_factory.mktemp("empty-cache")  # MNIST: no other folder to search
    head, results = run_hostile(cases, env={"XDG_CACHE_HOME": str(empty),
                                            mnist.DATA_ENV: None})
    return {"head": head, **{case: (results.get(case), named[case]) for case in named}}


# ---- in the child: non-regular and huge sparse files ---------------------------------

def test_gpubp_imports_under_the_child_limit_and_leaves_room(hostile):
    head = hostile["head"]
    assert head["import"] == "ok", head
    assert 256 << 20 < head["available"] < GIB_125  # the bombs' claims exceed it


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("kind", [*NON_REGULAR, "sparse-3g"])
def test_non_regular_and_huge_sparse_files_are_refused_at_once(hostile, kind, loader):
    """A FIFO with no writer, /dev/zero and a directory are refused before a byte is
    read (never a hang, never an endless read); a 3 GiB sparse file on its first bytes
    (IDX, .npz, safetensors) or its size (MNIST: not hashed)."""
    result, path = hostile[f"{kind}/{loader}"]
    error = "ModelFileError" if loader == "read_safetensors_bytes" else "DataError"
    message = NON_REGULAR.get(kind) or SPARSE_MESSAGE[loader]
    assert_refused(result, error, re.escape(str(path)), re.escape(message))
    assert result["seconds"] < 5


# ---- in the child: bombs and odd headers ---------------------------------------------

@pytest.mark.parametrize("case,message", [
    ("gzip-idx-claiming-1.25GiB.gz/read_idx", CLAIM),
    ("gzip-idx-1.25GiB-behind-a-small-claim.gz/read_idx", "has trailing bytes"),
    *[(f"{method}-npz-claiming-1.25GiB.npz/{loader}", CLAIM)
      for method in ("deflate", "bzip2", "lzma") for loader in ("load_npz", "read_npz")],
    *[(f"{method}-npz-1.25GiB-behind-a-small-claim.npz/{loader}", r"X\.npy has trailing bytes")
      for method in ("deflate", "bzip2", "lzma") for loader in ("load_npz", "read_npz")],
])
def test_decompression_bombs_are_a_data_error_not_a_memory_error(hostile, case, message):
    """Under a 1 GiB address space: a claim of 1.25 GiB is refused before anything is
    allocated for it (naming both sizes), and 1.25 GiB behind a claim of 80 bytes is
    decompressed no further than the claim, whatever the method: zipfile inflated a
    1 KB bzip2 member to 1.25 GiB in one call, whatever the header said."""
    result, path = hostile[case]
    assert_refused(result, "DataError", re.escape(str(path)), message)
    assert result["seconds"] < 10


@pytest.mark.parametrize("loader", ["read_idx", "parse_idx"])
def test_idx_with_more_dimensions_than_numpy_allows_is_a_data_error(hostile, loader):
    result, path = hostile[f"idx-65-dimensions.idx/{loader}"]
    assert_refused(result, "DataError", re.escape(str(path)),
                   "declares 65 dimensions; NumPy arrays have at most 64")


@pytest.mark.parametrize("case,message", [
    ("claims-3GiB.safetensors", r"the file needs 3,221,225,5\d\d bytes, more than"),
    ("header-over-100MB.safetensors", "over the safetensors limit of 100,000,000"),
])
def test_safetensors_claims_are_refused_before_reading(hostile, case, message):
    result, path = hostile[f"{case}/read_safetensors_bytes"]
    assert_refused(result, "ModelFileError", re.escape(str(path)), message)
    assert result["seconds"] < 5


def test_run_in_child_runs_one_call(tmp_path):
    path = tmp_path / "a.idx"
    path.write_bytes(write_idx(np.arange(6, dtype=np.uint8)))
    assert run_in_child("read_idx", path)["outcome"] == "returned"
    fifo = tmp_path / "f.idx"
    os.mkfifo(fifo)
    assert_refused(run_in_child("read_idx", fifo), "DataError", "is a FIFO")


def test_idx_of_64_dimensions_loads_and_of_65_is_a_data_error():
    assert parse_idx(b"\0\0\x08\x40" + np.ones(64, ">u4").tobytes() + b"x").ndim == 64
    with pytest.raises(DataError, match="<bytes>: IDX header declares 255 dimensions"):
        parse_idx(b"\0\0\x08\xff" + bytes(4 * 255))


# ---- reading what a header declares --------------------------------------------------

def test_read_declared_refuses_a_claim_beyond_memory_once_the_data_goes_on(monkeypatch):
    """A claim larger than the memory left: refused, naming both sizes, after one chunk
    shows the stream really goes on; a stream shorter than that comes back whole, for
    the caller's "truncated". Nothing near the claim is allocated either way."""
    monkeypatch.setattr(fileio, "available_memory", lambda: 10 << 20)
    claim = 100 << 20
    with pytest.raises(DataError, match=r"^f: X needs 104,857,600 bytes, more than the "
                                         r"10,485,760 this process may still allocate"):
        fileio.read_declared(io.BytesIO(bytes(3 << 20)), claim, "f", DataError, "X")
    assert fileio.read_declared(io.BytesIO(bytes(100)), claim, "f", DataError) == bytes(100)
    data = fileio.read_declared(io.BytesIO(bytes(5 << 20)), 4 << 20, "f", DataError)
    assert len(data) == (4 << 20) + 1  # within memory: up to the claim and one more


# ---- read_safetensors_bytes ----------------------------------------------------------

def safetensors_file(path: Path, header, data: bytes = b"", prefix: bytes = b"") -> Path:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(prefix + len(text).to_bytes(8, "little") + text + data)
    return path


def test_read_safetensors_bytes_returns_a_model_or_checkpoint_whole(tmp_path):
    model = tmp_path / "m.safetensors"
    gpubp.MLP((4, 3, 2), backend="numpy", seed=0).save(model)
    assert read_safetensors_bytes(model, error=ModelFileError) == model.read_bytes()
    body = safetensors_save({"param.0": np.arange(6.0).reshape(2, 3)}, metadata={"a": "1"})
    ckpt = tmp_path / "c.ckpt"
    ckpt.write_bytes(checkpoint.seal(body))
    data = read_safetensors_bytes(ckpt, error=ModelFileError, prefix=checkpoint.HEAD)
    assert data == ckpt.read_bytes() and data[checkpoint.HEAD:] == body
    empty = safetensors_file(tmp_path / "e.safetensors", {"__metadata__": {"a": "b"}})
    assert read_safetensors_bytes(empty, error=ModelFileError) == empty.read_bytes()


W = {"dtype": "F32", "shape": [2]}


@pytest.mark.parametrize("header,data,message", [
    (b"", b"", "header is not valid JSON"),
    ({"w": {**W, "data_offsets": [0, 8]}}, bytes(7), r"but its header describes \d+ bytes.*truncated"),
    ({"w": {**W, "data_offsets": [0, 8]}}, bytes(9), "has bytes after its tensors"),
    (b"{", b"", "header is not valid JSON"),
    (b"[]", b"", "header is not a JSON object"),
    (b'{"a": 1, "a": 2}', b"", "names 'a' twice"),
    (b"[" * 100_000 + b"]" * 100_000, b"", "header is not valid JSON"),
    ({"w": W}, bytes(8), r"tensor 'w' has data_offsets None"),
    ({"w": 5}, b"", r"tensor 'w' has data_offsets None"),
    ({"w": {**W, "data_offsets": [0, -8]}}, b"", "expected .begin, end.*0 ≤ begin ≤ end"),
    ({"w": {**W, "data_offsets": [8, 0]}}, b"", "0 ≤ begin ≤ end"),
    ({"w": {**W, "data_offsets": [0, True]}}, b"", "0 ≤ begin ≤ end"),
    ({"w": {**W, "data_offsets": [0, 8.0]}}, bytes(8), "0 ≤ begin ≤ end"),
    ({"w": {**W, "data_offsets": [0, 8, 16]}}, bytes(16), "0 ≤ begin ≤ end"),
    ({"w": {**W, "data_offsets": [0, 10**400]}}, b"",
     r"describes 100000000000… \(401 digits\) bytes, more than the 1,099,511,627,776"),
    (b'{"w": {"data_offsets": [0, 1' + b"0" * 5000 + b"]}}", b"", "header is not valid JSON"),
], ids=["empty", "truncated", "trailing", "not-json", "json-list", "duplicate", "deep",
        "no-offsets", "not-an-object", "negative", "reversed", "bool", "float", "three",
        "400-digits", "5000-digits"])
def test_read_safetensors_bytes_refuses_malformed_files(tmp_path, header, data, message):
    path = safetensors_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ModelFileError, match=message) as info:
        read_safetensors_bytes(path, error=ModelFileError)
    assert str(info.value).startswith(f"{path}: ")


def test_read_safetensors_bytes_refuses_a_header_longer_than_the_file(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x02\0\0")
    with pytest.raises(ModelFileError, match="3 bytes, too short for the 8 bytes"):
        read_safetensors_bytes(path, error=ModelFileError)
    path.write_bytes((1000).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelFileError, match="header length 1,000 bytes, but only 2 follow"):
        read_safetensors_bytes(path, error=ModelFileError)
    with pytest.raises(ModelFileError, match="more than the 5 this reader accepts"):
        read_safetensors_bytes(path, error=ModelFileError, limit=5)


def test_read_safetensors_bytes_on_3_gib_of_zeros_reads_nothing_of_it(tmp_path):
    path = sparse(tmp_path / "zeros.safetensors")
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ModelFileError, match="header is not valid JSON"):
            read_safetensors_bytes(path, error=ModelFileError)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 1 and peak < 1 << 20


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_read_safetensors_bytes_refuses_non_regular_files(tmp_path, kind):
    path = tmp_path / "m.safetensors"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    with pytest.raises(ModelFileError, match=f"{re.escape(str(path))}: is a"):
        read_safetensors_bytes(path, error=ModelFileError)
    with pytest.raises(FileNotFoundError):
        read_safetensors_bytes(tmp_path / "none", error=ModelFileError)


# ---- memory accounting ---------------------------------------------------------------

@pytest.mark.parametrize("version,membership,files,room", [
    (2, "0::/a/b\n", {"a/b/memory.max": "1000000", "a/b/memory.current": "400000",
                      "a/b/memory.stat": "anon 1\ninactive_file 100000\n"}, 700_000),
    (2, "0::/a/b\n", {"a/b/memory.max": "max", "a/b/memory.current": "400000",
                      "a/memory.max": "600000", "a/memory.current": "500000"}, 100_000),
    (2, "0::/not/visible\n", {"memory.max": "2000", "memory.current": "500"}, 1500),
    (1, "4:memory:/c\n0::/\n", {"memory/c/memory.limit_in_bytes": "9000",
                                 "memory/c/memory.usage_in_bytes": "5000",
                                 "memory/c/memory.stat": "total_inactive_file 1000\n"}, 5000),
    (1, "4:memory:/c\n", {"memory/c/memory.limit_in_bytes": "9223372036854771712",
                          "memory/c/memory.usage_in_bytes": "5000"}, None),
    (2, "0::/\n", {}, None),
], ids=["v2", "v2-parent", "v2-root", "v1", "v1-unlimited", "none"])
def test_cgroup_memory_room(tmp_path, version, membership, files, room):
    """A container's memory limit is a cgroup's, which MemAvailable does not show."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "cgroup").write_text(membership)
    assert cgroup_memory_room(tmp_path, tmp_path / "cgroup") == room


# ---- MNIST: errors that say where they looked ----------------------------------------

@pytest.fixture
def synthetic_mnist(isolated_env, monkeypatch):
    """{name: gzipped IDX bytes} of four small stand-in files, their sums in place of
    the published ones."""
    rng = np.random.default_rng(0)
    arrays = {mnist.TRAIN_IMAGES: rng.integers(0, 256, (12, 28, 28)).astype(np.uint8),
              mnist.TRAIN_LABELS: (np.arange(12) % 10).astype(np.uint8),
              mnist.TEST_IMAGES: rng.integers(0, 256, (5, 28, 28)).astype(np.uint8),
              mnist.TEST_LABELS: np.arange(5, dtype=np.uint8)}
    payloads = {name: gzip.compress(write_idx(a), mtime=0) for name, a in arrays.items()}
    sums = {**mnist.SHA256, **{f"{name}.gz": hashlib.sha256(p).hexdigest()
                               for name, p in payloads.items()}}
    monkeypatch.setattr(mnist, "SHA256", sums)
    return payloads


def test_mnist_error_lists_folders_missing_and_unusable_files(synthetic_mnist, isolated_env,
                                                               monkeypatch):
    first, second = isolated_env / "first", isolated_env / "second"
    (first / "mnist").mkdir(parents=True)
    second.mkdir()
    monkeypatch.setenv(mnist.DATA_ENV, str(second))
    (first / f"{mnist.TRAIN_IMAGES}.gz").write_bytes(synthetic_mnist[mnist.TRAIN_IMAGES])
    corrupt = first / "mnist" / f"{mnist.TRAIN_LABELS}.gz"
    corrupt.write_bytes(synthetic_mnist[mnist.TRAIN_LABELS][:-1] + b"!")
    folder = second / f"{mnist.TEST_IMAGES}.gz"
    folder.mkdir()  # a folder where a file should be: not skipped as if missing
    with pytest.raises(DataError) as info:
        load_mnist(first, download=False)
    message = str(info.value)
    assert f"{corrupt}: sha256" in message and "does not match the published" in message
    assert f"{folder}: is a directory" in message
    assert "2 of the 4 files cannot be used" in message
    assert re.search(rf"1 of the 4 files not found \({mnist.TEST_LABELS}\(\.gz\)\) in "
                     rf"{re.escape(str(first))}, {re.escape(str(second))}, "
                     rf"{re.escape(str(isolated_env / 'cache'))}", message)
    assert str(first / f"{mnist.TRAIN_IMAGES}.gz") not in message  # the good one


def test_mnist_every_checksum_failure_is_listed_not_only_the_first(synthetic_mnist,
                                                                    isolated_env):
    folder = isolated_env / "data"
    folder.mkdir()
    for name, payload in synthetic_mnist.items():
        (folder / f"{name}.gz").write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    with pytest.raises(DataError, match="4 of the 4 files cannot be used") as info:
        load_mnist(folder, download=True, mirrors=["http://127.0.0.1:9/never-asked"])
    assert str(info.value).count("does not match the published") == 4


def test_mnist_error_when_every_mirror_fails_says_where_it_looked(synthetic_mnist,
                                                                  isolated_env):
    with pytest.raises(DataError) as info:
        load_mnist(isolated_env / "empty", mirrors=["http://127.0.0.1:9/", "not a url"])
    message = str(info.value)
    assert "4 of the 4 files not found" in message and str(isolated_env / "empty") in message
    assert "http://127.0.0.1:9/" in message and "not a url" in message


# ---- MNIST: a download deadline -------------------------------------------------------

class TricklingHandler(QuietHandler):
    """Sends its whole response, status line and headers included, a byte at a time
    every TRICKLE_S seconds: each read sees data well within any socket timeout."""

    def do_GET(self):
        response = b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" + bytes(100_000)
        try:
            for i in range(len(response)):
                self.wfile.write(response[i:i + 1])
                self.wfile.flush()
                time.sleep(TRICKLE_S)
        except OSError:  # the client gave up: what it should do
            pass


TRICKLE_S = 0.05


def test_download_from_a_trickling_mirror_stops_at_the_deadline(tmp_path, serve):
    """One byte every 50 ms never trips a 30 s socket timeout; the deadline on the whole
    file does, then the next mirror is tried, and the error names each failure."""
    trickle = serve(tmp_path, TricklingHandler)
    started = time.monotonic()
    with pytest.raises(DataError) as info:
        mnist.fetch_file("x.gz", "0" * 64, tmp_path / "dest",
                         [trickle, "http://127.0.0.1:9/"], deadline_s=0.5)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert f"{trickle}x.gz: DataError: no complete file within 0.5 s" in message
    assert "127.0.0.1:9/x.gz: URLError" in message
    assert list((tmp_path / "dest").iterdir()) == []  # no partial file left


def test_load_mnist_goes_past_a_trickling_mirror(synthetic_mnist, isolated_env, serve,
                                                 monkeypatch):
    served = isolated_env / "served"
    served.mkdir()
    for name, payload in synthetic_mnist.items():
        (served / f"{name}.gz").write_bytes(payload)
    monkeypatch.setattr(mnist, "DOWNLOAD_DEADLINE_S", 0.3)
    started = time.monotonic()
    data = load_mnist(isolated_env / "empty",
                      mirrors=[serve(served, TricklingHandler), serve(served)])
    assert data.X_train.shape == (12, 784) and data.y_test.tolist() == [0, 1, 2, 3, 4]
    assert time.monotonic() - started < 10

"""The GEMM libraries gpubp can run on, each behind one small interface.

- ``"numpy"``: NumPy's own BLAS, OpenBLAS in its wheels: its CBLAS through ctypes
  (alpha and beta inside the GEMM), or ``numpy.matmul`` where the wheel exports none.
- ``"mkl"``: Intel MKL's ``cblas_?gemm``, ``cblas_?axpby`` and vector math (VML) through
  its runtime library (``pip install "gpubp[mkl]"``), held to its LP64 interface.
- ``"onednn"``: oneDNN's float32 ``dnnl_sgemm`` (``pip install "gpubp[onednn]"``).

Each is loaded on first use by :func:`library`; :func:`installed` lists them from the
packages' metadata without loading anything. Which one runs a product is decided in
:mod:`gpubp.blas`.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from gpubp import onednn

log = logging.getLogger("gpubp")

ENV_VAR = "GPUBP_BLAS"
LIBRARIES = ("numpy", "mkl", "onednn")  # the default first
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_LP64 = 0  # MKL_INTERFACE_LP64
MAX_INT = 2**31 - 1  # MKL_INT's largest value in LP64


class LibraryUnavailable(RuntimeError):
    """A GEMM library cannot be loaded here; the message says why."""


# ---- the libraries -------------------------------------------------------------------------

class Library:
    """One GEMM library behind one interface: ``gemm`` on a plan's raw operands, ``axpby``
    where it has one, its thread count, and whether it takes float64."""

    name = ""
    float64 = True
    spin_s = 0.0  # how long its threads keep spinning after a product (see blas_choice)

    def __init__(self, version: str):
        self.version = version

    def gemm(self, plan, a, b, out, alpha: float, beta: float, single_thread: bool) -> None:
        raise NotImplementedError

    def axpby(self, a: float, x, b: float, y) -> bool:
        """y ← a·x + b·y in place; False when this library has no axpby for these arrays."""
        return False

    def threads(self) -> int | None:
        return None

    def describe(self) -> str:
        return f"{self.name} {self.version}"


class _Mkl(Library):
    name = "mkl"
    spin_s = 0.2  # Intel OpenMP's default KMP_BLOCKTIME, 200 ms

    def __init__(self):
        lib = _load_mkl()
        self.lib = lib
        buffer = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(buffer, len(buffer))
        words = buffer.value.decode(errors="replace").split()
        super().__init__(next((w.split("-")[0] for w in words if w[:1].isdigit()), "?"))
        self._gemm = {np.dtype(np.float32): lib.cblas_sgemm, np.dtype(np.float64): lib.cblas_dgemm}
        self._axpby = {np.dtype(np.float32): lib.cblas_saxpby,
                       np.dtype(np.float64): lib.cblas_daxpby}

    def gemm(self, plan, a, b, out, alpha, beta, single_thread):
        dtype, (trans_a, lda), (trans_b, ldb), m, n, k = plan
        if max(m, n, k, lda, ldb) > MAX_INT:
            return numpy_gemm(a, b, out, alpha, beta)
        if single_thread:  # MKL threads even the tiniest product
            previous = self.lib.MKL_Set_Num_Threads_Local(1)
        self._gemm[dtype](_ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a.ctypes.data, lda,
                          b.ctypes.data, ldb, beta, out.ctypes.data, n)
        if single_thread:
            self.lib.MKL_Set_Num_Threads_Local(previous)

    def axpby(self, a, x, b, y):
        if x.size > MAX_INT or x.dtype not in self._axpby:
            return False
        self._axpby[x.dtype](x.size, a, x.ctypes.data, 1, b, y.ctypes.data, 1)
        return True

    def threads(self):
        return int(self.lib.MKL_Get_Max_Threads())

    def bias_sigmoid(self, z, bias, out):
        """σ(z + b) into ``out`` on VML: out a float32/float64 array of z's shape, C- or
        F-contiguous, of at most MAX_INT values (one flat vector to VML)."""
        lib = self.lib
        exp, inv = (lib.vsExp, lib.vsInv) if out.dtype == np.float32 else (lib.vdExp, lib.vdInv)
        np.subtract(-bias.astype(out.dtype, copy=False), z, out=out)  # −(z + b), as in ops
        exp(out.size, out.ctypes.data, out.ctypes.data)
        out += 1
        inv(out.size, out.ctypes.data, out.ctypes.data)
        return out


class _NumpyBlas(Library):
    """NumPy's own BLAS: its bundled OpenBLAS's CBLAS through ctypes where the wheel has
    one (alpha and beta in the GEMM), else ``numpy.matmul``."""

    name = "numpy"

    def __init__(self):
        config = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        super().__init__(f"{config.get('name', '?')} {config.get('version', '?')}")
        self.lib, self._gemm, self._axpby, self._threads = _numpy_openblas(), {}, {}, None
        if self.lib is not None:
            lib, suffix = self.lib
            self._gemm = {np.dtype(np.float32): getattr(lib, f"scipy_cblas_sgemm{suffix}"),
                          np.dtype(np.float64): getattr(lib, f"scipy_cblas_dgemm{suffix}")}
            self._axpby = {np.dtype(np.float32): getattr(lib, f"scipy_cblas_saxpby{suffix}"),
                           np.dtype(np.float64): getattr(lib, f"scipy_cblas_daxpby{suffix}")}
            self._threads = getattr(lib, f"scipy_openblas_get_num_threads{suffix}")

    def gemm(self, plan, a, b, out, alpha, beta, single_thread):
        # OpenBLAS keeps products under 2^18 multiply-adds on one thread by itself.
        # NumPy's own call reaches the same sgemm with less overhead than ctypes.
        if not self._gemm or (alpha == 1.0 and beta == 0.0):
            return numpy_gemm(a, b, out, alpha, beta)
        dtype, (trans_a, lda), (trans_b, ldb), m, n, k = plan
        self._gemm[dtype](_ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a.ctypes.data, lda,
                          b.ctypes.data, ldb, beta, out.ctypes.data, n)

    def axpby(self, a, x, b, y):
        if x.dtype not in self._axpby:
            return False
        self._axpby[x.dtype](x.size, a, x.ctypes.data, 1, b, y.ctypes.data, 1)
        return True

    def threads(self):
        return int(self._threads()) if self._threads is not None else None

    def describe(self):
        return f"numpy ({self.version})"


class _OneDnn(Library):
    name = "onednn"
    float64 = False

    def __init__(self):
        if onednn.library() is None:
            raise LibraryUnavailable("oneDNN's libdnnl is not installed "
                                     "(pip install 'gpubp[onednn]')")
        super().__init__(onednn.version())
        self._onednn, self._max_threads = onednn, onednn.max_threads()

    def gemm(self, plan, a, b, out, alpha, beta, single_thread):
        dtype, (trans_a, lda), (trans_b, ldb), m, n, k = plan
        if single_thread:
            self._onednn.set_threads(1)
        self._onednn.sgemm(trans_a == _TRANS, trans_b == _TRANS, m, n, k, alpha, a.ctypes.data,
                           lda, b.ctypes.data, ldb, beta, out.ctypes.data, n)
        if single_thread:
            self._onednn.set_threads(self._max_threads)

    def threads(self):
        return self._max_threads


@functools.lru_cache(maxsize=None)
def library(name: str) -> Library:
    """The named library, loaded once. Raises LibraryUnavailable saying why it cannot be."""
    if name not in LIBRARIES:
        raise ValueError(f"library: expected one of {LIBRARIES}, got {name!r}")
    return {"mkl": _Mkl, "numpy": _NumpyBlas, "onednn": _OneDnn}[name]()


@functools.lru_cache(maxsize=1)
def installed() -> dict:
    """{library name: version} of the libraries installed here, read from the packages'
    metadata so that nothing is loaded."""
    found = {"numpy": np.__version__}
    if _mkl_paths():
        try:
            found["mkl"] = metadata.version("mkl")
        except metadata.PackageNotFoundError:
            found["mkl"] = "?"
    if any(p.exists() for p in onednn.library_paths()):
        try:
            found["onednn"] = metadata.version("onednn-cpu-gomp")
        except metadata.PackageNotFoundError:
            found["onednn"] = "?"
    return found


# ---- plans ---------------------------------------------------------------------------------

def numpy_gemm(a, b, out, alpha, beta):
    if alpha == 1.0 and beta == 0.0:
        return np.matmul(a, b, out=out)
    product = np.matmul(a, b)
    product *= alpha
    if beta == 0.0:
        np.copyto(out, product)  # as in BLAS, beta = 0 ignores what out held
    else:
        if beta != 1.0:
            out *= beta
        out += product
    return out


def plan(a, b, out):
    """(dtype, layout of a, layout of b, m, n, k) when a library can take the arrays as
    they are (out C-contiguous), else None."""
    if (a.dtype not in (np.float32, np.float64) or b.dtype != a.dtype or out.dtype != a.dtype
            or not out.flags.c_contiguous or a.ndim != 2 or b.ndim != 2
            or 0 in a.shape + b.shape or a.shape[1] != b.shape[0]
            or out.shape != (a.shape[0], b.shape[1])):
        return None
    layout_a, layout_b = layout(a), layout(b)
    if layout_a is None or layout_b is None:
        return None
    (m, k), n = a.shape, b.shape[1]
    if max(m, n, k, layout_a[1], layout_b[1]) > MAX_INT:
        return None
    return a.dtype, layout_a, layout_b, m, n, k


def layout(a):
    """(CBLAS transpose flag, leading dimension) for a 2-D array, or None if it has none."""
    item = a.itemsize
    rows, cols = a.shape
    row_stride, col_stride = a.strides
    if (col_stride == item or cols == 1) and row_stride % item == 0 and row_stride >= max(1, cols) * item:
        return _NO_TRANS, row_stride // item
    if (row_stride == item or rows == 1) and col_stride % item == 0 and col_stride >= max(1, rows) * item:
        return _TRANS, col_stride // item
    return None


def signature(plan, accumulate: bool = False) -> str:
    """A product's shape class, the key of its choice: dtype, m×n×k, the operands'
    transposes and whether it accumulates, e.g. "f 1024x256x784 NT +"."""
    dtype, (trans_a, _), (trans_b, _), m, n, k = plan
    flags = ("T" if trans_a == _TRANS else "N") + ("T" if trans_b == _TRANS else "N")
    return f"{dtype.char} {m}x{n}x{k} {flags} {'+' if accumulate else '='}"


# ---- loading -------------------------------------------------------------------------------

def _mkl_paths() -> list:
    return [p for directory in (Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib")
            for p in sorted(directory.glob("libmkl_rt.so*"))]


def _load_mkl():
    """MKL's runtime library with typed GEMM, axpby, VML and thread entry points."""
    lib = None
    for candidate in _mkl_paths():
        try:
            lib = ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
            break
        except OSError as e:
            log.debug("gpubp: could not load %s: %s", candidate, e)
    if lib is None:
        raise LibraryUnavailable(f"MKL's libmkl_rt is not installed in {sys.prefix}/lib "
                                 "(pip install 'gpubp[mkl]')")
    # The declarations below take 32-bit integers: MKL's LP64 interface, whatever
    # $MKL_INTERFACE_LAYER says. Another library may already have fixed it otherwise.
    if lib.MKL_Set_Interface_Layer(_LP64) != _LP64:
        raise LibraryUnavailable("MKL's LP64 interface could not be set")
    for fn, real in ((lib.cblas_sgemm, ctypes.c_float), (lib.cblas_dgemm, ctypes.c_double)):
        fn.restype = None
        fn.argtypes = [ctypes.c_int] * 6 + [real, ctypes.c_void_p, ctypes.c_int,
                                            ctypes.c_void_p, ctypes.c_int, real,
                                            ctypes.c_void_p, ctypes.c_int]
    for fn, real in ((lib.cblas_saxpby, ctypes.c_float), (lib.cblas_daxpby, ctypes.c_double)):
        fn.restype = None
        fn.argtypes = [ctypes.c_int, real, ctypes.c_void_p, ctypes.c_int, real,
                       ctypes.c_void_p, ctypes.c_int]
    for fn in (lib.vsExp, lib.vdExp, lib.vsInv, lib.vdInv):  # VML: y[i] = f(x[i]), i < n
        fn.restype = None
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]  # n: 32-bit MKL_INT
    lib.MKL_Set_Num_Threads_Local.restype = ctypes.c_int
    lib.MKL_Set_Num_Threads_Local.argtypes = [ctypes.c_int]
    return lib


def _numpy_openblas():
    """(NumPy's bundled OpenBLAS with its CBLAS GEMM and axpby typed, symbol suffix), or
    None where the wheel has none (NumPy built against another BLAS)."""
    libs = Path(np.__file__).parent.with_name("numpy.libs")
    for candidate in sorted(libs.glob("*openblas*.so*")):
        try:
            lib = ctypes.CDLL(str(candidate))
        except OSError:
            continue
        for suffix, index in (("64_", ctypes.c_int64), ("", ctypes.c_int)):
            if not hasattr(lib, f"scipy_cblas_sgemm{suffix}"):
                continue
            for letter, real in (("s", ctypes.c_float), ("d", ctypes.c_double)):
                fn = getattr(lib, f"scipy_cblas_{letter}gemm{suffix}")
                fn.restype = None
                fn.argtypes = [ctypes.c_int] * 3 + [index] * 3 + [
                    real, ctypes.c_void_p, index, ctypes.c_void_p, index, real,
                    ctypes.c_void_p, index]
                fn = getattr(lib, f"scipy_cblas_{letter}axpby{suffix}")
                fn.restype = None
                fn.argtypes = [index, real, ctypes.c_void_p, index, real, ctypes.c_void_p, index]
            getattr(lib, f"scipy_openblas_get_num_threads{suffix}").restype = ctypes.c_int
            return lib, suffix
    return None

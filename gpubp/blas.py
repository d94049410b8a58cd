"""Matrix products for the NumPy backend: Intel MKL's GEMM where it is installed.

NumPy's wheels bring OpenBLAS. On the training step's shapes (a batch of a few hundred
rows against 1024-wide layers) MKL's sgemm is about a quarter faster on the x86 CPUs we
measured, and the GEMMs are most of a CPU step. So when the ``mkl`` package is installed
(``pip install "gpubp[mkl]"``), :func:`matmul` calls its ``cblas_sgemm``/``cblas_dgemm``
through ctypes on the arrays' own memory, with the transposes the arrays already have,
and :func:`axpby` (the SGD update) its ``cblas_?axpby``. Otherwise, or with
``GPUBP_BLAS=numpy``, they are NumPy operations. :mod:`gpubp.cpu_kernels` takes MKL's
vector math (VML) from the same library.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("gpubp")

ENV_VAR = "GPUBP_BLAS"
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_LP64 = 0  # MKL_INTERFACE_LP64
MAX_INT = 2**31 - 1  # MKL_INT's largest value in LP64


def matmul(a, b, out, alpha: float = 1.0, beta: float = 0.0):
    """out = alpha · a @ b + beta · out for 2-D NumPy arrays; a: (m, k), b: (k, n), out:
    (m, n), C- or F-contiguous. With beta = 1 and alpha = −lr this is a gradient-descent
    step.

    a and b may be transposed views (``W.T``): they are passed as transposed operands,
    never copied. Arrays MKL cannot take as they are go to NumPy.
    """
    if out.ndim == 2 and not out.flags.c_contiguous and out.T.flags.c_contiguous:
        matmul(b.T, a.T, out.T, alpha, beta)  # a column-major out: outᵀ = bᵀ aᵀ
        return out
    plan = _plan(a, b, out)
    if plan is None:
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
    gemm, (trans_a, lda), (trans_b, ldb) = plan
    (m, k), n = a.shape, b.shape[1]
    gemm(_ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a.ctypes.data, lda,
         b.ctypes.data, ldb, beta, out.ctypes.data, n)
    return out


def _plan(a, b, out):
    """(GEMM function, layout of a, layout of b) when MKL can take the arrays as they are."""
    gemm = _gemm(a.dtype)
    if (gemm is None or b.dtype != a.dtype or out.dtype != a.dtype or not out.flags.c_contiguous
            or 0 in a.shape + b.shape or a.shape[1] != b.shape[0]
            or out.shape != (a.shape[0], b.shape[1])):
        return None
    layout_a, layout_b = _layout(a), _layout(b)
    if layout_a is None or layout_b is None:
        return None
    if max(*a.shape, b.shape[1], layout_a[1], layout_b[1]) > MAX_INT:
        return None
    return gemm, layout_a, layout_b


def axpby(a: float, x, b: float, y) -> None:
    """y ← a·x + b·y in place, for NumPy arrays of one shape and dtype: one pass with MKL."""
    lib = _mkl()
    if (lib is not None and x.dtype == y.dtype and x.shape == y.shape and x.flags.c_contiguous
            and y.flags.c_contiguous and x.dtype in (np.float32, np.float64)
            and x.size <= MAX_INT):
        fn = lib.cblas_saxpby if x.dtype == np.float32 else lib.cblas_daxpby
        fn(x.size, a, x.ctypes.data, 1, b, y.ctypes.data, 1)
        return
    if b != 1:
        y *= b
    y += a * x


def has_mkl() -> bool:
    """Whether :func:`matmul` and :func:`axpby` run on MKL."""
    return _mkl() is not None


def name() -> str:
    """Which library :func:`matmul` uses, e.g. "mkl 2026.0.2" or "numpy (OpenBLAS 0.3.31)"."""
    if _mkl() is not None:
        return f"mkl {_mkl_version()}"
    config = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return f"numpy ({config.get('name', '?')} {config.get('version', '?')})"


def threads() -> int | None:
    """The threads :func:`matmul`'s library runs on (None where it cannot be asked)."""
    if _mkl() is not None:
        return int(_mkl().MKL_Get_Max_Threads())
    libs = Path(np.__file__).parent.with_name("numpy.libs")  # NumPy's own OpenBLAS
    for candidate in sorted(libs.glob("*openblas*.so*")):
        try:
            lib = ctypes.CDLL(str(candidate))
        except OSError:
            continue
        for symbol in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_",
                       "openblas_get_num_threads"):
            if hasattr(lib, symbol):
                return int(getattr(lib, symbol)())
    return None


def _layout(a):
    """(CBLAS transpose flag, leading dimension) for a 2-D array, or None if it has none."""
    if a.ndim != 2 or a.dtype not in (np.float32, np.float64):
        return None
    item = a.itemsize
    rows, cols = a.shape
    row_stride, col_stride = a.strides
    if (col_stride == item or cols == 1) and row_stride % item == 0 and row_stride >= max(1, cols) * item:
        return _NO_TRANS, row_stride // item
    if (row_stride == item or rows == 1) and col_stride % item == 0 and col_stride >= max(1, rows) * item:
        return _TRANS, col_stride // item
    return None


def _gemm(dtype):
    lib = _mkl()
    if lib is None:
        return None
    return lib.cblas_sgemm if dtype == np.float32 else lib.cblas_dgemm if dtype == np.float64 else None


@functools.lru_cache(maxsize=1)
def _mkl():
    """MKL's runtime library with typed GEMM, axpby and VML entry points, or None."""
    choice = os.environ.get(ENV_VAR, "auto")
    if choice not in ("auto", "mkl", "numpy"):
        raise ValueError(f"{ENV_VAR}: expected auto, mkl or numpy, got {choice!r}")
    if choice == "numpy":
        return None
    lib = None
    for directory in (Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"):
        for candidate in sorted(directory.glob("libmkl_rt.so*")):
            try:
                lib = ctypes.CDLL(str(candidate), mode=ctypes.RTLD_GLOBAL)
                break
            except OSError as e:
                log.debug("gpubp: could not load %s: %s", candidate, e)
        if lib is not None:
            break
    if lib is None:
        if choice == "mkl":
            raise ImportError(f"{ENV_VAR}=mkl, but MKL's libmkl_rt is not installed in "
                              f"{sys.prefix}/lib (pip install 'gpubp[mkl]')")
        return None
    # The declarations below take 32-bit integers: MKL's LP64 interface, whatever
    # $MKL_INTERFACE_LAYER says. Another library may already have fixed it otherwise.
    if lib.MKL_Set_Interface_Layer(_LP64) != _LP64:
        log.warning("gpubp: MKL's LP64 interface could not be set; using NumPy's BLAS")
        return None
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
    return lib


def mkl_library():
    """MKL's runtime library through ctypes, with the GEMM, axpby and VML ``Exp``/``Inv``
    entry points typed; None when MKL is not installed or $GPUBP_BLAS is "numpy"."""
    return _mkl()


def _mkl_version() -> str:
    lib = _mkl()
    buffer = ctypes.create_string_buffer(256)
    lib.MKL_Get_Version_String(buffer, len(buffer))
    words = buffer.value.decode(errors="replace").split()
    return next((w.split("-")[0] for w in words if w[:1].isdigit()), "?")

"""cuBLAS's C API through ctypes, for GEMMs that a CUDA graph can capture.

CuPy's own cuBLAS wrappers (``cupy_backends.cuda.libs.cublas``, v14.2) call ``setStream``
before every routine, and that raises ``NotImplementedError`` while the current stream is
capturing (CuPy issue 6290). So a captured training step calls cuBLAS itself: one
:class:`Cublas` owns a handle bound once, at creation, to the capture stream, a persistent
workspace (without one, cuBLAS gives each captured graph a workspace of its own), host
pointer mode with alpha and beta kept in ctypes storage, and optionally TF32.

:func:`gemm_call` maps row-major NumPy/CuPy layouts onto cuBLAS's column-major GEMM the way
:func:`gpubp.blas.matmul` maps them onto CBLAS: transposed views become transposed
operands, nothing is copied. It is a pure function of shapes, strides and pointers, so it
is tested on the CPU against a recording fake of the library.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gpubp.errors import BackendError

# cublasOperation_t, cublasPointerMode_t and cublasMath_t; the same values in CUDA 12 and 13.
OP_N, OP_T = 0, 1
POINTER_MODE_HOST = 0
DEFAULT_MATH, TF32_TENSOR_OP_MATH = 0, 3
INT32_MAX = 2**31 - 1  # m, n, k and the leading dimensions are C ints in the _v2 API
WORKSPACE_ALIGNMENT = 256  # cublasSetWorkspace refuses a less aligned buffer
MiB = 2**20

STATUS_NAMES = {
    0: "CUBLAS_STATUS_SUCCESS", 1: "CUBLAS_STATUS_NOT_INITIALIZED",
    3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
    8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR",
    13: "CUBLAS_STATUS_EXECUTION_FAILED", 14: "CUBLAS_STATUS_INTERNAL_ERROR",
    15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR",
}

# dtype → (GEMM entry point, the C type of its alpha and beta)
_GEMM = {np.dtype(np.float32): ("cublasSgemm_v2", ctypes.c_float),
         np.dtype(np.float64): ("cublasDgemm_v2", ctypes.c_double)}
_SCALAR = dict(_GEMM.values())  # entry point → the C type of its alpha and beta

# Where the CUDA wheels put libcublas: nvidia-cublas-cu12 in nvidia/cublas/lib, the
# CUDA 13 wheels in nvidia/cu13/lib (the directories cuda-pathfinder searches).
_WHEEL_DIRS = ("nvidia/cu13/lib", "nvidia/cublas/lib")


class CublasError(BackendError):
    """A cuBLAS call returned an error status.

    Attributes: function: the C function's name. status: the cublasStatus_t value.
    """

    def __init__(self, function: str, status: int):
        self.function, self.status = function, int(status)
        name = STATUS_NAMES.get(self.status, "unknown status")
        super().__init__(f"{function} failed: {name} ({self.status})")


class GemmCall(NamedTuple):
    """The arguments of one column-major cuBLAS GEMM, C ← alpha·op(A)·op(B) + beta·C, with
    C (m, n), op(A) (m, k), op(B) (k, n); pointers are device addresses."""

    function: str  # "cublasSgemm_v2" or "cublasDgemm_v2"
    transa: int
    transb: int
    m: int
    n: int
    k: int
    a: int
    lda: int
    b: int
    ldb: int
    c: int
    ldc: int


class _Matrix(NamedTuple):
    """A 2-D array as cuBLAS sees it: address, shape, strides in elements."""

    name: str
    ptr: int
    rows: int
    cols: int
    row_stride: int
    col_stride: int

    @property
    def T(self):
        return _Matrix(self.name, self.ptr, self.cols, self.rows, self.col_stride, self.row_stride)


def gemm_call(a, b, out) -> GemmCall:
    """The cuBLAS GEMM computing out = alpha · a @ b + beta · out, for a: (m, k), b: (k, n),
    out: (m, n) of one dtype (float32 or float64).

    Reads only ``shape``, ``strides``, ``dtype`` and ``data.ptr``. a and b may be C- or
    F-ordered, padded (rows of a wider array) or transposed views; out must have a unit
    stride along one axis. Anything else is a ValueError naming the argument.
    """
    dtype = _float_dtype(a, "a")
    for x, name in ((b, "b"), (out, "out")):
        if np.dtype(x.dtype) != dtype:
            raise ValueError(f"{name}: dtype {np.dtype(x.dtype)} differs from a's {dtype}")
    A, B, C = (_matrix(x, name, dtype.itemsize) for x, name in ((a, "a"), (b, "b"), (out, "out")))
    if B.rows != A.cols:
        raise ValueError(f"b: shape {tuple(b.shape)} cannot follow a's {tuple(a.shape)} in "
                         f"a @ b (needs {A.cols} rows)")
    if (C.rows, C.cols) != (A.rows, B.cols):
        raise ValueError(f"out: shape {tuple(out.shape)}, expected {(A.rows, B.cols)}")
    if _operand(C)[0] == OP_T:
        A, B, C = B.T, A.T, C.T  # a column-major out: outᵀ = bᵀ aᵀ into a row-major outᵀ
    op_a, lda = _operand(A)
    op_b, ldb = _operand(B)
    ldc = _operand(C)[1]
    # Row-major out (m, n) with row stride ldc is column-major outᵀ (n, m): cuBLAS computes
    # outᵀ = bᵀ aᵀ, so its first operand is b's memory and its second a's.
    return GemmCall(_GEMM[dtype][0], op_b, op_a, B.cols, A.rows, A.cols,
                    B.ptr, ldb, A.ptr, lda, C.ptr, ldc)


def _float_dtype(x, name: str) -> np.dtype:
    dtype = np.dtype(x.dtype)
    if dtype not in _GEMM:
        raise ValueError(f"{name}: dtype {dtype}, expected float32 or float64")
    return dtype


def _matrix(x, name: str, itemsize: int) -> _Matrix:
    if len(x.shape) != 2:
        raise ValueError(f"{name}: expected a 2-D array, got shape {tuple(x.shape)}")
    rows, cols = (int(d) for d in x.shape)
    if any(s % itemsize for s in x.strides):
        raise ValueError(f"{name}: strides {tuple(x.strides)} are not whole elements")
    row_stride, col_stride = (int(s) // itemsize for s in x.strides)
    if max(rows, cols) > INT32_MAX:
        raise ValueError(f"{name}: shape {tuple(x.shape)} exceeds cuBLAS's 32-bit int "
                         f"({INT32_MAX})")
    matrix = _Matrix(name, int(x.data.ptr), rows, cols, row_stride, col_stride)
    ld = _operand(matrix)[1]  # refuses layouts without a unit stride, with the name
    if ld > INT32_MAX:
        raise ValueError(f"{name}: leading dimension {ld} (strides {tuple(x.strides)}) "
                         f"exceeds cuBLAS's 32-bit int ({INT32_MAX})")
    return matrix


def _operand(x: _Matrix):
    """(cuBLAS op, leading dimension) reading the row-major matrix x as cuBLAS's
    column-major xᵀ: OP_N when x's rows are contiguous (the memory holds xᵀ column-major),
    OP_T when its columns are (the memory holds x itself). The stride of a length-1 or
    empty axis is never used, so any value of it is accepted."""
    if x.rows * x.cols == 0:
        return OP_N, max(1, x.cols)
    if x.col_stride == 1 or x.cols == 1:
        if x.rows == 1:
            return OP_N, x.cols
        if x.row_stride >= x.cols:
            return OP_N, x.row_stride
    # (a single column always took the branch above)
    if (x.row_stride == 1 or x.rows == 1) and x.col_stride >= x.rows:
        return OP_T, x.col_stride
    raise ValueError(f"{x.name}: shape ({x.rows}, {x.cols}) with strides "
                     f"({x.row_stride}, {x.col_stride}) elements has no unit-stride axis "
                     "cuBLAS can read as it is; pass a C- or F-contiguous array (or a "
                     "transposed view of one)")


class Cublas:
    """A cuBLAS handle of its own, bound to one non-default stream, for capturable GEMMs.

    ``Cublas(stream=cupy.cuda.Stream(non_blocking=True))`` creates it on the current
    device. ``workspace``: None for cuBLAS's recommended size (32 MiB from Hopper on,
    4 MiB before), a number of bytes, or a 1-D device array of uint8 to use as it is, 256-byte
    aligned; it is kept for the handle's life, so graphs captured from it share it.
    ``tf32=True`` lets float32 GEMMs round their inputs to TF32 on tensor cores.

    GEMMs run on the bound stream whatever CuPy's current stream is. Run each GEMM once
    eagerly before capturing it (cuBLAS may load its kernel on first use), and :meth:`close`
    only after the graphs that captured its GEMMs are no longer launched: they keep using
    its workspace.
    """

    def __init__(self, stream, *, workspace=None, tf32: bool = False):
        self._handle = None
        self.stream = stream  # held, so the stream outlives the handle bound to it
        self.tf32 = bool(tf32)
        try:
            stream_ptr = int(getattr(stream, "ptr", stream))
        except TypeError:
            raise TypeError(f"stream: expected a cupy.cuda.Stream, got {stream!r:.80}") from None
        if stream_ptr in (0, 1):  # cudaStreamLegacy is 1; neither can be captured
            raise ValueError("stream: the default stream cannot be captured; pass a "
                             "cupy.cuda.Stream(non_blocking=True)")
        self._lib = library()
        self._workspace = _workspace(workspace)
        workspace_ptr = int(self._workspace.data.ptr)
        if workspace_ptr % WORKSPACE_ALIGNMENT:
            raise ValueError(f"workspace: address {workspace_ptr:#x} is not "
                             f"{WORKSPACE_ALIGNMENT}-byte aligned")
        self.workspace_bytes = int(self._workspace.nbytes)
        # One storage per (GEMM, alpha, beta), kept for the handle's life. cuBLAS reads
        # host-mode scalars before the call returns and a captured kernel keeps their
        # values, so this is a guard: no call ever sees a pointer that Python has freed.
        self._scalars = {}
        handle = ctypes.c_void_p()
        _check("cublasCreate_v2", self._lib.cublasCreate_v2(ctypes.byref(handle)))
        self._handle = handle.value
        try:
            # The order matters: cublasSetStream resets the workspace to cuBLAS's own pool.
            _check("cublasSetStream_v2", self._lib.cublasSetStream_v2(self._handle, stream_ptr))
            _check("cublasSetWorkspace_v2", self._lib.cublasSetWorkspace_v2(
                self._handle, workspace_ptr, self.workspace_bytes))
            _check("cublasSetPointerMode_v2",
                   self._lib.cublasSetPointerMode_v2(self._handle, POINTER_MODE_HOST))
            _check("cublasSetMathMode", self._lib.cublasSetMathMode(
                self._handle, TF32_TENSOR_OP_MATH if self.tf32 else DEFAULT_MATH))
        except BaseException:
            handle, self._handle = self._handle, None
            self._lib.cublasDestroy_v2(handle)  # its status aside: the first error is the one
            raise

    def matmul(self, a, b, out, alpha: float = 1.0, beta: float = 0.0):
        """out = alpha · a @ b + beta · out on the bound stream, for 2-D CuPy arrays of one
        dtype (float32 or float64); a: (m, k), b: (k, n), out: (m, n). Returns out.

        a and b may be C- or F-contiguous or transposed views (``W.T``), passed as transposed
        operands, never copied; out C- or F-contiguous (or rows of a wider array). With
        beta = 0, out's old contents are ignored (NaN included), as in BLAS. alpha and beta
        are read now: a captured GEMM replays with the values it was captured with.
        """
        if self._handle is None:
            raise ValueError("Cublas: the handle is closed")
        call = gemm_call(a, b, out)
        if call.m == 0 or call.n == 0:
            return out  # nothing to write, and no launch to capture
        c_alpha, c_beta = self._scalar_storage(call.function, alpha, beta)
        gemm = getattr(self._lib, call.function)
        _check(call.function, gemm(self._handle, call.transa, call.transb, call.m, call.n,
                                   call.k, ctypes.addressof(c_alpha), call.a, call.lda,
                                   call.b, call.ldb, ctypes.addressof(c_beta), call.c,
                                   call.ldc))
        return out

    def _scalar_storage(self, function: str, alpha: float, beta: float):
        for value, name in ((alpha, "alpha"), (beta, "beta")):
            if not math.isfinite(value):
                raise ValueError(f"{name}: must be finite, got {value!r}")
        key = (function, float(alpha), float(beta))
        if key not in self._scalars:
            self._scalars[key] = (_SCALAR[function](alpha), _SCALAR[function](beta))
        return self._scalars[key]

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """Destroy the handle (cuBLAS synchronizes the device first) and drop the workspace."""
        if self._handle is None:
            return
        handle, self._handle = self._handle, None
        self._workspace = None
        _check("cublasDestroy_v2", self._lib.cublasDestroy_v2(handle))

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        state = "closed" if self.closed else f"workspace={self.workspace_bytes // 1024} KiB"
        return (f"Cublas(stream={int(getattr(self.stream, 'ptr', self.stream)):#x}, {state}, "
                f"tf32={self.tf32})")


def _workspace(workspace):
    """The device buffer a handle keeps as its workspace."""
    if workspace is not None and not isinstance(workspace, (int, np.integer)):
        if len(workspace.shape) != 1 or np.dtype(workspace.dtype) != np.uint8:
            raise ValueError(f"workspace: expected a 1-D uint8 device array, got shape "
                             f"{tuple(workspace.shape)} of {np.dtype(workspace.dtype)}")
        return workspace
    import cupy

    if workspace is None:
        major = int(cupy.cuda.Device().compute_capability[:-1])
        workspace = 32 * MiB if major >= 9 else 4 * MiB  # cuBLAS's recommendation
    if workspace < 0:
        raise ValueError(f"workspace: must be >= 0 bytes, got {workspace}")
    return cupy.empty(int(workspace), dtype=cupy.uint8)  # the pool's blocks are 512-aligned


def _check(function: str, status: int) -> None:
    if status != 0:
        raise CublasError(function, status)


@functools.lru_cache(maxsize=1)
def library():
    """libcublas through ctypes with the entry points :class:`Cublas` calls typed; loaded
    once, on first use. Raises :class:`BackendError` saying where it looked."""
    lib = _load()
    handle, status = ctypes.c_void_p, ctypes.c_int
    signatures = {
        "cublasCreate_v2": [ctypes.POINTER(ctypes.c_void_p)],
        "cublasDestroy_v2": [handle],
        "cublasSetStream_v2": [handle, ctypes.c_void_p],
        "cublasSetWorkspace_v2": [handle, ctypes.c_void_p, ctypes.c_size_t],
        "cublasSetPointerMode_v2": [handle, ctypes.c_int],
        "cublasSetMathMode": [handle, ctypes.c_int],
    }
    gemm = [handle] + [ctypes.c_int] * 5 + [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                            ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                            ctypes.c_void_p, ctypes.c_int]
    for name, _ in _GEMM.values():
        signatures[name] = gemm  # alpha and beta are host pointers (host pointer mode)
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, status
    return lib


def _sonames() -> list[str]:
    """libcublas's sonames, the CUDA major CuPy was built for first."""
    names = ["libcublas.so.13", "libcublas.so.12"]
    try:
        from cupy_backends.cuda.api import runtime

        major = runtime.runtimeGetVersion() // 1000
    except Exception:  # no CuPy: try both, newest first
        return names
    preferred = f"libcublas.so.{major}"
    return [preferred] + [n for n in names if n != preferred]


def _open(name: str, noload: bool = False):
    mode = ctypes.RTLD_LOCAL | (getattr(os, "RTLD_NOLOAD", 0) if noload else 0)
    return ctypes.CDLL(name, mode=mode)


def _pathfinder_path() -> str | None:
    """The libcublas cuda-pathfinder loads, as CuPy's cuBLAS bindings do before their import."""
    from cuda import pathfinder

    return pathfinder.load_nvidia_dynamic_lib("cublas").abs_path


def _load():
    """libcublas: the copy already in the process, else cuda-pathfinder's (CuPy's own way of
    finding the CUDA wheels), else the wheels' directories on sys.path, else the system's."""
    sonames, tried = _sonames(), []
    for soname in sonames:  # loaded already, by CuPy's bindings or another library
        try:
            return _open(soname, noload=True)
        except OSError:
            pass
    tried.append(f"not loaded in this process as {' or '.join(sonames)}")
    try:
        path = _pathfinder_path()
        if path:
            return _open(path)
        for soname in sonames:  # pathfinder found one loaded from elsewhere
            try:
                return _open(soname, noload=True)
            except OSError:
                pass
    except Exception as e:  # no cuda-pathfinder, or it found nothing
        tried.append(f"cuda-pathfinder: {type(e).__name__}: {str(e).strip()}")
    for entry in dict.fromkeys(sys.path):
        for sub in _WHEEL_DIRS:
            for soname in sonames:
                candidate = Path(entry or ".") / sub / soname
                if candidate.is_file():
                    try:
                        return _open(str(candidate))
                    except OSError as e:
                        tried.append(f"{candidate}: {e}")
    tried.append(f"no {' or '.join(_WHEEL_DIRS)} on sys.path")
    for soname in sonames:
        try:
            return _open(soname)
        except OSError as e:
            tried.append(str(e))
    raise BackendError("libcublas not found (" + "; ".join(tried) + "). Install CuPy with "
                       "the CUDA wheels: pip install 'gpubp[cuda12]' or 'gpubp[cuda13]'")

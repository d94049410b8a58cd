"""Matrix products for the NumPy backend, on the GEMM library that is fastest on this machine.

Up to three libraries can run the step's GEMMs: NumPy's own BLAS (OpenBLAS in its wheels,
``"numpy"``), Intel MKL (``pip install "gpubp[mkl]"``, ``"mkl"``) and oneDNN's float32
``dnnl_sgemm`` (``pip install "gpubp[onednn]"``, ``"onednn"``). Which one is fastest depends
on the CPU and on the shapes (MKL leads on Intel Xeons and at small batches; on AMD EPYC it
falls behind the others at large ones: docs/cpu.md), so nothing is assumed from what is
installed. :func:`matmul` calls the libraries through ctypes on the arrays' own memory,
with the transposes the arrays already have, and takes each product's library from
:mod:`gpubp.blas_choice`, which times the candidates on the step's own GEMM shapes once per
machine and caches the choice on disk. ``$GPUBP_BLAS=mkl|numpy|onednn`` forces one library.

Tiny products (under :data:`SINGLE_THREAD_WORK` multiply-adds) run on one thread: their
threads cost more to wake than they save. They are never timed, and run on the library
the last measured choice picked (NumPy's until one is), so that a small network never
loads MKL at all.

Inside ``with gemm_precision("bf16")`` float32 products run instead on oneDNN's matmul
with bf16 inputs and fp32 accumulation (:class:`gpubp.onednn.Bf16Matmul`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

import numpy as np

from gpubp import blas_choice, onednn
from gpubp.blas_libraries import (
    ENV_VAR,
    LIBRARIES,
    MAX_INT,
    Library,
    LibraryUnavailable,
    installed,
    library,
    numpy_gemm,
    signature,
)
from gpubp.blas_libraries import (
    plan as _plan,
)
from gpubp.errors import BackendError

MODES = ("auto",) + LIBRARIES
PRECISIONS = ("fp32", "bf16")
# A GEMM of fewer multiply-adds (m·n·k) runs on one thread: waking a second costs more
# than it saves (MKL threads even the tiniest product). Measured in docs/cpu.md;
# OpenBLAS applies the same bound itself.
SINGLE_THREAD_WORK = 1 << 18
VML_MIN_VALUES = 1 << 14  # fewer values: VML's two ctypes calls cost more than it saves

__all__ = ["matmul", "linear_sigmoid", "axpby", "gemm_precision", "check_precision", "forced", "reset", "report",
           "info", "name", "threads", "has_mkl", "fuses_update", "vml_library", "mkl_library",
           "library", "installed", "signature", "Library", "LibraryUnavailable", "ENV_VAR",
           "MAX_INT", "SINGLE_THREAD_WORK"]


# ---- the products --------------------------------------------------------------------------

def matmul(a, b, out, alpha: float = 1.0, beta: float = 0.0):
    """out = alpha · a @ b + beta · out for 2-D NumPy arrays; a: (m, k), b: (k, n), out:
    (m, n), C- or F-contiguous. With beta = 1 and alpha = −lr this is a gradient-descent
    step.

    a and b may be transposed views (``W.T``): they are passed as transposed operands,
    never copied. Arrays no library can take as they are go to NumPy.
    """
    if out.ndim == 2 and not out.flags.c_contiguous and out.T.flags.c_contiguous:
        matmul(b.T, a.T, out.T, alpha, beta)  # a column-major out: outᵀ = bᵀ aᵀ
        return out
    if (alpha == 1.0 and beta == 0.0 and _state.bf16 is None and _state.mode is not None
            and _state.active.name == "numpy" and a.ndim == 2 and b.ndim == 2
            and a.shape[0] * a.shape[1] * b.shape[1] < SINGLE_THREAD_WORK):
        return np.matmul(a, b, out=out)  # tiny, on NumPy's BLAS: its own call is the cheapest
    plan = _plan(a, b, out)
    if plan is None:
        return numpy_gemm(a, b, out, alpha, beta)
    if _state.bf16 is not None and plan[0] == np.float32:
        return _state.bf16(a, b, out, alpha, beta)
    lib, single_thread = _state.library_for(plan, beta != 0.0)
    lib.gemm(plan, a, b, out, alpha, beta, single_thread)
    return out


def linear_sigmoid(a, W, bias, out):
    """out = σ(a Wᵀ + bias) as one product, where the GEMM library applies the bias and
    the sigmoid itself: oneDNN inside a ``gemm_precision("bf16")`` block. Returns ``out``,
    or None (nothing written) where no library fuses this layer.

    a: (B, k) float32, C- or F-contiguous; W: (n, k) and bias: (n,) float32,
    C-contiguous; out: (B, n) float32, C-contiguous, not overlapping a.
    """
    bf16 = _state.bf16
    if (bf16 is None or not all(isinstance(x, np.ndarray) and x.dtype == np.float32
                                for x in (a, W, bias, out))
            or a.ndim != 2 or W.ndim != 2 or a.shape[1] != W.shape[1]
            or bias.shape != W.shape[:1] or out.shape != (a.shape[0], W.shape[0])
            or not (a.flags.c_contiguous or a.flags.f_contiguous)
            or not (W.flags.c_contiguous and bias.flags.c_contiguous and out.flags.c_contiguous)
            or np.may_share_memory(a, out) or 0 in a.shape or W.shape[0] == 0):
        return None
    return bf16.linear_sigmoid(a, W, bias, out)


def axpby(a: float, x, b: float, y) -> None:
    """y ← a·x + b·y in place, for NumPy arrays of one shape and dtype: one pass on the
    library in use (MKL's or OpenBLAS's axpby), else two NumPy operations."""
    if (x.dtype == y.dtype and x.shape == y.shape and x.flags.c_contiguous
            and y.flags.c_contiguous and x.dtype in (np.float32, np.float64)
            and (_configured().active.axpby(a, x, b, y) or _state.numpy_axpby(a, x, b, y))):
        return
    if b != 1:
        y *= b
    y += a * x


# ---- which library -------------------------------------------------------------------------

class _State:
    """The process's library choices: forced by $GPUBP_BLAS, or per shape class by the
    chooser; the library the last choice picked (for tiny and undecided products); and
    the bf16 product while a ``gemm_precision("bf16")`` block runs. Configured at first
    use, so that importing gpubp loads no library and reads no environment."""

    def __init__(self):
        self.lock = threading.RLock()
        self.bf16 = None
        self.mode = None

    def configure(self):
        mode = os.environ.get(ENV_VAR, "auto")
        if mode not in MODES:
            raise ValueError(f"{ENV_VAR}: expected one of {', '.join(MODES)}, got {mode!r}")
        self.forced = None if mode == "auto" else library(mode)
        self.active = self.forced or library("numpy")
        self.by_signature: dict = {}  # (dtype, transposes, m, n, k, accumulate) -> Library
        self._chooser = None
        self.mode = mode
        return self

    @property
    def chooser(self) -> blas_choice.Chooser:
        if self._chooser is None:
            self._chooser = blas_choice.Chooser()
        return self._chooser

    def library_for(self, plan, accumulate: bool):
        """(library, single thread) for one product; ``accumulate``: beta ≠ 0."""
        if self.mode is None:
            self.configure()
        dtype, _, _, m, n, k = plan
        tiny = m * n * k < SINGLE_THREAD_WORK
        if self.forced is not None:
            if dtype == np.float64 and not self.forced.float64:
                return library("numpy"), tiny
            return self.forced, tiny
        if tiny:
            lib = self.active
            return (lib if dtype == np.float32 or lib.float64 else library("numpy")), True
        key = (dtype.char, plan[1][0], plan[2][0], m, n, k, accumulate)
        lib = self.by_signature.get(key)
        if lib is None:
            with self.lock:
                shape_class = signature(plan, accumulate)
                lib = library(self.chooser.library_for(shape_class))
                if self.chooser.decided(shape_class):
                    self.by_signature[key] = lib
                    self.active = lib
        return lib, False

    def numpy_axpby(self, a, x, b, y) -> bool:
        lib = library("numpy")
        return lib is not self.active and lib.axpby(a, x, b, y)


def _configured() -> _State:
    return _state if _state.mode is not None else _state.configure()


def reset() -> None:
    """Forget this process's choices and read $GPUBP_BLAS again (tests, benchmarks)."""
    with _state.lock:
        _state.mode = None


@contextlib.contextmanager
def forced(name: str):
    """Run the block's products on library ``name`` (as $GPUBP_BLAS=name would)."""
    _configured()
    previous = (_state.mode, _state.forced, _state.active)
    lib = library(name)
    _state.mode, _state.forced, _state.active = name, lib, lib
    try:
        yield lib
    finally:
        _state.mode, _state.forced, _state.active = previous


@contextlib.contextmanager
def gemm_precision(precision: str = "fp32"):
    """Run the block's float32 products with bf16 inputs and fp32 accumulation
    (``"bf16"``) or in full fp32 (``"fp32"``, which changes nothing).

    Raises gpubp.BackendError when bf16 cannot run on this machine at full speed: no
    AVX512_BF16 or AMX, or no oneDNN. It is never emulated.
    """
    check_precision(precision)
    if precision == "fp32":
        yield
        return
    previous = _state.bf16
    _state.bf16 = bf16_matmul()
    try:
        yield
    finally:
        _state.bf16 = previous


def check_precision(precision) -> str:
    """``precision`` if it can run here; ValueError for an unknown one, gpubp.BackendError
    saying why for bf16 where the CPU or oneDNN cannot run it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        reason = onednn.bf16_unavailable()
        if reason is not None:
            raise BackendError(f"precision 'bf16': {reason}")
    return precision


@functools.lru_cache(maxsize=1)
def bf16_matmul():
    """The process's :class:`gpubp.onednn.Bf16Matmul` (after :func:`check_precision`)."""
    check_precision("bf16")
    return onednn.Bf16Matmul()


# ---- what is in use ------------------------------------------------------------------------

def has_mkl() -> bool:
    """Whether MKL is installed and not switched off by $GPUBP_BLAS."""
    return _configured().mode in ("auto", "mkl") and "mkl" in installed()


def fuses_update() -> bool:
    """Whether :func:`matmul`'s alpha and beta run inside the GEMM (so that an SGD update
    folded into the gradient's GEMM saves a pass over the weights): true on every library
    reached through ctypes, false only on ``numpy.matmul``."""
    lib = _configured().active
    return not (lib.name == "numpy" and not lib._gemm)


def name() -> str:
    """The library in use, e.g. "mkl 2026.0.2" or "numpy (scipy-openblas 0.3.31)": the
    forced one, else the one the last choice picked (NumPy's before any)."""
    return _configured().active.describe()


def threads() -> int | None:
    """The threads the library in use runs on (None where it cannot be asked)."""
    return _configured().active.threads()


def report() -> dict:
    """What this process uses and why: the mode ($GPUBP_BLAS), the libraries installed,
    the single-thread bound, and each choice made or read from the cache (its shape
    classes, the library, the seconds measured for each candidate, and the reason)."""
    _configured()
    out = {"mode": _state.mode, "forced": _state.forced.describe() if _state.forced else None,
           "in_use": name(), "threads": threads(), "installed": installed(),
           "single_thread_work": SINGLE_THREAD_WORK,
           "precision": "bf16" if _state.bf16 is not None else "fp32"}
    if bf16_matmul.cache_info().currsize:  # the bf16 mode has run
        out["bf16_kernels"] = sorted(bf16_matmul().kernels)
    if _state.forced is not None:
        out["reason"] = f"{ENV_VAR}={_state.mode}"
    elif _state._chooser is not None:
        out.update(_state.chooser.report())
    return out


def info() -> dict:
    """For ``gpubp info``: how the GEMM library is chosen, what is installed, the cache file
    and the choices it holds for this machine (each with a one-line ``summary`` of why), and
    whether bf16 can run here."""
    state = _configured()
    if state.forced is not None:
        mode = f"forced by {ENV_VAR}={state.mode}"
        choices = []
    else:
        mode = (f"auto: each step's GEMM shapes timed once on every installed library, the "
                f"fastest kept; one thread under {SINGLE_THREAD_WORK:,} multiply-adds")
        choices = blas_choice.cached_choices()
    reason = onednn.bf16_unavailable()
    return {"blas_mode": mode,
            "blas_libs": ", ".join(f"{n} {v}" for n, v in installed().items()),
            "blas_cache": str(blas_choice.cache_path()), "blas_choices": choices,
            "bf16": (f"yes (oneDNN {onednn.version()})" if reason is None else f"no: {reason}")}


def vml_library(size: int):
    """The MKL :class:`Library` whose vector math (VML, ``bias_sigmoid``) should run σ on
    ``size`` values, or None for NumPy's: VML where MKL runs the products (forced, or
    chosen and VML measured faster for this size class by :mod:`gpubp.blas_choice`).
    VML runs on MKL's threads, so it is never mixed with another library's GEMMs."""
    if _configured().active.name != "mkl" or not VML_MIN_VALUES <= size <= MAX_INT:
        return None
    if _state.forced is None and not _state.chooser.vector_math(size):
        return None
    return _state.active


def mkl_library():
    """MKL's runtime library through ctypes, with the GEMM, axpby and VML ``Exp``/``Inv``
    entry points typed; None when MKL is not installed or $GPUBP_BLAS excludes it."""
    if not has_mkl():
        return None
    try:
        return library("mkl").lib
    except LibraryUnavailable:
        return None


_state = _State()

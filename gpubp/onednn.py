"""oneDNN through ctypes: its fp32 GEMM, and its matmul primitive with bf16 inputs.

oneDNN installs from PyPI without Intel's runtime as ``onednn-cpu-gomp``
(``pip install "gpubp[onednn]"``): ``libdnnl.so.3`` in ``<prefix>/lib``, threaded with GNU
OpenMP. Two of its entry points are used:

- ``dnnl_sgemm``: row-major single-precision GEMM, one of the libraries
  :mod:`gpubp.blas` chooses between.
- The matmul primitive with bf16 source and weights and an fp32 destination (fp32
  accumulation), for ``precision="bf16"``: :class:`Bf16Matmul`. It converts its fp32
  operands to bf16 with oneDNN's reorder primitive (one pass, round to nearest even) and
  multiplies them on the CPU's bf16 dot-product units (AVX512_BF16, or AMX tiles).

Where the CPU has neither, :func:`bf16_unavailable` says why and the bf16 mode is refused:
oneDNN would otherwise run bf16 on a reference kernel many times slower than fp32.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from pathlib import Path

import numpy as np

_VOID = ctypes.c_void_p
_DIMS = ctypes.c_int64 * 12  # dnnl_dims_t
_SUCCESS = 0
_F32, _BF16 = 3, 2  # dnnl_data_type_t
_CPU_ENGINE, _IN_ORDER = 1, 1
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS, _ARG_BIAS, _ARG_ATTR_SCALES = 1, 17, 33, 41, 4096
_ELTWISE_LOGISTIC = 0x29  # dnnl_alg_kind_t: σ(x) = 1/(1 + e^(−x)), computed in fp32
_QUERY_IMPL_INFO_STR = 8  # dnnl_query_impl_info_str
_ISA_AVX512_CORE_BF16 = 0xE7  # dnnl_cpu_isa_t: each ISA's bits include those below it
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of the bf16 units


class OneDnnError(RuntimeError):
    """A oneDNN call failed; the message names the call and its status."""


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
                ("gpu_runtime", ctypes.c_uint)]


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _VOID)]


def _check(status: int, call: str) -> None:
    if status != _SUCCESS:
        raise OneDnnError(f"oneDNN {call} failed with status {status}")


def library_paths() -> list:
    """Where the PyPI package puts libdnnl (the environment's lib/)."""
    return [directory / "libdnnl.so.3"
            for directory in (Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib")]


@functools.lru_cache(maxsize=1)
def library():
    """libdnnl with the entry points used here typed, or None when it is not installed."""
    found = ctypes.util.find_library("dnnl")
    for path in [str(p) for p in library_paths() if p.exists()] + ([found] if found else []):
        try:
            # Bound to its own GNU OpenMP even where MKL has put Intel's OpenMP in the
            # global namespace first (as it does): else oneDNN's threads would run on
            # Intel's runtime, out of reach of omp_set_num_threads below.
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0))
            break
        except OSError:
            continue
    else:
        return None
    lib.dnnl_version.restype = ctypes.POINTER(_Version)
    lib.dnnl_get_effective_cpu_isa.restype = ctypes.c_int
    lib.dnnl_sgemm.restype = ctypes.c_int
    lib.dnnl_sgemm.argtypes = [ctypes.c_char, ctypes.c_char] + [ctypes.c_int64] * 3 + [
        ctypes.c_float, _VOID, ctypes.c_int64, _VOID, ctypes.c_int64, ctypes.c_float, _VOID,
        ctypes.c_int64]
    typed = {
        "dnnl_engine_create": [_VOID, ctypes.c_int, ctypes.c_size_t],
        "dnnl_stream_create": [_VOID, _VOID, ctypes.c_uint],
        "dnnl_stream_wait": [_VOID],
        "dnnl_memory_desc_create_with_strides": [_VOID, ctypes.c_int, _DIMS, ctypes.c_int, _DIMS],
        "dnnl_memory_desc_destroy": [_VOID],
        "dnnl_memory_create": [_VOID, _VOID, _VOID, _VOID],
        "dnnl_memory_set_data_handle": [_VOID, _VOID],
        "dnnl_primitive_attr_create": [_VOID],
        "dnnl_primitive_attr_destroy": [_VOID],
        "dnnl_primitive_attr_set_scales_mask": [_VOID, ctypes.c_int, ctypes.c_int],
        "dnnl_primitive_attr_set_post_ops": [_VOID, _VOID],
        "dnnl_post_ops_create": [_VOID],
        "dnnl_post_ops_destroy": [_VOID],
        "dnnl_post_ops_append_sum": [_VOID, ctypes.c_float, ctypes.c_int32, ctypes.c_int],
        "dnnl_post_ops_append_eltwise": [_VOID, ctypes.c_int, ctypes.c_float, ctypes.c_float],
        "dnnl_matmul_primitive_desc_create": [_VOID, _VOID, _VOID, _VOID, _VOID, _VOID, _VOID],
        "dnnl_reorder_primitive_desc_create": [_VOID, _VOID, _VOID, _VOID, _VOID, _VOID],
        "dnnl_primitive_desc_query": [_VOID, ctypes.c_int, ctypes.c_int, _VOID],
        "dnnl_primitive_desc_destroy": [_VOID],
        "dnnl_primitive_create": [_VOID, _VOID],
        "dnnl_primitive_execute": [_VOID, _VOID, ctypes.c_int, _VOID],
    }
    for name, argtypes in typed.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = ctypes.c_int, argtypes
    return lib


def version() -> str | None:
    """oneDNN's version, e.g. "3.2.0"; None when it is not installed."""
    lib = library()
    if lib is None:
        return None
    v = lib.dnnl_version().contents
    return f"{v.major}.{v.minor}.{v.patch}"


@functools.lru_cache(maxsize=1)
def _openmp():
    """GNU OpenMP, which oneDNN's threads run on (for the per-call thread count)."""
    lib = ctypes.CDLL(ctypes.util.find_library("gomp") or "libgomp.so.1")
    lib.omp_get_max_threads.restype = ctypes.c_int
    lib.omp_set_num_threads.argtypes = [ctypes.c_int]
    return lib


def max_threads() -> int:
    return int(_openmp().omp_get_max_threads())


def set_threads(n: int) -> None:
    """Threads of the calling thread's next oneDNN calls (OpenMP's per-thread setting)."""
    _openmp().omp_set_num_threads(n)


def sgemm(trans_a: bool, trans_b: bool, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) -> None:
    """C ← alpha·op(A)·op(B) + beta·C, row-major float32, on raw addresses."""
    _check(library().dnnl_sgemm(b"T" if trans_a else b"N", b"T" if trans_b else b"N", m, n, k,
                                alpha, a, lda, b, ldb, beta, c, ldc), "dnnl_sgemm")


# ---- bf16 ----------------------------------------------------------------------------------

def cpu_flags() -> set:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_unavailable() -> str | None:
    """Why bf16 GEMMs cannot run at full speed here, or None when they can."""
    flags = cpu_flags()
    if not any(flag in flags for flag in BF16_CPU_FLAGS):
        return ("this CPU has no bf16 dot-product units (neither AVX512_BF16 nor AMX); "
                "bf16 would run emulated, slower than fp32")
    lib = library()
    if lib is None:
        return "oneDNN is not installed (pip install 'gpubp[onednn]')"
    isa = lib.dnnl_get_effective_cpu_isa()
    if isa & _ISA_AVX512_CORE_BF16 != _ISA_AVX512_CORE_BF16:
        return (f"oneDNN {version()} does not use this CPU's bf16 units (its ISA is "
                f"{isa:#x}; $ONEDNN_MAX_CPU_ISA may limit it)")
    return None


class Bf16Matmul:
    """out = alpha · bf16(a) @ bf16(b) + beta · out, accumulated in fp32, on oneDNN.

    a: (m, k), b: (k, n), float32, each row- or column-major (a transposed view is read
    as it is); out: (m, n) float32, C-contiguous. The operands are rounded to bf16 into
    scratch buffers of the same layout; ``out`` keeps fp32. Primitives are created once
    per shape, layout, and alpha/beta form, and reused.

    Not thread-safe: one instance's scratch buffers serve one call at a time.
    """

    def __init__(self):
        reason = bf16_unavailable()
        if reason is not None:
            raise OneDnnError(reason)
        lib = self._lib = library()
        self._engine, self._stream = _VOID(), _VOID()
        _check(lib.dnnl_engine_create(ctypes.byref(self._engine), _CPU_ENGINE, 0),
               "dnnl_engine_create")
        _check(lib.dnnl_stream_create(ctypes.byref(self._stream), self._engine, _IN_ORDER),
               "dnnl_stream_create")
        self._matmuls, self._reorders = {}, {}
        self.kernels = set()  # oneDNN's names of the matmul kernels created, for reports
        self._scratch = [np.empty(0, np.uint16), np.empty(0, np.uint16)]
        self._scale = np.ones(1, np.float32)

    def __call__(self, a, b, out, alpha: float = 1.0, beta: float = 0.0):
        (m, k), n = a.shape, b.shape[1]
        a16 = self._to_bf16(a, 0)
        b16 = self._to_bf16(b, 1)
        prim, memories, _ = self._matmul(a, b, m, n, k, alpha != 1.0, float(beta))
        self._scale[0] = alpha
        handles = [a16, b16, out, self._scale]
        self._execute(prim, memories, [_ARG_SRC, _ARG_WEIGHTS, _ARG_DST,
                                       _ARG_ATTR_SCALES | _ARG_SRC][:len(memories)], handles)
        return out

    def linear_sigmoid(self, a, W, bias, out):
        """out = σ(bf16(a) @ bf16(W)ᵀ + bias), with oneDNN adding the bias and taking the
        sigmoid (fp32) on the accumulator before it is stored: a hidden layer's forward in
        one pass over its output. Returns ``out``, or None where oneDNN has no optimized
        kernel for this layout (then nothing is written).

        a: (B, k) float32, either layout; W: (n, k) float32, C-contiguous; bias: (n,)
        float32, contiguous; out: (B, n) float32, C-contiguous (oneDNN 3.2 fuses into a
        row-major destination only: a column-major one runs on its reference kernel).
        """
        (m, k), n = a.shape, W.shape[0]
        prim, memories, name = self._matmul(a, W.T, m, n, k, False, 0.0, sigmoid=True)
        if name.startswith("ref"):
            return None
        a16 = self._to_bf16(a, 0)
        w16 = self._to_bf16(W.T, 1)
        self._execute(prim, memories, [_ARG_SRC, _ARG_WEIGHTS, _ARG_BIAS, _ARG_DST],
                      [a16, w16, bias, out])
        return out

    def implementation(self, a, b, alpha: float = 1.0, beta: float = 0.0) -> str:
        """oneDNN's name for the kernel that runs this product, e.g. "brg:avx512_core_bf16"."""
        return self._matmul(a, b, a.shape[0], b.shape[1], a.shape[1], alpha != 1.0,
                            float(beta))[2]

    # ---- helpers ----

    def _to_bf16(self, x, slot: int):
        """x rounded to bf16, in a scratch buffer with x's strides (so no transpose).

        Contiguous x (row- or column-major) converts as one flat vector: oneDNN's reorder
        takes a transposed 2-D layout on both sides many times slower than plain memory."""
        flat = x.flags.c_contiguous or x.flags.f_contiguous
        key = (x.size,) if flat else (x.shape, x.strides)
        if key not in self._reorders:
            self._reorders[key] = self._reorder(x.ravel(order="K") if flat else x)
        prim, memories, size = self._reorders[key]
        if self._scratch[slot].size < size:
            self._scratch[slot] = np.empty(size, np.uint16)
        target = self._scratch[slot]
        self._execute(prim, memories, [_ARG_SRC, _ARG_DST], [x, target])
        return target

    def _reorder(self, x):
        strides = tuple(s // x.itemsize for s in x.strides)
        span = 1 + sum((d - 1) * s for d, s in zip(x.shape, strides))  # padding included
        src = self._desc(x.shape, strides, _F32)
        dst = self._desc(x.shape, strides, _BF16)
        pd = _VOID()
        _check(self._lib.dnnl_reorder_primitive_desc_create(
            ctypes.byref(pd), src, self._engine, dst, self._engine, None),
            "dnnl_reorder_primitive_desc_create")
        prim = self._primitive(pd)
        return prim, [self._memory(src), self._memory(dst)], span

    def _matmul(self, a, b, m, n, k, scaled: bool, beta: float, sigmoid: bool = False):
        """The matmul primitive for this shape and layout: alpha as a run-time scale
        (``scaled``), ``beta`` as a sum post-op, or a (1, n) bias and a logistic post-op
        (``sigmoid``). Returns (primitive, its memories in argument order, kernel name)."""
        key = (m, n, k, a.strides, b.strides, scaled, beta, sigmoid)
        if key not in self._matmuls:
            item = a.itemsize
            src = self._desc((m, k), tuple(s // item for s in a.strides), _BF16)
            wei = self._desc((k, n), tuple(s // item for s in b.strides), _BF16)
            bias = self._desc((1, n), (n, 1), _F32) if sigmoid else None
            dst = self._desc((m, n), (n, 1), _F32)
            lib = self._lib
            attr = _VOID()
            _check(lib.dnnl_primitive_attr_create(ctypes.byref(attr)), "dnnl_primitive_attr_create")
            post_ops = _VOID()
            try:
                if scaled:  # alpha as a run-time scale of the source: one value (mask 0)
                    _check(lib.dnnl_primitive_attr_set_scales_mask(attr, _ARG_SRC, 0),
                           "dnnl_primitive_attr_set_scales_mask")
                if beta != 0.0 or sigmoid:
                    _check(lib.dnnl_post_ops_create(ctypes.byref(post_ops)), "dnnl_post_ops_create")
                    if beta != 0.0:  # out ← product + beta·out, in fp32
                        _check(lib.dnnl_post_ops_append_sum(post_ops, beta, 0, 0),
                               "dnnl_post_ops_append_sum")
                    if sigmoid:  # out ← σ(product + bias), in fp32
                        _check(lib.dnnl_post_ops_append_eltwise(post_ops, _ELTWISE_LOGISTIC,
                                                                0.0, 0.0),
                               "dnnl_post_ops_append_eltwise")
                    _check(lib.dnnl_primitive_attr_set_post_ops(attr, post_ops),
                           "dnnl_primitive_attr_set_post_ops")
                pd = _VOID()
                _check(lib.dnnl_matmul_primitive_desc_create(ctypes.byref(pd), self._engine, src,
                                                             wei, bias, dst, attr),
                       "dnnl_matmul_primitive_desc_create")
            finally:
                if post_ops:
                    lib.dnnl_post_ops_destroy(post_ops)
                lib.dnnl_primitive_attr_destroy(attr)
            info = ctypes.c_char_p()
            _check(lib.dnnl_primitive_desc_query(pd, _QUERY_IMPL_INFO_STR, 0, ctypes.byref(info)),
                   "dnnl_primitive_desc_query")
            name = info.value.decode()
            self.kernels.add(name)
            prim = self._primitive(pd)
            memories = [self._memory(d) for d in (src, wei, bias, dst) if d is not None]
            if scaled:
                memories.append(self._memory(self._desc((1,), (1,), _F32)))
            self._matmuls[key] = (prim, memories, name)
        return self._matmuls[key]

    def _desc(self, shape, strides, dtype):
        md = _VOID()
        _check(self._lib.dnnl_memory_desc_create_with_strides(
            ctypes.byref(md), len(shape), _DIMS(*shape), dtype, _DIMS(*strides)),
            "dnnl_memory_desc_create_with_strides")
        return md  # kept for the life of the process, like the primitive that uses it

    def _memory(self, md):
        memory = _VOID()
        _check(self._lib.dnnl_memory_create(ctypes.byref(memory), md, self._engine, None),
               "dnnl_memory_create")
        return memory

    def _primitive(self, pd):
        prim = _VOID()
        try:
            _check(self._lib.dnnl_primitive_create(ctypes.byref(prim), pd), "dnnl_primitive_create")
        finally:
            self._lib.dnnl_primitive_desc_destroy(pd)
        return prim

    def _execute(self, prim, memories, arg_ids, arrays) -> None:
        lib = self._lib
        args = (_ExecArg * len(memories))()
        for i, (memory, arg, array) in enumerate(zip(memories, arg_ids, arrays)):
            _check(lib.dnnl_memory_set_data_handle(memory, array.ctypes.data),
                   "dnnl_memory_set_data_handle")
            args[i].arg, args[i].memory = arg, memory
        _check(lib.dnnl_primitive_execute(prim, self._stream, len(memories), args),
               "dnnl_primitive_execute")
        _check(lib.dnnl_stream_wait(self._stream), "dnnl_stream_wait")

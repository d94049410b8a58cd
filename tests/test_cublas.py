"""gpubp.cuda.cublas: the handle's setup and every GEMM's arguments, against a recording fake
of libcublas that runs each GEMM on host memory as column-major BLAS does; on a GPU, against
cupy.matmul and inside a captured CUDA graph."""

from __future__ import annotations

import ctypes
import gc
import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from gpubp.cuda import cublas
from gpubp.errors import BackendError

# How a (rows, cols) operand can sit in memory: C- or F-ordered, a transposed view of a
# C-ordered array (W.T, as the backward pass passes weights), rows of a wider array, and a
# transposed view of such a slice.
LAYOUTS = ("C", "F", "T", "C-padded", "T-padded")
OUT_LAYOUTS = ("C", "F", "C-padded", "T-padded")  # the step passes C or F; any unit stride works
DTYPES = (np.float32, np.float64)
RTOL = {np.float32: 2e-6, np.float64: 1e-13}
M, K, N = 5, 7, 3  # distinct, so any swapped dimension shows
FAKE_STREAM = SimpleNamespace(ptr=0x5717EA)


def arrange(empty, values, layout: str, dtype):
    """values (rows, cols) copied into a new array of the given layout; ``empty(shape, dtype,
    order)`` allocates (host memory registered with the fake, or cupy.empty)."""
    rows, cols = values.shape
    if layout == "C":
        x = empty((rows, cols), dtype, "C")
    elif layout == "F":
        x = empty((rows, cols), dtype, "F")
    elif layout == "T":
        x = empty((cols, rows), dtype, "C").T
    elif layout == "C-padded":
        x = empty((rows, cols + 3), dtype, "C")[:, :cols]
    elif layout == "T-padded":
        x = empty((cols, rows + 2), dtype, "C")[:, :rows].T
    else:
        raise AssertionError(layout)
    x[...] = values
    return x


class DeviceArray(np.ndarray):
    """A host array with CuPy's ``data.ptr``, the one device attribute cublas.py reads."""

    @property
    def data(self):
        return SimpleNamespace(ptr=self.ctypes.data)


class HostMemory:
    """Host buffers standing in for device memory; maps a GEMM's pointers back to them."""

    def __init__(self):
        self.buffers = []  # 1-D uint8 arrays

    def empty(self, shape, dtype, order="C"):
        dtype = np.dtype(dtype)
        raw = np.full(int(np.prod(shape)) * dtype.itemsize, 0xFF, np.uint8)  # NaN-ish garbage
        self.buffers.append(raw)
        return raw.view(dtype).reshape(shape, order=order).view(DeviceArray)

    def workspace(self, nbytes: int, misalign: int = 0):
        raw = np.zeros(nbytes + 2 * cublas.WORKSPACE_ALIGNMENT, np.uint8)
        start = -raw.ctypes.data % cublas.WORKSPACE_ALIGNMENT + misalign
        return raw[start:start + nbytes].view(DeviceArray)

    def matrix(self, ptr: int, dtype, rows: int, cols: int, ld: int):
        """The column-major (rows, cols) matrix at ptr with leading dimension ld, as a view of
        the registered buffer that holds all of it (NumPy refuses a view past its end)."""
        for raw in self.buffers:
            start = raw.ctypes.data
            if start <= ptr < start + raw.nbytes:
                item = np.dtype(dtype).itemsize
                return np.ndarray((rows, cols), dtype, buffer=raw, offset=ptr - start,
                                  strides=(item, ld * item))
        raise AssertionError(f"pointer {ptr:#x} is in no registered array")


class FakeCublas:
    """libcublas's entry points as Python: each call is recorded and returns ``fail[name]``
    (0 by default); a GEMM checks its arguments as cuBLAS does (CUBLAS_STATUS_INVALID_VALUE),
    then runs column-major on the host memory its pointers name."""

    HANDLE = 0xC0B1A5

    def __init__(self, memory: HostMemory, fail=None):
        self.memory, self.fail, self.calls = memory, dict(fail or {}), []

    def _call(self, name, *args):
        self.calls.append((name, args))
        return self.fail.get(name, 0)

    def names(self):
        return [name for name, _ in self.calls]

    def cublasCreate_v2(self, handle_ref):
        status = self._call("cublasCreate_v2")
        if status == 0:
            handle_ref._obj.value = self.HANDLE
        return status

    def cublasDestroy_v2(self, handle):
        return self._call("cublasDestroy_v2", handle)

    def cublasSetStream_v2(self, handle, stream):
        return self._call("cublasSetStream_v2", handle, stream)

    def cublasSetWorkspace_v2(self, handle, workspace, nbytes):
        return self._call("cublasSetWorkspace_v2", handle, workspace, nbytes)

    def cublasSetPointerMode_v2(self, handle, mode):
        return self._call("cublasSetPointerMode_v2", handle, mode)

    def cublasSetMathMode(self, handle, mode):
        return self._call("cublasSetMathMode", handle, mode)

    def cublasSgemm_v2(self, *args):
        return self._gemm("cublasSgemm_v2", np.float32, ctypes.c_float, *args)

    def cublasDgemm_v2(self, *args):
        return self._gemm("cublasDgemm_v2", np.float64, ctypes.c_double, *args)

    def _gemm(self, name, dtype, real, handle, transa, transb, m, n, k, alpha, a, lda, b, ldb,
              beta, c, ldc):
        status = self._call(name, handle, transa, transb, m, n, k, alpha, a, lda, b, ldb,
                            beta, c, ldc)
        if status:
            return status
        shape_a = (m, k) if transa == cublas.OP_N else (k, m)  # as stored, column-major
        shape_b = (k, n) if transb == cublas.OP_N else (n, k)
        if (handle != self.HANDLE or {transa, transb} - {cublas.OP_N, cublas.OP_T}
                or min(m, n, k) < 0 or lda < max(1, shape_a[0]) or ldb < max(1, shape_b[0])
                or ldc < max(1, m)):
            return 7
        alpha, beta = real.from_address(alpha).value, real.from_address(beta).value
        if m == 0 or n == 0:
            return 0
        out = self.memory.matrix(c, dtype, m, n, ldc)
        product = np.zeros((m, n))
        if k:
            op_a = self.memory.matrix(a, dtype, *shape_a, lda)
            op_b = self.memory.matrix(b, dtype, *shape_b, ldb)
            op_a = op_a if transa == cublas.OP_N else op_a.T
            op_b = op_b if transb == cublas.OP_N else op_b.T
            product = op_a.astype(np.float64) @ op_b.astype(np.float64)
        # as in BLAS, beta = 0 does not read C (it may hold NaN)
        out[...] = alpha * product + (beta * out.astype(np.float64) if beta else 0.0)
        return 0


@pytest.fixture
def memory():
    return HostMemory()


@pytest.fixture
def fake(memory, monkeypatch):
    lib = FakeCublas(memory)
    monkeypatch.setattr(cublas, "library", lambda: lib)
    return lib


def handle(memory, **kwargs):
    kwargs.setdefault("workspace", memory.workspace(4096))
    return cublas.Cublas(FAKE_STREAM, **kwargs)


def host_array(shape, strides, dtype=np.float32, ptr=0x1000):
    """An array description too large to allocate, for the 32-bit limits."""
    return SimpleNamespace(shape=shape, strides=strides, dtype=np.dtype(dtype),
                           data=SimpleNamespace(ptr=ptr))


# --- the handle --------------------------------------------------------------------------


@pytest.mark.parametrize("tf32, math_mode", [(False, cublas.DEFAULT_MATH),
                                             (True, cublas.TF32_TENSOR_OP_MATH)])
def test_handle_setup_sequence(fake, memory, tf32, math_mode):
    workspace = memory.workspace(8192)
    blas = cublas.Cublas(FAKE_STREAM, workspace=workspace, tf32=tf32)
    h = FakeCublas.HANDLE
    # cublasSetStream resets the workspace, so the workspace must come after it
    assert fake.calls == [
        ("cublasCreate_v2", ()),
        ("cublasSetStream_v2", (h, FAKE_STREAM.ptr)),
        ("cublasSetWorkspace_v2", (h, workspace.data.ptr, 8192)),
        ("cublasSetPointerMode_v2", (h, cublas.POINTER_MODE_HOST)),
        ("cublasSetMathMode", (h, math_mode)),
    ]
    assert blas.workspace_bytes == 8192 and blas.tf32 is tf32 and blas.stream is FAKE_STREAM
    assert "tf32=" + str(tf32) in repr(blas)


def test_close_destroys_once(fake, memory):
    with handle(memory) as blas:
        assert not blas.closed
    assert blas.closed and "closed" in repr(blas)
    blas.close()
    assert fake.names().count("cublasDestroy_v2") == 1
    assert fake.calls[-1] == ("cublasDestroy_v2", (FakeCublas.HANDLE,))
    a = arrange(memory.empty, np.ones((2, 2)), "C", np.float32)
    with pytest.raises(ValueError, match="closed"):
        blas.matmul(a, a, a)


def test_refuses_default_stream_and_bad_workspace(fake, memory):
    for stream in (0, SimpleNamespace(ptr=0), 1):
        with pytest.raises(ValueError, match="^stream: the default stream"):
            cublas.Cublas(stream, workspace=memory.workspace(256))
    with pytest.raises(TypeError, match="^stream:"):
        cublas.Cublas(None, workspace=memory.workspace(256))
    with pytest.raises(ValueError, match="^workspace: .* 256-byte aligned"):
        handle(memory, workspace=memory.workspace(1024, misalign=8))
    with pytest.raises(ValueError, match="^workspace: expected a 1-D uint8"):
        handle(memory, workspace=memory.empty((4, 64), np.float32))
    assert "cublasCreate_v2" not in fake.names()  # refused before any handle existed


# --- GEMM arguments, run by the fake -----------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout_out", OUT_LAYOUTS)
@pytest.mark.parametrize("layout_b", LAYOUTS)
@pytest.mark.parametrize("layout_a", LAYOUTS)
def test_matmul_every_layout(fake, memory, layout_a, layout_b, layout_out, dtype):
    rng = np.random.default_rng(7)
    va, vb, vout = rng.normal(size=(M, K)), rng.normal(size=(K, N)), rng.normal(size=(M, N))
    a = arrange(memory.empty, va, layout_a, dtype)
    b = arrange(memory.empty, vb, layout_b, dtype)
    out = arrange(memory.empty, vout, layout_out, dtype)
    alpha, beta = -0.5, 0.25  # exact in float32, so the reference needs no rounding of them
    expected = alpha * (a.astype(np.float64) @ b.astype(np.float64)) + beta * out.astype(np.float64)
    before = len(fake.calls)

    assert handle(memory).matmul(a, b, out, alpha=alpha, beta=beta) is out

    np.testing.assert_allclose(out, expected, rtol=RTOL[dtype], atol=RTOL[dtype])
    (name, args), = fake.calls[before + 5:]  # one GEMM after the handle's 5 setup calls
    assert name == ("cublasSgemm_v2" if dtype == np.float32 else "cublasDgemm_v2")
    # operands passed where they lie, never copied
    pointers = args[7], args[9], args[12]
    assert sorted(pointers[:2]) == sorted([a.data.ptr, b.data.ptr])
    assert pointers[2] == out.data.ptr


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (1, 5, 1), (4, 1, 3), (1, 4, 6), (6, 4, 1)])
@pytest.mark.parametrize("layouts", [("C", "C", "C"), ("T", "T", "F"), ("F", "C-padded", "F"),
                                     ("T-padded", "T", "C")])
def test_matmul_vectors_and_ones(fake, memory, m, k, n, layouts):
    """Length-1 axes, whose strides say nothing; beta = 0 ignores out's old NaNs."""
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    a = arrange(memory.empty, rng.normal(size=(m, k)), layouts[0], np.float64)
    b = arrange(memory.empty, rng.normal(size=(k, n)), layouts[1], np.float64)
    out = arrange(memory.empty, np.full((m, n), np.nan), layouts[2], np.float64)
    handle(memory).matmul(a, b, out)
    np.testing.assert_allclose(out, np.asarray(a) @ np.asarray(b), rtol=1e-13)


def test_empty_operands(fake, memory):
    blas = handle(memory)
    a = arrange(memory.empty, np.zeros((3, 0)), "C", np.float32)
    b = arrange(memory.empty, np.zeros((0, 2)), "T", np.float32)
    out = arrange(memory.empty, np.ones((3, 2)), "F", np.float32)
    blas.matmul(a, b, out, beta=0.5)  # k = 0: out = beta · out, cuBLAS's to do
    np.testing.assert_array_equal(out, np.full((3, 2), 0.5))
    before = len(fake.calls)
    blas.matmul(out[:0], arrange(memory.empty, np.ones((2, 4)), "C", np.float32),
                arrange(memory.empty, np.ones((0, 4)), "C", np.float32))
    assert len(fake.calls) == before  # nothing to write: no GEMM launched or captured


def test_gemm_call_is_the_transposed_problem():
    """Row-major out = a @ Wᵀ is column-major outᵀ = W aᵀ: cuBLAS's A is W, read transposed."""
    a = host_array((64, 784), (784 * 4, 4), ptr=0xA000)  # (B, n_in), C-ordered
    w = host_array((800, 784), (784 * 4, 4), ptr=0xB000)  # (n_out, n_in), C-ordered
    wt = host_array((784, 800), (4, 784 * 4), ptr=0xB000)  # w.T
    out = host_array((64, 800), (800 * 4, 4), ptr=0xC000)
    assert cublas.gemm_call(a, wt, out) == cublas.GemmCall(
        "cublasSgemm_v2", cublas.OP_T, cublas.OP_N, 800, 64, 784,
        0xB000, 784, 0xA000, 784, 0xC000, 800)
    # a column-major out (800, 64): out = w @ aᵀ computed directly, column-major
    out_f = host_array((800, 64), (4, 800 * 4), ptr=0xC000)
    at = host_array((784, 64), (4, 784 * 4), ptr=0xA000)
    assert cublas.gemm_call(w, at, out_f) == cublas.GemmCall(
        "cublasSgemm_v2", cublas.OP_T, cublas.OP_N, 800, 64, 784,
        0xB000, 784, 0xA000, 784, 0xC000, 800)


# --- refusals ------------------------------------------------------------------------------


def test_refuses_layouts_without_a_unit_stride(fake, memory):
    blas = handle(memory)
    big = arrange(memory.empty, np.ones((8, 8)), "C", np.float32)
    good = arrange(memory.empty, np.ones((4, 4)), "C", np.float32)
    strided = big[::2, ::2]  # neither axis has unit stride
    for args, name in (((strided, good, good), "a"), ((good, strided, good), "b"),
                       ((good, good, strided), "out")):
        with pytest.raises(ValueError, match=f"^{name}: shape \\(4, 4\\) with strides "
                                             "\\(16, 2\\) elements has no unit-stride axis"):
            blas.matmul(*args)
    with pytest.raises(ValueError, match="^a: .*no unit-stride axis"):  # overlapping rows
        blas.matmul(np.lib.stride_tricks.as_strided(good, (4, 4), (4, 4)).view(DeviceArray),
                    good, good)
    with pytest.raises(ValueError, match="^b: .*no unit-stride axis"):  # reversed rows
        blas.matmul(good, good[::-1], good)
    assert not any(name.endswith("gemm_v2") for name in fake.names())


def test_refuses_mismatched_arguments(fake, memory):
    blas = handle(memory)
    f32 = lambda shape: arrange(memory.empty, np.ones(shape), "C", np.float32)  # noqa: E731
    f64 = arrange(memory.empty, np.ones((2, 3)), "C", np.float64)
    i32 = arrange(memory.empty, np.ones((2, 3)), "C", np.int32)
    cases = [
        ((i32, f32((3, 2)), f32((2, 2))), "^a: dtype int32, expected float32 or float64"),
        ((f32((2, 3)), f64.T, f32((2, 2))), "^b: dtype float64 differs from a's float32"),
        ((f32((2, 3)), f32((3, 2)), f64[:, :2]), "^out: dtype float64"),
        ((f32((2, 3)), f32((2, 2)), f32((2, 2))), "^b: shape \\(2, 2\\) cannot follow a's"),
        ((f32((2, 3)), f32((3, 4)), f32((2, 3))), "^out: shape \\(2, 3\\), expected \\(2, 4\\)"),
        ((memory.empty((6,), np.float32), f32((3, 4)), f32((2, 4))), "^a: expected a 2-D array"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            blas.matmul(*args)
    for value, name in ((float("nan"), "alpha"), (float("inf"), "beta")):
        with pytest.raises(ValueError, match=f"^{name}: must be finite"):
            blas.matmul(f32((2, 3)), f32((3, 2)), f32((2, 2)), **{name: value})


def test_int32_limits():
    big = 2**31  # one past INT32_MAX
    ok = host_array((4, 4), (16, 4))
    with pytest.raises(ValueError, match="^a: shape \\(2147483648, 4\\) exceeds cuBLAS's 32-bit"):
        cublas.gemm_call(host_array((big, 4), (16, 4)), ok, host_array((big, 4), (16, 4)))
    with pytest.raises(ValueError, match="^b: shape \\(4, 2147483648\\) exceeds"):
        cublas.gemm_call(ok, host_array((4, big), (4 * big, 4)), host_array((4, big), (4 * big, 4)))
    with pytest.raises(ValueError, match="^b: leading dimension 2147483648"):  # padded rows
        cublas.gemm_call(ok, host_array((4, 4), (4 * big, 4)), ok)
    with pytest.raises(ValueError, match="^out: leading dimension 2147483648"):  # padded columns
        cublas.gemm_call(ok, ok, host_array((4, 4), (4, 4 * big)))
    limit = cublas.INT32_MAX
    call = cublas.gemm_call(ok, host_array((4, 4), (4 * limit, 4)), ok)  # the largest ld passes
    assert call.lda == limit


# --- scalars and errors ----------------------------------------------------------------


def test_alpha_beta_storage_persists(fake, memory):
    blas = handle(memory)
    a = arrange(memory.empty, np.ones((2, 3)), "C", np.float32)
    b = arrange(memory.empty, np.ones((3, 2)), "C", np.float32)
    out = arrange(memory.empty, np.ones((2, 2)), "C", np.float32)

    def scalar_pointers():
        _, args = fake.calls[-1]
        return args[6], args[11]

    blas.matmul(a, b, out, alpha=-0.25, beta=1.0)
    first = scalar_pointers()
    blas.matmul(a, b, out, alpha=2.0, beta=0.0)
    second = scalar_pointers()
    blas.matmul(a, b, out, alpha=-0.25, beta=1.0)
    assert scalar_pointers() == first  # one storage per constant, reused
    assert set(first).isdisjoint(second)  # a new constant never overwrites an old one
    gc.collect()
    read = ctypes.c_float.from_address
    assert (read(first[0]).value, read(first[1]).value) == (-0.25, 1.0)
    assert (read(second[0]).value, read(second[1]).value) == (2.0, 0.0)
    d = arrange(memory.empty, np.ones((2, 2)), "C", np.float64)
    blas.matmul(d, d, d, alpha=-0.25, beta=1.0)  # float64 has storage of its own type
    assert ctypes.c_double.from_address(scalar_pointers()[0]).value == -0.25


def test_status_errors_name_the_function(fake, memory):
    fake.fail["cublasSgemm_v2"] = 7
    blas = handle(memory)
    a = arrange(memory.empty, np.ones((2, 2)), "C", np.float32)
    with pytest.raises(cublas.CublasError, match="^cublasSgemm_v2 failed: "
                                                 "CUBLAS_STATUS_INVALID_VALUE \\(7\\)$") as e:
        blas.matmul(a, a, a)
    assert isinstance(e.value, BackendError) and (e.value.function, e.value.status) == (
        "cublasSgemm_v2", 7)
    assert "unknown status (99)" in str(cublas.CublasError("cublasDgemm_v2", 99))


@pytest.mark.parametrize("failing", ["cublasSetStream_v2", "cublasSetWorkspace_v2",
                                     "cublasSetPointerMode_v2", "cublasSetMathMode"])
def test_setup_failure_destroys_the_handle(fake, memory, failing):
    fake.fail[failing] = 8
    with pytest.raises(cublas.CublasError, match=f"^{failing} failed: "
                                                 "CUBLAS_STATUS_ARCH_MISMATCH"):
        handle(memory)
    assert fake.calls[-1] == ("cublasDestroy_v2", (FakeCublas.HANDLE,))


def test_create_failure_names_create(fake, memory):
    fake.fail["cublasCreate_v2"] = 1
    with pytest.raises(cublas.CublasError, match="^cublasCreate_v2 failed: "
                                                 "CUBLAS_STATUS_NOT_INITIALIZED"):
        handle(memory)
    assert fake.names() == ["cublasCreate_v2"]  # no handle, nothing to destroy


# --- finding libcublas -----------------------------------------------------------------


def test_library_not_found_is_a_backend_error(monkeypatch, tmp_path):
    def no_library(name, noload=False):
        raise OSError(f"{name}: cannot open shared object file")

    def no_pathfinder():
        raise RuntimeError("cuda-pathfinder found no cublas")

    monkeypatch.setattr(cublas, "_open", no_library)
    monkeypatch.setattr(cublas, "_pathfinder_path", no_pathfinder)
    monkeypatch.setattr(cublas, "sys", SimpleNamespace(path=[str(tmp_path)]))
    with pytest.raises(BackendError, match="^libcublas not found .*cuda-pathfinder found no "
                                           "cublas.*pip install 'gpubp\\[cuda12\\]'"):
        cublas._load()


def test_library_found_in_a_cuda_wheel(monkeypatch, tmp_path):
    """Without cuda-pathfinder, the wheels' directories on sys.path are searched."""
    wheel_lib = tmp_path / "nvidia" / "cublas" / "lib" / "libcublas.so.12"
    wheel_lib.parent.mkdir(parents=True)
    wheel_lib.touch()
    opened = []

    def open_only_files(name, noload=False):
        opened.append((name, noload))
        if name != str(wheel_lib):
            raise OSError(name)
        return "the library"

    def no_pathfinder():
        raise ImportError("No module named 'cuda.pathfinder'")

    monkeypatch.setattr(cublas, "_open", open_only_files)
    monkeypatch.setattr(cublas, "_pathfinder_path", no_pathfinder)
    monkeypatch.setattr(cublas, "_sonames", lambda: ["libcublas.so.12", "libcublas.so.13"])
    monkeypatch.setattr(cublas, "sys", SimpleNamespace(path=["/nonexistent", str(tmp_path)]))
    assert cublas._load() == "the library"
    # the copy already loaded is asked for first, by soname and without loading anything
    assert opened[:2] == [("libcublas.so.12", True), ("libcublas.so.13", True)]


# --- the ctypes declarations, through a C stub of libcublas -----------------------------

STUB_SOURCE = r"""
#include <stddef.h>
#include <stdint.h>
/* cuBLAS's signatures; records what it was given, and runs the GEMMs on host memory. */
static void *handle = (void *)0xC0B1A5;
uintptr_t stub_stream, stub_workspace; size_t stub_workspace_bytes;
int stub_pointer_mode = -1, stub_math_mode = -1, stub_destroyed;
int cublasCreate_v2(void **h) { *h = handle; return 0; }
int cublasDestroy_v2(void *h) { stub_destroyed = h == handle; return h == handle ? 0 : 7; }
int cublasSetStream_v2(void *h, void *s) { stub_stream = (uintptr_t)s; return h == handle ? 0 : 7; }
int cublasSetWorkspace_v2(void *h, void *w, size_t n) {
    stub_workspace = (uintptr_t)w; stub_workspace_bytes = n; return h == handle ? 0 : 7; }
int cublasSetPointerMode_v2(void *h, int m) { stub_pointer_mode = m; return h == handle ? 0 : 7; }
int cublasSetMathMode(void *h, int m) { stub_math_mode = m; return h == handle ? 0 : 7; }
#define GEMM(NAME, T)                                                                        \
int NAME(void *h, int ta, int tb, int m, int n, int k, const T *alpha, const T *A, int lda,   \
         const T *B, int ldb, const T *beta, T *C, int ldc) {                                 \
    if (h != handle) return 7;                                                               \
    for (int j = 0; j < n; j++)                                                              \
        for (int i = 0; i < m; i++) {                                                        \
            double sum = 0;                                                                  \
            for (int p = 0; p < k; p++)                                                      \
                sum += (double)(ta ? A[p + (size_t)i * lda] : A[i + (size_t)p * lda])         \
                     * (double)(tb ? B[j + (size_t)p * ldb] : B[p + (size_t)j * ldb]);        \
            T *c = &C[i + (size_t)j * ldc];                                                  \
            *c = (T)(*alpha * sum + (*beta != 0 ? *beta * (double)*c : 0.0));                \
        }                                                                                    \
    return 0;                                                                                \
}
GEMM(cublasSgemm_v2, float)
GEMM(cublasDgemm_v2, double)
"""


@pytest.fixture
def stub_library(tmp_path, monkeypatch):
    """A C stub standing in for libcublas, typed by cublas.library() itself."""
    import shutil
    import subprocess

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    source, shared = tmp_path / "stub.c", tmp_path / "libcublas_stub.so"
    source.write_text(STUB_SOURCE)
    subprocess.run([compiler, "-O1", "-shared", "-fPIC", str(source), "-o", str(shared)],
                   check=True, capture_output=True)
    monkeypatch.setattr(cublas, "_load", lambda: ctypes.CDLL(str(shared)))
    cublas.library.cache_clear()
    yield cublas.library()
    cublas.library.cache_clear()


def test_declarations_through_a_c_stub(stub_library, memory):
    """Handle, stream, size_t workspace, enums and the GEMMs' 14 arguments cross the C ABI
    as cuBLAS declares them."""
    lib = stub_library
    # sizes and pointers past 32 bits (the stub never touches the workspace)
    workspace = SimpleNamespace(shape=(5 * 2**32,), dtype=np.dtype(np.uint8), nbytes=5 * 2**32,
                                data=SimpleNamespace(ptr=2**44))
    stream = SimpleNamespace(ptr=2**40 + 0x5717EA)
    blas = cublas.Cublas(stream, workspace=workspace, tf32=True)
    read = lambda name, ctype=ctypes.c_int: ctype.in_dll(lib, name).value  # noqa: E731
    assert read("stub_stream", ctypes.c_size_t) == stream.ptr
    assert read("stub_workspace", ctypes.c_size_t) == workspace.data.ptr
    assert read("stub_workspace_bytes", ctypes.c_size_t) == workspace.nbytes
    assert (read("stub_pointer_mode"), read("stub_math_mode")) == (
        cublas.POINTER_MODE_HOST, cublas.TF32_TENSOR_OP_MATH)
    rng = np.random.default_rng(5)
    for dtype, (layout_a, layout_b, layout_out) in itertools.product(
            DTYPES, [("C", "T", "C"), ("T-padded", "F", "F"), ("C-padded", "C", "T-padded")]):
        a = arrange(memory.empty, rng.normal(size=(M, K)), layout_a, dtype)
        b = arrange(memory.empty, rng.normal(size=(K, N)), layout_b, dtype)
        out = arrange(memory.empty, rng.normal(size=(M, N)), layout_out, dtype)
        expected = 1.5 * (np.asarray(a, np.float64) @ np.asarray(b, np.float64)) - 2.0 * out
        blas.matmul(a, b, out, alpha=1.5, beta=-2.0)
        np.testing.assert_allclose(out, expected, rtol=RTOL[dtype], atol=RTOL[dtype])
    blas.close()
    assert read("stub_destroyed") == 1


# --- on a GPU ------------------------------------------------------------------------------


def cupy_empty(shape, dtype, order):
    import cupy

    return cupy.empty(shape, dtype, order=order)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gpu_matmul_matches_cupy(dtype):
    import cupy

    rng = np.random.default_rng(11)
    stream = cupy.cuda.Stream(non_blocking=True)
    m, k, n = 67, 129, 33
    with cublas.Cublas(stream) as blas, stream:
        for layout_a, layout_b, layout_out in itertools.product(LAYOUTS, LAYOUTS, OUT_LAYOUTS):
            a = arrange(cupy_empty, cupy.asarray(rng.normal(size=(m, k))), layout_a, dtype)
            b = arrange(cupy_empty, cupy.asarray(rng.normal(size=(k, n))), layout_b, dtype)
            out = arrange(cupy_empty, cupy.asarray(rng.normal(size=(m, n))), layout_out, dtype)
            expected = -0.5 * cupy.matmul(a, b) + 0.25 * out
            blas.matmul(a, b, out, alpha=-0.5, beta=0.25)
            stream.synchronize()
            np.testing.assert_allclose(cupy.asnumpy(out), cupy.asnumpy(expected),
                                       rtol=1e-5 if dtype == np.float32 else 1e-12,
                                       atol=1e-5 if dtype == np.float32 else 1e-12,
                                       err_msg=f"a {layout_a}, b {layout_b}, out {layout_out}")


@pytest.mark.gpu
@pytest.mark.parametrize("tf32", [False, True])
def test_gpu_gemm_is_captured_and_replayed(tf32):
    """A GEMM captured on a non-default stream, replayed on new inputs, twice."""
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    rng = np.random.default_rng(3)
    with cublas.Cublas(stream, tf32=tf32) as blas, stream:
        x = cupy.asarray(rng.normal(size=(256, 784)), dtype=cupy.float32)
        w = cupy.asarray(rng.normal(size=(800, 784)), dtype=cupy.float32)
        out = cupy.empty((256, 800), dtype=cupy.float32)
        blas.matmul(x, w.T, out)  # eager first: cuBLAS loads its kernel outside the capture
        stream.synchronize()
        stream.begin_capture()
        try:
            blas.matmul(x, w.T, out)
        finally:
            graph = stream.end_capture()
        x[...] = cupy.asarray(rng.normal(size=x.shape), dtype=cupy.float32)
        out.fill(cupy.nan)
        graph.launch(stream)
        stream.synchronize()
        first = out.copy()
        expected = cupy.asnumpy(x).astype(np.float64) @ cupy.asnumpy(w).T.astype(np.float64)
        tolerance = 2e-2 if tf32 else 1e-4  # TF32 keeps 10 mantissa bits of the inputs
        np.testing.assert_allclose(cupy.asnumpy(first), expected, rtol=tolerance,
                                   atol=tolerance * np.abs(expected).max())
        out.fill(cupy.nan)
        graph.launch(stream)
        stream.synchronize()
        np.testing.assert_array_equal(cupy.asnumpy(out), cupy.asnumpy(first))

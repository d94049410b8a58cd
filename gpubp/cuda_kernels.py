"""The CUDA kernels of ``kernels/*.cu``, compiled with NVRTC and launched on CuPy arrays.

Each public function has the signature of its reference in :mod:`gpubp.ops` and computes
the same result; the CuPy backend uses these in training (set ``GPUBP_CUDA_KERNELS=0``
to run the references on CuPy instead).

Compilation: each source file is one NVRTC program, compiled with :func:`compile_options`
for the device's architecture (a cubin for ``sm_XY``; PTX for the newest architecture
NVRTC knows when it does not know the device), once per device and process, and cached
on disk under ``$XDG_CACHE_HOME/gpubp/kernels`` keyed by the source, options and NVRTC
version. :func:`compile_source` needs no GPU, which is how CI checks every kernel.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np

from gpubp import ops
from gpubp.errors import DataError, GpubpError
from gpubp.fileio import atomic_writer, user_cache_dir

SOURCES = ("softmax_xent.cu", "sigmoid.cu")
COMMON_HEADER = "gpubp_common.cuh"
CXX_STANDARD = "c++17"

BLOCK = 256  # threads per block for the elementwise and small-row kernels
SMALL_MAX_COLS = 8 * 32  # xent_small: up to 8 columns per lane, 32 lanes per row
ROW_ITEMS = {np.float32: (4, 8, 16, 32), np.float64: (4, 8)}  # row values per thread
ROW_MAX_THREADS = 1024
SPLIT_THREADS, SPLIT_ITEMS = 256, 16  # must match SPLIT_ITEMS in softmax_xent.cu
VEC = {np.float32: 4, np.float64: 2}  # elements per 16-byte load
SUFFIX = {np.float32: "f32", np.float64: "f64"}


class KernelCompileError(GpubpError, RuntimeError):
    """NVRTC rejected a kernel source; the message holds the file, options and NVRTC log."""


# ---- sources and compilation (no GPU needed) ---------------------------------------------

def source_dir() -> Path:
    """Where the .cu files are: inside the installed package, else the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "_kernels", here.parent / "kernels"):
        if (candidate / SOURCES[0]).is_file():
            return candidate
    raise KernelCompileError(f"CUDA sources {SOURCES} not found in {here / '_kernels'} "
                             f"or {here.parent / 'kernels'}; the installation is incomplete")


@functools.lru_cache(maxsize=None)
def kernel_source(name: str) -> str:
    """The text NVRTC compiles for source ``name``: the file with the common header pasted in."""
    directory = source_dir()
    text = (directory / name).read_text()
    header = (directory / COMMON_HEADER).read_text()
    return text.replace(f'#include "{COMMON_HEADER}"', header, 1)


def entry_points() -> dict[str, list[str]]:
    """Every kernel name the functions below can launch, per source file."""
    xent, sigmoid = [], []
    for dtype, suffix in SUFFIX.items():
        xent += [f"xent_{kind}_{suffix}" for kind in ("small", "partial", "finish")]
        xent += [f"xent_row_{suffix}_i{items}_v{vec}"
                 for items in ROW_ITEMS[dtype] for vec in (1, VEC[dtype])]
        sigmoid += [f"{kind}_{suffix}_v{vec}" for kind in ("bias_sigmoid", "sigmoid_backward")
                    for vec in (1, VEC[dtype])]
        sigmoid += [f"sigmoid_backward_dbias_{suffix}", f"sum_partials_{suffix}"]
    return {"softmax_xent.cu": xent, "sigmoid.cu": sigmoid}


def compile_options(arch: str) -> tuple[str, ...]:
    """NVRTC options: the C++ standard and the target, e.g. arch="sm_90" or "compute_90"."""
    return (f"--std={CXX_STANDARD}", f"--gpu-architecture={arch}")


def compile_source(name: str, arch: str) -> bytes:
    """Compile source ``name`` for ``arch`` with NVRTC: a cubin for sm_XY, PTX for compute_XY.

    Raises KernelCompileError with the file, the options and NVRTC's log.
    """
    nvrtc = _nvrtc()
    options = compile_options(arch)
    program = nvrtc.createProgram(kernel_source(name), name, [], [])
    try:
        try:
            nvrtc.compileProgram(program, list(options))
        except nvrtc.NVRTCError as e:
            log = nvrtc.getProgramLog(program)
            raise KernelCompileError(
                f"kernel source {name} failed to compile for {arch} with options "
                f"{' '.join(options)}: {e}\n{log}") from None
        if arch.startswith("sm_"):
            return nvrtc.getCUBIN(program)
        ptx = nvrtc.getPTX(program)
        ptx = ptx.encode() if isinstance(ptx, str) else bytes(ptx)
        return ptx if ptx.endswith(b"\0") else ptx + b"\0"  # the driver reads a C string
    finally:
        nvrtc.destroyProgram(program)


def nvrtc_version() -> tuple[int, int]:
    return tuple(_nvrtc().getVersion())


def target_arch(compute_capability: str) -> str:
    """The NVRTC target for a device of this compute capability (e.g. "90" -> "sm_90")."""
    supported = [int(a) for a in _nvrtc().getSupportedArchs()]
    cc = int(compute_capability)
    if cc in supported:
        return f"sm_{cc}"
    older = [a for a in supported if a <= cc]
    if not older:
        raise KernelCompileError(f"NVRTC {nvrtc_version()} supports no architecture up to "
                                 f"sm_{cc} (it knows {supported})")
    return f"compute_{max(older)}"  # PTX; the driver compiles it for the device


def _nvrtc():
    """CuPy's NVRTC binding, with libnvrtc loaded (CuPy 14 loads it at the first call)."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except (ImportError, RuntimeError) as e:  # no CuPy, or CuPy without libnvrtc
        raise KernelCompileError(f"NVRTC is not available through CuPy ({e}); install "
                                 f"gpubp[cuda12] or gpubp[cuda13], or a CUDA toolkit") from None
    return nvrtc


def _cache_path(name: str, arch: str) -> Path:
    key = hashlib.sha256("\0".join(
        [kernel_source(name), *compile_options(arch), repr(nvrtc_version())]).encode()).hexdigest()
    return user_cache_dir("kernels") / f"{Path(name).stem}-{arch}-{key[:16]}.bin"


def _binary(name: str, arch: str) -> bytes:
    """The compiled source, from the disk cache when present (and written there if not)."""
    path = _cache_path(name, arch)
    try:
        return path.read_bytes()
    except OSError:
        pass
    binary = compile_source(name, arch)
    try:
        with atomic_writer(path) as f:  # makes the directory too
            f.write(binary)
    except OSError:
        pass  # a read-only cache only costs a compile next time
    return binary


# ---- loading and launching -----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _module(device_id: int, name: str):
    import cupy

    with cupy.cuda.Device(device_id) as device:
        module = cupy.cuda.function.Module()
        module.load(_binary(name, target_arch(device.compute_capability)))
    return module


def _function(name: str, source: str):
    import cupy

    return _device_function(cupy.cuda.runtime.getDevice(), source, name)


@functools.lru_cache(maxsize=None)
def _device_function(device_id: int, source: str, name: str):
    return _module(device_id, source).get_function(name)


@functools.lru_cache(maxsize=None)
def _device_state(device_id: int):
    """Per device: the bad-label flag, the mean's ticket counter and the SM count."""
    import cupy

    with cupy.cuda.Device(device_id) as device:
        return (cupy.zeros(1, np.int32), cupy.zeros(1, np.uint32),
                device.attributes["MultiProcessorCount"])


def _state():
    import cupy

    return _device_state(cupy.cuda.runtime.getDevice())


def _aligned(*arrays) -> bool:
    return all(a is None or a.data.ptr % 16 == 0 for a in arrays)


NULL = np.uint64(0)


def _ptr(a):
    return NULL if a is None else a


# ---- the kernels ---------------------------------------------------------------------------

def bias_sigmoid(z, bias, out=None):
    """a = σ(z + b) on the GPU; see :func:`gpubp.ops.bias_sigmoid`."""
    z, bias = _contiguous(z, "z"), _contiguous(bias, "bias")
    rows, cols = z.shape
    if bias.shape != (cols,) or bias.dtype != z.dtype:
        raise ValueError(f"bias: expected shape ({cols},) and dtype {z.dtype}, got {bias.shape} "
                         f"and {bias.dtype}")
    out = _output(out, z, "out")
    vec = VEC[z.dtype.type] if cols % VEC[z.dtype.type] == 0 and _aligned(z, out) else 1
    blocks = _grid_stride_blocks(z.size // vec)
    if blocks:
        _function(f"bias_sigmoid_{SUFFIX[z.dtype.type]}_v{vec}", "sigmoid.cu")(
            (blocks,), (BLOCK,), (z, bias, out, np.int64(rows), np.int64(cols)))
    return out


def sigmoid_backward(grad_a, a, out=None, bias_grad=None):
    """δ = g ⊙ a ⊙ (1 − a) on the GPU, with dL/db fused in; see :func:`gpubp.ops.sigmoid_backward`."""
    import cupy

    a, grad_a = _contiguous(a, "a"), _contiguous(grad_a, "grad_a")
    if grad_a.shape != a.shape or grad_a.dtype != a.dtype:
        raise ValueError(f"grad_a: expected shape {a.shape} and dtype {a.dtype}, got "
                         f"{grad_a.shape} and {grad_a.dtype}")
    out = _output(out, a, "out")
    suffix = SUFFIX[a.dtype.type]
    if bias_grad is None:
        vec = VEC[a.dtype.type] if a.size % VEC[a.dtype.type] == 0 and _aligned(a, grad_a, out) else 1
        blocks = _grid_stride_blocks(a.size // vec)
        if blocks:
            _function(f"sigmoid_backward_{suffix}_v{vec}", "sigmoid.cu")(
                (blocks,), (BLOCK,), (grad_a, a, out, np.int64(a.size)))
        return out
    if a.ndim != 2 or bias_grad.shape != (a.shape[1],) or bias_grad.dtype != a.dtype:
        raise ValueError(f"bias_grad: expected shape ({a.shape[-1]},) and dtype {a.dtype} for "
                         f"a of shape {a.shape}, got {bias_grad.shape} and {bias_grad.dtype}")
    if not bias_grad.flags.c_contiguous:
        raise ValueError("bias_grad: must be contiguous")
    rows, cols = a.shape
    col_tiles = -(-cols // 32)
    slabs = max(1, min(-(-rows // 8), -(-4 * _state()[2] // col_tiles)))
    rows_per_slab = -(-rows // slabs) if rows else 1
    slabs = max(1, -(-rows // rows_per_slab))
    partials = cupy.empty((slabs, cols), a.dtype)
    _function(f"sigmoid_backward_dbias_{suffix}", "sigmoid.cu")(
        (col_tiles, slabs), (32, 8),
        (grad_a, a, out, partials, np.int64(rows), np.int64(cols), np.int64(rows_per_slab)))
    _function(f"sum_partials_{suffix}", "sigmoid.cu")(
        (-(-cols // BLOCK),), (BLOCK,), (partials, bias_grad, np.int64(slabs), np.int64(cols)))
    return out


def softmax_cross_entropy(logits, targets, scale=1.0, *, ignore_index=None, reduction="none",
                          out=None, grad=True):
    """Fused softmax + cross-entropy on the GPU; see :func:`gpubp.ops.softmax_cross_entropy`.

    One launch for C ≤ 1024·32 (float32; 1024·8 for float64), two beyond. A label
    outside [0, C) that is not ``ignore_index`` is not raised here, which would cost a
    host sync: its row gets a NaN loss and gradient, and a device flag is set that
    :func:`raise_on_bad_labels` reads.
    """
    import cupy

    ops.check_cross_entropy_args(logits, targets, ignore_index, reduction, out)
    logits = _contiguous(logits, "logits")
    dtype = logits.dtype.type
    rows, cols = logits.shape
    if targets.ndim == 1:
        labels = targets if targets.dtype in (np.int32, np.int64) else targets.astype(np.int64)
        labels, target_rows = _contiguous(labels, "targets"), None
    else:
        labels, target_rows = None, _contiguous(targets.astype(dtype, copy=False), "targets")
    g = (_output(out, logits, "out") if grad else None)
    loss_rows = cupy.empty(rows, dtype) if reduction == "none" else None
    mean = cupy.empty((), dtype) if reduction == "mean" else None
    if rows == 0:
        if mean is not None:
            mean.fill(0)
        return (mean if mean is not None else loss_rows), g

    bad_label, ticket, _ = _state()
    suffix = SUFFIX[dtype]
    labels_64 = np.int32(labels is not None and labels.dtype == np.int64)
    ignored = np.int64(0 if ignore_index is None else ignore_index)
    has_ignore = np.int32(ignore_index is not None)
    common = (logits, _ptr(labels), labels_64, _ptr(target_rows), _ptr(g), _ptr(loss_rows),
              np.int64(rows), np.int64(cols), dtype(scale), ignored, has_ignore)

    def tail(blocks):
        partials = cupy.empty(2 * blocks, np.float64) if mean is not None else None
        return (_ptr(partials), ticket, _ptr(mean), bad_label)

    path = xent_path(dtype, cols)
    if path == "small":
        group = 1 << max(0, (-(-cols // 8) - 1).bit_length())
        blocks = -(-rows // (BLOCK // group))
        _function(f"xent_small_{suffix}", "softmax_xent.cu")(
            (blocks,), (BLOCK,), common + tail(blocks) + (np.int32(group),))
    elif path == "row":
        items = _row_items(dtype, cols)
        vec = VEC[dtype] if cols % VEC[dtype] == 0 and _aligned(logits, g, target_rows) else 1
        threads = min(ROW_MAX_THREADS, 32 * -(-cols // (items * 32)))
        _function(f"xent_row_{suffix}_i{items}_v{vec}", "softmax_xent.cu")(
            (rows,), (threads,), common + tail(rows))
    else:
        chunks = -(-cols // (SPLIT_THREADS * SPLIT_ITEMS))
        blocks = rows * chunks
        chunk_stats = cupy.empty(4 * blocks, dtype)
        label_logits = cupy.empty(rows, dtype)
        _function(f"xent_partial_{suffix}", "softmax_xent.cu")(
            (blocks,), (SPLIT_THREADS,),
            (logits, _ptr(labels), labels_64, _ptr(target_rows), np.int64(rows), np.int64(cols),
             np.int64(chunks), ignored, has_ignore, chunk_stats, label_logits))
        _function(f"xent_finish_{suffix}", "softmax_xent.cu")(
            (blocks,), (SPLIT_THREADS,),
            common + tail(blocks) + (np.int64(chunks), chunk_stats, label_logits))
    return (mean if mean is not None else loss_rows), g


def sgd_update(p, g, velocity, lr, momentum, weight_decay, nesterov, first) -> None:
    """One parameter's ``torch.optim.SGD`` step in one fused elementwise kernel (see
    gpubp.optim.SGD): p and velocity (None without momentum) are updated in place."""
    dtype = p.dtype.type
    if velocity is None:
        _plain_sgd()(g, dtype(lr), dtype(weight_decay), p)
    else:
        _momentum_sgd()(g, dtype(lr), dtype(momentum), dtype(weight_decay), bool(nesterov),
                        bool(first), p, velocity)


@functools.lru_cache(maxsize=1)
def _plain_sgd():
    import cupy

    return cupy.ElementwiseKernel("T g, T lr, T weight_decay", "T p",
                                  "p -= lr * (g + weight_decay * p)", "gpubp_sgd")


@functools.lru_cache(maxsize=1)
def _momentum_sgd():
    import cupy

    return cupy.ElementwiseKernel(
        "T g, T lr, T momentum, T weight_decay, bool nesterov, bool first", "T p, T v",
        """
        const T d = g + weight_decay * p;
        v = first ? d : momentum * v + d;
        p -= lr * (nesterov ? d + momentum * v : v);
        """, "gpubp_sgd_momentum")


def raise_on_bad_labels() -> None:
    """Raise DataError if a kernel saw a label outside [0, C) since the last call (syncs)."""
    flag = _state()[0]
    if int(flag[0]):
        flag.fill(0)
        raise DataError("targets: a label outside [0, C) reached softmax_cross_entropy; "
                        "its rows got a NaN loss and gradient")


def xent_path(dtype, cols: int) -> str:
    """The softmax_cross_entropy kernels for C = ``cols``: "small" (C ≤ 256, many rows per
    block), "row" (a block per row, in registers) or "split" (two launches)."""
    if cols <= SMALL_MAX_COLS:
        return "small"
    return "row" if _row_items(np.dtype(dtype).type, cols) is not None else "split"


def _row_items(dtype, cols):
    for items in ROW_ITEMS[dtype]:
        if cols <= items * ROW_MAX_THREADS:
            return items
    return None


def _grid_stride_blocks(n_threads: int) -> int:
    return min(-(-n_threads // BLOCK), 32 * _state()[2])


def _contiguous(a, name):
    import cupy

    if not isinstance(a, cupy.ndarray):
        raise TypeError(f"{name}: expected a CuPy array, got {type(a).__name__}")
    return cupy.ascontiguousarray(a)


def _output(out, like, name):
    import cupy

    if out is None:
        return cupy.empty_like(like)
    if out.shape != like.shape or out.dtype != like.dtype or not out.flags.c_contiguous:
        raise ValueError(f"{name}: expected a contiguous array of shape {like.shape} and dtype "
                         f"{like.dtype}, got {out.shape} {out.dtype}")
    return out

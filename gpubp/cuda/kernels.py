"""Launch wrappers for gpubp's CUDA kernels (``kernels/*.cu``) on CuPy arrays.

Each op has the signature of its reference in :mod:`gpubp.ops` and computes the same
result; keyword-only extras say where the outputs and the scratch live. Given its outputs
and a :class:`KernelScratch`, a call allocates nothing from CuPy's pool once every
scratch buffer has grown to its shape (one warm-up call), and it never synchronizes:
errors found on the device (a label outside [0, C), a gather index out of range) set a
flag that :func:`check_bad_labels` reads at the epoch's end.

One training step of an L-layer network (weights W^1..W^L) is 2L + 1 launches of these
kernels, plus cuBLAS's 3L − 1 GEMMs (L forward, L weight gradients, L − 1 deltas):

    gather_rows                                    1   the batch from the epoch's order
    bias_sigmoid                               L − 1   a^l = σ(z^l + b^l), each hidden layer
    bias_softmax_cross_entropy                     1   δ^L, db^L and the loss sum (C ≤ 256)
    sigmoid_backward(..., bias_grad=db)        L − 1   δ^l and db^l, each hidden layer
    multi_sgd                                      1   every parameter, and the offset
    (784-800-10: 5 launches; 784-1024-1024-10: 7)

For C > 256 the cross-entropy adds a column_sum launch for db^L, and a first pass
(xent_partial) beyond C = 32,768 in float32 (8,192 in float64). :func:`record_launches`
lists the launches a block of code makes, e.g. to count a step's.

Tests run these wrappers on a CPU emulation of the kernels by replacing :func:`_function`
(and :func:`_sm_count`); every launch goes through :func:`launch`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import numpy as np

from gpubp import ops
from gpubp.cuda.compile import GATHER_UNIT_BYTES, ROW_ITEMS, SUFFIX, VEC, load_function
from gpubp.errors import DataError

BLOCK = 256  # threads per block for the elementwise, small-row and gather kernels
SMALL_MAX_COLS = 8 * 32  # xent_small: up to 8 columns per lane, 32 lanes per row
ROW_MAX_THREADS = 1024
SPLIT_THREADS, SPLIT_ITEMS = 256, 16  # must match SPLIT_ITEMS in softmax_xent.cu
COLUMN_BLOCK = (32, 8)  # sigmoid_backward_dbias and column_sum: 32 vectors × 8 row walkers
COLUMN_ROWS_PER_WALKER = 4  # each walker's unrolled step (ROW_UNROLL in sigmoid.cu)
SGD_CHUNK_VECTORS = 4  # vectors per thread per multi_sgd block
NULL = np.uint64(0)


# ---- launching, and the seam tests replace -------------------------------------------------

class Launch(NamedTuple):
    """One kernel launch: the entry point's name, the grid and the block."""
    name: str
    grid: tuple
    block: tuple


_recorders: list[list[Launch]] = []


@contextlib.contextmanager
def record_launches():
    """Record every kernel launch made through this module inside the ``with`` block::

        with record_launches() as launches:
            step()
        assert len(launches) == 2 * L + 1
    """
    launches: list[Launch] = []
    _recorders.append(launches)
    try:
        yield launches
    finally:
        _recorders.remove(launches)


def launch(source: str, name: str, grid: tuple, block: tuple, args: tuple) -> None:
    """Launch kernel ``name`` of ``source`` on the current device and stream."""
    for launches in _recorders:
        launches.append(Launch(name, tuple(grid), tuple(block)))
    _function(name, source)(grid, block, args)


def _function(name: str, source: str):
    import cupy

    return load_function(cupy.cuda.runtime.getDevice(), source, name)


def _sm_count() -> int:
    import cupy

    return _device_sm_count(cupy.cuda.runtime.getDevice())


@functools.lru_cache(maxsize=None)
def _device_sm_count(device_id: int) -> int:
    import cupy

    return cupy.cuda.Device(device_id).attributes["MultiProcessorCount"]


def grid_stride_blocks(n_threads: int) -> int:
    """Blocks of BLOCK threads for a grid-stride loop over ``n_threads`` items (≥ 1)."""
    return max(1, min(-(-n_threads // BLOCK), 32 * _sm_count()))


def vector_width(dtype, n: int, *arrays) -> int:
    """VEC (elements per 16-byte access) where n is a multiple of it and every array is
    16-byte aligned, else 1."""
    vec = VEC[np.dtype(dtype).type]
    return vec if n % vec == 0 and _aligned(*arrays) else 1


def pointer(a):
    """A kernel argument for an optional array: the array, or a null pointer."""
    return NULL if a is None else a


def _aligned(*arrays) -> bool:
    return all(a is None or a.data.ptr % 16 == 0 for a in arrays)


# ---- scratch ---------------------------------------------------------------------------------

class KernelScratch:
    """The device scratch of one stream of kernel launches (one step workspace).

    Kernels that finish a reduction in their last block (the cross-entropy's mean, loss
    sum and bias gradient, the bias-gradient column sums, the multi-tensor SGD) count
    blocks on tickets here and leave per-block partial sums here; the cross-entropy and
    the gather set flags here. Launches on one stream may share a scratch; launches that
    can run at the same time (two streams, two graphs) each need their own.

    Attributes (device arrays on the device current at construction):
        flags: int32 (2,): [0] a label outside [0, C) was seen, [1] a gather index was
            out of range. Read and reset by :func:`check_bad_labels`.
        loss_sum: float64 (2,): a loss accumulator, (Σ row losses, Σ counted rows), for
            :func:`bias_softmax_cross_entropy`; read and reset by :meth:`take_loss`.

    Partial-sum buffers and tickets grow to the largest launch seen and are then reused:
    after one call of each shape, no wrapper allocates. Capture a CUDA graph after such a
    warm-up. A buffer outgrown later is kept (not freed), so a graph captured with it stays
    valid; growth doubles, so few are kept.
    """

    def __init__(self):
        import cupy

        self.device_id = cupy.cuda.runtime.getDevice()
        self.flags = cupy.zeros(2, np.int32)
        self.bad_label, self.bad_index = self.flags[0:1], self.flags[1:2]
        self.loss_sum = cupy.zeros(2, np.float64)
        self._buffers: dict = {}
        self._outgrown: list = []  # what captured graphs may still use

    def buffer(self, name: str, size: int, dtype):
        """A zero-initialized device buffer of at least ``size`` elements, kept under
        ``name`` (tickets must start at 0: the kernels leave them at 0)."""
        dtype = np.dtype(dtype)
        held = self._buffers.get(name)
        if held is None or held.size < size or held.dtype != dtype:
            import cupy

            grown = size if held is None or held.dtype != dtype else max(size, 2 * held.size)
            if held is not None:
                self._outgrown.append(held)
            held = self._buffers[name] = cupy.zeros(max(grown, 1), dtype)
        return held

    def take_loss(self) -> tuple[float, float]:
        """(Σ row losses, Σ counted rows) accumulated in :attr:`loss_sum` since the last
        call, and reset it to zero. A blocking copy on the current stream: synchronize the
        stream that ran the launches first when it is another (a non-blocking one)."""
        total, count = (float(v) for v in self.loss_sum.get())
        self.loss_sum.fill(0)
        return total, count


_default_scratch: dict[int, KernelScratch] = {}


def default_scratch() -> KernelScratch:
    """The scratch of calls given none (the standalone ops API): one per device, shared by
    every such call, so those calls must not run on two streams at once."""
    import cupy

    device_id = cupy.cuda.runtime.getDevice()
    if device_id not in _default_scratch:
        _default_scratch[device_id] = KernelScratch()
    return _default_scratch[device_id]


def check_bad_labels(scratch: KernelScratch | None = None, *, where: str = "") -> None:
    """Raise DataError if a kernel using ``scratch`` (default: :func:`default_scratch`) saw
    a label outside [0, C) or a gather index out of range since the last call; the flags are
    left at 0. ``where`` ends the message (e.g. "in epoch 3"). A blocking read, as
    :meth:`KernelScratch.take_loss`: call it where the host waits anyway (an epoch's end)."""
    scratch = scratch if scratch is not None else default_scratch()
    bad_label, bad_index = (int(v) for v in scratch.flags.get())
    if bad_label or bad_index:
        scratch.flags.fill(0)
    suffix = f" ({where})" if where else ""
    if bad_label:
        raise DataError("targets: a label outside [0, C) that is not ignore_index reached the "
                        f"cross-entropy kernel; its rows got a NaN loss and gradient{suffix}")
    if bad_index:
        raise DataError("order: gather_rows met a position past the order array or an index "
                        "outside [0, N); those rows were filled with NaN features and label -1"
                        + suffix)


# ---- the hidden layers ---------------------------------------------------------------------

def bias_sigmoid(z, bias, out=None):
    """a = σ(z + b) on the GPU; see :func:`gpubp.ops.bias_sigmoid`. One launch, no scratch."""
    z, bias = _contiguous(z, "z"), _contiguous(bias, "bias")
    rows, cols = z.shape
    if bias.shape != (cols,) or bias.dtype != z.dtype:
        raise ValueError(f"bias: expected shape ({cols},) and dtype {z.dtype}, got {bias.shape} "
                         f"and {bias.dtype}")
    out = _output(out, z, "out")
    vec = vector_width(z.dtype, cols, z, out)
    if z.size:
        launch("sigmoid.cu", f"bias_sigmoid_{SUFFIX[z.dtype.type]}_v{vec}",
               (grid_stride_blocks(z.size // vec),), (BLOCK,),
               (z, bias, out, np.int64(rows), np.int64(cols)))
    return out


def sigmoid_backward(grad_a, a, out=None, bias_grad=None, *, scratch=None):
    """δ = g ⊙ a ⊙ (1 − a) on the GPU, with dL/db = Σ_rows δ into ``bias_grad`` when given;
    see :func:`gpubp.ops.sigmoid_backward`. One launch either way.

    ``out`` may be ``grad_a`` (in place) but must not overlap ``a``. With ``bias_grad``,
    ``scratch`` (default :func:`default_scratch`) holds C partial sums per row slab (at
    most about 4 slabs per SM) and a ticket per 32·VEC columns.
    """
    a, grad_a = _contiguous(a, "a"), _contiguous(grad_a, "grad_a")
    if grad_a.shape != a.shape or grad_a.dtype != a.dtype:
        raise ValueError(f"grad_a: expected shape {a.shape} and dtype {a.dtype}, got "
                         f"{grad_a.shape} and {grad_a.dtype}")
    out = _output(out, a, "out")
    if _overlap(out, a):
        raise ValueError("out: must not overlap a (it may be grad_a)")
    suffix = SUFFIX[a.dtype.type]
    if bias_grad is None:
        vec = vector_width(a.dtype, a.size, a, grad_a, out)
        if a.size:
            launch("sigmoid.cu", f"sigmoid_backward_{suffix}_v{vec}",
                   (grid_stride_blocks(a.size // vec),), (BLOCK,),
                   (grad_a, a, out, np.int64(a.size)))
        return out
    if a.ndim != 2:
        raise ValueError(f"a: expected (B, C) with bias_grad, got shape {a.shape}")
    _check_vector(bias_grad, a.shape[1], a.dtype, "bias_grad")
    rows, cols = a.shape
    vec = vector_width(a.dtype, cols, a, grad_a, out, bias_grad)
    _column_sums(f"sigmoid_backward_dbias_{suffix}_v{vec}", (grad_a, a, out), rows, cols, vec,
                 bias_grad, scratch)
    return out


def _column_sums(name, arrays, rows, cols, vec, sums, scratch):
    """Launch ``name`` (sigmoid_backward_dbias or column_sum) on a (column tiles, row slabs)
    grid: about 4 blocks per SM, each slab a whole number of the walkers' unrolled steps."""
    scratch = scratch if scratch is not None else default_scratch()
    tiles = -(-cols // (COLUMN_BLOCK[0] * vec))
    rows_per_step = COLUMN_BLOCK[1] * COLUMN_ROWS_PER_WALKER
    slabs = max(1, min(-(-rows // rows_per_step), -(-4 * _sm_count() // tiles)))
    rows_per_slab = max(1, -(-rows // slabs))
    rows_per_slab = -(-rows_per_slab // rows_per_step) * rows_per_step
    slabs = max(1, -(-rows // rows_per_slab))
    partials = scratch.buffer("column_partials", slabs * cols, sums.dtype)
    tickets = scratch.buffer("column_tickets", tiles, np.uint32)
    launch("sigmoid.cu", name, (tiles, slabs), COLUMN_BLOCK,
           (*arrays, partials, tickets, sums, np.int64(rows), np.int64(cols),
            np.int64(rows_per_slab)))


# ---- the output layer ----------------------------------------------------------------------

def softmax_cross_entropy(logits, targets, scale=1.0, *, ignore_index=None, reduction="none",
                          out=None, grad=True, loss_out=None, scratch=None):
    """Fused softmax + cross-entropy on the GPU; see :func:`gpubp.ops.softmax_cross_entropy`.

    One launch for C ≤ 1024·32 (float32; 1024·8 for float64), two beyond. ``loss_out``:
    the loss's buffer ((B,) for reduction "none", 0-d for "mean"), allocated when None.
    ``scratch`` (default :func:`default_scratch`): the bad-label flag, the mean's ticket and
    partials. A label outside [0, C) that is not ``ignore_index`` is not raised here, which
    would cost a host sync: its row gets a NaN loss and gradient, and the scratch's flag is
    set for :func:`check_bad_labels`.
    """
    import cupy

    ops.check_cross_entropy_args(logits, targets, ignore_index, reduction, out)
    logits = _contiguous(logits, "logits")
    rows, _ = logits.shape
    shape = (rows,) if reduction == "none" else ()
    if loss_out is None:
        loss_out = cupy.empty(shape, logits.dtype)
    elif loss_out.shape != shape or loss_out.dtype != logits.dtype:
        raise ValueError(f"loss_out: expected shape {shape} and dtype {logits.dtype}, got "
                         f"{loss_out.shape} and {loss_out.dtype}")
    g = _output(out, logits, "out") if grad else None
    _xent(logits, None, targets, scale, ignore_index, g,
          loss_rows=loss_out if reduction == "none" else None,
          mean=loss_out if reduction == "mean" else None,
          bias_grad=None, loss_sum=None, scratch=scratch)
    return loss_out, g


def bias_softmax_cross_entropy(z, bias, targets, scale=1.0, *, ignore_index=None, out=None,
                               bias_grad=None, loss_sum=None, scratch=None):
    """The output layer's step on the GPU: softmax cross-entropy of z + b with δ^L, db^L and
    the loss sum; see :func:`gpubp.ops.bias_softmax_cross_entropy`. Returns δ^L.

    One launch for C ≤ 256 (the bias add, the loss sum and db^L all in it); beyond, a
    column_sum launch adds db^L, and beyond 1024·32 columns (float32) a first pass too.
    ``scratch`` (default :func:`default_scratch`): the bad-label flag, a ticket, and per
    block (C ≤ 256: per 256/group rows; else per row) a loss pair and C partial sums.
    """
    ops.check_cross_entropy_args(z, targets, ignore_index, "none", out)
    z = _contiguous(z, "z")
    rows, cols = z.shape
    _check_vector(bias, cols, z.dtype, "bias")
    if bias_grad is not None:
        _check_vector(bias_grad, cols, z.dtype, "bias_grad")
    if loss_sum is not None and (loss_sum.shape != (2,) or loss_sum.dtype != np.float64
                                 or not loss_sum.flags.c_contiguous):
        raise ValueError(f"loss_sum: expected a contiguous float64 array of shape (2,), got "
                         f"{loss_sum.shape} {loss_sum.dtype}")
    g = _output(out, z, "out")
    _xent(z, bias, targets, scale, ignore_index, g, loss_rows=None, mean=None,
          bias_grad=bias_grad, loss_sum=loss_sum, scratch=scratch)
    return g


def _xent(logits, bias, targets, scale, ignore_index, g, *, loss_rows, mean, bias_grad,
          loss_sum, scratch):
    """Launch the cross-entropy kernels of path :func:`xent_path` with these outputs."""
    dtype = logits.dtype.type
    rows, cols = logits.shape
    if rows == 0:
        for zero in (mean, bias_grad):
            if zero is not None:
                zero.fill(0)
        return
    scratch = scratch if scratch is not None else default_scratch()
    if targets.ndim == 1:
        labels = targets if targets.dtype in (np.int32, np.int64) else targets.astype(np.int64)
        labels, target_rows = _contiguous(labels, "targets"), None
    else:
        labels, target_rows = None, _contiguous(targets.astype(dtype, copy=False), "targets")
    suffix = SUFFIX[dtype]
    reduces = mean is not None or loss_sum is not None
    ticket = scratch.buffer("xent_ticket", 1, np.uint32)

    def args(loss_slots):
        partials = scratch.buffer("xent_loss_partials", 2 * loss_slots, np.float64)
        return (logits, pointer(bias), pointer(labels),
                np.int32(labels is not None and labels.dtype == np.int64), pointer(target_rows),
                pointer(g), pointer(loss_rows), np.int64(rows), np.int64(cols), dtype(scale),
                np.int64(0 if ignore_index is None else ignore_index),
                np.int32(ignore_index is not None), partials if reduces else NULL, ticket,
                scratch.bad_label, pointer(mean), pointer(loss_sum))

    path = xent_path(dtype, cols)
    if path == "small":
        group = 1 << max(0, (-(-cols // 8) - 1).bit_length())
        blocks = -(-rows // (BLOCK // group))
        bias_partials = (scratch.buffer("xent_bias_partials", blocks * cols, dtype)
                         if bias_grad is not None else None)
        launch("softmax_xent.cu", f"xent_small_{suffix}", (blocks,), (BLOCK,),
               args(blocks) + (pointer(bias_grad), pointer(bias_partials), np.int32(group)))
        return
    if path == "row":
        items = _row_items(dtype, cols)
        vec = vector_width(dtype, cols, logits, g, target_rows, bias)
        threads = min(ROW_MAX_THREADS, 32 * -(-cols // (items * 32)))
        kind = "labels" if labels is not None else "dense"
        launch("softmax_xent.cu", f"xent_row_{kind}_{suffix}_i{items}_v{vec}", (rows,),
               (threads,), args(rows))
    else:
        chunks = -(-cols // (SPLIT_THREADS * SPLIT_ITEMS))
        blocks = rows * chunks
        chunk_stats = scratch.buffer("xent_chunk_stats", 4 * blocks, dtype)
        label_logits = scratch.buffer("xent_label_logits", rows, dtype)
        common = args(rows) + (np.int64(chunks), chunk_stats, label_logits)
        launch("softmax_xent.cu", f"xent_partial_{suffix}", (blocks,), (SPLIT_THREADS,), common)
        launch("softmax_xent.cu", f"xent_finish_{suffix}", (blocks,), (SPLIT_THREADS,), common)
    if bias_grad is not None:
        vec = vector_width(dtype, cols, g, bias_grad)
        _column_sums(f"column_sum_{suffix}_v{vec}", (g,), rows, cols, vec, bias_grad, scratch)


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


# ---- the batch -------------------------------------------------------------------------------

def gather_rows(X, order, offset, out, targets=None, targets_out=None, *, scratch=None):
    """out[i] = X[order[offset + i]] for i < B = out.shape[0], and the targets likewise, in
    one launch; see :func:`gpubp.ops.gather_rows`. Returns (out, targets_out).

    X: (N, n) float, contiguous; order: int64 (M,), the epoch's permutation; offset: a
    device int64 array of one element (read by the kernel, so a captured graph replays
    it; :func:`multi_sgd` advances it); out: (B, n) like X; targets: int32/int64 labels
    (N,) or float rows (N, C), and targets_out (B,) or (B, C) like them. ``scratch``
    (default :func:`default_scratch`): its bad-index flag, set for a position past the
    order array or an index outside [0, N) (whose rows are filled with NaN, label −1).
    """
    X, order = _contiguous(X, "X"), _contiguous(order, "order")
    if X.ndim != 2:
        raise ValueError(f"X: expected (N, n), got shape {X.shape}")
    if order.ndim != 1 or order.dtype != np.int64:
        raise TypeError(f"order: expected int64 (M,), got {order.dtype} {order.shape}")
    if offset.size != 1 or offset.dtype != np.int64:
        raise TypeError(f"offset: expected a device int64 array of one element, got "
                        f"{offset.dtype} {offset.shape}")
    if out.ndim != 2 or out.shape[1] != X.shape[1] or out.dtype != X.dtype \
            or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a contiguous (B, {X.shape[1]}) {X.dtype} array, got "
                         f"{out.shape} {out.dtype}")
    rows = out.shape[0]
    target_words = 0
    if (targets is None) != (targets_out is None):
        raise ValueError("targets, targets_out: give both or neither")
    if targets is not None:
        targets = _contiguous(targets, "targets")
        if targets.shape[0] != X.shape[0] or targets_out.shape != (rows, *targets.shape[1:]) \
                or targets_out.dtype != targets.dtype or not targets_out.flags.c_contiguous:
            raise ValueError(f"targets_out: expected a contiguous {(rows, *targets.shape[1:])} "
                             f"{targets.dtype} array for targets {targets.shape}, got "
                             f"{targets_out.shape} {targets_out.dtype}")
        row_bytes = targets.itemsize * (targets.shape[1] if targets.ndim == 2 else 1)
        if row_bytes % 4:
            raise TypeError(f"targets: rows of {row_bytes} bytes; gather_rows moves 4-byte words")
        target_words = row_bytes // 4
    row_bytes = X.shape[1] * X.itemsize
    unit = next((u for u in GATHER_UNIT_BYTES
                 if row_bytes % u == 0 and X.data.ptr % u == 0 and out.data.ptr % u == 0), None)
    if unit is None:
        raise TypeError(f"X: rows of {row_bytes} bytes; gather_rows moves 4-byte words")
    if rows == 0:
        return out, targets_out
    scratch = scratch if scratch is not None else default_scratch()
    blocks = max(1, min(-(-rows // (BLOCK // 32)), 32 * _sm_count()))
    launch("gather.cu", f"gather_rows_b{unit}", (blocks,), (BLOCK,),
           (X, out, np.int64(row_bytes // unit), order, np.int64(order.size), offset,
            np.int64(rows), np.int64(X.shape[0]), pointer(targets), pointer(targets_out),
            np.int64(target_words), scratch.bad_index))
    return out, targets_out


# ---- the update ----------------------------------------------------------------------------

class SGDTable:
    """The device tables of a multi-tensor SGD launch over fixed buffers (built once per
    workspace: they hold addresses, so the arrays must live as long and never move).

    params, grads: matching lists of contiguous CuPy arrays of one float dtype; velocities:
    the momentum buffers (same shapes) or None without momentum. Attributes: ``table``
    (int64 (n, 4): p, g, v addresses and size), ``chunks`` (int64 (blocks, 2): tensor and
    first element of each block's chunk of ``chunk_elems`` elements), ``dtype``,
    ``has_momentum``.
    """

    def __init__(self, params, grads, velocities=None):
        import cupy

        if len(params) != len(grads) or (velocities is not None
                                         and len(velocities) != len(params)):
            raise ValueError("params, grads, velocities: expected lists of one length")
        dtype = params[0].dtype if params else np.dtype(np.float32)
        if dtype.type not in SUFFIX:
            raise TypeError(f"params: expected float32 or float64, got {dtype}")
        vs = velocities if velocities is not None else [None] * len(params)
        for i, (p, g, v) in enumerate(zip(params, grads, vs)):
            for name, a in (("params", p), ("grads", g), ("velocities", v)):
                if a is None:
                    continue
                if a.shape != p.shape or a.dtype != dtype or not a.flags.c_contiguous:
                    raise ValueError(f"{name}[{i}]: expected a contiguous {dtype} array of "
                                     f"shape {p.shape}, got {a.shape} {a.dtype}")
        self.dtype = dtype
        self.has_momentum = velocities is not None
        self.chunk_elems = BLOCK * VEC[dtype.type] * SGD_CHUNK_VECTORS
        table = np.array([[p.data.ptr, g.data.ptr, 0 if v is None else v.data.ptr, p.size]
                          for p, g, v in zip(params, grads, vs)], np.int64).reshape(-1, 4)
        chunks = np.array([(t, start) for t, p in enumerate(params)
                           for start in range(0, p.size, self.chunk_elems)],
                          np.int64).reshape(-1, 2)
        self.table, self.chunks = cupy.asarray(table), cupy.asarray(chunks)
        self.n_chunks = len(chunks)
        self._arrays = (list(params), list(grads), list(vs))  # the addresses stay valid


def multi_sgd(table: SGDTable, lr, first_step=None, *, momentum=0.0, nesterov=False,
              weight_decay=0.0, offset=None, batch=0, scratch=None) -> None:
    """Every parameter of ``table`` updated by :class:`gpubp.optim.SGD`'s rule in one launch.

    lr: a device float64 array of one element (written by the host, e.g. once per epoch);
    first_step: a device int32 array of one element, or None: nonzero makes this step the
    first (v = d), and the launch clears it; offset: the gather's device int64 offset,
    advanced by ``batch`` in the same launch (None: left alone). momentum, nesterov,
    weight_decay: the optimizer's constants. ``scratch`` (default :func:`default_scratch`):
    one ticket, for the last block's flag and offset writes.
    """
    if momentum and not table.has_momentum:
        raise ValueError("momentum: the table was built without velocities")
    if nesterov and not momentum:
        raise ValueError("nesterov: needs momentum > 0")
    for name, a, dtype in (("lr", lr, np.float64), ("first_step", first_step, np.int32),
                           ("offset", offset, np.int64)):
        if a is not None and (a.size != 1 or a.dtype != dtype):
            raise TypeError(f"{name}: expected a device {np.dtype(dtype)} array of one element, "
                            f"got {a.dtype} {a.shape}")
    if table.n_chunks == 0:
        return
    scratch = scratch if scratch is not None else default_scratch()
    dtype = table.dtype.type
    launch("sgd.cu", f"multi_sgd_{SUFFIX[dtype]}", (table.n_chunks,), (BLOCK,),
           (table.table, table.chunks, np.int64(table.chunk_elems), lr,
            dtype(momentum if table.has_momentum else 0.0), dtype(weight_decay),
            np.int32(bool(nesterov)), pointer(first_step), pointer(offset), np.int64(batch),
            scratch.buffer("sgd_ticket", 1, np.uint32)))


# ---- argument checks -------------------------------------------------------------------------

def _contiguous(a, name):
    import cupy

    if not isinstance(a, cupy.ndarray):
        raise TypeError(f"{name}: expected a CuPy array, got {type(a).__name__}")
    return a if a.flags.c_contiguous else cupy.ascontiguousarray(a)


def _output(out, like, name):
    import cupy

    if out is None:
        return cupy.empty_like(like)
    if out.shape != like.shape or out.dtype != like.dtype or not out.flags.c_contiguous:
        raise ValueError(f"{name}: expected a contiguous array of shape {like.shape} and dtype "
                         f"{like.dtype}, got {out.shape} {out.dtype}")
    return out


def _check_vector(v, n, dtype, name):
    if v.shape != (n,) or v.dtype != dtype or not v.flags.c_contiguous:
        raise ValueError(f"{name}: expected a contiguous array of shape ({n},) and dtype "
                         f"{dtype}, got {v.shape} {v.dtype}")


def _overlap(x, y) -> bool:
    """Whether two contiguous arrays share any byte."""
    return (x.data.ptr < y.data.ptr + y.nbytes and y.data.ptr < x.data.ptr + x.nbytes
            and x.nbytes > 0 and y.nbytes > 0)

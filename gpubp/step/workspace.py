"""Every buffer one training step touches, for one batch size, allocated once.

A step reads the gathered batch and its targets, writes each hidden layer's activation
a^l and delta, the logits z^L (overwritten by δ^L = dL/dz^L), and each layer's gradients.
After the first step with a workspace, a step allocates nothing.

On NumPy the hidden layers' buffers are column-major by default: a GEMM writing a
column-major (B, n) product runs as (n, B) = W · aᵀ, which BLAS does faster on these
shapes (see docs/benchmarks.md). The bf16 step asks for row-major ones, the only layout
into which oneDNN fuses the bias and the sigmoid. The CUDA kernels take row-major rows,
so CuPy gets C order.
"""

from __future__ import annotations

import numpy as np

from gpubp.cpu_kernels import BLOCK_VALUES


class Workspace:
    """The buffers of a step of ``batch`` rows of ``net`` (shapes for B = ``batch``):

    X: (B, n_in), the gathered rows. targets: (B,) int64 labels or (B, C) rows.
    activations: a^1..a^{L−1}, (B, n_l). deltas: dL/da^l, then δ^l in place, (B, n_l).
    logits: z^L, then δ^L, (B, C). grads: [(dW^l, db^l)], shaped like the parameters,
    views of flat_grads (all gradients end to end, in parameter order).
    NumPy only, the scratch of the fused loss and of the sigmoid backward: row_stats
    (4, B), label_at (B,) int64 flat indices of z[i, y_i] (row_offsets + y), rows_scratch
    (B, C), and slope (a block's σ'). ``order``: the hidden layers' layout, "C" or "F"
    (default: "C" on CuPy, "F" on NumPy).
    """

    def __init__(self, net, batch: int, target_shape: tuple, target_dtype, order=None):
        xp, dtype, sizes = net.backend.xp, net.dtype, net.layer_sizes
        if order is None:
            order = "C" if net.backend.is_gpu else "F"
        self.batch = batch
        self.X = xp.empty((batch, sizes[0]), dtype)
        self.targets = xp.empty((batch, *target_shape), target_dtype)
        self.activations = [xp.empty((batch, n), dtype, order=order) for n in sizes[1:-1]]
        self.deltas = [xp.empty((batch, n), dtype, order=order) for n in sizes[1:-1]]
        self.logits = xp.empty((batch, sizes[-1]), dtype)
        # Every gradient is a view of one flat buffer, so that data-parallel training
        # sums them across processes in one allreduce.
        params = net.parameters()
        self.flat_grads = xp.empty(sum(p.size for p in params), dtype)
        views, offset = [], 0
        for p in params:
            views.append(self.flat_grads[offset:offset + p.size].reshape(p.shape))
            offset += p.size
        self.grads = list(zip(views[0::2], views[1::2]))
        if not net.backend.is_gpu:
            self.row_stats = np.empty((4, batch), dtype)
            self.label_at = np.empty(batch, np.int64)
            self.row_offsets = np.arange(batch, dtype=np.int64) * sizes[-1]
            self.rows_scratch = np.empty((batch, sizes[-1]), dtype)
            widest = max(sizes[1:-1], default=1)
            self.slope = np.empty(min(widest * batch, max(BLOCK_VALUES, batch, widest)), dtype)


class Workspaces:
    """A stepper's workspaces by batch size (the full batch, the last partial one, a
    rank's share), each made on first use and kept."""

    def __init__(self, net, targets, order=None):
        self.net, self.target_shape, self.target_dtype = net, targets.shape[1:], targets.dtype
        self.order = order
        self._made: dict[int, Workspace] = {}

    def __call__(self, batch: int) -> Workspace:
        work = self._made.get(batch)
        if work is None:
            work = self._made[batch] = Workspace(self.net, batch, self.target_shape,
                                                 self.target_dtype, self.order)
        return work

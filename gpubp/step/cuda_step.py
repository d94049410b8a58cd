"""The training step on CuPy, top to bottom, as a fixed sequence of launches:

    gather → forward → fused loss and gradient (EqA1.1) → backward (EqA1, EqA2.1) → update

gpubp's kernels (:mod:`gpubp.cuda.kernels`) and cuBLAS's GEMMs (:mod:`gpubp.cuda.cublas`,
a handle of our own) run on one non-blocking stream over the buffers of a
:class:`~gpubp.step.workspace.Workspace`. Nothing the host writes changes between steps:
the gather reads the epoch's order at an offset kept on the device, the update reads the
learning rate from device memory and advances the offset, and the loss accumulates on the
device. So a step is the same launches every time, and the stepper captures it once as a
CUDA graph and replays it: one host call per step instead of a few dozen.

Before it trusts a graph, the stepper runs one captured step and one eager step from the
same state and compares them; if they differ (or capture fails) it warns once and stays
eager. ``GPUBP_CUDA_GRAPHS=0`` or ``cuda_graphs=False`` keeps it eager throughout.

Launches per step of an L-layer network: 2L + 1 kernels (gather, L − 1 bias_sigmoid, the
fused cross-entropy, L − 1 sigmoid_backward with db, the multi-tensor SGD) and 3L − 1
GEMMs (L forward, L weight gradients, L − 1 deltas).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from gpubp.cuda import kernels
from gpubp.cuda.cublas import Cublas
from gpubp.distributed import get_communicator
from gpubp.optim import SGD
from gpubp.step.workspace import Workspace, Workspaces

GRAPHS_ENV = "GPUBP_CUDA_GRAPHS"
SELF_CHECK_RTOL = {np.float32: 1e-5, np.float64: 1e-12}


class CudaGraphWarning(UserWarning):
    """CUDA graphs were turned off for this run; the message says why."""


def graphs_enabled(cuda_graphs) -> bool:
    """``cuda_graphs`` (None: $GPUBP_CUDA_GRAPHS, on unless "0") as a bool."""
    if cuda_graphs is None:
        return os.environ.get(GRAPHS_ENV, "1") != "0"
    if not isinstance(cuda_graphs, bool):
        raise TypeError(f"cuda_graphs: expected a bool or None, got {cuda_graphs!r}")
    return cuda_graphs


class CudaStepper:
    """Runs an epoch's steps of ``net`` (on CuPy) by batches of ``batch_size`` rows.

    X: (N, n_in), targets: (N,) int64 labels or (N, C) rows, prepared device arrays.
    ``loss_sum`` (a device float64 scalar) accumulates Σ_rows loss over the epoch's steps
    and ``first_loss`` holds the mean loss of the epoch's first step. precision "tf32"
    runs the GEMMs on TF32 tensor cores (float32 networks).
    """

    def __init__(self, net, optimizer, X, targets, batch_size: int, comm=None,
                 cuda_graphs=None, precision: str = "fp32"):
        import cupy

        self.cupy = cupy
        self.net, self.optimizer = net, optimizer
        self.X, self.targets, self.batch_size = X, targets, batch_size
        self.comm = comm if comm is not None else get_communicator("single")
        self.params = net.parameters()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.cublas = Cublas(self.stream, tf32=precision == "tf32")
        self.scratch = kernels.KernelScratch()
        # What the host writes once an epoch, and the device reads every step.
        self.order = cupy.empty(X.shape[0], np.int64)
        self.offset = cupy.zeros(1, np.int64)
        self.lr = cupy.zeros(1, np.float64)
        self.first_step = cupy.zeros(1, np.int32)
        self.use_graphs = graphs_enabled(cuda_graphs) and self._sgd() is not None
        if self.comm.size > 1:
            self.comm.prepare_device()
            self.use_graphs = self.use_graphs and self.comm.capturable
        self.loss_sum = _StreamScalar(self.scratch.loss_sum[0:1].reshape(()), self.stream)
        self.first_loss = _StreamScalar(cupy.zeros((), np.float64), self.stream)
        self._workspace = Workspaces(net, targets)
        self._tables: dict[tuple, object] = {}
        self._graphs: dict[int, object] = {}
        self._velocity_id = None  # the momentum buffers the tables and graphs point at
        self._offset = None  # what the device offset holds before the next step, if known
        self._epoch = None  # the epoch running (0-based), for error messages

    # ---- an epoch ---------------------------------------------------------------------

    def begin_epoch(self, order: np.ndarray, lr: float, loss_sum: float = 0.0,
                    first_loss: float | None = None, epoch: int | None = None) -> None:
        """Copy the epoch's row order (N,) and learning rate to the device; ``loss_sum``
        and ``first_loss`` carry on a resumed epoch's; ``epoch`` (0-based) names it in
        errors."""
        self._epoch = epoch
        # The host changed parameters on the default stream (a resume, a restored best
        # state); this stream does not wait for it by itself.
        self.cupy.cuda.Device().synchronize()
        with self.stream:
            self.order.set(np.ascontiguousarray(order, np.int64), stream=self.stream)
            self.lr.fill(lr)
            self.scratch.loss_sum.fill(0)
            self.scratch.loss_sum[0] = loss_sum
            self.first_loss.array.fill(0.0 if first_loss is None else first_loss)
        self.optimizer.lr = lr
        self._offset = None

    def finish_epoch(self) -> float:
        """Wait for the epoch's steps; the epoch's Σ_rows loss (over every rank). Raises
        DataError for a label outside [0, C) seen during the epoch."""
        self.stream.synchronize()
        kernels.check_bad_labels(self.scratch, where="in this epoch's training data"
                                 if self._epoch is None else f"in epoch {self._epoch + 1}")
        total, first = float(self.loss_sum), float(self.first_loss)
        if self.comm.size > 1:
            total, first = self.comm.allreduce_scalars([total, first])
            with self.stream:
                self.scratch.loss_sum[0], self.first_loss.array[...] = total, first
        return total

    def step(self, batch: int) -> None:
        """One gradient-descent step on rows ``order[batch·B : (batch+1)·B]`` (this rank's
        share of them when data-parallel)."""
        n, B = self.X.shape[0], self.batch_size
        first = batch * B
        global_rows = min(B, n - first)
        start, stop = self.comm.shard(n, B, batch)
        work = self._workspace(max(stop - start, 1))
        if self._offset != first + start:  # a new or resumed epoch, or a rank's last shard
            with self.stream:
                self.offset.fill(first + start)
        self._offset = first + start + B  # the update advances it by a global batch
        if stop == start:  # no rows here: add nothing to the others' gradients
            with self.stream:
                work.flat_grads.fill(0)
            self._reduce_and_update(work)
        elif self.use_graphs and global_rows == B:
            self._replay(work, global_rows)
        else:
            with self.stream:
                self._launch(work, global_rows)
        if batch == 0:
            with self.stream:
                self.first_loss.array[...] = self.scratch.loss_sum[0] / global_rows

    def close(self) -> None:
        """Release the graphs, then the cuBLAS handle and its workspace (after the stream's
        work is done: graphs captured with them may still be running)."""
        self.stream.synchronize()
        self._graphs.clear()
        self.cublas.close()

    # ---- the launches of one step ----------------------------------------------------

    def _launch(self, work: Workspace, global_rows: int) -> None:
        """Every launch of one step, on the current stream (this stepper's)."""
        net, scratch, mm = self.net, self.scratch, self.cublas.matmul

        kernels.gather_rows(self.X, self.order, self.offset, work.X, self.targets,
                            work.targets, scratch=scratch)

        # Forward: a^l = σ(W^l a^{l−1} + b^l) for hidden layers, then z^L (bias below).
        a = work.X
        for W, b, out in zip(net.weights[:-1], net.biases[:-1], work.activations):
            a = kernels.bias_sigmoid(mm(a, W.T, out), b, out=out)
        logits = mm(a, net.weights[-1].T, work.logits)

        # EqA1.1: δ^L = (P − Y)/B from z^L + b^L, with dL/db^L and the loss sum, in one launch.
        delta = kernels.bias_softmax_cross_entropy(
            logits, net.biases[-1], work.targets, 1.0 / global_rows, out=logits,
            bias_grad=work.grads[-1][1], loss_sum=scratch.loss_sum, scratch=scratch)

        # Backward, last layer first.
        inputs = [work.X] + work.activations  # a^0 .. a^{L−1}
        for l in reversed(range(len(net.weights))):
            dW, _ = work.grads[l]
            mm(delta.T, inputs[l], dW)  # EqA1: dL/dW^l = δ^l (a^{l−1})^T
            if l > 0:
                # EqA2.1: δ^{l−1} = ((W^l)^T δ^l) ⊙ a^{l−1}(1 − a^{l−1}), with dL/db^{l−1}.
                grad_a = mm(delta, net.weights[l], work.deltas[l - 1])
                delta = kernels.sigmoid_backward(grad_a, inputs[l], out=grad_a,
                                                 bias_grad=work.grads[l - 1][1],
                                                 scratch=scratch)
        self._reduce_and_update(work)

    def _reduce_and_update(self, work: Workspace) -> None:
        """Sum the gradients across ranks (data-parallel), then update every parameter in
        one launch, advancing the gather's offset by a global batch."""
        if self.comm.size > 1:
            self.comm.allreduce_sum_(work.flat_grads, stream=self.stream)
        sgd = self._sgd()
        if sgd is None:  # an optimizer of the caller's own: its step, then the offset
            with self.stream:
                self.optimizer.step(self.params, [g for pair in work.grads for g in pair])
                self.offset += self.batch_size
            return
        velocity = self._velocity(sgd)
        with self.stream:
            kernels.multi_sgd(self._table(work, velocity), self.lr, self.first_step,
                              momentum=sgd.momentum, nesterov=sgd.nesterov,
                              weight_decay=sgd.weight_decay, offset=self.offset,
                              batch=self.batch_size, scratch=self.scratch)

    def _sgd(self):
        return self.optimizer if type(self.optimizer) is SGD else None

    def _velocity(self, sgd):
        """The optimizer's momentum buffers, made (zero, first step flagged) if it has none
        yet; they stay the optimizer's, for its state_dict and checkpoints. New buffers
        (made here, or loaded by a resume) retire the tables and graphs holding the old."""
        with self.stream:
            velocity, made = sgd.momentum_buffers(self.params, self.cupy.zeros_like)
            if made:
                self.first_step.fill(1)
        if velocity is not None and id(velocity[0]) != self._velocity_id:
            self._velocity_id = id(velocity[0])
            self._tables.clear()
            self._graphs.clear()
        return velocity

    def _table(self, work: Workspace, velocity):
        key = work.batch
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = kernels.SGDTable(
                self.params, [g for pair in work.grads for g in pair], velocity)
        return table

    # ---- graphs -----------------------------------------------------------------------

    def _replay(self, work: Workspace, global_rows: int) -> None:
        """The step as a CUDA graph: captured (and checked) on first use, then replayed."""
        graph = self._graphs.get(work.batch)
        if graph is None:  # this first step is taken by the check itself
            self._graphs[work.batch] = self._capture_checked(work, global_rows)
        elif graph is False:  # the eager launches after a failed capture or check
            with self.stream:
                self._launch(work, global_rows)
        else:
            graph.launch(self.stream)

    def _capture_checked(self, work: Workspace, global_rows: int):
        """A captured graph of one step that replays the eager step's result, or False.

        The step runs eagerly once (warming every buffer up: nothing may be allocated
        during capture), from a saved state; then from the same state the graph replays,
        and the two results are compared. Either way the state ends as one step left it.
        """
        with self.stream:  # snapshots on the step's stream: ordered with its launches
            state = self._device_state(work)
            saved = [a.copy() for a in state]
            self._launch(work, global_rows)
            eager = [a.copy() for a in state]
        self._restore(state, saved)
        try:
            graph = self._capture(work, global_rows)
            graph.launch(self.stream)
        except Exception as why:  # capture is refused by something in the step
            self._restore(state, eager)
            return self._graphs_off(f"capturing the step failed ({type(why).__name__}: {why})")
        self.stream.synchronize()
        dtype = self.net.dtype.type
        for got, want in zip(state, eager):
            if got.dtype.kind == "f" and not bool(self.cupy.allclose(
                    got, want, rtol=SELF_CHECK_RTOL[dtype], atol=0, equal_nan=True)):
                self._restore(state, eager)
                return self._graphs_off("a replayed step differed from the eager step")
            if got.dtype.kind != "f" and not bool((got == want).all()):
                self._restore(state, eager)
                return self._graphs_off("a replayed step left other counters than the "
                                        "eager step")
        return graph

    def _capture(self, work: Workspace, global_rows: int):
        with self.stream:
            self.stream.begin_capture()
            try:
                self._launch(work, global_rows)
            finally:
                graph = self.stream.end_capture()
        return graph

    def _device_state(self, work: Workspace) -> list:
        """Everything one step changes: parameters, momentum, offset, flags and the loss."""
        velocity = self._velocity(self._sgd()) or []
        return [*self.params, *velocity, self.offset, self.first_step, self.scratch.loss_sum]

    def _restore(self, state: list, values: list) -> None:
        with self.stream:
            for a, v in zip(state, values):
                a[...] = v
        self.stream.synchronize()

    def _graphs_off(self, why: str):
        warnings.warn(f"gpubp: CUDA graphs turned off for this run: {why}; training goes "
                      "on with eager launches", CudaGraphWarning, stacklevel=4)
        self.use_graphs = False
        return False



class _StreamScalar:
    """A device float64 scalar written on ``stream``; float() waits for the stream first
    (a non-blocking stream is not ordered with the default one that float() reads on)."""

    def __init__(self, array, stream):
        self.array, self.stream = array, stream

    def __float__(self) -> float:
        self.stream.synchronize()
        return float(self.array)

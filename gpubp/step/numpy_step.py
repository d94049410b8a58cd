"""The training step on the NumPy backend, top to bottom:

    gather → forward → fused loss and gradient (EqA1.1) → backward (EqA1, EqA2.1) → update

over the buffers of a :class:`~gpubp.step.workspace.Workspace`, with MKL's GEMM where
:mod:`gpubp.blas` has it, and the vector math of :mod:`gpubp.cpu_kernels`. After the first
step of a batch size nothing is allocated but Python scalars.

Plain SGD (no momentum, no weight decay), where the GEMM library takes alpha and beta
itself (:func:`gpubp.blas.fuses_update`), folds the update into the GEMM that computes each
weight gradient: W^l ← W^l − lr · δ^l (a^{l−1})^T is one ``gemm`` with
beta = 1, a pass over W fewer than computing dW and then updating.

Data-parallel (a communicator of N > 1 ranks, see :mod:`gpubp.distributed`): each rank
takes its share of the global batch's rows, scales δ^L by 1/(global batch), and the
gradients (one flat buffer) are summed across ranks before the update, which every rank
then applies identically.
"""

from __future__ import annotations

import numpy as np

from gpubp import blas, cpu_kernels
from gpubp.distributed import get_communicator
from gpubp.optim import SGD
from gpubp.step.workspace import Workspace, Workspaces


class NumpyStepper:
    """Runs an epoch's steps of ``net`` on (X, targets) by batches of ``batch_size`` rows.

    X: (N, n_in) and targets: (N,) int64 labels or (N, C) rows, prepared arrays of the
    network's dtype. ``loss_sum`` (0-d float64) accumulates Σ_rows loss over the epoch's
    steps; ``first_loss`` holds the mean loss of the epoch's first step, the only one
    computed with the weights the epoch started from. ``precision="bf16"`` lays the
    step out for bf16 GEMMs, which run where the caller runs the steps inside
    ``blas.gemm_precision("bf16")`` (as the trainer does).
    """

    def __init__(self, net, optimizer, X, targets, batch_size: int, comm=None,
                 precision: str = "fp32"):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision: expected 'fp32' or 'bf16' on NumPy, got {precision!r}")
        self.net, self.optimizer, self.precision = net, optimizer, precision
        self.X, self.targets, self.batch_size = X, targets, batch_size
        self.comm = comm if comm is not None else get_communicator("single")
        self.params = net.parameters()
        self.loss_sum = np.zeros((), np.float64)
        self.first_loss = np.zeros((), np.float64)
        # bf16: row-major hidden layers, into which oneDNN fuses each layer's bias and
        # sigmoid with its GEMM (cpu_kernels.linear_sigmoid).
        self._workspace = Workspaces(net, targets, "C" if precision == "bf16" else None)
        self._order, self._lr = None, None

    def begin_epoch(self, order: np.ndarray, lr: float, loss_sum: float = 0.0,
                    first_loss: float | None = None, epoch: int | None = None) -> None:
        """Take the epoch's row order (N,) and learning rate; ``loss_sum`` and
        ``first_loss`` carry on a resumed epoch's. (``epoch`` names it in the CUDA
        stepper's errors; labels were checked here when the targets were prepared.)"""
        self._order, self._lr = order, lr
        self.loss_sum[...] = loss_sum
        self.first_loss[...] = 0.0 if first_loss is None else first_loss

    def close(self) -> None:
        """Nothing to release on NumPy (the CUDA stepper's counterpart)."""

    def finish_epoch(self) -> float:
        """The epoch's Σ_rows loss (over every rank's rows)."""
        if self.comm.size > 1:
            self.loss_sum[...], self.first_loss[...] = self.comm.allreduce_scalars(
                [float(self.loss_sum), float(self.first_loss)])
        return float(self.loss_sum)

    def step(self, batch: int) -> None:
        """One gradient-descent step on rows ``order[batch·B : (batch+1)·B]`` (this
        rank's share of them when data-parallel)."""
        first = batch * self.batch_size
        global_rows = min(self.batch_size, len(self._order) - first)
        start, stop = self.comm.shard(len(self._order), self.batch_size, batch)
        rows = self._order[first + start:first + stop]
        if len(rows) == 0:  # more ranks than rows: nothing to add but the others' sum
            self._update(self._idle_gradients(), fused=False)
            return
        work = self._workspace(len(rows))
        net, lr = self.net, self._lr
        fused = self._fused_update()

        # Gather the batch into the workspace (no copy of X[rows] is made). The rows are
        # valid indices; mode="clip" spares take() the buffer it uses to check them.
        np.take(self.X, rows, axis=0, out=work.X, mode="clip")
        np.take(self.targets, rows, axis=0, out=work.targets, mode="clip")

        # Forward: a^l = σ(W^l a^{l−1} + b^l) for hidden layers, then z^L.
        a = work.X
        for W, b, out in zip(net.weights[:-1], net.biases[:-1], work.activations):
            a = cpu_kernels.linear_sigmoid(a, W, b, out)
        logits = blas.matmul(a, net.weights[-1].T, out=work.logits)
        logits += net.biases[-1]

        # EqA1.1: δ^L = dL/dz^L = (P − Y)/B over the logits, with the loss in the same pass.
        loss = softmax_cross_entropy_into(logits, work.targets, 1.0 / global_rows, work)
        if batch == 0:
            self.first_loss[...] = loss / global_rows
        self.loss_sum += loss
        delta = logits
        delta.sum(axis=0, out=work.grads[-1][1])  # dL/db^L = Σ_batch δ^L

        # Backward, last layer first.
        inputs = [work.X] + work.activations  # a^0 .. a^{L−1}
        for l in reversed(range(len(net.weights))):
            W, (dW, _) = net.weights[l], work.grads[l]
            if l > 0:  # (W^l)^T δ^l, with W^l as the forward pass used it
                grad_a = blas.matmul(delta, W, out=work.deltas[l - 1])
            if fused:  # EqA1 and the update in one GEMM: W^l ← W^l − lr · δ^l (a^{l−1})^T
                blas.matmul(delta.T, inputs[l], out=W, alpha=-lr, beta=1.0)
            else:  # EqA1: dL/dW^l = δ^l (a^{l−1})^T, summed over the batch
                blas.matmul(delta.T, inputs[l], out=dW)
            if l > 0:
                # EqA2.1: δ^{l−1} = ((W^l)^T δ^l) ⊙ σ'(z^{l−1}), σ' = a^{l−1}(1 − a^{l−1}),
                # with dL/db^{l−1} = Σ_batch δ^{l−1} in the same pass.
                delta = cpu_kernels.sigmoid_backward(grad_a, inputs[l], out=grad_a,
                                                     bias_grad=work.grads[l - 1][1],
                                                     scratch=work.slope)

        self._update(work, fused)

    def _update(self, work, fused: bool) -> None:
        """Sum the gradients across ranks (data-parallel), then step the optimizer."""
        if fused:  # the weights were updated by their GEMMs
            for (_, db), b in zip(work.grads, self.net.biases):
                blas.axpby(-self._lr, db, 1.0, b)
            return
        self.comm.allreduce_sum_(work.flat_grads)
        self.optimizer.step(self.params, [g for pair in work.grads for g in pair])

    def _idle_gradients(self) -> Workspace:
        """A workspace of zero gradients, for a rank without rows in this batch."""
        work = self._workspace(1)
        work.flat_grads.fill(0)
        return work

    def _fused_update(self) -> bool:
        opt = self.optimizer
        return (type(opt) is SGD and not opt.momentum and not opt.weight_decay
                and blas.fuses_update() and self.comm.size == 1)



def softmax_cross_entropy_into(logits, targets, scale, work) -> float:
    """In place over ``logits`` (B, C): δ = (P·Σy − Y)·scale, P = softmax(z) by rows
    (P − Y for labels); returns Σ_rows loss, L = −Σ_j y_j log p_j, as a float.

    The same arithmetic, in the same order, as :func:`gpubp.ops.softmax_cross_entropy`
    (so the two agree bit for bit), with the workspace's scratch instead of temporaries.
    targets: (B,) int64 labels or (B, C) rows; logits must be finite (they are, for
    finite weights and inputs).
    """
    row_max, log_sum, picked, target_sum = work.row_stats
    np.max(logits, axis=1, out=row_max)
    np.subtract(logits, row_max[:, None], out=logits)  # shifted: every row's max is 0
    flat = logits.reshape(-1)
    labels = targets.ndim == 1
    if labels:
        np.add(work.row_offsets, targets, out=work.label_at)
        np.take(flat, work.label_at, out=picked, mode="clip")  # z_y − max
    else:
        np.multiply(targets, logits, out=work.rows_scratch)
        np.sum(work.rows_scratch, axis=1, out=picked)  # Σ_j y_j (z_j − max)
    np.exp(logits, out=work.rows_scratch)
    np.sum(work.rows_scratch, axis=1, out=log_sum)
    np.log(log_sum, out=log_sum)  # log Σ_j e^(z_j − max)
    if labels:
        np.subtract(log_sum, picked, out=picked)  # the rows' losses
    else:
        np.sum(targets, axis=1, out=target_sum)
        np.multiply(log_sum, target_sum, out=row_max)
        np.subtract(row_max, picked, out=picked)  # the rows' losses: Σy·log Σe − Σ y(z−max)
    loss = float(picked.sum(dtype=np.float64))

    np.subtract(logits, log_sum[:, None], out=logits)
    np.exp(logits, out=logits)  # P
    if labels:
        np.take(flat, work.label_at, out=picked, mode="clip")
        picked -= 1
        np.put(flat, work.label_at, picked, mode="clip")  # P − Y
    else:
        np.multiply(logits, target_sum[:, None], out=logits)
        np.subtract(logits, targets, out=logits)  # P·Σy − Y
    logits *= scale
    return loss

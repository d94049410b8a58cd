"""The network's elementwise and row-wise math, written once against ``xp``.

These are the reference implementations: the NumPy backend runs them, and each CUDA
kernel in ``gpubp.cuda.kernels`` has the signature of its function here and is tested
against it. They reuse ``out`` buffers and stay in the arrays' dtype, so a training step
allocates little. Shapes: B rows (the batch), C columns (classes or units).
"""

from __future__ import annotations

import numpy as np

from gpubp.backend import array_module
from gpubp.errors import DataError

REDUCTIONS = ("none", "mean")


def sigmoid(z):
    """σ(z) = 1 / (1 + e^(−z)), elementwise, without overflow for any finite z.

    Uses e = exp(−|z|) ∈ (0, 1]: σ(z) = 1/(1+e) for z ≥ 0 and e/(1+e) for z < 0, so both
    tails keep full relative precision.
    """
    xp = array_module(z)
    e = xp.exp(-xp.abs(z))
    r = 1.0 / (1.0 + e)
    return xp.where(z >= 0, r, e * r).astype(z.dtype, copy=False)


def bias_sigmoid(z, bias, out=None):
    """a = σ(z + b), the hidden layer's activation. z: (B, C); bias: (C,); returns (B, C).

    ``out`` (B, C) receives the result and may be ``z`` itself. Computed as 1/(1 + e^(−x))
    in four in-place passes; where e^(−x) overflows (x < −88.7 in float32) the result is
    0, within one subnormal of σ(x).
    """
    xp = array_module(z)
    bias = xp.asarray(bias)
    # −x in one pass, exactly −(z + b); b is negated in the result's dtype (never unsigned).
    out = xp.subtract(-bias.astype(xp.result_type(z, bias), copy=False), z, out=out)
    with np.errstate(over="ignore"):
        xp.exp(out, out=out)
    out += 1
    return xp.reciprocal(out, out=out)


def sigmoid_backward(grad_a, a, out=None, bias_grad=None):
    """δ = g ⊙ σ'(z) with σ'(z) = a (1 − a) taken from the stored activation (EqA2.1).

    grad_a: (B, C), the gradient with respect to a = σ(z); a: (B, C). Returns δ (B, C),
    written into ``out`` when given (it may be ``grad_a``). With ``bias_grad`` (C,), also
    writes dL/db = Σ_rows δ there (EqA1's bias term), which the CUDA kernel fuses.
    """
    xp = array_module(a)
    slope = xp.subtract(1, a)
    slope *= a
    delta = xp.multiply(grad_a, slope, out=out)
    if bias_grad is not None:
        delta.sum(axis=0, out=bias_grad)
    return delta


def log_softmax(logits):
    """log softmax over each row, shifted by the row max (log-sum-exp). (B, C) -> (B, C)."""
    xp = array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits):
    """P = softmax(z) per row, stable for any finite logits. (B, C) -> (B, C)."""
    return array_module(logits).exp(log_softmax(logits))


def softmax_cross_entropy(logits, targets, scale=1.0, *, ignore_index=None, reduction="none",
                          out=None, grad=True):
    """Per-row cross-entropy of softmax(logits) and its gradient, in one pass over the row.

    Args:
        logits: z^L, (B, C), float32 or float64. −inf is allowed where a row has a
            finite logit.
        targets: integer labels (B,), or floating-point target rows (B, C): class
            probabilities, or any weights (a row need not sum to 1).
        scale: multiplies the gradient; 1/B makes it the gradient of the batch mean.
        ignore_index: with labels, rows whose label equals it count for nothing: zero
            loss, zero gradient, left out of the mean.
        reduction: "none" for the loss of every row, "mean" for their mean over the
            counted rows (0 when no row counts).
        out: (B, C) buffer for the gradient; it may be ``logits`` itself.
        grad: False to compute the loss alone (the gradient is then None).

    Returns:
        (loss, grad): loss (B,) per row (L = −Σ_j y_j log p_j) or a 0-d mean, in the
        logits' dtype; grad (B, C) = (P·Σy − Y)·scale, the exact gradient of L with Σy
        each row's target sum: (P − Y)·scale (EqA1.1) for labels and rows summing to 1;
        zero on ignored rows.

    Raises:
        DataError: a label outside [0, C) that is not ``ignore_index``.
        TypeError: target rows that are not floating point.
    """
    xp = array_module(logits)
    check_cross_entropy_args(logits, targets, ignore_index, reduction, out)
    batch, n_classes = logits.shape
    counted = None
    if targets.ndim == 1 and ignore_index is not None:
        counted = targets != ignore_index
        targets = xp.where(counted, targets, 0)
    if targets.ndim == 1 and batch:
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= n_classes:
            raise DataError(f"targets: labels must lie in [0, {n_classes}) or equal "
                            f"ignore_index; got labels in [{low}, {high}]")

    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sum = xp.log(xp.exp(shifted).sum(axis=1))
    rows = xp.arange(batch)
    if targets.ndim == 1:
        loss_rows = log_sum - shifted[rows, targets]
    else:
        # 0 · log p is taken as 0, so a class with zero target never yields NaN.
        weighted = xp.where(targets != 0, targets * shifted, 0)
        target_sums = targets.sum(axis=1)
        loss_rows = log_sum * target_sums - weighted.sum(axis=1)
    loss_rows = loss_rows.astype(logits.dtype, copy=False)

    g = None
    if grad:
        shifted -= log_sum[:, None]
        g = xp.exp(shifted, out=shifted if out is None else out)
        if targets.ndim == 1:
            g[rows, targets] -= 1
        else:
            # dL/dz_j = p_j·Σy − y_j: P − Y only where the row sums to 1.
            g *= target_sums[:, None]
            g -= targets
        g *= scale
        if counted is not None:
            g *= counted[:, None]
    if counted is not None:
        loss_rows *= counted
    if reduction == "mean":
        n_counted = batch if counted is None else int(counted.sum())
        loss = (loss_rows.sum(dtype=np.float64) / max(n_counted, 1)).astype(logits.dtype)
        return loss, g
    return loss_rows, g


def bias_softmax_cross_entropy(z, bias, targets, scale=1.0, *, ignore_index=None, out=None,
                               bias_grad=None, loss_sum=None):
    """The output layer's training step: :func:`softmax_cross_entropy` of the logits
    z^L + b^L, with the bias gradient and the loss summed on the side.

    Args:
        z: z^L before its bias, (B, C), float32 or float64.
        bias: b^L, (C,), of z's dtype.
        targets, scale, ignore_index: as for :func:`softmax_cross_entropy`.
        out: (B, C) buffer for δ^L; it may be ``z`` itself.
        bias_grad: (C,) buffer for dL/db^L = Σ_rows δ^L (EqA1's bias term), or None.
        loss_sum: a float64 (2,) accumulator, or None; (Σ row losses, counted rows) is
            added to it, so that over an epoch loss_sum[0] / loss_sum[1] is the mean loss.

    Returns:
        δ^L = dL/dz^L = (P·Σy − Y)·scale, (B, C), in ``out`` when given.
    """
    xp = array_module(z)
    loss_rows, g = softmax_cross_entropy(z + xp.asarray(bias), targets, scale,
                                         ignore_index=ignore_index, out=out)
    if bias_grad is not None:
        g.sum(axis=0, out=bias_grad)
    if loss_sum is not None:
        counted = targets.shape[0] if ignore_index is None or targets.ndim == 2 \
            else (targets != ignore_index).sum()
        loss_sum[0] += loss_rows.sum(dtype=np.float64)
        loss_sum[1] += counted
    return g


def gather_rows(X, order, offset, out, targets=None, targets_out=None):
    """The batch, gathered into persistent buffers: out[i] = X[order[offset + i]] for
    i < B = out.shape[0], and targets_out[i] = targets[order[offset + i]] likewise.

    X: (N, n); order: integer (M,), the epoch's permutation; offset: the batch's position in
    ``order``, an int or a one-element integer array (on CUDA device memory, which the
    multi-tensor SGD advances); out: (B, n) of X's dtype; targets: labels (N,) or rows
    (N, C), with targets_out (B,) or (B, C). Returns (out, targets_out).

    Raises:
        DataError: offset + B past the end of ``order``, or an index outside [0, N).
    """
    xp = array_module(X)
    start = int(offset) if np.ndim(offset) == 0 else int(offset.reshape(-1)[0])
    batch = out.shape[0]
    rows = order[start:start + batch]
    if start < 0 or rows.shape[0] != batch:
        raise DataError(f"offset: rows {start}..{start + batch} of an order of {order.shape[0]}")
    if batch and (int(rows.min()) < 0 or int(rows.max()) >= X.shape[0]):
        raise DataError(f"order: indices must lie in [0, {X.shape[0]})")
    # Checked above; NumPy's default mode="raise" would copy through a temporary.
    clip = {"mode": "clip"} if xp is np else {}
    xp.take(X, rows, axis=0, out=out, **clip)
    if targets is not None:
        xp.take(targets, rows, axis=0, out=targets_out, **clip)
    return out, targets_out


def check_cross_entropy_args(logits, targets, ignore_index, reduction, out) -> None:
    """The argument checks shared by the reference and the CUDA kernel."""
    if logits.ndim != 2:
        raise ValueError(f"logits: expected a (B, C) array, got shape {logits.shape}")
    if logits.dtype not in (np.float32, np.float64):
        raise TypeError(f"logits: expected float32 or float64, got {logits.dtype}")
    batch, n_classes = logits.shape
    if n_classes < 1:
        raise ValueError(f"logits: need at least one class (column), got shape {logits.shape}")
    if targets.ndim == 1:
        if targets.shape[0] != batch or targets.dtype.kind not in "iu":
            raise ValueError(f"targets: expected ({batch},) integer labels, "
                             f"got shape {targets.shape} of {targets.dtype}")
    elif targets.shape != logits.shape:
        raise ValueError(f"targets: expected ({batch},) labels or ({batch}, {n_classes}) "
                         f"rows, got shape {targets.shape}")
    elif targets.dtype.kind != "f":
        # As PyTorch does: target rows are probabilities; integers are labels, of shape (B,).
        raise TypeError(f"targets: target rows (B, C) must be floating point, got "
                        f"{targets.dtype}; integer labels have shape ({batch},)")
    elif ignore_index is not None:
        raise ValueError("ignore_index: applies to integer labels, not to target rows")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    if out is not None and (out.shape != logits.shape or out.dtype != logits.dtype):
        raise ValueError(f"out: expected shape {logits.shape} and dtype {logits.dtype}, "
                         f"got {out.shape} and {out.dtype}")

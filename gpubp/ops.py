"""The network's elementwise and row-wise math, written once against ``xp``.

These are the reference implementations, for NumPy and CuPy alike. The fused CUDA
kernels planned for ``kernels/`` will compute the same functions with the same
signatures and be tested against these.
Shapes: B rows (the batch), C columns (classes or units).
"""

from __future__ import annotations

from gpubp.backend import array_module


def sigmoid(z):
    """σ(z) = 1 / (1 + e^(−z)), elementwise, without overflow for any finite z.

    Uses e = exp(−|z|) ∈ (0, 1]: σ(z) = 1/(1+e) for z ≥ 0 and e/(1+e) for z < 0, so both
    tails keep full relative precision.
    """
    xp = array_module(z)
    e = xp.exp(-xp.abs(z))
    r = 1.0 / (1.0 + e)
    return xp.where(z >= 0, r, e * r).astype(z.dtype, copy=False)


def sigmoid_backward(grad_a, a):
    """δ = g ⊙ σ'(z) with σ'(z) = a (1 − a) taken from the stored activation (EqA2.1).

    grad_a: (B, C), the gradient with respect to a = σ(z); a: (B, C). Returns (B, C).
    """
    return grad_a * a * (1 - a)


def log_softmax(logits):
    """log softmax over each row, shifted by the row max (log-sum-exp). (B, C) -> (B, C)."""
    xp = array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits):
    """P = softmax(z) per row, stable for any finite logits. (B, C) -> (B, C)."""
    return array_module(logits).exp(log_softmax(logits))


def softmax_cross_entropy(logits, targets, scale=1.0):
    """Per-row cross-entropy of softmax(logits) and its gradient, in one pass over the row.

    Args:
        logits: z^L, (B, C).
        targets: integer labels (B,) or target rows (B, C) that each sum to 1.
        scale: multiplies the gradient; 1/B makes it the gradient of the batch mean.

    Returns:
        loss_rows: (B,), L = −Σ_j y_j log p_j for each row.
        grad: (B, C), dL/dz^L = (P − Y) · scale (EqA1.1).
    """
    xp = array_module(logits)
    log_p = log_softmax(logits)
    grad = xp.exp(log_p)
    if targets.ndim == 1:
        rows = xp.arange(logits.shape[0])
        loss_rows = -log_p[rows, targets]
        grad[rows, targets] -= 1
    else:
        # 0 · log p is taken as 0, so a class with zero target never yields NaN.
        loss_rows = -xp.where(targets != 0, targets * log_p, 0).sum(axis=1)
        grad -= targets
    grad *= scale
    return loss_rows, grad

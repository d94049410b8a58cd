"""The training step's elementwise math on the NumPy backend, arranged for the CPU.

The step functions of :mod:`gpubp.ops` (and of :mod:`gpubp.cuda.kernels`), with
their signatures and, up to rounding, their results:

- :func:`bias_sigmoid` takes its exponential and reciprocal from MKL's vector math (VML)
  where MKL runs the GEMMs and VML was measured faster than NumPy on this machine for
  arrays of that size (:func:`gpubp.blas.vml_library`; on the AMD EPYC it is slower,
  docs/cpu.md): vectorized, on MKL's threads, at VML's default high accuracy (≤ 1 ulp).
- :func:`sigmoid_backward` runs on blocks of ~64K values (column blocks of column-major
  arrays, row blocks of row-major ones), so that its temporary a(1 − a) stays in cache
  between the passes that write and read it.
- :func:`linear_sigmoid`, a hidden layer's forward, is one fused product where the GEMM
  library applies the bias and the sigmoid (bf16 on oneDNN).

Arrays these paths cannot take (other layouts, dtypes or array types) go to the references.
"""

from __future__ import annotations

import numpy as np

from gpubp import blas, ops

BLOCK_VALUES = 1 << 16  # values per block of sigmoid_backward

softmax_cross_entropy = ops.softmax_cross_entropy


def bias_sigmoid(z, bias, out=None):
    """a = σ(z + b) = 1/(1 + e^(−z−b)). z: (B, n); bias: (n,); out (B, n) may be z.

    With VML the exponential overflows to +inf below z + b ≈ −88.7 (float32) and the
    reciprocal of inf + 1 is 0, as in the reference.
    """
    if not (isinstance(z, np.ndarray) and isinstance(bias, np.ndarray)) or bias.shape != z.shape[-1:]:
        return ops.bias_sigmoid(z, bias, out=out)
    mkl = blas.vml_library(z.size)
    if mkl is None:
        return ops.bias_sigmoid(z, bias, out=out)
    dtype = np.result_type(z, bias)
    if out is None and dtype in (np.float32, np.float64):
        out = np.empty(z.shape, dtype, order="F" if _column_major(z) else "C")
    if not _vml_can_take(out, z.shape):
        return ops.bias_sigmoid(z, bias, out=out)
    return mkl.bias_sigmoid(z, bias, out)


def linear_sigmoid(a, W, bias, out):
    """A hidden layer's forward: out = σ(a Wᵀ + b). a: (B, n_in); W: (n_out, n_in);
    bias: (n_out,); out: (B, n_out). One fused product where :func:`gpubp.blas.linear_sigmoid`
    has one (bf16 on oneDNN, into a row-major ``out``), else the GEMM then
    :func:`bias_sigmoid` in place."""
    if blas.linear_sigmoid(a, W, bias, out) is None:
        bias_sigmoid(blas.matmul(a, W.T, out=out), bias, out=out)
    return out


def sigmoid_backward(grad_a, a, out=None, bias_grad=None, scratch=None):
    """δ = grad_a ⊙ a(1 − a) (EqA2.1), with dL/db = Σ_rows δ into ``bias_grad`` when given.

    grad_a, a: (B, n); out (B, n) may be ``grad_a``; bias_grad: (n,). scratch: optional,
    a 1-D array of δ's dtype with at least min(B·n, max(BLOCK_VALUES, B, n)) values (the
    step workspace's ``slope``) that holds each block's a(1 − a), so that nothing is
    allocated; the same arithmetic in the same order as without it.
    """
    arrays = (grad_a, a) + tuple(x for x in (out, bias_grad) if x is not None)
    column_major = isinstance(a, np.ndarray) and _column_major(a)
    if not (all(isinstance(x, np.ndarray) for x in arrays) and a.ndim == 2
            and (column_major or a.flags.c_contiguous)
            and grad_a.shape == a.shape and (out is None or out.shape == a.shape)
            and (bias_grad is None or bias_grad.shape == a.shape[1:])
            and not _overlaps(out, grad_a, a)):
        return ops.sigmoid_backward(grad_a, a, out=out, bias_grad=bias_grad)
    order = "F" if column_major else "C"
    if out is None:
        out = np.empty(a.shape, np.result_type(grad_a, a), order=order)
    # Blocks of about BLOCK_VALUES contiguous values: column blocks of a column-major a
    # (each with its own column sums), row blocks of a row-major one (summed at the end).
    axis = 1 if column_major else 0
    length = max(1, a.shape[1 - axis])  # values per column (per row)
    lines = max(1, BLOCK_VALUES // length)  # columns (rows) per block
    if not (isinstance(scratch, np.ndarray) and scratch.ndim == 1 and scratch.dtype == out.dtype
            and scratch.size >= length * min(lines, a.shape[axis])
            and not np.may_share_memory(scratch, out)):
        scratch = None
    for start in range(0, a.shape[axis], lines):
        block = (slice(None), slice(start, start + lines)) if column_major else (
            slice(start, start + lines),)
        sums = None if bias_grad is None or not column_major else bias_grad[start:start + lines]
        if scratch is None:
            ops.sigmoid_backward(grad_a[block], a[block], out=out[block], bias_grad=sums)
            continue
        a_block = a[block]
        slope = scratch[:a_block.size].reshape(a_block.shape, order=order)
        np.subtract(1, a_block, out=slope)  # as gpubp.ops.sigmoid_backward, in place
        slope *= a_block
        delta = np.multiply(grad_a[block], slope, out=out[block])
        if sums is not None:
            delta.sum(axis=0, out=sums)
    if bias_grad is not None and not column_major:
        out.sum(axis=0, out=bias_grad)
    return out


def _vml_can_take(out, shape) -> bool:
    """Whether ``out`` is a NumPy array of a VML dtype and this shape, contiguous in one
    order or the other, so that VML can run over it as one flat vector."""
    return (isinstance(out, np.ndarray) and out.dtype in (np.float32, np.float64)
            and out.shape == shape and 0 < out.size <= blas.MAX_INT
            and (out.flags.c_contiguous or out.flags.f_contiguous))


def _overlaps(out, grad_a, a) -> bool:
    """Whether writing ``out`` block by block could overwrite inputs of later blocks
    (``out`` being ``grad_a`` itself is safe: each block reads its own columns first)."""
    if out is None:
        return False
    return (out is not grad_a and np.may_share_memory(out, grad_a)) or np.may_share_memory(out, a)


def _column_major(x) -> bool:
    return x.flags.f_contiguous and not x.flags.c_contiguous

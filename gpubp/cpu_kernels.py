"""The training step's elementwise math on the NumPy backend, arranged for the CPU.

The step functions of :mod:`gpubp.ops` (and of :mod:`gpubp.cuda.kernels`), with
their signatures and, up to rounding, their results:

- :func:`bias_sigmoid` takes its exponential and reciprocal from MKL's vector math (VML)
  where MKL runs the GEMMs and VML was measured faster than NumPy on this machine for
  arrays of that size (:func:`gpubp.blas.vml_library`; on the AMD EPYC it is slower,
  docs/cpu.md): vectorized, on MKL's threads, at VML's default high accuracy (≤ 1 ulp).
- :func:`sigmoid_backward` runs on column blocks of ~64K values, so that its temporary
  a(1 − a) stays in cache between the passes that write and read it.

Arrays these paths cannot take (other layouts, dtypes or array types) go to the references.
"""

from __future__ import annotations

import numpy as np

from gpubp import blas, ops

BLOCK_VALUES = 1 << 16  # values per column block of sigmoid_backward

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


def sigmoid_backward(grad_a, a, out=None, bias_grad=None, scratch=None):
    """δ = grad_a ⊙ a(1 − a) (EqA2.1), with dL/db = Σ_rows δ into ``bias_grad`` when given.

    grad_a, a: (B, n); out (B, n) may be ``grad_a``; bias_grad: (n,). scratch: optional,
    a 1-D array of δ's dtype with at least min(B·n, max(BLOCK_VALUES, B)) values (the
    step workspace's ``slope``) that holds each block's a(1 − a), so that nothing is
    allocated; the same arithmetic in the same order as without it.
    """
    arrays = (grad_a, a) + tuple(x for x in (out, bias_grad) if x is not None)
    if not (all(isinstance(x, np.ndarray) for x in arrays) and a.ndim == 2 and _column_major(a)
            and grad_a.shape == a.shape and (out is None or out.shape == a.shape)
            and (bias_grad is None or bias_grad.shape == a.shape[1:])
            and not _overlaps(out, grad_a, a)):
        return ops.sigmoid_backward(grad_a, a, out=out, bias_grad=bias_grad)
    if out is None:
        out = np.empty(a.shape, np.result_type(grad_a, a), order="F")
    rows = max(1, a.shape[0])
    columns = max(1, BLOCK_VALUES // rows)
    if not (isinstance(scratch, np.ndarray) and scratch.ndim == 1 and scratch.dtype == out.dtype
            and scratch.size >= rows * min(columns, a.shape[1])
            and not np.may_share_memory(scratch, out)):
        scratch = None
    for start in range(0, a.shape[1], columns):
        block = slice(start, start + columns)
        sums = None if bias_grad is None else bias_grad[block]
        if scratch is None:
            ops.sigmoid_backward(grad_a[:, block], a[:, block], out=out[:, block], bias_grad=sums)
            continue
        a_block = a[:, block]
        slope = scratch[:a_block.size].reshape(a_block.shape, order="F")
        np.subtract(1, a_block, out=slope)  # as gpubp.ops.sigmoid_backward, in place
        slope *= a_block
        delta = np.multiply(grad_a[:, block], slope, out=out[:, block])
        if sums is not None:
            delta.sum(axis=0, out=sums)
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

"""gpubp.blas.matmul equals numpy.matmul on every layout the training step passes it."""

import subprocess
import sys

import numpy as np
import pytest

from gpubp import blas


def layouts(rng, m, k, dtype):
    """(name, array of shape (m, k)) in each memory layout matmul may receive."""
    base = rng.normal(size=(m, k)).astype(dtype)
    padded = np.zeros((m, k + 3), dtype)
    padded[:, :k] = base
    return [("c", base), ("transposed", np.ascontiguousarray(base.T).T),
            ("row_padded", padded[:, :k]), ("strided", rng.normal(size=(m, 2 * k)).astype(dtype)[:, ::2])]


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-13)])
def test_matmul_equals_numpy_on_every_layout(rng, dtype, rtol):
    for name_a, a in layouts(rng, 7, 5, dtype):
        for name_b, b in layouts(rng, 5, 3, dtype):
            for order in "CF":
                out = np.full((7, 3), np.nan, dtype, order=order)
                assert blas.matmul(a, b, out=out) is out
                np.testing.assert_allclose(out, a @ b, rtol=rtol, atol=rtol,
                                           err_msg=f"{name_a} @ {name_b} into {order} order")


@pytest.mark.skipif(not blas.has_mkl(), reason="MKL is not installed")
def test_a_column_major_product_goes_to_mkl_as_its_transpose(rng, monkeypatch):
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(4, 5))
    want = a @ b

    def numpy_matmul(*args, **kwargs):
        raise AssertionError("a column-major out went to numpy.matmul")

    monkeypatch.setattr(blas.np, "matmul", numpy_matmul)
    out = blas.matmul(a, b, out=np.empty((6, 5), order="F"))
    np.testing.assert_allclose(out, want, rtol=1e-13)


def test_dimensions_beyond_32_bits_go_to_numpy(rng, monkeypatch):
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(4, 5))
    monkeypatch.setattr(blas, "MAX_INT", 5)
    assert blas._plan(a, b, np.empty((6, 5))) is None
    np.testing.assert_allclose(blas.matmul(a, b, out=np.empty((6, 5))), a @ b)
    y = np.ones(6)
    blas.axpby(2.0, np.ones(6), 1.0, y)
    np.testing.assert_array_equal(y, 3.0)


@pytest.mark.parametrize("order", "CF")
def test_matmul_accumulates_with_alpha_and_beta(rng, order):
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(4, 5))
    start = rng.normal(size=(6, 5))
    out = np.array(start, order=order)
    assert blas.matmul(a, b.T.copy().T, out=out, alpha=-0.25, beta=1.0) is out
    np.testing.assert_allclose(out, start - 0.25 * (a @ b), rtol=1e-13)


def test_degenerate_and_mixed_inputs_fall_back_to_numpy(rng):
    out = np.empty((4, 0), np.float32)
    assert blas.matmul(np.ones((4, 2), np.float32), np.ones((2, 0), np.float32), out=out) is out
    a, b = rng.normal(size=(3, 2)), rng.normal(size=(2, 4)).astype(np.float32)
    out = np.empty((3, 4))
    np.testing.assert_allclose(blas.matmul(a, b, out=out), a @ b)
    column = rng.normal(size=(6, 1)).astype(np.float32)
    out = np.empty((6, 6), np.float32)
    np.testing.assert_allclose(blas.matmul(column, column.T, out=out), column @ column.T, rtol=1e-6)


def test_the_library_in_use_is_named():
    assert blas.name().startswith(("mkl ", "numpy ("))


def test_gpubp_blas_numpy_turns_mkl_off():
    code = "from gpubp import blas; print(blas.name())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"GPUBP_BLAS": "numpy", "PATH": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("numpy (")
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"GPUBP_BLAS": "fast", "PATH": ""})
    assert "GPUBP_BLAS: expected auto, mkl or numpy, got 'fast'" in bad.stderr


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-6), (np.float64, 1e-15)])
def test_axpby_updates_in_place(rng, dtype, rtol):
    x = rng.normal(size=(6, 5)).astype(dtype)
    for y in (rng.normal(size=(6, 5)).astype(dtype), rng.normal(size=(5, 6)).astype(dtype).T):
        want = -0.3 * x.astype(np.float64) + 0.9 * y
        blas.axpby(-0.3, x, 0.9, y)  # the transposed y takes NumPy's path
        np.testing.assert_allclose(y, want, rtol=rtol, atol=rtol)

"""gpubp.cpu_kernels equals float64 references on every layout it takes or hands on,
with MKL's vector math and without it."""

import copy
import tracemalloc
import warnings

import numpy as np
import pytest

import gpubp
from gpubp import blas, blas_choice, cpu_kernels, ops
from gpubp.step import Workspace, make_stepper

TOL = {np.float32: 3e-7, np.float64: 1e-15}


class CountingLibrary:
    """MKL's library, counting the calls of each VML function gpubp makes."""

    def __init__(self, lib):
        self.lib, self.calls = lib, {}

    def __getattr__(self, name):
        fn = getattr(self.lib, name)
        if not name.startswith(("vs", "vd")):
            return fn

        def counted(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args)
        return counted


@pytest.fixture(params=["mkl", "no-mkl"])
def vml(request, monkeypatch):
    """Runs a test with VML chosen (skipped where MKL is missing; the library counts VML
    calls) and with NumPy's vector math (None)."""
    if request.param == "no-mkl":
        monkeypatch.setattr(blas, "vml_library", lambda size: None)
        return None
    if "mkl" not in blas.installed():
        pytest.skip("MKL is not installed")
    mkl = copy.copy(blas.library("mkl"))
    mkl.lib = counting = CountingLibrary(mkl.lib)
    monkeypatch.setattr(blas, "vml_library", lambda size: mkl)
    return counting


def sigmoid64(x):
    x = np.asarray(x, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", "CF")
def test_bias_sigmoid_matches_the_sigmoid_in_float64(rng, vml, dtype, order):
    z = np.array(rng.normal(size=(37, 53)) * 30, dtype, order=order)
    z[0, :6] = [-1e4, 1e4, np.inf, -np.inf, np.nan, -88.0]
    bias = rng.normal(size=53).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = cpu_kernels.bias_sigmoid(z, bias)
    want = sigmoid64(z.astype(np.float64) + bias)
    assert got.dtype == dtype and got.flags.f_contiguous == (order == "F")
    np.testing.assert_allclose(got, want, rtol=4 * TOL[dtype], atol=TOL[dtype])
    assert np.array_equal(got[0, :5], [0, 1, 1, 0, np.nan], equal_nan=True)
    if vml is not None:  # the exponential and the reciprocal were VML's
        prefix = "vs" if dtype == np.float32 else "vd"
        assert vml.calls == {prefix + "Exp": 1, prefix + "Inv": 1}


def test_vml_is_not_given_more_values_than_its_32_bit_count_holds(rng, vml, monkeypatch):
    monkeypatch.setattr(blas, "MAX_INT", 100)
    z, bias = rng.normal(size=(11, 10)).astype(np.float32), rng.normal(size=10).astype(np.float32)
    got = cpu_kernels.bias_sigmoid(z, bias)
    np.testing.assert_allclose(got, sigmoid64(z.astype(np.float64) + bias), rtol=1e-6)
    assert vml is None or vml.calls == {}
    cpu_kernels.bias_sigmoid(z[:10], bias)
    assert vml is None or vml.calls == {"vsExp": 1, "vsInv": 1}


@pytest.mark.parametrize("out_order", ["same", "C", "F", "in_place", "strided"])
def test_bias_sigmoid_writes_out_on_any_layout(rng, vml, out_order):
    z = np.asfortranarray(rng.normal(size=(9, 12)).astype(np.float32))
    bias = rng.normal(size=12).astype(np.float32)
    want = sigmoid64(z.astype(np.float64) + bias)
    out = {"same": np.empty_like(z), "C": np.empty((9, 12), np.float32),
           "F": np.empty((9, 12), np.float32, order="F"), "in_place": z,
           "strided": np.empty((9, 24), np.float32)[:, ::2]}[out_order]
    assert cpu_kernels.bias_sigmoid(z, bias, out=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bias_dtype", [np.float64, np.uint8, np.bool_, np.int64])
def test_bias_sigmoid_of_mixed_dtypes_follows_the_reference(rng, vml, bias_dtype):
    z = rng.normal(size=(4, 5)).astype(np.float32)
    bias = np.array([0, 1, 2, 1, 0]).astype(bias_dtype)
    want = ops.bias_sigmoid(z, bias)
    got = cpu_kernels.bias_sigmoid(z, bias)
    assert got.dtype == want.dtype == np.result_type(z, bias)
    np.testing.assert_allclose(want, sigmoid64(z.astype(np.float64) + bias.astype(np.float64)),
                               rtol=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", "CF")
@pytest.mark.parametrize("block_values", [64, cpu_kernels.BLOCK_VALUES])
def test_sigmoid_backward_and_bias_gradient_in_blocks(rng, monkeypatch, dtype, order, block_values):
    monkeypatch.setattr(cpu_kernels, "BLOCK_VALUES", block_values)  # 64: blocks of 9 columns
    a = np.array(sigmoid64(rng.normal(size=(7, 40)) * 3), dtype, order=order)
    grad_a = np.array(rng.normal(size=(7, 40)), dtype, order=order)
    want = grad_a.astype(np.float64) * a * (1 - a.astype(np.float64))
    bias_grad = np.full(40, np.nan, dtype)
    out = cpu_kernels.sigmoid_backward(grad_a, a, out=grad_a, bias_grad=bias_grad)
    assert out is grad_a
    np.testing.assert_allclose(out, want, rtol=4 * TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(bias_grad, want.sum(axis=0), rtol=20 * TOL[dtype],
                               atol=20 * TOL[dtype])


def test_sigmoid_backward_into_an_overlapping_out_equals_the_reference(rng, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "BLOCK_VALUES", 64)
    memory = np.asfortranarray(rng.normal(size=(7, 41)).astype(np.float32))
    a = np.asfortranarray(rng.random((7, 40)).astype(np.float32))
    want = ops.sigmoid_backward(memory[:, :40].copy(), a)
    got = cpu_kernels.sigmoid_backward(memory[:, :40], a, out=memory[:, 1:])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sigmoid_backward_without_out_keeps_the_layout(rng):
    a = np.asfortranarray(sigmoid64(rng.normal(size=(5, 6))).astype(np.float32))
    grad_a = rng.normal(size=(5, 6)).astype(np.float32)
    got = cpu_kernels.sigmoid_backward(grad_a, a)
    assert got.flags.f_contiguous and got is not grad_a
    np.testing.assert_allclose(got, grad_a * a * (1 - a), rtol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros(7, np.float32), np.zeros((1, 6), np.float32)])
def test_a_misshapen_bias_gradient_is_refused_like_the_reference(rng, bad):
    a = np.asfortranarray(rng.random((5, 6)).astype(np.float32))
    grad_a = np.asfortranarray(rng.normal(size=(5, 6)).astype(np.float32))
    with pytest.raises(ValueError) as want:
        ops.sigmoid_backward(grad_a.copy(), a, bias_grad=bad)
    with pytest.raises(ValueError) as got:
        cpu_kernels.sigmoid_backward(grad_a.copy(), a, bias_grad=bad)
    assert type(got.value) is type(want.value)


def test_the_numpy_step_uses_these_functions_and_column_major_buffers():
    net = gpubp.MLP((6, 5, 4, 3), backend="numpy", seed=0)
    assert net._ops is cpu_kernels
    work = Workspace(net, 8, (), np.int64)
    assert all(x.flags.f_contiguous and not x.flags.c_contiguous
               for x in work.activations + work.deltas)


@pytest.mark.parametrize("dtype,rtol", [("float32", 2e-5), ("float64", 1e-12)])
def test_a_step_equals_the_references_row_major_step(rng, vml, dtype, rtol):
    """The NumPy stepper (these functions, column-major buffers, gpubp.blas) against
    loss_and_grads on gpubp.ops with row-major temporaries, then SGD.step."""
    X = rng.normal(size=(33, 20))
    y = rng.integers(0, 10, 33)
    fast = gpubp.MLP((20, 31, 17, 10), backend="numpy", dtype=dtype, seed=3)
    reference = gpubp.MLP((20, 31, 17, 10), backend="numpy", dtype=dtype, seed=3)
    reference._ops = ops
    stepper = make_stepper(fast, gpubp.SGD(0.1, momentum=0.5), fast.prepare_features(X),
                           fast.prepare_targets(y, 33), batch_size=33)
    stepper.begin_epoch(np.arange(33), 0.1)
    stepper.step(0)
    want_loss, want_grads = reference.loss_and_grads(X, y)
    gpubp.SGD(0.1, momentum=0.5).step(reference.parameters(),
                                      [g for pair in want_grads for g in pair])
    assert stepper.finish_epoch() / 33 == pytest.approx(want_loss, rel=rtol)
    for got, want in zip(fast.parameters(), reference.parameters()):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol)
    if vml is not None and dtype == "float32":  # the hidden layers' σ ran on VML
        assert vml.calls == {"vsExp": 2, "vsInv": 2}


def test_vml_runs_only_where_mkl_runs_the_products_and_was_measured_faster(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(blas.ENV_VAR, raising=False)
    blas.reset()
    try:
        assert blas.vml_library(1 << 20) is None  # NumPy's library runs the products
        if "mkl" not in blas.installed():
            return
        with blas.forced("mkl"):  # forced: VML, as before the choice existed
            assert blas.vml_library(1 << 20) is blas.library("mkl")
            assert blas.vml_library(blas.VML_MIN_VALUES - 1) is None
        state = blas._state
        state.active = blas.library("mkl")  # as if MKL had been chosen for the GEMMs
        for faster, want in ((False, None), (True, blas.library("mkl"))):
            state._chooser = blas_choice.Chooser(
                measure_gemms=None, cache=blas_choice.Cache(tmp_path / f"{faster}.json", {}),
                measure_vector_math=lambda size, f=faster: {"vml": [1.0 if f else 2.0] * 3,
                                                             "numpy": [1.5] * 3})
            assert blas.vml_library(1 << 20) is want
    finally:
        blas.reset()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", "FC")
def test_sigmoid_backward_with_scratch_allocates_nothing_and_matches_bit_for_bit(rng, monkeypatch,
                                                                                dtype, order):
    """Blocks of 20 columns (column-major) or of 80 rows (row-major), each equal bit for bit
    to the reference's whole-array arithmetic, bias gradient included."""
    monkeypatch.setattr(cpu_kernels, "BLOCK_VALUES", 4000)
    a = np.asarray(sigmoid64(rng.normal(size=(200, 50)) * 3).astype(dtype), order=order)
    grad_a = np.asarray(rng.normal(size=(200, 50)).astype(dtype), order=order)
    want_db = np.empty(50, dtype)
    want = ops.sigmoid_backward(grad_a.copy(order=order), a, bias_grad=want_db)
    scratch = np.empty(4000, dtype)
    got_db = np.empty(50, dtype)
    got = grad_a.copy(order=order)
    cpu_kernels.sigmoid_backward(got, a, out=got, bias_grad=got_db, scratch=scratch)  # warm
    got[...] = grad_a
    tracemalloc.start()
    cpu_kernels.sigmoid_backward(got, a, out=got, bias_grad=got_db, scratch=scratch)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got.tobytes() == want.tobytes() and got_db.tobytes() == want_db.tobytes()
    assert peak < 4000 * a.itemsize // 4  # a few views, not a block's a(1 − a)
    small = np.empty(10, dtype)  # too small: ignored, still correct
    np.testing.assert_array_equal(cpu_kernels.sigmoid_backward(grad_a, a, scratch=small), want)

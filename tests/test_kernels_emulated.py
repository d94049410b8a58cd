"""The CUDA kernels' logic on the CPU: gpubp.cuda_kernels' own wrappers launch the .cu
code built by g++ under tests/cuda_emulation.h, one host thread per CUDA thread, and
every output is held to the float64 references in gpubp.ops.

This checks indexing, paths, reductions, ignore_index, in-place writes and flags with no
GPU. It does not check NVRTC's code or speed: tests/test_cuda_kernels.py does, on a GPU.
"""

import sys
from types import SimpleNamespace

import numpy as np
import pytest

import gpubp
from gpubp import cuda_kernels, ops
from gpubp.errors import DataError

from cuda_emulator import Emulator, compiler, device, fake_cupy

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs g++ to build the emulation")

TOLERANCE = {np.float32: 3e-6, np.float64: 1e-13}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return Emulator(tmp_path_factory.mktemp("emulated_kernels"))


@pytest.fixture
def kernels(emulator, monkeypatch):
    """gpubp.cuda_kernels, launching the emulated kernels on host arrays."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    monkeypatch.setattr(cuda_kernels, "_function", emulator.function)
    flag, ticket = device(np.zeros(1, np.int32)), device(np.zeros(1, np.uint32))
    monkeypatch.setattr(cuda_kernels, "_state", lambda: (flag, ticket, 2))  # 2 "SMs"
    emulator.launched.clear()
    return SimpleNamespace(launched=emulator.launched, ticket=ticket)


def random_logits(rng, rows, cols, dtype):
    logits = rng.standard_normal((rows, cols)) * 2
    logits[np.arange(rows), rng.integers(0, cols, rows)] *= 20  # far from uniform
    return logits.astype(dtype)


def assert_close(got, want, dtype, scale=1.0):
    got = np.asarray(got, np.float64)
    assert not np.isnan(got).any(), "an output element was never written"
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def reference(logits, targets, scale=1.0, **kwargs):
    targets = np.asarray(targets)
    if targets.ndim == 2:
        targets = targets.astype(np.float64)
    return ops.softmax_cross_entropy(np.asarray(logits, np.float64), targets, scale, **kwargs)


CASES = [  # (rows, cols, dtype, path)
    (5, 1, np.float32, "small"), (9, 10, np.float32, "small"), (3, 256, np.float64, "small"),
    (4, 257, np.float32, "row"), (3, 1000, np.float64, "row"), (2, 4099, np.float32, "row"),
    (2, 9000, np.float64, "split"), (2, 33000, np.float32, "split"),
]


@pytest.mark.parametrize("rows,cols,dtype,path", CASES)
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_labels_per_row_and_gradient_in_place(kernels, rng, rows, cols, dtype, path, label_dtype):
    assert cuda_kernels.xent_path(dtype, cols) == path
    logits = random_logits(rng, rows, cols, dtype)
    labels = rng.integers(0, cols, rows).astype(label_dtype)
    want_loss, want_grad = reference(logits, labels, 0.5)
    buffer = device(logits.copy())
    loss, grad = cuda_kernels.softmax_cross_entropy(buffer, device(labels), 0.5, out=buffer)
    assert grad is buffer and loss.dtype == dtype
    assert_close(loss, want_loss, dtype)
    assert_close(grad, want_grad, dtype, 0.5)
    assert kernels.launched[0].startswith(f"xent_{'partial' if path == 'split' else path}")


def rows_of_any_sum(rng, rows, cols):
    """Target rows summing to 1 (the first one-hot), 0.5, 2.7, 0, 1, ..., zeros inside."""
    targets = rng.dirichlet(np.ones(cols), size=rows)
    targets[:, 1::4] = 0
    targets[0] = 0
    targets[0, -1] = 1
    targets *= (np.resize([1.0, 0.5, 2.7, 0.0], rows) / targets.sum(axis=1))[:, None]
    return targets


@pytest.mark.parametrize("rows,cols,dtype,path", CASES)
def test_dense_targets_of_any_row_sum_and_the_mean(kernels, rng, rows, cols, dtype, path):
    # The gradient is (P·Σt − T)·scale: every path needs the row's target sum first.
    logits = random_logits(rng, rows, cols, dtype)
    targets = rows_of_any_sum(rng, rows, cols).astype(dtype)
    grad = device(np.full_like(logits, np.nan))
    mean, _ = cuda_kernels.softmax_cross_entropy(device(logits), device(targets), 0.25,
                                                 reduction="mean", out=grad)
    want_mean, want_grad = reference(logits, targets, 0.25, reduction="mean")
    assert mean.shape == ()
    assert_close(mean, want_mean, dtype)
    assert_close(grad, want_grad, dtype, 0.25)
    assert kernels.ticket[0] == 0  # the last block reset it for the next launch


def test_integer_target_rows_are_a_type_error_before_any_launch(kernels):
    with pytest.raises(TypeError, match=r"^targets: target rows \(B, C\) must be floating"):
        cuda_kernels.softmax_cross_entropy(device(np.zeros((2, 3), np.float32)),
                                           device(np.eye(3, dtype=np.int64)[[0, 2]]))
    assert kernels.launched == []


@pytest.mark.parametrize("rows,cols,dtype,path", CASES)
def test_ignore_index_and_minus_infinity(kernels, rng, rows, cols, dtype, path):
    rows = max(rows, 3)
    logits = random_logits(rng, rows, cols, dtype)
    logits[:, 1::3] = -np.inf
    labels = 3 * rng.integers(0, (cols + 2) // 3, rows)  # never on a −inf column
    labels[1] = -7
    grad = device(np.full_like(logits, np.nan))
    rows_loss, _ = cuda_kernels.softmax_cross_entropy(device(logits), device(labels), 1.0,
                                                      ignore_index=-7, out=grad)
    mean, _ = cuda_kernels.softmax_cross_entropy(device(logits), device(labels), 1.0,
                                                 ignore_index=-7, reduction="mean")
    with np.errstate(invalid="ignore"):
        want_rows, want_grad = reference(logits, labels, ignore_index=-7)
    assert_close(rows_loss, want_rows, dtype)
    assert_close(grad, want_grad, dtype)
    assert rows_loss[1] == 0 and np.all(np.asarray(grad)[1] == 0)
    assert_close(mean, want_rows[[0] + list(range(2, rows))].mean(), dtype)
    everything_ignored, _ = cuda_kernels.softmax_cross_entropy(
        device(logits), device(np.full(rows, -7)), ignore_index=-7, reduction="mean")
    assert everything_ignored == 0


@pytest.mark.parametrize("cols", [10, 1000, 9000])
def test_bad_labels_give_nan_rows_and_raise_later(kernels, rng, cols):
    logits = random_logits(rng, 3, cols, np.float64)
    loss, grad = cuda_kernels.softmax_cross_entropy(device(logits), device(np.array([0, cols, -1])))
    assert np.isfinite(loss[0]) and np.isnan(loss[1]) and np.isnan(loss[2])
    assert np.isfinite(grad[0]).all() and np.isnan(grad[1:]).all()
    with pytest.raises(DataError, match="^targets: a label outside"):
        cuda_kernels.raise_on_bad_labels()
    cuda_kernels.raise_on_bad_labels()


def test_loss_alone_writes_no_gradient(kernels, rng):
    logits = random_logits(rng, 4, 300, np.float32)
    loss, grad = cuda_kernels.softmax_cross_entropy(device(logits), device(np.arange(4)),
                                                    grad=False)
    assert grad is None
    assert_close(loss, reference(logits, np.arange(4))[0], np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 8), (5, 33), (40, 20)])
def test_sigmoid_kernels(kernels, rng, dtype, shape):
    z = (rng.normal(size=shape) * 10).astype(dtype)
    z.flat[0] = -1e4
    bias = rng.normal(size=shape[1]).astype(dtype)
    a = cuda_kernels.bias_sigmoid(device(z), device(bias), out=device(np.full_like(z, np.nan)))
    assert_close(a, ops.sigmoid(z.astype(np.float64) + bias), dtype, np.finfo(dtype).tiny)
    g = rng.normal(size=shape).astype(dtype)
    want = g.astype(np.float64) * a * (1 - a.astype(np.float64))
    assert_close(cuda_kernels.sigmoid_backward(device(g), a), want, dtype)
    bias_grad = device(np.full(shape[1], np.nan, dtype))
    in_place = device(g.copy())
    assert cuda_kernels.sigmoid_backward(in_place, a, out=in_place, bias_grad=bias_grad) is in_place
    assert_close(in_place, want, dtype)
    assert_close(bias_grad, want.sum(axis=0), dtype, shape[0])


class EmulatedOps:
    """cuda_kernels' functions on host arrays (viewed in place as device arrays)."""

    @staticmethod
    def bias_sigmoid(z, bias, out=None):
        return cuda_kernels.bias_sigmoid(device(z), device(bias), out=device(out))

    @staticmethod
    def sigmoid_backward(grad_a, a, out=None, bias_grad=None):
        return cuda_kernels.sigmoid_backward(device(grad_a), device(a), out=device(out),
                                             bias_grad=None if bias_grad is None else device(bias_grad))

    @staticmethod
    def softmax_cross_entropy(logits, targets, scale=1.0, **kwargs):
        if kwargs.get("out") is not None:
            kwargs["out"] = device(kwargs["out"])
        return cuda_kernels.softmax_cross_entropy(device(logits), device(targets), scale, **kwargs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_training_step_through_the_kernels_matches_the_references(kernels, rng, dtype):
    sizes = (20, 33, 17, 10)
    X = rng.normal(size=(9, 20))
    y = rng.integers(0, 10, 9)
    reference_net = gpubp.MLP(sizes, backend="numpy", dtype=dtype, seed=1)
    emulated_net = gpubp.MLP(sizes, backend="numpy", dtype=dtype, seed=1)
    emulated_net._ops = EmulatedOps
    want_loss, want_grads = reference_net.loss_and_grads(X, y)
    loss, grads = emulated_net.loss_and_grads(X, y)
    tol = TOLERANCE[np.dtype(dtype).type] * 10
    assert loss == pytest.approx(want_loss, rel=tol)
    for got, want in zip([g for p in grads for g in p], [g for p in want_grads for g in p]):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert {"bias_sigmoid", "xent_small", "sigmoid_backward_dbias"} <= {
        name.rsplit("_", 2)[0] if name.startswith("bias") else name.rsplit("_", 1)[0]
        for name in kernels.launched}

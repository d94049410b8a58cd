"""The CUDA kernels' logic on the CPU: gpubp.cuda.kernels' own wrappers launch the .cu
code built by g++ under tests/cuda_emulation.h, one host thread per CUDA thread, and
every output is held to the float64 references in gpubp.ops (and gpubp.optim.SGD).

This checks indexing, paths, reductions and their last-block tickets, ignore_index,
in-place writes, flags, the scratch's reuse (no allocation after a warm-up) and a whole
training step's launches, with no GPU. It does not check NVRTC's code or speed:
tests/test_cuda_kernels.py does, on a GPU.
"""

import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest

import gpubp
from gpubp import ops, optim
from gpubp.cuda import kernels as cuda_kernels
from gpubp.errors import DataError

from cuda_emulator import Emulator, compiler, device, fake_cupy

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs g++ to build the emulation")

TOLERANCE = {np.float32: 3e-6, np.float64: 1e-13}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return Emulator(tmp_path_factory.mktemp("emulated_kernels"))


@pytest.fixture
def kernels(emulator, monkeypatch):
    """gpubp.cuda.kernels, launching the emulated kernels on host arrays, on 2 "SMs"."""
    cupy = fake_cupy()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(cuda_kernels, "_function", emulator.function)
    monkeypatch.setattr(cuda_kernels, "_sm_count", lambda: 2)
    monkeypatch.setattr(cuda_kernels, "_default_scratch", {})
    emulator.launched.clear()
    return SimpleNamespace(launched=emulator.launched, cupy=cupy,
                           scratch=cuda_kernels.default_scratch())


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


FIRST_LAUNCH = {"small": "xent_small", "row": "xent_row_labels", "split": "xent_partial"}
CASES = [  # (rows, cols, dtype, path)
    (5, 1, np.float32, "small"), (9, 10, np.float32, "small"), (3, 256, np.float64, "small"),
    (4, 257, np.float32, "row"), (3, 1000, np.float64, "row"), (2, 4099, np.float32, "row"),
    (2, 8200, np.float64, "split"),
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
    assert kernels.launched[0].startswith(FIRST_LAUNCH[path])


def test_float32_rows_past_32768_columns_take_the_split_path(kernels, rng):
    logits = random_logits(rng, 1, 32769, np.float32)
    want_loss, want_grad = reference(logits, [32768])
    loss, grad = cuda_kernels.softmax_cross_entropy(device(logits), device(np.array([32768])))
    assert kernels.launched == ["xent_partial_f32", "xent_finish_f32"]
    assert_close(loss, want_loss, np.float32)
    assert_close(grad, want_grad, np.float32)


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
    assert kernels.scratch.buffer("xent_ticket", 1, np.uint32)[0] == 0  # reset by the last block
    if path == "row":
        assert kernels.launched[0].startswith("xent_row_dense")


def test_dense_targets_in_place_read_each_logit_before_its_gradient(kernels, rng):
    logits = random_logits(rng, 3, 700, np.float32)
    targets = rows_of_any_sum(rng, 3, 700).astype(np.float32)
    want_loss, want_grad = reference(logits, targets, 0.5)
    buffer = device(logits.copy())
    loss, _ = cuda_kernels.softmax_cross_entropy(buffer, device(targets), 0.5, out=buffer)
    assert_close(loss, want_loss, np.float32)
    assert_close(buffer, want_grad, np.float32, 0.5)


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
def test_bad_labels_give_nan_rows_and_raise_at_the_check(kernels, rng, cols):
    logits = random_logits(rng, 3, cols, np.float64)
    loss, grad = cuda_kernels.softmax_cross_entropy(device(logits), device(np.array([0, cols, -1])))
    assert np.isfinite(loss[0]) and np.isnan(loss[1]) and np.isnan(loss[2])
    assert np.isfinite(grad[0]).all() and np.isnan(grad[1:]).all()
    with pytest.raises(DataError, match="^targets: a label outside"):
        cuda_kernels.check_bad_labels()
    cuda_kernels.check_bad_labels()  # reset


def test_each_scratch_has_its_own_flag(kernels, rng):
    mine = cuda_kernels.KernelScratch()
    logits = device(random_logits(rng, 2, 10, np.float32))
    cuda_kernels.softmax_cross_entropy(logits, device(np.array([0, 10])), scratch=mine)
    cuda_kernels.check_bad_labels()  # the default scratch saw nothing
    with pytest.raises(DataError):
        cuda_kernels.check_bad_labels(mine)


def test_loss_alone_writes_no_gradient(kernels, rng):
    logits = random_logits(rng, 4, 300, np.float32)
    loss, grad = cuda_kernels.softmax_cross_entropy(device(logits), device(np.arange(4)),
                                                    grad=False)
    assert grad is None
    assert_close(loss, reference(logits, np.arange(4))[0], np.float32)


# ---- the output layer's step: bias in, bias gradient and loss sum out ------------------------

BIAS_CASES = [  # (rows, cols, dtype, kind): small with 2–3 blocks, row (+ column_sum), split
    (300, 10, np.float32, "labels"), (260, 3, np.float64, "rows"), (5, 300, np.float32, "labels"),
    (3, 300, np.float64, "rows"), (3, 257, np.float32, "labels"), (2, 8200, np.float64, "labels"),
    (2, 8200, np.float64, "rows"),
]


@pytest.mark.parametrize("rows,cols,dtype,kind", BIAS_CASES)
def test_bias_softmax_cross_entropy_matches_the_reference(kernels, rng, rows, cols, dtype, kind):
    z = random_logits(rng, rows, cols, dtype)
    bias = rng.normal(size=cols).astype(dtype)
    if kind == "labels":
        targets = rng.integers(0, cols, rows)
        targets[1] = -100
        ignore_index = -100
    else:
        targets, ignore_index = rows_of_any_sum(rng, rows, cols).astype(dtype), None
    scale = 1.0 / rows
    want_sum = np.array([0.25, 1.0])
    want_db = np.empty(cols)
    # db^L on the split path is the row path's column_sum launch: left out for time.
    split = cuda_kernels.xent_path(dtype, cols) == "split"
    want_grad = ops.bias_softmax_cross_entropy(
        z.astype(np.float64), bias.astype(np.float64), targets, scale, ignore_index=ignore_index,
        bias_grad=want_db, loss_sum=want_sum)

    buffer, db = device(z.copy()), device(np.full(cols, np.nan, dtype))
    loss_sum = device(np.array([0.25, 1.0]))
    grad = cuda_kernels.bias_softmax_cross_entropy(
        buffer, device(bias), device(targets), scale, ignore_index=ignore_index, out=buffer,
        bias_grad=None if split else db, loss_sum=loss_sum)
    assert grad is buffer
    assert_close(grad, want_grad, dtype, scale)
    if not split:
        assert_close(db, want_db, dtype)
    assert_close(loss_sum, want_sum, dtype, rows)
    assert kernels.scratch.buffer("xent_ticket", 1, np.uint32)[0] == 0
    assert (kernels.scratch.buffer("column_tickets", 1, np.uint32) == 0).all()
    row = cuda_kernels.xent_path(dtype, cols) == "row"
    assert any(name.startswith("column_sum") for name in kernels.launched) == row


def test_the_bias_reference_is_the_cross_entropy_of_z_plus_b(rng):
    z, bias = rng.normal(size=(6, 5)), rng.normal(size=5)
    labels = np.array([0, 4, -1, 2, 2, 1])
    loss_sum, db = np.array([1.0, 2.0]), np.empty(5)
    grad = ops.bias_softmax_cross_entropy(z, bias, labels, 0.5, ignore_index=-1, out=z.copy(),
                                          bias_grad=db, loss_sum=loss_sum)
    want_loss, want_grad = ops.softmax_cross_entropy(z + bias, labels, 0.5, ignore_index=-1)
    np.testing.assert_array_equal(grad, want_grad)
    np.testing.assert_array_equal(db, want_grad.sum(axis=0))
    assert loss_sum[0] == pytest.approx(1.0 + want_loss.sum()) and loss_sum[1] == 2.0 + 5


def test_the_loss_sum_accumulates_in_launch_order_and_is_taken(kernels, rng):
    z, bias = random_logits(rng, 300, 10, np.float32), np.zeros(10, np.float32)
    labels = rng.integers(0, 10, 300)
    scratch = kernels.scratch
    for _ in range(2):
        cuda_kernels.bias_softmax_cross_entropy(device(z), device(bias), device(labels),
                                                loss_sum=scratch.loss_sum, scratch=scratch)
    total, count = scratch.take_loss()
    assert count == 600
    assert total == pytest.approx(2 * reference(z, labels)[0].sum(), rel=1e-6)
    assert scratch.take_loss() == (0.0, 0.0)


# ---- the hidden layers -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 8), (5, 33), (80, 132)])
def test_sigmoid_kernels(kernels, rng, monkeypatch, dtype, shape):
    # (80, 132) on one "SM": 2 or 3 column tiles of 2 slabs (64 and 16 rows), so the walkers
    # run the unrolled 4-row step and the tail, and the last slab block adds the partials.
    monkeypatch.setattr(cuda_kernels, "_sm_count", lambda: 1)
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
    assert (kernels.scratch.buffer("column_tickets", 1, np.uint32) == 0).all()
    assert kernels.launched[-1].startswith("sigmoid_backward_dbias")


def test_sigmoid_backward_refuses_out_overlapping_a(kernels):
    a = device(np.full((4, 8), 0.5, np.float32))
    with pytest.raises(ValueError, match="^out: must not overlap a"):
        cuda_kernels.sigmoid_backward(device(np.ones((4, 8), np.float32)), a, out=a)


# ---- the batch and the update --------------------------------------------------------------

@pytest.mark.parametrize("dtype,cols,unit", [(np.float32, 12, 16), (np.float64, 3, 8),
                                             (np.float32, 5, 4)])
@pytest.mark.parametrize("target_kind", ["int64", "int32", "rows"])
def test_gather_rows_matches_the_reference(kernels, rng, dtype, cols, unit, target_kind):
    n, batch = 37, 11
    X = rng.normal(size=(n, cols)).astype(dtype)
    targets = (rng.normal(size=(n, 4)).astype(dtype) if target_kind == "rows"
               else rng.integers(0, 10, n).astype(target_kind))
    order = rng.permutation(n)
    out, t_out = np.full((batch, cols), np.nan, dtype), np.zeros((batch, *targets.shape[1:]),
                                                                  targets.dtype)
    want = ops.gather_rows(X, order, 20, out.copy(), targets, t_out.copy())
    offset = device(np.array([20]))
    got = cuda_kernels.gather_rows(device(X), device(order), offset, device(out), device(targets),
                                   device(t_out))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert kernels.launched == [f"gather_rows_b{unit}"]
    assert offset[0] == 20  # the gather reads the offset; multi_sgd advances it


def test_gather_rows_flags_positions_and_indices_out_of_range(kernels, rng):
    X = device(np.ones((6, 4), np.float32))
    labels = device(np.arange(6))
    out, t_out = device(np.zeros((3, 4), np.float32)), device(np.zeros(3, np.int64))
    cuda_kernels.gather_rows(X, device(np.array([0, 6, 1])), device(np.array([1])), out,
                             labels, t_out)  # index 6 ≥ N, and position 3 past the order
    assert np.isnan(out[[0, 2]]).all() and (out[1] == 1).all()
    assert list(t_out) == [-1, 1, -1]
    with pytest.raises(DataError, match="^order: gather_rows met"):
        cuda_kernels.check_bad_labels()
    cuda_kernels.check_bad_labels()
    with pytest.raises(DataError, match="^offset: rows 2..5 of an order of 4"):
        ops.gather_rows(np.ones((6, 4)), np.array([0, 5, 1, 2]), 2, np.zeros((3, 4)))


def sgd_problem(rng, dtype, big=(65, 64)):
    """Parameters of odd sizes: one spans two multi_sgd chunks (4160 elements), one starts
    unaligned."""
    base = rng.normal(size=74).astype(dtype)
    params = [rng.normal(size=big).astype(dtype), rng.normal(size=73).astype(dtype),
              base[1:]]  # 4 or 8 bytes past a 16-byte boundary: the scalar path
    steps = [[rng.normal(size=p.shape).astype(dtype) for p in params] for _ in range(3)]
    return params, steps


@pytest.mark.parametrize("dtype,momentum,nesterov,weight_decay",
                         [(np.float32, 0.0, False, 1e-2), (np.float32, 0.9, False, 0.0),
                          (np.float64, 0.9, True, 1e-2)])
def test_multi_sgd_matches_sgd_step(kernels, rng, dtype, momentum, nesterov, weight_decay):
    params, steps = sgd_problem(rng, dtype)
    want = [p.copy() for p in params]
    reference_sgd = gpubp.SGD(0.1, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay)
    on_device = [device(p.copy()) for p in params]
    on_device[2] = device(np.concatenate([[0], params[2]]).astype(dtype))[1:]  # keep unaligned
    grads = [device(np.zeros_like(p)) for p in params]
    velocities = [device(np.full_like(p, np.nan)) for p in params] if momentum else None
    table = cuda_kernels.SGDTable(on_device, grads, velocities)
    assert table.n_chunks == sum(-(-p.size // table.chunk_elems) for p in params) > 3
    lr, first = device(np.array([0.1])), device(np.array([1], np.int32))
    offset = device(np.array([0]))
    for step in steps:
        reference_sgd.step(want, step)
        for g, s in zip(grads, step):
            g[...] = s
        cuda_kernels.multi_sgd(table, lr, first, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay, offset=offset, batch=32)
        assert first[0] == 0
    assert offset[0] == 3 * 32
    assert kernels.launched == [f"multi_sgd_{'f32' if dtype == np.float32 else 'f64'}"] * 3
    for got, p in zip(on_device, want):  # float32: a few roundings of each step apart
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(got, p, rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("momentum,nesterov,weight_decay",
                         [(0.0, False, 1e-2), (0.9, True, 1e-2)])
def test_the_optimizer_device_update_matches_sgd_step(kernels, rng, momentum, nesterov,
                                                      weight_decay):
    params, steps = sgd_problem(rng, np.float32, big=(7, 9))
    want = [p.copy() for p in params]
    reference_sgd = gpubp.SGD(0.1, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay)
    on_device = [device(p.copy()) for p in params]
    velocities = [device(np.empty_like(p)) for p in params]
    for k, step in enumerate(steps):
        reference_sgd.step(want, step)
        for p, g, v in zip(on_device, step, velocities):
            optim.device_update(p, device(g), v if momentum else None, 0.1, momentum,
                                weight_decay, nesterov, k == 0)
    for got, p in zip(on_device, want):
        np.testing.assert_allclose(got, p, rtol=4e-7, atol=4e-7)


# ---- no allocation after a warm-up, and a whole step's launches -------------------------------

def test_a_warm_wrapper_call_allocates_nothing(kernels, rng):
    scratch = cuda_kernels.KernelScratch()
    X, order = device(rng.normal(size=(50, 20)).astype(np.float32)), device(rng.permutation(50))
    y = device(rng.integers(0, 10, 50))
    Xb, yb, offset = device(np.empty((16, 20), np.float32)), device(np.empty(16, np.int64)), \
        device(np.array([0]))
    a, z = device(np.empty((16, 24), np.float32)), device(np.empty((16, 10), np.float32))
    b1, db1 = device(np.zeros(24, np.float32)), device(np.empty(24, np.float32))
    b2, db2 = device(np.zeros(10, np.float32)), device(np.empty(10, np.float32))
    loss = device(np.empty((), np.float32))
    table = cuda_kernels.SGDTable([b1, b2], [db1, db2])
    lr = device(np.array([0.1]))

    def calls():
        cuda_kernels.gather_rows(X, order, offset, Xb, y, yb, scratch=scratch)
        cuda_kernels.bias_sigmoid(a, b1, out=a)
        cuda_kernels.bias_softmax_cross_entropy(z, b2, yb, 1 / 16, out=z, bias_grad=db2,
                                                loss_sum=scratch.loss_sum, scratch=scratch)
        cuda_kernels.softmax_cross_entropy(z, yb, reduction="mean", out=z, loss_out=loss,
                                           scratch=scratch)
        cuda_kernels.sigmoid_backward(a, a.copy(), out=a, bias_grad=db1, scratch=scratch)
        cuda_kernels.multi_sgd(table, lr, scratch=scratch)

    calls()  # the warm-up grows the scratch's buffers
    kernels.cupy.allocations.clear()
    calls()
    assert kernels.cupy.allocations == []


def test_one_training_step_is_2L_plus_1_launches_and_matches_the_references(kernels, rng):
    """The step the workspace runs, from gather to update, for L = 3 weight layers."""
    sizes, batch, dtype = (20, 33, 17, 10), 9, np.float32
    X = rng.normal(size=(40, 20)).astype(dtype)
    y = rng.integers(0, 10, 40)
    order = rng.permutation(40)
    net = gpubp.MLP(sizes, backend="numpy", seed=1)
    want_loss, want_grads = net.loss_and_grads(X[order[9:18]], y[order[9:18]])
    reference_sgd = gpubp.SGD(0.5, momentum=0.9)
    want_params = [p.copy() for p in net.parameters()]
    reference_sgd.step(want_params, [g for pair in want_grads for g in pair])

    scratch = cuda_kernels.KernelScratch()
    params = [device(p.copy()) for p in net.parameters()]
    Ws, bs = params[0::2], params[1::2]
    grads = [device(np.empty_like(p)) for p in params]
    dWs, dbs = grads[0::2], grads[1::2]
    velocities = [device(np.empty_like(p)) for p in params]
    table = cuda_kernels.SGDTable(params, grads, velocities)
    Xd, yd, orderd = device(X), device(y), device(order)
    Xb, yb = device(np.empty((batch, 20), dtype)), device(np.empty(batch, np.int64))
    acts = [device(np.empty((batch, n), dtype)) for n in sizes[1:-1]]
    deltas = [device(np.empty((batch, n), dtype)) for n in sizes[1:-1]]
    logits = device(np.empty((batch, 10), dtype))
    offset, lr, first = device(np.array([9])), device(np.array([0.5])), \
        device(np.array([1], np.int32))

    with cuda_kernels.record_launches() as launches:
        cuda_kernels.gather_rows(Xd, orderd, offset, Xb, yd, yb, scratch=scratch)
        a = Xb
        for W, b, out in zip(Ws[:-1], bs[:-1], acts):  # GEMMs: NumPy here, cuBLAS on a GPU
            a = cuda_kernels.bias_sigmoid(np.matmul(a, W.T, out=out), b, out=out)
        np.matmul(a, Ws[-1].T, out=logits)
        delta = cuda_kernels.bias_softmax_cross_entropy(
            logits, bs[-1], yb, 1.0 / batch, out=logits, bias_grad=dbs[-1],
            loss_sum=scratch.loss_sum, scratch=scratch)
        inputs = [Xb] + acts
        for l in reversed(range(len(Ws))):
            np.matmul(delta.T, inputs[l], out=dWs[l])
            if l > 0:
                grad_a = np.matmul(delta, Ws[l], out=deltas[l - 1])
                delta = cuda_kernels.sigmoid_backward(grad_a, inputs[l], out=grad_a,
                                                      bias_grad=dbs[l - 1], scratch=scratch)
        cuda_kernels.multi_sgd(table, lr, first, momentum=0.9, offset=offset, batch=batch,
                               scratch=scratch)

    L = len(Ws)
    assert len(launches) == 2 * L + 1
    assert [n.name.split("_f32")[0] for n in launches] == (
        ["gather_rows_b16"] + ["bias_sigmoid"] * (L - 1) + ["xent_small"]
        + ["sigmoid_backward_dbias"] * (L - 1) + ["multi_sgd"])
    total, count = scratch.take_loss()
    assert count == batch and total / count == pytest.approx(want_loss, rel=1e-5)
    for got, want in zip(params, want_params):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    assert offset[0] == 2 * batch and first[0] == 0
    cuda_kernels.check_bad_labels(scratch)


def optional(a):
    return None if a is None else device(a)


class EmulatedOps:
    """gpubp.cuda.kernels' functions on host arrays (viewed in place as device arrays)."""

    @staticmethod
    def bias_sigmoid(z, bias, out=None):
        return cuda_kernels.bias_sigmoid(device(z), device(bias), out=optional(out))

    @staticmethod
    def sigmoid_backward(grad_a, a, out=None, bias_grad=None):
        return cuda_kernels.sigmoid_backward(device(grad_a), device(a), out=optional(out),
                                             bias_grad=optional(bias_grad))

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
    assert {"bias_sigmoid", "xent_small", "sigmoid_backward"} <= {
        re.sub(r"_f(32|64).*", "", name) for name in kernels.launched}

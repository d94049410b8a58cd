"""The CUDA kernels against their float64 references in gpubp.ops (and gpubp.optim.SGD).
Skipped without a device.

Outputs are poisoned with NaN before each launch, so an element a kernel never writes
fails. The references run in float64: on NumPy for small shapes, and for the largest ones
the same gpubp.ops code on CuPy float64 arrays, which keeps the check within minutes.
"""

import numpy as np
import pytest

import gpubp
from gpubp import ops
from gpubp.cuda import kernels as cuda_kernels
from gpubp.errors import DataError

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")

BATCHES = (1, 7, 4096)
CLASSES = (1, 2, 10, 1000, 32769, 262144)
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-11}


def random_logits(rng, rows, cols, dtype):
    logits = rng.standard_normal((rows, cols), dtype=np.float32) * 2
    hot = rng.integers(0, cols, size=max(1, rows // 2))
    logits[np.arange(hot.size), hot] *= 20  # a few large logits: far from uniform
    return cp.asarray(logits, dtype=dtype)


def poisoned_like(a):
    return cp.full_like(a, np.nan)


def poison_pool(*shapes_and_dtypes):
    """Leave NaN-filled blocks of these sizes in CuPy's pool, for the kernel's own outputs."""
    blocks = [cp.full(shape, np.nan, dtype) for shape, dtype in shapes_and_dtypes]
    del blocks


def reference(logits, targets, scale, **kwargs):
    """gpubp.ops in float64: on the host for small inputs, on the device for large ones."""
    if logits.size <= 2 ** 22:
        logits64, targets64 = cp.asnumpy(logits).astype(np.float64), cp.asnumpy(targets)
    else:
        logits64, targets64 = logits.astype(cp.float64), targets
    if targets64.ndim == 2:
        targets64 = targets64.astype(np.float64)
    return ops.softmax_cross_entropy(logits64, targets64, scale, **kwargs)


def assert_close(got, want, dtype, scale=1.0):
    """|got − want| ≤ tol·(|want| + scale) elementwise, compared where ``want`` lives."""
    xp = cp if isinstance(want, cp.ndarray) else np
    got = (got if xp is cp else cp.asnumpy(got)).astype(np.float64)
    assert not bool(xp.isnan(got).any()), "an output element was never written"
    tol = TOLERANCE[dtype]
    excess = xp.abs(got - want) - tol * (xp.abs(want) + scale)
    assert float(excess.max()) <= 0, f"max excess over tolerance {float(excess.max()):.3g}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols", CLASSES)
@pytest.mark.parametrize("rows", BATCHES)
def test_fused_softmax_xent_matches_the_reference(rng, rows, cols, dtype):
    if rows * cols > 2 ** 28 and dtype == np.float64:
        pytest.skip("float32 covers the largest shape")
    logits = random_logits(rng, rows, cols, dtype)
    labels = cp.asarray(rng.integers(0, cols, rows))
    scale = 1.0 / rows
    grad = poisoned_like(logits)
    poison_pool(((rows,), dtype))
    loss, got = cuda_kernels.softmax_cross_entropy(logits, labels, scale, out=grad)
    assert got is grad
    want_loss, want_grad = reference(logits, labels, scale)
    assert_close(loss, want_loss, dtype)
    assert_close(grad, want_grad, dtype, scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols", (3, 1000, 40000))
def test_dense_target_rows_of_any_sum(rng, cols, dtype):
    rows = 33
    logits = random_logits(rng, rows, cols, dtype)
    targets = rng.dirichlet(np.ones(cols), size=rows)
    targets[:, 1::4] = 0
    targets[0] = 0
    targets[0, 0] = 1  # a one-hot row among soft ones
    # Rows summing to 1, 0.5, 2.7 and 0: the gradient is (P·Σt − T)·scale.
    targets *= (np.resize([1.0, 0.5, 2.7, 0.0], rows) / targets.sum(axis=1))[:, None]
    targets = cp.asarray(targets, dtype=dtype)
    loss, grad = cuda_kernels.softmax_cross_entropy(logits, targets, 0.5,
                                                    out=poisoned_like(logits))
    want_loss, want_grad = reference(logits, targets, 0.5)
    assert_close(loss, want_loss, dtype)
    assert_close(grad, want_grad, dtype, 0.5)


@pytest.mark.parametrize("cols", (10, 1000, 40000))
@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
def test_ignore_index_and_the_mean_in_one_launch(rng, cols, label_dtype):
    rows = 300
    logits = random_logits(rng, rows, cols, np.float32)
    labels = rng.integers(0, cols, rows).astype(label_dtype)
    labels[::3] = -100
    labels = cp.asarray(labels)
    grad = poisoned_like(logits)
    poison_pool(((), np.float32))
    mean, _ = cuda_kernels.softmax_cross_entropy(logits, labels, 0.1, ignore_index=-100,
                                                 reduction="mean", out=grad)
    want_mean, want_grad = reference(logits, labels.astype(cp.int64), 0.1, ignore_index=-100,
                                     reduction="mean")
    assert mean.shape == ()
    assert_close(mean, want_mean, np.float32)
    assert_close(grad, want_grad, np.float32, 0.1)
    all_ignored, _ = cuda_kernels.softmax_cross_entropy(logits, cp.full(rows, -100, label_dtype),
                                                        ignore_index=-100, reduction="mean")
    assert float(all_ignored) == 0.0


@pytest.mark.parametrize("cols", (10, 1000, 40000))
def test_shift_invariance_and_minus_infinity(rng, cols):
    logits = random_logits(rng, 16, cols, np.float32)
    labels = cp.asarray(rng.integers(0, cols, 16))
    loss, grad = cuda_kernels.softmax_cross_entropy(logits, labels)
    shifted_loss, shifted_grad = cuda_kernels.softmax_cross_entropy(logits + 1e4, labels)
    # 1e4 + z is rounded to float32's spacing at 1e4 (~1e-3), so compare with that slack.
    np.testing.assert_allclose(cp.asnumpy(shifted_loss), cp.asnumpy(loss), atol=5e-3)
    np.testing.assert_allclose(cp.asnumpy(shifted_grad), cp.asnumpy(grad), atol=5e-3)
    with_inf = logits.copy()
    with_inf[:, 1::2] = -cp.inf
    labels = cp.zeros(16, cp.int64)  # column 0 stays finite
    loss, grad = cuda_kernels.softmax_cross_entropy(with_inf, labels)
    want_loss, want_grad = reference(with_inf, labels, 1.0)
    assert_close(loss, want_loss, np.float32)
    assert_close(grad, want_grad, np.float32)
    assert float(cp.abs(grad[:, 1::2]).max()) == 0.0


@pytest.mark.parametrize("cols", (10, 1000, 40000))
def test_equal_inputs_give_bit_identical_outputs(rng, cols):
    logits = random_logits(rng, 512, cols, np.float32)
    labels = cp.asarray(rng.integers(0, cols, 512))
    first = cuda_kernels.softmax_cross_entropy(logits, labels, 0.5, reduction="mean")
    for _ in range(3):
        again = cuda_kernels.softmax_cross_entropy(logits, labels, 0.5, reduction="mean")
        assert cp.asnumpy(again[0]).tobytes() == cp.asnumpy(first[0]).tobytes()
        assert cp.asnumpy(again[1]).tobytes() == cp.asnumpy(first[1]).tobytes()


@pytest.mark.parametrize("cols", (10, 1000, 40000))
def test_out_of_range_labels_are_flagged_never_read(rng, cols):
    logits = random_logits(rng, 4, cols, np.float32)
    loss, grad = cuda_kernels.softmax_cross_entropy(logits, cp.asarray([0, cols, -1, 1]))
    loss = cp.asnumpy(loss)
    assert np.isnan(loss[1]) and np.isnan(loss[2]) and np.isfinite(loss[[0, 3]]).all()
    assert bool(cp.isnan(grad[1]).all()) and bool(cp.isfinite(grad[0]).all())
    with pytest.raises(DataError, match="^targets: a label outside"):
        cuda_kernels.check_bad_labels()
    cuda_kernels.check_bad_labels()  # the flag was reset


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 10), (4096, 1024), (33, 1001), (5, 3),
                                   (65536, 800)])
def test_sigmoid_kernels_match_the_reference(rng, shape, dtype):
    z = cp.asarray(rng.normal(size=shape) * 10, dtype=dtype)
    z[0, 0] = -1e4
    bias = cp.asarray(rng.normal(size=shape[1]), dtype=dtype)
    a = cuda_kernels.bias_sigmoid(z, bias, out=poisoned_like(z))
    want = ops.sigmoid(cp.asnumpy(z).astype(np.float64) + cp.asnumpy(bias))
    assert_close(a, want, dtype, scale=np.finfo(dtype).tiny)

    g = cp.asarray(rng.normal(size=shape), dtype=dtype)
    a_host, g_host = cp.asnumpy(a).astype(np.float64), cp.asnumpy(g).astype(np.float64)
    want_delta = g_host * a_host * (1 - a_host)
    assert_close(cuda_kernels.sigmoid_backward(g, a, out=poisoned_like(g)), want_delta, dtype)
    bias_grad = cp.full(shape[1], np.nan, dtype)
    in_place = g.copy()
    delta = cuda_kernels.sigmoid_backward(in_place, a, out=in_place, bias_grad=bias_grad)
    assert delta is in_place
    assert_close(delta, want_delta, dtype)
    assert_close(bias_grad, want_delta.sum(axis=0), dtype, scale=shape[0])


def test_a_training_step_on_cupy_matches_numpy_in_float32(rng):
    sizes = (784, 300, 100, 10)
    cpu = gpubp.MLP(sizes, backend="numpy", seed=3)
    gpu = gpubp.MLP(sizes, backend="cupy", seed=3)
    assert gpu._ops is cuda_kernels
    X = rng.uniform(size=(256, 784)).astype(np.float32)
    y = rng.integers(0, 10, 256)
    for net in (cpu, gpu):
        optimizer = gpubp.SGD(0.1, momentum=0.9)
        for _ in range(3):
            loss, grads = net.loss_and_grads_prepared(net.prepare_features(X),
                                                      net.prepare_targets(y, 256))
            optimizer.step(net.parameters(), [g for pair in grads for g in pair])
        net.last_loss = float(loss)
    assert gpu.last_loss == pytest.approx(cpu.last_loss, rel=1e-5)
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        np.testing.assert_allclose(gpubp.to_numpy(q), p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum,nesterov,weight_decay",
                         [(0.0, False, 0.0), (0.0, False, 1e-2), (0.9, False, 0.0),
                          (0.9, True, 1e-2)])
def test_fused_sgd_update_matches_the_numpy_rule(rng, momentum, nesterov, weight_decay):
    params = [rng.normal(size=(5, 3)), rng.normal(size=3)]
    steps = [[rng.normal(size=p.shape) for p in params] for _ in range(3)]
    cpu = gpubp.SGD(0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    gpu = gpubp.SGD(0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    on_device = [cp.asarray(p) for p in params]
    for grads in steps:
        cpu.step(params, grads)
        gpu.step(on_device, [cp.asarray(g) for g in grads])
    for p, q in zip(params, on_device):
        np.testing.assert_allclose(cp.asnumpy(q), p, rtol=1e-12, atol=1e-14)


# ---- the step's kernels ----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows,cols", [(4096, 10), (33, 3), (300, 1000), (7, 40000)])
@pytest.mark.parametrize("kind", ["labels", "rows"])
def test_bias_softmax_cross_entropy_matches_the_reference(rng, dtype, rows, cols, kind):
    z = random_logits(rng, rows, cols, dtype)
    bias = cp.asarray(rng.normal(size=cols), dtype=dtype)
    if kind == "labels":
        targets = rng.integers(0, cols, rows)
        targets[::5] = -100
        ignore_index = -100
    else:
        targets = rng.dirichlet(np.ones(cols), size=rows) * 0.7
        ignore_index = None
    scale = 1.0 / rows
    want_sum, want_db = np.array([0.5, 2.0]), np.empty(cols)
    want_grad = ops.bias_softmax_cross_entropy(
        cp.asnumpy(z).astype(np.float64), cp.asnumpy(bias).astype(np.float64), targets, scale,
        ignore_index=ignore_index, bias_grad=want_db, loss_sum=want_sum)
    scratch = cuda_kernels.KernelScratch()
    grad, db = poisoned_like(z), cp.full(cols, np.nan, dtype)
    loss_sum = cp.asarray([0.5, 2.0])
    got = cuda_kernels.bias_softmax_cross_entropy(
        z, bias, cp.asarray(targets, dtype=dtype if kind == "rows" else None), scale,
        ignore_index=ignore_index, out=grad, bias_grad=db, loss_sum=loss_sum, scratch=scratch)
    assert got is grad
    assert_close(grad, want_grad, dtype, scale)
    assert_close(db, want_db, dtype, 1.0)
    assert_close(loss_sum, want_sum, dtype, rows)
    cuda_kernels.check_bad_labels(scratch)


@pytest.mark.parametrize("cols", (10, 1000))
def test_the_ticketed_sums_are_bit_identical_from_run_to_run(rng, cols):
    z = random_logits(rng, 4096, cols, np.float32)
    bias = cp.zeros(cols, cp.float32)
    labels = cp.asarray(rng.integers(0, cols, 4096))
    a = cp.asarray(rng.uniform(size=(4096, cols)), cp.float32)
    runs = []
    for _ in range(3):
        db, loss_sum, dbh = cp.empty(cols, cp.float32), cp.zeros(2), cp.empty(cols, cp.float32)
        grad = cuda_kernels.bias_softmax_cross_entropy(
            z, bias, labels, 1 / 4096, out=cp.empty_like(z), bias_grad=db, loss_sum=loss_sum)
        cuda_kernels.sigmoid_backward(grad, a, out=cp.empty_like(grad), bias_grad=dbh)
        runs.append(tuple(cp.asnumpy(x).tobytes() for x in (db, loss_sum, dbh)))
    assert runs.count(runs[0]) == 3


@pytest.mark.parametrize("dtype,cols", [(np.float32, 784), (np.float64, 3), (np.float32, 5)])
@pytest.mark.parametrize("target_kind", ["int64", "rows"])
def test_gather_rows_matches_the_reference(rng, dtype, cols, target_kind):
    n, batch = 60000, 4096
    X = rng.normal(size=(n, cols)).astype(dtype)
    targets = (rng.normal(size=(n, 10)).astype(dtype) if target_kind == "rows"
               else rng.integers(0, 10, n))
    order = rng.permutation(n)
    want = ops.gather_rows(X, order, 8192, np.empty((batch, cols), dtype), targets,
                           np.empty((batch, *targets.shape[1:]), targets.dtype))
    out = cp.full((batch, cols), np.nan, dtype)
    t_out = cp.zeros((batch, *targets.shape[1:]), targets.dtype)
    cuda_kernels.gather_rows(cp.asarray(X), cp.asarray(order), cp.asarray([8192]), out,
                             cp.asarray(targets), t_out)
    np.testing.assert_array_equal(cp.asnumpy(out), want[0])
    np.testing.assert_array_equal(cp.asnumpy(t_out), want[1])
    cuda_kernels.check_bad_labels()


@pytest.mark.parametrize("momentum,nesterov,weight_decay",
                         [(0.0, False, 0.0), (0.0, False, 1e-2), (0.9, False, 0.0),
                          (0.9, True, 1e-2)])
def test_multi_sgd_matches_sgd_step_to_float32_rounding(rng, momentum, nesterov, weight_decay):
    shapes = [(800, 784), (800,), (10, 800), (10,)]
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    steps = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(3)]
    reference_sgd = gpubp.SGD(0.05, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay)
    on_device = [cp.asarray(p) for p in params]
    grads = [cp.empty_like(p) for p in on_device]
    velocities = [cp.full_like(p, np.nan) for p in on_device] if momentum else None
    table = cuda_kernels.SGDTable(on_device, grads, velocities)
    lr, first, offset = cp.asarray([0.05]), cp.ones(1, cp.int32), cp.zeros(1, cp.int64)
    for step in steps:
        reference_sgd.step(params, step)
        for g, s in zip(grads, step):
            g.set(s)
        cuda_kernels.multi_sgd(table, lr, first, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay, offset=offset, batch=256)
    assert int(first[0]) == 0 and int(offset[0]) == 3 * 256
    for got, want in zip(on_device, params):
        np.testing.assert_allclose(cp.asnumpy(got), want, rtol=4e-7, atol=4e-7)


def test_a_warm_step_of_kernels_allocates_nothing_and_replays_as_a_graph(rng):
    """gather → bias_sigmoid → fused CE → dbias → multi_sgd over persistent buffers: no pool
    allocation once warm, and capturable: the replayed graph reads the offset that its own
    multi_sgd advances, and adds each replay's loss to the accumulator."""
    n, batch, hidden, classes = 1024, 128, 64, 10
    X = cp.asarray(rng.uniform(size=(n, hidden)), cp.float32)
    y = cp.asarray(rng.integers(0, classes, n))
    order = cp.asarray(rng.permutation(n))
    scratch = cuda_kernels.KernelScratch()
    Xb, yb = cp.empty((batch, hidden), cp.float32), cp.empty(batch, cp.int64)
    z = cp.empty((batch, classes), cp.float32)
    b1, b2 = cp.zeros(hidden, cp.float32), cp.zeros(classes, cp.float32)
    db1, db2 = cp.empty_like(b1), cp.empty_like(b2)
    table = cuda_kernels.SGDTable([b1, b2], [db1, db2])
    lr, offset = cp.asarray([0.1]), cp.zeros(1, cp.int64)

    def step():
        cuda_kernels.gather_rows(X, order, offset, Xb, y, yb, scratch=scratch)
        cuda_kernels.bias_sigmoid(Xb, b1, out=Xb)
        z[...] = Xb[:, :classes]  # stands in for the GEMM (cuBLAS through CuPy refuses capture)
        cuda_kernels.bias_softmax_cross_entropy(z, b2, yb, 1 / batch, out=z, bias_grad=db2,
                                                loss_sum=scratch.loss_sum, scratch=scratch)
        cuda_kernels.sigmoid_backward(Xb, X[:batch], out=Xb, bias_grad=db1, scratch=scratch)
        cuda_kernels.multi_sgd(table, lr, offset=offset, batch=batch, scratch=scratch)

    step()  # warm-up
    pool = cp.get_default_memory_pool()
    mallocs = []

    def counting(size):
        mallocs.append(size)
        return pool.malloc(size)

    cp.cuda.set_allocator(counting)
    try:
        with cuda_kernels.record_launches() as launches:
            step()
    finally:
        cp.cuda.set_allocator(pool.malloc)
    assert mallocs == [] and len(launches) == 5
    assert int(offset[0]) == 2 * batch

    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        step()
        graph = stream.end_capture()
    offset.fill(0)
    scratch.take_loss()
    cp.cuda.Device().synchronize()  # the resets above ran on the null stream
    for _ in range(3):
        graph.launch(stream)
    stream.synchronize()
    assert int(offset[0]) == 3 * batch
    assert scratch.take_loss()[1] == 3 * batch
    cuda_kernels.check_bad_labels(scratch)

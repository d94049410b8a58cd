"""The CUDA kernels against their float64 references in gpubp.ops (and gpubp.optim.SGD),
each case on two runners, the ``runner`` fixture:

- "emulated": gpubp.cuda.kernels' own wrappers launch the .cu code built by g++ under
  tests/cuda_emulation.h, one host thread per CUDA thread, on host memory (no GPU). It
  checks indexing, paths, reductions and their last-block tickets, ignore_index, in-place
  writes, flags and the scratch's reuse, not NVRTC's code or speed.
- "cupy": the kernels compiled by NVRTC on a device (marked ``gpu``: skipped without one).

Outputs are poisoned with NaN before each launch (the emulator's ``empty`` is NaN too), so
an element a kernel never writes fails. An emulated block costs its threads' host time, so
the emulator takes the small shapes, which still reach every path; the larger ones run on
CuPy only, with the references in float64 on the host, or on the device for the largest.
A few cases belong to one runner: counting allocations in the emulator's stand-in and
running the NumPy network through the kernels ("emulated"); the cupy backend, CuPy's own
allocator, CUDA graphs and the GPU's run-to-run bit identity ("cupy").
"""

import re

import numpy as np
import pytest
from cuda_emulator import device, emulate, emulated_cupy
from helpers import TOLERANCE, assert_close, random_logits, xent_reference

import gpubp
from gpubp import ops, optim
from gpubp.cuda import kernels as cuda_kernels
from gpubp.errors import DataError

CUPY = pytest.param("cupy", marks=pytest.mark.gpu)


def cases(both=(), cupy=()):
    """Parameters (runner, *case) for ``parametrize("runner,...", ..., indirect=["runner"])``:
    the ``both`` cases on each runner, the ``cupy`` ones (too large to emulate) on CuPy only."""
    def values(case):
        return case if isinstance(case, tuple) else (case,)

    return ([pytest.param("emulated", *values(c)) for c in both]
            + [pytest.param("cupy", *values(c), marks=pytest.mark.gpu) for c in [*both, *cupy]])


def only(name):
    """Run a test on the one runner ``name``."""
    return pytest.mark.parametrize("runner", [CUPY if name == "cupy" else name], indirect=True)


class Runner:
    """What a case needs from its runner: ``xp``, the array module (CuPy, or the emulator's
    stand-in); ``device(a)`` and ``host(a)``, a copy there and back; ``tolerance`` per
    dtype; ``launches``, the test's kernel launches so far (``launched``: their names)."""

    def __init__(self, name, xp, to_device, to_host, launches):
        self.name, self.xp, self.device, self.host = name, xp, to_device, to_host
        self.tolerance = TOLERANCE[name]
        self.launches = launches

    @property
    def launched(self) -> list[str]:
        return [launch.name for launch in self.launches]

    @property
    def scratch(self):
        """The scratch of calls given none (the test's own: see the fixture)."""
        return cuda_kernels.default_scratch()

    def assert_close(self, got, want, dtype, scale=1.0):
        """helpers.assert_close at this runner's tolerance for ``dtype``."""
        assert_close(got, want, self.tolerance[np.dtype(dtype).type], scale)

    def poison_pool(self, *shapes_and_dtypes):
        """Leave NaN-filled blocks of these sizes in CuPy's pool, for the kernel's own
        outputs (the emulator's stand-in fills new arrays with NaN itself)."""
        if self.name == "cupy":
            blocks = [self.xp.full(shape, np.nan, dtype) for shape, dtype in shapes_and_dtypes]
            blocks.clear()  # freed to the pool, where the kernel's outputs find them


@pytest.fixture(params=["emulated", CUPY])
def runner(request, monkeypatch):
    """gpubp.cuda.kernels on the emulator (2 "SMs", the seams patched) or on CuPy, with a
    default scratch of the test's own and its launches recorded."""
    if request.param == "emulated":
        xp = emulated_cupy()
        emulate(monkeypatch, request.getfixturevalue("emulator").function, xp)
        to_device, to_host = (lambda a: device(np.array(a))), np.array
    else:
        xp = pytest.importorskip("cupy")
        monkeypatch.setattr(cuda_kernels, "_default_scratch", {})
        to_device, to_host = xp.asarray, xp.asnumpy
    with cuda_kernels.record_launches() as launches:
        yield Runner(request.param, xp, to_device, to_host, launches)


def rows_of_any_sum(rng, rows, cols, one_hot_column=-1):
    """Target rows summing to 1 (the first, one-hot), 0.5, 2.7, 0, 1, ..., zeros inside."""
    targets = rng.dirichlet(np.ones(cols), size=rows)
    targets[:, 1::4] = 0
    targets[0] = 0
    targets[0, one_hot_column] = 1
    targets *= (np.resize([1.0, 0.5, 2.7, 0.0], rows) / targets.sum(axis=1))[:, None]
    return targets


# ---- the cross-entropy -----------------------------------------------------------------------

FIRST_LAUNCH = {"small": "xent_small", "row": "xent_row_labels", "split": "xent_partial"}
# Small shapes that still take each path and variant: C ≤ 256; a block per row at 4 and 8
# values per thread, vectorised or not; float64 past 8,192 columns, each row across 3
# blocks of 4,096 columns, the last with 8 (on the emulator a block's cost is its threads).
CASES = [  # (rows, cols, dtype, path)
    (5, 1, np.float32, "small"), (9, 10, np.float32, "small"), (3, 256, np.float64, "small"),
    (4, 257, np.float32, "row"), (3, 1000, np.float64, "row"), (2, 4099, np.float32, "row"),
    (2, 8200, np.float64, "split"),
]


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("runner,rows,cols,dtype,path", cases(CASES), indirect=["runner"])
def test_labels_per_row_and_gradient_in_place(runner, rng, rows, cols, dtype, path, label_dtype):
    assert cuda_kernels.xent_path(dtype, cols) == path
    logits = random_logits(rng, rows, cols, dtype)
    labels = rng.integers(0, cols, rows).astype(label_dtype)
    want_loss, want_grad = xent_reference(logits, labels, 0.5)
    buffer = runner.device(logits)
    loss, grad = cuda_kernels.softmax_cross_entropy(buffer, runner.device(labels), 0.5,
                                                    out=buffer)
    assert grad is buffer and loss.dtype == dtype
    runner.assert_close(loss, want_loss, dtype)
    runner.assert_close(grad, want_grad, dtype, 0.5)
    assert runner.launched[0].startswith(FIRST_LAUNCH[path])
    if path == "split":  # each row across blocks, its last one part-filled
        chunk = cuda_kernels.SPLIT_THREADS * cuda_kernels.SPLIT_ITEMS
        assert cols > chunk and cols % chunk
        assert runner.launches[0].grid == (rows * -(-cols // chunk),)


def test_float32_rows_past_32768_columns_take_the_split_path(runner, rng):
    logits = random_logits(rng, 1, 32769, np.float32)
    want_loss, want_grad = xent_reference(logits, [32768])
    loss, grad = cuda_kernels.softmax_cross_entropy(runner.device(logits),
                                                    runner.device(np.array([32768])))
    assert runner.launched == ["xent_partial_f32", "xent_finish_f32"]
    runner.assert_close(loss, want_loss, np.float32)
    runner.assert_close(grad, want_grad, np.float32)


BATCHES = (1, 7, 4096)
CLASSES = (1, 2, 10, 1000, 32769, 262144)
XENT_SHAPES = [(rows, cols, dtype) for rows in BATCHES for cols in CLASSES
               for dtype in (np.float32, np.float64)]


@pytest.mark.parametrize("runner,rows,cols,dtype", cases(
    [s for s in XENT_SHAPES if s[0] < 100 and s[1] <= 1000],
    [s for s in XENT_SHAPES if s[0] >= 100 or s[1] > 1000]), indirect=["runner"])
def test_fused_softmax_xent_matches_the_reference(runner, rng, rows, cols, dtype):
    if rows * cols > 2 ** 28 and dtype == np.float64:
        pytest.skip("float32 covers the largest shape")
    logits = runner.device(random_logits(rng, rows, cols, dtype, hot_rows=max(1, rows // 2),
                                         draw_dtype=np.float32))
    labels = runner.device(rng.integers(0, cols, rows))
    scale = 1.0 / rows
    grad = runner.xp.full_like(logits, np.nan)
    runner.poison_pool(((rows,), dtype))
    loss, got = cuda_kernels.softmax_cross_entropy(logits, labels, scale, out=grad)
    assert got is grad
    want_loss, want_grad = xent_reference(logits, labels, scale)
    runner.assert_close(loss, want_loss, dtype)
    runner.assert_close(grad, want_grad, dtype, scale)


@pytest.mark.parametrize("runner,rows,cols,dtype,path", cases(CASES), indirect=["runner"])
def test_dense_targets_of_any_row_sum_and_the_mean(runner, rng, rows, cols, dtype, path):
    # The gradient is (P·Σt − T)·scale: every path needs the row's target sum first.
    logits = random_logits(rng, rows, cols, dtype)
    targets = rows_of_any_sum(rng, rows, cols).astype(dtype)
    grad = runner.device(np.full_like(logits, np.nan))
    mean, _ = cuda_kernels.softmax_cross_entropy(runner.device(logits), runner.device(targets),
                                                 0.25, reduction="mean", out=grad)
    want_mean, want_grad = xent_reference(logits, targets, 0.25, reduction="mean")
    assert mean.shape == ()
    runner.assert_close(mean, want_mean, dtype)
    runner.assert_close(grad, want_grad, dtype, 0.25)
    ticket = runner.host(runner.scratch.buffer("xent_ticket", 1, np.uint32))
    assert ticket[0] == 0  # reset by the last block
    if path == "row":
        assert runner.launched[0].startswith("xent_row_dense")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("runner,cols", cases([3], [1000, 40000]), indirect=["runner"])
def test_dense_target_rows_of_any_sum(runner, rng, cols, dtype):
    rows = 33
    logits = runner.device(random_logits(rng, rows, cols, dtype, hot_rows=max(1, rows // 2),
                                         draw_dtype=np.float32))
    targets = runner.device(rows_of_any_sum(rng, rows, cols, one_hot_column=0).astype(dtype))
    loss, grad = cuda_kernels.softmax_cross_entropy(logits, targets, 0.5,
                                                    out=runner.xp.full_like(logits, np.nan))
    want_loss, want_grad = xent_reference(logits, targets, 0.5)
    runner.assert_close(loss, want_loss, dtype)
    runner.assert_close(grad, want_grad, dtype, 0.5)


def test_dense_targets_in_place_read_each_logit_before_its_gradient(runner, rng):
    logits = random_logits(rng, 3, 700, np.float32)
    targets = rows_of_any_sum(rng, 3, 700).astype(np.float32)
    want_loss, want_grad = xent_reference(logits, targets, 0.5)
    buffer = runner.device(logits)
    loss, _ = cuda_kernels.softmax_cross_entropy(buffer, runner.device(targets), 0.5, out=buffer)
    runner.assert_close(loss, want_loss, np.float32)
    runner.assert_close(buffer, want_grad, np.float32, 0.5)


def test_integer_target_rows_are_a_type_error_before_any_launch(runner):
    with pytest.raises(TypeError, match=r"^targets: target rows \(B, C\) must be floating"):
        cuda_kernels.softmax_cross_entropy(runner.device(np.zeros((2, 3), np.float32)),
                                           runner.device(np.eye(3, dtype=np.int64)[[0, 2]]))
    assert runner.launched == []


@pytest.mark.parametrize("runner,rows,cols,dtype,path", cases(CASES), indirect=["runner"])
def test_ignore_index_and_minus_infinity(runner, rng, rows, cols, dtype, path):
    rows = max(rows, 3)
    logits = random_logits(rng, rows, cols, dtype)
    logits[:, 1::3] = -np.inf
    labels = 3 * rng.integers(0, (cols + 2) // 3, rows)  # never on a −inf column
    labels[1] = -7
    grad = runner.device(np.full_like(logits, np.nan))
    rows_loss, _ = cuda_kernels.softmax_cross_entropy(runner.device(logits),
                                                      runner.device(labels), 1.0,
                                                      ignore_index=-7, out=grad)
    mean, _ = cuda_kernels.softmax_cross_entropy(runner.device(logits), runner.device(labels),
                                                 1.0, ignore_index=-7, reduction="mean")
    with np.errstate(invalid="ignore"):
        want_rows, want_grad = xent_reference(logits, labels, ignore_index=-7)
    runner.assert_close(rows_loss, want_rows, dtype)
    runner.assert_close(grad, want_grad, dtype)
    assert runner.host(rows_loss)[1] == 0 and np.all(runner.host(grad)[1] == 0)
    runner.assert_close(mean, want_rows[[0] + list(range(2, rows))].mean(), dtype)
    everything_ignored, _ = cuda_kernels.softmax_cross_entropy(
        runner.device(logits), runner.device(np.full(rows, -7)), ignore_index=-7,
        reduction="mean")
    assert float(everything_ignored) == 0


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("runner,cols", cases([10], [1000, 40000]), indirect=["runner"])
def test_ignore_index_and_the_mean_in_one_launch(runner, rng, cols, label_dtype):
    rows = 300
    logits = runner.device(random_logits(rng, rows, cols, np.float32,
                                         hot_rows=max(1, rows // 2), draw_dtype=np.float32))
    labels = rng.integers(0, cols, rows).astype(label_dtype)
    labels[::3] = -100
    labels = runner.device(labels)
    grad = runner.xp.full_like(logits, np.nan)
    runner.poison_pool(((), np.float32))
    mean, _ = cuda_kernels.softmax_cross_entropy(logits, labels, 0.1, ignore_index=-100,
                                                 reduction="mean", out=grad)
    want_mean, want_grad = xent_reference(logits, labels.astype(np.int64), 0.1,
                                          ignore_index=-100, reduction="mean")
    assert mean.shape == ()
    runner.assert_close(mean, want_mean, np.float32)
    runner.assert_close(grad, want_grad, np.float32, 0.1)
    all_ignored, _ = cuda_kernels.softmax_cross_entropy(
        logits, runner.xp.full(rows, -100, label_dtype), ignore_index=-100, reduction="mean")
    assert float(all_ignored) == 0.0


@pytest.mark.parametrize("runner,cols", cases([10], [1000, 40000]), indirect=["runner"])
def test_shift_invariance_and_minus_infinity(runner, rng, cols):
    logits = runner.device(random_logits(rng, 16, cols, np.float32, hot_rows=8,
                                         draw_dtype=np.float32))
    labels = runner.device(rng.integers(0, cols, 16))
    loss, grad = cuda_kernels.softmax_cross_entropy(logits, labels)
    shifted_loss, shifted_grad = cuda_kernels.softmax_cross_entropy(logits + 1e4, labels)
    # 1e4 + z is rounded to float32's spacing at 1e4 (~1e-3), so compare with that slack.
    np.testing.assert_allclose(runner.host(shifted_loss), runner.host(loss), atol=5e-3)
    np.testing.assert_allclose(runner.host(shifted_grad), runner.host(grad), atol=5e-3)
    with_inf = logits.copy()
    with_inf[:, 1::2] = -np.inf
    labels = runner.xp.zeros(16, np.int64)  # column 0 stays finite
    loss, grad = cuda_kernels.softmax_cross_entropy(with_inf, labels)
    want_loss, want_grad = xent_reference(with_inf, labels, 1.0)
    runner.assert_close(loss, want_loss, np.float32)
    runner.assert_close(grad, want_grad, np.float32)
    assert float(np.abs(runner.host(grad)[:, 1::2]).max()) == 0.0


# The emulator runs a launch's blocks one after another: run-to-run identity holds there
# by construction.
@pytest.mark.parametrize("cols", (10, 1000, 40000))
@only("cupy")
def test_equal_inputs_give_bit_identical_outputs(runner, rng, cols):
    logits = runner.device(random_logits(rng, 512, cols, np.float32, hot_rows=256,
                                         draw_dtype=np.float32))
    labels = runner.device(rng.integers(0, cols, 512))
    first = cuda_kernels.softmax_cross_entropy(logits, labels, 0.5, reduction="mean")
    for _ in range(3):
        again = cuda_kernels.softmax_cross_entropy(logits, labels, 0.5, reduction="mean")
        assert runner.host(again[0]).tobytes() == runner.host(first[0]).tobytes()
        assert runner.host(again[1]).tobytes() == runner.host(first[1]).tobytes()


@pytest.mark.parametrize("runner,cols", cases([10, 1000, 9000]), indirect=["runner"])
def test_bad_labels_give_nan_rows_and_raise_at_the_check(runner, rng, cols):
    logits = random_logits(rng, 3, cols, np.float64)
    loss, grad = cuda_kernels.softmax_cross_entropy(runner.device(logits),
                                                    runner.device(np.array([0, cols, -1])))
    loss, grad = runner.host(loss), runner.host(grad)
    assert np.isfinite(loss[0]) and np.isnan(loss[1]) and np.isnan(loss[2])
    assert np.isfinite(grad[0]).all() and np.isnan(grad[1:]).all()
    with pytest.raises(DataError, match="^targets: a label outside"):
        cuda_kernels.check_bad_labels()
    cuda_kernels.check_bad_labels()  # reset


@pytest.mark.parametrize("runner,cols", cases([10, 1000], [40000]), indirect=["runner"])
def test_out_of_range_labels_are_flagged_never_read(runner, rng, cols):
    logits = runner.device(random_logits(rng, 4, cols, np.float32, hot_rows=2,
                                         draw_dtype=np.float32))
    loss, grad = cuda_kernels.softmax_cross_entropy(logits,
                                                    runner.device(np.array([0, cols, -1, 1])))
    loss, grad = runner.host(loss), runner.host(grad)
    assert np.isnan(loss[1]) and np.isnan(loss[2]) and np.isfinite(loss[[0, 3]]).all()
    assert np.isnan(grad[1]).all() and np.isfinite(grad[0]).all()
    with pytest.raises(DataError, match="^targets: a label outside"):
        cuda_kernels.check_bad_labels()
    cuda_kernels.check_bad_labels()  # the flag was reset


def test_each_scratch_has_its_own_flag(runner, rng):
    mine = cuda_kernels.KernelScratch()
    logits = runner.device(random_logits(rng, 2, 10, np.float32))
    cuda_kernels.softmax_cross_entropy(logits, runner.device(np.array([0, 10])), scratch=mine)
    cuda_kernels.check_bad_labels()  # the default scratch saw nothing
    with pytest.raises(DataError):
        cuda_kernels.check_bad_labels(mine)


def test_loss_alone_writes_no_gradient(runner, rng):
    logits = random_logits(rng, 4, 300, np.float32)
    loss, grad = cuda_kernels.softmax_cross_entropy(runner.device(logits),
                                                    runner.device(np.arange(4)), grad=False)
    assert grad is None
    runner.assert_close(loss, xent_reference(logits, np.arange(4))[0], np.float32)


# ---- the output layer's step: bias in, bias gradient and loss sum out ------------------------

BIAS_CASES = [  # (rows, cols, dtype, kind): small with 2–3 blocks, row (+ column_sum), split
    (300, 10, np.float32, "labels"), (260, 3, np.float64, "rows"), (5, 300, np.float32, "labels"),
    (3, 300, np.float64, "rows"), (3, 257, np.float32, "labels"), (2, 8200, np.float64, "labels"),
    (2, 8200, np.float64, "rows"),
]


@pytest.mark.parametrize("runner,rows,cols,dtype,kind", cases(BIAS_CASES), indirect=["runner"])
def test_bias_softmax_cross_entropy_matches_the_reference(runner, rng, rows, cols, dtype, kind):
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

    buffer, db = runner.device(z), runner.device(np.full(cols, np.nan, dtype))
    loss_sum = runner.device(np.array([0.25, 1.0]))
    grad = cuda_kernels.bias_softmax_cross_entropy(
        buffer, runner.device(bias), runner.device(targets), scale, ignore_index=ignore_index,
        out=buffer, bias_grad=None if split else db, loss_sum=loss_sum)
    assert grad is buffer
    runner.assert_close(grad, want_grad, dtype, scale)
    if not split:
        runner.assert_close(db, want_db, dtype)
    runner.assert_close(loss_sum, want_sum, dtype, rows)
    assert runner.host(runner.scratch.buffer("xent_ticket", 1, np.uint32))[0] == 0
    assert (runner.host(runner.scratch.buffer("column_tickets", 1, np.uint32)) == 0).all()
    row = cuda_kernels.xent_path(dtype, cols) == "row"
    assert any(name.startswith("column_sum") for name in runner.launched) == row


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["labels", "rows"])
@pytest.mark.parametrize("runner,rows,cols", cases(
    [(33, 3)], [(4096, 10), (300, 1000), (7, 40000)]), indirect=["runner"])
def test_bias_softmax_cross_entropy_with_bias_grad_on_every_path(runner, rng, dtype, rows, cols,
                                                                 kind):
    z = runner.device(random_logits(rng, rows, cols, dtype, hot_rows=max(1, rows // 2),
                                    draw_dtype=np.float32))
    bias = runner.device(rng.normal(size=cols).astype(dtype))
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
        runner.host(z).astype(np.float64), runner.host(bias).astype(np.float64), targets, scale,
        ignore_index=ignore_index, bias_grad=want_db, loss_sum=want_sum)
    scratch = cuda_kernels.KernelScratch()
    grad, db = runner.xp.full_like(z, np.nan), runner.xp.full(cols, np.nan, dtype)
    loss_sum = runner.device(np.array([0.5, 2.0]))
    got = cuda_kernels.bias_softmax_cross_entropy(
        z, bias, runner.device(np.asarray(targets, dtype=dtype if kind == "rows" else None)),
        scale, ignore_index=ignore_index, out=grad, bias_grad=db, loss_sum=loss_sum,
        scratch=scratch)
    assert got is grad
    runner.assert_close(grad, want_grad, dtype, scale)
    runner.assert_close(db, want_db, dtype, 1.0)
    runner.assert_close(loss_sum, want_sum, dtype, rows)
    cuda_kernels.check_bad_labels(scratch)


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


def test_the_loss_sum_accumulates_in_launch_order_and_is_taken(runner, rng):
    z, bias = random_logits(rng, 300, 10, np.float32), np.zeros(10, np.float32)
    labels = rng.integers(0, 10, 300)
    scratch = runner.scratch
    for _ in range(2):
        cuda_kernels.bias_softmax_cross_entropy(runner.device(z), runner.device(bias),
                                                runner.device(labels),
                                                loss_sum=scratch.loss_sum, scratch=scratch)
    total, count = scratch.take_loss()
    assert count == 600
    assert total == pytest.approx(2 * xent_reference(z, labels)[0].sum(), rel=1e-6)
    assert scratch.take_loss() == (0.0, 0.0)


# A GPU's blocks take their tickets in any order; the emulator's, one after another.
@pytest.mark.parametrize("cols", (10, 1000))
@only("cupy")
def test_the_ticketed_sums_are_bit_identical_from_run_to_run(runner, rng, cols):
    cp = runner.xp
    z = runner.device(random_logits(rng, 4096, cols, np.float32, hot_rows=2048,
                                    draw_dtype=np.float32))
    bias = cp.zeros(cols, np.float32)
    labels = runner.device(rng.integers(0, cols, 4096))
    a = cp.asarray(rng.uniform(size=(4096, cols)), np.float32)
    runs = []
    for _ in range(3):
        db, loss_sum, dbh = cp.empty(cols, np.float32), cp.zeros(2), cp.empty(cols, np.float32)
        grad = cuda_kernels.bias_softmax_cross_entropy(
            z, bias, labels, 1 / 4096, out=cp.empty_like(z), bias_grad=db, loss_sum=loss_sum)
        cuda_kernels.sigmoid_backward(grad, a, out=cp.empty_like(grad), bias_grad=dbh)
        runs.append(tuple(runner.host(x).tobytes() for x in (db, loss_sum, dbh)))
    assert runs.count(runs[0]) == 3


# ---- the hidden layers -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (3, 8), (5, 33), (80, 132)])
def test_sigmoid_kernels(runner, rng, monkeypatch, dtype, shape):
    # (80, 132) on one "SM": 2 or 3 column tiles of 2 slabs (64 and 16 rows), so the walkers
    # run the unrolled 4-row step and the tail, and the last slab block adds the partials.
    # The same launch geometry on a GPU.
    monkeypatch.setattr(cuda_kernels, "_sm_count", lambda: 1)
    z = (rng.normal(size=shape) * 10).astype(dtype)
    z.flat[0] = -1e4
    bias = rng.normal(size=shape[1]).astype(dtype)
    a = cuda_kernels.bias_sigmoid(runner.device(z), runner.device(bias),
                                  out=runner.device(np.full_like(z, np.nan)))
    runner.assert_close(a, ops.sigmoid(z.astype(np.float64) + bias), dtype, np.finfo(dtype).tiny)
    g = rng.normal(size=shape).astype(dtype)
    a_host = runner.host(a).astype(np.float64)
    want = g.astype(np.float64) * a_host * (1 - a_host)
    runner.assert_close(cuda_kernels.sigmoid_backward(runner.device(g), a), want, dtype)
    bias_grad = runner.device(np.full(shape[1], np.nan, dtype))
    in_place = runner.device(g)
    assert cuda_kernels.sigmoid_backward(in_place, a, out=in_place,
                                         bias_grad=bias_grad) is in_place
    runner.assert_close(in_place, want, dtype)
    runner.assert_close(bias_grad, want.sum(axis=0), dtype, shape[0])
    assert (runner.host(runner.scratch.buffer("column_tickets", 1, np.uint32)) == 0).all()
    assert runner.launched[-1].startswith("sigmoid_backward_dbias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("runner,rows,cols", cases(
    [(1, 1), (7, 10), (5, 3)], [(4096, 1024), (33, 1001), (65536, 800)]), indirect=["runner"])
def test_sigmoid_kernels_match_the_reference(runner, rng, rows, cols, dtype):
    shape = (rows, cols)
    z = (rng.normal(size=shape) * 10).astype(dtype)
    z[0, 0] = -1e4
    z = runner.device(z)
    bias = runner.device(rng.normal(size=shape[1]).astype(dtype))
    a = cuda_kernels.bias_sigmoid(z, bias, out=runner.xp.full_like(z, np.nan))
    want = ops.sigmoid(runner.host(z).astype(np.float64) + runner.host(bias))
    runner.assert_close(a, want, dtype, scale=np.finfo(dtype).tiny)

    g = runner.device(rng.normal(size=shape).astype(dtype))
    a_host, g_host = runner.host(a).astype(np.float64), runner.host(g).astype(np.float64)
    want_delta = g_host * a_host * (1 - a_host)
    runner.assert_close(cuda_kernels.sigmoid_backward(g, a, out=runner.xp.full_like(g, np.nan)),
                        want_delta, dtype)
    bias_grad = runner.xp.full(shape[1], np.nan, dtype)
    in_place = g.copy()
    delta = cuda_kernels.sigmoid_backward(in_place, a, out=in_place, bias_grad=bias_grad)
    assert delta is in_place
    runner.assert_close(delta, want_delta, dtype)
    runner.assert_close(bias_grad, want_delta.sum(axis=0), dtype, scale=shape[0])


def test_sigmoid_backward_refuses_out_overlapping_a(runner):
    a = runner.device(np.full((4, 8), 0.5, np.float32))
    with pytest.raises(ValueError, match="^out: must not overlap a"):
        cuda_kernels.sigmoid_backward(runner.device(np.ones((4, 8), np.float32)), a, out=a)


# ---- the batch and the update --------------------------------------------------------------

@pytest.mark.parametrize("dtype,cols,unit", [(np.float32, 12, 16), (np.float64, 3, 8),
                                             (np.float32, 5, 4)])
@pytest.mark.parametrize("target_kind", ["int64", "int32", "rows"])
def test_gather_rows_matches_the_reference(runner, rng, dtype, cols, unit, target_kind):
    n, batch = 37, 11
    X = rng.normal(size=(n, cols)).astype(dtype)
    targets = (rng.normal(size=(n, 4)).astype(dtype) if target_kind == "rows"
               else rng.integers(0, 10, n).astype(target_kind))
    order = rng.permutation(n)
    out, t_out = np.full((batch, cols), np.nan, dtype), np.zeros((batch, *targets.shape[1:]),
                                                                  targets.dtype)
    want = ops.gather_rows(X, order, 20, out.copy(), targets, t_out.copy())
    offset = runner.device(np.array([20]))
    got = cuda_kernels.gather_rows(runner.device(X), runner.device(order), offset,
                                   runner.device(out), runner.device(targets),
                                   runner.device(t_out))
    np.testing.assert_array_equal(runner.host(got[0]), want[0])
    np.testing.assert_array_equal(runner.host(got[1]), want[1])
    assert runner.launched == [f"gather_rows_b{unit}"]
    assert runner.host(offset)[0] == 20  # the gather reads the offset; multi_sgd advances it


@pytest.mark.parametrize("dtype,cols", [(np.float32, 784), (np.float64, 3), (np.float32, 5)])
@pytest.mark.parametrize("target_kind", ["int64", "rows"])
@only("cupy")
def test_gather_rows_of_a_large_set_matches_the_reference(runner, rng, dtype, cols, target_kind):
    n, batch = 60000, 4096
    X = rng.normal(size=(n, cols)).astype(dtype)
    targets = (rng.normal(size=(n, 10)).astype(dtype) if target_kind == "rows"
               else rng.integers(0, 10, n))
    order = rng.permutation(n)
    want = ops.gather_rows(X, order, 8192, np.empty((batch, cols), dtype), targets,
                           np.empty((batch, *targets.shape[1:]), targets.dtype))
    out = runner.xp.full((batch, cols), np.nan, dtype)
    t_out = runner.xp.zeros((batch, *targets.shape[1:]), targets.dtype)
    cuda_kernels.gather_rows(runner.device(X), runner.device(order), runner.device([8192]), out,
                             runner.device(targets), t_out)
    np.testing.assert_array_equal(runner.host(out), want[0])
    np.testing.assert_array_equal(runner.host(t_out), want[1])
    cuda_kernels.check_bad_labels()


def test_gather_rows_flags_positions_and_indices_out_of_range(runner, rng):
    X = runner.device(np.ones((6, 4), np.float32))
    labels = runner.device(np.arange(6))
    out = runner.device(np.zeros((3, 4), np.float32))
    t_out = runner.device(np.zeros(3, np.int64))
    cuda_kernels.gather_rows(X, runner.device(np.array([0, 6, 1])), runner.device(np.array([1])),
                             out, labels, t_out)  # index 6 ≥ N, and position 3 past the order
    out = runner.host(out)
    assert np.isnan(out[[0, 2]]).all() and (out[1] == 1).all()
    assert runner.host(t_out).tolist() == [-1, 1, -1]
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
def test_multi_sgd_matches_sgd_step(runner, rng, dtype, momentum, nesterov, weight_decay):
    params, steps = sgd_problem(rng, dtype)
    want = [p.copy() for p in params]
    reference_sgd = gpubp.SGD(0.1, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay)
    on_device = [runner.device(p) for p in params]
    # keep the third unaligned
    on_device[2] = runner.device(np.concatenate([[0], params[2]]).astype(dtype))[1:]
    grads = [runner.device(np.zeros_like(p)) for p in params]
    velocities = ([runner.device(np.full_like(p, np.nan)) for p in params] if momentum
                  else None)
    table = cuda_kernels.SGDTable(on_device, grads, velocities)
    assert table.n_chunks == sum(-(-p.size // table.chunk_elems) for p in params) > 3
    lr, first = runner.device(np.array([0.1])), runner.device(np.array([1], np.int32))
    offset = runner.device(np.array([0]))
    for step in steps:
        reference_sgd.step(want, step)
        for g, s in zip(grads, step):
            g.set(s)
        cuda_kernels.multi_sgd(table, lr, first, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay, offset=offset, batch=32)
        assert runner.host(first)[0] == 0
    assert runner.host(offset)[0] == 3 * 32
    assert runner.launched == [f"multi_sgd_{'f32' if dtype == np.float32 else 'f64'}"] * 3
    for got, p in zip(on_device, want):  # float32: a few roundings of each step apart
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(runner.host(got), p, rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("momentum,nesterov,weight_decay",
                         [(0.0, False, 0.0), (0.0, False, 1e-2), (0.9, False, 0.0),
                          (0.9, True, 1e-2)])
@only("cupy")
def test_multi_sgd_matches_sgd_step_to_float32_rounding(runner, rng, momentum, nesterov,
                                                        weight_decay):
    shapes = [(800, 784), (800,), (10, 800), (10,)]
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    steps = [[rng.normal(size=s).astype(np.float32) for s in shapes] for _ in range(3)]
    reference_sgd = gpubp.SGD(0.05, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay)
    cp = runner.xp
    on_device = [cp.asarray(p) for p in params]
    grads = [cp.empty_like(p) for p in on_device]
    velocities = [cp.full_like(p, np.nan) for p in on_device] if momentum else None
    table = cuda_kernels.SGDTable(on_device, grads, velocities)
    lr, first, offset = cp.asarray([0.05]), cp.ones(1, np.int32), cp.zeros(1, np.int64)
    for step in steps:
        reference_sgd.step(params, step)
        for g, s in zip(grads, step):
            g.set(s)
        cuda_kernels.multi_sgd(table, lr, first, momentum=momentum, nesterov=nesterov,
                               weight_decay=weight_decay, offset=offset, batch=256)
    assert int(first[0]) == 0 and int(offset[0]) == 3 * 256
    for got, want in zip(on_device, params):
        np.testing.assert_allclose(runner.host(got), want, rtol=4e-7, atol=4e-7)


@pytest.mark.parametrize("momentum,nesterov,weight_decay",
                         [(0.0, False, 1e-2), (0.9, True, 1e-2)])
def test_the_optimizer_device_update_matches_sgd_step(runner, rng, momentum, nesterov,
                                                      weight_decay):
    params, steps = sgd_problem(rng, np.float32, big=(7, 9))
    want = [p.copy() for p in params]
    reference_sgd = gpubp.SGD(0.1, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay)
    on_device = [runner.device(p) for p in params]
    velocities = [runner.device(np.empty_like(p)) for p in params]
    for k, step in enumerate(steps):
        reference_sgd.step(want, step)
        for p, g, v in zip(on_device, step, velocities):
            optim.device_update(p, runner.device(g), v if momentum else None, 0.1, momentum,
                                weight_decay, nesterov, k == 0)
    for got, p in zip(on_device, want):
        np.testing.assert_allclose(runner.host(got), p, rtol=4e-7, atol=4e-7)


# SGD.step takes the device path for CuPy arrays only; the case above is its emulated twin.
@pytest.mark.parametrize("momentum,nesterov,weight_decay",
                         [(0.0, False, 0.0), (0.0, False, 1e-2), (0.9, False, 0.0),
                          (0.9, True, 1e-2)])
@only("cupy")
def test_fused_sgd_update_matches_the_numpy_rule(runner, rng, momentum, nesterov, weight_decay):
    params = [rng.normal(size=(5, 3)), rng.normal(size=3)]
    steps = [[rng.normal(size=p.shape) for p in params] for _ in range(3)]
    cpu = gpubp.SGD(0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    gpu = gpubp.SGD(0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    on_device = [runner.device(p) for p in params]
    for grads in steps:
        cpu.step(params, grads)
        gpu.step(on_device, [runner.device(g) for g in grads])
    for p, q in zip(params, on_device):
        np.testing.assert_allclose(runner.host(q), p, rtol=1e-12, atol=1e-14)


# ---- no allocation after a warm-up, and a whole step's launches -------------------------------

@only("emulated")  # counts the stand-in's allocations; on CuPy: the graph case below
def test_a_warm_wrapper_call_allocates_nothing(runner, rng):
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
    runner.xp.allocations.clear()
    calls()
    assert runner.xp.allocations == []


@only("cupy")  # CuPy's allocator and stream capture
def test_a_warm_step_of_kernels_allocates_nothing_and_replays_as_a_graph(runner, rng):
    """gather → bias_sigmoid → fused CE → dbias → multi_sgd over persistent buffers: no pool
    allocation once warm, and capturable: the replayed graph reads the offset that its own
    multi_sgd advances, and adds each replay's loss to the accumulator."""
    cp = runner.xp
    n, batch, hidden, classes = 1024, 128, 64, 10
    X = cp.asarray(rng.uniform(size=(n, hidden)), np.float32)
    y = cp.asarray(rng.integers(0, classes, n))
    order = cp.asarray(rng.permutation(n))
    scratch = cuda_kernels.KernelScratch()
    Xb, yb = cp.empty((batch, hidden), np.float32), cp.empty(batch, np.int64)
    z = cp.empty((batch, classes), np.float32)
    b1, b2 = cp.zeros(hidden, np.float32), cp.zeros(classes, np.float32)
    db1, db2 = cp.empty_like(b1), cp.empty_like(b2)
    table = cuda_kernels.SGDTable([b1, b2], [db1, db2])
    lr, offset = cp.asarray([0.1]), cp.zeros(1, np.int64)

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


def test_one_training_step_is_2L_plus_1_launches_and_matches_the_references(runner, rng):
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

    to_device, matmul = runner.device, runner.xp.matmul  # GEMMs: NumPy emulated, cuBLAS on CuPy
    scratch = cuda_kernels.KernelScratch()
    params = [to_device(p) for p in net.parameters()]
    Ws, bs = params[0::2], params[1::2]
    grads = [to_device(np.empty_like(p)) for p in params]
    dWs, dbs = grads[0::2], grads[1::2]
    velocities = [to_device(np.empty_like(p)) for p in params]
    table = cuda_kernels.SGDTable(params, grads, velocities)
    Xd, yd, orderd = to_device(X), to_device(y), to_device(order)
    Xb, yb = to_device(np.empty((batch, 20), dtype)), to_device(np.empty(batch, np.int64))
    acts = [to_device(np.empty((batch, n), dtype)) for n in sizes[1:-1]]
    deltas = [to_device(np.empty((batch, n), dtype)) for n in sizes[1:-1]]
    logits = to_device(np.empty((batch, 10), dtype))
    offset, lr, first = to_device(np.array([9])), to_device(np.array([0.5])), \
        to_device(np.array([1], np.int32))

    with cuda_kernels.record_launches() as launches:
        cuda_kernels.gather_rows(Xd, orderd, offset, Xb, yd, yb, scratch=scratch)
        a = Xb
        for W, b, out in zip(Ws[:-1], bs[:-1], acts):
            a = cuda_kernels.bias_sigmoid(matmul(a, W.T, out=out), b, out=out)
        matmul(a, Ws[-1].T, out=logits)
        delta = cuda_kernels.bias_softmax_cross_entropy(
            logits, bs[-1], yb, 1.0 / batch, out=logits, bias_grad=dbs[-1],
            loss_sum=scratch.loss_sum, scratch=scratch)
        inputs = [Xb] + acts
        for l in reversed(range(len(Ws))):
            matmul(delta.T, inputs[l], out=dWs[l])
            if l > 0:
                grad_a = matmul(delta, Ws[l], out=deltas[l - 1])
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
        np.testing.assert_allclose(runner.host(got), want, rtol=2e-5, atol=2e-6)
    assert runner.host(offset)[0] == 2 * batch and runner.host(first)[0] == 0
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
@only("emulated")  # the NumPy network's own arrays through the kernels; on CuPy: the next case
def test_a_training_step_through_the_kernels_matches_the_references(runner, rng, dtype):
    sizes = (20, 33, 17, 10)
    X = rng.normal(size=(9, 20))
    y = rng.integers(0, 10, 9)
    reference_net = gpubp.MLP(sizes, backend="numpy", dtype=dtype, seed=1)
    emulated_net = gpubp.MLP(sizes, backend="numpy", dtype=dtype, seed=1)
    emulated_net._ops = EmulatedOps
    want_loss, want_grads = reference_net.loss_and_grads(X, y)
    loss, grads = emulated_net.loss_and_grads(X, y)
    tol = runner.tolerance[np.dtype(dtype).type] * 10
    assert loss == pytest.approx(want_loss, rel=tol)
    for got, want in zip([g for p in grads for g in p], [g for p in want_grads for g in p]):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    assert {"bias_sigmoid", "xent_small", "sigmoid_backward"} <= {
        re.sub(r"_f(32|64).*", "", name) for name in runner.launched}


@only("cupy")  # the cupy backend
def test_a_training_step_on_cupy_matches_numpy_in_float32(runner, rng):
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

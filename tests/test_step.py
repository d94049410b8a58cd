"""The one training step: equal to the readable reference (loss_and_grads + SGD.step),
and allocation-free after its first call."""

import tracemalloc

import numpy as np
import pytest

import gpubp
from gpubp import blas
from gpubp.step import make_stepper


def data(rng, n=96, n_in=12, n_classes=4, rows=False):
    X = rng.normal(size=(n, n_in))
    y = rng.integers(0, n_classes, n)
    if rows:
        y = rng.dirichlet(np.ones(n_classes), size=n)
    return X, y


@pytest.mark.parametrize("rows", [False, True], ids=["labels", "target-rows"])
@pytest.mark.parametrize("optimizer", [
    dict(lr=0.3), dict(lr=0.2, momentum=0.9), dict(lr=0.1, momentum=0.8, nesterov=True,
                                                    weight_decay=1e-3)],
    ids=["plain", "momentum", "nesterov-decay"])
def test_the_step_equals_the_reference_loop(rng, rows, optimizer):
    """float64: each step equals loss_and_grads then SGD.step to rounding, on every GEMM
    library installed (and with the fused update, for plain SGD, where one takes beta)."""
    X, y = data(rng, rows=rows)
    for library in blas.installed():
        with blas.forced(library):
            net = gpubp.MLP([12, 9, 7, 4], backend="numpy", dtype="float64", seed=1)
            ref = gpubp.MLP([12, 9, 7, 4], backend="numpy", dtype="float64", seed=1)
            opt, ref_opt = gpubp.SGD(**optimizer), gpubp.SGD(**optimizer)
            stepper = make_stepper(net, opt, net.prepare_features(X),
                                   net.prepare_targets(y, len(X)), batch_size=40)
            order = rng.permutation(len(X))
            stepper.begin_epoch(order, optimizer["lr"])
            total = 0.0
            for b in range(3):  # 40, 40 and a partial batch of 16
                stepper.step(b)
                rows_b = order[b * 40:(b + 1) * 40]
                loss, grads = ref.loss_and_grads(X[rows_b], y[rows_b])
                ref_opt.step(ref.parameters(), [g for pair in grads for g in pair])
                total += loss * len(rows_b)
                for p, q in zip(net.parameters(), ref.parameters()):
                    np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-14, err_msg=library)
            assert stepper.finish_epoch() == pytest.approx(total, rel=1e-12)


def test_an_epoch_allocates_only_its_permutation():
    """Once warm (the first two epochs make the workspaces, the momentum buffers and the
    trainer's two epoch-start snapshots), a whole epoch of Trainer.fit allocates nothing
    but the epoch's permutation, Python's small objects and NumPy's fixed-size ufunc
    iterator buffers (about 33 KiB, whatever the batch or the width): one temporary the
    size of a hidden layer would be 1 MiB here."""
    rng = np.random.default_rng(0)
    n, batch, width = 4096, 256, 1024
    X = rng.normal(size=(n, 64)).astype(np.float32)
    y = rng.integers(0, 10, n)
    for optimizer in (gpubp.SGD(0.1), gpubp.SGD(0.1, momentum=0.9, nesterov=True,
                                                  weight_decay=1e-4)):
        net = gpubp.MLP([64, width, 10], backend="numpy", seed=0)
        peaks, start = [], [0]

        def measure(record):
            if tracemalloc.is_tracing():
                peaks.append(tracemalloc.get_traced_memory()[1] - start[0])
                tracemalloc.stop()
            if 2 <= record["epoch"] < 4:  # measure epochs 3 and 4
                tracemalloc.start()
                start[0] = tracemalloc.get_traced_memory()[0]

        gpubp.Trainer(net, optimizer, batch_size=batch, epochs=4, seed=0, progress=False,
                      on_epoch=measure).fit(X, y)
        permutation = n * 8
        hidden_layer = batch * width * 4
        assert len(peaks) == 2
        assert max(peaks) < permutation + 64 * 1024 < hidden_layer, (optimizer, peaks)

"""pytest-benchmark: one training step and one epoch of 784-1024-1024-10, float32.

    python -m pytest bench/bench_step.py --benchmark-enable

Not collected by the plain ``python -m pytest`` (testpaths is tests/, and pyproject passes
--benchmark-disable). Each case runs on NumPy, and on CuPy where a device is seen; GPU
cases synchronize inside the timed call. The naive NumPy step (bench.naive_numpy) is timed
beside gpubp's as the baseline.
"""

import numpy as np
import pytest

import gpubp
from bench import naive_numpy

SIZES = (784, 1024, 1024, 10)
STEP_BATCH = 256
EPOCH_ROWS, EPOCH_BATCH = 4096, 256


def batch(rows, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((rows, SIZES[0]), dtype=np.float32), rng.integers(0, SIZES[-1], rows)


@pytest.mark.benchmark(group="step B=256")
def test_step_gpubp(benchmark, backend):
    """loss_and_grads_prepared + SGD.step: forward, fused loss/gradient, backward, update."""
    net = gpubp.MLP(SIZES, backend=backend, dtype="float32", seed=0)
    X_host, y_host = batch(STEP_BATCH)
    X, targets = net.prepare_features(X_host), net.prepare_targets(y_host, STEP_BATCH)
    optimizer, params = gpubp.SGD(0.01), net.parameters()

    def step():
        loss, grads = net.loss_and_grads_prepared(X, targets)
        optimizer.step(params, [g for pair in grads for g in pair])
        net.backend.synchronize()

    benchmark(step)


@pytest.mark.benchmark(group="step B=256")
def test_step_naive_numpy(benchmark):
    """The seed's equations written the obvious way, for the same step."""
    weights, biases = naive_numpy.init_params(SIZES)
    X, y = batch(STEP_BATCH)

    benchmark(lambda: naive_numpy.sgd_step(weights, biases, X, y, 0.01))


@pytest.mark.benchmark(group="epoch 4096 rows B=256")
def test_epoch_trainer_fit(benchmark, backend):
    """Trainer.fit for one epoch: shuffle, gather, step per batch, loss read at the end."""
    net = gpubp.MLP(SIZES, backend=backend, dtype="float32", seed=0)
    X, y = batch(EPOCH_ROWS)
    trainer = gpubp.Trainer(net, gpubp.SGD(0.01), batch_size=EPOCH_BATCH, epochs=1, seed=0,
                            progress=False)
    benchmark.pedantic(trainer.fit, args=(X, y), rounds=5, iterations=1, warmup_rounds=1)

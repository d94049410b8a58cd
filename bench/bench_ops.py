"""pytest-benchmark: each op of a training step at a few sizes, float32.

    python -m pytest bench/bench_ops.py --benchmark-enable

On NumPy (gpubp.cpu_kernels), and on CuPy where a device is seen (the CUDA kernels of
gpubp.cuda.kernels, synchronized inside the timed call): the ops module the network itself
uses on that backend. Hidden-layer ops at (B, 1024), in the layout of the network's own
buffers (column-major on NumPy), the loss at (B, 10) with integer labels.
"""

import numpy as np
import pytest

from gpubp import cpu_kernels
from gpubp.cuda import kernels as cuda_kernels

HIDDEN_SHAPES = [(256, 1024), (4096, 1024)]


def step_ops(backend):
    """The ops module the network uses on ``backend`` (see gpubp.network)."""
    return cuda_kernels if backend.is_gpu else cpu_kernels
LOGIT_SHAPES = [(256, 10), (4096, 10), (65536, 10)]


def random(backend, shape, low=-4.0, high=4.0, seed=0):
    rng = np.random.default_rng(seed)
    return backend.asarray(rng.uniform(low, high, shape).astype(np.float32))


def hidden(backend, shape, low, high, seed=0):
    """A (B, n) hidden-layer array laid out as the network's step buffers are."""
    a = random(backend, shape, low, high, seed)
    return a if backend.is_gpu else np.asfortranarray(a)


def timed(backend, fn, *args):
    def call():
        fn(*args)
        backend.synchronize()
    return call


@pytest.mark.parametrize("shape", HIDDEN_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.benchmark(group="bias_sigmoid")
def test_bias_sigmoid(benchmark, backend, shape):
    z, bias = hidden(backend, shape, -4.0, 4.0), random(backend, shape[1:], seed=4)
    out = backend.xp.empty_like(z)
    benchmark(timed(backend, step_ops(backend).bias_sigmoid, z, bias, out))


@pytest.mark.parametrize("with_bias_grad", [False, True], ids=["delta", "delta+db"])
@pytest.mark.parametrize("shape", HIDDEN_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.benchmark(group="sigmoid_backward")
def test_sigmoid_backward(benchmark, backend, shape, with_bias_grad):
    grad_a = hidden(backend, shape, -1.0, 1.0, seed=1)
    a = hidden(backend, shape, 0.0, 1.0, seed=2)
    out = backend.xp.empty_like(a)
    bias_grad = backend.xp.empty(shape[1], np.float32) if with_bias_grad else None
    benchmark(timed(backend, step_ops(backend).sigmoid_backward, grad_a, a, out, bias_grad))


@pytest.mark.parametrize("shape", LOGIT_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.benchmark(group="softmax_cross_entropy")
def test_softmax_cross_entropy(benchmark, backend, shape):
    logits = random(backend, shape, -10.0, 10.0)
    labels = backend.asarray(np.random.default_rng(3).integers(0, shape[1], shape[0]))
    out = backend.xp.empty_like(logits)
    xent = step_ops(backend).softmax_cross_entropy

    def fused():
        xent(logits, labels, 1.0 / shape[0], reduction="mean", out=out)

    benchmark(timed(backend, fused))

"""The CUDA training step without a GPU: gpubp.step.cuda_step's own code, with the kernels
run by the CPU emulation, cuBLAS by NumPy, and CUDA graphs by a recorder that captures the
launches (with the arguments they had) and replays exactly those. A step that relied on a
host write between replays would go wrong here as it would on a GPU.

Checked: eager and replayed steps equal the NumPy stepper; 2L + 1 kernels and 3L − 1 GEMMs
a step; nothing allocated after warm-up; the graph self-check and the capture failure fall
back to eager launches with a warning. Timings need a GPU (bench/gpu_check.py).
"""

from types import SimpleNamespace

import numpy as np
import pytest
from cuda_emulator import compiler, device, emulate, emulated_cupy

import gpubp
from gpubp.cuda import kernels as cuda_kernels
from gpubp.errors import DataError
from gpubp.step import NumpyStepper

pytestmark = pytest.mark.skipif(compiler() is None, reason="needs g++ to build the emulation")


class Capture:
    """The fake CUDA runtime's stream capture: while recording, launches and GEMMs are
    kept (not run); a graph replays the kept calls with the arguments they were given."""

    def __init__(self):
        self.recording = None
        self.fail = None  # an exception to raise at begin_capture
        self.corrupt = False  # graphs drop their last call (a wrong replay)

    def run_or_record(self, call):
        if self.recording is not None:
            self.recording.append(call)
        else:
            call()


class Graph:
    def __init__(self, calls, capture):
        self.calls = calls[:-1] if capture.corrupt else calls
        self.launches = 0

    def launch(self, stream=None):
        self.launches += 1
        for call in self.calls:
            call()


def fake_cuda_cupy(capture: Capture):
    cupy = emulated_cupy()

    class Stream:
        def __init__(self, non_blocking=False):
            self.ptr = 1234

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            pass

        def begin_capture(self):
            if capture.fail is not None:
                raise capture.fail
            capture.recording = []

        def end_capture(self):
            calls, capture.recording = capture.recording, None
            return Graph(calls, capture)

    cupy.cuda = SimpleNamespace(
        runtime=SimpleNamespace(getDevice=lambda: 0), Stream=Stream,
        Device=lambda *a: SimpleNamespace(synchronize=lambda: None))
    cupy.zeros_like = lambda a: device(np.zeros_like(a))
    cupy.allclose = lambda a, b, **kw: np.allclose(a, b, **kw)
    return cupy


class FakeCublas:
    """gpubp.cuda.cublas.Cublas on host arrays (NumPy GEMMs), captured like the kernels."""

    calls = []
    tf32 = None  # what the last stepper asked for

    def __init__(self, stream, tf32=False):
        self.capture = FakeCublas.capture
        FakeCublas.tf32 = tf32

    def close(self):
        pass

    def matmul(self, a, b, out, alpha=1.0, beta=0.0):
        def gemm():
            product = alpha * (np.asarray(a) @ np.asarray(b))
            out[...] = product if beta == 0 else product + beta * out
        FakeCublas.calls.append(a.shape)
        self.capture.run_or_record(gemm)
        return out


@pytest.fixture
def cuda(emulator, monkeypatch):
    from gpubp.step import cuda_step

    capture = Capture()
    cupy = fake_cuda_cupy(capture)

    def function(name, source):
        run = emulator.function(name, source)
        return lambda grid, block, args: capture.run_or_record(lambda: run(grid, block, args))

    emulate(monkeypatch, function, cupy)
    FakeCublas.capture, FakeCublas.calls = capture, []
    monkeypatch.setattr(cuda_step, "Cublas", FakeCublas)
    return SimpleNamespace(cupy=cupy, capture=capture, step=cuda_step)


class DeviceNet:
    """An MLP's parameters as emulated device arrays, with what the stepper reads."""

    def __init__(self, net, cupy):
        self.layer_sizes, self.dtype = net.layer_sizes, net.dtype
        self.weights = [device(W.copy()) for W in net.weights]
        self.biases = [device(b.copy()) for b in net.biases]
        self.backend = SimpleNamespace(is_gpu=True, xp=cupy)

    def parameters(self):
        return [p for pair in zip(self.weights, self.biases) for p in pair]


def problem(rng, dtype, n=19, sizes=(12, 9, 7, 4)):
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], n)
    net = gpubp.MLP(sizes, backend="numpy", dtype=dtype, seed=2)
    return X, y, net


def run_epochs(stepper, order, batch, lr, epochs=2):
    losses = []
    for _ in range(epochs):
        stepper.begin_epoch(order, lr)
        for b in range(-(-len(order) // batch)):
            stepper.step(b)
        losses.append(stepper.finish_epoch())
    return losses


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
@pytest.mark.parametrize("opt", [dict(lr=0.3), dict(lr=0.2, momentum=0.9, nesterov=True,
                                                    weight_decay=1e-3)],
                         ids=["plain", "nesterov-decay"])
def test_the_cuda_step_equals_the_numpy_step(cuda, rng, graphs, opt):
    X, y, net = problem(rng, np.float64)
    order = rng.permutation(len(X))
    reference = gpubp.MLP(net.layer_sizes, backend="numpy", dtype="float64", seed=2)
    numpy_stepper = NumpyStepper(reference, gpubp.SGD(**opt), reference.prepare_features(X),
                                 reference.prepare_targets(y, len(X)), 8)
    want = run_epochs(numpy_stepper, order, 8, opt["lr"])

    device_net = DeviceNet(net, cuda.cupy)
    stepper = cuda.step.CudaStepper(device_net, gpubp.SGD(**opt), device(X),
                                    device(y.astype(np.int64)), 8, cuda_graphs=graphs)
    got = run_epochs(stepper, order, 8, opt["lr"])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for p, q in zip(device_net.parameters(), reference.parameters()):
        np.testing.assert_allclose(p, q, rtol=1e-11, atol=1e-13)
    if graphs:  # 19 rows by 8: 2 full batches replayed a step, the last one (3 rows) eager
        graph = stepper._graphs[8]
        assert graph is not False and graph.launches == 2 * 2


def test_precision_tf32_reaches_cublas(cuda, rng):
    X, y, net = problem(rng, np.float32)
    for precision, want in (("fp32", False), ("tf32", True)):
        cuda.step.CudaStepper(DeviceNet(net, cuda.cupy), gpubp.SGD(0.1), device(X),
                              device(y.astype(np.int64)), 8, precision=precision)
        assert FakeCublas.tf32 is want


def test_a_label_outside_the_classes_is_a_data_error_naming_the_epoch(cuda, rng):
    """The kernels flag a bad label (the targets were not checked on the host); the
    epoch-end sync reads the flag, raises DataError naming the epoch, and resets it."""
    X, y, net = problem(rng, np.float64)
    y[5] = net.layer_sizes[-1]  # class C: outside [0, C)
    stepper = cuda.step.CudaStepper(DeviceNet(net, cuda.cupy), gpubp.SGD(0.1), device(X),
                                    device(y.astype(np.int64)), 8, cuda_graphs=False)
    stepper.begin_epoch(np.arange(len(X)), 0.1, epoch=2)
    for b in range(3):
        stepper.step(b)
    with pytest.raises(DataError, match=r"a label outside \[0, C\).*\(in epoch 3\)"):
        stepper.finish_epoch()
    assert not np.asarray(stepper.scratch.flags.get()).any()  # reset for the next epoch


def test_a_step_is_2L_plus_1_kernels_and_3L_minus_1_gemms_and_allocates_nothing(cuda, rng):
    X, y, net = problem(rng, np.float32)
    device_net = DeviceNet(net, cuda.cupy)
    stepper = cuda.step.CudaStepper(device_net, gpubp.SGD(0.1, momentum=0.9), device(X),
                                    device(y.astype(np.int64)), 8, cuda_graphs=False)
    stepper.begin_epoch(rng.permutation(len(X)), 0.1)
    stepper.step(0)  # warm-up: workspaces, scratch, tables, momentum buffers
    allocated = len(cuda.cupy.allocations)
    FakeCublas.calls.clear()
    with cuda_kernels.record_launches() as launches:
        stepper.step(1)
    L = len(net.weights)
    assert len(launches) == 2 * L + 1 and len(FakeCublas.calls) == 3 * L - 1
    assert len(cuda.cupy.allocations) == allocated


def test_a_replay_that_differs_from_the_eager_step_turns_graphs_off(cuda, rng):
    X, y, net = problem(rng, np.float64)
    order = rng.permutation(len(X))
    reference = DeviceNet(net, cuda.cupy)
    run_epochs(cuda.step.CudaStepper(reference, gpubp.SGD(0.3), device(X),
                                     device(y.astype(np.int64)), 8, cuda_graphs=False),
               order, 8, 0.3)
    cuda.capture.corrupt = True
    device_net = DeviceNet(net, cuda.cupy)
    stepper = cuda.step.CudaStepper(device_net, gpubp.SGD(0.3), device(X),
                                    device(y.astype(np.int64)), 8, cuda_graphs=True)
    with pytest.warns(cuda.step.CudaGraphWarning, match="differed from the eager step"):
        run_epochs(stepper, order, 8, 0.3)
    assert stepper.use_graphs is False
    for p, q in zip(device_net.parameters(), reference.parameters()):
        np.testing.assert_array_equal(p, q)  # the failed check cost no step


def test_a_failed_capture_turns_graphs_off(cuda, rng):
    X, y, net = problem(rng, np.float32)
    cuda.capture.fail = RuntimeError("operation not permitted when stream is capturing")
    stepper = cuda.step.CudaStepper(DeviceNet(net, cuda.cupy), gpubp.SGD(0.3), device(X),
                                    device(y.astype(np.int64)), 8, cuda_graphs=True)
    with pytest.warns(cuda.step.CudaGraphWarning, match="capturing the step failed"):
        run_epochs(stepper, np.arange(len(X)), 8, 0.3, epochs=1)


def test_graphs_follow_the_switches(monkeypatch):
    from gpubp.step.cuda_step import graphs_enabled

    monkeypatch.delenv("GPUBP_CUDA_GRAPHS", raising=False)
    assert graphs_enabled(None) and not graphs_enabled(False)
    monkeypatch.setenv("GPUBP_CUDA_GRAPHS", "0")
    assert not graphs_enabled(None) and graphs_enabled(True)
    with pytest.raises(TypeError, match="cuda_graphs"):
        graphs_enabled("yes")

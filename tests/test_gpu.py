"""The CuPy backend computes what the NumPy backend computes. Skipped without a device."""

import numpy as np
import pytest

import gpubp
from gpubp.datasets import load_digits

pytestmark = pytest.mark.gpu


def both(sizes, dtype, seed=0):
    return (gpubp.MLP(sizes, backend="numpy", dtype=dtype, seed=seed),
            gpubp.MLP(sizes, backend="cupy", dtype=dtype, seed=seed))


def test_same_seed_gives_identical_weights_on_both_backends():
    cpu, gpu = both((784, 800, 10), "float32", seed=7)
    assert gpu.backend.name == "cupy" and type(gpu.weights[0]).__module__.startswith("cupy")
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        assert p.tobytes() == gpubp.to_numpy(q).tobytes()


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("sizes,batch", [((7, 5, 3), 1), ((20, 33, 17, 10), 64),
                                         ((784, 800, 10), 128)])
def test_loss_and_grads_match_numpy_in_float64(sizes, batch, soft, rng):
    cpu, gpu = both(sizes, "float64", seed=batch)
    X = rng.normal(size=(batch, sizes[0]))
    y = rng.dirichlet(np.ones(sizes[-1]), size=batch) if soft else rng.integers(0, sizes[-1], batch)
    loss_cpu, grads_cpu = cpu.loss_and_grads(X, y)
    loss_gpu, grads_gpu = gpu.loss_and_grads(X, y)
    assert isinstance(loss_gpu, float)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-10)
    for g_cpu, g_gpu in zip([g for p in grads_cpu for g in p], [g for p in grads_gpu for g in p]):
        np.testing.assert_allclose(gpubp.to_numpy(g_gpu), g_cpu, rtol=1e-10, atol=1e-14)


def test_inference_returns_device_arrays_equal_to_numpy(rng):
    cpu, gpu = both((10, 16, 4), "float64", seed=3)
    X = rng.normal(size=(50, 10))
    P = gpu.forward(X)
    assert type(P).__module__.startswith("cupy")
    np.testing.assert_allclose(gpubp.to_numpy(P), cpu.forward(X), rtol=1e-12)
    np.testing.assert_array_equal(gpubp.to_numpy(gpu.predict(X)), cpu.predict(X))
    assert gpu.evaluate(X, np.zeros(50, int)) == pytest.approx(cpu.evaluate(X, np.zeros(50, int)))


def test_training_epoch_matches_numpy_in_float32():
    data = load_digits()
    cpu, gpu = both((64, 128, 10), "float32", seed=1)
    for net in (cpu, gpu):
        gpubp.Trainer(net, gpubp.SGD(0.1, momentum=0.9), batch_size=32, epochs=1, seed=2,
                      progress=False).fit(data.X_train[:512], data.y_train[:512])
    for p, q in zip(cpu.parameters(), gpu.parameters()):
        q = gpubp.to_numpy(q)
        assert np.abs(q - p).max() <= 1e-5 * np.abs(p).max()


def test_trainer_on_cupy_reaches_97_percent_on_digits():
    data = load_digits()
    net = gpubp.MLP((64, 128, 10), backend="cupy", seed=0)
    gpubp.Trainer(net, gpubp.SGD(0.3, momentum=0.9, weight_decay=1e-4), batch_size=16,
                  epochs=100, seed=0, progress=False, schedule=gpubp.CosineLR()
                  ).fit(data.X_train, data.y_train, validation=(data.X_test, data.y_test))
    assert net.evaluate(data.X_test, data.y_test)["accuracy"] >= 0.97


def test_models_move_between_backends(tmp_path):
    cpu, gpu = both((5, 4, 3), "float32", seed=0)
    gpu.biases[0] += 1
    gpu.save(tmp_path / "g.safetensors")
    on_cpu = gpubp.MLP.load(tmp_path / "g.safetensors", backend="numpy")
    np.testing.assert_array_equal(on_cpu.biases[0], gpubp.to_numpy(gpu.biases[0]))
    cpu.save(tmp_path / "c.safetensors")
    on_gpu = gpubp.MLP.load(tmp_path / "c.safetensors", backend="cupy")
    assert on_gpu.backend.name == "cupy"
    np.testing.assert_array_equal(gpubp.to_numpy(on_gpu.weights[1]), cpu.weights[1])


def test_bad_device_input_is_rejected_unchanged():
    _, gpu = both((4, 5, 3), "float32")
    xp = gpu.backend.xp
    before = [gpubp.to_numpy(p).copy() for p in gpu.parameters()]
    X = xp.ones((6, 4), dtype=xp.float32)
    X[2, 1] = xp.nan
    with pytest.raises(ValueError, match=r"X: contains NaN or Inf \(first at index \(2, 1\)\)"):
        gpu.loss_and_grads(X, xp.zeros(6, dtype=xp.int64))
    with pytest.raises(ValueError, match="y: class label 3 is out of range"):
        gpu.loss_and_grads(xp.ones((6, 4)), xp.full(6, 3))
    with pytest.raises(ValueError, match="y: each target row must sum to 1"):
        gpu.loss_and_grads(xp.ones((6, 4)), xp.full((6, 3), 0.5))
    for p, q in zip(gpu.parameters(), before):
        np.testing.assert_array_equal(gpubp.to_numpy(p), q)


def test_divergence_on_cupy_keeps_finite_weights():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 5)).astype(np.float32) * 1e3
    net = gpubp.MLP((5, 7, 3), backend="cupy", seed=0)
    before = [gpubp.to_numpy(p).copy() for p in net.parameters()]
    with pytest.raises(gpubp.DivergenceError):
        gpubp.Trainer(net, gpubp.SGD(1e36), batch_size=4, epochs=1, progress=False).fit(
            X, rng.integers(0, 3, 64))
    for p, q in zip(net.parameters(), before):
        np.testing.assert_array_equal(gpubp.to_numpy(p), q)

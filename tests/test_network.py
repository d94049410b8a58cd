"""The network's initialization, inference and parameter handling."""

import numpy as np
import pytest

import gpubp
from gpubp import ops


def test_glorot_uniform_initialization_is_seeded():
    net = gpubp.MLP((784, 800, 10), backend="numpy", seed=3)
    assert [W.shape for W in net.weights] == [(800, 784), (10, 800)]
    assert [b.shape for b in net.biases] == [(800,), (10,)]
    for W, (n_in, n_out) in zip(net.weights, [(784, 800), (800, 10)]):
        limit = np.sqrt(6 / (n_in + n_out))
        assert W.dtype == np.float32
        assert np.abs(W).max() <= limit
        assert np.abs(W).max() > 0.99 * limit  # fills the interval
        assert abs(W.std() - limit / np.sqrt(3)) < 0.01 * limit  # the uniform's std
    assert all((b == 0).all() for b in net.biases)

    again = gpubp.MLP((784, 800, 10), backend="numpy", seed=3)
    other = gpubp.MLP((784, 800, 10), backend="numpy", seed=4)
    for p, q, r in zip(net.parameters(), again.parameters(), other.parameters()):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(net.weights[0], other.weights[0])


def test_float64_network_holds_the_float32_values_exactly_rounded():
    n32 = gpubp.MLP((5, 4, 3), backend="numpy", seed=1, dtype="float32")
    n64 = gpubp.MLP((5, 4, 3), backend="numpy", seed=1, dtype="float64")
    assert n64.weights[0].dtype == np.float64
    np.testing.assert_array_equal(n64.weights[0].astype(np.float32), n32.weights[0])


def test_forward_matches_a_direct_implementation(rng):
    net = gpubp.MLP((6, 5, 4, 3), backend="numpy", dtype="float64", seed=2)
    X = rng.normal(size=(7, 6))
    a = X
    for W, b in zip(net.weights[:-1], net.biases[:-1]):
        a = 1 / (1 + np.exp(-(a @ W.T + b)))
    z = a @ net.weights[-1].T + net.biases[-1]
    expected = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    P = net.forward(X)
    np.testing.assert_allclose(P, expected, rtol=1e-12)
    np.testing.assert_allclose(net.predict_proba(X), P)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(net.predict(X), expected.argmax(axis=1))
    assert net.predict(X).dtype == np.int64


def test_inference_accepts_lists_and_integer_pixels():
    net = gpubp.MLP((3, 2), backend="numpy", seed=0)
    P = net.forward([[0, 128, 255]])
    assert P.shape == (1, 2) and P.dtype == np.float32
    np.testing.assert_allclose(P, net.forward(np.array([[0.0, 128.0, 255.0]])))


def test_evaluate_reports_mean_loss_and_accuracy(rng):
    net = gpubp.MLP((4, 6, 3), backend="numpy", dtype="float64", seed=0)
    X, y = rng.normal(size=(20, 4)), rng.integers(0, 3, size=20)
    result = net.evaluate(X, y)
    loss, _ = net.loss_and_grads(X, y)
    assert result["loss"] == pytest.approx(loss, rel=1e-12)
    assert result["accuracy"] == pytest.approx(np.mean(net.predict(X) == y))
    soft = np.eye(3)[y]
    assert net.evaluate(X, soft) == pytest.approx(result)


def test_evaluate_in_chunks_equals_one_pass(rng, monkeypatch):
    net = gpubp.MLP((4, 6, 3), backend="numpy", dtype="float64", seed=0)
    X, y = rng.normal(size=(25, 4)), rng.integers(0, 3, size=25)
    whole = net.evaluate(X, y)
    monkeypatch.setattr("gpubp.network.EVAL_CHUNK", 7)
    assert net.evaluate(X, y) == pytest.approx(whole, rel=1e-12)
    np.testing.assert_array_equal(net.predict(X), net.forward(X).argmax(axis=1))


def test_loss_and_grads_uses_the_seed_equations(rng):
    """dL/dz^L = (P − Y)/B (EqA1.1) and dL/dW^L = δ^L (a^{L−1})^T (EqA1), written out."""
    net = gpubp.MLP((3, 4, 2), backend="numpy", dtype="float64", seed=5)
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 2, size=5)
    a1 = ops.sigmoid(X @ net.weights[0].T + net.biases[0])
    P = ops.softmax(a1 @ net.weights[1].T + net.biases[1])
    delta2 = (P - np.eye(2)[y]) / 5
    delta1 = (delta2 @ net.weights[1]) * a1 * (1 - a1)
    _, grads = net.loss_and_grads(X, y)
    np.testing.assert_allclose(grads[1][0], delta2.T @ a1, rtol=1e-12)
    np.testing.assert_allclose(grads[1][1], delta2.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(grads[0][0], delta1.T @ X, rtol=1e-12)
    np.testing.assert_allclose(grads[0][1], delta1.sum(axis=0), rtol=1e-12)


def test_state_round_trip_restores_parameters_in_place():
    net = gpubp.MLP((3, 4, 2), backend="numpy", seed=0)
    live = net.parameters()
    saved = net.state()
    for p in live:
        p += 1
    net.load_state(saved)
    for p, q, s in zip(net.parameters(), live, saved):
        assert p is q
        np.testing.assert_array_equal(p, s)


def test_repr_and_parameter_count():
    net = gpubp.MLP((784, 800, 10), backend="numpy", seed=0)
    assert repr(net) == "MLP(layer_sizes=(784, 800, 10), backend='numpy', dtype='float32')"
    assert net.n_parameters == 784 * 800 + 800 + 800 * 10 + 10


def test_the_step_fuses_plain_sgd_only(monkeypatch):
    """The update rides on the gradient GEMM for plain SGD where the GEMM takes beta
    (tests/test_step.py holds the fused step to the reference)."""
    from gpubp import blas
    from gpubp.step import NumpyStepper

    net = gpubp.MLP((4, 3, 2), backend="numpy", seed=0)

    def fused(optimizer):
        return NumpyStepper(net, optimizer, np.zeros((1, 4), np.float32),
                            np.zeros(1, np.int64), 1)._fused_update()

    monkeypatch.setattr(blas, "fuses_update", lambda: True)
    assert fused(gpubp.SGD(0.1))
    assert not fused(gpubp.SGD(0.1, momentum=0.9))
    assert not fused(gpubp.SGD(0.1, weight_decay=1e-4))
    monkeypatch.setattr(blas, "fuses_update", lambda: False)  # numpy.matmul: no beta
    assert not fused(gpubp.SGD(0.1))


def test_the_memory_check_counts_only_the_rows_evaluated(monkeypatch):
    """A wide layer's evaluation chunk is counted for the rows actually evaluated, not
    8,192 always; and the error names what drives the size (gpubp train --layers 700000
    on the digits was refused as needing 44 GiB, blaming batch_size)."""
    from gpubp.network import EVAL_CHUNK

    net = gpubp.MLP((4, 20_000, 3), backend="numpy", seed=0)
    full_chunk = EVAL_CHUNK * 2 * 20_000 * 4  # 1.2 GiB
    monkeypatch.setattr("gpubp.backend.available_memory", lambda: full_chunk // 4)
    with pytest.raises(ValueError, match=r"^layer_sizes: .* 8,192 rows at a time"):
        net.check_training_memory(16)  # a caller that does not say: a full chunk, as before
    net.check_training_memory(16, eval_rows=0)  # no validation data
    net.check_training_memory(16, eval_rows=359)  # the digits' test part: 57 MiB
    with pytest.raises(ValueError, match=r"^layer_sizes: training .* needs about"):
        net.check_training_memory(16, eval_rows=EVAL_CHUNK + 1)
    with pytest.raises(ValueError, match=r"^batch_size: training .* needs about"):
        net.check_training_memory(10_000, eval_rows=0)
    with pytest.raises(ValueError, match="eval_rows"):
        net.check_training_memory(16, eval_rows=-1)


def test_trainer_fit_counts_its_own_validation_rows_for_memory(monkeypatch):
    """Trainer.fit passes the validation rows it evaluates (none here), so a wide layer
    that fits trains instead of being refused for an 8,192-row evaluation chunk."""
    from gpubp.network import EVAL_CHUNK

    net = gpubp.MLP((4, 20_000, 3), backend="numpy", seed=0)
    monkeypatch.setattr("gpubp.backend.available_memory",
                        lambda: EVAL_CHUNK * 2 * 20_000 * 4 // 4)  # a quarter of a full chunk
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(32, 4)), rng.integers(0, 3, 32)
    gpubp.Trainer(net, gpubp.SGD(0.1), batch_size=16, epochs=1, progress=False).fit(X, y)
    with pytest.raises(ValueError, match=r"^layer_sizes: .* to evaluate 8,192 rows"):
        gpubp.Trainer(net, gpubp.SGD(0.1), batch_size=16, epochs=1, progress=False).fit(
            np.tile(X, (300, 1)), np.tile(y, 300), validation=0.9)

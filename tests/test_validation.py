"""Bad input is a clear ValueError/TypeError naming the argument, and changes nothing."""

import numpy as np
import pytest

import gpubp


def make_net():
    return gpubp.MLP((4, 5, 3), backend="numpy", seed=0)


def good_data(n=6):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, size=n)


def nan_X():
    X, _ = good_data()
    X[2, 1] = np.nan
    return X


def inf_X():
    X, _ = good_data()
    X[0, 3] = -np.inf
    return X


X_OK, Y_OK = good_data()
BAD_INPUTS = {
    "nan-in-X": (nan_X(), Y_OK, ValueError, "X: contains NaN or Inf"),
    "inf-in-X": (inf_X(), Y_OK, ValueError, "X: contains NaN or Inf"),
    "negative-label": (X_OK, np.array([0, 1, -1, 2, 0, 1]), ValueError, "y: class labels must be >= 0"),
    "label-out-of-range": (X_OK, np.array([0, 1, 3, 2, 0, 1]), ValueError, "y: class label 3 is out of range"),
    "fractional-label": (X_OK, np.array([0, 1, 1.5, 2, 0, 1]), ValueError, "y: class labels must be integers"),
    "bool-labels": (X_OK, np.ones(6, dtype=bool), TypeError, "y: expected a real numeric array"),
    "rows-not-summing-to-1": (X_OK, np.full((6, 3), 0.3), ValueError, "y: each target row must sum to 1"),
    "negative-target": (X_OK, np.tile([1.5, -0.5, 0.0], (6, 1)), ValueError, "y: target rows must be non-negative"),
    "nan-target": (X_OK, np.tile([np.nan, 0.5, 0.5], (6, 1)), ValueError, "y: contains NaN or Inf"),
    "too-few-labels": (X_OK, Y_OK[:5], ValueError, "y: has 5 rows, X has 6"),
    "wrong-feature-count": (X_OK[:, :3], Y_OK, ValueError, "X: has 3 features per row, the network takes 4"),
    "wrong-class-count": (X_OK, np.full((6, 4), 0.25), ValueError, "y: has 4 columns, the network has 3 classes"),
    "1d-X": (X_OK[0], Y_OK, ValueError, "X: expected a 2-D array"),
    "3d-y": (X_OK, np.zeros((6, 3, 1)), ValueError, "y: expected labels (B,) or target rows (B, C)"),
    "string-X": (X_OK.astype(str), Y_OK, TypeError, "X: expected a real numeric array"),
    "object-X": (X_OK.astype(object), Y_OK, TypeError, "X: expected a real numeric array"),
    "complex-X": (X_OK.astype(complex), Y_OK, TypeError, "X: expected a real numeric array"),
    "string-y": (X_OK, Y_OK.astype(str), TypeError, "y: expected a real numeric array"),
    "float32-overflow": (np.full((6, 4), 1e39), Y_OK, ValueError, "X: has values beyond the range of float32"),
    "empty-X": (np.zeros((0, 4)), np.zeros(0, dtype=int), ValueError, "X: is empty"),
    "ragged-X": ([[1.0, 2.0], [1.0]], Y_OK, TypeError, "X: cannot be read as an array"),
}


def snapshot(net):
    return [p.copy() for p in net.parameters()]


def assert_unchanged(net, before):
    for p, q in zip(net.parameters(), before):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_loss_and_grads_rejects_bad_input(case):
    X, y, error, message = BAD_INPUTS[case]
    net = make_net()
    before = snapshot(net)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        net.loss_and_grads(X, y)
    assert_unchanged(net, before)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_fit_rejects_bad_input_before_training(case):
    X, y, error, message = BAD_INPUTS[case]
    net = make_net()
    optimizer = gpubp.SGD(0.1, momentum=0.9)
    before = snapshot(net)
    trainer = gpubp.Trainer(net, optimizer, batch_size=2, epochs=1, seed=0, progress=False)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        trainer.fit(X, y)
    assert_unchanged(net, before)
    assert optimizer.velocity is None


@pytest.mark.parametrize("X", [nan_X(), X_OK[:, :2], X_OK.astype(str)])
def test_inference_rejects_bad_features(X):
    net = make_net()
    for method in (net.forward, net.predict_proba, net.predict):
        with pytest.raises((ValueError, TypeError), match="^X: "):
            method(X)


def test_bad_validation_data_is_named():
    net = make_net()
    trainer = gpubp.Trainer(net, gpubp.SGD(0.1), batch_size=2, epochs=1, progress=False)
    with pytest.raises(ValueError, match="validation X: contains NaN"):
        trainer.fit(X_OK, Y_OK, validation=(nan_X(), Y_OK))
    with pytest.raises(ValueError, match="validation y: class label 7"):
        trainer.fit(X_OK, Y_OK, validation=(X_OK, np.full(6, 7)))
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="validation: must be"):
            trainer.fit(X_OK, Y_OK, validation=fraction)
    with pytest.raises(ValueError, match="validation: 0.1 leaves one side of the split empty"):
        trainer.fit(X_OK[:3], np.array([0, 1, 2]), validation=0.1)  # one row per class
    with pytest.raises(ValueError, match="patience: early stopping needs validation data"):
        gpubp.Trainer(net, gpubp.SGD(0.1), patience=2, progress=False).fit(X_OK, Y_OK)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"batch_size": 0}, ValueError, "batch_size: must be >= 1, got 0"),
    ({"batch_size": -3}, ValueError, "batch_size: must be >= 1"),
    ({"batch_size": 2.5}, TypeError, "batch_size: expected an integer"),
    ({"batch_size": True}, TypeError, "batch_size: expected an integer"),
    ({"epochs": 0}, ValueError, "epochs: must be >= 1"),
    ({"seed": -1}, ValueError, "seed: must be >= 0"),
    ({"patience": 0}, ValueError, "patience: must be >= 1"),
    ({"min_delta": -1.0}, ValueError, "min_delta: must be >= 0"),
    ({"schedule": "cosine"}, TypeError, "schedule: expected a schedule"),
])
def test_trainer_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        gpubp.Trainer(make_net(), gpubp.SGD(0.1), **kwargs)


def test_trainer_rejects_wrong_objects():
    with pytest.raises(TypeError, match="net: expected a gpubp.MLP"):
        gpubp.Trainer("net", gpubp.SGD(0.1))
    with pytest.raises(TypeError, match="optimizer: expected an optimizer"):
        gpubp.Trainer(make_net(), 0.1)


@pytest.mark.parametrize("sizes,error,message", [
    ((4, 0, 3), ValueError, r"layer_sizes\[1\]: must be >= 1, got 0"),
    ((4, -2), ValueError, r"layer_sizes\[1\]: must be >= 1"),
    ((4,), ValueError, "layer_sizes: need at least an input and an output size"),
    ((), ValueError, "layer_sizes: need at least"),
    ((4, 2.0, 3), TypeError, r"layer_sizes\[1\]: expected an integer"),
    ("4,3", TypeError, "layer_sizes: expected a sequence of integers"),
    (7, TypeError, "layer_sizes: expected a sequence"),
])
def test_mlp_rejects_bad_layer_sizes(sizes, error, message):
    with pytest.raises(error, match=message):
        gpubp.MLP(sizes, backend="numpy")


def test_mlp_rejects_bad_dtype_backend_and_seed():
    with pytest.raises(ValueError, match="dtype: expected one of"):
        gpubp.MLP((2, 2), backend="numpy", dtype="int32")
    with pytest.raises(TypeError, match="dtype: expected one of"):
        gpubp.MLP((2, 2), backend="numpy", dtype="no-such-type")
    with pytest.raises(TypeError, match="dtype: expected one of"):
        gpubp.MLP((2, 2), backend="numpy", dtype=None)
    with pytest.raises(ValueError, match="backend: expected one of"):
        gpubp.MLP((2, 2), backend="tpu")
    with pytest.raises(ValueError, match="seed: must be >= 0"):
        gpubp.MLP((2, 2), backend="numpy", seed=-1)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"lr": 0.0}, ValueError, "lr: must be > 0"),
    ({"lr": float("nan")}, ValueError, "lr: must be finite"),
    ({"lr": "0.1"}, TypeError, "lr: expected a number"),
    ({"lr": 0.1, "momentum": 1.0}, ValueError, "momentum: must be < 1"),
    ({"lr": 0.1, "momentum": -0.1}, ValueError, "momentum: must be >= 0"),
    ({"lr": 0.1, "weight_decay": -1e-4}, ValueError, "weight_decay: must be >= 0"),
    ({"lr": 0.1, "nesterov": True}, ValueError, "nesterov: needs momentum > 0"),
    ({"lr": 0.1, "momentum": 0.9, "nesterov": 1}, TypeError, "nesterov: expected a bool"),
])
def test_sgd_rejects_bad_hyperparameters(kwargs, error, message):
    with pytest.raises(error, match=message):
        gpubp.SGD(**kwargs)

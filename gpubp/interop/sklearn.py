"""scikit-learn's ``MLPClassifier(activation="logistic")`` as a gpubp network, and back;
the weight layouts are described in :mod:`gpubp.sklearn_layout`."""

from __future__ import annotations

from gpubp.network import MLP
from gpubp.sklearn_layout import network_from_sklearn, network_to_sklearn, sklearn_weights

__all__ = ["mlp_from_sklearn", "mlp_to_sklearn", "sklearn_weights"]


def mlp_from_sklearn(fitted, *, backend="auto", dtype=None) -> MLP:
    """A gpubp network with the ``predict_proba`` of a fitted scikit-learn
    ``MLPClassifier(activation="logistic")`` (any solver); its ``info.classes`` are the
    estimator's ``classes_`` and its ``info.feature_names`` its ``feature_names_in_``.

    dtype: by default float32 when the estimator's coefficients are, else float64.
    Raises TypeError/ValueError for anything else (another activation, multi-label
    output, an unfitted estimator).
    """
    return network_from_sklearn(MLP, fitted, backend=backend, dtype=dtype)


def mlp_to_sklearn(net: MLP, *, classes=None, params=None):
    """A fitted scikit-learn ``MLPClassifier(activation="logistic", solver="sgd")`` with
    the ``predict_proba`` of ``net``, in the net's dtype.

    classes: the label of each class; by default ``net.info``'s (0..C−1 without).
    params: further constructor arguments (``alpha``, ``learning_rate_init``...), so
    that ``fit`` with ``warm_start=True`` continues from these weights.
    The estimator's training record (``loss_curve_``, ``t_``...) starts empty.
    """
    if not isinstance(net, MLP):
        raise TypeError(f"net: expected a gpubp.MLP, got {type(net).__name__}")
    return network_to_sklearn(net, classes=classes, params=params)

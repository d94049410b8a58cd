"""scikit-learn's ``MLPClassifier(activation="logistic")`` weights as a gpubp network, and
back.

scikit-learn stores W^l as ``coefs_[l]`` of shape (n_in, n_out), the transpose of gpubp's
(out, in). For two classes it keeps one logistic output unit, P(class 1) = σ(z), where
gpubp keeps the seed's softmax over 2 units. The two are the same function: softmax of the
logits [0, z] is [1 − σ(z), σ(z)]. So a binary scikit-learn model becomes output rows
[0, w] and biases [0, b], and a 2-class gpubp model becomes w = w₁ − w₀, b = b₁ − b₀.

This module knows no network class (the caller passes it), so that :class:`gpubp.MLP`'s
methods can use it; :mod:`gpubp.interop.sklearn` holds the public entries.
"""

from __future__ import annotations

import numpy as np

from gpubp.backend import to_numpy


def _sklearn():
    try:
        import sklearn.neural_network  # noqa: F401
    except ImportError as e:
        raise ImportError("scikit-learn interop needs scikit-learn: "
                          "pip install 'gpubp[sklearn]'") from e
    return sklearn


def network_from_sklearn(cls, fitted, *, backend="auto", dtype=None):
    """A network of class ``cls`` (gpubp.MLP) with the ``predict_proba`` of a fitted scikit-learn
    ``MLPClassifier(activation="logistic")`` (any solver); its ``info.classes`` are the
    estimator's ``classes_`` and its ``info.feature_names`` its ``feature_names_in_``.

    dtype: by default float32 when the estimator's coefficients are, else float64.
    Raises TypeError/ValueError for anything else (another activation, multi-label
    output, an unfitted estimator).
    """
    coefs, intercepts = sklearn_weights(fitted)
    if dtype is None:
        dtype = "float32" if coefs[0].dtype == np.float32 else "float64"
    sizes = [coefs[0].shape[0]] + [c.shape[1] for c in coefs]
    if fitted.out_activation_ == "logistic":  # binary: one unit → softmax over [0, z]
        sizes[-1] = 2
        coefs[-1] = np.concatenate([np.zeros_like(coefs[-1]), coefs[-1]], axis=1)
        intercepts[-1] = np.concatenate([np.zeros_like(intercepts[-1]), intercepts[-1]])
    net = cls(sizes, backend=backend, dtype=dtype, seed=0)
    net.load_state([net.backend.asarray(a) for c, b in zip(coefs, intercepts)
                    for a in (c.T, b)])
    net.info.classes = np.asarray(fitted.classes_)
    names = getattr(fitted, "feature_names_in_", None)
    net.info.feature_names = None if names is None else [str(n) for n in names]
    return net


def sklearn_weights(fitted):
    """(coefs, intercepts) of a fitted ``MLPClassifier(activation="logistic")`` as float
    NumPy arrays in its (n_in, n_out) layout, after checking that gpubp can compute it."""
    sklearn = _sklearn()
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(fitted, sklearn.neural_network.MLPClassifier):
        raise TypeError(f"fitted: expected a scikit-learn MLPClassifier, got "
                        f"{type(fitted).__name__}")
    check_is_fitted(fitted)
    if fitted.activation != "logistic":
        raise ValueError(f"fitted: has activation={fitted.activation!r}; gpubp's hidden layers "
                         "are sigmoid, so only activation='logistic' converts")
    binary = fitted.out_activation_ == "logistic" and fitted.n_outputs_ == 1
    if fitted.out_activation_ != "softmax" and not binary:
        raise ValueError("fitted: is a multi-label model (independent logistic outputs); "
                         "gpubp's output is one softmax over the classes")
    dtype = np.float32 if fitted.coefs_[0].dtype == np.float32 else np.float64
    coefs = [np.array(c, dtype=dtype) for c in fitted.coefs_]
    intercepts = [np.array(b, dtype=dtype) for b in fitted.intercepts_]
    if not all(np.isfinite(a).all() for a in coefs + intercepts):
        raise ValueError("fitted: its weights hold NaN or Inf")
    return coefs, intercepts


def network_to_sklearn(net, *, classes=None, params=None):
    """A fitted scikit-learn ``MLPClassifier(activation="logistic", solver="sgd")`` with
    the ``predict_proba`` of the network ``net`` (its ``layer_sizes``, ``weights``,
    ``biases`` and ``info``), in the net's dtype.

    classes: the label of each class; by default ``net.info``'s (0..C−1 without).
    params: further constructor arguments (``alpha``, ``learning_rate_init``...), so
    that ``fit`` with ``warm_start=True`` continues from these weights.
    The estimator's training record (``loss_curve_``, ``t_``...) starts empty.
    """
    _sklearn()
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import LabelBinarizer

    n_classes = net.layer_sizes[-1]
    if n_classes < 2:
        raise ValueError(f"net: has {n_classes} output class; scikit-learn needs 2 or more")
    classes = np.asarray(net.info.class_labels(n_classes) if classes is None else classes)
    if classes.shape != (n_classes,):
        raise ValueError(f"classes: expected {n_classes} labels, got shape {classes.shape}")
    coefs = [to_numpy(W).T.copy() for W in net.weights]
    intercepts = [to_numpy(b).copy() for b in net.biases]
    if n_classes == 2:  # softmax over [z0, z1] = σ(z1 − z0): one logistic unit
        coefs[-1] = coefs[-1][:, 1:] - coefs[-1][:, :1]
        intercepts[-1] = intercepts[-1][1:] - intercepts[-1][:1]
    settings = dict(params or {})
    settings.update(hidden_layer_sizes=tuple(net.layer_sizes[1:-1]), activation="logistic",
                    solver="sgd")
    est = MLPClassifier(**settings)
    est.coefs_, est.intercepts_ = coefs, intercepts
    est.classes_ = classes
    est._label_binarizer = LabelBinarizer().fit(classes)
    est.n_features_in_ = net.layer_sizes[0]
    if net.info.feature_names is not None:
        est.feature_names_in_ = np.asarray(net.info.feature_names, dtype=object)
    est.n_layers_ = len(net.layer_sizes)
    est.n_outputs_ = 1 if n_classes == 2 else n_classes
    est.out_activation_ = "logistic" if n_classes == 2 else "softmax"
    # What scikit-learn's fit reads when warm-starting (it sets these on a first fit).
    est.n_iter_, est.t_, est.loss_curve_ = 0, 0, []
    est._no_improvement_count = 0
    est._best_coefs = [c.copy() for c in coefs]
    est._best_intercepts = [b.copy() for b in intercepts]
    if est.early_stopping:
        est.validation_scores_, est.best_validation_score_, est.best_loss_ = [], -np.inf, None
    else:
        est.validation_scores_, est.best_validation_score_, est.best_loss_ = None, None, np.inf
    return est


"""gpubp.MLPClassifier: scikit-learn's estimator checks, the same trajectory as
scikit-learn's MLPClassifier(activation="logistic", solver="sgd"), the tests of
sklearn/neural_network/tests/test_mlp.py that apply, and conversion both ways."""

import pickle
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import scipy.sparse  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_digits, load_iris, make_classification  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.neural_network import MLPClassifier as SklearnMLP  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import MinMaxScaler, StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import gpubp  # noqa: E402
from gpubp.estimator import EXPECTED_FAILED_CHECKS, MLPClassifier  # noqa: E402

_X3, _y3 = load_digits(n_class=3, return_X_y=True)
X_MULTI, Y_MULTI = MinMaxScaler().fit_transform(_X3[:200]), _y3[:200]
_X2, _y2 = load_digits(n_class=2, return_X_y=True)
X_BINARY, Y_BINARY = MinMaxScaler().fit_transform(_X2[:200]), _y2[:200]
X_IRIS, Y_IRIS = load_iris(return_X_y=True)
# The parity data: 3 classes, 537 rows, 64 features in [0, 1].
X_PARITY, Y_PARITY = _X3 / 16.0, _y3

quiet = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


# ---- scikit-learn's estimator checks ---------------------------------------------------

@parametrize_with_checks([MLPClassifier(), MLPClassifier(hidden_layer_sizes=(16,), dtype="float32",
                                                        learning_rate_init=0.1)],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
@quiet
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_import_gpubp_does_not_import_sklearn():
    code = ("import sys, gpubp\n"
            "assert 'sklearn' not in sys.modules\n"
            "assert gpubp.MLPClassifier.__module__ == 'gpubp.estimator'\n"
            "assert 'sklearn' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_lazy_attribute_is_the_class():
    assert gpubp.MLPClassifier is MLPClassifier
    with pytest.raises(AttributeError, match="no attribute 'MLPClassifer'"):
        gpubp.MLPClassifer  # noqa: B018


# ---- the same trajectory as scikit-learn -------------------------------------------------

PARITY = dict(hidden_layer_sizes=(16,), activation="logistic", solver="sgd",
              learning_rate_init=0.2, alpha=1e-3, batch_size=64, max_iter=5, tol=0.0)


def assert_same_run(ours, theirs, rtol=1e-9):
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol, atol=0)
    for mine, yours in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(mine, yours, rtol=rtol, atol=1e-12)
    assert (ours.n_iter_, ours.t_) == (theirs.n_iter_, theirs.t_)


@quiet
def test_parity_from_copied_initial_weights():
    """The issue's parity test: float64, scikit-learn's weights copied in, shuffle=False,
    the same batches, alpha, momentum and constant rate: 5 epochs agree within 1e-9."""
    theirs = SklearnMLP(shuffle=False, random_state=3, momentum=0.8,
                        **{**PARITY, "max_iter": 1}).fit(X_PARITY, Y_PARITY)
    ours = MLPClassifier.from_sklearn(theirs, backend="numpy")
    assert ours.dtype == "float64"
    assert ours.coefs_[0] is not theirs.coefs_[0]
    for est in (theirs, ours):
        est.set_params(warm_start=True, max_iter=5).fit(X_PARITY, Y_PARITY)
    assert len(ours.loss_curve_) == 6
    assert_same_run(ours, theirs)


@quiet
@pytest.mark.parametrize("learning_rate", ["constant", "invscaling", "adaptive"])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("momentum, nesterov", [(0.9, True), (0.5, False), (0.0, True)])
def test_same_trajectory_from_the_same_random_state(learning_rate, shuffle, momentum,
                                                    nesterov):
    """The same random_state draws the same initial weights and shuffles as scikit-learn."""
    params = dict(PARITY, learning_rate=learning_rate, shuffle=shuffle, momentum=momentum,
                  nesterovs_momentum=nesterov, random_state=0, power_t=0.25)
    if learning_rate == "adaptive":  # rate cuts after 1 epoch without a 0.5 gain in loss
        params.update(tol=0.5, n_iter_no_change=1, max_iter=6)
    theirs = SklearnMLP(**params).fit(X_PARITY, Y_PARITY)
    ours = MLPClassifier(**params, backend="numpy").fit(X_PARITY, Y_PARITY)
    assert_same_run(ours, theirs)
    assert ours._optimizer.lr == pytest.approx(theirs._optimizer.learning_rate, rel=1e-12)


@quiet
def test_same_trajectory_with_early_stopping():
    params = dict(PARITY, early_stopping=True, validation_fraction=0.2, random_state=1,
                  max_iter=30, n_iter_no_change=2, tol=1e-3, learning_rate_init=0.5)
    theirs = SklearnMLP(**params).fit(X_PARITY, Y_PARITY)
    ours = MLPClassifier(**params, backend="numpy").fit(X_PARITY, Y_PARITY)
    assert ours.validation_scores_ == theirs.validation_scores_
    assert ours.best_validation_score_ == theirs.best_validation_score_
    assert ours.best_loss_ is None and theirs.n_iter_ < 30
    assert_same_run(ours, theirs)  # the restored best weights too


@quiet
def test_same_trajectory_with_partial_fit_and_warm_start():
    theirs = SklearnMLP(**dict(PARITY, random_state=2))
    ours = MLPClassifier(**dict(PARITY, random_state=2), backend="numpy")
    for est in (theirs, ours):
        for start in range(0, 400, 100):
            est.partial_fit(X_PARITY[start:start + 100], Y_PARITY[start:start + 100],
                            classes=[0, 1, 2])
        est.set_params(warm_start=True, max_iter=3).fit(X_PARITY, Y_PARITY)
    assert_same_run(ours, theirs)


def test_two_classes_train_a_softmax_over_two_units():
    ours = MLPClassifier(hidden_layer_sizes=(5,), random_state=0, max_iter=50,
                         learning_rate_init=0.5).fit(X_BINARY, Y_BINARY)
    assert ours.coefs_[-1].shape == (5, 2) and ours.n_outputs_ == 2
    assert ours.out_activation_ == "softmax"
    np.testing.assert_allclose(ours.predict_proba(X_BINARY).sum(axis=1), 1.0)


# ---- scikit-learn's test_mlp.py, the tests that apply ------------------------------------

@quiet
def test_alpha():
    X, y = X_BINARY[:100], Y_BINARY[:100]
    sums = []
    for alpha in (0, 1):
        mlp = MLPClassifier(hidden_layer_sizes=10, alpha=alpha, random_state=1).fit(X, y)
        sums.append([np.abs(mlp.coefs_[0]).sum(), np.abs(mlp.coefs_[1]).sum()])
    assert (np.array(sums[0]) > np.array(sums[1])).all()


@quiet
def test_learning_rate_warmstart():
    X, y = [[3, 2], [1, 6], [5, 6], [-2, -4]], [1, 1, 1, 0]
    for learning_rate in ("invscaling", "constant"):
        mlp = MLPClassifier(hidden_layer_sizes=4, learning_rate=learning_rate, max_iter=1,
                            power_t=0.25, warm_start=True)
        mlp.fit(X, y)
        before = mlp._optimizer.lr
        mlp.fit(X, y)
        after = mlp._optimizer.lr
        if learning_rate == "constant":
            assert before == after
        else:
            assert after == mlp.learning_rate_init / pow(8 + 1, mlp.power_t)


def test_partial_fit_classes_error():
    clf = MLPClassifier()
    clf.partial_fit([[3, 2]], [0], classes=[0, 1])
    with pytest.raises(ValueError, match="^classes: "):
        clf.partial_fit([[3, 2]], [0], classes=[1, 2])


@quiet
def test_partial_fit_classification():
    for X, y in ((X_MULTI, Y_MULTI), (X_BINARY, Y_BINARY)):
        mlp = MLPClassifier(max_iter=100, random_state=1, tol=0, alpha=1e-5,
                            learning_rate_init=0.2).fit(X, y)
        expected = mlp.predict(X)
        mlp = MLPClassifier(random_state=1, alpha=1e-5, learning_rate_init=0.2)
        for _ in range(100):
            mlp.partial_fit(X, y, classes=np.unique(y))
        np.testing.assert_array_equal(mlp.predict(X), expected)
        assert mlp.score(X, y) > 0.95


def test_partial_fit_unseen_classes():
    clf = MLPClassifier(random_state=0)
    clf.partial_fit([[1], [2], [3]], ["a", "b", "c"], classes=["a", "b", "c", "d"])
    clf.partial_fit([[4]], ["d"])
    assert clf.score([[1], [2], [3], [4]], ["a", "b", "c", "d"]) > 0


def test_partial_fit_errors():
    with pytest.raises(ValueError):  # y has a label outside classes
        MLPClassifier().partial_fit([[3, 2], [1, 6]], [1, 0], classes=[2])
    with pytest.raises(ValueError, match="must be passed on the first call"):
        MLPClassifier().partial_fit([[3, 2], [1, 6]], [1, 0])


def test_predict_proba_binary():
    X, y = X_BINARY[:50], Y_BINARY[:50]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier(hidden_layer_sizes=5, random_state=1).fit(X, y)
    proba, log_proba = clf.predict_proba(X), clf.predict_log_proba(X)
    assert proba.shape == (50, 2)
    np.testing.assert_array_equal(proba.argmax(axis=1), log_proba.argmax(axis=1))
    np.testing.assert_allclose(log_proba, np.log(proba))
    assert roc_auc_score(y, proba[:, 1]) == 1.0


@quiet
def test_predict_proba_multiclass():
    X, y = X_MULTI[:10], Y_MULTI[:10]
    clf = MLPClassifier(hidden_layer_sizes=5).fit(X, y)
    proba, log_proba = clf.predict_proba(X), clf.predict_log_proba(X)
    assert proba.shape == (10, len(np.unique(y)))
    np.testing.assert_array_equal(proba.argmax(axis=1), log_proba.argmax(axis=1))
    np.testing.assert_allclose(log_proba, np.log(proba))


@quiet
def test_shuffle():
    X, y = make_classification(n_samples=50, n_features=5, random_state=0)
    for shuffle in (True, False):
        a, b = (MLPClassifier(hidden_layer_sizes=1, max_iter=1, batch_size=1, random_state=0,
                              shuffle=shuffle).fit(X, y) for _ in range(2))
        assert np.array_equal(a.coefs_[0], b.coefs_[0])
    a, b = (MLPClassifier(hidden_layer_sizes=1, max_iter=1, batch_size=1, random_state=0,
                          shuffle=shuffle).fit(X, y) for shuffle in (True, False))
    assert not np.array_equal(a.coefs_[0], b.coefs_[0])


@quiet
@pytest.mark.parametrize("container", [scipy.sparse.csr_matrix, scipy.sparse.csr_array,
                                       scipy.sparse.csc_matrix])
def test_sparse_matrices(container):
    X, y = X_BINARY[:50], Y_BINARY[:50]
    mlp = MLPClassifier(hidden_layer_sizes=15, random_state=1, max_iter=20)
    dense = mlp.fit(X, y).predict_proba(X)
    sparse = clone(mlp).fit(container(X), y)
    np.testing.assert_allclose(sparse.predict_proba(container(X)), dense, rtol=1e-12)
    np.testing.assert_array_equal(sparse.predict(X), sparse.predict(container(X)))


@quiet
def test_sparse_input_is_densified_one_batch_at_a_time(monkeypatch):
    X = scipy.sparse.csr_matrix(X_MULTI)
    densified = []
    original = scipy.sparse.csr_matrix.toarray

    def toarray(self, *args, **kwargs):
        densified.append(self.shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(scipy.sparse.csr_matrix, "toarray", toarray)
    MLPClassifier(batch_size=32, max_iter=2, random_state=0).fit(X, Y_MULTI)
    assert densified and max(densified) == 32 and sum(densified) == 2 * X.shape[0]


def test_tolerance():
    clf = MLPClassifier(tol=0.5, max_iter=3000).fit([[3, 2], [1, 6]], [1, 0])
    assert clf.max_iter > clf.n_iter_


def test_verbose_sgd(capsys):
    X, y = [[3, 2], [1, 6]], [1, 0]
    clf = MLPClassifier(max_iter=2, verbose=10, hidden_layer_sizes=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    clf.partial_fit(X, y)
    assert "Iteration" in capsys.readouterr().out


def test_early_stopping():
    X, y = X_BINARY[:100], Y_BINARY[:100]
    tol = 0.2
    mlp = MLPClassifier(tol=tol, max_iter=3000, early_stopping=True).fit(X, y)
    assert mlp.max_iter > mlp.n_iter_
    assert mlp.best_loss_ is None and isinstance(mlp.validation_scores_, list)
    scores, best = mlp.validation_scores_, mlp.best_validation_score_
    assert max(scores) == best
    assert best + tol > scores[-2] and best + tol > scores[-1]
    mlp = MLPClassifier(tol=tol, max_iter=3000, early_stopping=False).fit(X, y)
    assert mlp.validation_scores_ is None and mlp.best_validation_score_ is None
    assert mlp.best_loss_ is not None


def test_adaptive_learning_rate():
    clf = MLPClassifier(tol=0.5, max_iter=3000, learning_rate="adaptive")
    clf.fit([[3, 2], [1, 6]], [1, 0])
    assert clf.max_iter > clf.n_iter_
    assert 1e-6 > clf._optimizer.lr


@quiet
def test_warm_start():
    X = X_IRIS
    clf = MLPClassifier(hidden_layer_sizes=2, warm_start=True, random_state=42, tol=1e-2,
                        max_iter=5)
    clf.fit(X, Y_IRIS)
    clf.fit(X, Y_IRIS)
    for y in (np.array([0] * 75 + [1] * 75), np.array([0] * 50 + [1] * 50 + [3] * 50),
              np.array([0] * 37 + [1] * 37 + [2] * 38 + [3] * 38)):
        clf = MLPClassifier(hidden_layer_sizes=2, warm_start=True, random_state=42,
                            max_iter=5).fit(X, Y_IRIS)
        message = ("warm_start can only be used where `y` has the same classes as in the "
                   f"previous call to fit. Previously got [0 1 2], `y` has {np.unique(y)}")
        with pytest.raises(ValueError, match=re.escape(message)):
            clf.fit(X, y)


@quiet
def test_warm_start_full_iteration():
    clf = MLPClassifier(hidden_layer_sizes=2, warm_start=True, max_iter=3)
    clf.fit(X_IRIS, Y_IRIS)
    assert clf.n_iter_ == 3
    clf.fit(X_IRIS, Y_IRIS)
    assert clf.n_iter_ == 3


def test_n_iter_no_change():
    X, y = X_BINARY[:100], Y_BINARY[:100]
    for n_iter_no_change in (2, 5, 10):
        clf = MLPClassifier(tol=0.01, max_iter=3000, n_iter_no_change=n_iter_no_change)
        clf.fit(X, y)
        assert clf._no_improvement_count == n_iter_no_change + 1
        assert clf.max_iter > clf.n_iter_


@quiet
def test_n_iter_no_change_inf():
    clf = MLPClassifier(tol=1e9, max_iter=300, n_iter_no_change=np.inf)
    clf.fit(X_BINARY[:100], Y_BINARY[:100])
    assert clf.n_iter_ == 300
    assert clf._no_improvement_count == clf.n_iter_ - 1


def test_early_stopping_stratified():
    mlp = MLPClassifier(early_stopping=True)
    with pytest.raises(ValueError, match=r"The least populated classes in y have only 1 "
                                         r"member.*Classes with too few members are: \['True'\]"):
        mlp.fit([[1, 2], [2, 3], [3, 4], [4, 5]], [0, 0, 0, 1])


def test_early_stopping_string_labels():
    X, y = make_classification(n_samples=200, n_features=10, n_classes=3, n_informative=5,
                               random_state=42)
    y = np.array(["class_a", "class_b", "class_c"], dtype=object)[y]
    mlp = MLPClassifier(early_stopping=True, max_iter=50, random_state=42).fit(X, y)
    assert len(mlp.validation_scores_) == mlp.n_iter_
    assert np.isfinite(mlp.validation_scores_).all()
    assert set(mlp.predict(X)) <= set(y)


@quiet
def test_dtypes_casting_and_parameter_dtypes():
    X, y = _X2[:300], _y2[:300]
    params = dict(alpha=1e-5, hidden_layer_sizes=(5, 3), random_state=1, max_iter=100,
                  tol=1e-1)
    mlp64 = MLPClassifier(**params).fit(X, y)
    mlp32 = MLPClassifier(**params).fit(X.astype(np.float32), y)
    np.testing.assert_array_equal(mlp64.predict(_X2[300:]),
                                  mlp32.predict(_X2[300:].astype(np.float32)))
    np.testing.assert_allclose(mlp64.predict_proba(_X2[300:]),
                               mlp32.predict_proba(_X2[300:].astype(np.float32)), rtol=1e-2)
    for mlp, dtype in ((mlp64, np.float64), (mlp32, np.float32)):
        assert all(a.dtype == dtype for a in mlp.coefs_ + mlp.intercepts_)
    assert MLPClassifier(dtype="float32", **params).fit(X, y).coefs_[0].dtype == np.float32


def test_pickle_then_partial_fit(tmp_path):
    X, y = X_MULTI, Y_MULTI
    mlp = MLPClassifier(random_state=42, learning_rate_init=0.1, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(X, y)
    loaded = pickle.loads(pickle.dumps(mlp))
    np.testing.assert_array_equal(loaded.predict_proba(X), mlp.predict_proba(X))
    for est in (mlp, loaded):  # the momentum carries over: both continue identically
        est.partial_fit(X, y)
    np.testing.assert_array_equal(loaded.coefs_[0], mlp.coefs_[0])
    assert "net_" in vars(mlp)  # pickling left the original as it was


def test_preserve_feature_names():
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    X = pd.DataFrame(rng.randn(10, 2), columns=["colname_a", "colname_b"])
    y = pd.Series(np.array([0, 1] * 5), name="colname_y")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier(early_stopping=True, validation_fraction=0.2).fit(X, y)
    assert list(model.feature_names_in_) == ["colname_a", "colname_b"]


@quiet
def test_warm_start_with_early_stopping():
    mlp = MLPClassifier(max_iter=10, random_state=0, warm_start=True, early_stopping=True)
    mlp.fit(X_IRIS, Y_IRIS)
    n = len(mlp.validation_scores_)
    mlp.set_params(max_iter=20).fit(X_IRIS, Y_IRIS)
    assert len(mlp.validation_scores_) > n


def test_warm_start_no_convergence():
    model = MLPClassifier(warm_start=True, max_iter=10, n_iter_no_change=np.inf,
                          random_state=0)
    with pytest.warns(ConvergenceWarning):
        model.fit(X_IRIS, Y_IRIS)
    assert model.n_iter_ == 10
    model.set_params(max_iter=20)
    with pytest.warns(ConvergenceWarning):
        model.fit(X_IRIS, Y_IRIS)
    assert model.n_iter_ == 20


def test_partial_fit_after_fit_with_early_stopping():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier(early_stopping=True, random_state=0, max_iter=5).fit(X_IRIS,
                                                                                 Y_IRIS)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        mlp.partial_fit(X_IRIS, Y_IRIS)


def test_nonfinite_weights_are_an_error():
    X = np.finfo(np.float64).max * np.random.RandomState(0).uniform(size=(10, 2))
    with warnings.catch_warnings(), pytest.raises(ValueError, match="non-finite parameter"):
        warnings.simplefilter("ignore")
        MLPClassifier(learning_rate_init=1e300, max_iter=2).fit(X, [0, 1] * 5)


# ---- conversion both ways ----------------------------------------------------------------

@quiet
@pytest.mark.parametrize("data", ["multiclass", "binary"])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_from_sklearn_gives_the_same_predict_proba(data, solver):
    X, y = (X_MULTI, Y_MULTI) if data == "multiclass" else (X_BINARY, Y_BINARY)
    labels = np.array(["zero", "one", "two"], dtype=object)[y]  # any label type
    theirs = SklearnMLP(hidden_layer_sizes=(7, 5), activation="logistic", solver=solver,
                        max_iter=30, random_state=0, learning_rate_init=0.05).fit(X, labels)
    ours = MLPClassifier.from_sklearn(theirs, backend="numpy")
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=0,
                               atol=1e-6)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    assert list(ours.classes_) == list(theirs.classes_)
    assert ours.loss_curve_ == theirs.loss_curve_ and ours.t_ == theirs.t_
    assert ours.learning_rate_init == 0.05 and ours.solver == "sgd"
    net = gpubp.MLP.from_sklearn(theirs, backend="numpy")  # the Python API converts alike
    np.testing.assert_allclose(gpubp.to_numpy(net.predict_proba(X)), theirs.predict_proba(X),
                               atol=1e-6)
    assert list(net.info.classes) == list(theirs.classes_)


@quiet
@pytest.mark.parametrize("data", ["multiclass", "binary"])
def test_to_sklearn_gives_the_same_predict_proba(data):
    X, y = (X_MULTI, Y_MULTI) if data == "multiclass" else (X_BINARY, Y_BINARY)
    ours = MLPClassifier(hidden_layer_sizes=(6,), max_iter=20, random_state=0,
                         learning_rate_init=0.3, alpha=1e-3).fit(X, y + 10)
    theirs = ours.to_sklearn()
    np.testing.assert_allclose(theirs.predict_proba(X), ours.predict_proba(X), rtol=0,
                               atol=1e-6)
    np.testing.assert_array_equal(theirs.predict(X), ours.predict(X))
    assert theirs.get_params()["alpha"] == 1e-3 and theirs.loss_curve_ == ours.loss_curve_
    if data == "binary":
        assert theirs.coefs_[-1].shape == (6, 1) and theirs.out_activation_ == "logistic"
    # scikit-learn continues from the converted weights.
    theirs.set_params(warm_start=True, max_iter=2).fit(X, y + 10)
    assert len(theirs.loss_curve_) == len(ours.loss_curve_) + 2
    # And the Python API's MLP converts the same way.
    back = ours.net_.to_sklearn()
    np.testing.assert_allclose(back.predict_proba(X), ours.predict_proba(X), atol=1e-6)


@quiet
def test_conversion_carries_the_optimizer_so_partial_fit_goes_on_alike():
    """Momentum and a decayed rate cross over: partial_fit continues identically."""
    params = dict(PARITY, learning_rate="invscaling", random_state=4, max_iter=2)
    theirs = SklearnMLP(**params).fit(X_PARITY, Y_PARITY)
    ours = MLPClassifier.from_sklearn(theirs, backend="numpy")
    for est in (theirs, ours):
        est.partial_fit(X_PARITY, Y_PARITY)
    assert_same_run(ours, theirs)
    back = ours.to_sklearn()
    for est in (back, ours):
        est.partial_fit(X_PARITY, Y_PARITY)
    assert_same_run(ours, back)


def test_from_sklearn_refuses_what_gpubp_cannot_compute():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        relu = SklearnMLP(hidden_layer_sizes=3, max_iter=2).fit(X_MULTI, Y_MULTI)
        multilabel = SklearnMLP(hidden_layer_sizes=3, activation="logistic", max_iter=2).fit(
            X_MULTI, np.stack([Y_MULTI == 0, Y_MULTI == 1], axis=1))
    with pytest.raises(ValueError, match="^fitted: has activation='relu'"):
        MLPClassifier.from_sklearn(relu)
    with pytest.raises(ValueError, match="^fitted: is a multi-label model"):
        MLPClassifier.from_sklearn(multilabel)
    with pytest.raises(TypeError, match="^fitted: expected a scikit-learn MLPClassifier"):
        MLPClassifier.from_sklearn(MLPClassifier())


# ---- in scikit-learn's tools; inputs; errors --------------------------------------------

@quiet
def test_pipeline_grid_search_cross_val_score_and_clone():
    base = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0,
                         learning_rate_init=0.3)
    pipe = make_pipeline(StandardScaler(), base)
    assert cross_val_score(pipe, X_MULTI, Y_MULTI, cv=3).mean() > 0.9
    search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-2]}, cv=2).fit(
        X_MULTI, Y_MULTI)
    assert search.best_estimator_.score(X_MULTI, Y_MULTI) > 0.9
    twin = clone(base)
    assert twin.get_params() == base.get_params() and not hasattr(twin, "net_")


@quiet
def test_pandas_and_torch_inputs_train_like_numpy():
    pd = pytest.importorskip("pandas")
    torch = pytest.importorskip("torch")
    params = dict(hidden_layer_sizes=(8,), max_iter=3, random_state=0)
    expected = MLPClassifier(**params).fit(X_MULTI, Y_MULTI).predict_proba(X_MULTI)
    frame = pd.DataFrame(X_MULTI, columns=[f"p{i}" for i in range(64)])
    from_frame = MLPClassifier(**params).fit(frame, pd.Series(Y_MULTI))
    np.testing.assert_array_equal(from_frame.predict_proba(frame), expected)
    tensors = MLPClassifier(**params).fit(torch.from_numpy(X_MULTI), torch.from_numpy(Y_MULTI))
    np.testing.assert_array_equal(tensors.predict_proba(torch.from_numpy(X_MULTI)), expected)
    assert isinstance(tensors.predict(torch.from_numpy(X_MULTI)), np.ndarray)


@pytest.mark.parametrize("param, value, error, message", [
    ("activation", "relu", ValueError, "^activation: gpubp's hidden layers are sigmoid"),
    ("solver", "adam", ValueError, "^solver: .*only 'sgd'"),
    ("hidden_layer_sizes", (4, 0), ValueError, r"^hidden_layer_sizes\[1\]: must be >= 1"),
    ("learning_rate", "optimal", ValueError, "^learning_rate: expected one of"),
    ("learning_rate_init", 0.0, ValueError, "^learning_rate_init: must be > 0"),
    ("momentum", 1.0, ValueError, "^momentum: must be < 1.0"),
    ("batch_size", "all", TypeError, "^batch_size: expected an integer"),
    ("dtype", "float16", ValueError, "^dtype: expected one of"),
    ("backend", "tpu", ValueError, "^backend: expected one of"),
    ("cuda_graphs", "yes", TypeError, "^cuda_graphs: expected a bool"),
])
def test_bad_parameters_are_named(param, value, error, message):
    with pytest.raises(error, match=message):
        MLPClassifier(**{param: value}).fit(X_MULTI, Y_MULTI)


@quiet
def test_results_are_numpy_and_coefs_in_sklearn_layout():
    clf = MLPClassifier(hidden_layer_sizes=(7,), max_iter=2).fit(X_MULTI, Y_MULTI)
    assert [c.shape for c in clf.coefs_] == [(64, 7), (7, 3)]
    assert [b.shape for b in clf.intercepts_] == [(7,), (3,)]
    for result in (clf.predict(X_MULTI), clf.predict_proba(X_MULTI), *clf.coefs_):
        assert type(result) is np.ndarray
    # Assigning coefs_ writes the network (scikit-learn's coefs_ are its weights too).
    clf.coefs_ = [np.zeros((64, 7)), np.zeros((7, 3))]
    clf.intercepts_ = [np.zeros(7), np.array([0.0, 1.0, 0.0])]
    assert (clf.predict(X_MULTI) == 1).all()
    with pytest.raises(ValueError, match=r"^coefs_\[0\]: expected shape \(64, 7\)"):
        clf.coefs_ = [np.zeros((7, 64)), np.zeros((7, 3))]


@pytest.mark.gpu
def test_cupy_backend_returns_numpy_and_reads_device_arrays_in_place():
    import cupy

    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, backend="cupy", dtype="float32",
                        random_state=0)
    X = cupy.asarray(X_MULTI, dtype=cupy.float32)
    clf.fit(X, Y_MULTI)
    proba = clf.predict_proba(X)
    assert type(proba) is np.ndarray and proba.shape == (200, 3)
    host = MLPClassifier(**{**clf.get_params(), "backend": "numpy"}).fit(
        X_MULTI.astype(np.float32), Y_MULTI)
    np.testing.assert_allclose(proba, host.predict_proba(X_MULTI.astype(np.float32)),
                               atol=1e-4)
    assert clf.net_.prepare_features(X).data.ptr == X.data.ptr  # no copy on the device

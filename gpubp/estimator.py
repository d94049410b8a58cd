"""``gpubp.MLPClassifier``: scikit-learn's ``MLPClassifier(activation="logistic",
solver="sgd")`` on gpubp's network, on NumPy or CuPy.

Same parameters, defaults (but ``activation="logistic"`` and ``solver="sgd"``, the only
ones the seed's network has), attributes and training trajectory as scikit-learn's:

- the same initial weights from the same ``random_state`` (Glorot-uniform with
  scikit-learn's factor 2 for the logistic function, biases included), the same shuffles,
  the same early-stopping split;
- the loss of a batch of B rows is the mean cross-entropy + alpha/2 · Σ‖W‖² / B (biases
  not penalised), and its gradient adds alpha/B · W to each dL/dW;
- momentum as scikit-learn's v ← μv − lr·g (Nesterov: p ← p + μv − lr·g), run by
  :class:`gpubp.SGD` (v ← μv + g, p ← p − lr·v), the same rule for a fixed lr: when the
  learning rate changes, the velocity is rescaled by lr_old/lr_new so that the step
  stays scikit-learn's;
- ``learning_rate``: "constant"; "invscaling", lr = learning_rate_init / (t_ + 1)^power_t
  after each epoch; "adaptive", lr / 5 when ``n_iter_no_change`` epochs in a row fail to
  improve by ``tol`` (stopping below 1e-6);
- ``tol`` and ``n_iter_no_change`` on the training loss, or with ``early_stopping`` on
  the accuracy of a held-out ``validation_fraction`` of the rows (split as scikit-learn
  splits it: stratified for two classes only), with the best weights restored.

Where it differs:

- for two classes gpubp keeps the seed's softmax over 2 output units, where scikit-learn
  has one logistic unit. Both compute P(class 1) = σ(z), and the conversions
  (:meth:`MLPClassifier.from_sklearn`, :meth:`MLPClassifier.to_sklearn`) map one onto the
  other exactly, but a binary model trains along a different path (and ``coefs_[-1]``
  has 2 columns);
- ``loss_curve_`` is the exact cross-entropy, where scikit-learn clips probabilities to
  [eps, 1 − eps] before the log: its loss is lower when a row's true class is less likely
  than eps (1.2e-7 in float32). The gradients, and so the weights, are the same;
- ``momentum`` must be < 1 (scikit-learn accepts 1); there is no ``sample_weight``.

The training step itself is the network's (:meth:`gpubp.MLP.loss_and_grads_prepared` and
:meth:`gpubp.SGD.step`); this module schedules it as scikit-learn does.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

try:
    import scipy.sparse
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state
    from sklearn.utils import shuffle as shuffled
    from sklearn.utils.multiclass import check_classification_targets, unique_labels
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("gpubp.MLPClassifier needs scikit-learn: pip install 'gpubp[sklearn]'"
                      ) from e

from gpubp import blas
from gpubp.backend import Backend, get_backend, is_device_array, to_numpy
from gpubp.errors import BackendError
from gpubp.interop import dlpack
from gpubp.interop.onnx import to_onnx
from gpubp.interop.sklearn import mlp_from_sklearn, mlp_to_sklearn
from gpubp.network import EVAL_CHUNK, MLP
from gpubp.optim import SGD
from gpubp.validation import check_dtype, check_float, check_int

LEARNING_RATES = ("constant", "invscaling", "adaptive")
MIN_ADAPTIVE_LR = 1e-6  # "adaptive" stops once the rate is this small, as scikit-learn's

# Checks of sklearn.utils.estimator_checks that this estimator is expected to fail, with
# why: pass it as parametrize_with_checks(..., expected_failed_checks=...). None today.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """A multi-layer perceptron classifier: sigmoid hidden layers, a softmax output and
    cross-entropy, trained by minibatch SGD with gpubp's explicit backpropagation.

    The parameters shared with ``sklearn.neural_network.MLPClassifier`` have its names,
    defaults and meaning (see the module docstring for the training rule). ``max_fun`` is
    accepted for compatibility and unused (it bounds L-BFGS, which gpubp does not have).

    Args beyond scikit-learn's:
        backend: "auto", "numpy" or "cupy" (see gpubp.backend), for the network.
        dtype: "float32" or "float64"; None (the default) computes as scikit-learn does,
            in float32 for float32 input and float64 otherwise.
        cuda_graphs: capture the training step as a CUDA graph once gpubp's step supports
            it; accepted today, and the step runs eagerly.

    X may be any array-like (NumPy, pandas, lists), a scipy sparse matrix (densified one
    batch at a time), or a DLPack tensor (PyTorch, JAX, CuPy; read without a copy when it
    is on the network's device). Results are NumPy arrays.

    Attributes:
        classes_: (C,) the class labels, sorted. coefs_, intercepts_: per layer, (n_in,
            n_out) and (n_out,) NumPy arrays (views of the weights on NumPy, copies on
            CuPy; assigning the list writes the network). net_: the trained
            :class:`gpubp.MLP`. loss_, loss_curve_, best_loss_, validation_scores_,
            best_validation_score_, n_iter_, t_, n_features_in_, feature_names_in_,
            n_layers_, n_outputs_ (= C, also for 2 classes), out_activation_ = "softmax".
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="logistic", *, solver="sgd",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 n_iter_no_change=10, max_fun=15000, backend="auto", dtype=None,
                 cuda_graphs=True):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype
        self.cuda_graphs = cuda_graphs

    # ---- fitting ---------------------------------------------------------------------

    def fit(self, X, y):
        """Train on X (n_samples, n_features) and labels y (n_samples,) of any type.

        Starts from fresh weights unless ``warm_start`` (then y must have the same classes).
        Returns self.
        """
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y), continuing from the current weights and optimizer.

        classes: every label the model will see, required on the first call (y may hold
        only some of them). Returns self.
        """
        if getattr(self, "net_", None) is None or not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("classes: must be passed on the first call to partial_fit")
            self.classes_ = unique_labels(_host_labels(classes, "classes"))
        elif classes is not None:
            given = unique_labels(_host_labels(classes, "classes"))
            if not np.array_equal(given, self.classes_):
                raise ValueError(f"classes: {given} is not the classes of the first call to "
                                 f"partial_fit, {self.classes_}")
        return self._fit(X, y, incremental=True)

    def _fit(self, X, y, incremental: bool):
        hidden = self._check_params()
        if incremental and self.early_stopping:
            raise ValueError("early_stopping: partial_fit does not support "
                             "early_stopping=True")
        first = getattr(self, "net_", None) is None or not (self.warm_start or incremental)
        backend = get_backend(self.backend) if first else self.net_.backend
        X, labels = self._check_data(X, y, backend, reset=first)
        targets_host = self._class_indices(labels, incremental, first)
        layer_units = [X.shape[1], *hidden, len(self.classes_)]
        rs = check_random_state(self.random_state)
        if first:
            dtype = self.dtype if self.dtype is not None else (
                "float32" if X.dtype == np.float32 else "float64")
            self._initialize(layer_units, backend, check_dtype(dtype), rs)
        net = self.net_
        if not incremental or getattr(self, "_optimizer", None) is None:
            self._optimizer = SGD(self.learning_rate_init, momentum=self.momentum,
                                  nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
        X_train, t_train, X_val, t_val = self._split(X, targets_host, rs)
        self._train(X_train, t_train, X_val, t_val, rs, incremental)
        xp = net.backend.xp
        if not all(bool(xp.isfinite(p).all()) for p in net.parameters()):
            raise ValueError("Solver produced non-finite parameter weights. The input data may "
                             "contain large values and need to be preprocessed.")
        return self

    def _initialize(self, layer_units, backend: Backend, dtype, rs) -> None:
        """A fresh network with scikit-learn's initial weights for ``rs``, and a fresh
        training record."""
        self.n_iter_, self.t_ = 0, 0
        self.n_layers_, self.n_outputs_ = len(layer_units), layer_units[-1]
        self.out_activation_ = "softmax"
        net = MLP(layer_units, backend=backend, dtype=dtype, seed=0)
        weights = []
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            # Glorot-uniform with factor 2 for the logistic function, biases too, drawn in
            # scikit-learn's order, so that the same random_state gives the same network.
            bound = np.sqrt(2.0 / (fan_in + fan_out))
            coef = rs.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)
            intercept = rs.uniform(-bound, bound, fan_out).astype(dtype)
            weights += [coef.T, intercept]
        net.load_state([net.backend.asarray(w) for w in weights])
        self.net_ = net
        self._optimizer = None
        self._best_state = net.state()
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_, self.best_validation_score_ = [], -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = self.best_validation_score_ = None

    def _split(self, X, targets, rs):
        """(X_train, t_train, X_val, t_val): with early stopping, scikit-learn's split drawn
        from ``rs``, else no validation part; dense rows on the backend, sparse ones as CSR
        on the host, targets (class indices) on the backend."""
        net = self.net_
        sparse = scipy.sparse.issparse(X)
        X = X.tocsr() if sparse else net.prepare_features(X)
        t = net.prepare_targets(targets, X.shape[0])
        if not self.early_stopping:
            return X, t, None, None
        # scikit-learn's split, the same draws from rs: stratified (on its one output
        # column) for two classes, and, as scikit-learn does, not for more.
        stratify = None
        if len(self.classes_) == 2:
            stratify = LabelBinarizer().fit([0, 1]).transform(targets).astype(bool)
        train, val = train_test_split(np.arange(X.shape[0]), random_state=rs,
                                      test_size=self.validation_fraction, stratify=stratify)
        if len(val) < 2:
            raise ValueError("validation_fraction: the validation set is too small. Increase "
                             "'validation_fraction' or the size of your dataset.")
        on_device = net.backend.asarray(train), net.backend.asarray(val)
        rows = (train, val) if sparse else on_device
        return X[rows[0]], t[on_device[0]], X[rows[1]], t[on_device[1]]

    def _train(self, X, targets, X_val, t_val, rs, incremental: bool) -> None:
        """scikit-learn's epoch loop (``_fit_stochastic``) over gpubp's training step."""
        net, n = self.net_, X.shape[0]
        if self.batch_size == "auto":
            batch = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                              "going to be clipped")
            batch = int(np.clip(self.batch_size, 1, n))
        net.check_training_memory(batch, self._optimizer,
                                  eval_rows=0 if X_val is None else X_val.shape[0])
        order = np.arange(n)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    order = shuffled(order, random_state=rs)
                loss_sum = self._epoch(X, targets, order if self.shuffle else None, batch)
                self.n_iter_ += 1
                self.loss_ = float(loss_sum) / n  # the epoch's one host sync
                self.t_ += n
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._update_no_improvement_count(X_val, t_val)
                if self.learning_rate == "invscaling":
                    self._set_learning_rate(
                        self.learning_rate_init / (self.t_ + 1) ** self.power_t)
                if self._no_improvement_count > self.n_iter_no_change:
                    if self._stop():
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) "
                                  "reached and the optimization hasn't converged yet.",
                                  ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if self.early_stopping:
            net.load_state(self._best_state)

    def _epoch(self, X, targets, order, batch: int):
        """One pass of minibatch steps in ``order`` (None: the rows as they are). Returns
        Σ batch loss × rows as a 0-d backend array (no host sync on a GPU)."""
        net, n = self.net_, X.shape[0]
        xp, sparse = net.backend.xp, scipy.sparse.issparse(X)
        alpha, params = float(self.alpha), net.parameters()
        device_order = None if order is None else net.backend.asarray(order)
        loss_sum = xp.zeros((), dtype=np.float64)
        for start in range(0, n, batch):
            if order is None:  # slices: views of the rows, no gather
                rows = device_rows = slice(start, start + batch)
            else:
                rows, device_rows = order[start:start + batch], device_order[start:start + batch]
            if sparse:  # densified one batch at a time
                X_batch = net.prepare_features(X[rows].toarray())
            else:
                X_batch = X[device_rows]
            size = X_batch.shape[0]
            loss, grads = net.loss_and_grads_prepared(X_batch, targets[device_rows])
            if alpha:
                # scikit-learn's L2 term, alpha/2 · Σ‖W‖² / B, on the weights the batch saw;
                # its gradient alpha/B · W joins dL/dW (biases are not penalised).
                squares = sum(xp.vdot(W.ravel(), W.ravel()) for W in net.weights)
                loss = loss + 0.5 * alpha * squares / size
                for (dW, _), W in zip(grads, net.weights):
                    if net.backend.is_gpu:
                        dW += (alpha / size) * W
                    else:
                        blas.axpby(alpha / size, W, 1.0, dW)
            self._optimizer.step(params, [g for pair in grads for g in pair])
            loss_sum += loss * size
        return loss_sum

    def _update_no_improvement_count(self, X_val, t_val) -> None:
        """scikit-learn's patience: the validation accuracy (early stopping) or the training
        loss must improve by more than ``tol`` within ``n_iter_no_change`` epochs."""
        if self.early_stopping:
            score = self._accuracy(X_val, t_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_state = self.net_.state()
            return
        if self.loss_curve_[-1] > self.best_loss_ - self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        if self.loss_curve_[-1] < self.best_loss_:
            self.best_loss_ = self.loss_curve_[-1]

    def _stop(self) -> bool:
        """After ``n_iter_no_change`` epochs without improvement: stop, or with
        ``learning_rate="adaptive"`` divide the rate by 5 and go on while it is > 1e-6."""
        what = ("Validation score" if self.early_stopping else "Training loss")
        message = (f"{what} did not improve more than tol={self.tol:f} for "
                   f"{self.n_iter_no_change} consecutive epochs.")
        if self.learning_rate != "adaptive":
            if self.verbose:
                print(message + " Stopping.")
            return True
        if self._optimizer.lr <= MIN_ADAPTIVE_LR:
            if self.verbose:
                print(message + " Learning rate too small. Stopping.")
            return True
        self._set_learning_rate(self._optimizer.lr / 5.0)
        if self.verbose:
            print(message + f" Setting learning rate to {self._optimizer.lr:f}")
        return False

    def _set_learning_rate(self, lr: float) -> None:
        """Change the rate, keeping scikit-learn's momentum: its velocity is −lr × gpubp's,
        so gpubp's is rescaled by lr_old / lr_new."""
        old = self._optimizer.lr
        velocity = self._optimizer.state_dict()["velocity"]
        if velocity is not None and lr > 0 and lr != old:
            for v in velocity:
                v *= old / lr
        self._optimizer.lr = lr

    def _accuracy(self, X, targets) -> float:
        """The share of rows whose most probable class is their target, as in
        scikit-learn's early-stopping score."""
        net, correct = self.net_, 0
        for i in range(0, X.shape[0], EVAL_CHUNK):
            chunk = X[i:i + EVAL_CHUNK]
            if scipy.sparse.issparse(chunk):
                chunk = chunk.toarray()
            predicted = net.forward(chunk).argmax(axis=1)
            correct += int((predicted == targets[i:i + EVAL_CHUNK]).sum())
        return correct / X.shape[0]

    # ---- predicting ------------------------------------------------------------------

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, (n_samples, C) NumPy, columns in the order of ``classes_``."""
        check_is_fitted(self)
        X = self._check_features(X)
        net = self.net_
        if not scipy.sparse.issparse(X):
            return to_numpy(net.predict_proba(X))
        return np.concatenate([to_numpy(net.predict_proba(X[i:i + EVAL_CHUNK].toarray()))
                               for i in range(0, X.shape[0], EVAL_CHUNK)])

    def predict_log_proba(self, X) -> np.ndarray:
        """log(predict_proba(X)), (n_samples, C)."""
        P = self.predict_proba(X)
        return np.log(P, out=P)

    def predict(self, X) -> np.ndarray:
        """The most probable class label of each row, (n_samples,), from ``classes_``."""
        P = self.predict_proba(X)
        return self.classes_[np.argmax(P, axis=1)]

    # ---- conversion ------------------------------------------------------------------

    @classmethod
    def from_sklearn(cls, fitted, *, backend="auto", dtype=None) -> "MLPClassifier":
        """A fitted gpubp estimator from a fitted ``sklearn.neural_network.MLPClassifier``
        with ``activation="logistic"`` (any solver): the same predict_proba, parameters
        and training record, so that ``warm_start`` and ``partial_fit`` go on from it.

        A binary model's single logistic unit becomes the 2-unit softmax over [0, z].
        dtype: by default that of the estimator's coefficients.
        """
        net = mlp_from_sklearn(fitted, backend=backend, dtype=dtype)
        own = cls().get_params()
        params = {k: v for k, v in fitted.get_params().items() if k in own}
        params.update(solver="sgd", backend=backend, dtype=net.dtype.name)
        est = cls(**params)
        est.net_ = net
        est.classes_ = np.asarray(fitted.classes_)
        est.n_features_in_ = int(fitted.n_features_in_)
        if hasattr(fitted, "feature_names_in_"):
            est.feature_names_in_ = np.asarray(fitted.feature_names_in_)
        est.n_layers_, est.n_outputs_ = len(net.layer_sizes), net.layer_sizes[-1]
        est.out_activation_ = "softmax"
        est.n_iter_ = int(getattr(fitted, "n_iter_", 0))
        est.t_ = int(getattr(fitted, "t_", 0))
        est.loss_ = getattr(fitted, "loss_", None)
        est.loss_curve_ = list(getattr(fitted, "loss_curve_", []))
        est.best_loss_ = getattr(fitted, "best_loss_", np.inf)
        scores = getattr(fitted, "validation_scores_", None)
        est.validation_scores_ = None if scores is None else list(scores)
        est.best_validation_score_ = getattr(fitted, "best_validation_score_", None)
        est._no_improvement_count = int(getattr(fitted, "_no_improvement_count", 0))
        est._optimizer = _sgd_from_sklearn(getattr(fitted, "_optimizer", None), net)
        est._best_state = net.state()
        return est

    def to_sklearn(self):
        """A fitted ``sklearn.neural_network.MLPClassifier(activation="logistic",
        solver="sgd")`` with this estimator's predict_proba, parameters and training record.

        Two classes become scikit-learn's one logistic unit: w = w₁ − w₀, b = b₁ − b₀.
        """
        check_is_fitted(self)
        from sklearn.neural_network import MLPClassifier as SklearnMLP

        theirs = SklearnMLP().get_params()
        params = {k: v for k, v in self.get_params().items()
                  if k in theirs and k not in ("hidden_layer_sizes", "activation", "solver")}
        est = mlp_to_sklearn(self.net_, classes=self.classes_, params=params)
        est.n_features_in_ = self.n_features_in_
        if hasattr(self, "feature_names_in_"):
            est.feature_names_in_ = self.feature_names_in_
        est.n_iter_, est.t_ = self.n_iter_, self.t_
        est.loss_curve_ = list(self.loss_curve_)
        if getattr(self, "loss_", None) is not None:
            est.loss_ = self.loss_
        est.best_loss_ = self.best_loss_
        est.validation_scores_ = (None if self.validation_scores_ is None
                                  else list(self.validation_scores_))
        est.best_validation_score_ = self.best_validation_score_
        est._no_improvement_count = self._no_improvement_count
        optimizer = _sgd_to_sklearn(getattr(self, "_optimizer", None), self.net_, est)
        if optimizer is not None:
            est._optimizer = optimizer
        return est

    def to_onnx(self, path=None, **kwargs):
        """The fitted network as ONNX (see :func:`gpubp.interop.onnx.to_onnx`), with labels
        from ``classes_``."""
        check_is_fitted(self)
        return to_onnx(self.net_, path, classes=self.classes_, **kwargs)

    # ---- scikit-learn's attributes and protocol --------------------------------------

    @property
    def coefs_(self) -> list:
        """[(n_in, n_out)] per layer: the weights in scikit-learn's layout (W^l transposed)."""
        check_is_fitted(self)
        return [to_numpy(W).T for W in self.net_.weights]

    @coefs_.setter
    def coefs_(self, coefs) -> None:
        self._set_weights(coefs, "coefs_", transpose=True)

    @property
    def intercepts_(self) -> list:
        """[(n_out,)] per layer: the biases."""
        check_is_fitted(self)
        return [to_numpy(b) for b in self.net_.biases]

    @intercepts_.setter
    def intercepts_(self, intercepts) -> None:
        self._set_weights(intercepts, "intercepts_", transpose=False)

    def _set_weights(self, arrays, name: str, transpose: bool) -> None:
        check_is_fitted(self)
        net = self.net_
        live = net.weights if transpose else net.biases
        arrays = list(arrays)
        if len(arrays) != len(live):
            raise ValueError(f"{name}: expected {len(live)} arrays, got {len(arrays)}")
        new = []
        for i, (a, p) in enumerate(zip(arrays, live)):
            a = np.asarray(to_numpy(a), dtype=net.dtype)
            expected = p.shape[::-1] if transpose else p.shape  # in scikit-learn's layout
            if a.shape != expected:
                raise ValueError(f"{name}[{i}]: expected shape {expected}, got {a.shape}")
            new.append(a.T if transpose else a)
        for p, a in zip(live, new):
            p[...] = net.backend.asarray(a)

    def __sklearn_is_fitted__(self) -> bool:
        return getattr(self, "net_", None) is not None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def __getstate__(self):
        """For pickling: the network, optimizer and best weights as NumPy arrays (a
        backend holds modules, which do not pickle)."""
        state = dict(super().__getstate__())  # a copy: object's state is the live __dict__
        net = state.pop("net_", None)
        if net is not None:
            state["_net_arrays"] = (net.layer_sizes, net.dtype.name,
                                    [to_numpy(p) for p in net.parameters()])
        if state.get("_best_state") is not None:
            state["_best_state"] = [to_numpy(p) for p in state["_best_state"]]
        opt = state.pop("_optimizer", None)
        if opt is not None:
            velocity = opt.state_dict()["velocity"]
            state["_optimizer_state"] = (opt.lr, opt.momentum, opt.nesterov,
                                         None if velocity is None else
                                         [to_numpy(v) for v in velocity])
        return state

    def __setstate__(self, state) -> None:
        net_arrays = state.pop("_net_arrays", None)
        optimizer = state.pop("_optimizer_state", None)
        super().__setstate__(state)
        if net_arrays is None:
            return
        try:
            backend = get_backend(self.backend)
        except BackendError as e:  # pickled on a GPU machine, loaded on one without
            warnings.warn(f"gpubp.MLPClassifier: {e}; loading onto NumPy")
            backend = get_backend("numpy")
        sizes, dtype, parameters = net_arrays
        net = MLP(sizes, backend=backend, dtype=dtype, seed=0)
        net.load_state([backend.asarray(p) for p in parameters])
        self.net_ = net
        if getattr(self, "_best_state", None) is not None:
            self._best_state = [backend.asarray(p) for p in self._best_state]
        self._optimizer = None
        if optimizer is not None:
            lr, momentum, nesterov, velocity = optimizer
            self._optimizer = SGD(max(lr, np.finfo(np.float64).tiny), momentum=momentum,
                                  nesterov=nesterov)
            self._optimizer.lr = lr
            if velocity is not None:
                self._optimizer.load_state_dict(
                    {"velocity": [backend.asarray(v) for v in velocity]})

    # ---- checks ----------------------------------------------------------------------

    def _check_params(self) -> list[int]:
        """Validate every parameter (errors start with its name); returns the hidden sizes."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, (str, bytes)):
            raise TypeError(f"hidden_layer_sizes: expected an integer or a sequence of "
                            f"integers, got {sizes!r}")
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        hidden = [check_int(s, f"hidden_layer_sizes[{i}]") for i, s in enumerate(sizes)]
        if self.activation != "logistic":
            raise ValueError(f"activation: gpubp's hidden layers are sigmoid, so only "
                             f"'logistic' is supported, got {self.activation!r}")
        if self.solver != "sgd":
            raise ValueError(f"solver: gpubp trains by stochastic gradient descent, so only "
                             f"'sgd' is supported, got {self.solver!r}")
        check_float(self.alpha, "alpha", 0.0)
        if not (isinstance(self.batch_size, str) and self.batch_size == "auto"):
            check_int(self.batch_size, "batch_size")
        if self.learning_rate not in LEARNING_RATES:
            raise ValueError(f"learning_rate: expected one of {LEARNING_RATES}, got "
                             f"{self.learning_rate!r}")
        check_float(self.learning_rate_init, "learning_rate_init", 0.0, strict=True)
        check_float(self.power_t, "power_t", 0.0)
        check_int(self.max_iter, "max_iter")
        check_float(self.tol, "tol", 0.0)
        # gpubp.SGD needs momentum < 1 (scikit-learn allows 1, which never forgets a step).
        check_float(self.momentum, "momentum", 0.0, below=1.0)
        check_float(self.validation_fraction, "validation_fraction", 0.0, below=1.0)
        if not (isinstance(self.n_iter_no_change, numbers.Real)
                and self.n_iter_no_change == np.inf):
            check_int(self.n_iter_no_change, "n_iter_no_change")
        check_int(self.max_fun, "max_fun")
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping",
                     "cuda_graphs"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        if not isinstance(self.verbose, (bool, np.bool_, numbers.Integral)):
            raise TypeError(f"verbose: expected a bool or an int, got {self.verbose!r}")
        if self.dtype is not None:
            check_dtype(self.dtype)
        return hidden

    def _check_data(self, X, y, backend: Backend, reset: bool):
        """(X, y) checked as scikit-learn checks them: X a float array (host, sparse or a
        device array), y 1-D host labels."""
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target "
                             "y is None")
        y = _host_labels(y, "y")
        X = _from_dlpack(X, backend)
        if is_device_array(X):
            y = validate_data(self, y=y, reset=reset)
            X = self._check_device_features(X, reset)
            if X.shape[0] != y.shape[0]:
                raise ValueError(f"y: has {y.shape[0]} rows, X has {X.shape[0]}")
        else:
            X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"],
                                 dtype=(np.float64, np.float32), reset=reset)
        check_classification_targets(y)
        return X, y

    def _check_features(self, X):
        """X for prediction, checked against the fitted feature count and names."""
        X = _from_dlpack(X, self.net_.backend)
        if is_device_array(X):
            return self._check_device_features(X, reset=False)
        return validate_data(self, X, accept_sparse=["csr", "csc"],
                             dtype=(np.float64, np.float32), reset=False)

    def _check_device_features(self, X, reset: bool):
        """The checks validate_data makes, for a CuPy array it cannot read."""
        if X.ndim != 2:
            raise ValueError(f"X: expected a 2-D array (samples, features), got shape {X.shape}")
        if X.dtype.kind not in "iuf":
            raise TypeError(f"X: expected a real numeric array, got dtype {X.dtype}")
        if X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"X: Found array with shape {X.shape}; at least one sample and "
                             "one feature are required.")
        if X.dtype.kind != "f":
            X = X.astype(np.float64)
        if reset:
            self.n_features_in_ = X.shape[1]
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        else:
            if X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is "
                                 f"expecting {self.n_features_in_} features as input.")
            if hasattr(self, "feature_names_in_"):
                warnings.warn(f"X does not have valid feature names, but "
                              f"{type(self).__name__} was fitted with feature names")
        return X

    def _class_indices(self, labels: np.ndarray, incremental: bool, first: bool) -> np.ndarray:
        """The class index (int64) of each label, setting or checking ``classes_`` as
        scikit-learn does for fit, warm start and partial_fit."""
        classes = unique_labels(labels)
        if first and not incremental:
            if len(classes) < 2:
                raise ValueError(f"y: needs samples of at least 2 classes; got 1 class "
                                 f"({classes[0]!r})")
            self.classes_ = classes
        elif self.warm_start and not incremental:
            if set(classes) != set(self.classes_):
                raise ValueError("warm_start can only be used where `y` has the same classes "
                                 f"as in the previous call to fit. Previously got "
                                 f"{self.classes_}, `y` has {classes}")
        elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
            raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                             f"{self.classes_}. 'y' has {classes}.")
        if len(self.classes_) < 2:
            raise ValueError(f"classes: needs at least 2 classes; got 1 class "
                             f"({self.classes_[0]!r})")
        return np.searchsorted(self.classes_, labels).astype(np.int64)


def _sgd_from_sklearn(optimizer, net: MLP) -> SGD | None:
    """A gpubp SGD continuing scikit-learn's ``SGDOptimizer``: its current rate, and its
    velocities v as gpubp's −v / lr. None for another optimizer, and for two classes,
    whose output layers differ (a 2-class run takes a different path anyway)."""
    if type(optimizer).__name__ != "SGDOptimizer" or net.layer_sizes[-1] < 3:
        return None
    lr, n = float(optimizer.learning_rate), len(net.weights)
    sgd = SGD(max(lr, np.finfo(np.float64).tiny), momentum=optimizer.momentum,
              nesterov=bool(optimizer.nesterov and optimizer.momentum > 0))
    sgd.lr = lr
    if sgd.momentum and lr > 0:
        velocity = []  # scikit-learn's [coefs..., intercepts...] as gpubp's [W1, b1, ...]
        for v_coef, v_intercept in zip(optimizer.velocities[:n], optimizer.velocities[n:]):
            velocity += [np.ascontiguousarray(-v_coef.T / lr, net.dtype),
                         (-v_intercept / lr).astype(net.dtype)]
        sgd.load_state_dict({"velocity": [net.backend.asarray(v) for v in velocity]})
    return sgd


def _sgd_to_sklearn(sgd: SGD | None, net: MLP, est):
    """scikit-learn's ``SGDOptimizer`` continuing gpubp's SGD (the inverse of
    :func:`_sgd_from_sklearn`), or None (no optimizer yet, or two classes)."""
    if sgd is None or net.layer_sizes[-1] < 3:
        return None
    from sklearn.neural_network._stochastic_optimizers import SGDOptimizer

    params = est.coefs_ + est.intercepts_
    optimizer = SGDOptimizer(params, est.learning_rate_init, est.learning_rate, sgd.momentum,
                             est.nesterovs_momentum, est.power_t)
    optimizer.learning_rate = sgd.lr
    velocity = sgd.state_dict()["velocity"]
    if velocity is not None:
        host = [to_numpy(v) for v in velocity]
        optimizer.velocities = ([-sgd.lr * v.T for v in host[0::2]]
                                + [-sgd.lr * v for v in host[1::2]])
    return optimizer


def _host_labels(y, name: str) -> np.ndarray | object:
    """Labels handed over as a DLPack tensor or a CuPy array, as a host NumPy array (labels
    become class indices on the host anyway); anything else as it is."""
    if dlpack.is_dlpack(y):
        y = dlpack.as_array(y, name)
    return to_numpy(y) if is_device_array(y) else y


def _from_dlpack(X, backend: Backend):
    """A DLPack producer as a NumPy or CuPy view (see gpubp.interop.dlpack); else X."""
    return dlpack.as_array(X, "X", backend) if dlpack.is_dlpack(X) else X

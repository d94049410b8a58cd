"""The seed's network: sigmoid hidden layers, a softmax output, cross-entropy loss.

Notation follows A. Punnen, "Backpropagation with Softmax and Cross Entropy": a^0 = X,
z^l = W^l a^{l−1} + b^l, a^l = σ(z^l) for hidden layers, P = softmax(z^L). On a batch the
rows are samples, so z^l = a^{l−1} (W^l)^T + b^l with a^{l−1}: (B, n_{l−1}),
W^l: (n_l, n_{l−1}), z^l: (B, n_l).

:meth:`MLP.loss_and_grads` is the readable reference of a training step's math, in fresh
arrays; the fast step over persistent buffers is :mod:`gpubp.step`, tested against it.
Each backend's fused elementwise ops are chosen here, explicitly: :mod:`gpubp.cpu_kernels`
on NumPy, :mod:`gpubp.cuda.kernels` on CuPy (tests swap in :mod:`gpubp.ops`, the references,
through ``net._ops``).
"""

from __future__ import annotations

import numpy as np

from gpubp import cpu_kernels, onnx_graph, ops, serialization, sklearn_layout
from gpubp.backend import Backend, format_bytes, get_backend, to_numpy
from gpubp.cuda import kernels as cuda_kernels
from gpubp.model_info import ModelInfo
from gpubp.validation import (
    check_dtype,
    check_features,
    check_int,
    check_layer_sizes,
    check_targets,
)

EVAL_CHUNK = 8192  # rows per forward pass when evaluating large arrays


class MLP:
    """A fully connected network trained by explicit backpropagation.

    Args:
        layer_sizes: (n_in, hidden..., n_classes), each ≥ 1.
        backend: "numpy", "cupy", "auto", or None for $GPUBP_BACKEND (see gpubp.backend).
        dtype: "float32" or "float64", for weights and activations.
        seed: seeds the Glorot-uniform initialization; the same seed gives identical
            weights on either backend.

    Attributes:
        weights: [W^1, ..., W^L], W^l of shape (n_l, n_{l−1}), backend arrays.
        biases: [b^1, ..., b^L], b^l of shape (n_l,), backend arrays.
        info: a :class:`~gpubp.model_info.ModelInfo` (class labels, scaler, feature
            names, provenance), saved with the weights; empty unless set or loaded.
    """

    def __init__(self, layer_sizes, *, backend="auto", dtype="float32", seed=None):
        self.layer_sizes = check_layer_sizes(layer_sizes)
        self.dtype = check_dtype(dtype)
        self.backend: Backend = get_backend(backend)
        if seed is not None:
            seed = check_int(seed, "seed", minimum=0)
        widest = max(n_in * n_out for n_in, n_out in zip(self.layer_sizes, self.layer_sizes[1:]))
        self.backend.check_memory(  # the weights, and the float64 draw of the largest
            self._parameter_bytes() + 8 * widest, "layer_sizes",
            f"a network of {self._n_parameters():,} {self.dtype.name} parameters")
        rng = np.random.default_rng(seed)
        self.weights, self.biases = [], []
        for n_in, n_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            limit = np.sqrt(6.0 / (n_in + n_out))  # Glorot & Bengio (2010), uniform
            W = rng.uniform(-limit, limit, size=(n_out, n_in))
            self.weights.append(self.backend.asarray(W, dtype=self.dtype))
            self.biases.append(self.backend.xp.zeros(n_out, dtype=self.dtype))
        self.info = ModelInfo()
        self._ops = cuda_kernels if self.backend.is_gpu else cpu_kernels

    # ---- inference -------------------------------------------------------------------

    def forward(self, X):
        """Class probabilities P = softmax(z^L). X: (B, n_in) -> (B, C), backend array."""
        return ops.softmax(self._logits_in_chunks(self.prepare_features(X)))

    predict_proba = forward

    def predict(self, X):
        """Predicted class labels. X: (B, n_in) -> (B,) int64, backend array."""
        return self._logits_in_chunks(self.prepare_features(X)).argmax(axis=1)

    def evaluate(self, X, y) -> dict:
        """Mean cross-entropy and accuracy on (X, y), in chunks to bound memory.

        X: (B, n_in); y: labels (B,) or target rows (B, C). Returns {"loss", "accuracy"};
        accuracy compares the argmax of P with the label (or with the argmax of the row).
        """
        X = self.prepare_features(X)
        return self.evaluate_prepared(X, self.prepare_targets(y, X.shape[0]))

    def evaluate_prepared(self, X, targets) -> dict:
        """:meth:`evaluate` on arrays already returned by the ``prepare_*`` methods."""
        xp = self.backend.xp
        loss_sum = xp.zeros((), dtype=np.float64)
        correct = xp.zeros((), dtype=np.int64)
        for i in range(0, X.shape[0], EVAL_CHUNK):
            logits, t = self._logits(X[i:i + EVAL_CHUNK]), targets[i:i + EVAL_CHUNK]
            loss_rows, _ = self._ops.softmax_cross_entropy(logits, t, grad=False)
            labels = t if t.ndim == 1 else t.argmax(axis=1)
            loss_sum += loss_rows.sum(dtype=np.float64)
            correct += (logits.argmax(axis=1) == labels).sum()
        n = X.shape[0]
        return {"loss": float(loss_sum) / n, "accuracy": int(correct) / n}

    # ---- training --------------------------------------------------------------------

    def loss_and_grads(self, X, y):
        """Mean cross-entropy on the batch and its exact gradient.

        X: (B, n_in); y: integer labels (B,) or target rows (B, C) each summing to 1.
        Returns (loss, grads): loss a Python float; grads [(dW^l, db^l)] per layer, in
        the order of ``weights``, with the shapes of W^l and b^l.
        """
        X = self.prepare_features(X)
        targets = self.prepare_targets(y, X.shape[0])
        loss, grads = self.loss_and_grads_prepared(X, targets)
        return float(loss), grads

    def loss_and_grads_prepared(self, X, targets):
        """:meth:`loss_and_grads` on arrays already returned by the ``prepare_*`` methods.

        The readable reference of the step's math, in fresh arrays. Returns the loss as a
        0-d backend array (no host sync on a GPU) and [(dW^l, db^l)] per layer.
        """
        step_ops = self._ops
        activations = [X]  # a^0 .. a^{L−1}
        for W, b in zip(self.weights[:-1], self.biases[:-1]):
            activations.append(step_ops.bias_sigmoid(activations[-1] @ W.T, b))
        logits = activations[-1] @ self.weights[-1].T + self.biases[-1]
        # EqA1.1: δ^L = dL/dz^L = (P − Y)/B for the batch-mean loss, with the loss itself.
        loss, delta = step_ops.softmax_cross_entropy(logits, targets, 1.0 / X.shape[0],
                                                     reduction="mean", out=logits)
        grads = []
        for l in reversed(range(len(self.weights))):
            # EqA1: dL/dW^l = δ^l (a^{l−1})^T and dL/db^l = Σ_batch δ^l.
            grads.append((delta.T @ activations[l], delta.sum(axis=0)))
            if l > 0:
                # EqA2.1: δ^{l−1} = ((W^l)^T δ^l) ⊙ σ'(z^{l−1}), σ' = a^{l−1}(1 − a^{l−1}).
                delta = step_ops.sigmoid_backward(delta @ self.weights[l], activations[l])
        return loss, grads[::-1]

    # ---- parameters ------------------------------------------------------------------

    def parameters(self) -> list:
        """[W^1, b^1, ..., W^L, b^L]: the live backend arrays, updated in place by training."""
        return [p for pair in zip(self.weights, self.biases) for p in pair]

    def state(self) -> list:
        """A copy of :meth:`parameters`, for restoring later with :meth:`load_state`."""
        return [p.copy() for p in self.parameters()]

    def load_state(self, state) -> None:
        """Copy arrays from :meth:`state` back into the live parameters, in place."""
        for p, saved in zip(self.parameters(), state, strict=True):
            p[...] = saved

    @property
    def n_parameters(self) -> int:
        return self._n_parameters()

    def _n_parameters(self) -> int:
        sizes = self.layer_sizes
        return sum((n_in + 1) * n_out for n_in, n_out in zip(sizes, sizes[1:]))

    def _parameter_bytes(self) -> int:
        return self._n_parameters() * self.dtype.itemsize

    def check_training_memory(self, batch: int, optimizer=None,
                              eval_rows: int = EVAL_CHUNK) -> None:
        """Refuse, before the first step, training that cannot fit in free memory.

        Counted beyond the weights: their gradients, the optimizer's buffers and the
        trainer's copies (epoch starts, best weights) at one weights' size each; two step
        workspaces of ``batch`` rows (activations, deltas, logits); and the activations of
        evaluating ``eval_rows`` rows (the validation data; 0 for none), at most EVAL_CHUNK
        at a time. The error names ``batch_size`` when the step workspaces are the larger
        part of the need, else ``layer_sizes``.
        """
        chunk = min(EVAL_CHUNK, check_int(eval_rows, "eval_rows", minimum=0))
        copies = 4 + bool(getattr(optimizer, "momentum", 0)) \
            + bool(getattr(optimizer, "weight_decay", 0) or getattr(optimizer, "nesterov", 0))
        itemsize = self.dtype.itemsize
        per_row = 2 * sum(self.layer_sizes[1:-1]) + self.layer_sizes[-1]
        weights = copies * self._parameter_bytes()
        workspaces = 2 * batch * per_row * itemsize
        evaluation = chunk * 2 * max(self.layer_sizes[1:]) * itemsize
        self.backend.check_memory(
            weights + workspaces + evaluation,
            "batch_size" if workspaces > weights + evaluation else "layer_sizes",
            f"training {self} at batch {batch} ({format_bytes(weights)} of weights and "
            f"copies, {format_bytes(workspaces)} of step workspaces, "
            f"{format_bytes(evaluation)} to evaluate {chunk:,} rows at a time)")

    def save(self, path) -> None:
        """Write the weights and :attr:`info` to ``path`` (safetensors, atomically)."""
        serialization.write_model(path, self.layer_sizes, self.dtype,
                                  [to_numpy(p) for p in self.parameters()], self.info)

    @classmethod
    def load(cls, path, *, backend="auto") -> "MLP":
        """Read a network saved by :meth:`save` (with its :attr:`info`), onto any backend.

        Raises ModelFileError for anything but a well-formed gpubp model file.
        """
        saved = serialization.read_model(path)
        net = cls(saved.layer_sizes, backend=backend, dtype=saved.dtype, seed=0)
        net.load_state([net.backend.asarray(p) for p in saved.parameters])
        net.info = saved.info
        return net

    def to_onnx(self, path=None, **kwargs):
        """This network (with :attr:`info`'s scaler and classes) as an ``onnx.ModelProto``,
        written to ``path`` when given; see :func:`gpubp.interop.onnx.to_onnx`."""
        return onnx_graph.network_to_onnx(self, path, **kwargs)

    @classmethod
    def from_sklearn(cls, fitted, *, backend="auto", dtype=None) -> "MLP":
        """The network of a fitted ``sklearn.neural_network.MLPClassifier(activation=
        "logistic")``, same predict_proba; see :func:`gpubp.interop.sklearn.mlp_from_sklearn`."""
        return sklearn_layout.network_from_sklearn(cls, fitted, backend=backend, dtype=dtype)

    def to_sklearn(self, **params):
        """A fitted ``sklearn.neural_network.MLPClassifier`` computing this network's
        predict_proba (``params``: its other constructor arguments); see
        :func:`gpubp.interop.sklearn.mlp_to_sklearn`."""
        return sklearn_layout.network_to_sklearn(self, params=params)

    def __repr__(self) -> str:
        return (f"MLP(layer_sizes={self.layer_sizes}, backend={self.backend.name!r}, "
                f"dtype={self.dtype.name!r})")

    # ---- helpers ---------------------------------------------------------------------

    def prepare_features(self, X, name="X"):
        """``X`` checked and converted: a finite (B, n_in) array of the net's dtype and backend."""
        return check_features(X, self.layer_sizes[0], self.backend, self.dtype, name)

    def prepare_targets(self, y, n_rows, name="y"):
        """``y`` checked and converted: int64 labels (B,) or target rows (B, C) on the backend."""
        return check_targets(y, n_rows, self.layer_sizes[-1], self.backend, self.dtype, name)

    def _logits(self, X):
        """The logits z^L for a batch X (B, n_in), in fresh arrays."""
        a = X
        for W, b in zip(self.weights[:-1], self.biases[:-1]):
            z = a @ W.T
            a = self._ops.bias_sigmoid(z, b, out=z)
        return a @ self.weights[-1].T + self.biases[-1]

    def _logits_in_chunks(self, X):
        """z^L for X, EVAL_CHUNK rows at a time, so hidden activations stay bounded."""
        return self.backend.xp.concatenate(
            [self._logits(X[i:i + EVAL_CHUNK]) for i in range(0, X.shape[0], EVAL_CHUNK)])

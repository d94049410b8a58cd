"""The seed's network: sigmoid hidden layers, a softmax output, cross-entropy loss.

Notation follows ``backprop_softmax_crossentropy.md``: a^0 = X, z^l = W^l a^{l−1} + b^l,
a^l = σ(z^l) for hidden layers, P = softmax(z^L). On a batch the rows are samples, so
z^l = a^{l−1} (W^l)^T + b^l with a^{l−1}: (B, n_{l−1}), W^l: (n_l, n_{l−1}), z^l: (B, n_l).
"""

from __future__ import annotations

import numpy as np

from gpubp import ops
from gpubp.backend import Backend, get_backend
from gpubp.validation import (
    check_dtype, check_features, check_int, check_layer_sizes, check_targets,
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
    """

    def __init__(self, layer_sizes, *, backend="auto", dtype="float32", seed=None):
        self.layer_sizes = check_layer_sizes(layer_sizes)
        self.dtype = check_dtype(dtype)
        self.backend: Backend = get_backend(backend)
        if seed is not None:
            seed = check_int(seed, "seed", minimum=0)
        rng = np.random.default_rng(seed)
        self.weights, self.biases = [], []
        for n_in, n_out in zip(self.layer_sizes[:-1], self.layer_sizes[1:]):
            limit = np.sqrt(6.0 / (n_in + n_out))  # Glorot & Bengio (2010), uniform
            W = rng.uniform(-limit, limit, size=(n_out, n_in))
            self.weights.append(self.backend.asarray(W, dtype=self.dtype))
            self.biases.append(self.backend.xp.zeros(n_out, dtype=self.dtype))

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
            loss_rows, _ = ops.softmax_cross_entropy(logits, t)
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

        Returns the loss as a 0-d backend array, so that a GPU step needs no host sync.
        """
        activations, logits = self._forward(X)
        batch = X.shape[0]
        # EqA1.1: dL/dz^L = (P − Y)/B for the batch-mean loss, fused with the loss itself.
        loss_rows, delta = ops.softmax_cross_entropy(logits, targets, scale=1.0 / batch)
        return loss_rows.mean(), self._backward(activations, delta)

    def _backward(self, activations, delta):
        """Backpropagate delta = dL/dz^L (B, C) through every layer; returns [(dW, db)]."""
        grads = [None] * len(self.weights)
        for l in reversed(range(len(self.weights))):
            a_prev = activations[l]
            # EqA1: dL/dW^l = δ^l (a^{l−1})^T, summed over the batch: (n_l, n_{l−1}).
            grads[l] = (delta.T @ a_prev, delta.sum(axis=0))
            if l > 0:
                # EqA2.1: δ^{l−1} = ((W^l)^T δ^l) ⊙ σ'(z^{l−1}), σ' = a^{l−1}(1 − a^{l−1}).
                delta = ops.sigmoid_backward(delta @ self.weights[l], a_prev)
        return grads

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
        return sum(int(np.prod(p.shape)) for p in self.parameters())

    def save(self, path) -> None:
        """Write the network to ``path`` (safetensors, atomically). See gpubp.serialization."""
        from gpubp.serialization import save_mlp

        save_mlp(self, path)

    @classmethod
    def load(cls, path, *, backend="auto") -> "MLP":
        """Read a network saved by :meth:`save`, onto any backend."""
        from gpubp.serialization import load_mlp

        return load_mlp(path, backend=backend)

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

    def _forward(self, X):
        """The activations a^0 = X, ..., a^{L−1} and the logits z^L, for a batch X."""
        activations = [X]
        for W, b in zip(self.weights[:-1], self.biases[:-1]):
            activations.append(ops.sigmoid(activations[-1] @ W.T + b))
        return activations, activations[-1] @ self.weights[-1].T + self.biases[-1]

    def _logits(self, X):
        return self._forward(X)[1]

    def _logits_in_chunks(self, X):
        """z^L for X, EVAL_CHUNK rows at a time, so hidden activations stay bounded."""
        return self.backend.xp.concatenate(
            [self._logits(X[i:i + EVAL_CHUNK]) for i in range(0, X.shape[0], EVAL_CHUNK)])


"""The seed's equations in NumPy, written the obvious way: the comparison's baseline.

No fusion, no buffers, no numerical tricks: every step makes new float32 arrays, σ is
1/(1 + e^(−z)), softmax is shifted by the row max, the loss takes log P of the label.
Notation as in gpubp.network: a^0 = X, z^l = a^{l−1} (W^l)^T + b^l, a^l = σ(z^l) on the
hidden layers, P = softmax(z^L); W^l: (n_l, n_{l−1}), b^l: (n_l,), batch rows B.
"""

from __future__ import annotations

import numpy as np


def init_params(layer_sizes, seed=0, dtype=np.float32):
    """Glorot-uniform weights and zero biases, as gpubp.MLP makes them for the same seed."""
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:]):
        limit = np.sqrt(6.0 / (n_in + n_out))
        weights.append(rng.uniform(-limit, limit, size=(n_out, n_in)).astype(dtype))
        biases.append(np.zeros(n_out, dtype=dtype))
    return weights, biases


def loss_and_grads(weights, biases, X, y):
    """Mean cross-entropy of the batch and [(dW^l, db^l)] per layer.

    X: (B, n_in) float; y: (B,) integer labels.
    """
    B = X.shape[0]
    activations = [X]
    for W, b in zip(weights[:-1], biases[:-1]):
        z = activations[-1] @ W.T + b
        activations.append(1.0 / (1.0 + np.exp(-z)))
    z = activations[-1] @ weights[-1].T + biases[-1]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    P = e / e.sum(axis=1, keepdims=True)
    Y = np.eye(P.shape[1], dtype=P.dtype)[y]
    loss = -np.log(P[np.arange(B), y]).mean()
    delta = (P - Y) / B                                     # EqA1.1
    grads = [None] * len(weights)
    for l in reversed(range(len(weights))):
        a_prev = activations[l]
        grads[l] = (delta.T @ a_prev, delta.sum(axis=0))    # EqA1
        if l > 0:
            delta = (delta @ weights[l]) * a_prev * (1 - a_prev)  # EqA2.1
    return loss, grads


def sgd_step(weights, biases, X, y, lr):
    """One step of plain SGD on the batch (X, y), in place. Returns the batch's loss."""
    with np.errstate(over="ignore"):  # e^(−z) → inf for z ≪ 0 gives σ = 0, as it should
        loss, grads = loss_and_grads(weights, biases, X, y)
    for W, b, (dW, db) in zip(weights, biases, grads):
        W -= lr * dW
        b -= lr * db
    return loss


def train_epoch(weights, biases, X, y, batch_size, lr, rng):
    """One pass of plain SGD over shuffled minibatches, in place. Returns the mean loss."""
    n = X.shape[0]
    order = rng.permutation(n)
    loss_sum = 0.0
    for i in range(0, n, batch_size):
        rows = order[i:i + batch_size]
        loss_sum += float(sgd_step(weights, biases, X[rows], y[rows], lr)) * rows.shape[0]
    return loss_sum / n

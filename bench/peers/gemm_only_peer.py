"""The training step's matrix products and nothing else: a ceiling, not a contestant.

For each batch: the gather, then the GEMMs of gpubp's fused SGD step, on gpubp.blas with
gpubp's layouts: a^{l−1} (W^l)^T for every layer, W^l ← W^l − lr · δ^l (a^{l−1})^T (EqA1
with the update in the GEMM), and δ^l W^l for l > 1 (EqA2.1's product). No bias, sigmoid,
softmax or loss: its "activations" are plain products, and δ^L is a fixed array whose
sign flips every step, so the updates cancel and the weights stay bounded (the values do
not change a GEMM's time). Any implementation of the dense network does at least these
products, so no peer on the same BLAS beats this peer's samples/s; ``gpubp÷peer`` for it
is the share of that ceiling gpubp reaches.
"""

from __future__ import annotations

from bench.peers import time_epochs


def check() -> dict:
    import numpy as np

    from gpubp import blas

    return {"numpy": np.__version__, "blas": blas.name()}


def run(X, y, point) -> dict:
    import numpy as np

    from bench.naive_numpy import init_params
    from gpubp import blas

    sizes, batch, lr = point["sizes"], point["batch_size"], point["lr"]
    weights, _ = init_params(sizes, seed=point["seed"])
    rng = np.random.default_rng(point["seed"])

    def workspace(rows):
        # Transposed, in gpubp's memory order: its NumPy workspace holds the hidden a^l
        # and δ^l as (B, n_l) column-major, i.e. these row-major (n_l, B); its logits
        # and δ^L are row-major (B, C).
        activations = [np.empty((n, rows), np.float32) for n in sizes[1:-1]]
        deltas = [np.empty((n, rows), np.float32) for n in sizes[1:-1]]
        logits = np.empty((sizes[-1], rows), np.float32, order="F")
        last = np.full((sizes[-1], rows), 1e-3, np.float32, order="F")
        return activations, deltas, logits, (last, -last)

    def step(xb, activations, deltas, logits, last_delta):
        inputs = [xb.T] + activations
        for W, a, out in zip(weights, inputs, activations + [logits]):
            blas.matmul(W, a, out)
        delta = last_delta
        for l in reversed(range(len(weights))):
            if l > 0:  # EqA2.1's product, with W^l before its update, as gpubp does
                blas.matmul(weights[l].T, delta, deltas[l - 1])
            blas.matmul(delta, inputs[l].T, weights[l], alpha=-lr, beta=1.0)
            if l > 0:
                delta = deltas[l - 1]

    workspaces = {}

    def epoch():
        order = rng.permutation(X.shape[0])
        for k, start in enumerate(range(0, X.shape[0], batch)):
            xb = X[order[start:start + batch]]
            rows = xb.shape[0]
            if rows not in workspaces:
                workspaces[rows] = workspace(rows)
            activations, deltas, logits, signed = workspaces[rows]
            step(xb, activations, deltas, logits, signed[k % 2])

    for _ in range(point["warmup"]):
        epoch()
    epoch_s, _ = time_epochs(epoch, point["repeats"])
    return {"epoch_s": epoch_s, "final_loss": None, "device_peak_bytes": None}

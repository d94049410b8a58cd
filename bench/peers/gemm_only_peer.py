"""The training step's matrix products and nothing else: a ceiling, not a contestant.

For each batch: the gather, then the GEMMs of gpubp's fused SGD step, through gpubp.blas
with gpubp's layouts: a^{l−1} (W^l)^T for every layer, W^l ← W^l − lr · δ^l (a^{l−1})^T
(EqA1 with the update in the GEMM), and δ^l W^l for l > 1 (EqA2.1's product). No bias,
sigmoid, softmax or loss: its "activations" are plain products, and δ^L is a fixed array
whose sign flips every step, so the updates cancel and the weights stay bounded (the
values do not change a GEMM's time).

The products run on every installed library in turn (``$GPUBP_BLAS`` as gpubp would force
it), epochs of the libraries interleaved, and the peer reports the epochs of the fastest
one (by median) at this point. So no implementation of the dense network on any of these
libraries beats this peer's samples/s, on any machine; ``gpubp÷peer`` for it is the share
of that ceiling gpubp reaches. ``library`` and ``per_library_epoch_s`` say which it was.

``precision="bf16"`` (peer ``gemm-only-bf16``): the same products inside
``gpubp.blas.gemm_precision("bf16")``, on oneDNN with bf16 inputs (their conversions
included), in the bf16 step's row-major layout: the ceiling of gpubp's bf16 mode.
"""

from __future__ import annotations

from bench.peers import PeerUnavailable, time_epochs


def check(precision: str = "fp32") -> dict:
    import numpy as np

    from gpubp import blas
    from gpubp.errors import BackendError

    if precision != "fp32":
        try:
            blas.check_precision(precision)
        except BackendError as e:
            raise PeerUnavailable(str(e)) from None
    return {"numpy": np.__version__, "blas_installed": blas.installed()}


def run(X, y, point, libraries=None, precision: str = "fp32") -> dict:
    """``libraries``: names to try (every installed float32 library by default; for bf16,
    oneDNN's bf16 matmul alone)."""
    import numpy as np

    from bench.naive_numpy import init_params
    from gpubp import blas

    sizes, batch, lr = point["sizes"], point["batch_size"], point["lr"]
    weights, _ = init_params(sizes, seed=point["seed"])
    rng = np.random.default_rng(point["seed"])
    names = []
    if precision == "bf16":
        libraries = ["bf16"]
    for name in libraries or [n for n in blas.LIBRARIES if n in blas.installed()]:
        if name == "bf16":
            names.append(name)
            continue
        try:
            blas.library(name)
            names.append(name)
        except blas.LibraryUnavailable:
            continue
    if not names:
        raise PeerUnavailable("no GEMM library could be loaded")

    def workspace(rows):
        # Transposed, in gpubp's memory order: its NumPy workspace holds the hidden a^l
        # and δ^l as (B, n_l) column-major, i.e. these row-major (n_l, B); its logits
        # and δ^L are row-major (B, C). bf16: gpubp's are row-major (B, n_l) there, i.e.
        # these column-major (n_l, B).
        order = "F" if precision == "bf16" else "C"
        activations = [np.empty((n, rows), np.float32, order=order) for n in sizes[1:-1]]
        deltas = [np.empty((n, rows), np.float32, order=order) for n in sizes[1:-1]]
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

    def on(name):
        def run_epoch():
            with (blas.gemm_precision("bf16") if name == "bf16" else blas.forced(name)):
                epoch()
        return run_epoch

    for name in names:
        for _ in range(point["warmup"]):
            on(name)()
    per_library = {name: [] for name in names}
    for r in range(point["repeats"]):  # one epoch of each library in turn, a shifted order
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            per_library[name] += time_epochs(on(name), 1)[0]
    best = min(names, key=lambda n: float(np.median(per_library[n])))
    return {"epoch_s": per_library[best], "final_loss": None, "device_peak_bytes": None,
            "library": best, "per_library_epoch_s": per_library}

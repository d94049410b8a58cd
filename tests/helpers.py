"""Helpers shared by the tests: small labelled data, a hook after an optimizer step,
random logits, the cross-entropy reference and a tolerance check for host and device arrays.

pytest puts tests/ on sys.path, and the worker scripts run from it, so both import this
module as ``helpers``.
"""

import http.server

import numpy as np

from gpubp import ops
from gpubp.backend import array_module, is_device_array, to_numpy

# Elementwise tolerances of the kernels against their float64 references, per runner: the
# emulator's small cases, the GPU's cases up to 262,144 columns.
TOLERANCE = {"emulated": {np.float32: 3e-6, np.float64: 1e-13},
             "cupy": {np.float32: 2e-5, np.float64: 1e-11}}


def blobs(n=60, n_features=5, n_classes=3, seed=0, *, spread=3.0, dtype=np.float32,
          noise_first=False):
    """(X, y): n points scattered (σ = 1) around n_classes random centres (σ = ``spread``),
    labels 0..n_classes − 1, the same for a seed. ``noise_first`` draws the scatter before
    the centres: the data-parallel worker's data, kept as it was."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, size=n)
    if noise_first:
        noise = rng.normal(size=(n, n_features))
        centers = rng.normal(scale=spread, size=(n_classes, n_features))
    else:
        centers = rng.normal(scale=spread, size=(n_classes, n_features))
        noise = rng.normal(size=(n, n_features))
    return (centers[y] + noise).astype(dtype), y


def after_step(optimizer, at, action):
    """Make ``optimizer.step`` call ``action()`` right after its ``at``-th call (a worker's
    self-inflicted signal or crash at a chosen step)."""
    step, count = optimizer.step, [0]

    def counted(params, grads):
        step(params, grads)
        count[0] += 1
        if count[0] == at:
            action()

    optimizer.step = counted


def random_logits(rng, rows, cols, dtype, *, hot_rows=None, draw_dtype=np.float64):
    """Normal logits (σ = 2) drawn in ``draw_dtype``, with one logit ×20 in each of the first
    ``hot_rows`` rows (default: every row) so that the softmax is far from uniform."""
    logits = rng.standard_normal((rows, cols), dtype=draw_dtype) * 2
    hot_rows = rows if hot_rows is None else hot_rows
    logits[np.arange(hot_rows), rng.integers(0, cols, hot_rows)] *= 20
    return logits.astype(dtype, copy=False)


def xent_reference(logits, targets, scale=1.0, **kwargs):
    """gpubp.ops.softmax_cross_entropy in float64: on the host, or on the device for CuPy
    logits of more than 2**22 elements (the same code on CuPy arrays, within minutes)."""
    if is_device_array(logits) and logits.size > 2 ** 22:
        logits64 = logits.astype(array_module(logits).float64)
    else:
        logits64, targets = np.asarray(to_numpy(logits), np.float64), np.asarray(to_numpy(targets))
    if targets.ndim == 2:
        targets = targets.astype(np.float64)
    return ops.softmax_cross_entropy(logits64, targets, scale, **kwargs)


def assert_close(got, want, tol, scale=1.0):
    """|got − want| ≤ tol·(|want| + scale) elementwise, compared where ``want`` lives (host
    or CuPy), with the shapes equal (or ``want`` a scalar) and no NaN in ``got``: outputs
    are poisoned with NaN, so NaN is an element never written."""
    xp = array_module(want)
    got = (xp.asarray(got) if xp is not np else np.asarray(to_numpy(got))).astype(np.float64)
    assert np.ndim(want) == 0 or got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    assert not bool(xp.isnan(got).any()), "an output element was never written"
    if got.size == 0:
        return
    excess = xp.abs(got - want) - tol * (xp.abs(want) + scale)
    assert float(excess.max()) <= 0, f"max excess over tolerance {float(excess.max()):.3g}"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging every request to stderr (the ``serve`` fixture's)."""

    def log_message(self, *args):
        pass

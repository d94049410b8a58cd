"""Where one training step's time goes: each phase timed alone, and host enqueue time
against total time (a step whose enqueue time ≈ its total time is bound by the host).

    PYTHONPATH=. python -m bench.step_profile --backend cupy --out profile.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import gpubp


def per_call(fn, sync, n=100) -> float:
    for _ in range(5):
        fn()
    sync()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - started) / n


def enqueue_time(fn, sync, n=100) -> float:
    """Seconds per call spent on the host before returning (no synchronization)."""
    sync()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    spent = (time.perf_counter() - started) / n
    sync()
    return spent


def profile(backend, batch, sizes=(784, 800, 10)) -> dict:
    net = gpubp.MLP(sizes, backend=backend, seed=0)
    sync = net.backend.synchronize
    rng = np.random.default_rng(0)
    X = net.backend.asarray(rng.random((batch, sizes[0]), dtype=np.float32))
    y = net.backend.asarray(rng.integers(0, sizes[-1], batch))
    opt = gpubp.SGD(0.01, momentum=0.9)
    params = net.parameters()
    work = net._workspace(batch)
    logits = net._forward_into(X, work)
    _, delta = net._ops.softmax_cross_entropy(logits, y, 1.0 / batch, reduction="mean")
    grads = [g for pair in net._backward_into(X, work, delta) for g in pair]
    hidden = work.activations[0]
    scratch = net.backend.xp.empty_like(hidden)  # bias_sigmoid's out, in hidden's layout

    def step():
        _, g = net.loss_and_grads_prepared(X, y)
        opt.step(params, [t for pair in g for t in pair])

    phases = {
        "forward": lambda: net._forward_into(X, work),
        "softmax_xent": lambda: net._ops.softmax_cross_entropy(logits, y, 1.0 / batch,
                                                               reduction="mean"),
        "backward": lambda: net._backward_into(X, work, delta),  # reads delta only
        "sgd_update": lambda: opt.step(params, grads),
        "bias_sigmoid": lambda: net._ops.bias_sigmoid(hidden, net.biases[0], out=scratch),
        # the step's own GEMM (MKL on NumPy when installed) into a step-like buffer
        "gemm_forward_layer1": lambda: net._matmul(X, net.weights[0].T, out=scratch),
        "step": step,
    }
    result = {"batch": batch, "backend": net.backend.name}
    for name, fn in phases.items():
        result[f"{name}_ms"] = 1e3 * per_call(fn, sync)
    result["step_enqueue_ms"] = 1e3 * enqueue_time(step, sync)
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default=None)
    p.add_argument("--batches", default="64,256,4096")
    p.add_argument("--out")
    args = p.parse_args(argv)
    results = [profile(args.backend, int(b)) for b in args.batches.split(",")]
    for r in results:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

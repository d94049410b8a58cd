"""Where one training step's time goes: each phase of the CUDA step timed alone (CUDA
events, over one step's own persistent buffers, on a stream of its own as the stepper
runs it), the whole step eager and as a replayed CUDA graph, and the host's time to issue
each (an enqueue time ≈ the step's time means the host bounds the step).

    PYTHONPATH=. python -m bench.step_profile --backend cupy --out profile.json

The phases are the launches of :mod:`gpubp.step.cuda_step`, called through the public
kernel wrappers and cuBLAS layer: gather, forward (GEMMs and bias_sigmoid), loss (the
fused bias + softmax + cross-entropy with db^L), backward (GEMMs and sigmoid backward
with db), update (multi-tensor SGD with momentum). On NumPy: the stepper's whole step
(the host does all of it, so enqueue = step).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import numpy as np

MIN_ROWS = 65536


def enqueue_time(fn, sync, n: int = 50) -> float:
    """Seconds per call spent on the host before returning (no synchronization)."""
    sync()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    spent = (time.perf_counter() - started) / n
    sync()
    return spent


def profile_cuda(cp, batch: int, sizes=(784, 800, 10), budget_s: float = 0.2) -> dict:
    """The phases of a CUDA step of ``sizes`` at ``batch``, in ms per call."""
    import gpubp
    from bench.kernel_times import time_events
    from gpubp.cuda import kernels
    from gpubp.cuda.cublas import Cublas
    from gpubp.step.workspace import Workspace

    net = gpubp.MLP(sizes, backend="cupy", seed=0)
    rows = max(4 * batch, MIN_ROWS)
    rng = cp.random.default_rng(0)
    X = rng.random((rows, sizes[0]), dtype=cp.float32)
    y = rng.integers(0, sizes[-1], rows, dtype=cp.int64)
    order = cp.asarray(np.random.default_rng(0).permutation(rows).astype(np.int64))
    offset = cp.zeros(1, cp.int64)
    lr = cp.full(1, 0.01, cp.float64)
    params = net.parameters()
    velocity = [cp.zeros_like(p) for p in params]
    work = Workspace(net, batch, (), np.int64)
    table = kernels.SGDTable(params, [g for pair in work.grads for g in pair], velocity)
    scratch = kernels.KernelScratch()
    stream = cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()  # the arrays above were written on the default stream
    blas = Cublas(stream)
    mm = blas.matmul
    inputs = [work.X] + work.activations
    layers = len(net.weights)

    def gather():
        kernels.gather_rows(X, order, offset, work.X, y, work.targets, scratch=scratch)

    def forward():
        a = work.X
        for W, b, out in zip(net.weights[:-1], net.biases[:-1], work.activations):
            a = kernels.bias_sigmoid(mm(a, W.T, out), b, out=out)
        mm(a, net.weights[-1].T, work.logits)

    def loss():  # in place: δ^L overwrites z^L, as in the step
        kernels.bias_softmax_cross_entropy(
            work.logits, net.biases[-1], work.targets, 1.0 / batch, out=work.logits,
            bias_grad=work.grads[-1][1], loss_sum=scratch.loss_sum, scratch=scratch)

    def backward():
        delta = work.logits
        for layer in reversed(range(layers)):
            mm(delta.T, inputs[layer], work.grads[layer][0])
            if layer > 0:
                grad_a = mm(delta, net.weights[layer], work.deltas[layer - 1])
                delta = kernels.sigmoid_backward(grad_a, inputs[layer], out=grad_a,
                                                 bias_grad=work.grads[layer - 1][1],
                                                 scratch=scratch)

    def update():
        kernels.multi_sgd(table, lr, None, momentum=0.9, scratch=scratch)

    def step():
        gather()
        forward()
        loss()
        backward()
        update()

    result = {"batch": batch, "backend": "cupy", "sizes": list(sizes)}
    try:
        with stream:
            step()  # every scratch buffer grows here: nothing allocates after
            stream.synchronize()
            for name, fn in (("gather", gather), ("forward", forward), ("loss", loss),
                             ("backward", backward), ("update", update), ("step", step)):
                timing = time_events(cp, fn, budget_s=budget_s, stream=stream)
                result[f"{name}_ms"] = 1e3 * timing["median_s"]
            result["step_enqueue_ms"] = 1e3 * enqueue_time(step, stream.synchronize)
            stream.begin_capture()
            try:
                step()
            finally:
                graph = stream.end_capture()
            timing = time_events(cp, lambda: graph.launch(stream), budget_s=budget_s,
                                 stream=stream)
            result["step_graph_ms"] = 1e3 * timing["median_s"]
            result["graph_enqueue_ms"] = 1e3 * enqueue_time(lambda: graph.launch(stream),
                                                            stream.synchronize)
    finally:
        stream.synchronize()
        blas.close()
    result["phases_sum_ms"] = sum(result[f"{name}_ms"] for name in
                                  ("gather", "forward", "loss", "backward", "update"))
    return result


def profile_numpy(batch: int, sizes=(784, 800, 10), calls: int = 20) -> dict:
    """The NumPy stepper's step, in ms: the host does all of it."""
    import gpubp
    from gpubp.step import make_stepper

    rows = max(4 * batch, 4096)
    rng = np.random.default_rng(0)
    net = gpubp.MLP(sizes, backend="numpy", seed=0)
    X = net.prepare_features(rng.random((rows, sizes[0]), dtype=np.float32))
    y = net.prepare_targets(rng.integers(0, sizes[-1], rows), rows)
    stepper = make_stepper(net, gpubp.SGD(0.01, momentum=0.9), X, y, batch)
    stepper.begin_epoch(rng.permutation(rows), 0.01)
    batches = rows // batch
    stepper.step(0)
    started = time.perf_counter()
    for i in range(calls):
        stepper.step((i + 1) % batches)
    step_ms = 1e3 * (time.perf_counter() - started) / calls
    return {"batch": batch, "backend": "numpy", "sizes": list(sizes), "step_ms": step_ms,
            "step_enqueue_ms": step_ms}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cupy", choices=("cupy", "numpy"))
    p.add_argument("--batches", default="64,256,4096")
    p.add_argument("--sizes", default="784,800,10")
    p.add_argument("--out")
    args = p.parse_args(argv)
    sizes = tuple(int(n) for n in args.sizes.split(","))
    batches = [int(b) for b in args.batches.split(",")]
    device = {"name": "cpu"}
    if args.backend == "cupy":
        from gpubp.backend import get_backend

        backend = get_backend("cupy")
        device = {"name": backend.device_name}
        results = [profile_cuda(backend.xp, b, sizes) for b in batches]
    else:
        results = [profile_numpy(b, sizes) for b in batches]
    for r in results:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"date": datetime.datetime.now().isoformat(timespec="seconds"),
                       "device": device, "command": "python -m bench.step_profile "
                       f"--backend {args.backend} --batches {args.batches} --sizes {args.sizes}",
                       "profile": results}, f, indent=1)


if __name__ == "__main__":
    main()

"""Each CUDA kernel timed with CUDA events, as achieved bandwidth and against PyTorch.

    PYTHONPATH=. python -m bench.kernel_times [--copy-GBps 4255]

Bandwidth counts the bytes a kernel must move at least once: the fused softmax +
cross-entropy reads the logits and writes the gradient (8·B·C bytes in float32, labels
aside); bias_sigmoid reads z and writes a; sigmoid_backward reads g and a and writes δ.
PyTorch's ``F.cross_entropy`` forward + backward runs on the same logits and labels.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from gpubp.cuda import kernels as cuda_kernels

XENT_SHAPES = ((4096, 32768), (256, 10), (4096, 10), (4096, 1000), (4096, 32769),
               (1024, 262144))
SIGMOID_SHAPES = ((4096, 8192), (256, 1024), (65536, 1024))


def time_events(cp, fn, repeat: int = 50, warmup: int = 5) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs, each between two CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return float(np.median(times))


def xent_times(cp, rows: int, cols: int) -> dict:
    rng = cp.random.default_rng(0)
    logits = rng.standard_normal((rows, cols), dtype=cp.float32)
    labels = rng.integers(0, cols, rows, dtype=cp.int64)
    grad = cp.empty_like(logits)
    fused = time_events(cp, lambda: cuda_kernels.softmax_cross_entropy(
        logits, labels, 1.0 / rows, reduction="mean", out=grad))
    moved = 8 * rows * cols
    result = {"B": rows, "C": cols, "path": cuda_kernels.xent_path(cp.float32, cols),
              "fused_s": fused, "fused_GBps": moved / fused / 1e9}
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return result
    z = torch.as_tensor(logits, device="cuda").clone().requires_grad_(True)
    y = torch.as_tensor(labels, device="cuda")

    def torch_step():
        z.grad = None
        F.cross_entropy(z, y).backward()

    result["torch_s"] = time_events(cp, torch_step)
    result["speedup_vs_torch"] = result["torch_s"] / fused
    return result


def sigmoid_times(cp, rows: int, cols: int) -> dict:
    rng = cp.random.default_rng(0)
    z = rng.standard_normal((rows, cols), dtype=cp.float32)
    bias = rng.standard_normal(cols, dtype=cp.float32)
    g = rng.standard_normal((rows, cols), dtype=cp.float32)
    a = cp.empty_like(z)
    delta = cp.empty_like(z)
    db = cp.empty(cols, cp.float32)
    n = rows * cols
    forward = time_events(cp, lambda: cuda_kernels.bias_sigmoid(z, bias, out=a))
    backward = time_events(cp, lambda: cuda_kernels.sigmoid_backward(g, a, out=delta))
    with_bias = time_events(cp, lambda: cuda_kernels.sigmoid_backward(g, a, out=delta,
                                                                       bias_grad=db))
    return {"B": rows, "N": cols,
            "bias_sigmoid_s": forward, "bias_sigmoid_GBps": 8 * n / forward / 1e9,
            "sigmoid_backward_s": backward, "sigmoid_backward_GBps": 12 * n / backward / 1e9,
            "sigmoid_backward_dbias_s": with_bias,
            "sigmoid_backward_dbias_GBps": 12 * n / with_bias / 1e9}


def run(copy_GBps: float | None = None) -> dict:
    import cupy as cp

    report = {"softmax_xent": [xent_times(cp, *shape) for shape in XENT_SHAPES],
              "sigmoid": [sigmoid_times(cp, *shape) for shape in SIGMOID_SHAPES]}
    if copy_GBps:
        for r in report["softmax_xent"]:
            r["fraction_of_copy"] = r["fused_GBps"] / copy_GBps
        for r in report["sigmoid"]:
            for kind in ("bias_sigmoid", "sigmoid_backward", "sigmoid_backward_dbias"):
                r[f"{kind}_fraction_of_copy"] = r[f"{kind}_GBps"] / copy_GBps
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copy-GBps", type=float, default=None,
                   help="the device's measured copy bandwidth, to report fractions of it")
    print(json.dumps(run(p.parse_args(argv).copy_GBps), indent=1))


if __name__ == "__main__":
    main()

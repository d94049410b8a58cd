"""Each CUDA kernel timed with CUDA events, as achieved bandwidth and against PyTorch.

    PYTHONPATH=. python -m bench.kernel_times [--copy-GBps 4255] [--budget-s 60]

Bandwidth counts the bytes a kernel must move at least once: the fused softmax +
cross-entropy reads the logits and writes the gradient (8·B·C bytes in float32, labels
aside), and so does the output layer's bias_softmax_cross_entropy at its least (with db^L
and the loss sum; for C > 256 its column_sum launch reads the gradient again, which the
fraction then shows); bias_sigmoid reads z and writes a; sigmoid_backward reads g and a
and writes δ (12 bytes an element, with db or without). PyTorch's ``F.cross_entropy``
forward + backward, and ``aten.sigmoid_backward`` with its column sum, run on the same
inputs. Shapes come in priority order: issue 12's targets first.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

XENT_SHAPES = ((4096, 32768), (4096, 10), (256, 10), (4096, 1000), (4096, 32769),
               (1024, 262144))
SIGMOID_SHAPES = ((4096, 8192), (65536, 1024), (256, 1024))
REPEAT_BOUNDS = (10, 200)


def time_events(cp, fn, repeat: int | None = None, warmup: int = 3, budget_s: float = 0.3,
                stream=None) -> dict:
    """{median_s, min_s, repeats} of ``fn()``, each call between two CUDA events on
    ``stream`` (default: the current one). Without ``repeat``, 3 timed calls first set
    it to fill about ``budget_s``, within REPEAT_BOUNDS."""
    stream = stream if stream is not None else cp.cuda.get_current_stream()

    def timed() -> float:
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        fn()
        stop.record(stream)
        stop.synchronize()
        return cp.cuda.get_elapsed_time(start, stop) / 1e3

    for _ in range(warmup):
        fn()
    stream.synchronize()
    times = [timed() for _ in range(3)]
    if repeat is None:
        per_call = float(np.median(times))
        repeat = int(min(max(budget_s / max(per_call, 1e-7), REPEAT_BOUNDS[0]), REPEAT_BOUNDS[1]))
    times += [timed() for _ in range(max(0, repeat - 3))]
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times)),
            "repeats": len(times)}


def time_torch(torch, fn, warmup: int = 3, budget_s: float = 0.3) -> dict:
    """:func:`time_events` with PyTorch's events, on PyTorch's current stream."""
    def timed() -> float:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / 1e3

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = [timed() for _ in range(3)]
    per_call = float(np.median(times))
    repeat = int(min(max(budget_s / max(per_call, 1e-7), REPEAT_BOUNDS[0]), REPEAT_BOUNDS[1]))
    times += [timed() for _ in range(max(0, repeat - 3))]
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times)),
            "repeats": len(times)}


def xent_times(cp, rows: int, cols: int, torch=None, check: bool = False) -> dict:
    """The fused cross-entropy (mean, with its gradient) and the output layer's
    bias_softmax_cross_entropy (δ^L, db^L, the loss sum) at B=rows, C=cols; PyTorch's
    F.cross_entropy forward + backward when ``torch`` is given. ``check``: the fused
    loss against a float64 reference on the device."""
    from gpubp.cuda import kernels

    rng = cp.random.default_rng(0)
    logits = rng.standard_normal((rows, cols), dtype=cp.float32)
    labels = rng.integers(0, cols, rows, dtype=cp.int64)
    bias = rng.standard_normal(cols, dtype=cp.float32)
    grad = cp.empty_like(logits)
    loss = cp.empty((), cp.float32)
    db = cp.empty(cols, cp.float32)
    loss_sum = cp.zeros(2, cp.float64)
    scratch = kernels.KernelScratch()
    moved = 8 * rows * cols
    fused = time_events(cp, lambda: kernels.softmax_cross_entropy(
        logits, labels, 1.0 / rows, reduction="mean", out=grad, loss_out=loss, scratch=scratch))
    with_bias = time_events(cp, lambda: kernels.bias_softmax_cross_entropy(
        logits, bias, labels, 1.0 / rows, out=grad, bias_grad=db, loss_sum=loss_sum,
        scratch=scratch))
    result = {"B": rows, "C": cols, "path": kernels.xent_path(np.float32, cols),
              "fused_s": fused["median_s"], "fused_GBps": moved / fused["median_s"] / 1e9,
              "bias_s": with_bias["median_s"],
              "bias_GBps": (moved + 8 * cols) / with_bias["median_s"] / 1e9,
              "repeats": fused["repeats"]}
    if check:
        kernels.softmax_cross_entropy(logits, labels, 1.0 / rows, reduction="mean", out=grad,
                                      loss_out=loss, scratch=scratch)
        z = logits.astype(cp.float64)
        top = z.max(axis=1, keepdims=True)
        want = float((cp.log(cp.exp(z - top).sum(axis=1)) + top[:, 0]
                      - z[cp.arange(rows), labels]).mean())
        result["loss_relative_error"] = abs(float(loss) - want) / abs(want)
        del z, top
    if torch is not None:
        import torch.nn.functional as F

        cp.cuda.Device().synchronize()
        z = torch.as_tensor(logits, device="cuda").clone().requires_grad_(True)
        y = torch.as_tensor(labels, device="cuda")

        def torch_step():
            z.grad = None
            F.cross_entropy(z, y).backward()

        result["torch_s"] = time_torch(torch, torch_step)["median_s"]
        result["speedup_vs_torch"] = result["torch_s"] / result["fused_s"]
        del z, y
    return result


def sigmoid_times(cp, rows: int, cols: int, torch=None) -> dict:
    """bias_sigmoid, sigmoid_backward, and sigmoid_backward with dbias (what training
    runs) at (rows, cols); PyTorch's aten.sigmoid_backward plus its column sum beside."""
    from gpubp.cuda import kernels

    rng = cp.random.default_rng(0)
    z = rng.standard_normal((rows, cols), dtype=cp.float32)
    bias = rng.standard_normal(cols, dtype=cp.float32)
    g = rng.standard_normal((rows, cols), dtype=cp.float32)
    a = cp.empty_like(z)
    delta = cp.empty_like(z)
    db = cp.empty(cols, cp.float32)
    scratch = kernels.KernelScratch()
    n = rows * cols
    kernels.bias_sigmoid(z, bias, out=a)  # a in (0, 1), as in training
    forward = time_events(cp, lambda: kernels.bias_sigmoid(z, bias, out=delta))
    backward = time_events(cp, lambda: kernels.sigmoid_backward(g, a, out=delta))
    with_bias = time_events(cp, lambda: kernels.sigmoid_backward(
        g, a, out=delta, bias_grad=db, scratch=scratch))
    result = {"B": rows, "N": cols,
              "bias_sigmoid_s": forward["median_s"],
              "bias_sigmoid_GBps": 8 * n / forward["median_s"] / 1e9,
              "sigmoid_backward_s": backward["median_s"],
              "sigmoid_backward_GBps": 12 * n / backward["median_s"] / 1e9,
              "sigmoid_backward_dbias_s": with_bias["median_s"],
              "sigmoid_backward_dbias_GBps": 12 * n / with_bias["median_s"] / 1e9}
    if torch is not None:
        cp.cuda.Device().synchronize()
        tg, ta = torch.as_tensor(g, device="cuda"), torch.as_tensor(a, device="cuda")

        def torch_backward():
            torch.ops.aten.sigmoid_backward(tg, ta).sum(0)

        result["torch_dbias_s"] = time_torch(torch, torch_backward)["median_s"]
        result["dbias_speedup_vs_torch"] = result["torch_dbias_s"] / with_bias["median_s"]
    return result


def add_fractions(report: dict, copy_GBps: float | None) -> None:
    """Each bandwidth as a fraction of the measured copy bandwidth."""
    if not copy_GBps:
        return
    for r in report.get("softmax_xent", []):
        if "fused_GBps" in r:
            r["fraction_of_copy"] = r["fused_GBps"] / copy_GBps
            r["bias_fraction_of_copy"] = r["bias_GBps"] / copy_GBps
    for r in report.get("sigmoid", []):
        for kind in ("bias_sigmoid", "sigmoid_backward", "sigmoid_backward_dbias"):
            if f"{kind}_GBps" in r:
                r[f"{kind}_fraction_of_copy"] = r[f"{kind}_GBps"] / copy_GBps


def run(copy_GBps: float | None = None, budget_s: float | None = None, torch=None,
        report: dict | None = None, on_row=None) -> dict:
    """Every shape in priority order while ``budget_s`` lasts (None: all), into
    ``report`` (``on_row()`` after each, to save it); a failing shape is recorded and
    the rest go on."""
    import cupy as cp

    started = time.monotonic()
    report = report if report is not None else {}
    jobs = [("softmax_xent", shape, xent_times) for shape in XENT_SHAPES[:1]]
    jobs += [("sigmoid", shape, sigmoid_times) for shape in SIGMOID_SHAPES[:2]]
    jobs += [("softmax_xent", shape, xent_times) for shape in XENT_SHAPES[1:]]
    jobs += [("sigmoid", shape, sigmoid_times) for shape in SIGMOID_SHAPES[2:]]
    for key, (rows, cols), measure in jobs:
        table = report.setdefault(key, [])
        label = {"B": rows, "C" if key == "softmax_xent" else "N": cols}
        if budget_s is not None and time.monotonic() - started > budget_s:
            table.append({**label, "skipped": "budget"})
            continue
        try:
            extra = {"check": True} if (key, (rows, cols)) == ("softmax_xent", XENT_SHAPES[0]) \
                else {}
            table.append(measure(cp, rows, cols, torch=torch, **extra))
        except Exception as e:  # recorded; a CUDA fault makes the rest fail fast
            table.append({**label, "error": f"{type(e).__name__}: {e}"[:500]})
        cp.get_default_memory_pool().free_all_blocks()
        add_fractions(report, copy_GBps)
        if on_row is not None:
            on_row()
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--copy-GBps", type=float, default=None,
                   help="the device's measured copy bandwidth, to report fractions of it")
    p.add_argument("--budget-s", type=float, default=None)
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    print(json.dumps(run(args.copy_GBps, args.budget_s, torch), indent=1))


if __name__ == "__main__":
    main()

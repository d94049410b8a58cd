"""The one-shot device check: GPU tests and benchmarks in one command, JSON to $OUT.

On the device machine, from the source tree (nothing installed):

    PYTHONPATH=. python bench/gpu_check.py --data-dir .mnist --budget-s 300

It (1) records the device and versions, (2) measures the device-to-device copy
bandwidth, (3) runs the GPU tests (pytest -m gpu), (4) times each CUDA kernel against the
copy bandwidth and PyTorch (bench.kernel_times), (5) times one plain-SGD training step of
784-1024-1024-10 on gpubp-cupy (with its kernels, and without: the reference ops on
CuPy) and PyTorch eager side by side, in fp32 and, in a child process with CUPY_TF32=1,
in TF32, with the CuPy pool's bytes after each step, then, while the time budget lasts,
(6) runs bench.compare's CUDA peers (gpubp-cupy, torch eager and compiled, TF32 rows) and
(7) trains 784-800-10 on MNIST. Each section's result is written to
``$OUT/gpu_check.json`` as soon as it is known; a short table is printed last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpubp  # noqa: E402
from gpubp import ops as reference_ops  # noqa: E402
from gpubp.backend import cuda_versions, get_backend  # noqa: E402
from bench.kernel_times import run as kernel_times, time_events  # noqa: E402
from bench.peers.torch_peer import torch_mlp  # noqa: E402

STEP_BATCHES = (64, 256, 4096, 65536)
STEP_SIZES = (784, 1024, 1024, 10)
COMPARE_BATCHES = (256, 4096, 65536)  # bench.compare's CUDA peers, one epoch each of 131,072 rows
MNIST_CONFIGS = (  # (batch, lr, weight decay, epochs), in order of interest
    (64, 0.1, 2e-5, 60),  # the best of the 2026-11-28 sweep, bench.mnist_800's default
    (64, 0.1, 0.0, 50),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=".mnist", help="the MNIST .gz files")
    p.add_argument("--budget-s", type=float, default=300.0, help="stop starting work after this")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--step-times-only", action="store_true",
                   help="print the step-time rows as JSON and exit (the TF32 child)")
    args = p.parse_args()
    if args.step_times_only:
        backend = get_backend("cupy")
        print(json.dumps([step_times(backend, batch, tf32=True) for batch in STEP_BATCHES]))
        return
    deadline = time.monotonic() + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds")}

    def save():
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))

    def section(key, compute):
        """report[key] = compute(), or the error: one failing section spoils no other."""
        try:
            report[key] = compute()
        except Exception as e:  # recorded with its traceback, and the check goes on
            report[key] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        save()

    backend = get_backend("cupy")
    cp = backend.xp
    section("device", lambda: device_facts(backend))
    section("copy_bandwidth_GBps", lambda: copy_bandwidth(cp))
    section("tests", lambda: run_gpu_tests(out, timeout=min(240, remaining(deadline))))
    copy_GBps = report["copy_bandwidth_GBps"]
    section("kernels", lambda: kernel_times(copy_GBps if isinstance(copy_GBps, float) else None))
    section("step_time", lambda: [step_times(backend, batch) for batch in STEP_BATCHES])
    section("step_time_tf32", lambda: tf32_step_times(timeout=min(120, remaining(deadline))))

    if remaining(deadline) > 90:
        from bench.compare import CompareConfig, run_comparison

        section("compare_cuda", lambda: run_comparison(CompareConfig(
            device="cuda", batch_sizes=COMPARE_BATCHES, widths=(), rows=131072, repeats=2,
            data_dir=args.data_dir,
            peers=("gpubp-cupy", "torch-eager-cuda", "gpubp-cupy-tf32", "torch-eager-cuda-tf32",
                   "torch-compile-cuda"),
            budget_s=remaining(deadline) - 60, timeout_s=120), log=lambda line: None))

    from bench.mnist_800 import run

    report["mnist_800"] = []
    for batch, lr, wd, epochs in MNIST_CONFIGS:
        # ~0.45 ms a step at batch 64 on an H200, plus evaluation; skip what cannot finish.
        estimate = epochs * (60000 / batch) * 0.0006 + 10
        if remaining(deadline) < estimate:
            report["mnist_800"].append({"config": [batch, lr, wd, epochs], "skipped": "budget"})
            continue
        try:
            result = run(args.data_dir, "cupy", epochs=epochs, lr=lr, batch_size=batch,
                         weight_decay=wd, quiet=True)
        except Exception as e:
            result = {"config": [batch, lr, wd, epochs], "error": f"{type(e).__name__}: {e}"}
        report["mnist_800"].append(result)
        save()
    save()
    print_table(report)


def remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def device_facts(backend) -> dict:
    cp = backend.xp
    props = cp.cuda.runtime.getDeviceProperties(0)
    facts = {"name": backend.device_name, "multiprocessors": props["multiProcessorCount"],
             "memory_GiB": props["totalGlobalMem"] / 2**30, "numpy": np.__version__,
             "python": sys.version.split()[0], **cuda_versions()}
    try:
        import torch

        facts["torch"] = torch.__version__
    except ImportError:
        facts["torch"] = None
    try:
        facts["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        facts["nvidia_smi"] = None
    return facts


def time_loop(step, sync, steps: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the wall time per step of ``steps`` back-to-back steps,
    synchronized at both ends: throughput with launch overhead included, after warm-up."""
    for _ in range(10):
        step()
    sync()
    per_step = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        per_step.append((time.perf_counter() - started) / steps)
    return float(np.median(per_step))


def copy_bandwidth(cp, nbytes: int = 2 << 30) -> float:
    """Device-to-device copy, counting bytes read plus bytes written, in GB/s."""
    src = cp.random.random(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    seconds = time_events(cp, lambda: dst.data.copy_from_device_async(src.data, nbytes),
                          repeat=20, warmup=3)
    return 2 * nbytes / seconds / 1e9


def run_gpu_tests(out: Path, timeout: float) -> dict:
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", "-p", "no:cacheprovider",
               "-o", "addopts=-ra"]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(Path.cwd())})
        log, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        log, code = f"{e.stdout or ''}\nTIMEOUT after {timeout}s", -1
    (out / "pytest_gpu.log").write_text(log if isinstance(log, str) else log.decode())
    summary = [line for line in log.splitlines() if " passed" in line or " failed" in line]
    return {"returncode": code, "summary": summary[-1] if summary else log[-500:],
            "seconds": time.monotonic() - started}


def step_times(backend, batch: int, sizes=STEP_SIZES, tf32: bool = False) -> dict:
    """Seconds per plain-SGD step (forward, loss, backward, update): gpubp-cupy with its
    kernels, gpubp-cupy on the reference ops, torch eager; and CuPy pool bytes."""
    cp = backend.xp
    rng = np.random.default_rng(0)
    X = rng.random((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch)
    steps = 100 if batch <= 4096 else 10
    pool = cp.get_default_memory_pool()
    Xd, yd = cp.asarray(X), cp.asarray(y)
    result = {"batch": batch, "sizes": list(sizes), "tf32": tf32}

    for label, kernels in (("gpubp", True), ("gpubp_reference_ops", False)):
        pool.free_all_blocks()
        seconds, used, held = gpubp_step_time(backend, sizes, Xd, yd, steps, kernels)
        result[f"{label}_s"], result[f"{label}_samples_per_s"] = seconds, batch / seconds
        if kernels:
            result["pool_used_bytes_after_steps_1_to_5"] = used
            result["pool_used_constant_after_step_2"] = len(set(used[1:])) == 1
            result["pool_total_bytes_after_steps"] = held
    pool.free_all_blocks()
    try:
        result.update(torch_step_time(sizes, X, y, steps, tf32))
    except ImportError:
        result["torch_s"] = None
        return result
    result["gpubp_over_torch_speed"] = result["torch_s"] / result["gpubp_s"]
    return result


def gpubp_step_time(backend, sizes, X, y, steps, kernels: bool):
    """(seconds per step, CuPy pool used bytes after each of the first 5 steps, bytes the
    pool holds after the timed steps: it keeps every block it ever reserved, so this is its
    peak reservation since the caller's ``free_all_blocks``). ``kernels`` False: the
    reference ops on CuPy, as with $GPUBP_CUDA_KERNELS=0."""
    net = gpubp.MLP(sizes, backend=backend, seed=0)
    if not kernels:
        net._ops = reference_ops
    opt = gpubp.SGD(0.01)
    params = net.parameters()
    sync = backend.synchronize
    pool = backend.xp.get_default_memory_pool()

    def step():
        loss, grads = net.loss_and_grads_prepared(X, y)
        opt.step(params, [g for pair in grads for g in pair])

    used = []
    for _ in range(5):
        step()
        sync()
        used.append(pool.used_bytes())
    seconds = time_loop(step, sync, steps)
    return seconds, used, pool.total_bytes()


def torch_step_time(sizes, X, y, steps, tf32: bool) -> dict:
    import torch
    import torch.nn.functional as F

    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    dev = torch.device("cuda")
    model = torch_mlp(sizes).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    Xt, yt = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(Xt), yt).backward()
        opt.step()

    torch.cuda.reset_peak_memory_stats()
    seconds = time_loop(step, torch.cuda.synchronize, steps)
    return {"torch_s": seconds, "torch_samples_per_s": X.shape[0] / seconds,
            "torch_max_memory_allocated": torch.cuda.max_memory_allocated()}


def tf32_step_times(timeout: float) -> list | dict:
    """:func:`step_times` with TF32 on both sides, in a child with CUPY_TF32=1 (which CuPy
    reads when it loads)."""
    try:
        done = subprocess.run([sys.executable, __file__, "--step-times-only"],
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "CUPY_TF32": "1"})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(report: dict) -> None:
    """The short table, section by section; a section that failed prints its error."""
    for part in (_print_device, _print_kernels, _print_steps, _print_mnist):
        try:
            part(report)
        except (KeyError, TypeError, ValueError) as e:
            print(f"{part.__name__[7:]}: not available ({type(e).__name__}: {e})")


def _print_device(report: dict) -> None:
    d = report["device"]
    print(f"\n{d['name']}  cupy {d['cupy']}  CUDA {d['cuda_runtime']} (driver {d['cuda_driver']})"
          f"  torch {d['torch']}")
    print(f"copy bandwidth (read+write): {report['copy_bandwidth_GBps']:.0f} GB/s")
    print(f"GPU tests: {report['tests']['summary']} (rc {report['tests']['returncode']})")


def _print_kernels(report: dict) -> None:
    kernels = report["kernels"]
    if "error" in kernels:
        raise ValueError(kernels["error"])
    for r in kernels["softmax_xent"]:
        torch_s = f"{r['speedup_vs_torch']:.2f}x torch" if "speedup_vs_torch" in r else ""
        print(f"softmax_xent B={r['B']:<5} C={r['C']:<6} {r['path']:<5} {1e6 * r['fused_s']:8.1f} us"
              f" {r['fused_GBps']:7.0f} GB/s {100 * r.get('fraction_of_copy', 0):5.1f}% of copy"
              f"  {torch_s}")
    for r in kernels["sigmoid"]:
        print(f"sigmoid B={r['B']:<5} N={r['N']:<5} fwd {r['bias_sigmoid_GBps']:6.0f} GB/s "
              f"bwd {r['sigmoid_backward_GBps']:6.0f} GB/s "
              f"({100 * r.get('sigmoid_backward_fraction_of_copy', 0):.1f}% of copy), "
              f"bwd+db {r['sigmoid_backward_dbias_GBps']:6.0f} GB/s")


def _print_steps(report: dict) -> None:
    for key in ("step_time", "step_time_tf32"):
        rows = report.get(key)
        if not isinstance(rows, list):
            print(f"{key}: {rows}")
            continue
        print(f"{key}: {'batch':>7} {'gpubp ms':>9} {'ref-ops ms':>10} {'torch ms':>9} "
              f"{'gpubp/torch':>11} {'pool steady':>11}")
        for r in rows:
            torch_ms = f"{1e3 * r['torch_s']:.3f}" if r.get("torch_s") else "-"
            ratio = f"{r['gpubp_over_torch_speed']:.2f}x" if r.get("torch_s") else "-"
            print(f"{'':>{len(key) + 1}} {r['batch']:>7} {1e3 * r['gpubp_s']:>9.3f} "
                  f"{1e3 * r['gpubp_reference_ops_s']:>10.3f} {torch_ms:>9} {ratio:>11} "
                  f"{str(r['pool_used_constant_after_step_2']):>11}")


def _print_mnist(report: dict) -> None:
    print(f"{'mnist config (batch, lr, wd, epochs)':<38} {'best err':>8} {'final':>7} "
          f"{'reach 1.6%':>10} {'train s':>8}")
    for r in report.get("mnist_800", []):
        if "skipped" in r or "error" in r:
            print(f"{str(r['config']):<38} {r.get('skipped') or r.get('error')}")
            continue
        c = r["config"]
        print(f"{str((c['batch_size'], c['lr'], c['weight_decay'], c['epochs'])):<38} "
              f"{100 * r['best_test_error']:>7.2f}% {100 * r['final_test_error']:>6.2f}% "
              f"{str(r['first_epoch_at_reference']):>10} {r['train_seconds_total']:>8.1f}")


if __name__ == "__main__":
    main()

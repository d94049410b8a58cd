"""The one-shot device check: GPU tests and benchmarks in one command, JSON to $OUT.

On the device machine, from the source tree (nothing installed):

    PYTHONPATH=. python bench/gpu_check.py --data-dir .mnist --budget-s 300

It (1) records the device and versions, (2) measures the device-to-device copy
bandwidth, (3) runs the GPU tests (pytest -m gpu), (4) times one training step of
784-800-10 on gpubp-cupy and PyTorch eager side by side at several batch sizes, and
(5) trains 784-800-10 on MNIST to compare with the 1.6% reference, for as many of the
listed configurations as the time budget allows. Each section's result is written to
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpubp  # noqa: E402
from gpubp.backend import cuda_versions, get_backend  # noqa: E402

STEP_BATCHES = (64, 256, 4096, 65536)
MNIST_CONFIGS = (  # (batch, lr, weight decay, epochs), in order of interest
    (64, 0.1, 2e-5, 60),  # the best of the 2026-11-28 sweep, bench.mnist_800's default
    (64, 0.1, 0.0, 50),
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=".mnist", help="the MNIST .gz files")
    p.add_argument("--budget-s", type=float, default=300.0, help="stop starting work after this")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    deadline = time.monotonic() + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds")}

    def save():
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))

    backend = get_backend("cupy")
    cp = backend.xp
    report["device"] = device_facts(backend)
    save()

    report["copy_bandwidth_GBps"] = copy_bandwidth(cp)
    save()

    report["tests"] = run_gpu_tests(out, timeout=min(240, remaining(deadline)))
    save()

    report["step_time"] = [step_times(backend, batch) for batch in STEP_BATCHES]
    save()

    from bench.mnist_800 import run

    report["mnist_800"] = []
    for batch, lr, wd, epochs in MNIST_CONFIGS:
        # ~0.45 ms a step at batch 64 on an H200, plus evaluation; skip what cannot finish.
        estimate = epochs * (60000 / batch) * 0.0006 + 10
        if remaining(deadline) < estimate:
            report["mnist_800"].append({"config": [batch, lr, wd, epochs], "skipped": "budget"})
            continue
        result = run(args.data_dir, "cupy", epochs=epochs, lr=lr, batch_size=batch,
                     weight_decay=wd, quiet=True)
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


def time_events(cp, fn, repeat: int, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs, timed with CUDA events."""
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
    seconds = time_events(cp, lambda: dst.data.copy_from_device_async(src.data, nbytes), 20)
    del src, dst
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


def step_times(backend, batch: int, sizes=(784, 800, 10)) -> dict:
    """Seconds per SGD step (forward, loss, backward, update), gpubp-cupy vs torch eager."""
    cp = backend.xp
    rng = np.random.default_rng(0)
    X = rng.random((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch)
    steps = 200 if batch <= 4096 else 20
    sync = cp.cuda.get_current_stream().synchronize

    net = gpubp.MLP(sizes, backend=backend, seed=0)
    opt = gpubp.SGD(0.01, momentum=0.9)
    Xd, yd = cp.asarray(X), cp.asarray(y)
    params = net.parameters()

    def gpubp_step():
        loss, grads = net.loss_and_grads_prepared(Xd, yd)
        opt.step(params, [g for pair in grads for g in pair])

    result = {"batch": batch, "gpubp_s": time_loop(gpubp_step, sync, steps)}
    result["gpubp_samples_per_s"] = batch / result["gpubp_s"]
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        result["torch_s"] = None
        return result
    dev = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(sizes[0], sizes[1]), torch.nn.Sigmoid(),
                                torch.nn.Linear(sizes[1], sizes[2])).to(dev)
    topt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    Xt, yt = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)

    def torch_step():
        topt.zero_grad(set_to_none=True)
        F.cross_entropy(model(Xt), yt).backward()
        topt.step()

    result["torch_s"] = time_loop(torch_step, torch.cuda.synchronize, steps)
    result["torch_samples_per_s"] = batch / result["torch_s"]
    result["gpubp_over_torch_speed"] = result["torch_s"] / result["gpubp_s"]
    return result


def print_table(report: dict) -> None:
    d = report["device"]
    print(f"\n{d['name']}  cupy {d['cupy']}  CUDA {d['cuda_runtime']} (driver {d['cuda_driver']})"
          f"  torch {d['torch']}")
    print(f"copy bandwidth (read+write): {report['copy_bandwidth_GBps']:.0f} GB/s")
    print(f"GPU tests: {report['tests']['summary']} (rc {report['tests']['returncode']})")
    print(f"{'batch':>7} {'gpubp ms':>9} {'torch ms':>9} {'gpubp/torch speed':>18}")
    for r in report["step_time"]:
        torch_ms = f"{1e3 * r['torch_s']:.3f}" if r.get("torch_s") else "-"
        ratio = f"{r['gpubp_over_torch_speed']:.2f}x" if r.get("torch_s") else "-"
        print(f"{r['batch']:>7} {1e3 * r['gpubp_s']:>9.3f} {torch_ms:>9} {ratio:>18}")
    print(f"{'mnist config (batch, lr, wd, epochs)':<38} {'best err':>8} {'final':>7} "
          f"{'reach 1.6%':>10} {'train s':>8}")
    for r in report["mnist_800"]:
        if "skipped" in r:
            print(f"{str(r['config']):<38} skipped ({r['skipped']})")
            continue
        c = r["config"]
        print(f"{str((c['batch_size'], c['lr'], c['weight_decay'], c['epochs'])):<38} "
              f"{100 * r['best_test_error']:>7.2f}% {100 * r['final_test_error']:>6.2f}% "
              f"{str(r['first_epoch_at_reference']):>10} {r['train_seconds_total']:>8.1f}")


if __name__ == "__main__":
    main()

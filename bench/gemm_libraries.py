"""The measurements behind gpubp.blas's choices (docs/cpu.md), in one process, A/B interleaved.

    python -m bench.gemm_libraries                 # all parts, ~5 min on 2 busy cores
    python -m bench.gemm_libraries --parts step,threads --rounds 9

Parts (each a key of the JSON written to DIR/<date>-<tag>-gemm-libraries.json):

- ``step``: the fused SGD step's GEMMs (784-1024-1024-10 and the 8×8 digits' 64-128-10)
  at each batch size, one pass per library per round, as gpubp.blas_choice times them;
  each library's time as the median over rounds of its ratio to NumPy's in that round.
- ``mixing``: the same step with two libraries alternating GEMM by GEMM, against each
  library alone: why one library runs a whole step.
- ``threads``: each library's products on one thread against all threads, over work
  sizes (m·n·k) from 2^12 to 2^27: where gpubp.blas.SINGLE_THREAD_WORK lies.
- ``vml``: σ(z + b) on MKL's VML against NumPy's, by size.
- ``bf16``: GFLOP/s of a 256×1024 @ 1024×1024 product: gpubp's bf16 (conversions
  included), each fp32 library, and PyTorch fp32 and bf16 where torch is installed.

The machine may be shared: every comparison is paired within a round and summarized by
the median of the per-round ratios; the JSON keeps every round.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from bench.machine import cpu_model
from gpubp import blas, blas_choice, blas_libraries, onednn

REPO = Path(__file__).resolve().parents[1]
NETWORKS = {"mnist-1024": (784, 1024, 1024, 10), "digits": (64, 128, 10)}


def step_workload(sizes, batch) -> list:
    """The shape classes of gpubp's fused SGD step, as gpubp.blas sees them (a column-major
    out goes as its transpose), in the step's order."""
    f32 = np.float32
    W = [np.empty((o, i), f32) for i, o in zip(sizes, sizes[1:])]
    inputs = [np.empty((batch, sizes[0]), f32)] + [np.empty((batch, n), f32, order="F")
                                                     for n in sizes[1:-1]]
    deltas = [np.empty((batch, n), f32, order="F") for n in sizes[1:-1]] + [
        np.empty((batch, sizes[-1]), f32)]
    calls = [(inputs[l], W[l].T, deltas[l], False) for l in range(len(W))]  # forward
    for l in reversed(range(len(W))):
        if l > 0:
            calls.append((deltas[l], W[l], deltas[l - 1], False))
        calls.append((deltas[l].T, inputs[l], W[l], True))
    classes = []
    for a, b, out, accumulate in calls:
        if not out.flags.c_contiguous:
            a, b, out = b.T, a.T, out.T
        classes.append(blas_libraries.signature(blas_libraries.plan(a, b, out), accumulate))
    return [c for c in classes if np.prod([int(d) for d in c.split()[1].split("x")])
            >= blas.SINGLE_THREAD_WORK] or classes


def ratios(times: dict, base: str) -> dict:
    return {n: float(np.median(np.asarray(t) / np.asarray(times[base]))) for n, t in times.items()}


def part_step(libraries, batch_sizes, rounds) -> list:
    out = []
    points = [("mnist-1024", b) for b in batch_sizes] + [("digits", 16)]
    for network, batch in points:
        workload = step_workload(NETWORKS[network], batch)
        saved = blas_choice.MIN_ROUNDS, blas_choice.MAX_ROUNDS, blas_choice.BUDGET_S
        blas_choice.MIN_ROUNDS = blas_choice.MAX_ROUNDS = rounds
        try:
            times = blas_choice.measure_gemms(libraries, workload)
        finally:
            blas_choice.MIN_ROUNDS, blas_choice.MAX_ROUNDS, blas_choice.BUDGET_S = saved
        rel = ratios(times, "numpy")
        out.append({"network": network, "batch": batch, "workload": workload,
                    "seconds": times, "relative_to_numpy": rel,
                    "fastest": min(rel, key=rel.get)})
        print(f"step {network} B={batch}: " + ", ".join(
            f"{n} {r:.2f}× ({np.median(times[n]) * 1e3:.2f} ms)" for n, r in rel.items()),
            flush=True)
    return out


def part_mixing(libraries, batch_sizes, rounds) -> list:
    out = []
    for batch in batch_sizes:
        operands = [(blas_libraries.plan(a, b, o), a, b, o, al, be) for a, b, o, al, be
                    in blas_choice.scratch_operands(step_workload(NETWORKS["mnist-1024"], batch))]
        libs = {n: blas.library(n) for n in libraries}
        patterns = {n: [n] for n in libraries}
        patterns.update({f"{x}/{y}": [x, y] for i, x in enumerate(libraries)
                         for y in libraries[i + 1:]})
        times = {p: [] for p in patterns}

        def one_pass(names):
            for i, (plan, a, b, o, al, be) in enumerate(operands):
                libs[names[i % len(names)]].gemm(plan, a, b, o, al, be, False)

        for r in range(rounds):
            for p, names in patterns.items():
                one_pass(names)
                t0 = time.perf_counter()
                one_pass(names)
                times[p].append(time.perf_counter() - t0)
        best_alone = min(libraries, key=lambda n: np.median(times[n]))
        rel = ratios(times, best_alone)
        out.append({"batch": batch, "seconds": times, "relative_to_best_single": rel})
        print(f"mixing B={batch}: " + ", ".join(f"{p} {r:.2f}×" for p, r in rel.items()),
              flush=True)
    return out


def _set_threads(name, n):
    lib = blas.library(name)
    if name == "mkl":
        lib.lib.MKL_Set_Num_Threads(n)
    elif name == "onednn":
        onednn.set_threads(n)
    else:  # NumPy's OpenBLAS
        handle, suffix = lib.lib
        getattr(handle, f"scipy_openblas_set_num_threads{suffix}")(n)


def part_threads(libraries, rounds) -> list:
    """1 thread against all, for square-ish and step-like products of growing work."""
    threads = os.cpu_count() or 1
    shapes = [(16, 16, 16), (10, 16, 128), (128, 16, 64), (32, 32, 64), (64, 64, 64),
              (10, 256, 128), (128, 64, 64), (96, 96, 96), (128, 128, 64), (128, 128, 128),
              (256, 64, 128), (160, 160, 160), (256, 128, 128), (256, 256, 128),
              (1024, 16, 784), (256, 256, 256), (1024, 64, 784), (512, 512, 512)]
    rng = np.random.default_rng(0)
    out = []
    for m, n, k in shapes:
        a, b = rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32)
        c = np.empty((m, n), np.float32)
        plan = blas_libraries.plan(a, b, c)
        repeats = max(3, int(4e6 / (m * n * k)))
        row = {"m": m, "n": n, "k": k, "work": m * n * k}
        for name in libraries:
            lib = blas.library(name)
            t = {1: [], threads: []}
            for r in range(rounds):
                for count in ((1, threads) if r % 2 == 0 else (threads, 1)):
                    _set_threads(name, count)
                    lib.gemm(plan, a, b, c, 1.0, 0.0, False)
                    t0 = time.perf_counter()
                    for _ in range(repeats):
                        lib.gemm(plan, a, b, c, 1.0, 0.0, False)
                    t[count].append((time.perf_counter() - t0) / repeats)
            _set_threads(name, threads)
            row[name] = {"one_thread_s": float(np.median(t[1])),
                         "all_over_one": float(np.median(np.asarray(t[threads]) /
                                                         np.asarray(t[1])))}
        out.append(row)
        print(f"threads {m}x{n}x{k} ({m * n * k:,}): " + ", ".join(
            f"{n_} all/1 {row[n_]['all_over_one']:.2f}" for n_ in libraries), flush=True)
    return out


def part_vml(rounds) -> list:
    out = []
    for size in (2**12, 2**14, 2**16, 2**18, 2**20, 2**22):
        saved = blas_choice.MAX_ROUNDS
        blas_choice.MAX_ROUNDS = rounds
        try:
            times = blas_choice.measure_vector_math(size)
        finally:
            blas_choice.MAX_ROUNDS = saved
        rel = ratios(times, "numpy")["vml"]
        out.append({"size": size, "seconds": times, "vml_over_numpy": rel})
        print(f"vml {size}: VML {rel:.2f}× NumPy's time", flush=True)
    return out


def part_bf16(libraries, rounds) -> dict:
    m, k, n = 256, 1024, 1024
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    W = rng.standard_normal((n, k), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    candidates = {}
    for name in libraries:
        candidates[f"fp32 {name}"] = (lambda lib: lambda: lib.gemm(
            blas_libraries.plan(a, W.T, out), a, W.T, out, 1.0, 0.0, False))(blas.library(name))
    if onednn.bf16_unavailable() is None:
        mm = blas.bf16_matmul()
        candidates["bf16 gpubp (oneDNN matmul, conversions included)"] = lambda: mm(a, W.T, out)
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        ta, tW = torch.from_numpy(a), torch.from_numpy(W)
        ta16, tW16 = ta.bfloat16(), tW.bfloat16()
        candidates["fp32 torch"] = lambda: torch.mm(ta, tW.T)
        candidates["bf16 torch (inputs already bf16)"] = lambda: torch.mm(ta16, tW16.T)
    except ImportError:
        pass
    times = {c: [] for c in candidates}
    for r in range(rounds):
        for name, fn in candidates.items():
            fn()
            repeats = 5
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[name].append((time.perf_counter() - t0) / repeats)
    flops = 2 * m * k * n
    result = {"shape": [m, k, n],
              "gflops": {c: flops / float(np.median(t)) / 1e9 for c, t in times.items()},
              "seconds": times}
    for c, g in result["gflops"].items():
        print(f"bf16 part: {c}: {g:.0f} GFLOP/s", flush=True)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="step,mixing,threads,vml,bf16")
    p.add_argument("--batch-sizes", default="64,256,1024,4096,8192")
    p.add_argument("--mixing-batch-sizes", default="256,4096")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default=str(REPO / "bench" / "results"))
    p.add_argument("--tag", default="cpu")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    libraries = [n for n in blas.LIBRARIES if n in blas.installed()]
    cpu = cpu_model()
    started = time.time()
    report = {"benchmark": "gpubp.blas: GEMM libraries on the step's shapes",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": cpu, "cpus": os.cpu_count(), "load_before": os.getloadavg(),
                          "libraries": blas.installed(), "python": platform.python_version()},
              "rounds": args.rounds, "single_thread_work": blas.SINGLE_THREAD_WORK}
    batches = [int(b) for b in args.batch_sizes.split(",")]
    if "step" in parts:
        report["step"] = part_step(libraries, batches, args.rounds)
    if "mixing" in parts:
        report["mixing"] = part_mixing(libraries, [int(b) for b in
                                                   args.mixing_batch_sizes.split(",")],
                                       args.rounds)
    if "threads" in parts:
        report["threads"] = part_threads(libraries, args.rounds)
    if "vml" in parts and "mkl" in libraries:
        report["vml"] = part_vml(args.rounds)
    if "bf16" in parts:
        report["bf16"] = part_bf16(libraries, args.rounds)
    report["machine"]["load_after"] = os.getloadavg()
    report["wall_s"] = time.time() - started
    path = Path(args.out) / f"{report['date'][:10]}-{args.tag}-gemm-libraries.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()

"""Section step: one training step (gather → forward → loss → backward → SGD with
momentum) for 784-800-10 and 784-1024-1024-10 at B ∈ {64, 256, 4096, 65536}, five ways:

    gpubp_graph    gpubp's CudaStepper replaying its captured CUDA graph
    gpubp_eager    the same stepper with cuda_graphs=False
    torch_eager    PyTorch: index_select the batch, forward, F.cross_entropy, backward, SGD
    torch_graph    the fair peer: that whole step (the gather from a static index buffer
                   included, the optimizer step too) captured in one torch.cuda.CUDAGraph
                   after warm-up on a side stream; a step copies the batch's indices into
                   the static buffer and replays
    torch_compile  torch.compile(mode="reduce-overhead") of gather + forward + loss (its
                   forward and backward graphs replayed as CUDA graphs), SGD eager

Each is the median over 5 repeats of ms per step, timed with CUDA events on the stream
the steps run on; the steps per repeat come from 3 timed steps first, to fit the time
this job is given. fp32 first; then a separately labelled TF32 run of gpubp (graph) and
PyTorch (eager, graph); then where the time goes (bench.step_profile); torch.compile
last, as its compile time is the least predictable. gpubp's runs record the CuPy pool's
used bytes after steps 1-5 and whether graphs stayed on; the eager run counts its kernel
launches (gpubp.cuda.kernels.record_launches) and GEMMs. The data: uniform random
features and labels on the device, N = max(4B, 65,536) rows, a random order.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import time
import warnings

from bench.gpu_sections import clamp, error_entry, optional_torch, planned_steps, require_cupy

NETS = ((784, 800, 10), (784, 1024, 1024, 10))
BATCHES = (256, 4096, 64, 65536)  # the targets' batch sizes first
FP32_WAYS = ("gpubp_graph", "gpubp_eager", "torch_eager", "torch_graph")
TF32_WAYS = ("gpubp_graph", "torch_eager", "torch_graph")
WAYS = FP32_WAYS + ("torch_compile",)
LR, MOMENTUM = 0.01, 0.9
REPEATS, PROBE_STEPS, WARMUP_STEPS = 5, 3, 5
MIN_ROWS = 65536
PROFILE_BATCHES = (256, 4096)


def net_name(sizes) -> str:
    return "-".join(map(str, sizes))


def plan_jobs() -> list[tuple]:
    """(sizes, batch, precision, way) in the order they run: what the targets need
    first, then the rest of fp32, then TF32, then the profiles ("profile"), then
    torch.compile."""
    small, big = NETS
    fp32 = [(small, b) for b in BATCHES] + [(big, b) for b in BATCHES]
    jobs = [(s, b, "fp32", w) for s, b in fp32 for w in FP32_WAYS]
    tf32_order = [(s, b) for b in (4096, 65536, 256, 64) for s in (small, big)]
    jobs += [(s, b, "tf32", w) for s, b in tf32_order for w in TF32_WAYS]
    jobs += [(s, b, "fp32", "profile") for b in PROFILE_BATCHES for s in (small,)]
    jobs += [(s, b, "fp32", "torch_compile") for s, b in fp32]
    return jobs


def job_allotment(left_s: float, jobs_left: int) -> float:
    """Seconds of timed steps for one job: a third of an even share of what is left (the
    rest goes to building, warm-up, capture, and torch.compile's compiling at the end),
    between 0.15 and 1 s."""
    return clamp(0.35 * left_s / max(jobs_left, 1), 0.15, 1.0)


def speedups(row: dict) -> dict:
    """Each peer's ms over gpubp-graph's (and gpubp-eager's): above 1, gpubp is faster."""
    def ms(way):
        cell = row.get(way)
        return cell.get("ms") if isinstance(cell, dict) else None

    out = {}
    for mine in ("gpubp_graph", "gpubp_eager"):
        for peer in ("gpubp_eager", "torch_eager", "torch_graph", "torch_compile"):
            if mine != peer and ms(mine) and ms(peer):
                out[f"{mine}_vs_{peer}"] = ms(peer) / ms(mine)
    return out


def find_row(rows: list, sizes, batch: int, precision: str) -> dict:
    for row in rows:
        if row["sizes"] == list(sizes) and row["batch"] == batch and \
                row["precision"] == precision:
            return row
    row = {"net": net_name(sizes), "sizes": list(sizes), "batch": batch,
           "precision": precision}
    rows.append(row)
    rows.sort(key=lambda r: (r["precision"] != "fp32", r["precision"], len(r["sizes"]),
                             r["batch"]))
    return row


def measure(step, timer, allot_s: float, repeats: int = REPEATS) -> dict:
    """Median ms per step over ``repeats`` runs of back-to-back steps (after the caller's
    warm-up), the step count set from PROBE_STEPS timed steps to fill ``allot_s``."""
    start = timer.start()
    for _ in range(PROBE_STEPS):
        step()
    probe = timer.stop(start) / PROBE_STEPS
    n = planned_steps(probe, allot_s, repeats)
    per_step = []
    for _ in range(repeats):
        start = timer.start()
        for _ in range(n):
            step()
        per_step.append(timer.stop(start) / n)
    per_step.sort()
    return {"ms": 1e3 * per_step[len(per_step) // 2], "min_ms": 1e3 * per_step[0],
            "max_ms": 1e3 * per_step[-1], "steps_per_repeat": n, "repeats": repeats,
            "probe_ms": 1e3 * probe}


class CupyTimer:
    """CUDA events recorded on ``stream``; stop() waits and returns seconds."""

    def __init__(self, cp, stream):
        self.cp, self.stream = cp, stream

    def start(self):
        event = self.cp.cuda.Event()
        event.record(self.stream)
        return event

    def stop(self, start) -> float:
        event = self.cp.cuda.Event()
        event.record(self.stream)
        event.synchronize()
        return self.cp.cuda.get_elapsed_time(start, event) / 1e3


class TorchTimer:
    """CUDA events on PyTorch's current stream."""

    def __init__(self, torch):
        self.torch = torch

    def start(self):
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def stop(self, start) -> float:
        event = self.torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        return start.elapsed_time(event) / 1e3


class Data:
    """Random features (uniform in [0, 1)) and labels on the device, shared by every job
    (zero-copy to PyTorch through DLPack): N = max(4B, MIN_ROWS) rows for batch B."""

    def __init__(self, cp, n_in: int, classes: int, rows: int):
        rng = cp.random.default_rng(0)
        self.cp = cp
        self.X = rng.random((rows, n_in), dtype=cp.float32)
        self.y = rng.integers(0, classes, rows, dtype=cp.int64)
        cp.cuda.Device().synchronize()
        self._torch = None

    @staticmethod
    def rows_for(batch: int) -> int:
        return max(4 * batch, MIN_ROWS)

    def cupy(self, batch: int):
        n = self.rows_for(batch)
        return self.X[:n], self.y[:n]

    def torch(self, torch, batch: int):
        if self._torch is None:
            self._torch = (torch.from_dlpack(self.X), torch.from_dlpack(self.y))
        n = self.rows_for(batch)
        return self._torch[0][:n], self._torch[1][:n]


# ---- gpubp ---------------------------------------------------------------------------------

def gpubp_way(cp, data: Data, sizes, batch: int, graphs: bool, precision: str,
              allot_s: float) -> dict:
    import numpy as np

    import gpubp
    from gpubp.cuda import kernels
    from gpubp.step import make_stepper

    built = time.perf_counter()
    X, y = data.cupy(batch)
    rows = X.shape[0]
    net = gpubp.MLP(sizes, backend="cupy", seed=0)
    optimizer = gpubp.SGD(LR, momentum=MOMENTUM)
    pool = cp.get_default_memory_pool()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stepper = make_stepper(net, optimizer, X, y, batch, cuda_graphs=graphs,
                               precision=precision)
        try:
            stepper.begin_epoch(np.random.default_rng(0).permutation(rows), LR)
            batches = rows // batch
            counter = itertools.count()

            def step():
                stepper.step(next(counter) % batches)

            used = []
            for _ in range(WARMUP_STEPS):  # the first captures (and checks) the graph
                step()
                stepper.stream.synchronize()
                used.append(int(pool.used_bytes()))
            out = {"pool_used_bytes_steps_1_to_5": used,
                   "pool_constant_from_step_2": len(set(used[1:])) == 1,
                   "setup_s": time.perf_counter() - built}
            out.update(count_launches(kernels, stepper, step, len(sizes) - 1))
            out.update(measure(step, CupyTimer(cp, stepper.stream), allot_s))
            epoch_loss = stepper.finish_epoch()
            out["loss_finite"] = bool(np.isfinite(epoch_loss))
            out["graphs_active"] = bool(graphs and stepper.use_graphs)
        finally:
            with contextlib.suppress(Exception):  # after a fault: the first error stands
                stepper.stream.synchronize()
                stepper.cublas.close()  # its handle and workspace; no replays after this
    out["warnings"] = [str(w.message)[:300] for w in caught]
    return out


def count_launches(kernels, stepper, step, layers: int) -> dict:
    """One step's kernel launches (through gpubp's wrappers) and GEMMs (through the
    stepper's cuBLAS handle); a replayed graph makes none of either."""
    gemms = []
    original = stepper.cublas.matmul

    def counting(*args, **kwargs):
        gemms.append(1)
        return original(*args, **kwargs)

    stepper.cublas.matmul = counting
    try:
        with kernels.record_launches() as launches:
            step()
    finally:
        del stepper.cublas.matmul  # back to the class's method
    stepper.stream.synchronize()
    if stepper.use_graphs:
        return {"wrapper_launches_per_replayed_step": len(launches),
                "gemm_calls_per_replayed_step": len(gemms)}
    return {"kernel_launches_per_step": len(launches), "gemms_per_step": len(gemms),
            "expected_kernel_launches": 2 * layers + 1, "expected_gemms": 3 * layers - 1,
            "launches": sorted({launch.name for launch in launches})}


# ---- PyTorch -------------------------------------------------------------------------------

def torch_way(torch, data: Data, sizes, batch: int, way: str, tf32: bool,
              allot_s: float) -> dict:
    import torch.nn.functional as F

    from bench.peers.torch_peer import torch_mlp

    gc.collect()  # the last job's graphs and pools, before this one allocates
    torch.cuda.empty_cache()
    built = time.perf_counter()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")  # TF32 or fp32 GEMMs
    torch.manual_seed(0)
    X, y = data.torch(torch, batch)
    rows = X.shape[0]
    model = torch_mlp(sizes).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    order = torch.randperm(rows, device="cuda")
    index = [order[b * batch:(b + 1) * batch] for b in range(rows // batch)]
    counter = itertools.count()
    out = {}

    def loss_of(rows_index):
        return F.cross_entropy(model(X.index_select(0, rows_index)),
                               y.index_select(0, rows_index))

    if way == "torch_eager":
        def step():
            optimizer.zero_grad(set_to_none=True)
            loss_of(index[next(counter) % len(index)]).backward()
            optimizer.step()

        for _ in range(WARMUP_STEPS):
            step()
    elif way == "torch_graph":
        static_index = index[0].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: the momentum buffers, cuBLAS's handles
            for _ in range(3):
                optimizer.zero_grad(set_to_none=True)
                loss_of(static_index).backward()
                optimizer.step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        optimizer.zero_grad(set_to_none=True)  # backward allocates .grad from the pool
        with torch.cuda.graph(graph):
            static_loss = loss_of(static_index)
            static_loss.backward()
            optimizer.step()

        def step():
            static_index.copy_(index[next(counter) % len(index)], non_blocking=True)
            graph.replay()

        for _ in range(WARMUP_STEPS):
            step()
        out["replayed_loss_finite"] = bool(torch.isfinite(static_loss).item())
    elif way == "torch_compile":
        torch._dynamo.reset()  # a fresh cache: each job recompiles for its own model
        try:  # the data stay where they are: no copy into the graph's inputs each step
            torch._dynamo.mark_static_address(X)
            torch._dynamo.mark_static_address(y)
            out["data_static"] = True
        except Exception as e:  # an older or newer torch: noted, and timed as it is
            out["data_static"] = f"mark_static_address failed: {type(e).__name__}: {e}"
        compiled = torch.compile(loss_of, mode="reduce-overhead")

        def step():
            torch.compiler.cudagraph_mark_step_begin()
            optimizer.zero_grad(set_to_none=True)
            compiled(index[next(counter) % len(index)]).backward()
            optimizer.step()

        first = time.perf_counter()
        step()
        torch.cuda.synchronize()
        out["compile_s"] = time.perf_counter() - first
        for _ in range(WARMUP_STEPS):  # cudagraph trees record after warm-up runs
            step()
    else:
        raise ValueError(f"way: {way!r}")
    torch.cuda.synchronize()
    out["setup_s"] = time.perf_counter() - built
    out.update(measure(step, TorchTimer(torch), allot_s))
    out["peak_bytes"] = int(torch.cuda.max_memory_allocated())
    out["matmul_precision"] = torch.get_float32_matmul_precision()
    torch.cuda.reset_peak_memory_stats()
    return out


# ---- the section -----------------------------------------------------------------------

def run(ctx) -> None:
    cp = require_cupy()
    torch, torch_why = optional_torch()
    result = ctx.result
    result.update(config={"nets": [net_name(s) for s in NETS], "batches": sorted(BATCHES),
                          "optimizer": f"SGD lr={LR} momentum={MOMENTUM}",
                          "repeats": REPEATS, "rows": f"max(4B, {MIN_ROWS})",
                          "timing": "median ms/step, CUDA events on the steps' stream"},
                  rows=[], profile=[], torch=torch.__version__ if torch else None)
    if torch is None:
        result["torch_skipped"] = torch_why
    data = Data(cp, NETS[0][0], NETS[0][-1], Data.rows_for(max(BATCHES)))
    jobs = plan_jobs()
    compile_s = None  # the first torch.compile's time, to budget the others
    compile_failure = None  # why it failed: the others would fail alike
    for i, (sizes, batch, precision, way) in enumerate(jobs):
        left = ctx.left()
        allot = job_allotment(left, len(jobs) - i)
        if way == "profile":
            _profile(ctx, cp, sizes, batch, left)
            continue
        row = find_row(result["rows"], sizes, batch, precision)
        if way.startswith("torch") and torch is None:
            row[way] = {"skipped": torch_why}
            continue
        if way == "torch_compile" and compile_failure:
            row[way] = {"skipped": f"torch.compile failed on an earlier shape: "
                                   f"{compile_failure}"}
            continue
        need = 3.0 + allot
        if way == "torch_compile":
            need = max(30.0, 1.5 * compile_s + 5) if compile_s is not None else 30.0
        if left < need:
            row[way] = {"skipped": f"budget: {left:.0f} s left, needs about {need:.0f} s"}
            ctx.save(throttle_s=1.0)
            continue
        ctx.log(f"{net_name(sizes)} B={batch} {precision} {way} ({allot:.2f} s timed)")
        try:
            if way.startswith("gpubp"):
                row[way] = gpubp_way(cp, data, sizes, batch, way == "gpubp_graph", precision,
                                     allot)
            else:
                row[way] = torch_way(torch, data, sizes, batch, way, precision == "tf32",
                                     allot)
                if way == "torch_compile" and compile_s is None:
                    compile_s = row[way]["compile_s"]
        except Exception as e:  # recorded; the next job goes on (a CUDA fault fails fast)
            entry = error_entry(e)
            row[way] = entry
            if way == "torch_compile":
                compile_failure = entry["error"]
                row[way] = {"skipped": f"torch.compile failed: {entry['error']}", **entry}
            ctx.log(f"  failed: {entry['error']}")
        gc.collect()  # this job's stepper, graphs and buffers: back to the pools, then freed
        cp.get_default_memory_pool().free_all_blocks()
        row["speedup"] = speedups(row)
        cell = row[way]
        if "ms" in cell:
            ctx.log(f"  {cell['ms']:.4f} ms/step ({cell['steps_per_repeat']} steps × "
                    f"{cell['repeats']})")
        ctx.save()


def _profile(ctx, cp, sizes, batch, left) -> None:
    """Where a gpubp step's time goes (bench.step_profile), while time is left."""
    if left < 20:
        ctx.result["profile"].append({"batch": batch, "skipped": "budget"})
        return
    try:
        from bench.step_profile import profile_cuda

        ctx.log(f"profile {net_name(sizes)} B={batch}")
        ctx.result["profile"].append(profile_cuda(cp, batch, sizes))
    except Exception as e:
        ctx.result["profile"].append({"batch": batch, **error_entry(e)})
    ctx.save()


def summary(entry: dict) -> str:
    rows = (entry.get("result") or {}).get("rows") or []
    parts = []
    for row in rows:
        if row["precision"] != "fp32" or row["batch"] not in (256, 4096):
            continue
        cells = [f"{way.replace('_', ' ')} {row[way]['ms']:.3f}" for way in
                 ("gpubp_graph", "torch_eager", "torch_graph")
                 if isinstance(row.get(way), dict) and "ms" in row[way]]
        if cells:
            parts.append(f"{row['net']} B={row['batch']}: " + ", ".join(cells) + " ms")
    done = sum(1 for r in rows for w in WAYS if isinstance(r.get(w), dict) and "ms" in r[w])
    return f"{done} timings; " + "; ".join(parts)

"""Section environment: the device, driver, CUDA runtime and package versions, and the two
ceilings every later figure is read against: the device-to-device copy bandwidth (bytes
read + written, CUDA events) and the float32 GEMM rate (gpubp's own cuBLAS handle, fp32
and TF32), both on random data."""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys

from bench.gpu_sections import SectionSkipped, error_entry, optional_torch, require_cupy

COPY_BYTES = 2 << 30
GEMM_N = 8192
SMI_FIELDS = ("name", "driver_version", "pstate", "clocks.sm", "clocks.mem", "clocks.max.sm",
              "power.draw", "power.limit", "temperature.gpu", "compute_mode", "mig.mode.current")


def run(ctx) -> None:
    import numpy as np

    facts = ctx.result.setdefault("device", {})
    facts.update(python=sys.version.split()[0], numpy=np.__version__,
                 platform=platform.platform(), nvidia_smi=nvidia_smi())
    try:
        cp = require_cupy()
    except SectionSkipped:
        facts.update(torch_facts())
        ctx.save()
        raise
    facts.update(cupy_facts(cp))
    ctx.save()
    facts.update(torch_facts())
    ctx.save()
    ctx.log(f"{facts.get('name')}, CUDA {facts.get('cuda_runtime')} (driver "
            f"{facts.get('cuda_driver')}), cupy {facts.get('cupy')}, torch {facts.get('torch')}")
    try:
        copy = copy_bandwidth(cp)
        ctx.result["copy"] = copy
        ctx.result["copy_bandwidth_GBps"] = copy["GBps"]
        ctx.log(f"copy bandwidth {copy['GBps']:,.0f} GB/s")
    except Exception as e:  # the later sections measure against a missing figure
        ctx.result["copy"] = error_entry(e)
    cp.get_default_memory_pool().free_all_blocks()  # the copy's 4 GiB
    ctx.save()
    gemm = ctx.result.setdefault("gemm", {})
    for precision in ("fp32", "tf32"):
        if ctx.left() < 5:
            gemm[precision] = {"skipped": "budget"}
            continue
        try:
            gemm[precision] = gemm_rate(cp, tf32=precision == "tf32")
            ctx.log(f"GEMM {GEMM_N}³ {precision}: {gemm[precision]['TFLOPs']:.1f} TFLOP/s")
        except Exception as e:
            gemm[precision] = error_entry(e)
        ctx.save()


def nvidia_smi() -> dict | str | None:
    """nvidia-smi's reading of the card (queries only: nothing is changed)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{type(e).__name__}: {e}"
    values = [v.strip() for v in done.stdout.strip().splitlines()[0].split(",")] \
        if done.stdout.strip() else []
    if len(values) != len(SMI_FIELDS):
        return (done.stdout + done.stderr).strip()[:500]
    return dict(zip(SMI_FIELDS, values))


def cupy_facts(cp) -> dict:
    from gpubp.backend import cuda_versions
    from gpubp.cuda import compile as kernel_compile

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    facts = {"name": name.decode() if isinstance(name, bytes) else str(name),
             "multiprocessors": props["multiProcessorCount"],
             "memory_GiB": props["totalGlobalMem"] / 2**30,
             "compute_capability": f"{props['major']}.{props['minor']}",
             "l2_MiB": props.get("l2CacheSize", 0) / 2**20, **cuda_versions()}
    try:
        facts["nvrtc"] = ".".join(map(str, kernel_compile.nvrtc_version()))
        facts["kernel_target"] = kernel_compile.target_arch(facts["compute_capability"]
                                                            .replace(".", ""))
    except Exception as e:  # recorded: the kernels section will say more
        facts["nvrtc"] = f"{type(e).__name__}: {e}"
    try:
        from cupy.cuda import nccl

        facts["nccl"] = nccl.get_version()
    except Exception as e:
        facts["nccl"] = f"unavailable ({type(e).__name__})"
    return facts


def torch_facts() -> dict:
    torch, why = optional_torch()
    if torch is None:
        return {"torch": None, "torch_note": why}
    return {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "torch_device": torch.cuda.get_device_name(0)}


def copy_bandwidth(cp, nbytes: int = COPY_BYTES) -> dict:
    """Device-to-device copy of ``nbytes``, counting bytes read plus bytes written."""
    from bench.kernel_times import time_events

    src = cp.random.default_rng(0).random(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    timing = time_events(cp, lambda: dst.data.copy_from_device_async(src.data, nbytes),
                         budget_s=1.0)
    return {"bytes": nbytes, "GBps": 2 * nbytes / timing["median_s"] / 1e9,
            "best_GBps": 2 * nbytes / timing["min_s"] / 1e9, "repeats": timing["repeats"]}


def gemm_rate(cp, tf32: bool, n: int = GEMM_N) -> dict:
    """An n×n×n float32 GEMM through gpubp's cuBLAS layer, in TFLOP/s."""
    from bench.kernel_times import time_events
    from gpubp.cuda.cublas import Cublas

    rng = cp.random.default_rng(1)
    a, b = (rng.random((n, n), dtype=cp.float32) for _ in range(2))
    c = cp.empty((n, n), cp.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()  # a and b were written on the default stream
    blas = Cublas(stream, tf32=tf32)
    try:
        timing = time_events(cp, lambda: blas.matmul(a, b, c), budget_s=1.0, stream=stream)
    finally:
        stream.synchronize()
        blas.close()
    return {"n": n, "TFLOPs": 2 * n**3 / timing["median_s"] / 1e12,
            "median_ms": 1e3 * timing["median_s"], "repeats": timing["repeats"]}


def summary(entry: dict) -> str:
    r = entry.get("result") or {}
    d = r.get("device") or {}
    if not d.get("name"):  # no device: what the machine has
        return f"python {d.get('python')}, numpy {d.get('numpy')}, torch {d.get('torch')}"
    parts = [f"{d['name']}, CUDA {d.get('cuda_runtime')}/{d.get('cuda_driver')}",
             f"cupy {d.get('cupy')}, torch {d.get('torch')}"]
    if r.get("copy_bandwidth_GBps"):
        parts.append(f"copy {r['copy_bandwidth_GBps']:,.0f} GB/s")
    for precision, g in (r.get("gemm") or {}).items():
        if isinstance(g, dict) and g.get("TFLOPs"):
            parts.append(f"GEMM {precision} {g['TFLOPs']:.0f} TFLOP/s")
    return "; ".join(parts)

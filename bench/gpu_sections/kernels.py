"""Section kernels: gpubp's CUDA kernels timed with CUDA events (bench.kernel_times), as a
fraction of the copy bandwidth that the environment section measured (or measured here
if it did not) and against PyTorch: the fused cross-entropy and the output layer's
bias_softmax_cross_entropy at B=4096, C=32,768 (issue 12's target shape) and others, and
the sigmoid backward with dbias at (4096, 8192) and (65536, 1024) and a cache-resident
(256, 1024). The target shapes come first; each shape is saved as it is measured."""

from __future__ import annotations

from bench.gpu_sections import error_entry, optional_torch, require_cupy


def run(ctx) -> None:
    cp = require_cupy()
    from bench import kernel_times

    torch, torch_why = optional_torch()
    result = ctx.result
    if torch is None:
        result["torch_skipped"] = torch_why
    copy = (ctx.earlier.get("environment") or {}).get("copy_bandwidth_GBps")
    result["copy_bandwidth_source"] = "environment section"
    if not copy:
        from bench.gpu_sections.environment import copy_bandwidth

        try:
            copy = copy_bandwidth(cp, 1 << 30)["GBps"]
            result["copy_bandwidth_source"] = "measured here (1 GiB)"
        except Exception as e:
            result["copy_bandwidth_error"] = error_entry(e)
            result["copy_bandwidth_source"] = None
    result["copy_bandwidth_GBps"] = copy
    ctx.save()
    kernel_times.run(copy, budget_s=max(1.0, ctx.left() - 3), torch=torch, report=result,
                     on_row=ctx.save)


def summary(entry: dict) -> str:
    r = entry.get("result") or {}
    parts = []
    for row in r.get("softmax_xent") or []:
        if (row.get("B"), row.get("C")) == (4096, 32768) and "fused_GBps" in row:
            fraction = row.get("fraction_of_copy")
            parts.append(f"CE 4096×32768 {row['fused_GBps']:,.0f} GB/s"
                         + (f" ({100 * fraction:.0f}% of copy)" if fraction else "")
                         + (f", {row['speedup_vs_torch']:.1f}× torch"
                            if row.get("speedup_vs_torch") else ""))
    for row in r.get("sigmoid") or []:
        fraction = row.get("sigmoid_backward_dbias_fraction_of_copy")
        if fraction is not None and row.get("B", 0) * row.get("N", 0) >= 2**25:
            parts.append(f"σ' with db {row['B']}×{row['N']} {100 * fraction:.0f}%")
    failed = sum(1 for key in ("softmax_xent", "sigmoid") for row in r.get(key) or []
                 if "error" in row)
    if failed:
        parts.append(f"{failed} shapes failed")
    return "; ".join(parts)

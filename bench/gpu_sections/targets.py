"""Issue 12's targets (and a few checks), evaluated from the sections' results.

Each entry: name, kind ("target": issue 12's Targets; "check": a property the issue asks
for), pass (True, False, or None when not measured), measured (the figures), why (when
not measured). Pure functions of the report: the orchestrator re-evaluates them after
every section, and tests feed them made-up results.
"""

from __future__ import annotations

SMALL_NET, BIG_NET = "784-800-10", "784-1024-1024-10"
MNIST_WALL_S = 15.0
CE_FRACTION, SIGMOID_FRACTION = 0.85, 0.80
CE_SHAPE = (4096, 32768)
SIGMOID_TARGET_SHAPES = ((4096, 8192), (65536, 1024))  # large enough to leave the L2


def evaluate(sections: dict) -> list[dict]:
    step = _result(sections, "step")
    kernels = _result(sections, "kernels")
    mnist = _result(sections, "mnist")
    out = [
        _speedup(sections, step, SMALL_NET, 256, "torch_eager", 3.0,
                 "784-800-10 B=256: gpubp-graph step ≤ 1/3 of PyTorch eager's"),
        _speedup(sections, step, SMALL_NET, 256, "torch_graph", 1.0,
                 "784-800-10 B=256: gpubp-graph step ≤ PyTorch with a CUDA graph"),
        _speedup(sections, step, SMALL_NET, 4096, "torch_eager", 1.5,
                 "784-800-10 B=4096: gpubp-graph ≥ 1.5× PyTorch eager"),
        _speedup(sections, step, BIG_NET, 4096, "torch_eager", 1.5,
                 "784-1024-1024-10 B=4096: gpubp-graph ≥ 1.5× PyTorch eager"),
        _ce(sections, kernels),
        _sigmoid(sections, kernels),
        *_mnist(sections, mnist),
        _pool(sections, step),
        _launches(sections, step),
        _graphs(sections, step),
        _tests(sections),
        _data_parallel(sections),
    ]
    return out


def _result(sections: dict, name: str):
    entry = sections.get(name) or {}
    result = entry.get("result")
    return result if isinstance(result, dict) else None


def _why(sections: dict, name: str, what: str = "") -> str:
    entry = sections.get(name) or {}
    status = entry.get("status", "not selected")
    reason = entry.get("reason") or entry.get("error") or ""
    where = f"section {name} {status}" + (f" ({reason.splitlines()[0][:100]})" if reason else "")
    return f"{what}: {where}" if what else where


def _entry(name, kind, passed, measured=None, why=None, **figures) -> dict:
    entry = {"name": name, "kind": kind, "pass": passed}
    if measured is not None:
        entry["measured"] = measured
    if why is not None:
        entry["why"] = why
    entry.update(figures)
    return entry


def step_row(step: dict | None, net: str, batch: int, precision: str = "fp32") -> dict | None:
    for row in (step or {}).get("rows") or []:
        if row.get("net") == net and row.get("batch") == batch and \
                row.get("precision", "fp32") == precision:
            return row
    return None


def _ms(row: dict | None, way: str):
    cell = (row or {}).get(way)
    return cell.get("ms") if isinstance(cell, dict) else None


def _speedup(sections, step, net, batch, peer, at_least, name) -> dict:
    row = step_row(step, net, batch)
    mine, theirs = _ms(row, "gpubp_graph"), _ms(row, peer)
    if not mine or not theirs:
        missing = "gpubp_graph" if not mine else peer
        cell = (row or {}).get(missing) or {}
        detail = cell.get("error") or cell.get("skipped") if isinstance(cell, dict) else None
        return _entry(name, "target", None, why=_why(sections, "step", f"{missing} not measured"
                                                     + (f" ({detail})" if detail else "")))
    ratio = theirs / mine
    return _entry(name, "target", ratio >= at_least,
                  f"gpubp-graph {mine:.4f} ms, {peer.replace('_', ' ')} {theirs:.4f} ms: "
                  f"{ratio:.2f}× (needs ≥ {at_least:g}×)", value=ratio, threshold=at_least)


def _ce(sections, kernels) -> dict:
    name = f"fused CE B={CE_SHAPE[0]}, C={CE_SHAPE[1]}: ≥ {CE_FRACTION:.0%} of copy bandwidth"
    row = next((r for r in (kernels or {}).get("softmax_xent") or []
                if (r.get("B"), r.get("C")) == CE_SHAPE), None)
    fraction = (row or {}).get("fraction_of_copy")
    if fraction is None:
        return _entry(name, "target", None, why=_why(sections, "kernels"))
    extra = ""
    if row.get("bias_fraction_of_copy") is not None:
        extra = (f"; with bias, db and loss sum "
                 f"{100 * row['bias_fraction_of_copy']:.1f}% of copy on its least bytes")
    if row.get("speedup_vs_torch") is not None:
        extra += f"; {row['speedup_vs_torch']:.2f}× F.cross_entropy fwd+bwd"
    return _entry(name, "target", fraction >= CE_FRACTION,
                  f"{row.get('fused_GBps', 0):,.0f} GB/s, {100 * fraction:.1f}% of copy{extra}",
                  value=fraction, threshold=CE_FRACTION)


def _sigmoid(sections, kernels) -> dict:
    name = f"sigmoid backward with dbias: ≥ {SIGMOID_FRACTION:.0%} of copy bandwidth"
    rows = [r for r in (kernels or {}).get("sigmoid") or []
            if (r.get("B"), r.get("N")) in SIGMOID_TARGET_SHAPES
            and r.get("sigmoid_backward_dbias_fraction_of_copy") is not None]
    if not rows:
        return _entry(name, "target", None, why=_why(sections, "kernels"))
    worst = min(r["sigmoid_backward_dbias_fraction_of_copy"] for r in rows)
    shown = ", ".join(f"B={r['B']} N={r['N']}: "
                      f"{100 * r['sigmoid_backward_dbias_fraction_of_copy']:.1f}%" for r in rows)
    return _entry(name, "target", worst >= SIGMOID_FRACTION, shown, value=worst,
                  threshold=SIGMOID_FRACTION)


def _mnist(sections, mnist) -> list[dict]:
    wall_name = f"MNIST 784-800-10, 60 epochs on the GPU: < {MNIST_WALL_S:g} s wall"
    accuracy_name = "MNIST 784-800-10, 60 epochs: the NumPy run's final test error"
    run = next((r for r in (mnist or {}).get("runs") or []
                if r.get("precision") == "fp32"), None)
    if run is None or run.get("fit_wall_s") is None:
        why = _why(sections, "mnist")
        return [_entry(wall_name, "target", None, why=why),
                _entry(accuracy_name, "target", None, why=why)]
    if not run.get("completed"):
        why = (f"stopped after {run.get('epochs_done')} epochs: {run.get('stopped')}; "
               f"projected {run.get('projected_wall_s', 0):.0f} s")
        return [_entry(wall_name, "target", False, why, value=run.get("projected_wall_s"),
                       threshold=MNIST_WALL_S),
                _entry(accuracy_name, "target", None, why="the run did not finish")]
    wall = run["fit_wall_s"]
    out = [_entry(wall_name, "target", wall < MNIST_WALL_S,
                  f"Trainer.fit {wall:.1f} s (first epoch {run.get('first_epoch_s', 0):.2f} s, "
                  f"then median {run.get('median_epoch_s', 0):.3f} s)", value=wall,
                  threshold=MNIST_WALL_S)]
    reference = (mnist or {}).get("numpy_reference") or {}
    numpy_error, tolerance = reference.get("final_test_error"), mnist.get("accuracy_tolerance")
    error = run.get("final_test_error")
    if numpy_error is None or error is None or tolerance is None:
        out.append(_entry(accuracy_name, "target", None,
                          why="no NumPy reference result (bench/results/*cpu-mnist-800.json)"))
    else:
        out.append(_entry(accuracy_name, "target", abs(error - numpy_error) <= tolerance,
                          f"GPU {100 * error:.2f}%, NumPy {100 * numpy_error:.2f}% (within "
                          f"±{100 * tolerance:.2f} points)", value=error,
                          threshold=numpy_error))
    return out


def _gpubp_cells(step, way: str):
    for row in (step or {}).get("rows") or []:
        cell = row.get(way)
        if isinstance(cell, dict) and "ms" in cell:
            yield row, cell


def _pool(sections, step) -> dict:
    name = "CuPy pool's used bytes constant from step 2 (every gpubp run)"
    seen = [(row, cell) for way in ("gpubp_graph", "gpubp_eager")
            for row, cell in _gpubp_cells(step, way)
            if cell.get("pool_constant_from_step_2") is not None]
    if not seen:
        return _entry(name, "check", None, why=_why(sections, "step"))
    bad = [f"{row['net']} B={row['batch']} {row.get('precision')}" for row, cell in seen
           if not cell["pool_constant_from_step_2"]]
    return _entry(name, "check", not bad, f"{len(seen) - len(bad)} of {len(seen)} constant"
                  + (f"; not: {', '.join(bad)}" if bad else ""))


def _launches(sections, step) -> dict:
    name = "kernel launches per eager step = 2L + 1, GEMMs = 3L − 1"
    seen = [cell for _, cell in _gpubp_cells(step, "gpubp_eager")
            if cell.get("kernel_launches_per_step") is not None]
    if not seen:
        return _entry(name, "check", None, why=_why(sections, "step"))
    bad = [c for c in seen if c["kernel_launches_per_step"] != c.get("expected_kernel_launches")
           or (c.get("gemms_per_step") is not None
               and c["gemms_per_step"] != c.get("expected_gemms"))]
    shown = sorted({f"{c['kernel_launches_per_step']} kernels + {c.get('gemms_per_step')} GEMMs "
                    f"(expected {c.get('expected_kernel_launches')} + "
                    f"{c.get('expected_gemms')})" for c in seen})
    return _entry(name, "check", not bad, "; ".join(shown))


def _graphs(sections, step) -> dict:
    name = "CUDA graphs stay on (capture and self-check pass) in every gpubp-graph run"
    seen = list(_gpubp_cells(step, "gpubp_graph"))
    if not seen:
        return _entry(name, "check", None, why=_why(sections, "step"))
    off = [f"{row['net']} B={row['batch']}: {'; '.join(cell.get('warnings') or ['off'])}"
           for row, cell in seen if not cell.get("graphs_active")]
    return _entry(name, "check", not off, f"{len(seen) - len(off)} of {len(seen)} on"
                  + (f"; off: {' | '.join(off)[:300]}" if off else ""))


def _tests(sections) -> dict:
    name = "GPU tests (pytest -m gpu) pass"
    result = _result(sections, "tests")
    counts = (result or {}).get("counts")
    if not counts:
        return _entry(name, "check", None, why=_why(sections, "tests"))
    bad = counts.get("failed", 0) + counts.get("error", 0)
    summary = result.get("summary") or str(counts)
    if bad:
        return _entry(name, "check", False, summary)
    if (sections.get("tests") or {}).get("status") == "ok" and not result.get("stopped_early"):
        return _entry(name, "check", True, summary)
    return _entry(name, "check", None, summary,
                  why=_why(sections, "tests", "not every test ran"))


def _data_parallel(sections) -> dict:
    name = "data-parallel: 2 ranks on one GPU equal 1 rank"
    result = _result(sections, "data_parallel")
    if not result or result.get("max_relative_difference") is None:
        return _entry(name, "check", None, why=_why(sections, "data_parallel"))
    diff, tol = result["max_relative_difference"], result.get("tolerance", 0)
    return _entry(name, "check", diff <= tol, f"max relative difference {diff:.2e} "
                  f"(tolerance {tol:.0e}), reduction {result.get('device_reduction')}",
                  value=diff, threshold=tol)

"""Section data_parallel: ``mpiexec -n 2`` ranks sharing the one GPU (NCCL refuses two
ranks on one device, so the gradients are reduced through the host) against 1 rank, in
float64 (bench/gpu_sections/dp_worker.py): the final weights must agree to within
TOLERANCE (only the order of the sums differs). Skipped, saying why, without mpi4py, an
MPI library or mpiexec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.gpu_sections import SectionSkipped, clamp, require_cupy, run_bounded

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-10
RANKS = 2


def mpi_facts() -> dict:
    """mpiexec's path and version, and whether mpi4py loads an MPI library; the reason
    this section cannot run, if it cannot."""
    facts = {"mpiexec": shutil.which("mpiexec"), "mpi4py": None, "why_not": None}
    try:
        # Without MPI_Init (which MPI_Get_library_version does not need): quick.
        done = subprocess.run([sys.executable, "-c", "import mpi4py; "
                               "mpi4py.rc.initialize = mpi4py.rc.finalize = False; "
                               "from mpi4py import MPI; "
                               "print(MPI.Get_library_version().strip(chr(0)).splitlines()[0])"],
                              capture_output=True, text=True, timeout=60)
        facts["mpi4py"] = done.stdout.strip() if done.returncode == 0 else \
            f"does not load: {(done.stderr.strip().splitlines() or ['?'])[-1][:300]}"
    except (OSError, subprocess.SubprocessError) as e:
        facts["mpi4py"] = f"does not load: {type(e).__name__}: {e}"
    if facts["mpiexec"]:
        try:
            version = subprocess.run([facts["mpiexec"], "--version"], capture_output=True,
                                     text=True, timeout=30)
            facts["mpiexec_version"] = (version.stdout + version.stderr).strip()[:300]
        except (OSError, subprocess.SubprocessError) as e:
            facts["mpiexec_version"] = f"{type(e).__name__}: {e}"
    missing = []
    if facts["mpiexec"] is None:
        missing.append("mpiexec is not on PATH")
    if not facts["mpi4py"] or facts["mpi4py"].startswith("does not load"):
        missing.append(f"mpi4py {facts['mpi4py'] or 'is missing'}")
    if missing:
        facts["why_not"] = "; ".join(missing)
    return facts


def launcher(facts: dict, ranks: int) -> list[str]:
    command = [facts["mpiexec"], "-n", str(ranks)]
    if "Open MPI" in facts.get("mpiexec_version", "") or \
            "OpenRTE" in facts.get("mpiexec_version", ""):
        command += ["--allow-run-as-root", "--oversubscribe"]  # root on the device machine
    return command


def run_worker(ctx, ranks: int, timeout: float) -> dict:
    out = ctx.work_dir / f"dp-{ranks}.npz"
    out.unlink(missing_ok=True)
    spec = json.dumps({"out": str(out)})
    command = [sys.executable, "-m", "bench.gpu_sections.dp_worker", spec]
    if ranks > 1:
        command = launcher(ctx.result["mpi"], ranks) + command
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "GPUBP_COLLECTIVE_TIMEOUT": str(int(max(10, timeout - 5)))}
    ctx.log(" ".join(command))
    try:
        done = run_bounded(command, timeout, cwd=REPO, env=env)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(command), "error": f"timed out after {timeout:.0f} s"}
    print(done.stdout, done.stderr, sep="\n", flush=True)
    record = {"returncode": done.returncode, "command": " ".join(command)}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if lines:
        record.update(json.loads(lines[-1]))
    if done.returncode != 0 or not out.is_file():
        record["error"] = (done.stderr.strip()[-1500:] or done.stdout.strip()[-1500:]
                           or "no output")
    return record


def compare(one: Path, many: Path) -> dict:
    import numpy as np

    a, b = np.load(one), np.load(many)
    params = [k for k in a.files if k.startswith("arr_")]
    worst = max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-300))
                for k in params)
    loss = float(np.abs(a["train_loss"] - b["train_loss"]).max())
    return {"max_relative_difference": worst, "max_loss_difference": loss,
            "parameters": len(params)}


def run(ctx) -> None:
    facts = mpi_facts()
    ctx.result["mpi"] = facts
    ctx.save()
    try:
        require_cupy()
    except SectionSkipped as no_gpu:
        raise SectionSkipped("; ".join(filter(None, (str(no_gpu), facts["why_not"])))) \
            from None
    if facts["why_not"]:
        raise SectionSkipped(facts["why_not"])
    timeout = clamp(ctx.left() / 2 - 2, 10, 120)
    single = run_worker(ctx, 1, timeout)
    ctx.result["ranks_1"] = single
    ctx.save()
    if "error" in single:
        raise RuntimeError(f"the 1-rank run failed: {single['error'][-500:]}")
    several = run_worker(ctx, RANKS, clamp(ctx.left() - 2, 10, 120))
    ctx.result[f"ranks_{RANKS}"] = several
    ctx.save()
    if "error" in several:
        raise RuntimeError(f"the {RANKS}-rank run failed: {several['error'][-500:]}")
    ctx.result.update(compare(ctx.work_dir / "dp-1.npz", ctx.work_dir / f"dp-{RANKS}.npz"))
    ctx.result["tolerance"] = TOLERANCE
    ctx.result["device_reduction"] = (several.get("describe") or {}).get("device_reduction")


def summary(entry: dict) -> str:
    r = entry.get("result") or {}
    if r.get("max_relative_difference") is not None:
        return (f"{RANKS} ranks vs 1: max relative difference "
                f"{r['max_relative_difference']:.1e} (reduction {r.get('device_reduction')})")
    return (r.get("mpi") or {}).get("why_not") or ""

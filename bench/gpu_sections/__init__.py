"""The sections of ``bench/gpu_check.py``, each run in a process of its own.

A section is a module with ``run(ctx)`` and ``summary(entry)``. ``run`` fills
``ctx.result`` as it measures and calls ``ctx.save()`` after each figure, so that what it
measured survives its own crash, hang or CUDA fault (the orchestrator reads the last
save); it raises :class:`SectionSkipped` when this machine cannot run it (no CuPy, no
data), with the reason. ``summary`` gives the one line of the final table.

Nothing here imports CuPy, PyTorch or gpubp: the orchestrator imports this package, and
every section module must import on a machine without a GPU.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import signal
import subprocess
import time
import traceback
from pathlib import Path

TRACEBACK_TAIL_CHARS = 3000
PR_SET_PDEATHSIG = 1


class SectionSkipped(Exception):
    """This machine cannot run the section; the message says why."""


@dataclasses.dataclass(frozen=True)
class Section:
    """One section: where its code is, and what it may spend.

    cap_s: the most seconds it may run; min_s: it is not started with less left (and the
    sections before it leave the later ones' min_s where the budget allows).
    """

    name: str
    module: str
    cap_s: float
    min_s: float
    function: str = "run"
    what: str = ""


# In priority order: the most valuable first, so that a short budget still gets them.
SECTIONS = (
    Section("environment", "bench.gpu_sections.environment", 90, 10,
            what="device, driver, versions, copy bandwidth and GEMM rate"),
    Section("tests", "bench.gpu_sections.gpu_tests", 150, 30,
            what="pytest -m gpu on the test files that have gpu tests"),
    Section("step", "bench.gpu_sections.step", 170, 30,
            what="one training step, gpubp (graph, eager) against PyTorch (eager, graph, "
                 "compile)"),
    Section("kernels", "bench.gpu_sections.kernels", 60, 15,
            what="fused cross-entropy and sigmoid backward against the copy bandwidth"),
    Section("mnist", "bench.gpu_sections.mnist", 90, 20,
            what="784-800-10 on MNIST, 60 epochs, through gpubp.Trainer"),
    Section("data_parallel", "bench.gpu_sections.data_parallel", 60, 15,
            what="mpiexec -n 2 on the one GPU against 1 rank"),
    Section("sklearn_fit", "bench.gpu_sections.sklearn_fit", 90, 20,
            what="gpubp.MLPClassifier.fit on MNIST (CuPy), against scikit-learn where "
                 "installed"),
)

# --dry-run's sections: the orchestration itself, with no GPU (tests/test_gpu_check.py).
FAKE = "bench.gpu_sections.fake"
FAKE_SECTIONS = (
    Section("ok", FAKE, 30, 0.5, "ok", "prints, records a figure"),
    Section("crash", FAKE, 30, 0.5, "crash", "raises after saving a partial result"),
    Section("segv", FAKE, 30, 0.5, "segv", "dies of SIGSEGV, as a CUDA fault can"),
    Section("hang", FAKE, 1.0, 0.5, "hang", "saves a partial result, then sleeps forever"),
    Section("stubborn", FAKE, 0.6, 0.5, "stubborn", "hangs and ignores SIGTERM"),
    Section("skip", FAKE, 30, 0.5, "skip", "lacks what it needs"),
    Section("budget", FAKE, 30, 0.5, "budget", "records the time it was given"),
    Section("slow", FAKE, 30, 0.5, "slow", "sleeps 1 s"),
    Section("last", FAKE, 30, 0.5, "ok", "as ok, last"),
)
DEFAULT_FAKE_ORDER = ("ok", "crash", "segv", "hang", "skip", "last")


def registry(dry_run: bool) -> dict[str, Section]:
    return {s.name: s for s in (FAKE_SECTIONS if dry_run else SECTIONS)}


def soft_budget(timeout_s: float) -> float:
    """The seconds a section plans its work in: its timeout less a margin for tearing
    down (freeing the device, writing the result) before the orchestrator kills it."""
    margin = min(15.0, max(0.5, 0.08 * timeout_s))
    return max(0.1, timeout_s - margin)


class Context:
    """What a section's process knows: its time, the data, earlier sections' results,
    and where its partial result goes. ``result`` is the section's dict; ``save()`` writes
    it (atomically) for the orchestrator."""

    def __init__(self, spec: dict):
        self.name = spec["section"]
        self.timeout_s = float(spec["timeout_s"])
        self.budget_s = float(spec.get("budget_s", soft_budget(self.timeout_s)))
        self.data_dir = spec.get("data_dir")
        self.work_dir = Path(spec["work_dir"])
        self.out_dir = Path(spec["out_dir"])
        self.earlier = spec.get("earlier") or {}
        self.partial_path = Path(spec["partial_path"])
        self.started = time.monotonic()
        self.result: dict = {}
        self._last_save = 0.0

    @classmethod
    def load(cls, path) -> "Context":
        return cls(json.loads(Path(path).read_text()))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        """Seconds left of this section's soft budget (negative once over)."""
        return self.budget_s - self.elapsed()

    def save(self, status: str = "running", throttle_s: float = 0.0, **extra) -> None:
        """Write ``result`` (and ``extra``) for the orchestrator: the last save is what
        survives a kill. ``throttle_s``: skip if saved less than this long ago."""
        now = time.monotonic()
        if throttle_s and now - self._last_save < throttle_s:
            return
        self._last_save = now
        payload = {"status": status, "result": self.result, "seconds": self.elapsed(),
                   **extra}
        write_json_atomic(self.partial_path, payload)

    def log(self, *parts) -> None:
        print(f"[{self.name} {self.elapsed():6.1f}s]", *parts, flush=True)


def write_json_atomic(path: Path, payload) -> None:
    """``payload`` as JSON at ``path``, replaced in one step: a reader (or a kill) never
    sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(jsonable(payload), indent=1))
    os.replace(tmp, path)


def jsonable(value):
    """``value`` with NumPy scalars as Python numbers, tuples as lists, and non-finite
    floats as strings ("nan", "inf"): strict JSON that any reader takes."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    item = getattr(value, "item", None)  # NumPy and CuPy scalars, 0-d arrays
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            pass
    return str(value)


def traceback_tail(limit: int = TRACEBACK_TAIL_CHARS) -> str:
    """The current exception's traceback, its last ``limit`` characters."""
    text = traceback.format_exc()
    return text if len(text) <= limit else "..." + text[-limit:]


def error_entry(error: BaseException) -> dict:
    """{"error", "traceback_tail"} for an exception being handled."""
    return {"error": f"{type(error).__name__}: {error}"[:1000], "traceback_tail": traceback_tail()}


def require_cupy():
    """CuPy, with a CUDA device, or SectionSkipped saying what is missing."""
    try:
        from gpubp.backend import get_backend
        from gpubp.errors import BackendError
    except Exception as e:  # gpubp itself does not import: a failure, not a skip
        raise RuntimeError(f"gpubp does not import: {type(e).__name__}: {e}") from e
    try:
        return get_backend("cupy").xp
    except BackendError as e:
        raise SectionSkipped(str(e)) from None


def optional_torch():
    """(torch, None) when PyTorch imports and sees a CUDA device, else (None, why)."""
    try:
        import torch
    except Exception as e:  # not installed, or a broken install
        return None, f"PyTorch does not import ({type(e).__name__}: {e})"
    if not torch.cuda.is_available():
        return None, f"torch {torch.__version__} sees no CUDA device"
    return torch, None


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def planned_steps(per_step_s: float, allot_s: float, repeats: int, low: int = 3,
                  high: int = 1000) -> int:
    """Steps per timed repeat so that ``repeats`` repeats take about ``allot_s``, from a
    measured ``per_step_s``; at least ``low`` (a median of few steps is noise), at most
    ``high``."""
    if not per_step_s > 0:
        return high
    return int(clamp(allot_s / (repeats * per_step_s), low, high))


def fmt_ms(value) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{value:.3f}"


def die_with_parent() -> None:
    """In a child, before exec: SIGKILL when its parent dies (the device call's timeout
    kills the orchestrator; no section may outlive it on the GPU)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):  # not Linux: the timeouts and group kills remain
        pass


def run_bounded(command: list, timeout: float, grace_s: float = 5.0, **kwargs):
    """subprocess.run(capture_output, text) in a process group of its own; past
    ``timeout`` the whole group gets SIGTERM (mpiexec passes it on to its ranks), then
    SIGKILL after ``grace_s``, and TimeoutExpired is raised: nothing is left running. It
    dies with the calling process too."""
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, text=True, process_group=0,
                             preexec_fn=die_with_parent, **kwargs)
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                pass
            try:
                child.communicate(timeout=grace_s)
                break
            except subprocess.TimeoutExpired:
                continue
        raise
    return subprocess.CompletedProcess(command, child.returncode, stdout, stderr)

"""Section tests: ``pytest -m gpu`` on the test files that hold GPU tests, run inside this
process with a plugin that records every test's outcome as it ends (counts, failures
with their messages, the slowest tests) and saves after each: a kill keeps what ran.
Stops between tests when the section's budget runs out; with pytest-timeout installed,
a test that hangs fails alone."""

from __future__ import annotations

import importlib.util
import os
import time
from collections import Counter
from pathlib import Path

from bench.gpu_sections import clamp, require_cupy

REPO = Path(__file__).resolve().parents[2]
MESSAGE_CHARS = 2000
FAILURES_KEPT = 40
MARKERS = ("mark.gpu", "pytestmark = pytest.mark.gpu")


def gpu_test_files(tests_dir: Path = REPO / "tests") -> list[str]:
    """The test files that mark tests ``gpu`` (this check's own tests aside)."""
    found = []
    for path in sorted(tests_dir.glob("test_*.py")):
        if path.name == "test_gpu_check.py":
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if any(marker in text for marker in MARKERS):
            found.append(str(path.relative_to(REPO)))
    return found


class Recorder:
    """A pytest plugin: each test's outcome into ``ctx.result``, saved as it goes."""

    def __init__(self, ctx, stop_at_left_s: float):
        self.ctx, self.stop_at_left_s = ctx, stop_at_left_s
        self.session = None
        self.started = time.monotonic()
        self.counts = Counter()
        self.durations = []
        self.skip_reasons = Counter()
        r = ctx.result
        r.update(counts=self.counts, failures=[], slowest=[], skip_reasons={}, collected=None)

    def pytest_sessionstart(self, session):
        self.session = session

    def pytest_collection_finish(self, session):
        self.ctx.result["collected"] = len(session.items)
        self.ctx.save()

    def pytest_deselected(self, items):
        self.counts["deselected"] += len(items)

    def pytest_collectreport(self, report):
        if report.failed:
            self.counts["error"] += 1
            self._failure(report, "collect")

    def pytest_runtest_logstart(self, nodeid, location):
        # Saved before the test runs: a fault that kills the process names its test.
        self.ctx.result["running"] = nodeid
        self.ctx.save()

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or report.outcome != "passed":
            if hasattr(report, "wasxfail"):
                outcome = "xfailed" if report.skipped else "xpassed"
            elif report.failed and report.when != "call":
                outcome = "error"
            else:
                outcome = report.outcome
            self.counts[outcome] += 1
            if report.failed:
                self._failure(report, report.when)
            if report.skipped and isinstance(report.longrepr, tuple):
                reason = str(report.longrepr[2]).removeprefix("Skipped: ")
                self.skip_reasons[reason[:200]] += 1
        if report.when == "call":
            self.durations.append((report.duration, report.nodeid))
        if report.when == "teardown" or report.failed:
            self._publish()
            self.ctx.save()
            if self.session is not None and self.ctx.left() < self.stop_at_left_s:
                self.session.shouldstop = "gpu-check: the section's budget ran out"
                self.ctx.result["stopped_early"] = self.session.shouldstop

    def pytest_sessionfinish(self, session, exitstatus):
        self.ctx.result.pop("running", None)
        self._publish()
        self.ctx.result["exit_status"] = int(exitstatus)
        self.ctx.save()

    def _failure(self, report, when: str) -> None:
        failures = self.ctx.result["failures"]
        if len(failures) >= FAILURES_KEPT:
            return
        text = getattr(report, "longreprtext", "") or str(report.longrepr)
        crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", None)
        lines = text.strip().splitlines()
        message = crash if isinstance(crash, str) else (lines[-1] if lines else "")
        failures.append({"nodeid": report.nodeid, "when": when, "message": message[:500],
                         "longrepr_tail": text[-MESSAGE_CHARS:]})

    def _publish(self) -> None:
        r = self.ctx.result
        r["counts"] = dict(self.counts)
        r["slowest"] = [{"nodeid": n, "seconds": round(d, 3)}
                        for d, n in sorted(self.durations, reverse=True)[:10]]
        r["skip_reasons"] = dict(self.skip_reasons.most_common(10))
        r["summary"] = summary_line(self.counts, time.monotonic() - self.started)


def summary_line(counts, seconds: float) -> str:
    order = ("passed", "failed", "error", "skipped", "xfailed", "xpassed", "deselected")
    parts = [f"{counts[k]} {k}" for k in order if counts.get(k)]
    return (", ".join(parts) or "no tests ran") + f" in {seconds:.1f}s"


def run(ctx) -> None:
    import pytest

    require_cupy()  # without a device every gpu test would be a skip: say so once
    files = gpu_test_files()
    ctx.result["files"] = files
    if not files:
        raise RuntimeError("no test file marks tests gpu")
    data = Path(ctx.data_dir or ".mnist")
    if (data / "train-images-idx3-ubyte.gz").is_file():  # the tests' real-MNIST fixture
        os.environ.setdefault("GPUBP_TEST_MNIST", str(data.resolve()))
    args = ["-m", "gpu", *files, "-q", "-p", "no:cacheprovider", "-rfE", "--durations=10"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        per_test = int(clamp(ctx.budget_s / 3, 30, 120))
        args += ["--timeout", str(per_test), "--timeout-method", "signal"]
        ctx.result["per_test_timeout_s"] = per_test
    ctx.result["args"] = args
    recorder = Recorder(ctx, stop_at_left_s=5.0)
    ctx.log("pytest " + " ".join(args))
    code = pytest.main(args, plugins=[recorder])
    ctx.result["returncode"] = int(code)
    ctx.save()
    stopped = int(code) == 2 and ctx.result.get("stopped_early")  # our own stop
    if int(code) not in (0, 1, 5) and not stopped:  # 1: failures (recorded), 5: none
        raise RuntimeError(f"pytest exited with status {int(code)} "
                           "(2: interrupted, 3: internal error, 4: usage error)")


def summary(entry: dict) -> str:
    r = entry.get("result") or {}
    text = r.get("summary") or ""
    if r.get("running"):  # the process ended inside this test
        text += f"; ended inside {r['running']}"
    failures = r.get("failures") or []
    if failures:
        text += "; first failure: " + f"{failures[0]['nodeid']}: {failures[0]['message']}"
    return text

"""The one-shot device check: GPU tests and benchmarks, a process for each section.

Writes JSON to $OUT after every section and prints a table last.

On the device machine, from the source tree (nothing installed):

    PYTHONPATH=. python bench/gpu_check.py --out $OUT --data-dir .mnist

Sections, most valuable first (bench/gpu_sections/): environment (device, versions, copy
bandwidth), tests (pytest -m gpu), step (gpubp with graphs and eager against PyTorch
eager, with a CUDA graph and compiled), kernels (fused cross-entropy and sigmoid backward
against the copy bandwidth), mnist (784-800-10, 60 epochs), data_parallel (mpiexec -n 2).

A section that crashes, hangs or faults spoils only itself: it is killed at its timeout,
and what it saved before stays. Each timeout is the section's cap within what is left of
``--budget-s`` after keeping the later sections' minimums; sections plan their own work
from times they measure. ``$OUT/gpu-check.json`` is rewritten (atomically) before and
after each section, so a kill of this script leaves it valid; each section's output is in
``$OUT/<section>.log``. ``--dry-run`` runs fake sections instead (no GPU needed).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.gpu_sections import (  # noqa: E402
    DEFAULT_FAKE_ORDER,
    SECTIONS,
    Context,
    SectionSkipped,
    die_with_parent,
    error_entry,
    registry,
    soft_budget,
    write_json_atomic,
)
from bench.gpu_sections import targets as target_checks  # noqa: E402

FORMAT = "gpu-check/2"
JSON_NAME = "gpu-check.json"
DEFAULT_BUDGET_S = 480.0  # two minutes of margin inside a 10-minute device call
KILL_GRACE_S = 3.0  # SIGTERM, then this long, then SIGKILL


class Interrupted(Exception):
    """SIGTERM or SIGINT reached the orchestrator."""


# ---- the orchestrator ------------------------------------------------------------------

class Check:
    """One run: the sections, the budget, the report and where it is written."""

    def __init__(self, sections, out: Path, budget_s: float, data_dir: str | None,
                 work_dir: Path, dry_run: bool, kill_grace_s: float = KILL_GRACE_S,
                 command: str | None = None):
        self.sections = sections
        self.out, self.work_dir = out, work_dir
        self.budget_s, self.data_dir, self.dry_run = budget_s, data_dir, dry_run
        self.kill_grace_s = kill_grace_s
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.report = {
            "format": FORMAT,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command, "budget_s": budget_s, "dry_run": dry_run,
            "git": git_facts(), "finished": False, "elapsed_s": 0.0,
            "device": {}, "copy_bandwidth_GBps": None,
            "sections": {s.name: {"status": "pending", "what": s.what} for s in sections},
            "targets": [],
        }

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - self.started, 2)
        if not self.dry_run:
            self.report["targets"] = target_checks.evaluate(self.report["sections"])
        write_json_atomic(self.out / JSON_NAME, self.report)

    def run(self) -> int:
        self.save()
        interrupted = None
        for i, section in enumerate(self.sections):
            entry = self.report["sections"][section.name]
            if interrupted:
                entry.update(status="not run", reason="the check was interrupted")
                continue
            try:
                reserve = sum(s.min_s for s in self.sections[i + 1:])
                timeout = section_timeout(self.remaining(), section.cap_s, section.min_s,
                                          reserve)
                if timeout is None:
                    entry.update(status="skipped", reason=(
                        f"budget: {max(0.0, self.remaining()):.0f} s left of "
                        f"{self.budget_s:.0f}, the section needs {section.min_s:.0f} s"))
                else:
                    self.run_section(section, entry, timeout)
                    self.after_section(section, entry)
                self.save()
                self.progress(section, entry)
            except Interrupted as why:
                interrupted = str(why)
                entry.update(status="interrupted", reason=interrupted)
        # The last write and the table, whatever arrives now.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.report["finished"] = interrupted is None
        self.save()
        print_table(self.report, self.sections, self.out / JSON_NAME)
        return 130 if interrupted else 0

    def run_section(self, section, entry: dict, timeout: float) -> None:
        """Run one section's process for at most ``timeout`` seconds; fill ``entry``."""
        partial = self.work_dir / f"{section.name}.partial.json"
        partial.unlink(missing_ok=True)
        spec = {"section": section.name, "timeout_s": timeout, "budget_s": soft_budget(timeout),
                "data_dir": self.data_dir, "work_dir": str(self.work_dir),
                "out_dir": str(self.out), "partial_path": str(partial),
                "earlier": {name: e.get("result") for name, e in
                            self.report["sections"].items() if e.get("result")}}
        spec_path = self.work_dir / f"{section.name}.context.json"
        write_json_atomic(spec_path, spec)
        command = [sys.executable, str(Path(__file__).resolve()), "--section", section.name,
                   "--context", str(spec_path)] + (["--dry-run"] if self.dry_run else [])
        log_name = f"{section.name}.log"
        started = time.monotonic()
        with open(self.out / log_name, "wb") as log:
            log.write(f"$ {' '.join(command)}\n(timeout {timeout:.0f} s)\n".encode())
            log.flush()
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=REPO, env=child_env(),
                                     process_group=0, preexec_fn=die_with_parent)
            entry.update(status="running", timeout_s=round(timeout, 1), log=log_name,
                         pid=child.pid, started_at_s=round(started - self.started, 2))
            self.save()
            timed_out = False
            try:
                returncode = child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                returncode = self.kill(child)
            except Interrupted:
                self.kill(child)
                raise
            finally:
                entry["seconds"] = round(time.monotonic() - started, 2)
                entry["returncode"] = child.returncode
                saved_status = read_partial(entry, partial)
        entry.update(classify(returncode, timed_out, saved_status, timeout,
                              self.out / log_name))

    def kill(self, child) -> int:
        """End ``child`` and everything in its process group: SIGTERM, then SIGKILL."""
        for sig, wait in ((signal.SIGTERM, self.kill_grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(child.pid, sig)
            except ProcessLookupError:
                pass
            try:
                return child.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        return child.returncode if child.returncode is not None else -9

    def after_section(self, section, entry: dict) -> None:
        """Lift what the report's header shows (the device) out of the environment."""
        if section.name == "environment" and isinstance(entry.get("result"), dict):
            result = entry["result"]
            if isinstance(result.get("device"), dict):
                self.report["device"] = result["device"]
            self.report["copy_bandwidth_GBps"] = result.get("copy_bandwidth_GBps")

    def progress(self, section, entry: dict) -> None:
        seconds = entry.get("seconds")
        took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
        why = entry.get("reason") or entry.get("error") or ""
        print(f"[gpu-check {time.monotonic() - self.started:6.1f}s] {section.name}: "
              f"{entry['status']}{took}" + (f" ({why.splitlines()[0][:120]})" if why else ""),
              flush=True)


def read_partial(entry: dict, partial: Path) -> str | None:
    """Merge what the section last saved into ``entry``; the status it saved."""
    try:
        saved = json.loads(partial.read_text())
    except (OSError, ValueError):
        return None
    entry["result"] = saved.get("result") or {}
    for key in ("reason", "error", "traceback_tail"):
        if saved.get(key):
            entry[key] = saved[key]
    return saved.get("status")


def section_timeout(remaining: float, cap: float, minimum: float,
                    reserve: float) -> float | None:
    """Seconds a section may run: its cap, within what is left after keeping ``reserve``
    (the later sections' minimums); an earlier section may still take its own minimum
    from that reserve (it is the more valuable). None when not even its minimum is left."""
    available = remaining - reserve
    if available < minimum:
        available = remaining
    timeout = min(cap, available)
    return timeout if timeout >= minimum else None


def classify(returncode, timed_out: bool, saved_status, timeout: float, log: Path) -> dict:
    """The section's status from how its process ended and what it last saved."""
    if timed_out:
        return {"status": "timeout",
                "reason": f"killed at its {timeout:.0f} s timeout; the result holds what it "
                          "saved before"}
    if saved_status in ("ok", "skipped"):
        if returncode == 0:
            return {"status": saved_status}
        # Finished and saved, then died on the way out (a CUDA teardown, say).
        return {"status": saved_status, "exit_note": f"the process exited with status "
                f"{returncode} after saving its result"}
    if saved_status == "failed":
        return {"status": "failed"}
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        why = f"the process died of {name}"
    else:
        why = f"the process exited with status {returncode} without a result"
    return {"status": "crashed", "error": why, "log_tail": tail(log)}


def tail(path: Path, lines: int = 25, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    text = "\n".join(text.splitlines()[-lines:])
    return text[-chars:]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # a killed section's log holds what it printed
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "")
                                                       .split(os.pathsep) if p])
    return env


def git_facts() -> dict:
    """The commit measured, where the tree has its .git (the device's copy may not)."""
    facts = {"commit": None, "modified_files": None}
    try:
        facts["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO,
                                         capture_output=True, text=True,
                                         timeout=5).stdout.strip() or None
        if facts["commit"]:
            status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                                    capture_output=True, text=True, timeout=10).stdout
            facts["modified_files"] = len(status.splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    return facts


# ---- the table ---------------------------------------------------------------------------

def print_table(report: dict, sections, json_path: Path) -> None:
    """Sections with status, time and figures, then the targets: printed last, since the
    device tool returns the end of the output."""
    rows = []
    for section in sections:
        entry = report["sections"].get(section.name, {})
        rows.append((section.name, entry.get("status", "?"),
                     f"{entry['seconds']:.1f}" if "seconds" in entry else "-",
                     f"{entry['timeout_s']:.0f}" if "timeout_s" in entry else "-",
                     summarize(section, entry)))
    width = max([len(r[0]) for r in rows] + [7])
    print()
    print(f"{'section':<{width}}  {'status':<11} {'seconds':>7} {'timeout':>7}  summary")
    for name, status, seconds, timeout, text in rows:
        print(f"{name:<{width}}  {status:<11} {seconds:>7} {timeout:>7}  {text}")
    targets = report.get("targets") or []
    if targets:
        print("\ntargets (issue 12):")
        for t in targets:
            mark = {True: "PASS", False: "FAIL"}.get(t.get("pass"), "n/a ")
            print(f"  {mark}  {t['name']}: {t.get('measured') or t.get('why') or ''}")
    print(f"\nelapsed {report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget; "
          f"JSON: {json_path}")


def summarize(section, entry: dict) -> str:
    """The section's own one-line summary, or why there is none."""
    why = entry.get("reason") or entry.get("error")
    text = ""
    if entry.get("result"):
        try:
            module = importlib.import_module(section.module)
            text = module.summary(entry)
        except Exception as e:  # a summary bug must not cost the table
            text = f"(no summary: {type(e).__name__}: {e})"
    if why and entry.get("status") != "ok":
        text = f"{why.splitlines()[0][:100]}" + (f"; {text}" if text else "")
    return text[:160]


# ---- a section's own process -------------------------------------------------------------

def run_child(name: str, context_path: str, dry_run: bool) -> int:
    """The child side: run section ``name`` and save how it ended."""
    section = registry(dry_run)[name]
    ctx = Context.load(context_path)
    ctx.save("running")
    ctx.log(f"started; timeout {ctx.timeout_s:.0f} s, planning within {ctx.budget_s:.0f} s")
    try:
        module = importlib.import_module(section.module)
        getattr(module, section.function)(ctx)
    except SectionSkipped as why:
        ctx.log(f"skipped: {why}")
        ctx.save("skipped", reason=str(why))
        return 0
    except BaseException as e:  # recorded with its traceback; the orchestrator goes on
        entry = error_entry(e)
        ctx.save("failed", **entry)
        print(entry["traceback_tail"], file=sys.stderr, flush=True)
        return 1
    ctx.save("ok")
    ctx.log("done")
    return 0


# ---- the command line --------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "."),
                   help="where gpu-check.json and the logs go (default $OUT, else .)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help=f"seconds for every section together (default {DEFAULT_BUDGET_S:.0f}: "
                        "two minutes of margin in a 10-minute call)")
    p.add_argument("--data-dir", default=None,
                   help="the MNIST .gz files (default $GPUBP_TEST_MNIST, else .mnist)")
    p.add_argument("--sections", default=None,
                   help="comma-separated sections, in the order to run (default: all)")
    p.add_argument("--dry-run", action="store_true",
                   help="run fake sections (sleep, crash, hang...): the orchestration alone")
    p.add_argument("--source", default=None,
                   help="the commit measured, for the report (default: git rev-parse HEAD, "
                        "where the tree has its .git; the device's copy has none)")
    p.add_argument("--work-dir", default=None, help="scratch files (default: a temp dir)")
    p.add_argument("--kill-grace-s", type=float, default=KILL_GRACE_S, help=argparse.SUPPRESS)
    p.add_argument("--section", help=argparse.SUPPRESS)  # the child side
    p.add_argument("--context", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.section:
        return run_child(args.section, args.context, args.dry_run)
    known = registry(args.dry_run)
    default = DEFAULT_FAKE_ORDER if args.dry_run else tuple(s.name for s in SECTIONS)
    names = [n.strip() for n in args.sections.split(",") if n.strip()] if args.sections \
        else list(default)
    unknown = [n for n in names if n not in known]
    if unknown or len(set(names)) != len(names):
        print(f"--sections: unknown or repeated {unknown or names}; known: "
              f"{', '.join(known)}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()  # the sections run in the repository's root
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir).resolve() if args.work_dir else \
        Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    data_dir = str(Path(args.data_dir or os.environ.get("GPUBP_TEST_MNIST") or ".mnist")
                   .resolve())
    command = "PYTHONPATH=. python bench/gpu_check.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    check = Check([known[n] for n in names], out, args.budget_s, data_dir, work,
                  args.dry_run, args.kill_grace_s, command.strip())
    check.report["source"] = args.source or check.report["git"]["commit"]

    def interrupt(signum, frame):
        # Once: a second signal must not cut short the kill and the last write.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Interrupted(f"the orchestrator got {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        return check.run()
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

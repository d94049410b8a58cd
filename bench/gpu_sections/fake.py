"""--dry-run's sections: each behaves as a real one may on a device (finishes, raises,
dies of a signal, hangs, lacks what it needs), in a fraction of a second and with no GPU,
so that the orchestration is tested where there is none."""

from __future__ import annotations

import os
import signal
import sys
import time

from bench.gpu_sections import SectionSkipped


def ok(ctx) -> None:
    print(f"fake section {ctx.name}: measuring", flush=True)
    print("a line on stderr", file=sys.stderr, flush=True)
    ctx.result["figure"] = 42.0
    ctx.save()


def crash(ctx) -> None:
    ctx.result["before_the_crash"] = 1.0
    ctx.save()
    raise RuntimeError("fake failure inside a section")


def segv(ctx) -> None:
    ctx.result["before_the_fault"] = 1.0
    ctx.save()
    print("about to die of SIGSEGV", flush=True)
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)  # the signal is delivered before this returns


def hang(ctx) -> None:
    ctx.result["partial"] = "saved before hanging"
    ctx.save()
    print("hanging", flush=True)
    while True:
        time.sleep(0.1)


def stubborn(ctx) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # only SIGKILL ends it
    hang(ctx)


def skip(ctx) -> None:
    raise SectionSkipped("fake: this machine lacks what the section needs")


def budget(ctx) -> None:
    ctx.result.update(timeout_s=ctx.timeout_s, budget_s=ctx.budget_s, left_s=ctx.left())
    ctx.save()


def slow(ctx) -> None:
    time.sleep(1.0)
    ctx.result["slept_s"] = 1.0


def summary(entry: dict) -> str:
    result = entry.get("result") or {}
    return ", ".join(f"{k} {v}" for k, v in result.items())

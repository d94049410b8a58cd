"""One peer at one configuration, in a process of its own (started by bench.compare).

    python -m bench.worker '{"peer": "sklearn", "point": {...}, "data": "DIR"}'

A process per run makes each peak-memory figure that run's own, and keeps thread pools
and allocators from carrying over between peers. DIR holds X.npy (N, n_in) float32 and
y.npy (N,) int64. The last line printed is ``RESULT {json}``: ``status`` "measured" with
the peer's figures, or "skipped"/"failed" with a ``reason``.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import traceback
from pathlib import Path

RESULT_PREFIX = "RESULT "


def run_job(job: dict) -> dict:
    """Check the peer, load the data, train and measure; never raises for a peer's failure."""
    from bench.peers import PEERS, PeerUnavailable

    peer = PEERS[job["peer"]]
    try:
        module = importlib.import_module(peer.module)
        versions = module.check(**peer.options)
    except ImportError as e:
        return {"status": "skipped", "reason": f"not installed ({e})"}
    except PeerUnavailable as e:
        return {"status": "skipped", "reason": str(e)}

    import numpy as np

    X = np.load(Path(job["data"]) / "X.npy")
    y = np.load(Path(job["data"]) / "y.npy")
    rss_before = current_rss_bytes()
    try:
        result = module.run(X, y, job["point"], **peer.options)
    except PeerUnavailable as e:
        return {"status": "skipped", "reason": str(e), "versions": versions}
    except Exception as e:  # reported as failed, with the error; never turned into a number
        return {"status": "failed", "reason": f"{type(e).__name__}: {e}", "versions": versions,
                "traceback": traceback.format_exc(limit=6)}
    return {"status": "measured", **result, "versions": versions,
            "rss_before_bytes": rss_before, "peak_rss_bytes": peak_rss_bytes()}


def peak_rss_bytes() -> int:
    """The most resident memory this process has held since it started.

    Linux: VmHWM of /proc/self/status. Not ru_maxrss there: Linux carries it across
    exec, so a worker would inherit the runner's peak (the whole MNIST array) at fork.
    Elsewhere ru_maxrss (macOS reports bytes, the rest KiB).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def current_rss_bytes() -> int | None:
    """Resident memory now, from /proc (None where there is no /proc)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def main(argv=None) -> None:
    job = json.loads((argv if argv is not None else sys.argv[1:])[0])
    print(RESULT_PREFIX + json.dumps(run_job(job)), flush=True)


if __name__ == "__main__":
    main()

"""The child side of the fault-injection harness of tests/test_hostile_inputs.py.

As a script: ``python hostile_worker.py`` with, on stdin, the JSON
``{"limit": bytes, "timeout": seconds, "cases": [{"id", "loader", "path", "kwargs"}]}``.

RLIMIT_AS is set to ``limit`` first, so that importing gpubp is itself checked under
it. Each case then runs in a fork of this process: one Python start for all cases, a
fresh copy of the address space for each, and a case that hangs (killed after
``timeout`` seconds) or dies takes no other case along. Writes JSON lines on stdout:
first ``{"import": "ok", "vm_size", "available"}`` (or ``"failed"`` with the error),
then one per case: ``{"id", "outcome", "type", "message", "seconds"}``, outcome one of
"returned", "raised" (``type``: the exception's class), "hung" or "crashed".
"""

import json
import os
import resource
import select
import signal
import sys
import time
from pathlib import Path

MESSAGE_CHARS = 4000


def loaders() -> dict:
    """Each loader under test as f(path, **kwargs); and a few that misbehave on purpose,
    for the harness's own test."""
    from gpubp.datasets import load_mnist, load_npz, parse_idx, read_idx
    from gpubp.datasets.npz import npz_names, read_npz
    from gpubp.errors import ModelFileError
    from gpubp.fileio import read_safetensors_bytes

    return {
        "read_idx": read_idx,
        "parse_idx": lambda path: parse_idx(Path(path).read_bytes(), path),
        "load_npz": load_npz,
        "read_npz": lambda path: read_npz(path, ("X", "y")),
        "npz_names": npz_names,
        "load_mnist": lambda path: load_mnist(path, download=False),
        "read_safetensors_bytes": lambda path, **kwargs: read_safetensors_bytes(
            path, error=ModelFileError, **kwargs),
        "return": lambda path: None,
        "raise": lambda path: (_ for _ in ()).throw(KeyError(path)),
        "hang": lambda path: time.sleep(3600),
        "allocate": lambda path: bytearray(2 << 30),  # over the 1 GiB address space
        "die": lambda path: os.kill(os.getpid(), signal.SIGKILL),
    }


def run_case(case: dict, known: dict, timeout: float) -> dict:
    """Run one case in a fork; its result comes back through a pipe."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()  # or the fork would write this process's buffer a second time
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            _call(case, known, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    reply = bytearray()
    try:
        while True:
            left = started + timeout - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"id": case["id"], "outcome": "hung", "type": None,
                        "message": f"no result in {timeout} s; killed",
                        "seconds": time.monotonic() - started}
            part = os.read(read_end, 1 << 16)
            if not part:
                break
            reply += part
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if reply:
        return json.loads(reply)
    how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
           else f"exit status {os.WEXITSTATUS(status)}")
    return {"id": case["id"], "outcome": "crashed", "type": None,
            "message": f"the case's process ended without a result ({how})",
            "seconds": time.monotonic() - started}


def _call(case: dict, known: dict, write_end: int) -> None:
    started = time.monotonic()
    try:
        known[case["loader"]](case["path"], **case.get("kwargs", {}))
        outcome, kind, message = "returned", None, None
    except BaseException as e:  # noqa: BLE001 - the outcome to report, whatever it is
        outcome, kind, message = "raised", type(e).__name__, str(e)[:MESSAGE_CHARS]
    reply = json.dumps({"id": case["id"], "outcome": outcome, "type": kind,
                        "message": message, "seconds": time.monotonic() - started}).encode()
    while reply:
        reply = reply[os.write(write_end, reply):]


def main() -> None:
    request = json.loads(sys.stdin.read())
    resource.setrlimit(resource.RLIMIT_AS, (request["limit"], request["limit"]))
    try:
        known = loaders()
        from gpubp.fileio import available_memory
    except BaseException as e:  # noqa: BLE001 - reported: gpubp does not fit under the limit
        print(json.dumps({"import": "failed", "error": f"{type(e).__name__}: {e}"}), flush=True)
        return
    with open("/proc/self/status") as f:
        vm_size = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")),
                       None)
    print(json.dumps({"import": "ok", "vm_size": vm_size, "available": available_memory()}),
          flush=True)
    for case in request["cases"]:
        print(json.dumps(run_case(case, known, request["timeout"])), flush=True)


if __name__ == "__main__":
    main()

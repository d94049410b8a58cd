"""Run under ``mpiexec -n N python tests/distributed_worker.py MODE [--xp numpy|cupy]``.

Modes:
  collectives  every collective against its definition; prints "OK rank r" per rank.
  raise, kill, hang, exit, finish
               rank 1 fails at step 3 (raises / SIGKILLs itself / sleeps / sys.exit(3)
               without finish / finish(3)) while the others go on reducing, deaf to
               SIGTERM and SIGINT: the job must end non-zero within the failure bound
               and no rank may print "done".
  bench        time allreduce_sum_ of the gradient sizes of 784-800-10 and
               784-1024-1024-10 (float32); prints one JSON line on rank 0.
"""

import contextlib
import json
import os
import platform
import signal
import statistics
import sys
import time

import numpy as np

from gpubp.distributed import (
    DistributedError,
    get_communicator,
    gradient_bytes,
    shard_bounds,
)

FAILING_RANK = 1
FAIL_AT = 3


def main(argv):
    mode = argv[0]
    xp = np
    if "--xp" in argv and argv[argv.index("--xp") + 1] == "cupy":
        import cupy as xp
    comm = get_communicator("auto")
    if xp is not np:
        comm.use_local_device()
    {"collectives": collectives, "bench": bench}.get(mode, failure)(comm, xp, mode)


def collectives(comm, xp, mode):
    r, n = comm.rank, comm.size
    assert comm.kind == "mpi" and n >= 2, (comm.kind, n)
    assert comm.is_root == (r == 0)
    assert 0 <= comm.local_rank < comm.local_size <= n

    # allreduce_sum_: against the sum of every rank's input (each rank can rebuild them),
    # and bit-identical on every rank (all ranks must then take the same step).
    for dtype, rtol in ((np.float32, 1e-6), (np.float64, 1e-14)):
        for count in (1, 1000, 636_010):
            inputs = [np.random.default_rng([k, count]).standard_normal(count).astype(dtype)
                      for k in range(n)]
            buffer = xp.asarray(inputs[r].copy())
            assert comm.allreduce_sum_(buffer) is buffer
            got = buffer.get() if xp is not np else buffer
            expected = np.sum(np.stack(inputs).astype(np.float64), axis=0)
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * n)
            everyone = comm._comm.allgather(got.tobytes())
            assert all(b == everyone[0] for b in everyone), "ranks differ after allreduce"
    if xp is not np:
        assert comm.capturable == (comm._device[0] == "nccl")
    matrix = xp.ones((3, 4), np.float64)  # any C-contiguous shape reduces as a whole
    comm.allreduce_sum_(matrix)
    assert float(matrix.sum()) == 12 * n
    for bad, error in ((np.ones(4, np.int64), TypeError), (np.ones((4, 4))[:, 1], ValueError),
                       ([1.0, 2.0], TypeError)):
        try:
            comm.allreduce_sum_(bad)
        except error as e:
            assert str(e).startswith("buffer:"), e
        else:
            raise AssertionError(f"allreduce_sum_ accepted {bad!r}")

    sums = comm.allreduce_scalars([r, 1.0, 0.25, 1e16, 1.0])
    assert sums == [n * (n - 1) / 2, n, 0.25 * n, 1e16 * n, n], sums
    assert comm.allreduce_scalars([]) == []

    root = n - 1
    got = comm.broadcast_object({"path": f"/ckpt/from-{r}", "seed": r} if r == root else None,
                                root=root)
    assert got == {"path": f"/ckpt/from-{root}", "seed": root}, got

    comm.check_same("seed", 1234)
    comm.check_same("sizes", np.array([784, 800, 10]))
    try:
        comm.check_same("rank", r)
    except DistributedError as e:
        assert str(e).startswith("rank: the ranks disagree") and "rank 1: 1" in str(e), e
    else:
        raise AssertionError("check_same missed a disagreement")

    # shard: every rank's slices of every batch tile the batch, in rank order.
    for n_rows, batch in ((10, 3), (7, 7), (100, 32), (5, 8), (1, 1), (2, 5)):
        for b in range(-(-n_rows // batch)):
            mine = comm.shard(n_rows, batch, b)
            slices = comm._comm.allgather(mine)
            rows = min(batch, n_rows - b * batch)
            assert slices == [shard_bounds(rows, n, k) for k in range(n)]
            assert slices[0][0] == 0 and slices[-1][1] == rows
            assert all(slices[k][1] == slices[k + 1][0] for k in range(n - 1))

    facts = comm.describe(device=f"cpu:{r}")
    assert facts["size"] == n and [x["rank"] for x in facts["ranks"]] == list(range(n))
    assert facts["ranks"][r]["device"] == f"cpu:{r}" and facts["hosts"]
    assert facts["library"]
    with comm.watch("a slow phase", timeout=None):
        comm.barrier()
    assert comm.finish(0) == 0
    print(f"OK rank {r} {json.dumps(facts['ranks'][r])}", flush=True)


def failure(comm, xp, mode):
    if comm.rank != FAILING_RANK:
        # As under the trainer's stop_requests(): SIGTERM and SIGINT only set a flag, so the
        # launcher's SIGTERM alone would not end these ranks.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: None)
    # In "exit", the others wait unwatched, so that only the failing rank's exit barrier
    # can end the job.
    with comm.watch("the loop", timeout=None) if mode == "exit" else _nothing():
        _steps(comm, xp, mode)
    print(f"done rank {comm.rank}", flush=True)


def _steps(comm, xp, mode):
    buffer = xp.ones(1000, np.float32)
    for step in range(10_000):
        if comm.rank == FAILING_RANK and step == FAIL_AT:
            print(f"failing at {time.time():.3f}", flush=True)
            if mode == "raise":
                raise RuntimeError("injected failure")
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hang":
                time.sleep(600)
            if mode == "exit":
                sys.exit(3)
            if mode == "finish":
                sys.exit(comm.finish(3))
            raise SystemExit(f"unknown mode {mode!r}")
        comm.allreduce_sum_(buffer)
        buffer[...] = 1
        time.sleep(0.001)


def bench(comm, xp, mode):
    """Median seconds per allreduce_sum_ of each net's float32 gradient buffer."""
    calls = int(os.environ.get("GPUBP_BENCH_CALLS", "300"))
    nets = {"784-800-10": (784, 800, 10), "784-1024-1024-10": (784, 1024, 1024, 10)}
    results = {}
    for name, sizes in nets.items():
        nbytes = gradient_bytes(sizes, np.float32)
        buffer = xp.zeros(nbytes // 4, np.float32)
        times = []
        for i in range(calls + 20):
            comm.barrier()  # every rank starts the call together
            start = time.perf_counter()
            comm.allreduce_sum_(buffer)
            if xp is not np:
                xp.cuda.get_current_stream().synchronize()
            if i >= 20:  # the first calls set up connections and fault in pages
                times.append(time.perf_counter() - start)
        worst = comm._comm.allreduce(statistics.median(times), op=_max()) \
            if comm.size > 1 else statistics.median(times)
        results[name] = {"bytes": nbytes, "median_s": worst,
                         "p10_s": float(np.percentile(times, 10)),
                         "p90_s": float(np.percentile(times, 90)),
                         "GB_per_s_algbw": nbytes / worst / 1e9 if worst > 0 else None}
    if comm.is_root:
        print(json.dumps({"ranks": comm.size, "calls": calls, "cpu": _cpu_model(),
                          "python": platform.python_version(), "results": results}))


def _nothing():
    return contextlib.nullcontext()


def _max():
    from mpi4py import MPI

    return MPI.MAX


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main(sys.argv[1:])

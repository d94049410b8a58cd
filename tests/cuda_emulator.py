"""Run gpubp's CUDA kernels on the CPU, one host thread per CUDA thread, for tests.

g++ builds each kernel source with ``cuda_emulation.h`` into a shared library. A launch
runs the grid's blocks one after another; each block's threads are Python threads that
set their thread and block index and call the kernel through ctypes (which releases the
GIL), so barriers and warp shuffles meet as on a GPU. :func:`emulated_cupy` and
:class:`DeviceArray` stand in for CuPy, so ``gpubp.cuda.kernels``' own wrappers, launch
arithmetic included, run unchanged on host memory (:func:`emulate` points them there), and
the stand-in counts what they allocate.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from gpubp.cuda import compile as cuda_compile
from gpubp.cuda import kernels as cuda_kernels

HERE = Path(__file__).resolve().parent
SCALAR_CTYPES = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
                 np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.float32): ctypes.c_float,
                 np.dtype(np.float64): ctypes.c_double}


class DeviceArray(np.ndarray):
    """A host array that looks enough like a CuPy array for the wrappers' bookkeeping."""

    @property
    def data(self):
        return SimpleNamespace(ptr=self.ctypes.data)

    def get(self, stream=None):
        """The host copy, as cupy.ndarray.get() returns it."""
        return np.array(self)

    def set(self, host, stream=None):
        """Copy ``host`` in, as cupy.ndarray.set() does."""
        self[...] = host


def device(a) -> DeviceArray:
    return np.require(a, requirements="C").view(DeviceArray)


def emulated_cupy():
    """The few CuPy names gpubp.cuda.kernels and its tests use, on host memory.
    ``allocations`` lists (function, shape) for every new device array they made (a pool
    allocation on CuPy). ``empty`` fills floats with NaN, as the GPU tests poison CuPy's
    pool, so that an output element a kernel never writes shows."""
    allocations = []

    def allocating(name, make):
        def function(*args, **kwargs):
            a = device(make(*args, **kwargs))
            allocations.append((name, a.shape))
            return a
        return function

    def ascontiguousarray(a, dtype=None):
        if isinstance(a, DeviceArray) and a.flags.c_contiguous and dtype in (None, a.dtype):
            return a
        return allocating("ascontiguousarray", np.ascontiguousarray)(a, dtype=dtype)

    def poisoned(a):
        if a.dtype.kind in "fc":
            a.fill(np.nan)
        return a

    return SimpleNamespace(
        ndarray=DeviceArray,
        allocations=allocations,
        ascontiguousarray=ascontiguousarray,
        asarray=allocating("asarray", np.array),
        empty=allocating("empty", lambda shape, dtype=np.float64, order="C":
                         poisoned(np.empty(shape, dtype, order=order))),
        zeros=allocating("zeros", lambda shape, dtype=np.float64, order="C":
                         np.zeros(shape, dtype, order=order)),
        full=allocating("full", lambda shape, value, dtype=None, order="C":
                        np.full(shape, value, dtype, order=order)),
        empty_like=allocating("empty_like", lambda a, *args, **kwargs:
                              poisoned(np.empty_like(a, *args, **kwargs))),
        full_like=allocating("full_like", np.full_like),
        matmul=np.matmul,
        cuda=SimpleNamespace(runtime=SimpleNamespace(getDevice=lambda: 0)),
    )


fake_cupy = emulated_cupy  # the name tests/test_kernels_compile.py imports


def emulate(monkeypatch, function, cupy, sm_count=2):
    """Point gpubp.cuda.kernels at the emulation for one test: ``cupy`` (an
    :func:`emulated_cupy`) as ``import cupy``, ``function`` (e.g. :meth:`Emulator.function`)
    as its kernel loader, ``sm_count`` "SMs" (few blocks: each costs host threads), and no
    default scratch yet."""
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(cuda_kernels, "_function", function)
    monkeypatch.setattr(cuda_kernels, "_sm_count", lambda: sm_count)
    monkeypatch.setattr(cuda_kernels, "_default_scratch", {})


def compiler():
    return shutil.which("g++") or shutil.which("c++")


class Emulator:
    """Kernel libraries built into ``build_dir``; :meth:`function` mimics
    gpubp.cuda.kernels._function."""

    def __init__(self, build_dir: Path):
        self.libraries = {}
        builds = {}
        for name in cuda_compile.SOURCES:  # all at once: the build is most of a test run's setup
            source = build_dir / f"{Path(name).stem}.cpp"
            source.write_text(cuda_compile.kernel_source(name))
            library = build_dir / f"{Path(name).stem}.so"
            builds[name] = library, subprocess.Popen(
                [compiler(), "-std=c++17", "-O1", "-fPIC", "-shared", "-pthread",
                 "-Wno-unknown-pragmas", "-include", str(HERE / "cuda_emulation.h"),
                 str(source), str(HERE / "cuda_emulation.cpp"), "-o", str(library)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (library, build) in builds.items():
            _, errors = build.communicate()
            if build.returncode != 0:
                raise RuntimeError(f"g++ failed on {name}:\n{errors}")
            self.libraries[name] = ctypes.CDLL(str(library))

    def function(self, name: str, source: str):
        library = self.libraries[source]
        kernel = getattr(library, name)

        def launch(grid, block, args):
            grid, block = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
            kernel.restype = None
            kernel.argtypes = [ctypes.c_void_p if isinstance(a, np.ndarray)
                               else SCALAR_CTYPES[np.asarray(a).dtype] for a in args]
            values = [a.ctypes.data if isinstance(a, np.ndarray) else a.item() for a in args]
            for bz in range(grid[2]):
                for by in range(grid[1]):
                    for bx in range(grid[0]):
                        self._run_block(library, kernel, values, grid, block, (bx, by, bz))

        return launch

    def _run_block(self, library, kernel, values, grid, block, block_index):
        library.gpubp_begin_block(*grid, *block)

        def thread(linear):
            tx, rest = linear % block[0], linear // block[0]
            library.gpubp_set_thread(tx, rest % block[1], rest // block[1], *block_index)
            kernel(*values)

        failures = _WORKERS.run(block[0] * block[1] * block[2], thread)
        if failures is None:
            raise RuntimeError(f"block {block_index} deadlocked (a barrier not all reached)")
        library.gpubp_end_block()
        if failures:
            raise failures[0]


class _WorkerPool:
    """Host threads kept between blocks (starting 256 Python threads per block cost more
    than the kernels): :meth:`run` hands thread i the call ``job(i)`` for i < n, all at once
    (they meet at the kernel's barriers), and waits for them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.wake: list[threading.Event] = []
        self.job = None
        self.remaining = 0
        self.done = threading.Event()
        self.failures: list = []

    def run(self, n: int, job, timeout: float = 60.0):
        """The exceptions raised (a list), or None when the threads did not all finish."""
        while len(self.wake) < n:
            self.wake.append(threading.Event())
            threading.stack_size(256 * 1024)
            threading.Thread(target=self._worker, args=(len(self.wake) - 1,), daemon=True).start()
        self.job, self.remaining, self.failures = job, n, []
        self.done.clear()
        for i in range(n):
            self.wake[i].set()
        return list(self.failures) if self.done.wait(timeout) else None

    def _worker(self, index: int):
        while True:
            self.wake[index].wait()
            self.wake[index].clear()
            try:
                self.job(index)
            except Exception as e:  # pragma: no cover - reported by run
                self.failures.append(e)
            with self.lock:
                self.remaining -= 1
                if self.remaining == 0:
                    self.done.set()


_WORKERS = _WorkerPool()

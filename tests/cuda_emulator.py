"""Run gpubp's CUDA kernels on the CPU, one host thread per CUDA thread, for tests.

g++ builds each kernel source with ``cuda_emulation.h`` into a shared library. A launch
runs the grid's blocks one after another; each block's threads are Python threads that
set their thread and block index and call the kernel through ctypes (which releases the
GIL), so barriers and warp shuffles meet as on a GPU. :func:`fake_cupy` and
:class:`DeviceArray` stand in for CuPy, so ``gpubp.cuda_kernels``' own wrappers, launch
arithmetic included, run unchanged on host memory.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from gpubp import cuda_kernels

HERE = Path(__file__).resolve().parent
SCALAR_CTYPES = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
                 np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.float32): ctypes.c_float,
                 np.dtype(np.float64): ctypes.c_double}


class DeviceArray(np.ndarray):
    """A host array that looks enough like a CuPy array for the wrappers' bookkeeping."""

    @property
    def data(self):
        return SimpleNamespace(ptr=self.ctypes.data)


def device(a) -> DeviceArray:
    return np.require(a, requirements="C").view(DeviceArray)


def fake_cupy():
    """The few CuPy names gpubp.cuda_kernels uses, on host memory."""
    return SimpleNamespace(
        ndarray=DeviceArray,
        ascontiguousarray=lambda a, dtype=None: device(np.asarray(a, dtype=dtype)),
        empty=lambda shape, dtype=np.float64: device(np.empty(shape, dtype)),
        empty_like=lambda a: device(np.empty_like(a)),
        cuda=SimpleNamespace(runtime=SimpleNamespace(getDevice=lambda: 0)),
    )


def compiler():
    return shutil.which("g++") or shutil.which("c++")


class Emulator:
    """Kernel libraries built into ``build_dir``; :meth:`function` mimics cuda_kernels._function."""

    def __init__(self, build_dir: Path):
        self.libraries = {}
        for name in cuda_kernels.SOURCES:
            source = build_dir / f"{Path(name).stem}.cpp"
            source.write_text(cuda_kernels.kernel_source(name))
            library = build_dir / f"{Path(name).stem}.so"
            done = subprocess.run(
                [compiler(), "-std=c++17", "-O1", "-fPIC", "-shared", "-pthread",
                 "-Wno-unknown-pragmas", "-include", str(HERE / "cuda_emulation.h"),
                 str(source), str(HERE / "cuda_emulation.cpp"), "-o", str(library)],
                capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"g++ failed on {name}:\n{done.stderr}")
            self.libraries[name] = ctypes.CDLL(str(library))
        self.launched = []

    def function(self, name: str, source: str):
        library = self.libraries[source]
        kernel = getattr(library, name)

        def launch(grid, block, args):
            self.launched.append(name)
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

    @staticmethod
    def _run_block(library, kernel, values, grid, block, block_index):
        library.gpubp_begin_block(*grid, *block)
        failures = []

        def thread(tx, ty, tz):
            try:
                library.gpubp_set_thread(tx, ty, tz, *block_index)
                kernel(*values)
            except Exception as e:  # pragma: no cover - reported below
                failures.append(e)

        threading.stack_size(256 * 1024)
        threads = [threading.Thread(target=thread, args=(tx, ty, tz))
                   for tz in range(block[2]) for ty in range(block[1]) for tx in range(block[0])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
            if t.is_alive():
                raise RuntimeError(f"block {block_index} deadlocked (a barrier not all reached)")
        library.gpubp_end_block()
        if failures:
            raise failures[0]

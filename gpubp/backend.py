"""The xp layer: one array module for the math, NumPy on CPU or CuPy on an NVIDIA GPU.

The network's math is written once against ``backend.xp``. CuPy is imported only here and
in :mod:`gpubp.cuda` (the kernels, cuBLAS) and :mod:`gpubp.step.cuda_step`, when used.

A backend is chosen by name: ``"numpy"``, ``"cupy"`` or ``"auto"``. ``"auto"`` (the
default) and ``None`` take the environment variable ``GPUBP_BACKEND`` when it is set;
otherwise CuPy when it imports and sees a CUDA device, else NumPy. Under an MPI launcher
the CuPy backend makes device ``local_rank % count`` current when it is first resolved,
so that each data-parallel rank on a host computes on a GPU of its own.
"""

from __future__ import annotations

import functools
import logging
import os

import numpy as np

from gpubp.errors import BackendError
from gpubp.fileio import available_memory

log = logging.getLogger("gpubp")

BACKEND_NAMES = ("auto", "numpy", "cupy")
ENV_VAR = "GPUBP_BACKEND"
# The process's rank among those on its host, as MPI launchers export it (Open MPI,
# MPICH and Intel MPI, Slurm): a data-parallel rank takes GPU local_rank % count.
LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID")


class Backend:
    """An array module (``xp``) with the few host/device moves the library needs."""

    def __init__(self, name: str, xp, device_name: str):
        self.name = name
        self.xp = xp
        self.device_name = device_name

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def asarray(self, a, dtype=None):
        """``a`` as an array of this backend (a copy only where needed)."""
        if self.is_gpu:
            return self.xp.asarray(a, dtype=dtype)
        return np.asarray(to_numpy(a), dtype=dtype)

    def free_memory(self) -> int | None:
        """Bytes that arrays of this backend may still take: the device's free memory and
        CuPy's pooled free blocks, or on NumPy :func:`gpubp.fileio.available_memory`."""
        if self.is_gpu:
            free, _ = self.xp.cuda.runtime.memGetInfo()
            return int(free) + int(self.xp.get_default_memory_pool().free_bytes())
        return available_memory()

    def check_memory(self, n_bytes: int, name: str, what: str) -> None:
        """Raise ValueError starting with ``name`` when ``what`` needs more than
        :meth:`free_memory`, before anything is allocated."""
        free = self.free_memory()
        if free is not None and n_bytes > free:
            where = f"free on {self.device_name}" if self.is_gpu else "this process may allocate"
            raise ValueError(f"{name}: {what} needs about {format_bytes(n_bytes)}, more than "
                             f"the {format_bytes(free)} {where}")

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on NumPy); use before reading a clock."""
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def __repr__(self) -> str:
        return f"Backend({self.name!r}, device={self.device_name!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Backend) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def format_bytes(n: int) -> str:
    """``n`` bytes as a short figure: '512 B', '3.2 MiB', '47.7 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def is_device_array(a) -> bool:
    """Whether ``a`` is a CuPy array (checked without importing cupy)."""
    return type(a).__module__.startswith("cupy")


def to_numpy(a) -> np.ndarray:
    """A NumPy array of ``a``, copying from the device when ``a`` lives on a GPU."""
    if isinstance(a, np.ndarray):
        return a
    if is_device_array(a):
        return a.get()  # device -> host copy
    return np.asarray(a)


def array_module(a):
    """The array module ``a`` lives on: cupy for a cupy array, else numpy."""
    if is_device_array(a):
        import cupy

        return cupy
    return np


def get_backend(name: str | Backend | None = None) -> Backend:
    """Resolve a backend name (see the module docstring) to a :class:`Backend`.

    Raises:
        ValueError: ``name`` is not one of ``"auto"``, ``"numpy"``, ``"cupy"``.
        BackendError: ``"cupy"`` was asked for and cannot work here; the message says why.
    """
    if isinstance(name, Backend):
        return name
    if name is None or name == "auto":
        name = os.environ.get(ENV_VAR) or "auto"
    if not isinstance(name, str) or name.lower() not in BACKEND_NAMES:
        raise ValueError(f"backend: expected one of {BACKEND_NAMES}, got {name!r}")
    return _resolve(name.lower())


@functools.lru_cache(maxsize=None)
def _resolve(name: str) -> Backend:
    if name == "numpy":
        return _numpy_backend()
    if name == "cupy":
        return _cupy_backend()
    try:
        backend = _cupy_backend()
        log.info("gpubp: backend auto -> cupy on %s", backend.device_name)
    except BackendError as why:
        backend = _numpy_backend()
        log.info("gpubp: backend auto -> numpy (%s)", why)
    return backend


def _numpy_backend() -> Backend:
    return Backend("numpy", np, "cpu")


def _cupy_backend() -> Backend:
    try:
        import cupy
    except ImportError as e:
        raise BackendError(
            "backend 'cupy': CuPy is not installed "
            "(pip install 'gpubp[cuda12]' or 'gpubp[cuda13]')"
        ) from e
    except Exception as e:  # a broken install: missing CUDA libraries and the like
        raise BackendError(f"backend 'cupy': CuPy failed to import: {e}") from e

    runtime = cupy.cuda.runtime
    try:
        count = runtime.getDeviceCount()
    except Exception as e:
        raise BackendError(f"backend 'cupy': {_explain_cuda_failure(runtime, e)}") from e
    if count < 1:
        raise BackendError("backend 'cupy': no CUDA device is visible")
    local_rank = launcher_local_rank()
    if local_rank is not None:  # before any array exists: `mpiexec -n N python script.py`
        cupy.cuda.Device(local_rank % count).use()
    props = runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return Backend("cupy", cupy, name.decode() if isinstance(name, bytes) else str(name))


def launcher_local_rank() -> int | None:
    """This process's rank on its host when an MPI launcher started it, else None."""
    for var in LOCAL_RANK_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _explain_cuda_failure(runtime, error: Exception) -> str:
    """Turn a CUDA runtime failure into 'no driver', 'driver too old' or 'no device'."""
    try:
        driver = runtime.driverGetVersion()
    except Exception:
        driver = 0
    try:
        needed = runtime.runtimeGetVersion()
    except Exception:
        needed = 0
    if driver == 0:
        return f"no NVIDIA driver found ({error})"
    if needed and driver < needed:
        return (
            f"the NVIDIA driver is too old: it supports CUDA {_cuda_version(driver)}, "
            f"CuPy needs CUDA {_cuda_version(needed)} ({error})"
        )
    return f"no usable CUDA device ({error})"


def cuda_versions() -> dict:
    """{"cupy", "cuda_runtime", "cuda_driver"} versions as strings; None where unavailable."""
    found = {"cupy": None, "cuda_runtime": None, "cuda_driver": None}
    try:
        import cupy

        found["cupy"] = cupy.__version__
        found["cuda_runtime"] = _cuda_version(cupy.cuda.runtime.runtimeGetVersion())
        found["cuda_driver"] = _cuda_version(cupy.cuda.runtime.driverGetVersion()) or None
    except Exception:  # not installed, or no driver: what is unknown stays None
        pass
    return found


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}" if v else ""

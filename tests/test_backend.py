"""The xp layer: choosing a backend, and clear reasons when CuPy cannot work."""

import logging
import sys
import types

import numpy as np
import pytest

import gpubp
from gpubp import backend
from gpubp.errors import BackendError


@pytest.fixture(autouse=True)
def fresh_resolution():
    backend._resolve.cache_clear()
    yield
    backend._resolve.cache_clear()


def probed_cupy(device_count=None, error=None, driver=12040, runtime=12090, used=None):
    """A stand-in cupy module for backend probing: its runtime reports the device count,
    error and versions a test needs, and it has no arrays (tests/cuda_emulator.py's
    emulated_cupy is the one with arrays)."""
    def get_device_count():
        if error:
            raise RuntimeError(error)
        return device_count

    runtime_api = types.SimpleNamespace(
        getDeviceCount=get_device_count, driverGetVersion=lambda: driver,
        runtimeGetVersion=lambda: runtime,
        getDeviceProperties=lambda i: {"name": b"Fake GPU"})
    current = [0]

    def device(i=None):
        def use():
            current[0] = i
            if used is not None:
                used.append(i)
        return types.SimpleNamespace(id=current[0] if i is None else i, use=use)

    cuda = types.SimpleNamespace(runtime=runtime_api, Device=device)
    module = types.ModuleType("cupy")
    module.cuda = cuda
    module.__version__ = "0.fake"
    return module


def test_numpy_backend():
    b = gpubp.get_backend("numpy")
    assert b.name == "numpy" and b.xp is np and b.device_name == "cpu" and not b.is_gpu
    assert gpubp.get_backend(b) is b
    assert gpubp.get_backend("NumPy") == b


def test_unknown_backend_names_the_argument():
    with pytest.raises(ValueError, match="backend: expected one of .*got 'jax'"):
        gpubp.get_backend("jax")


def test_environment_variable_chooses_the_backend(monkeypatch):
    monkeypatch.setenv("GPUBP_BACKEND", "numpy")
    assert gpubp.get_backend().name == "numpy"
    monkeypatch.setenv("GPUBP_BACKEND", "tpu")
    with pytest.raises(ValueError, match="backend"):
        gpubp.get_backend()


def test_environment_variable_applies_to_the_auto_default(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", probed_cupy(device_count=1))
    monkeypatch.setenv("GPUBP_BACKEND", "numpy")
    assert gpubp.MLP((2, 2)).backend.name == "numpy"  # backend="auto" by default
    monkeypatch.setenv("GPUBP_BACKEND", "cupy")
    assert gpubp.get_backend("numpy").name == "numpy"  # an explicit name wins


def test_cupy_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with pytest.raises(BackendError, match="CuPy is not installed .*gpubp\\[cuda12\\]"):
        gpubp.get_backend("cupy")


@pytest.mark.parametrize("kwargs,reason", [
    ({"error": "cudaErrorInsufficientDriver", "driver": 0}, "no NVIDIA driver found"),
    ({"error": "cudaErrorInsufficientDriver", "driver": 11080, "runtime": 12090},
     "driver is too old: it supports CUDA 11.8, CuPy needs CUDA 12.9"),
    ({"error": "cudaErrorNoDevice", "driver": 12090}, "no usable CUDA device"),
    ({"device_count": 0}, "no CUDA device is visible"),
])
def test_cupy_that_cannot_work_says_why(monkeypatch, kwargs, reason):
    monkeypatch.setitem(sys.modules, "cupy", probed_cupy(**kwargs))
    with pytest.raises(BackendError, match=reason):
        gpubp.get_backend("cupy")


def test_auto_falls_back_to_numpy_and_says_so_once(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "cupy", probed_cupy(device_count=0))
    with caplog.at_level(logging.INFO, logger="gpubp"):
        assert gpubp.get_backend("auto").name == "numpy"
        assert gpubp.get_backend("auto").name == "numpy"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "numpy" in lines[0] and "no CUDA device" in lines[0]


def test_auto_picks_a_working_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", probed_cupy(device_count=1))
    chosen = gpubp.get_backend("auto")
    assert chosen.name == "cupy" and chosen.device_name == "Fake GPU"


def test_to_numpy_and_array_module():
    a = np.arange(3)
    assert gpubp.to_numpy(a) is a
    assert gpubp.to_numpy([1, 2]).tolist() == [1, 2]
    assert backend.array_module(a) is np


@pytest.mark.parametrize("variables,want", [
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "5"}, [1]),  # Open MPI: local rank 5 of 4 GPUs
    ({"MPI_LOCALRANKID": "2"}, [2]),  # MPICH, Intel MPI
    ({"SLURM_LOCALID": "3"}, [3]),
    ({}, []),  # no launcher: the current device is left as it is
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "x"}, []),
])
def test_under_an_mpi_launcher_each_local_rank_takes_its_own_gpu(monkeypatch, variables, want):
    for var in backend.LOCAL_RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in variables.items():
        monkeypatch.setenv(var, value)
    used = []
    monkeypatch.setitem(sys.modules, "cupy", probed_cupy(device_count=4, used=used))
    assert backend.get_backend("cupy").is_gpu
    assert used == want

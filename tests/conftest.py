"""Shared fixtures: backends to test on, the real MNIST folder, small random nets, and the
CUDA kernels built for the CPU emulation. (Shared functions: tests/helpers.py.)"""

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
from cuda_emulator import Emulator, compiler
from helpers import QuietHandler

from gpubp.backend import get_backend
from gpubp.datasets import mnist
from gpubp.errors import BackendError

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def cupy_available() -> bool:
    try:
        get_backend("cupy")
    except BackendError:
        return False
    return True


HAVE_GPU = cupy_available()


def pytest_collection_modifyitems(config, items):
    if HAVE_GPU:
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def mnist_dir():
    """The real MNIST files, where this checkout sits beside the shared data."""
    import os

    path = Path(os.environ.get("GPUBP_TEST_MNIST", MNIST_DIR))
    if not (path / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {path}")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """gpubp's kernels built by g++ for tests/cuda_emulator.py, once a session."""
    if compiler() is None:
        pytest.skip("needs g++ to build the emulation")
    return Emulator(tmp_path_factory.mktemp("emulated_kernels"))


@pytest.fixture
def serve():
    """serve(folder, handler=QuietHandler) -> the base URL of an HTTP server on 127.0.0.1
    serving that folder (tests that download talk to it, never to the network)."""
    servers = []

    def start(folder, handler=QuietHandler):
        bound = functools.partial(handler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), bound)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """No $GPUBP_DATA, no mirrors from the environment, an empty cache under tmp_path."""
    monkeypatch.delenv(mnist.DATA_ENV, raising=False)
    monkeypatch.delenv(mnist.MIRRORS_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path

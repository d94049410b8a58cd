"""Shared fixtures of the pytest-benchmark suites in bench/."""

import pytest

from gpubp.backend import get_backend
from gpubp.errors import BackendError


@pytest.fixture(params=["numpy", "cupy"])
def backend(request):
    """Each backend this machine has; the others are skipped with the reason."""
    try:
        return get_backend(request.param)
    except BackendError as e:
        pytest.skip(str(e))

"""Arrays from other libraries through DLPack: PyTorch tensors, JAX arrays, and any object
with ``__dlpack__`` and ``__dlpack_device__``.

A tensor in host memory becomes a NumPy array, and one on a CUDA device a CuPy array,
both views of the tensor's own memory: nothing is copied. What the network's backend
then does with it is as for NumPy and CuPy input: a network on the same device uses the
view, a CuPy network copies host data to its device. Device data is never copied to the
host behind the caller's back: a CUDA tensor given to a NumPy network is a TypeError
saying what to do, as is a tensor on a device gpubp cannot read or of a dtype NumPy and
CuPy lack (bfloat16).

Outputs go back the same way, since NumPy and CuPy arrays export DLPack themselves:
``torch.from_dlpack(net.predict_proba(x))``.
"""

from __future__ import annotations

import numpy as np

from gpubp.backend import get_backend, is_device_array
from gpubp.errors import BackendError

# DLDeviceType values (dlpack.h) that gpubp reads.
CPU, CUDA, CUDA_HOST, CUDA_MANAGED = 1, 2, 3, 13
DEVICE_NAMES = {1: "cpu", 2: "cuda", 3: "cuda_host", 4: "opencl", 7: "vulkan", 8: "metal",
                9: "vpi", 10: "rocm", 11: "rocm_host", 12: "ext_dev", 13: "cuda_managed",
                14: "oneapi", 15: "webgpu", 16: "hexagon", 17: "maia"}


def is_dlpack(a) -> bool:
    """Whether ``a`` is a foreign DLPack producer: not a NumPy or CuPy array (those are
    read directly), but something with ``__dlpack__`` and ``__dlpack_device__``."""
    return (hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__")
            and not isinstance(a, np.ndarray) and not is_device_array(a))


def device_of(a) -> tuple[str, int]:
    """(device name, index) of a DLPack producer, e.g. ("cpu", 0) or ("cuda", 1)."""
    kind, index = a.__dlpack_device__()
    kind = int(kind)
    return DEVICE_NAMES.get(kind, f"device type {kind}"), int(index)


def as_array(a, name: str = "X", backend=None):
    """A NumPy (host) or CuPy (CUDA) view of the DLPack producer ``a``, without a copy.

    ``backend``: the :class:`~gpubp.backend.Backend` that will take the array, or None.
    Raises TypeError, starting with ``name``: CUDA data for a NumPy backend, a device
    gpubp cannot read, a CUDA device other than CuPy's current one, a dtype NumPy or
    CuPy cannot hold, or an export the producer refuses (a tensor that requires grad).
    """
    kind, index = (int(v) for v in a.__dlpack_device__())
    device = DEVICE_NAMES.get(kind, f"device type {kind}")
    if kind in (CPU, CUDA_HOST):  # pinned host memory reads as host memory
        return _convert(np.from_dlpack, a, name)
    if kind not in (CUDA, CUDA_MANAGED):
        raise TypeError(f"{name}: is on {device}:{index}, which gpubp cannot read; copy it to "
                        "the CPU (or a CUDA device) first, e.g. tensor.cpu()")
    if backend is not None and not backend.is_gpu:
        raise TypeError(f"{name}: is on cuda:{index} and the network on the NumPy backend "
                        "(CPU); pass it on the CPU (tensor.cpu() in PyTorch, "
                        "jax.device_get(x) in JAX), or use a network with backend='cupy'")
    try:
        cupy = get_backend("cupy").xp
    except BackendError as e:
        raise TypeError(f"{name}: is on cuda:{index}, and reading CUDA data needs CuPy: {e}") \
            from e
    current = cupy.cuda.Device().id
    if index != current:
        raise TypeError(f"{name}: is on cuda:{index} and the network on cuda:{current}; "
                        f"move it there first (tensor.to('cuda:{current}'))")
    return _convert(cupy.from_dlpack, a, name)


def _convert(from_dlpack, a, name: str):
    try:
        return from_dlpack(a)
    except (BufferError, RuntimeError, TypeError, ValueError) as e:
        raise TypeError(f"{name}: cannot be read through DLPack ({e}); pass a float32 or "
                        "float64 tensor that needs no gradient (e.g. tensor.detach().float())"
                        ) from e

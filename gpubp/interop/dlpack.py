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

The network reads every DLPack X and y this way, so the code lives with the other input
checks in :mod:`gpubp.validation`, below the network; this module is its public name.
"""

from gpubp.validation import (
    CPU,
    CUDA,
    CUDA_HOST,
    CUDA_MANAGED,
    DEVICE_NAMES,
    as_array,
    device_of,
    is_dlpack,
)

__all__ = ["as_array", "is_dlpack", "device_of", "DEVICE_NAMES", "CPU", "CUDA", "CUDA_HOST",
           "CUDA_MANAGED"]

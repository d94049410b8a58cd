"""Checks on user input. Each raises ValueError/TypeError naming the argument, before any
state changes, and returns the input converted for the backend.

Input arrays are read here too: NumPy and CuPy arrays as they are, DLPack producers
(PyTorch, JAX...) as views of their memory (:func:`as_array`, public as
:mod:`gpubp.interop.dlpack`), anything else through ``np.asarray``.
"""

from __future__ import annotations

import numbers

import numpy as np

from gpubp.backend import Backend, array_module, get_backend, is_device_array
from gpubp.errors import BackendError

DTYPES = ("float32", "float64")


MAX_INT = 2**63  # every count the library keeps fits in an int64


def check_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int in [``minimum``, 2**63); bools and non-integers are a TypeError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {value!r:.80}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    if value >= MAX_INT:
        raise ValueError(f"{name}: must be < 2**63, got an integer of {int(value).bit_length()} "
                         "bits")
    return int(value)


def check_float(value, name: str, minimum: float = 0.0, *, strict: bool = False,
                below: float | None = None) -> float:
    """``value`` as a finite float ≥ ``minimum`` (> if ``strict``), < ``below`` if given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {value!r:.80}")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any float, 10**400 say
        raise ValueError(f"{name}: must be finite, got an integer of "
                         f"{int(value).bit_length()} bits") from None
    if not np.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name}: must be {'>' if strict else '>='} {minimum}, got {value}")
    if below is not None and value >= below:
        raise ValueError(f"{name}: must be < {below}, got {value}")
    return value


def check_dtype(dtype) -> np.dtype:
    """The network dtype: float32 or float64."""
    if dtype is None:
        raise TypeError(f"dtype: expected one of {DTYPES}, got None")
    try:
        resolved = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype: expected one of {DTYPES}, got {dtype!r}") from e
    if resolved.name not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {resolved.name!r}")
    return resolved


def check_layer_sizes(layer_sizes) -> tuple[int, ...]:
    """Layer widths (n_in, hidden..., n_classes): at least two, each an int ≥ 1."""
    if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__iter__"):
        raise TypeError(f"layer_sizes: expected a sequence of integers, got {layer_sizes!r}")
    sizes = tuple(layer_sizes)
    if len(sizes) < 2:
        raise ValueError(
            f"layer_sizes: need at least an input and an output size, got {list(sizes)}"
        )
    return tuple(check_int(s, f"layer_sizes[{i}]") for i, s in enumerate(sizes))


def _read_array(a, name: str, backend: Backend | None = None):
    if is_device_array(a) or isinstance(a, np.ndarray):
        return a
    if hasattr(a, "__dlpack_device__"):  # PyTorch, JAX...: a view of its memory, no copy
        return as_array(a, name, backend)
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{name}: cannot be read as an array ({e})") from e


def _check_real_dtype(a, name: str) -> None:
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected a real numeric array, got dtype {a.dtype}")


def check_features(X, n_features: int, backend: Backend, dtype, name: str = "X"):
    """``X`` as a finite (B, n_features) array of ``dtype`` on ``backend``, B ≥ 1."""
    X = _read_array(X, name, backend)
    _check_real_dtype(X, name)
    if X.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (batch, features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name}: is empty (0 rows)")
    if X.shape[1] != n_features:
        raise ValueError(
            f"{name}: has {X.shape[1]} features per row, the network takes {n_features}"
        )
    original = X
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf here...
        X = backend.asarray(X, dtype=dtype)
    if not _all_finite(X):
        _check_finite(original, name)  # ...so name NaN/Inf in the input first, else overflow
        raise ValueError(f"{name}: has values beyond the range of {np.dtype(dtype).name}")
    return X


def check_targets(y, n_rows: int, n_classes: int, backend: Backend, dtype, name: str = "y"):
    """``y`` as int64 labels (B,) or ``dtype`` target rows (B, C) on ``backend``.

    Labels must be integers (an integer dtype, or floats with integral values) in
    [0, n_classes). Target rows must be finite, non-negative and each sum to 1.
    """
    y = _read_array(y, name, backend)
    _check_real_dtype(y, name)
    if y.ndim not in (1, 2):
        raise ValueError(
            f"{name}: expected labels (B,) or target rows (B, C), got shape {y.shape}"
        )
    if y.shape[0] != n_rows:
        raise ValueError(f"{name}: has {y.shape[0]} rows, X has {n_rows}")
    if n_rows == 0:
        raise ValueError(f"{name}: is empty (0 rows)")
    return (_check_labels if y.ndim == 1 else _check_rows)(y, n_classes, backend, dtype, name)


def _check_labels(y, n_classes, backend, dtype, name):
    xp = array_module(y)
    if y.dtype.kind == "f":
        _check_finite(y, name)
        if not bool((y == xp.floor(y)).all()):
            raise ValueError(f"{name}: class labels must be integers, got non-integer values")
    low, high = int(y.min()), int(y.max())
    if low < 0:
        raise ValueError(f"{name}: class labels must be >= 0, got {low}")
    if high >= n_classes:
        raise ValueError(
            f"{name}: class label {high} is out of range for {n_classes} classes "
            f"(labels run 0..{n_classes - 1})"
        )
    return backend.asarray(y, dtype=np.int64)


def _check_rows(y, n_classes, backend, dtype, name):
    xp = array_module(y)
    if y.shape[1] != n_classes:
        raise ValueError(f"{name}: has {y.shape[1]} columns, the network has {n_classes} classes")
    _check_finite(y, name)
    if bool((y < 0).any()):
        raise ValueError(f"{name}: target rows must be non-negative")
    sums = y.astype(np.float64).sum(axis=1)
    eps = np.finfo(y.dtype).eps if y.dtype.kind == "f" else 0.0
    tolerance = 1e-6 + 4 * n_classes * eps
    worst = int(xp.argmax(xp.abs(sums - 1)))
    if abs(float(sums[worst]) - 1) > tolerance:
        raise ValueError(
            f"{name}: each target row must sum to 1; row {worst} sums to {float(sums[worst]):.6g}"
        )
    return backend.asarray(y, dtype=dtype)


def _all_finite(a) -> bool:
    return a.dtype.kind != "f" or bool(array_module(a).isfinite(a).all())


def _check_finite(a, name: str) -> None:
    """Raise, naming the first NaN/Inf element, unless every element is finite."""
    if _all_finite(a):
        return
    finite = array_module(a).isfinite(a).reshape(-1)
    first = np.unravel_index(int(finite.astype(np.int8).argmin()), a.shape)
    raise ValueError(f"{name}: contains NaN or Inf (first at index {tuple(map(int, first))})")


# ---- DLPack producers: read without a copy (public as gpubp.interop.dlpack) ---------------

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


def as_array(a, name: str = "X", backend: Backend | None = None):
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

"""Saving and loading networks as safetensors files: raw arrays and a JSON header, no pickle.

Tensors are named ``W1, b1, ..., WL, bL``; the metadata holds the format name, its
version, the layer sizes and the dtype. Writes go to a temporary file in the same
directory, are flushed to disk, then renamed over the target, so a reader sees either
the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save as safetensors_save

from gpubp.backend import to_numpy
from gpubp.errors import ModelFileError
from gpubp.fileio import atomic_writer, read_safetensors
from gpubp.validation import check_dtype, check_layer_sizes

FORMAT = "gpubp.mlp"
VERSION = "1"


def save_mlp(net, path) -> None:
    """Write ``net`` to ``path`` atomically."""
    tensors = {}
    for l, (W, b) in enumerate(zip(net.weights, net.biases), start=1):
        tensors[f"W{l}"] = np.ascontiguousarray(to_numpy(W))
        tensors[f"b{l}"] = np.ascontiguousarray(to_numpy(b))
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "layer_sizes": json.dumps(list(net.layer_sizes)),
        "dtype": net.dtype.name,
    }
    with atomic_writer(path) as f:
        f.write(safetensors_save(tensors, metadata=metadata))


def load_mlp(path, *, backend="auto"):
    """Read a network written by :func:`save_mlp` onto ``backend``.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ModelFileError: the file is truncated, corrupt, or not a gpubp model.
    """
    from gpubp.network import MLP

    path = Path(path)
    try:
        metadata, tensors = read_safetensors(path.read_bytes())
    except ValueError as e:
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from e
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a gpubp model (format {metadata.get('format')!r})")
    if metadata.get("version") != VERSION:
        raise ModelFileError(f"{path}: unsupported gpubp model version {metadata.get('version')!r}")
    try:
        sizes = check_layer_sizes(json.loads(metadata["layer_sizes"]))
        dtype = check_dtype(metadata["dtype"])
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise ModelFileError(f"{path}: bad model metadata ({e})") from e

    # Check the tensors against the metadata before allocating anything it claims.
    expected = {}
    for l, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        expected[f"W{l}"], expected[f"b{l}"] = (n_out, n_in), (n_out,)
    if set(tensors) != set(expected):
        raise ModelFileError(
            f"{path}: tensors {sorted(tensors)} do not match layer sizes {list(sizes)}"
        )
    for name, shape in expected.items():
        t = tensors[name]
        if t.shape != shape or t.dtype != dtype:
            raise ModelFileError(
                f"{path}: tensor {name} is {t.dtype}{list(t.shape)}, expected {dtype}{list(shape)}"
            )
        if not np.isfinite(t).all():
            raise ModelFileError(f"{path}: tensor {name} holds NaN or Inf")

    net = MLP(sizes, backend=backend, dtype=dtype, seed=0)
    for p, name in zip(net.parameters(), expected):
        p[...] = net.backend.asarray(tensors[name])
    return net

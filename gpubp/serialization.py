"""Model files: a network's weights as safetensors (raw arrays and a JSON header, no
pickle), with what is needed to use it in the metadata.

Tensors are named ``W1, b1, ..., WL, bL``. The metadata holds the format name, its
version, the layer sizes and the dtype, and the :class:`~gpubp.model_info.ModelInfo`
entries (classes, scaler, feature names, provenance). Writes go through
:func:`gpubp.fileio.atomic_writer`, so a reader sees the old file or the new one, never
half of one. This module reads and writes files; :class:`gpubp.MLP` builds networks.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save as safetensors_save

from gpubp.errors import ModelFileError
from gpubp.fileio import atomic_writer, read_safetensors, read_safetensors_bytes
from gpubp.model_info import ModelInfo
from gpubp.validation import check_dtype, check_layer_sizes

FORMAT = "gpubp.mlp"
VERSION = "1"
MAX_BYTES = 1 << 40  # beyond any network this library trains


@dataclasses.dataclass
class SavedModel:
    """A model file's contents: sizes, dtype, [W1, b1, ..., WL, bL] as NumPy arrays
    (checked against the sizes and finite), and its :class:`ModelInfo`."""

    layer_sizes: tuple[int, ...]
    dtype: np.dtype
    parameters: list[np.ndarray]
    info: ModelInfo


def write_model(path, layer_sizes, dtype, parameters, info: ModelInfo | None = None) -> None:
    """Write a model file atomically. parameters: [W1, b1, ..., WL, bL] NumPy arrays."""
    tensors = {}
    for i, p in enumerate(parameters):
        tensors[f"{'Wb'[i % 2]}{i // 2 + 1}"] = np.ascontiguousarray(p)
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "layer_sizes": json.dumps(list(layer_sizes)),
        "dtype": np.dtype(dtype).name,
        **(info.to_metadata() if info is not None else {}),
    }
    with atomic_writer(path) as f:
        f.write(safetensors_save(tensors, metadata=metadata))


def read_model(path) -> SavedModel:
    """Read and check a model file written by :func:`write_model`.

    Raises:
        FileNotFoundError: nothing at ``path``.
        ModelFileError: not a regular file, truncated, corrupt, not a gpubp model, or
            metadata that does not fit the weights.
    """
    path = Path(path)
    try:
        metadata, tensors = read_safetensors(
            read_safetensors_bytes(path, error=ModelFileError, limit=MAX_BYTES))
    except ModelFileError:
        raise
    except ValueError as e:
        raise ModelFileError(f"{path}: not a readable safetensors file ({e})") from e
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a gpubp model (format {metadata.get('format')!r:.80})")
    if metadata.get("version") != VERSION:
        raise ModelFileError(f"{path}: unsupported gpubp model version "
                             f"{metadata.get('version')!r:.80}")
    try:
        sizes = check_layer_sizes(json.loads(metadata["layer_sizes"]))
        dtype = check_dtype(metadata["dtype"])
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise ModelFileError(f"{path}: bad model metadata ({e})") from e

    # Check the tensors against the metadata before anything is built from them.
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
    try:
        info = ModelInfo.from_metadata(metadata, sizes[0], sizes[-1])
    except (TypeError, ValueError, RecursionError) as e:
        raise ModelFileError(f"{path}: bad model metadata ({e})") from e
    return SavedModel(sizes, dtype, [tensors[name] for name in expected], info)

"""Saving and loading networks: safetensors, atomic, clear errors, no pickle."""

import json
import os

import numpy as np
import pytest
from safetensors.numpy import save as safetensors_save

import gpubp
from gpubp.errors import ModelFileError


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip(tmp_path, dtype, rng):
    net = gpubp.MLP((6, 5, 4, 3), backend="numpy", dtype=dtype, seed=1)
    for b in net.biases:
        b[...] = rng.normal(size=b.shape)
    path = tmp_path / "model.safetensors"
    net.save(path)
    loaded = gpubp.MLP.load(path, backend="numpy")
    assert loaded.layer_sizes == net.layer_sizes and loaded.dtype == net.dtype
    for p, q in zip(loaded.parameters(), net.parameters()):
        assert p.dtype == q.dtype
        np.testing.assert_array_equal(p, q)
    assert [f.name for f in tmp_path.iterdir()] == ["model.safetensors"]  # no temp files


def test_save_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    old = gpubp.MLP((3, 2), backend="numpy", seed=0)
    old.save(path)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        gpubp.MLP((3, 2), backend="numpy", seed=1).save(path)
    assert path.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["m.safetensors"]


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "m.safetensors"
    gpubp.MLP((30, 20, 10), backend="numpy", seed=0).save(path)
    data = path.read_bytes()
    for cut in (0, 4, 8, 100, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            gpubp.MLP.load(path, backend="numpy")


def foreign(tensors, metadata=None):
    return safetensors_save(tensors, metadata=metadata)


GOOD_META = {"format": "gpubp.mlp", "version": "1", "layer_sizes": "[3, 2]", "dtype": "float32"}
W, B = np.zeros((2, 3), np.float32), np.zeros(2, np.float32)


@pytest.mark.parametrize("payload,message", [
    (b"\x93NUMPY pickle-ish garbage", "not a readable safetensors file"),
    (b"PK\x03\x04" + bytes(100), "not a readable safetensors file"),
    (foreign({"weight": W}), "not a gpubp model"),
    (foreign({"W1": W, "b1": B}, {**GOOD_META, "version": "9"}), "unsupported gpubp model version"),
    (foreign({"W1": W, "b1": B}, {**GOOD_META, "layer_sizes": "[3, 0]"}), "bad model metadata"),
    (foreign({"W1": W, "b1": B}, {**GOOD_META, "layer_sizes": "nope"}), "bad model metadata"),
    (foreign({"W1": W, "b1": B}, {**GOOD_META, "dtype": "int8"}), "bad model metadata"),
    (foreign({"W1": W}, GOOD_META), "do not match layer sizes"),
    (foreign({"W1": W.T.copy(), "b1": B}, GOOD_META), "tensor W1 is float32"),
    (foreign({"W1": W.astype(np.float64), "b1": B}, GOOD_META), "expected float32"),
    (foreign({"W1": W + np.nan, "b1": B}, GOOD_META), "holds NaN or Inf"),
    # A header claiming a huge network is refused before anything is allocated.
    (foreign({"W1": W, "b1": B}, {**GOOD_META, "layer_sizes": json.dumps([10**6, 10**6])}),
     r"expected float32\[1000000, 1000000\]"),
])
def test_foreign_or_corrupt_files_are_clear_errors(tmp_path, payload, message):
    path = tmp_path / "x.safetensors"
    path.write_bytes(payload)
    with pytest.raises(ModelFileError, match=message):
        gpubp.MLP.load(path, backend="numpy")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        gpubp.MLP.load(tmp_path / "nothing.safetensors", backend="numpy")

"""A user's own data: ``.npz`` archives and CSV files with a label column.

Labels may be any values (0..9, 1..10, names); they are mapped to class indices
0..C−1 in sorted order, and ``Dataset.classes`` keeps the originals.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from gpubp.datasets.dataset import Dataset
from gpubp.datasets.npz import npz_names, read_npz
from gpubp.datasets.preprocessing import stratified_split
from gpubp.errors import DataError


def load_npz(path):
    """(X, y) from an .npz holding arrays ``X`` (N, F) and ``y`` (N,); never unpickles."""
    arrays = read_npz(path, ("X", "y"))
    return _check_pair(path, arrays["X"], arrays["y"])


def load_csv(path, label_column="label"):
    """(X, y) from a CSV file with a header row; ``label_column`` names the label column.

    Every other column must be numeric. X: (N, F) float64; y: (N,) the labels: int64 or
    float64 when every one is a number, else the strings (an object array, so that one
    long label costs its own length, not that length times N).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header, features, labels = _read_rows(csv.reader(f), path, label_column)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({e})") from e
    try:
        X = np.array(features, dtype=np.float64).reshape(len(features), len(header) - 1)
    except ValueError as e:
        raise DataError(f"{path}: non-numeric feature value ({e})") from e
    return _check_pair(path, X, _numeric_if_possible(labels))


def _read_rows(reader, path, label_column):
    """(header, feature rows, labels) as text from a csv.reader."""
    header = next(reader, None)
    if not header:
        raise DataError(f"{path}: empty CSV file (a header row is required)")
    if label_column not in header:
        raise DataError(f"{path}: no label column {label_column!r} in header {header!r:.200}")
    label_at = header.index(label_column)
    features, labels = [], []
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}:{line_no}: {len(row)} fields, header has {len(header)}")
        labels.append(row[label_at].strip())
        features.append(row[:label_at] + row[label_at + 1:])
    return header, features, labels


def _numeric_if_possible(labels: list) -> np.ndarray:
    """Labels read as text become int64 (or float64) when every one is a finite number,
    so that "2" sorts before "10"; otherwise they stay strings."""
    try:
        values = np.array([float(label) for label in labels], dtype=np.float64)
    except ValueError:
        return np.array(labels, dtype=object)
    if not np.isfinite(values).all():
        return np.array(labels, dtype=object)
    if (values == np.floor(values)).all() and (np.abs(values) < 2**53).all():
        return values.astype(np.int64)
    return values


def load_file(path, *, test_fraction: float = 0.2, split_seed: int = 0,
              label_column="label") -> Dataset:
    """A :class:`Dataset` from a user's .npz or .csv file.

    An .npz holding ``X_train, y_train, X_test, y_test`` keeps its own split; otherwise
    the rows are split stratified, ``test_fraction`` of each class to the test part.
    """
    path = Path(path)
    if path.suffix.lower() == ".npz" and {"X_train", "y_train"} <= npz_names(path):
        arrays = read_npz(path, ("X_train", "y_train", "X_test", "y_test"))
        X_train, y_train = _check_pair(path, arrays["X_train"], arrays["y_train"])
        X_test, y_test = _check_pair(path, arrays["X_test"], arrays["y_test"])
        if X_train.shape[1] != X_test.shape[1]:
            raise DataError(f"{path}: X_train and X_test have different feature counts")
    else:
        X, y = load_npz(path) if path.suffix.lower() == ".npz" else load_csv(path, label_column)
        try:
            X_train, y_train, X_test, y_test = stratified_split(X, y, test_fraction, split_seed)
        except ValueError as e:
            raise DataError(f"{path}: too few rows to split off a test part ({e})") from e
    try:
        classes, both = np.unique(np.concatenate([y_train, y_test]), return_inverse=True)
    except TypeError as e:  # e.g. string labels in one part, numbers in the other
        raise DataError(f"{path}: labels of mixed types ({e})") from e
    n = len(y_train)
    X_train, X_test = _as_float32(path, X_train), _as_float32(path, X_test)
    return Dataset(path.stem, X_train, both[:n].astype(np.int64),
                   X_test, both[n:].astype(np.int64), classes)


def _as_float32(path, X):
    with np.errstate(over="ignore"):
        X32 = X.astype(np.float32)
    if not np.isfinite(X32).all():
        raise DataError(f"{path}: X has values beyond the range of float32")
    return X32


def _check_pair(path, X, y):
    if X.dtype.kind not in "iuf":
        raise DataError(f"{path}: X has non-numeric dtype {X.dtype}")
    if X.ndim != 2 or X.shape[1] == 0:
        raise DataError(f"{path}: X must be 2-D (rows, features ≥ 1), got shape {X.shape}")
    if y.dtype.kind not in "biufSUO":  # O: the strings of a CSV file
        raise DataError(f"{path}: y has dtype {y.dtype}; labels must be numbers or strings")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError(f"{path}: y contains NaN or Inf")
    if y.ndim != 1 or len(y) != len(X):
        raise DataError(f"{path}: y must be 1-D with one label per row of X "
                        f"(X {X.shape}, y {y.shape})")
    if len(X) == 0:
        raise DataError(f"{path}: no rows")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise DataError(f"{path}: X contains NaN or Inf")
    return X, y

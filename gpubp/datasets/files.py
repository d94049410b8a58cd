"""A user's own data: ``.npz`` archives and CSV files with a label column.

Labels may be any values (0..9, 1..10, names); they are mapped to class indices
0..C−1 in sorted order, and ``Dataset.classes`` keeps the originals.
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from gpubp.datasets.dataset import Dataset
from gpubp.datasets.preprocessing import stratified_split
from gpubp.errors import DataError


def load_npz(path):
    """(X, y) from an .npz holding arrays ``X`` (N, F) and ``y`` (N,); never unpickles."""
    arrays = _read_npz(path, ("X", "y"))
    return _check_pair(path, arrays["X"], arrays["y"])


def load_csv(path, label_column="label"):
    """(X, y) from a CSV file with a header row; ``label_column`` names the label column.

    Every other column must be numeric. X: (N, F) float32; y: (N,) the raw labels (str).
    """
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty CSV file (a header row is required)")
        if label_column not in header:
            raise DataError(f"{path}: no label column {label_column!r} in header {header}")
        label_at = header.index(label_column)
        features, labels = [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{line_no}: {len(row)} fields, header has {len(header)}")
            labels.append(row[label_at].strip())
            features.append(row[:label_at] + row[label_at + 1:])
    try:
        X = np.array(features, dtype=np.float64).reshape(len(features), len(header) - 1)
    except ValueError as e:
        raise DataError(f"{path}: non-numeric feature value ({e})") from e
    return _check_pair(path, X, _numeric_if_possible(np.array(labels)))


def _numeric_if_possible(labels: np.ndarray) -> np.ndarray:
    """Labels read as text become int64 (or float64) when every one is a number, so that
    "2" sorts before "10"."""
    try:
        values = labels.astype(np.float64)
    except ValueError:
        return labels
    if np.isfinite(values).all() and (values == np.floor(values)).all():
        return values.astype(np.int64)
    return values


def load_file(path, *, test_fraction: float = 0.2, split_seed: int = 0,
              label_column="label") -> Dataset:
    """A :class:`Dataset` from a user's .npz or .csv file.

    An .npz holding ``X_train, y_train, X_test, y_test`` keeps its own split; otherwise
    the rows are split stratified, ``test_fraction`` of each class to the test part.
    """
    path = Path(path)
    if path.suffix.lower() == ".npz" and _has_split(path):
        arrays = _read_npz(path, ("X_train", "y_train", "X_test", "y_test"))
        X_train, y_train = _check_pair(path, arrays["X_train"], arrays["y_train"])
        X_test, y_test = _check_pair(path, arrays["X_test"], arrays["y_test"])
        if X_train.shape[1] != X_test.shape[1]:
            raise DataError(f"{path}: X_train and X_test have different feature counts")
    else:
        X, y = load_npz(path) if path.suffix.lower() == ".npz" else load_csv(path, label_column)
        X_train, y_train, X_test, y_test = stratified_split(X, y, test_fraction, split_seed)
    classes, both = np.unique(np.concatenate([y_train, y_test]), return_inverse=True)
    n = len(y_train)
    return Dataset(path.stem, X_train.astype(np.float32), both[:n].astype(np.int64),
                   X_test.astype(np.float32), both[n:].astype(np.int64), classes)


def _has_split(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a readable .npz archive ({e})") from e
    return {"X_train.npy", "y_train.npy"} <= names


def _read_npz(path, keys) -> dict:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise DataError(f"{path}: .npz lacks arrays {missing} (has {archive.files})")
            return {k: archive[k] for k in keys}
    except (DataError, FileNotFoundError):
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz archive ({e})") from e


def _check_pair(path, X, y):
    if X.dtype.kind not in "iuf":
        raise DataError(f"{path}: X has non-numeric dtype {X.dtype}")
    if X.ndim != 2:
        raise DataError(f"{path}: X must be 2-D (rows, features), got shape {X.shape}")
    if y.ndim != 1 or len(y) != len(X):
        raise DataError(f"{path}: y must be 1-D with one label per row of X "
                        f"(X {X.shape}, y {y.shape})")
    if len(X) == 0:
        raise DataError(f"{path}: no rows")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise DataError(f"{path}: X contains NaN or Inf")
    return X, y

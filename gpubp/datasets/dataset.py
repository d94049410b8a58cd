"""A dataset with its train/test split, and lookup by name or path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class Dataset:
    """Train and test arrays on the host: X (N, n_features) float32, y (N,) int64 in 0..C−1.

    ``classes`` holds the original label of each class index (user files may label
    classes 1..10 or by name).
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: np.ndarray

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.X_train.shape}, test={self.X_test.shape}, "
                f"classes={self.n_classes})")


def load_dataset(spec: str, *, data_dir=None, test_fraction: float = 0.2,
                 split_seed: int | None = None, download: bool = True) -> Dataset:
    """A dataset by name ("digits", "mnist") or by path to a user's .npz or .csv file.

    Digits and user files without their own test split are split stratified, with
    ``test_fraction`` of each class in the test part; ``split_seed`` None keeps the
    fixed default split. MNIST has its standard 60,000/10,000 split.
    """
    from gpubp.datasets.digits import load_digits
    from gpubp.datasets.files import load_file
    from gpubp.datasets.mnist import load_mnist

    split = {} if split_seed is None else {"split_seed": split_seed}
    if spec == "digits":
        return load_digits(test_fraction=test_fraction, **split)
    if spec == "mnist":
        return load_mnist(data_dir, download=download)
    if Path(spec).suffix.lower() in (".npz", ".csv"):
        return load_file(spec, test_fraction=test_fraction, **split)
    raise ValueError(f"dataset: expected 'digits', 'mnist' or a .npz/.csv path, got {spec!r}")

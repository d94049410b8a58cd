"""A dataset with its train/test split."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Dataset:
    """Train and test arrays on the host: X (N, n_features) float32 (float64 for a user's
    file, so that scaling comes before rounding), y (N,) int64 in 0..C−1.

    ``classes`` holds the original label of each class index (user files may label
    classes 1..10 or by name); ``feature_names`` the feature columns of a CSV header, and
    ``label_name`` the label column's name, where the file had them.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    classes: np.ndarray
    feature_names: list[str] | None = None
    label_name: str | None = None

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.X_train.shape}, test={self.X_test.shape}, "
                f"classes={self.n_classes})")

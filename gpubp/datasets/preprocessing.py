"""Feature scaling and the stratified train/validation split (NumPy, on the host)."""

from __future__ import annotations

import numpy as np

from gpubp.backend import to_numpy


class _AffineScaler:
    """x ← (x − offset_) / scale_ per feature; subclasses fit offset_ and scale_."""

    kind = ""  # the name a model file records

    def transform(self, X, dtype=np.float32) -> np.ndarray:
        return ((to_numpy(X).astype(np.float64) - self.offset_) / self.scale_).astype(dtype)

    def fit_transform(self, X, dtype=np.float32) -> np.ndarray:
        return self.fit(X).transform(X, dtype)

    def state(self) -> dict:
        """The fitted scaler as JSON: {"kind", "offset", "scale"} (floats round-trip)."""
        return {"kind": self.kind, "offset": self.offset_.tolist(),
                "scale": self.scale_.tolist()}

    def __repr__(self) -> str:
        fitted = f"n_features={len(self.offset_)}" if hasattr(self, "offset_") else "unfitted"
        return f"{type(self).__name__}({fitted})"


def scaler_from_state(state: dict, n_features: int) -> _AffineScaler:
    """The scaler a :meth:`~_AffineScaler.state` describes, checked: a known kind, and
    ``n_features`` finite offsets and finite positive scales. Raises ValueError."""
    kinds = {cls.kind: cls for cls in (StandardScaler, MinMaxScaler)}
    if not isinstance(state, dict) or state.get("kind") not in kinds:
        raise ValueError(f"scaler: expected one of {sorted(kinds)}, got {state!r:.80}")
    scaler = kinds[state["kind"]]()
    try:
        offset = np.array(state["offset"], dtype=np.float64)
        scale = np.array(state["scale"], dtype=np.float64)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"scaler: unreadable parameters ({e})") from e
    if offset.shape != (n_features,) or scale.shape != (n_features,):
        raise ValueError(f"scaler: expected {n_features} offsets and scales, got "
                         f"{offset.shape} and {scale.shape}")
    if not (np.isfinite(offset).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError("scaler: offsets and scales must be finite, scales > 0")
    scaler.offset_, scaler.scale_ = offset, scale
    return scaler


def make_scaler(kind: str):
    """A new scaler by name: "standard", "minmax", or None for "none"."""
    scalers = {"standard": StandardScaler, "minmax": MinMaxScaler, "none": None}
    if kind not in scalers:
        raise ValueError(f"scale: expected one of {tuple(scalers)}, got {kind!r}")
    return scalers[kind]() if scalers[kind] else None


class StandardScaler(_AffineScaler):
    """x ← (x − mean) / std per feature, fitted on training data. Constant features get std 1."""

    kind = "standard"

    def fit(self, X) -> "StandardScaler":
        X = to_numpy(X).astype(np.float64)
        self.offset_ = X.mean(axis=0)
        std = X.std(axis=0)
        self.scale_ = np.where(std > 0, std, 1.0)
        return self

    @property
    def mean_(self) -> np.ndarray:
        """The fitted per-feature means (the offset)."""
        return self.offset_


class MinMaxScaler(_AffineScaler):
    """x ← (x − min) / (max − min) per feature, into [0, 1] on the training data."""

    kind = "minmax"

    def fit(self, X) -> "MinMaxScaler":
        X = to_numpy(X).astype(np.float64)
        self.offset_ = X.min(axis=0)
        span = X.max(axis=0) - self.offset_
        self.scale_ = np.where(span > 0, span, 1.0)
        return self

    @property
    def min_(self) -> np.ndarray:
        """The fitted per-feature minima (the offset)."""
        return self.offset_


def stratified_indices(labels, fraction: float, rng: np.random.Generator, name="fraction"):
    """Split row indices so that each class sends ``fraction`` of its rows to the second part.

    labels: (N,) integer classes. Returns (first, second), sorted index arrays. A class
    with at least two rows keeps at least one on each side. ``name`` names ``fraction``
    in errors.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{name}: must be in (0, 1), got {fraction}")
    labels = to_numpy(labels)
    second = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(fraction * len(rows)))
        if len(rows) >= 2:
            k = min(max(k, 1), len(rows) - 1)
        second.append(rows[:k])
    second = np.sort(np.concatenate(second))
    first = np.setdiff1d(np.arange(len(labels)), second, assume_unique=True)
    if len(first) == 0 or len(second) == 0:
        raise ValueError(f"{name}: {fraction} leaves one side of the split empty "
                         f"for {len(labels)} rows")
    return first, second


def stratified_split_rows(y, fraction: float, seed=None):
    """(rows_a, rows_b): sorted row indices with ``fraction`` of each class of ``y`` in b.

    y: labels (N,) or target rows (N, C) (stratified by their argmax).
    """
    labels = to_numpy(y)
    if labels.ndim == 2:
        labels = labels.argmax(axis=1)
    return stratified_indices(labels, fraction, np.random.default_rng(seed))


def stratified_split(X, y, fraction: float, seed=None):
    """(X_a, y_a, X_b, y_b) with ``fraction`` of each class of ``y`` in the b part; the
    rows of :func:`stratified_split_rows`."""
    first, second = stratified_split_rows(y, fraction, seed)
    return X[first], y[first], X[second], y[second]

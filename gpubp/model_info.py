"""What a trained network needs beside its weights to be used on a user's data.

A network computes in class indices 0..C−1 on the features it was trained on. A
:class:`ModelInfo` holds the rest, saved in the model file's safetensors metadata (JSON
strings, no pickle): the class labels in training order, with their type; the scaler
fitted on the training rows; the feature names of a CSV header and the label column's
name; and provenance (versions, backend, data checksum, date, options).

``gpubp eval`` and ``gpubp predict`` map labels through :meth:`ModelInfo.class_index`
and :meth:`ModelInfo.labels`, and features through :meth:`ModelInfo.transform`, never
through a file's own labels. A model file without this metadata (gpubp 0.1) has classes
0..C−1 and no scaler.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from gpubp.datasets.files import class_indices
from gpubp.datasets.preprocessing import scaler_from_state

CLASS_TYPES = {"int": np.int64, "float": np.float64, "str": object}
KEYS = ("classes", "classes_type", "scaler", "feature_names", "label_column", "provenance")


@dataclasses.dataclass
class ModelInfo:
    """classes: (C,) original labels (int64, float64 or str objects), or None for 0..C−1.
    scaler: a fitted StandardScaler/MinMaxScaler applied to features first, or None.
    feature_names: the training file's feature columns, or None. label_column: the name
    (or index) of its label column, or None. provenance: a JSON-able dict."""

    classes: np.ndarray | None = None
    scaler: object = None
    feature_names: list[str] | None = None
    label_column: str | int | None = None
    provenance: dict = dataclasses.field(default_factory=dict)

    # ---- using it -------------------------------------------------------------------

    def class_labels(self, n_classes: int) -> np.ndarray:
        """The label of each class index: ``classes``, or 0..C−1 when none are stored."""
        return self.classes if self.classes is not None else np.arange(n_classes)

    def class_index(self, labels, n_classes: int, source, text=None) -> np.ndarray:
        """The class index (int64, (N,)) of each label, matched against the stored classes:
        text classes against the labels as written (``text``, a CSV's, when given), number
        classes by value (labels read as text parsed as numbers). A label the model does
        not know is a DataError naming it and its rows."""
        classes = self.class_labels(n_classes)
        labels = np.asarray(labels)
        if classes.dtype.kind not in "biuf":
            labels = np.asarray(text) if text is not None else labels
        elif labels.dtype.kind in "OUS":
            labels = _parsed_numbers(labels)
        return class_indices(classes, labels, source)

    def labels(self, indices, n_classes: int) -> np.ndarray:
        """The original labels of class ``indices`` (N,)."""
        return self.class_labels(n_classes)[np.asarray(indices)]

    def transform(self, X, dtype) -> np.ndarray:
        """Features as the network takes them: scaled as in training, as ``dtype``."""
        if self.scaler is None:
            return np.asarray(X, dtype=dtype)
        return self.scaler.transform(X, dtype)

    # ---- in a model file ------------------------------------------------------------

    def to_metadata(self) -> dict[str, str]:
        """The safetensors metadata entries (str -> str); nothing for what is unset."""
        metadata = {}
        if self.classes is not None:
            kind = {"i": "int", "u": "int", "b": "int", "f": "float"}.get(
                self.classes.dtype.kind, "str")
            values = [str(c) for c in self.classes.tolist()] if kind == "str" else \
                np.asarray(self.classes, dtype=CLASS_TYPES[kind]).tolist()
            metadata["classes"], metadata["classes_type"] = json.dumps(values), kind
        if self.scaler is not None:
            metadata["scaler"] = json.dumps(self.scaler.state())
        if self.feature_names is not None:
            metadata["feature_names"] = json.dumps(list(self.feature_names))
        if self.label_column is not None:
            metadata["label_column"] = json.dumps(self.label_column)
        if self.provenance:
            metadata["provenance"] = json.dumps(self.provenance)
        return metadata

    @classmethod
    def from_metadata(cls, metadata: dict, n_features: int, n_classes: int) -> "ModelInfo":
        """The info in a model file's metadata, checked against the network's sizes.

        Raises ValueError (or RecursionError on absurdly nested JSON) naming the entry.
        """
        info = cls()
        if "classes" in metadata:
            info.classes = _classes(metadata, n_classes)
        if "scaler" in metadata:
            info.scaler = scaler_from_state(json.loads(metadata["scaler"]), n_features)
        if "feature_names" in metadata:
            names = json.loads(metadata["feature_names"])
            if not (isinstance(names, list) and len(names) == n_features
                    and all(isinstance(n, str) for n in names)):
                raise ValueError(f"feature_names: expected {n_features} strings")
            info.feature_names = names
        if "label_column" in metadata:
            label = json.loads(metadata["label_column"])
            if not isinstance(label, (str, int)) or isinstance(label, bool):
                raise ValueError(f"label_column: expected a name or an index, got {label!r:.40}")
            info.label_column = label
        if "provenance" in metadata:
            provenance = json.loads(metadata["provenance"])
            if not isinstance(provenance, dict):
                raise ValueError("provenance: expected a JSON object")
            info.provenance = provenance
        return info


def _classes(metadata: dict, n_classes: int) -> np.ndarray:
    kind = metadata.get("classes_type")
    if kind not in CLASS_TYPES:
        raise ValueError(f"classes_type: expected one of {tuple(CLASS_TYPES)}, got {kind!r:.40}")
    values = json.loads(metadata["classes"])
    python_type = {"int": int, "float": (int, float), "str": str}[kind]
    if not (isinstance(values, list) and len(values) == n_classes and all(
            isinstance(v, python_type) and not isinstance(v, bool) for v in values)):
        raise ValueError(f"classes: expected {n_classes} labels of type {kind}")
    if kind == "int" and not all(-2**63 <= v < 2**63 for v in values):
        raise ValueError("classes: integer labels must fit in 64 bits")
    try:
        classes = np.array(values, dtype=CLASS_TYPES[kind])
    except OverflowError as e:
        raise ValueError(f"classes: {e}") from e
    if kind == "float" and not np.isfinite(classes).all():
        raise ValueError("classes: float labels must be finite")
    if len(set(classes.tolist())) != n_classes:
        raise ValueError("classes: a label appears twice")
    if kind != "str" and not (np.diff(classes) > 0).all():
        raise ValueError("classes: numeric labels must be stored in increasing order")
    return classes


def _parsed_numbers(labels: np.ndarray) -> np.ndarray:
    """Text labels as numbers where each one reads as a number; others are kept as text
    (and then match no numeric class)."""
    parsed = []
    for text in labels.tolist():
        try:
            value = float(text)
        except (TypeError, ValueError):
            parsed.append(text)
            continue
        parsed.append(int(value) if value.is_integer() and abs(value) < 2**53 else value)
    return np.array(parsed, dtype=object)

"""Classification metrics on the host: confusion matrix, per-class precision, recall, F1.

Definitions as in scikit-learn's ``classification_report`` (with ``zero_division=0``):
for class c, precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic
mean, support = the rows whose true class is c; a ratio with a zero denominator is 0.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(true, predicted, n_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class index, column = predicted class index."""
    true, predicted = np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    counts = np.bincount(true * n_classes + predicted, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def per_class(confusion: np.ndarray) -> dict:
    """{"precision", "recall", "f1", "support"}, each a (C,) array, from a confusion matrix."""
    tp = np.diag(confusion).astype(np.float64)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def report(labels, confusion: np.ndarray) -> dict:
    """The per-class metrics keyed by each class's label (as text, for JSON):
    ``{label: {"precision", "recall", "f1", "support"}}``, in class order."""
    metrics = per_class(confusion)
    return {str(label): {"precision": float(metrics["precision"][i]),
                         "recall": float(metrics["recall"][i]),
                         "f1": float(metrics["f1"][i]),
                         "support": int(metrics["support"][i])}
            for i, label in enumerate(labels)}


def format_report(labels, confusion: np.ndarray) -> str:
    """A table of the per-class metrics, then the confusion matrix, for a terminal."""
    rows = report(labels, confusion)
    names = [str(label)[:24] for label in labels]
    width = max([5] + [len(n) for n in names])
    lines = [f"{'class':<{width}}  precision  recall      f1  support"]
    for name, r in zip(names, rows.values()):
        lines.append(f"{name:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  "
                     f"{r['f1']:6.4f}  {r['support']:7d}")
    cell = max([len(n) for n in names] + [len(str(int(confusion.max(initial=0))))])
    lines.append("")
    lines.append("confusion matrix (rows: true class, columns: predicted class)")
    lines.append(" " * (width + 2) + " ".join(f"{n:>{cell}}" for n in names))
    for name, counts in zip(names, confusion):
        lines.append(f"{name:<{width}}  " + " ".join(f"{int(c):>{cell}}" for c in counts))
    return "\n".join(lines)

"""Per-epoch training logs (CSV or JSON lines) and their plots.

A log has one row per epoch with the :class:`gpubp.History` keys: epoch, lr, train_loss,
val_loss, val_accuracy, wall_time (seconds) and samples_per_s. :class:`TrainingLog`
rewrites the whole file atomically after each epoch, so the file is always complete,
and a resumed run that repeats epochs replaces their rows instead of adding to them.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path

from gpubp.errors import DataError
from gpubp.fileio import atomic_writer, read_regular
from gpubp.training_state import finite_number

COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "val_accuracy", "wall_time",
           "samples_per_s")
FORMATS = (".csv", ".jsonl")
MAX_BYTES = 256 << 20


def check_log_path(path) -> Path:
    """``path`` as a log path: it must end in .csv or .jsonl."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"--log: expected a .csv or .jsonl file name, got {str(path)!r}")
    return path


class TrainingLog:
    """Writes epoch records to ``path`` as they come. ``resume`` keeps the rows a file
    already holds for earlier epochs (a resumed run's); otherwise the file starts over."""

    def __init__(self, path, resume: bool = False):
        self.path = check_log_path(path)
        self.rows: dict[int, dict] = {}
        if resume and self.path.exists():
            try:
                self.rows = {row["epoch"]: row for row in read_log(self.path)}
            except DataError as why:
                warnings.warn(f"{why}; its rows are not carried on, and the log starts "
                              "again with the resumed epochs", stacklevel=2)

    def __call__(self, record: dict) -> None:
        """Add ``record`` (dropping rows of later epochs, now being redone) and rewrite."""
        epoch = record["epoch"]
        self.rows = {e: r for e, r in self.rows.items() if e < epoch}
        self.rows[epoch] = {key: record.get(key) for key in COLUMNS}
        rows = [self.rows[e] for e in sorted(self.rows)]
        with atomic_writer(self.path) as f:
            f.write(_render(rows, self.path.suffix.lower()).encode())


def _render(rows: list[dict], suffix: str) -> str:
    if suffix == ".jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row[key] is None else repr(row[key]) for key in COLUMNS])
    return out.getvalue()


def read_log(path) -> list[dict]:
    """The rows of a log written by :class:`TrainingLog`, as dicts of numbers (None for
    blanks). Raises DataError for a file that is not such a log."""
    path = Path(path)
    text = read_regular(path, limit=MAX_BYTES, error=DataError).decode("utf-8", "replace")
    try:
        if path.suffix.lower() == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            reader = csv.DictReader(io.StringIO(text))
            rows = [{k: (float(v) if v else None) for k, v in row.items()} for row in reader]
    except (ValueError, TypeError, RecursionError, csv.Error) as e:
        raise DataError(f"{path}: not a gpubp training log ({e})") from e
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) != set(COLUMNS) or not all(
                v is None or finite_number(v) for v in row.values()):
            raise DataError(f"{path}: row {i + 1} is not a log row with columns {COLUMNS}")
        row["epoch"] = int(row["epoch"])
    return rows


def plot_logs(paths, out) -> None:
    """Loss (train and validation) and validation accuracy against epoch, one colour per
    log, side by side, written to ``out`` (any format matplotlib writes: .png, .svg...).

    Raises ImportError naming the extra when matplotlib is missing.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("gpubp plot needs matplotlib: pip install 'gpubp[plot]'") from e
    logs = [(Path(p), read_log(p)) for p in paths]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (path, rows) in enumerate(logs):
        color = f"C{i % 10}"
        epochs = [r["epoch"] for r in rows]
        loss_axes.plot(epochs, [r["train_loss"] for r in rows], color=color,
                       label=f"{path.stem} train")
        if any(r["val_loss"] is not None for r in rows):
            loss_axes.plot(epochs, [r["val_loss"] for r in rows], color=color, linestyle="--",
                           label=f"{path.stem} validation")
            accuracy_axes.plot(epochs, [r["val_accuracy"] for r in rows], color=color,
                               label=path.stem)
    loss_axes.set(xlabel="epoch", ylabel="mean cross-entropy", title="loss", yscale="log")
    accuracy_axes.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        if axes.has_data():
            axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format=Path(out).suffix.lstrip(".").lower() or "png")
    plt.close(figure)
    with atomic_writer(out) as f:
        f.write(buffer.getvalue())

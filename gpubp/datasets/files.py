"""A user's own data: ``.npz`` archives and CSV files with a label column.

CSV files may start with a UTF-8 byte order mark, end lines with CRLF, quote fields,
and separate them with commas, semicolons or tabs (found from the first lines unless
given). The label column is named by its header (``"label"`` by default) or given by
its 0-based index, which a file without a header row needs. Every other column is a
feature and must hold a number: the error for one that does not names its line and
column.

For training, labels may be any values (0..9, 1..10, names); the classes are the
training rows' distinct labels in sorted order, ``Dataset.classes`` keeps the originals,
and test rows map through them (a label the training rows lack is an error). Text
classes are matched against labels as written, so a file of only "1" and "2" maps onto
the classes "1", "2", "bird".
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import numpy as np

from gpubp.datasets.dataset import Dataset
from gpubp.datasets.npz import npz_names, read_npz
from gpubp.datasets.preprocessing import stratified_split
from gpubp.errors import DataError
from gpubp.fileio import open_regular

DEFAULT_LABEL = "label"
DELIMITERS = ",;\t"
SNIFF_BYTES = 64 << 10
CHUNK_ROWS = 65536  # CSV rows parsed into one float64 block at a time
# A classifier's labels: more distinct values than this, with fewer rows each on
# average than MIN_ROWS_PER_CLASS, look like a continuous target.
MAX_SPARSE_CLASSES, MIN_ROWS_PER_CLASS = 1000, 10


@dataclasses.dataclass
class Table:
    """A user's file as read: features X (N, F) float64, labels (N,) as found (or None),
    the feature names of a CSV header (or None) and the label column's name; for a CSV
    also its labels as written, which text classes are matched against."""

    X: np.ndarray
    y: np.ndarray | None
    feature_names: list[str] | None = None
    label_name: str | None = None
    labels_text: np.ndarray | None = None  # a CSV's labels as written (object array)


@dataclasses.dataclass
class CsvFormat:
    """How a CSV file is read: its delimiter, whether it has a header row, its label
    column (a name, a 0-based index, or None for a file of features only)."""

    delimiter: str | None = None
    header: bool = True
    label_column: str | int | None = DEFAULT_LABEL


# ---- CSV ----------------------------------------------------------------------------

def load_csv(path, label_column=DEFAULT_LABEL, *, delimiter=None, header=True):
    """(X, y) from a CSV file; see :func:`read_csv`."""
    table = read_csv(path, CsvFormat(delimiter, header, label_column))
    return table.X, table.y


def read_csv(path, fmt: CsvFormat | None = None) -> Table:
    """The whole CSV file at ``path`` as a :class:`Table`.

    Labels read as text become int64 (or float64) when every one is a finite number,
    so that "2" sorts before "10"; otherwise they stay strings (an object array, so that
    one long label costs its own length, not that length times N).
    """
    blocks, labels, names, label_name = [], [], None, None
    for chunk in iter_csv(path, fmt or CsvFormat()):
        blocks.append(chunk.X)
        if chunk.y is not None:
            labels.extend(chunk.y)
        names, label_name = chunk.feature_names, chunk.label_name
    if not blocks:
        raise DataError(f"{path}: no data rows")
    X = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    if label_name is None:
        return Table(X, None, names, None)
    return Table(X, _numeric_if_possible(labels), names, label_name,
                 np.array(labels, dtype=object))


def iter_csv(path, fmt: CsvFormat, chunk_rows: int = CHUNK_ROWS):
    """Yield the CSV file at ``path`` as :class:`Table` blocks of up to ``chunk_rows`` rows,
    labels as text; memory follows the block, not the file."""
    path = Path(path)
    try:
        with open_regular(path, DataError) as raw, \
                io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
            delimiter = fmt.delimiter or _sniff_delimiter(f)
            reader = csv.reader(f, delimiter=delimiter)
            columns = _columns(reader, path, fmt)
            yield from _blocks(reader, path, columns, chunk_rows)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({e})") from e


def csv_header(path, delimiter=None) -> list[str]:
    """The fields of the first row of the CSV file at ``path``."""
    path = Path(path)
    try:
        with open_regular(path, DataError) as raw, \
                io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter or _sniff_delimiter(f))
            return [name.strip() for name in next(reader, [])]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({e})") from e


def _sniff_delimiter(f) -> str:
    """The delimiter of the first lines (comma, semicolon or tab); comma when unclear."""
    sample = f.read(SNIFF_BYTES)
    f.seek(0)
    lines = sample.splitlines()[:20]
    if len(sample) == SNIFF_BYTES and len(lines) > 1:
        lines = lines[:-1]  # the last line may be cut
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


@dataclasses.dataclass
class _Columns:
    width: int  # fields a row must have
    label_at: int | None
    feature_names: list[str] | None
    label_name: str | None
    pending: list  # (line number, fields) read already: a header-less file's first row


def _columns(reader, path, fmt: CsvFormat) -> _Columns:
    """Read the header row (if any) and find the label column."""
    label = fmt.label_column
    if not fmt.header:
        first = next(reader, None)
        if not first:
            raise DataError(f"{path}: empty CSV file")
        if isinstance(label, str) and _is_index(label):
            label = int(label)
        if isinstance(label, str):
            raise DataError(f"{path}: a file without a header row needs the label column's "
                            f"index (--label-column N), not the name {label!r}")
        width = len(first)
        label_at = _label_index(path, label, width)
        pending = [(reader.line_num, first)]
        names = None
    else:
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty CSV file (a header row is required, or say "
                            "there is none with --no-header)")
        header = [name.strip() for name in header]
        width = len(header)
        if isinstance(label, str) and label not in header and _is_index(label):
            label = int(label)  # --label-column 0 on a file whose header has no "0"
        if isinstance(label, str):
            found = [i for i, name in enumerate(header) if name == label]
            if not found:
                raise DataError(f"{path}: no label column {label!r} in header "
                                f"{header!r:.200}; name it with --label-column NAME|INDEX")
            if len(found) > 1:
                raise DataError(f"{path}: the label column {label!r} appears "
                                f"{len(found)} times in the header (columns "
                                f"{', '.join(str(i) for i in found)}); rename the others")
            label_at = found[0]
        else:
            label_at = _label_index(path, label, width)
            _check_label_named_once(path, header, label_at)
        names = [n for i, n in enumerate(header) if i != label_at]
        pending = []
    label_name = None if label_at is None else (
        f"column {label_at}" if names is None else header[label_at])
    if width - (label_at is not None) < 1:
        raise DataError(f"{path}: no feature column: X must be 2-D (rows, features ≥ 1)")
    return _Columns(width, label_at, names, label_name, pending)


def _check_label_named_once(path, header, label_at) -> None:
    """Refuse a label column, given by index, whose header name another column has too:
    that column may hold the labels again, and would be read as a feature."""
    if label_at is None or not header[label_at]:
        return  # blank names say nothing about what a column holds
    twins = [i for i, name in enumerate(header) if name == header[label_at] and i != label_at]
    if twins:
        raise DataError(f"{path}: the label column {label_at} is named "
                        f"{header[label_at]!r:.80}, and so is column "
                        f"{', '.join(str(i) for i in twins)}; that column may hold the "
                        "labels again and would be read as a feature: rename or remove it")


def _is_index(text: str) -> bool:
    return text.strip().lstrip("-").isdigit() and len(text.strip()) < 10


def _label_index(path, label, width) -> int | None:
    if label is None:
        return None
    if isinstance(label, bool) or not isinstance(label, int) or not -width <= label < width:
        raise DataError(f"{path}: label column {label!r} is not an index of its {width} "
                        "columns")
    return label % width


def _blocks(reader, path, columns: _Columns, chunk_rows: int):
    """Parse rows into float64 blocks, naming the line and column of any bad value."""
    rows, labels, lines = [], [], []
    for line_no, row in _numbered(columns.pending, reader):
        if not row or (len(row) == 1 and not row[0].strip() and columns.width > 1):
            continue  # blank lines
        if len(row) != columns.width:
            raise DataError(f"{path}:{line_no}: {len(row)} fields, header has "
                            f"{columns.width}" if columns.feature_names is not None else
                            f"{path}:{line_no}: {len(row)} fields, the first row has "
                            f"{columns.width}")
        if columns.label_at is not None:
            label = row.pop(columns.label_at).strip()
            if not label:
                raise DataError(f"{path}:{line_no}: missing label in column "
                                f"{columns.label_name!r}")
            labels.append(label)
        rows.append(row)
        lines.append(line_no)
        if len(rows) == chunk_rows:
            yield _block(path, rows, labels, lines, columns)
            rows, labels, lines = [], [], []
    if rows:
        yield _block(path, rows, labels, lines, columns)


def _numbered(pending, reader):
    """(line number, fields) of the pending rows, then of the reader's rows."""
    yield from pending
    for row in reader:
        yield reader.line_num, row


def _block(path, rows, labels, lines, columns: _Columns) -> Table:
    try:
        X = np.array(rows, dtype=np.float64)
    except ValueError:
        X = None
    if X is None or not np.isfinite(X).all():
        _raise_bad_value(path, rows, lines, columns)
    y = labels if columns.label_at is not None else None
    return Table(X, y, columns.feature_names, columns.label_name)


def _raise_bad_value(path, rows, lines, columns: _Columns):
    """Find the first missing, non-numeric or non-finite value and raise a DataError
    naming its line and column."""
    for row, line_no in zip(rows, lines):
        for j, text in enumerate(row):
            name = (repr(columns.feature_names[j]) if columns.feature_names is not None
                    else str(j + (columns.label_at is not None and j >= columns.label_at)))
            if not text.strip():
                raise DataError(f"{path}:{line_no}: missing value in column {name}")
            try:
                value = float(text)
            except ValueError:
                raise DataError(f"{path}:{line_no}: non-numeric feature value {text!r:.40} in "
                                f"column {name}") from None
            if not np.isfinite(value):
                raise DataError(f"{path}:{line_no}: column {name} holds {text.strip()!r:.40}; "
                                "features must be finite numbers")
    raise DataError(f"{path}: non-numeric feature value")  # not reached: a cell failed


def _numeric_if_possible(labels: list) -> np.ndarray:
    """Labels read as text: int64 (or float64) when every one is a finite number,
    otherwise the strings."""
    try:
        values = np.array([float(label) for label in labels], dtype=np.float64)
    except ValueError:
        return np.array(labels, dtype=object)
    if not np.isfinite(values).all():
        return np.array(labels, dtype=object)
    if (values == np.floor(values)).all() and (np.abs(values) < 2**53).all():
        return values.astype(np.int64)
    return values


# ---- .npz ---------------------------------------------------------------------------

def load_npz(path):
    """(X, y) from an .npz holding arrays ``X`` (N, F) and ``y`` (N,); never unpickles."""
    arrays = read_npz(path, ("X", "y"))
    return check_pair(path, arrays["X"], arrays["y"])


def read_table(path, fmt: CsvFormat | None = None, *, labels: bool = True) -> Table:
    """A user's .csv or .npz file as a :class:`Table`.

    An .npz gives ``X`` and ``y`` (``y`` optional when ``labels`` is False); a CSV is
    read with ``fmt``.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return read_csv(path, fmt)
    keys = ("X", "y") if labels or "y" in npz_names(path) else ("X",)
    arrays = read_npz(path, keys)
    X, y = check_pair(path, arrays["X"], arrays.get("y", np.zeros(len(arrays["X"]))))
    return Table(X, y if "y" in arrays else None, None, "y" if "y" in arrays else None)


# ---- a training dataset -------------------------------------------------------------

def load_file(path, *, test_fraction: float = 0.2, split_seed: int = 0,
              label_column=DEFAULT_LABEL, delimiter=None, header: bool = True,
              test_path=None) -> Dataset:
    """A :class:`Dataset` from a user's .npz or .csv file.

    With ``test_path``, that file (read the same way) is the test part. Otherwise an
    .npz holding ``X_train, y_train, X_test, y_test`` keeps its own split, and any other
    file is split stratified, ``test_fraction`` of each class to the test part.
    """
    path = Path(path)
    fmt = CsvFormat(delimiter, header, label_column)
    names, label_name, test_text = None, None, None
    if test_path is not None:
        train, test = read_table(path, fmt), read_table(test_path, fmt)
        if train.X.shape[1] != test.X.shape[1]:
            raise DataError(f"{test_path}: {test.X.shape[1]} features, the training file "
                            f"{path} has {train.X.shape[1]}")
        X_train, y_train, X_test, y_test = train.X, train.y, test.X, test.y
        if test.labels_text is None:  # an .npz's typed labels (a CSV's are text)
            _check_same_label_kind(path, y_train, y_test, test_path)
        names, label_name, test_source = train.feature_names, train.label_name, test_path
        test_text = test.labels_text
    elif path.suffix.lower() == ".npz" and {"X_train", "y_train"} <= npz_names(path):
        arrays = read_npz(path, ("X_train", "y_train", "X_test", "y_test"))
        X_train, y_train = check_pair(path, arrays["X_train"], arrays["y_train"])
        X_test, y_test = check_pair(path, arrays["X_test"], arrays["y_test"])
        if X_train.shape[1] != X_test.shape[1]:
            raise DataError(f"{path}: X_train and X_test have different feature counts")
        _check_same_label_kind(path, y_train, y_test)
        test_source = f"{path} (y_test)"
    else:
        table = read_table(path, fmt)
        names, label_name, test_source = table.feature_names, table.label_name, path
        _check_classification(path, table.y)
        try:
            X_train, y_train, X_test, y_test = stratified_split(
                table.X, table.y, test_fraction, split_seed)
        except ValueError as e:
            raise DataError(f"{path}: too few rows to split off a test part ({e})") from e
    _check_classification(path, y_train)
    classes = _classes(path, y_train)
    if classes.dtype.kind not in "biuf" and test_text is not None:
        y_test = test_text  # text classes: the test file's labels as written, not parsed
    # Features stay float64 here: scaling (the command line's) comes before any rounding.
    return Dataset(path.stem, _checked_range(path, X_train),
                   class_indices(classes, y_train, path), _checked_range(test_source, X_test),
                   class_indices(classes, y_test, test_source), classes,
                   feature_names=names, label_name=label_name)


def _classes(path, labels) -> np.ndarray:
    try:
        return np.unique(labels)
    except TypeError as e:  # e.g. strings and numbers in one array
        raise DataError(f"{path}: labels of mixed types ({e})") from e


def class_indices(classes: np.ndarray, labels, source) -> np.ndarray:
    """The index in ``classes`` (sorted) of each label, int64 (N,); a label not among
    them is a DataError naming it and its (1-based) rows."""
    labels = np.asarray(labels)
    if classes.dtype.kind in "biuf" and labels.dtype.kind in "biuf":
        at = np.minimum(np.searchsorted(classes, labels), len(classes) - 1)
        found = np.where(classes[at] == labels, at, -1).astype(np.int64)
    else:  # strings, or text against numbers: compare label by label
        lookup = {_key(c): i for i, c in enumerate(classes.tolist())}
        found = np.array([lookup.get(_key(v), -1) for v in labels.tolist()], dtype=np.int64)
    unknown = np.flatnonzero(found < 0)
    if len(unknown):
        label = labels[unknown[0]]
        rows = np.flatnonzero(np.array([_key(v) == _key(label) for v in labels.tolist()]))
        shown = ", ".join(str(r + 1) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        others = f"; {len(unknown) - len(rows)} more rows have other unknown labels" \
            if len(unknown) > len(rows) else ""
        raise DataError(f"{source}: label {_key(label)!r:.60} (rows {shown}: {len(rows)} "
                        f"in all) is not one of the model's {len(classes)} classes "
                        f"{_preview(classes)}{others}")
    return found


def _key(value):
    """Labels compare by value across types: 2, 2.0 and numpy's 2 are one label; text
    stays text, so "2" is not the number 2."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    return value.item() if isinstance(value, np.generic) else value


def _preview(classes) -> str:
    shown = ", ".join(repr(c)[:30] for c in classes.tolist()[:10])
    return f"[{shown}{', ...' if len(classes) > 10 else ''}]"


def _check_classification(path, labels) -> None:
    """Refuse labels that look like a regression target."""
    n_classes = len(_classes(path, labels))
    if n_classes > MAX_SPARSE_CLASSES and len(labels) < MIN_ROWS_PER_CLASS * n_classes:
        raise DataError(f"{path}: {n_classes:,} distinct labels among {len(labels):,} rows "
                        f"(fewer than {MIN_ROWS_PER_CLASS} rows each): the labels look "
                        "continuous, and gpubp trains a classifier")


def _label_kind(y) -> str:
    return {"b": "integers", "i": "integers", "u": "integers", "f": "floats"}.get(
        y.dtype.kind, "strings")


def _check_same_label_kind(path, y_train, y_test, test_path=None) -> None:
    """Refuse training and test labels of different kinds (integers, floats, strings):
    within one .npz, or between the training file and the ``test_path`` file."""
    train_kind, test_kind = _label_kind(y_train), _label_kind(y_test)
    if train_kind == test_kind:
        return
    if test_path is None:
        raise DataError(f"{path}: y_train holds {train_kind} and y_test {test_kind}; the "
                        "labels must be of one type")
    raise DataError(f"{path} holds {train_kind[:-1]} labels and {test_path} "
                    f"{test_kind[:-1]} labels; the training and test labels must be of "
                    "one type")


def _checked_range(path, X) -> np.ndarray:
    """X as float64, refused when a value is beyond float32's range (a float32 network
    could not take it; a DataError here names the file)."""
    X = np.asarray(X, dtype=np.float64)
    with np.errstate(over="ignore"):
        if not np.isfinite(X.astype(np.float32)).all():
            raise DataError(f"{path}: X has values beyond the range of float32")
    return X


def check_pair(path, X, y):
    """(X, y) of a user's file, checked: numeric 2-D X, 1-D labels of numbers or strings,
    one per row, finite, and at least one row. Raises DataError naming ``path``."""
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

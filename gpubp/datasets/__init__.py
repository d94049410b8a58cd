"""Datasets: the embedded 8×8 digits, MNIST from IDX files, and a user's .npz/.csv files."""

from pathlib import Path

from gpubp.datasets.dataset import Dataset
from gpubp.datasets.digits import load_digits
from gpubp.datasets.files import load_csv, load_file, load_npz
from gpubp.datasets.idx import parse_idx, read_idx, write_idx
from gpubp.datasets.mnist import load_mnist
from gpubp.datasets.preprocessing import MinMaxScaler, StandardScaler, stratified_split

__all__ = [
    "Dataset", "load_dataset", "load_digits", "load_mnist", "load_npz", "load_csv", "load_file",
    "read_idx", "parse_idx", "write_idx", "StandardScaler", "MinMaxScaler", "stratified_split",
]


def load_dataset(spec: str, *, data_dir=None, test_fraction: float = 0.2,
                 split_seed: int | None = None, download: bool = True) -> Dataset:
    """A dataset by name ("digits", "mnist") or by path to a user's .npz or .csv file.

    Digits and user files without their own test split are split stratified, with
    ``test_fraction`` of each class in the test part; ``split_seed`` None keeps the
    fixed default split. MNIST has its standard 60,000/10,000 split.
    """
    split = {} if split_seed is None else {"split_seed": split_seed}
    if spec == "digits":
        return load_digits(test_fraction=test_fraction, **split)
    if spec == "mnist":
        return load_mnist(data_dir, download=download)
    if Path(spec).suffix.lower() in (".npz", ".csv"):
        return load_file(spec, test_fraction=test_fraction, **split)
    raise ValueError(f"dataset: expected 'digits', 'mnist' or a .npz/.csv path, got {spec!r}")

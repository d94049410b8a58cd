"""Datasets: the embedded 8×8 digits, MNIST from IDX files, and a user's .npz/.csv files."""

from gpubp.datasets.dataset import Dataset, load_dataset
from gpubp.datasets.digits import load_digits
from gpubp.datasets.files import load_csv, load_file, load_npz
from gpubp.datasets.idx import parse_idx, read_idx, write_idx
from gpubp.datasets.mnist import load_mnist
from gpubp.datasets.preprocessing import MinMaxScaler, StandardScaler, stratified_split

__all__ = [
    "Dataset", "load_dataset", "load_digits", "load_mnist", "load_npz", "load_csv", "load_file",
    "read_idx", "parse_idx", "write_idx", "StandardScaler", "MinMaxScaler", "stratified_split",
]

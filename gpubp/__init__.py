"""gpubp: the classic sigmoid/softmax network, trained by explicit backpropagation on
NumPy (CPU) or CuPy (NVIDIA GPU) with the same code."""

from gpubp import datasets
from gpubp.backend import Backend, get_backend, to_numpy
from gpubp.errors import (
    BackendError,
    CheckpointError,
    CheckpointMismatchError,
    DataError,
    DivergenceError,
    GpubpError,
    ModelFileError,
    TrainingInterrupted,
)
from gpubp.network import MLP
from gpubp.optim import SGD
from gpubp.schedules import ConstantLR, CosineLR, StepLR
from gpubp.trainer import History, Trainer

__version__ = "0.1.0"

__all__ = [
    "MLP", "SGD", "Trainer", "History", "ConstantLR", "StepLR", "CosineLR", "datasets",
    "Backend", "get_backend", "to_numpy",
    "GpubpError", "BackendError", "DataError", "ModelFileError", "DivergenceError",
    "CheckpointError", "CheckpointMismatchError", "TrainingInterrupted",
    "MLPClassifier", "interop",  # loaded on first use, by __getattr__ below
]
_LAZY = ("MLPClassifier", "interop")


def __getattr__(name):
    # Loaded on first use: MLPClassifier imports scikit-learn, and `import gpubp` loads only
    # what training needs (interop's own imports of torch, onnx, scikit-learn are lazy too).
    if name == "MLPClassifier":
        from gpubp.estimator import MLPClassifier

        return MLPClassifier
    if name == "interop":
        import importlib

        return importlib.import_module("gpubp.interop")
    raise AttributeError(f"module 'gpubp' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

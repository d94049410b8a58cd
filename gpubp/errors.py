"""The library's exceptions. Every one derives from :class:`GpubpError`.

Bad arguments raise the built-in ``ValueError``/``TypeError`` with the argument's name;
these classes cover what goes wrong beyond a single argument.
"""


class GpubpError(Exception):
    """Base class of every gpubp-specific error."""


class BackendError(GpubpError, RuntimeError):
    """The requested array backend cannot work here (not installed, no device, old driver)."""


class DataError(GpubpError, ValueError):
    """A data file is missing, corrupt, has the wrong checksum, or cannot be downloaded."""


class ModelFileError(GpubpError, ValueError):
    """A model file is truncated, corrupt, or not a gpubp model."""


class DivergenceError(GpubpError, RuntimeError):
    """Training produced a non-finite loss; the network holds the last good weights."""


class CheckpointError(GpubpError, ValueError):
    """A checkpoint is truncated, corrupt, not a gpubp checkpoint, or does not match the run."""


class TrainingInterrupted(GpubpError):
    """SIGINT or SIGTERM stopped training at a batch boundary, after a final checkpoint.

    Attributes:
        path: the checkpoint written. signal_name: "SIGINT" or "SIGTERM".
        exit_code: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
        history: the :class:`gpubp.History` up to the interruption.
    """

    def __init__(self, message: str, *, path, signal_name: str, exit_code: int, history):
        super().__init__(message)
        self.path = path
        self.signal_name = signal_name
        self.exit_code = exit_code
        self.history = history


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint of a different run (network, data or settings); not skipped."""

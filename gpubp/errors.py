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

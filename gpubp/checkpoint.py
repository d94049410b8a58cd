"""Checkpoint files: arrays and a JSON state, written atomically, verified by checksum.

A checkpoint is one file, ``DIR/ckpt-{step:012d}.ckpt``, laid out as

    b"GPUBPCK1" (8 bytes) | sha256 of the body (32 bytes) | body

where the body is a safetensors file (raw arrays and a JSON header, no pickle) whose
metadata holds ``format``, ``version`` and ``state`` (a JSON object). Files are written
through a temporary file, fsync and rename (:func:`gpubp.fileio.atomic_writer`), so a
crash leaves the earlier checkpoints as they were; a file that is truncated or corrupt
anyway (a copy cut short, a bad disk) fails its checksum and is never loaded.

This module knows the file format only; :mod:`gpubp.training_state` knows what a
training run stores in it.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from pathlib import Path

import numpy as np
from safetensors.numpy import save as safetensors_save

from gpubp.errors import CheckpointError, CheckpointMismatchError
from gpubp.fileio import atomic_writer, read_safetensors

MAGIC = b"GPUBPCK1"
DIGEST_SIZE = 32
HEAD = len(MAGIC) + DIGEST_SIZE  # bytes before the body
FORMAT = "gpubp.checkpoint"
VERSION = "1"
NAME = re.compile(r"ckpt-(\d{12})\.ckpt")
TEMPORARY = ".ckpt-*.tmp"  # what atomic_writer leaves behind when killed mid-write


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped because it failed to load."""


def checkpoint_path(directory, step: int) -> Path:
    """Where the checkpoint of ``step`` (optimizer steps done) lives in ``directory``."""
    return Path(directory) / f"ckpt-{step:012d}.ckpt"


def list_checkpoints(directory) -> list[Path]:
    """The checkpoint files in ``directory``, oldest (fewest steps) first; [] if none."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if NAME.fullmatch(p.name) and p.is_file()]
    return sorted(found, key=lambda p: int(NAME.fullmatch(p.name).group(1)))


def write_checkpoint(directory, step: int, tensors: dict, state: dict, *,
                     keep_last: int = 3) -> Path:
    """Write a checkpoint atomically, then delete all but the newest ``keep_last``.

    Args:
        tensors: name -> NumPy array (float32/float64/int64...), saved bit-exactly.
        state: a JSON-serializable dict.
    Returns the path written. An OSError (disk full...) leaves the directory as it was.
    """
    metadata = {"format": FORMAT, "version": VERSION, "state": json.dumps(state)}
    body = safetensors_save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                            metadata=metadata)
    path = checkpoint_path(directory, step)
    with atomic_writer(path) as f:
        f.write(_head(body))
        f.write(body)
    rotate(directory, keep_last)
    return path


def read_checkpoint(path) -> tuple[dict, dict]:
    """(tensors, state) of the checkpoint at ``path``; tensors are NumPy arrays.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: the file is truncated, corrupt, or not a gpubp checkpoint.
    """
    path = Path(path)
    data = path.read_bytes()
    if len(data) < HEAD or not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a gpubp checkpoint (no {MAGIC!r} header)")
    body = memoryview(data)[HEAD:]
    if _head(body) != data[:HEAD]:
        raise CheckpointError(f"{path}: checksum mismatch; the file is truncated or corrupt")
    try:
        metadata, tensors = read_safetensors(bytes(body))
    except ValueError as e:
        raise CheckpointError(f"{path}: unreadable checkpoint body ({e})") from e
    if metadata.get("format") != FORMAT or metadata.get("version") != VERSION:
        raise CheckpointError(f"{path}: not a gpubp checkpoint of version {VERSION} "
                              f"(format {metadata.get('format')!r}, "
                              f"version {metadata.get('version')!r})")
    try:
        state = json.loads(metadata.get("state", ""))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint state ({e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint state is not a JSON object")
    return tensors, state


def seal(body: bytes) -> bytes:
    """A checkpoint file's bytes for a safetensors ``body``: magic, checksum, body."""
    return _head(body) + body


def _head(body) -> bytes:
    return MAGIC + hashlib.sha256(body).digest()


def load_latest(directory, accept):
    """The newest checkpoint in ``directory`` that reads and that ``accept`` takes.

    Each newer file that fails is skipped with a :class:`CheckpointWarning` naming why.
    ``accept(path, tensors, state)`` may raise CheckpointError to reject a file too;
    a CheckpointMismatchError from it is raised, not skipped.
    Returns (path, what accept returned), or None when no file loads.
    """
    for path in reversed(list_checkpoints(directory)):
        try:
            accepted = accept(path, *read_checkpoint(path))
        except CheckpointMismatchError:
            raise
        except CheckpointError as why:
            warnings.warn(f"skipping checkpoint {path}: {why}", CheckpointWarning, stacklevel=2)
            continue
        return path, accepted
    return None


def rotate(directory, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints, and stale temporary files."""
    directory = Path(directory)
    for old in list_checkpoints(directory)[:-keep_last]:
        old.unlink(missing_ok=True)
    for stale in directory.glob(TEMPORARY):
        stale.unlink(missing_ok=True)

"""Checkpoint files: arrays and a JSON state, written atomically, verified by checksum.

A checkpoint is one file, ``DIR/ckpt-{step:012d}.ckpt`` (more digits past 10^12 steps),
laid out as

    b"GPUBPCK1" (8 bytes) | sha256 of the body (32 bytes) | body

where the body is a safetensors file (raw arrays and a JSON header, no pickle) whose
metadata holds ``format``, ``version`` and ``state`` (a JSON object). Files are written
through a temporary file, fsync and rename (:func:`gpubp.fileio.atomic_writer`), so a
crash leaves the earlier checkpoints as they were; a file that is truncated or corrupt
anyway (a copy cut short, a bad disk) fails its checksum and is never loaded.

A run holds its directory through :class:`CheckpointDirectory`: an exclusive lock for the
whole run (a second writer is refused at once, with the holder's process id), checks
that the directory can be written before the first step, and rotation that keeps the
newest checkpoints that verify, never the one just written and never a file it could not
read. Something other than a regular file under a checkpoint's name (a FIFO, a device, a
directory, a link to one) is skipped with a warning, never opened and never deleted.

This module knows the file format only; :mod:`gpubp.training_state` knows what a
training run stores in it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np
from safetensors.numpy import save as safetensors_save

from gpubp.errors import CheckpointError, CheckpointMismatchError
from gpubp.fileio import (
    atomic_writer,
    describe_mode,
    open_regular,
    read_safetensors,
    read_safetensors_bytes,
    remove_if_abandoned,
)

MAGIC = b"GPUBPCK1"
DIGEST_SIZE = 32
HEAD = len(MAGIC) + DIGEST_SIZE  # bytes before the body
FORMAT = "gpubp.checkpoint"
VERSION = "1"
# Steps are zero-padded to 12 digits and grow past them; 19 digits hold any int64 step.
NAME = re.compile(r"ckpt-(\d{12,19})\.ckpt")
TEMPORARY = ".ckpt-*.tmp"  # what atomic_writer leaves behind when killed mid-write
LOCK = ".lock"  # holds the writing process's id; flock'ed for the whole run
MAX_BYTES = 1 << 40  # beyond any network this library trains
UNREADABLE = ".unreadable"  # suffix of an unreadable checkpoint moved aside, never deleted


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


def write_checkpoint(directory, step: int, tensors: dict, state: dict) -> Path:
    """Write the checkpoint of ``step`` atomically; returns its path.

    Args:
        tensors: name -> NumPy array (float32/float64/int64...), saved bit-exactly.
        state: a JSON-serializable dict.
    An OSError (disk full...) leaves the directory as it was.
    """
    metadata = {"format": FORMAT, "version": VERSION, "state": json.dumps(state)}
    body = safetensors_save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                            metadata=metadata)
    path = checkpoint_path(directory, step)
    with atomic_writer(path) as f:
        f.write(_head(body))
        f.write(body)
    return path


def read_checkpoint(path) -> tuple[dict, dict]:
    """(tensors, state) of the checkpoint at ``path``; tensors are NumPy arrays.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: the file is truncated, corrupt, or not a gpubp checkpoint.
    """
    path = Path(path)
    with open_regular(path, CheckpointError) as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise CheckpointError(f"{path}: not a gpubp checkpoint (no {MAGIC!r} header)")
    data = read_safetensors_bytes(path, error=CheckpointError, prefix=HEAD, limit=MAX_BYTES)
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


def latest_metadata(directory) -> dict | None:
    """The ``metadata`` that :meth:`gpubp.Trainer.fit` stored in the newest checkpoint of
    ``directory`` that reads (the command line keeps its options there); None when no
    checkpoint reads or the newest that does holds none. See :func:`newest_metadata`."""
    found = newest_metadata(directory)
    return None if found is None else found[1]


def newest_metadata(directory, check=None) -> tuple[Path, dict | None] | None:
    """(path, metadata) of the newest checkpoint of ``directory`` that reads and whose
    metadata ``check(path, metadata)``, when given, accepts (by not raising
    CheckpointError); metadata is None when it holds none.
    None when no checkpoint does. Files that fail are skipped silently here: resuming
    warns about them."""
    for path in reversed(list_checkpoints(directory)):
        try:
            _, state = read_checkpoint(path)
            metadata = state.get("metadata")
            metadata = metadata if isinstance(metadata, dict) else None
            if check is not None:
                check(path, metadata)
        except CheckpointMismatchError:
            raise
        except (CheckpointError, OSError):  # unreadable, or gone: the next older one
            continue
        return path, metadata
    return None


class CheckpointDirectory:
    """One run's hold on its checkpoint directory, from :meth:`open` to :meth:`close`.

    ``open`` checks that the directory can be written, creates it, and takes an
    exclusive ``flock`` on ``DIR/.lock`` for the whole run; ``write`` writes a
    checkpoint and rotates. Rotation keeps the ``keep_last`` newest checkpoints known to
    verify (written by this run, or read back with a good checksum), always keeps the one
    just written, and never deletes a file it cannot read: it reports it instead.
    """

    def __init__(self, directory, keep_last: int = 3, check_metadata=None):
        self.directory = Path(directory)
        self.keep_last = keep_last
        # check_metadata(path, metadata): raises CheckpointError for a checkpoint this run
        # must not resume from nor count as good (then skipped like an unreadable one), or
        # CheckpointMismatchError to stop the resume (the command line's recorded options)
        self._check_metadata = check_metadata
        self._lock_fd = None
        self._verified: dict[str, tuple] = {}  # name -> (size, mtime_ns) known to verify
        self._unreadable: dict[str, tuple] = {}  # name -> (size, mtime_ns) that failed

    # ---- holding the directory -----------------------------------------------------------

    def open(self) -> "CheckpointDirectory":
        """Check, create and lock the directory. Raises ValueError naming the problem."""
        _check_usable(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        _probe_write(self.directory)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(f"checkpoint_dir: {self.directory} is in use by another run "
                             f"(process {holder}); wait for it to finish or stop it") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        return self

    def close(self) -> None:
        """Release the lock (the lock file stays; it is harmless)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    # ---- reading and writing -------------------------------------------------------------

    def list(self) -> list[Path]:
        return list_checkpoints(self.directory)

    def load_latest(self, accept):
        """The newest checkpoint that reads and that ``accept(path, tensors, state)``
        takes: (path, what accept returned), or None when none does.

        ``accept`` may raise CheckpointError to reject a file, and so may the metadata
        check (``check_metadata``), which runs first; each newer file that
        fails is skipped with a :class:`CheckpointWarning` naming why (and is never
        deleted). A CheckpointMismatchError (a different run's checkpoint) is raised, not
        skipped.
        """
        for path in reversed(self.list()):
            try:
                tensors, state = read_checkpoint(path)
                self._check(path, state)
                accepted = accept(path, tensors, state)
            except CheckpointMismatchError:
                raise
            except (CheckpointError, OSError) as why:  # corrupt, or EACCES/EIO: skipped
                self._unreadable[path.name] = _identity(path)
                warnings.warn(f"skipping checkpoint {path}: {why}", CheckpointWarning,
                              stacklevel=2)
                continue
            self._verified[path.name] = _identity(path)
            return path, accepted
        return None

    def write(self, step: int, tensors: dict, state: dict) -> Path:
        """Write the checkpoint of ``step``, then rotate. Returns its path.

        A file already at that name that does not verify is moved aside (``NAME.unreadable``)
        first, never overwritten.
        """
        target = checkpoint_path(self.directory, step)
        if os.path.lexists(target) and not self._verifies(target):  # a dangling link too
            self._move_aside(target)
        path = write_checkpoint(self.directory, step, tensors, state)
        self._verified[path.name] = _identity(path)
        self.rotate(keep=path)
        return path

    def rotate(self, keep: Path | None = None) -> None:
        """Delete verified checkpoints beyond the newest ``keep_last`` (never ``keep``),
        and temporary files of killed writes; report files that do not verify."""
        good = [p for p in self.list() if self._verifies(p)]
        kept = set(good[-self.keep_last:]) | ({keep} if keep is not None else set())
        for old in good:
            if old not in kept:
                old.unlink(missing_ok=True)
                self._verified.pop(old.name, None)
        for stale in self.directory.glob(TEMPORARY):
            try:  # a temporary file nobody holds the lock of: a killed write's
                remove_if_abandoned(stale)
            except OSError:  # a live writer's file, or gone already
                pass

    def _verifies(self, path: Path) -> bool:
        """Whether ``path`` is a complete checkpoint (read once, then remembered by its
        size and modification time). One that is not is reported once."""
        identity = _identity(path)
        if identity is None:  # gone, or a link to nothing: nothing there verifies
            return False
        if self._verified.get(path.name) == identity:
            return True
        if self._unreadable.get(path.name) == identity:
            return False
        try:
            _, state = read_checkpoint(path)
            try:
                self._check(path, state)
            except CheckpointMismatchError:
                pass  # good, just not for resuming: rotation counts it
        except (CheckpointError, OSError) as why:
            self._unreadable[path.name] = identity
            warnings.warn(f"checkpoint {path} cannot be read or used ({why}); it is left in "
                          "place and not counted among the checkpoints kept",
                          CheckpointWarning, stacklevel=4)
            return False
        self._verified[path.name] = identity
        return True

    def _check(self, path: Path, state: dict) -> None:
        """Apply the metadata check, if any, to a checkpoint's state."""
        if self._check_metadata is not None:
            metadata = state.get("metadata")
            self._check_metadata(path, metadata if isinstance(metadata, dict) else None)

    def _move_aside(self, path: Path) -> Path:
        aside, n = path.with_name(path.name + UNREADABLE), 1
        while os.path.lexists(aside):
            aside, n = path.with_name(f"{path.name}{UNREADABLE}.{n}"), n + 1
        os.replace(path, aside)
        warnings.warn(f"checkpoint {path} cannot be read or used; moved to {aside} so that "
                      "a new checkpoint can take its name", CheckpointWarning, stacklevel=3)
        return aside


def _identity(path: Path) -> tuple | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def _check_usable(directory: Path) -> None:
    """Refuse, before any step, a checkpoint directory that a write would later fail in."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint_dir: {directory} exists and is not a directory")
    existing = directory
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"checkpoint_dir: {directory} lies under {existing}, which is not "
                         "a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"checkpoint_dir: cannot write in {existing} (permission denied)")
    if existing != directory:
        return
    for entry in directory.iterdir():
        if NAME.fullmatch(entry.name):
            if not entry.is_file():  # never opened: listing, resume and rotation skip it
                warnings.warn(f"skipping {entry}: it is {_kind_of(entry)}, not a regular "
                              "file, so it is not a checkpoint; it is left in place",
                              CheckpointWarning, stacklevel=4)
            continue
        ours = entry.name == LOCK or (entry.name.startswith(".ckpt-")
                                      and entry.name.endswith(".tmp"))
        if ours and (entry.is_symlink() or not entry.is_file()):
            raise ValueError(f"checkpoint_dir: {entry} is not a regular file, where gpubp "
                             "must write its own files; move it away")


def _kind_of(entry: Path) -> str:
    """What a directory entry that is not a regular file is, without opening it."""
    try:
        mode = entry.stat().st_mode  # through a link: what reading would meet
    except OSError as e:
        return f"a link that cannot be followed ({e.strerror})"
    kind = describe_mode(mode)
    return f"a link to {kind}" if entry.is_symlink() else kind


def _probe_write(directory: Path) -> None:
    """Create and remove a file: what permissions alone do not tell (a read-only mount)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".probe-", dir=directory)
    except OSError as e:
        raise ValueError(f"checkpoint_dir: cannot create files in {directory} ({e.strerror})") \
            from e
    os.close(fd)
    os.unlink(name)

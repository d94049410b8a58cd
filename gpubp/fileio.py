"""Files, carefully: reading a user's input without hanging or over-allocating, writing
atomically without leaving partial files, and the safetensors container both use.

Reading. An input path must name a regular file. It is checked with ``stat`` before it
is opened and with ``fstat`` after; the open is non-blocking, so that a FIFO with no
writer cannot hang it: a FIFO, a device (``/dev/zero``), a socket or a directory is
refused before a byte is read. Sizes are bounded before reading, what a header claims
is compared with the memory this process may still use (:func:`check_allocation`)
before anything is allocated, and declared data is read in chunks up to the claim
(:func:`read_declared`), so a decompressor never runs ahead of it. Safetensors files
are checked against their header's size before they are read
(:func:`read_safetensors_bytes`).

Writing. :func:`atomic_writer` writes a temporary file beside the target, fsyncs it and
renames it over the target, so a reader sees the old file or the new one, never part of
one; the target keeps its permissions.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import secrets
import stat
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.numpy import load as safetensors_load

TEMPORARY_SUFFIX = ".tmp"
# A temporary name is ".{stem}.{12 hex}.tmp"; the stem is the target's name cut to fit
# NAME_MAX (255 bytes on Linux file systems) so that any legal target name works.
_TOKEN_BYTES = 6
_TEMPORARY_OVERHEAD = 1 + 1 + 2 * _TOKEN_BYTES + len(TEMPORARY_SUFFIX)
# Fresh temporary names a save tries when other saves keep taking its files for a dead
# writer's before it can lock them (each try is a new random name; one is the rule).
_TEMPORARY_TRIES = 20


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/gpubp/<parts>`` (``~/.cache`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "gpubp", *parts)


# ---- reading ---------------------------------------------------------------------------

CHUNK = 1 << 20  # reads of declared data: memory follows the bytes present, a MiB at a time
# The safetensors format's own limit on the length of its JSON header.
SAFETENSORS_HEADER_LIMIT = 100_000_000


def open_regular(path, error=ValueError):
    """``path`` opened for binary reading, after checking that it is a regular file.

    Checked twice: with ``stat`` before the open, so that a device is never opened at
    all (opening one can act: a tape rewinds, a terminal becomes the controlling one),
    and with ``fstat`` after it, in case something else was put at ``path`` in between;
    that open is non-blocking (and takes no terminal), so a FIFO cannot hang it.

    Raises:
        FileNotFoundError: nothing at ``path`` (and other OSErrors from ``open``).
        error: ``path`` is a FIFO, a device, a socket or a directory; the message names it.
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise error(f"{path}: is {describe_mode(mode)}, not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a file") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{path}: is {describe_mode(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def describe_mode(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words ("a FIFO (named pipe)"...)."""
    for test, what in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def read_regular(path, *, limit: int, error=ValueError) -> bytes:
    """All bytes of the regular file at ``path``, refusing files over ``limit`` bytes.

    The size is checked with ``fstat`` before reading and again while reading (a file
    may grow), and against the memory this process may use (:func:`check_allocation`).
    """
    with open_regular(path, error) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise error(f"{path}: {size:,} bytes, more than the {limit:,} this reader accepts")
        check_allocation(size, path, error)
        data = f.read(size + 1)  # read(n) allocates n at once: ask for what is there
    if len(data) > size:
        raise error(f"{path}: grew past its {size:,} bytes while being read")
    return data


def available_memory() -> int | None:
    """Bytes this process may still allocate: the least of the address-space limit
    (RLIMIT_AS) less the address space in use (VmSize), the data limit (RLIMIT_DATA)
    less the data in use (VmData), what the memory cgroup's limit leaves (a
    container's limit, which MemAvailable does not show), and the system's
    MemAvailable. None where none is known."""
    bounds = []
    for limit, in_use in ((resource.RLIMIT_AS, "VmSize:"), (resource.RLIMIT_DATA, "VmData:")):
        soft, _ = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY:
            bounds.append(max(soft - _proc_kib("/proc/self/status", in_use, 0) * 1024, 0))
    room = cgroup_memory_room()
    if room is not None:
        bounds.append(room)
    available = _proc_kib("/proc/meminfo", "MemAvailable:", None)
    if available is not None:
        bounds.append(available * 1024)
    return min(bounds) if bounds else None


# (limit file, usage file, the memory.stat key of reclaimable file cache) per version.
_CGROUP_FILES = {2: ("memory.max", "memory.current", "inactive_file"),
                 1: ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")}
_CGROUP_UNLIMITED = 1 << 60  # v1 writes "no limit" as a huge number, not "max"


def cgroup_memory_room(root="/sys/fs/cgroup", membership="/proc/self/cgroup") -> int | None:
    """Bytes left under this process's memory cgroup limits (v2, else v1), the least
    over its cgroup and those above it; None with no limit or no cgroup file system.

    Usage counts page cache, which the kernel reclaims before it fails an allocation,
    so the inactive file cache is counted as free. Where the process's own cgroup is
    not visible (a container sees its cgroup as the root), the root is read.
    """
    try:
        with open(membership) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    places = {}  # cgroup version: (its mount point, this process's cgroup under it)
    for line in lines:
        _, controllers, where = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            places[2] = (Path(root), where.strip("/"))
        elif "memory" in controllers.split(","):
            places[1] = (Path(root, "memory"), where.strip("/"))
    for version in (2, 1):
        if version not in places:
            continue
        base, where = places[version]
        folder = base / where if (base / where).is_dir() else base
        rooms = []
        while True:  # a limit higher up binds too
            room = _cgroup_room(folder, *_CGROUP_FILES[version])
            if room is not None:
                rooms.append(room)
            if folder == base:
                break
            folder = folder.parent
        if rooms:
            return min(rooms)
    return None


def _cgroup_room(folder: Path, limit_name: str, usage_name: str, cache_key: str):
    """limit − (usage − inactive file cache) of one cgroup folder; None without a limit."""
    try:
        limit = (folder / limit_name).read_text().strip()
        if limit == "max" or int(limit) >= _CGROUP_UNLIMITED:
            return None
        usage = int((folder / usage_name).read_text())
    except (OSError, ValueError):
        return None
    cache = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == cache_key:
                cache = int(value)
    except (OSError, ValueError):
        pass  # usage as it is: less room, never more
    return max(int(limit) - max(usage - cache, 0), 0)


def _proc_kib(path: str, key: str, default):
    """A "key: N kB" figure of a /proc file, in KiB."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return default


def check_allocation(n_bytes: int, path, error=ValueError, what: str = "its data") -> None:
    """Raise ``error`` naming ``path`` and both sizes when ``n_bytes`` (what a file says
    it holds) exceeds the memory this process may still use."""
    available = available_memory()
    if available is not None and n_bytes > available:
        raise error(f"{path}: {what} needs {n_bytes:,} bytes, more than the {available:,} "
                    "this process may still allocate (its address-space or data limit, "
                    "its memory cgroup, or the system's available memory)")


def read_declared(f, n_bytes: int, path, error=ValueError, what: str = "its data") -> bytearray:
    """The ``n_bytes`` of data a header declares, read from the stream ``f``: up to
    ``n_bytes + 1`` bytes (one more shows trailing data, fewer a truncated stream; the
    caller says which), in chunks into one growing buffer, never a list of parts
    joined, so memory follows the bytes present and is never twice the data.

    A claim beyond the memory this process may use (:func:`check_allocation`) raises
    ``error`` naming ``path`` and both sizes, once one chunk has shown that the stream
    does go on: a stream shorter than that is returned for the caller to call
    truncated, the truer message. ``f.read(k)`` must make at most k bytes (a file, a
    GzipFile and :mod:`gpubp.datasets.npz`'s member streams do), so that nothing is
    decompressed ahead of the bound.
    """
    data = bytearray()
    try:
        available = available_memory()
        if available is not None and n_bytes > available:
            _fill(f, data, min(n_bytes + 1, CHUNK))
            if len(data) < CHUNK:
                return data  # a short stream: the caller's "truncated"
            check_allocation(n_bytes, path, error, what)  # raises, unless memory was freed
        _fill(f, data, n_bytes + 1)
    except MemoryError:
        got = len(data)
        data = None  # let go of it before anything else allocates
        raise error(f"{path}: ran out of memory after {got:,} of the {n_bytes:,} bytes "
                    f"{what} declares") from None
    return data


def _fill(f, data: bytearray, limit: int) -> None:
    """Append chunks of ``f`` to ``data`` until it holds ``limit`` bytes or ``f`` ends."""
    while len(data) < limit:
        part = f.read(min(CHUNK, limit - len(data)))
        if not part:
            break
        data += part


def read_safetensors_bytes(path, *, error, prefix: int = 0, limit: int = 1 << 40) -> bytes:
    """All bytes of the safetensors file at ``path``, behind a ``prefix``-byte head of
    its own (a checkpoint's magic and checksum; 0 for a model), read only once its
    header has shown that the file is exactly as long as its tensors need.

    Read first: the head, the 8-byte little-endian header length n (at most 100 MB,
    the format's limit), the JSON header. The file must then be prefix + 8 + n + the
    end of its tensors' ``data_offsets`` bytes long (``fstat``), at most ``limit``, and
    fit in memory (:func:`check_allocation`); only then is the rest read. So a 3 GiB
    file of zeros costs 8 bytes of reading and a false size claim nothing.

    Raises:
        FileNotFoundError: nothing at ``path``.
        error: not a regular file; a header that is not a JSON object, or a tensor
            without [begin, end] offsets; a size other than the header's; too large.
    """
    def unreadable(why):  # the file is not what it claims to be
        return error(f"{path}: not a readable safetensors file ({why})")

    with open_regular(path, error) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise error(f"{path}: {size:,} bytes, more than the {limit:,} this reader accepts")
        head = f.read(prefix + 8)
        if len(head) < prefix + 8:
            raise unreadable(f"{size:,} bytes, too short for the {prefix + 8} bytes of its "
                             "head and header length")
        n = int.from_bytes(head[prefix:], "little")
        if n > SAFETENSORS_HEADER_LIMIT:
            raise unreadable(f"header length {n:,} bytes, over the safetensors limit of "
                             f"{SAFETENSORS_HEADER_LIMIT:,}")
        if prefix + 8 + n > size:
            raise unreadable(f"header length {n:,} bytes, but only {size - prefix - 8:,} "
                             "follow it")
        start = prefix + 8 + n
        total = start + _tensor_data_size(f.read(n), unreadable)
        if total > limit:
            raise error(f"{path}: its header describes {_count(total)} bytes, more than the "
                        f"{limit:,} this reader accepts")
        if total != size:
            raise unreadable(f"{size:,} bytes, but its header describes {total:,} bytes: "
                             f"{start:,} of head and header, {total - start:,} of tensor "
                             "data; the file is truncated or has bytes after its tensors")
        check_allocation(total, path, error, "the file")
        f.seek(0)
        try:
            data = f.read(total)  # one buffer of the checked size, no copies
        except MemoryError:
            raise error(f"{path}: ran out of memory reading its {total:,} bytes") from None
        if len(data) != total or f.read(1):
            raise error(f"{path}: changed while being read ({total:,} bytes expected)")
    return data


def _count(n: int) -> str:
    """``n`` with thousands separators, or its first digits and length when it is huge
    (a header's 400-digit offset would fill a message)."""
    text = str(n)
    return f"{n:,}" if len(text) <= 30 else f"{text[:12]}… ({len(text)} digits)"


def _tensor_data_size(raw: bytes, unreadable) -> int:
    """The bytes of tensor data a safetensors JSON header describes: the end of its
    furthest tensor (the format packs tensors from 0 without gaps; safetensors checks
    that, and each tensor's size, when it loads the bytes)."""
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:  # RecursionError: deeply nested JSON
        raise unreadable(f"header is not valid JSON: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict):
        raise unreadable("header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(v) is int and v >= 0 for v in offsets)  # no bool, no float
                or offsets[0] > offsets[1]):
            raise unreadable(f"tensor {name!r:.80} has data_offsets {offsets!r:.80}; "
                             "expected [begin, end], integers with 0 ≤ begin ≤ end")
        end = max(end, offsets[1])
    return end


# ---- safetensors -----------------------------------------------------------------------

def read_safetensors(data: bytes) -> tuple[dict, dict]:
    """(metadata, tensors) of the bytes of a safetensors file; NumPy arrays, no pickle.

    The arrays are views of ``data``'s size at most: safetensors checks every tensor's
    offsets against the buffer before making it. ``metadata`` is ``{}`` when absent.

    Raises:
        ValueError: anything unreadable (bad header, offsets, JSON, a tensor name given
            twice, or a dtype NumPy lacks).
    """
    try:
        header = _read_header(data)  # first: safetensors keeps the last of duplicate names
        tensors = safetensors_load(data)
    except (SafetensorError, KeyError, OverflowError, RecursionError) as e:
        # KeyError: a dtype NumPy has no name for (BF16); RecursionError: deep JSON.
        raise ValueError(f"{type(e).__name__}: {e}") from e
    metadata = header.get("__metadata__")
    return (metadata if isinstance(metadata, dict) else {}), tensors


def _read_header(data: bytes) -> dict:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON)."""
    if len(data) < 8:
        raise ValueError("file is shorter than the 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError(f"header claims {n} bytes, the file has {len(data) - 8} after it")
    header = json.loads(data[8:8 + n], object_pairs_hook=_unique_keys)
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header


def _unique_keys(pairs) -> dict:
    """A JSON object's dict, refusing a key given twice (the format forbids it)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"header names {twice!r:.80} twice")
    return result


# ---- writing ---------------------------------------------------------------------------

def temporary_name(path: Path, token: str) -> Path:
    """The temporary file :func:`atomic_writer` uses for ``path``: hidden, beside it,
    short enough for any legal name of ``path``."""
    stem = path.name
    room = 255 - _TEMPORARY_OVERHEAD
    if len(os.fsencode(stem)) > room:
        stem = os.fsdecode(os.fsencode(stem)[:room]).rstrip("\ufffd")
    return path.with_name(f".{stem}.{token}{TEMPORARY_SUFFIX}")


def _is_temporary_of(candidate: Path, path: Path) -> bool:
    """Whether ``candidate`` is a temporary file :func:`atomic_writer` made for ``path``."""
    prefix = temporary_name(path, "").name[:-len(TEMPORARY_SUFFIX)]
    name = candidate.name
    token = name[len(prefix):-len(TEMPORARY_SUFFIX)]
    return (name.startswith(prefix) and name.endswith(TEMPORARY_SUFFIX)
            and len(token) == 2 * _TOKEN_BYTES and all(c in "0123456789abcdef" for c in token))


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files that killed writes to ``path`` left beside it.

    Only regular files named by :func:`atomic_writer`'s pattern for this very target are
    candidates, and only those no live writer holds: a writer holds an exclusive
    ``flock`` on its temporary file from just after creating it until it is renamed, so a
    lock that can be taken means its writer is gone, however recent the file.
    """
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for candidate in entries:
        if _is_temporary_of(candidate, path):
            with contextlib.suppress(OSError):
                remove_if_abandoned(candidate)


def remove_if_abandoned(candidate: Path) -> None:
    """Delete the temporary file ``candidate`` if no live writer holds its lock (see
    above). OSError when it cannot be opened, BlockingIOError when a writer holds it.

    The file is opened non-blocking without following links, its lock is taken without
    waiting, and it is unlinked while that lock is held and only if the name still leads
    to the file locked; a writer that created it but had not locked it yet sees, once it
    has the lock, that its file is gone, and starts again (:func:`_locked_temporary`).
    """
    fd = os.open(candidate, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: a live writer
        now = os.lstat(candidate)
        if (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
            candidate.unlink()
    finally:
        os.close(fd)  # releases the lock, after the unlink


def _locked_temporary(path: Path):
    """(name, binary file) of a new temporary file for ``path``, created and holding an
    exclusive ``flock``; the lock is what tells other saves that its writer is alive.

    Between the create and the lock, another save may take the file for a dead
    writer's and remove it: the lock is then busy, or the file has no name left, and a
    new name is tried.
    """
    for _ in range(_TEMPORARY_TRIES):
        tmp = temporary_name(path, secrets.token_hex(_TOKEN_BYTES))
        try:
            f = open(tmp, "xb")
        except OSError as e:  # name the file being written, not our temporary name
            raise type(e)(e.errno, f"cannot write {path} ({e.strerror})") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(f.fileno()).st_nlink > 0:
                return tmp, f
        except BlockingIOError:
            pass  # another save is removing it right now
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        f.close()  # removed by another save before we held it: not ours to unlink
    raise OSError(f"cannot write {path}: {_TEMPORARY_TRIES} temporary files in a row were "
                  "removed by other saves to the same path before they could be locked")


def check_writable(path, name: str = "path") -> Path:
    """Check, before any work, that a file can later be written at ``path``.

    The path must not be a directory, its folder must exist (or be creatable under
    existing folders), and a file must be creatable there: a probe file is made and
    removed, since permission bits alone say nothing to root or of a read-only mount.
    Nothing else is created. Raises ValueError naming ``name`` and the problem.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name}: {path} is a directory")
    if path.exists() and not path.is_file():
        raise ValueError(f"{name}: {path} exists and is not a regular file")
    folder = path.parent
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{name}: {path} lies under {folder}, which is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gpubp-probe-", dir=folder)
    except OSError as e:
        raise ValueError(f"{name}: cannot write in {folder} ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return path


@contextlib.contextmanager
def atomic_writer(path):
    """Yield a binary file whose contents replace ``path`` only if the block succeeds.

    Readers see the old file or the new one, never part of one. A new file gets the
    usual umask permissions; a replaced one keeps its mode. Temporary files an earlier
    killed write left for the same target are removed first: the temporary file is
    ``flock``ed from its creation to its rename, so one nobody holds is a dead writer's.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    tmp, f = _locked_temporary(path)
    try:
        with f:  # locked until closed, after the rename: never taken for a dead writer's
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); harmless where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name the same existing file (links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


"""Fuzz every loader that reads a user's file: IDX, MNIST (an IDX pair), .npz, CSV,
model files and checkpoints.

    PYTHONPATH=. python -m bench.fuzz_loaders --seconds 300 --out fuzz.json

Each case mutates a valid seed file (bit flips, boundary bytes, 32/64-bit size fields,
truncation, deletion, insertion, duplication, digit runs replaced by huge or odd
numbers, 400-digit integers among them; for containers also the inner file before
re-wrapping: gzip, zip members under every method zipfile writes (stored, deflate,
bzip2, lzma), a checkpoint's body re-sealed with a fresh checksum, JSON edited field
by field: a checkpoint's state, a model's safetensors header and metadata) and loads
it. A case passes when the loader returns, or raises a gpubp error that is a
ValueError. Anything else is a finding: another exception, a case running past
``--timeout`` seconds, or a tracemalloc peak above MEMORY_FACTOR × the bytes the loader
is given + MEMORY_SLACK ("given": the file, or its decompressed content for gzip and
compressed zip members). Before its timed cases, each loader is also given each of its
files replaced by a FIFO with no writer, a directory and /dev/zero, in a child process
under an address-space limit (a loader that hangs or reads /dev/zero forever must not
take this process, or the machine, with it). Prints one JSON summary: cases per
loader, outcomes, the worst memory ratio, and each distinct finding with a base64
example.
"""

from __future__ import annotations

import argparse
import base64
import copy
import gzip
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save as safetensors_save

import gpubp
from gpubp.datasets import load_file, mnist, read_idx, write_idx
from gpubp.errors import GpubpError

MEMORY_FACTOR = {"csv": 200, "default": 16}  # CSV rows become Python lists of str first
MEMORY_SLACK = 4 << 20  # read buffers: gzip and zip reads take 1 MiB chunks
DIGIT_RUNS = [b"0", b"-1", b"4294967296", b"1000000000000", b"1e999", b"nan",
              b"99999999999999999999999", b"9" * 400, b"-" + b"9" * 400, b"1" * 5000]
U32 = [0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 10**9]
U64 = [2**63 - 1, 2**64 - 1, 10**12, 2**32]
MUTATIONS = 10


# ---- mutations -----------------------------------------------------------------------

def mutate(data: bytes, ops) -> bytes:
    """Apply ``ops``, each (kind, a, b) of non-negative ints, to ``data``; deterministic,
    so hypothesis can draw the ops and shrink them."""
    b = bytearray(data)
    for kind, a, c in ops:
        kind %= MUTATIONS
        at = a % (len(b) + 1)
        if kind == 0 and b:                                   # flip a bit
            b[at % len(b)] ^= 1 << (c % 8)
        elif kind == 1 and b:                                 # a boundary byte
            b[at % len(b)] = [0, 1, 0x7F, 0x80, 0xFF][c % 5]
        elif kind == 2:                                       # a 32-bit size, either order
            value = U32[c % len(U32)].to_bytes(4, "big" if c & 8 else "little")
            b[at:at + 4] = value
        elif kind == 3:                                       # a 64-bit size
            b[at:at + 8] = U64[c % len(U64)].to_bytes(8, "little")
        elif kind == 4:                                       # truncate
            del b[at:]
        elif kind == 5:                                       # delete a range
            del b[at:at + 1 + c % 64]
        elif kind == 6:                                       # insert bytes
            b[at:at] = bytes([(c >> (8 * i)) & 0xFF for i in range(1 + c % 7)])
        elif kind == 7:                                       # duplicate a chunk
            b[at:at] = b[at:at + 1 + c % 256]
        elif kind == 8:                                       # replace a run of digits
            b = bytearray(_replace_digit_run(bytes(b), a, DIGIT_RUNS[c % len(DIGIT_RUNS)]))
        elif kind == 9:                                       # append garbage
            b += bytes([(c >> (8 * i)) & 0xFF for i in range(1 + c % 7)])
    return bytes(b)


def _replace_digit_run(data: bytes, a: int, replacement: bytes) -> bytes:
    runs, i = [], 0
    while i < len(data):
        if 48 <= data[i] <= 57:
            j = i
            while j < len(data) and 48 <= data[j] <= 57:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    if not runs:
        return data
    start, end = runs[a % len(runs)]
    return data[:start] + replacement + data[end:]


def random_ops(rng: random.Random):
    return [(rng.randrange(MUTATIONS), rng.randrange(2**32), rng.randrange(2**32))
            for _ in range(rng.randint(1, 4))]


# ---- targets: seeds, how a case is built from (seed, ops, variant), and the loader ----

class Target:
    """One loader under fuzzing. ``build(seed, ops, variant)`` gives {file name: bytes}
    and the bytes the loader is given after decompression (for the memory bound)."""

    name = ""
    variants = 1

    def seeds(self) -> list:
        raise NotImplementedError

    def build(self, seed, ops, variant):
        raise NotImplementedError

    def load(self, paths: dict) -> None:
        raise NotImplementedError


class IdxTarget(Target):
    name, variants = "idx", 3  # raw; gzip of a mutated file; mutated gzip bytes

    def seeds(self):
        rng = np.random.default_rng(0)
        return [write_idx(rng.integers(0, 256, size=(4, 28, 28)).astype(np.uint8)),
                write_idx(np.arange(10, dtype=np.uint8)),
                write_idx((rng.normal(size=(3, 5)) * 100).astype(">i2")),
                write_idx(rng.normal(size=(2, 3, 4)))]

    def build(self, seed, ops, variant):
        if variant == 0:
            data = mutate(seed, ops)
            return {"a.idx": data}, len(data)
        if variant == 1:
            inner = mutate(seed, ops)
            return {"a.idx.gz": gzip.compress(inner, mtime=0)}, len(inner)
        data = mutate(gzip.compress(seed, mtime=0), ops)
        return {"a.idx.gz": data}, len(data) * 1032

    def load(self, paths):
        read_idx(paths["a.idx"] if "a.idx" in paths else paths["a.idx.gz"])


class MnistTarget(Target):
    """The MNIST path after its checksums: a gzipped image file and label file, parsed
    and paired (:func:`gpubp.datasets.mnist._images_and_labels`)."""

    name, variants = "mnist", 2  # mutate the images, or the labels

    def seeds(self):
        rng = np.random.default_rng(1)
        return [(write_idx(rng.integers(0, 256, size=(6, 28, 28)).astype(np.uint8)),
                 write_idx((np.arange(6) % 10).astype(np.uint8)))]

    def build(self, seed, ops, variant):
        images, labels = seed
        if variant == 0:
            images = mutate(images, ops)
        else:
            labels = mutate(labels, ops)
        files = {"images.gz": gzip.compress(images, mtime=0),
                 "labels.gz": gzip.compress(labels, mtime=0)}
        return files, len(images) + len(labels)

    def load(self, paths):
        mnist._images_and_labels(read_idx(paths["images.gz"]), read_idx(paths["labels.gz"]))


ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
INFLATE_CAP = 64 << 20  # measuring a mutated archive's content stops here


def _npz_bytes(members: dict, method: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def _npy_bytes(array) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def _inflated_size(data: bytes) -> int:
    """The bytes the members of the zip archive ``data`` decompress to, up to
    INFLATE_CAP: what a loader can be given by a mutated compressed archive (bzip2 and
    lzma have no fixed ratio). Measured with gpubp's own member streams, which read a
    member to its stream's end, as the loader does (zipfile would stop at the size the
    archive declares); what does not read counts what came before it broke."""
    from gpubp.datasets import npz

    total = 0
    try:
        raw = io.BytesIO(data)
        with zipfile.ZipFile(raw) as archive:
            for info in archive.infolist():
                with npz._MemberStream(raw, info, window=INFLATE_CAP) as f:
                    while total < INFLATE_CAP:
                        part = f.read(1 << 20)
                        if not part:
                            break
                        total += len(part)
    except Exception:  # noqa: BLE001 - a broken archive: its content so far
        pass
    return total


class NpzTarget(Target):
    """Variant v compresses with ZIP_METHODS[v // 2]; even v mutates the archive's bytes
    after compression, odd v a member before it."""

    name, variants = "npz", 2 * len(ZIP_METHODS)

    def seeds(self):
        rng = np.random.default_rng(2)
        X = rng.normal(size=(12, 3)).astype(np.float32)
        return [
            {"X.npy": _npy_bytes(X), "y.npy": _npy_bytes(np.arange(12) % 3)},
            {"X.npy": _npy_bytes(X.astype(np.float64)),
             "y.npy": _npy_bytes(np.array(["cat", "dog"] * 6))},
            {"X_train.npy": _npy_bytes(X[:8]), "y_train.npy": _npy_bytes(np.arange(8) % 2),
             "X_test.npy": _npy_bytes(X[8:]), "y_test.npy": _npy_bytes(np.arange(4) % 2)},
        ]

    def build(self, seed, ops, variant):
        method = ZIP_METHODS[variant // 2]
        if variant % 2 == 0:
            data = mutate(_npz_bytes(seed, method), ops)
            given = len(data) if method == zipfile.ZIP_STORED else _inflated_size(data)
            return {"d.npz": data}, max(given, len(data))
        members = dict(seed)
        name = sorted(members)[ops[0][1] % len(members)]
        members[name] = mutate(members[name], ops)
        data = _npz_bytes(members, method)
        return {"d.npz": data}, sum(map(len, members.values())) + len(data)

    def load(self, paths):
        load_file(paths["d.npz"])


class CsvTarget(Target):
    name = "csv"

    def seeds(self):
        rng = np.random.default_rng(3)
        rows = ["a,b,label"] + [f"{x:.4g},{z:.4g},{c}" for (x, z), c in
                                zip(rng.normal(size=(10, 2)), [1, 2] * 5)]
        named = ["x,label,y"] + [f"{i},{'cat' if i % 2 else 'dog'},{i * 0.5}" for i in range(8)]
        return ["\n".join(rows).encode(), "\r\n".join(named).encode() + b"\r\n"]

    def build(self, seed, ops, variant):
        data = mutate(seed, ops)
        return {"d.csv": data}, len(data)

    def load(self, paths):
        load_file(paths["d.csv"], test_fraction=0.3)


class ModelTarget(Target):
    # mutated bytes; mutated JSON header, length fixed up; JSON header edited field by field
    name, variants = "model", 3

    def seeds(self):
        seeds = []
        for sizes, dtype in [((4, 3, 2), "float32"), ((3, 5, 4, 2), "float64")]:
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "m.safetensors"
                gpubp.MLP(sizes, backend="numpy", dtype=dtype, seed=0).save(path)
                seeds.append(path.read_bytes())
        return seeds

    def build(self, seed, ops, variant):
        if variant == 0:
            data = mutate(seed, ops)
        elif variant == 1:
            data = _mutate_safetensors_header(seed, ops)
        else:
            data = _edit_safetensors_header(seed, ops)
        return {"m.safetensors": data}, len(data)

    def load(self, paths):
        gpubp.MLP.load(paths["m.safetensors"], backend="numpy")


def _mutate_safetensors_header(data: bytes, ops) -> bytes:
    n = int.from_bytes(data[:8], "little")
    header = mutate(data[8:8 + n], ops)
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def _edit_safetensors_header(data: bytes, ops) -> bytes:
    """Set fields of the JSON header to odd values (huge integers among them): a
    tensor's dtype, shape or offsets, a metadata value, or, one time in four, an entry
    of the JSON list inside the metadata's ``layer_sizes`` string. Length fixed up."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    metadata = header.get("__metadata__", {})
    if ops[0][2] % 4 == 0 and "layer_sizes" in metadata:
        sizes = json.loads(metadata["layer_sizes"])
        _edit_json(sizes, ops)
        metadata["layer_sizes"] = json.dumps(sizes)
    else:
        _edit_json(header, ops)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


class CheckpointTarget(Target):
    """:func:`gpubp.checkpoint.read_checkpoint`, then the state checked against the
    network (:meth:`TrainingState.from_checkpoint`) and applied to it."""

    name, variants = "checkpoint", 4  # raw; body re-sealed; header re-sealed; JSON edited

    def seeds(self):
        from gpubp import checkpoint

        with tempfile.TemporaryDirectory() as d:
            rng = np.random.default_rng(4)
            X, y = rng.normal(size=(20, 4)).astype(np.float32), np.arange(20) % 2
            net = gpubp.MLP((4, 3, 2), backend="numpy", seed=0)
            trainer = gpubp.Trainer(net, gpubp.SGD(0.1, momentum=0.9), batch_size=6, epochs=3,
                                    seed=0, patience=5, progress=False)
            trainer.fit(X, y, validation=0.25, checkpoint_dir=d, checkpoint_every="5steps",
                        keep_last=10)
            return [p.read_bytes() for p in checkpoint.list_checkpoints(d)][-2:]

    def build(self, seed, ops, variant):
        from gpubp import checkpoint

        if variant == 0:
            data = mutate(seed, ops)
        elif variant == 1:
            data = _seal(mutate(seed[checkpoint.HEAD:], ops))
        elif variant == 2:
            data = _seal(_mutate_safetensors_header(seed[checkpoint.HEAD:], ops))
        else:
            data = _seal(_edit_state(seed[checkpoint.HEAD:], ops))
        return {"c.ckpt": data}, len(data)

    def load(self, paths):
        from gpubp import checkpoint
        from gpubp.trainer import History
        from gpubp.training_state import TrainingState

        path = paths["c.ckpt"]
        tensors, state = checkpoint.read_checkpoint(path)
        net = gpubp.MLP((4, 3, 2), backend="numpy", seed=0)
        optimizer = gpubp.SGD(0.1, momentum=0.9)  # as the seeds were written
        config = {**_seed_config(), "layer_sizes": [4, 3, 2]}
        run, arrays = TrainingState.from_checkpoint(path, tensors, state, net, optimizer,
                                                    config, 3, History)
        net.load_state(arrays["param"])  # applied as Trainer's resume applies it
        optimizer.load_state_dict({"velocity": arrays.get("velocity")})
        np.random.default_rng().bit_generator.state = run.rng_state


def _seal(body: bytes) -> bytes:
    from gpubp import checkpoint

    return checkpoint.seal(body)


_CONFIG = {}


def _seed_config() -> dict:
    """The run configuration the checkpoint seeds were written with."""
    from gpubp import checkpoint
    from gpubp.fileio import read_safetensors

    if not _CONFIG:
        seed = CheckpointTarget().seeds()[0]
        body = seed[checkpoint.HEAD:]
        _CONFIG.update(json.loads(read_safetensors(body)[0]["state"])["config"])
    return _CONFIG


ODD_VALUES = [None, -1, 0, 2**70, 10**400, -10**400, 1.5, float("inf"), "x", [], {},
              [[[]]], True, {"bit_generator": "MT19937"}]


def _edit_json(root, ops) -> None:
    """Set one field of the JSON value ``root`` (possibly nested) per op to an odd
    value, in place."""
    for _, a, c in ops:
        node = root
        while isinstance(node, (dict, list)) and node:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = keys[a % len(keys)]
            child = node[key]
            if not isinstance(child, (dict, list)) or not child or c % 3 == 0:
                node[key] = copy.deepcopy(ODD_VALUES[c % len(ODD_VALUES)])
                break
            node, a, c = child, a // 7, c // 3


def _edit_state(body: bytes, ops) -> bytes:
    """Set fields of the JSON state (possibly nested) to odd values."""
    from gpubp.fileio import read_safetensors

    metadata, tensors = read_safetensors(body)
    state = json.loads(metadata["state"])
    _edit_json(state, ops)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return safetensors_save(tensors, metadata={**metadata, "state": json.dumps(state)})


TARGETS = {t.name: t for t in (IdxTarget(), MnistTarget(), NpzTarget(), CsvTarget(),
                               ModelTarget(), CheckpointTarget())}


# ---- running a case ------------------------------------------------------------------

class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout


def run_case(target: Target, seed, ops, variant: int, directory: Path,
             timeout: float = 5.0) -> dict:
    """Build one case, load it, and classify the outcome.

    Returns {"outcome": "loaded" | "rejected" | "finding", "error", "where", "peak",
    "bound", "files"}; "finding" when the loader raised anything but a gpubp ValueError,
    ran past ``timeout``, or peaked above the memory bound.
    """
    files, given = target.build(seed, ops, variant % target.variants)
    paths = {}
    for name, data in files.items():
        paths[name] = directory / name
        paths[name].write_bytes(data)
    factor = MEMORY_FACTOR.get(target.name, MEMORY_FACTOR["default"])
    bound = factor * max(given, sum(map(len, files.values()))) + MEMORY_SLACK
    result = {"outcome": "loaded", "error": None, "where": None, "files": files, "bound": bound}
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        target.load(paths)
    except Timeout:
        result.update(outcome="finding", error=f"Timeout: over {timeout}s")
    except GpubpError as e:
        ok = isinstance(e, ValueError)
        result.update(outcome="rejected" if ok else "finding", error=_describe(e),
                      where=None if ok else _where(e))
    except Exception as e:  # noqa: BLE001 - any other exception is what we look for
        result.update(outcome="finding", error=_describe(e), where=_where(e))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        result["peak"] = tracemalloc.get_traced_memory()[1] - base
        if not tracing:
            tracemalloc.stop()
    if result["peak"] > bound and result["outcome"] != "finding":
        result.update(outcome="finding", error=f"MemoryBound: peak {result['peak']} bytes "
                                               f"> {bound}", where="memory")
    return result


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:300]}"


def _where(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    inner = [f for f in frames if "/gpubp/" in f.filename] or frames
    frame = inner[-1]
    return f"{type(e).__name__} at {Path(frame.filename).name}:{frame.lineno}"


# ---- non-regular files, in a child process -------------------------------------------

SPECIAL_KINDS = ("fifo", "directory", "dev-zero")
# The child's address space: a loader reading /dev/zero whole fails there with
# MemoryError within a second, instead of filling this machine's memory.
CHILD_ADDRESS_SPACE = 1 << 30
CHILD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
ROOT = Path(__file__).resolve().parents[1]
_CHILD = """
import json, resource, sys
args = json.loads(sys.stdin.read())
resource.setrlimit(resource.RLIMIT_AS, (args["limit"], args["limit"]))
from bench.fuzz_loaders import _special_child
_special_child(args)
"""


def _make_special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)  # no writer: a blocking open waits forever
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to("/dev/zero")  # endless zeros under a loader's own file name


def run_special_cases(names, directory: Path, timeout: float = 5.0, seeds=None) -> list:
    """Give each loader in ``names`` each of its files replaced by each of
    SPECIAL_KINDS (the other files as in its first seed), in a child process under
    CHILD_ADDRESS_SPACE, ``timeout`` seconds a case. One result per case, as
    :func:`run_case`'s plus "target", "file" and "kind"; a child that dies makes its
    current case a finding ("Crashed") and the rest go on in a new child."""
    cases = []
    for name in names:
        target = TARGETS[name]
        seed = (seeds[name] if seeds else target.seeds())[0]
        files, _ = target.build(seed, [], 0)  # the seed as it is
        for special in files:
            for kind in SPECIAL_KINDS:
                folder = Path(directory, f"{name}-{len(cases)}")
                folder.mkdir(parents=True)
                paths = {}
                for file_name, data in files.items():
                    paths[file_name] = str(folder / file_name)
                    if file_name == special:
                        _make_special(folder / file_name, kind)
                    else:
                        (folder / file_name).write_bytes(data)
                cases.append({"target": name, "file": special, "kind": kind, "paths": paths})
    results = []
    env = {**os.environ, **CHILD_ENV,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    while len(results) < len(cases):
        pending = cases[len(results):]
        request = json.dumps({"limit": CHILD_ADDRESS_SPACE, "timeout": timeout,
                              "cases": pending})
        try:
            child = subprocess.run([sys.executable, "-c", _CHILD], input=request, text=True,
                                   capture_output=True, env=env, cwd=ROOT,
                                   timeout=len(pending) * (timeout + 1) + 60)
            lines, why = child.stdout.splitlines(), f"exit status {child.returncode}"
        except subprocess.TimeoutExpired as e:
            out = e.stdout or b""  # bytes here, whatever text=True says
            out = out.decode(errors="replace") if isinstance(out, bytes) else out
            lines, why, child = out.splitlines(), "the child ran out of time", None
        done = [json.loads(line) for line in lines if line.startswith("{")]
        results += [{**case, **result} for case, result in zip(pending, done)]
        if len(done) < len(pending):
            tail = (child.stderr if child is not None else "")[-300:]
            results.append({**pending[len(done)], "outcome": "finding",
                            "error": f"Crashed: {why}; {tail}", "where": "crash"})
    return results


def _special_child(args) -> None:
    """In the child: each case loaded under SIGALRM, one JSON line of outcome each."""
    for case in args["cases"]:
        result = {"outcome": "loaded", "error": None, "where": None}
        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, args["timeout"])
        try:
            TARGETS[case["target"]].load({k: Path(v) for k, v in case["paths"].items()})
        except Timeout as e:
            result.update(outcome="finding", error=f"Timeout: over {args['timeout']}s",
                          where=_where(e).replace("Timeout", "Hang"))
        except GpubpError as e:
            ok = isinstance(e, ValueError)
            result.update(outcome="rejected" if ok else "finding", error=_describe(e),
                          where=None if ok else _where(e))
        except Exception as e:  # noqa: BLE001 - MemoryError and the like: findings
            result.update(outcome="finding", error=_describe(e), where=_where(e))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        print(json.dumps(result), flush=True)


# ---- the long run --------------------------------------------------------------------

def fuzz(names, seconds_each: float, seed: int, timeout: float) -> dict:
    rng = random.Random(seed)
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            target, started = TARGETS[name], time.monotonic()
            seeds = target.seeds()
            counts = {"loaded": 0, "rejected": 0, "finding": 0}
            findings, worst_ratio, slowest = {}, 0.0, 0.0
            case_dir = Path(tmp) / name
            case_dir.mkdir()
            specials = run_special_cases([name], Path(tmp) / f"{name}-special", timeout,
                                         seeds={name: seeds})
            for result in specials:
                counts[result["outcome"]] += 1
                if result["outcome"] == "finding":
                    key = f"{result['kind']} as {result['file']}: {result['where']}"
                    findings.setdefault(key, {"error": result["error"], "kind": result["kind"],
                                              "file": result["file"], "count": 0})
                    findings[key]["count"] += 1
            while time.monotonic() - started < seconds_each:
                seed_file, ops = rng.choice(seeds), random_ops(rng)
                variant = rng.randrange(target.variants)
                case_started = time.monotonic()
                result = run_case(target, seed_file, ops, variant, case_dir, timeout)
                slowest = max(slowest, time.monotonic() - case_started)
                counts[result["outcome"]] += 1
                worst_ratio = max(worst_ratio, result["peak"] / result["bound"])
                if result["outcome"] == "finding":
                    key = result["where"] or result["error"]
                    if key not in findings:
                        findings[key] = {
                            "error": result["error"], "variant": variant, "ops": ops,
                            "example_base64": {n: base64.b64encode(d[:4096]).decode()
                                               for n, d in result["files"].items()}}
                    findings[key].setdefault("count", 0)
                    findings[key]["count"] += 1
            summary[name] = {"cases": sum(counts.values()), "seconds": seconds_each,
                             "non_regular_file_cases": len(specials),
                             **counts, "slowest_case_s": round(slowest, 4),
                             "worst_peak_over_bound": round(worst_ratio, 4),
                             "findings": findings}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="total, split over loaders")
    parser.add_argument("--loaders", default=",".join(TARGETS),
                        help=f"comma-separated, from {','.join(TARGETS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds a case may take")
    parser.add_argument("--out", help="also write the JSON summary here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.loaders.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"--loaders: unknown {unknown}")
    started = time.time()
    summary = fuzz(names, args.seconds / len(names), args.seed, args.timeout)
    report = {"command": " ".join(["python -m bench.fuzz_loaders", *(argv or sys.argv[1:])]),
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
              "numpy": np.__version__, "python": sys.version.split()[0],
              "total_cases": sum(s["cases"] for s in summary.values()),
              "total_findings": sum(s["finding"] for s in summary.values()),
              "loaders": summary}
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

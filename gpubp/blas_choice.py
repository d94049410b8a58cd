"""Which library runs each GEMM: measured once per machine on the step's own shapes, cached.

A product's shape class is its dtype, m×n×k, its operands' transposes and whether it
accumulates (:func:`gpubp.blas_libraries.signature`). A training step repeats the same few classes
every step, so :func:`gpubp.blas.matmul` sees a cycle: the first step runs on NumPy's
library, and when a class comes round again the classes seen since its first occurrence
are one workload, the step's GEMMs. The :class:`Chooser` then times every installed
library on that workload and gives all of its classes the fastest one. One library for the
whole step, not one per class: two libraries' thread pools in one step compete for the
cores (each spins a while after its own GEMMs), which makes a step with its GEMMs split
between two libraries slower than either library alone (docs/cpu.md).

The timing runs the workload's GEMMs on scratch operands of the same shapes and layouts,
one library at a time: a warm-up pass (the first after another library's), then a timed
pass, the libraries taking turns over a few rounds (starting one later each round). Each
library's time is a median over rounds of its ratio to the incumbent's time in the same
round, so that load from other processes, which comes and goes, cancels out. A library
replaces the incumbent (NumPy's before any choice, afterwards the last choice) only when it
is at least MARGIN faster: within that, a change is noise, and costs a library load.

Choices are cached in ``~/.cache/gpubp/blas/<key>.json`` (``$XDG_CACHE_HOME``), one file per
machine key: the CPU model, the CPUs this process may use, the thread settings in the
environment and the installed libraries' versions. A file that cannot be read or parsed,
or holds another key, is ignored and rewritten with the next choice.

The same file holds the vector-math choice of :mod:`gpubp.cpu_kernels`: where MKL runs the
GEMMs, its VML exponential and reciprocal against NumPy's, per size class.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from gpubp import blas_libraries as libraries
from gpubp import ops
from gpubp.fileio import atomic_writer, read_regular, user_cache_dir

log = logging.getLogger("gpubp")

FORMAT = "gpubp-blas-choice/1"
CACHE_LIMIT = 4 << 20  # bytes; a real file holds a few hundred choices at most
MARGIN = 0.10  # a challenger must take at most 90% of the incumbent's time
MIN_ROUNDS, MAX_ROUNDS = 3, 7
BUDGET_S = 1.0  # stop timing after MIN_ROUNDS once this much time has passed
PASS_MIN_S = 1e-3  # a timed pass repeats the workload until it lasts this long
PENDING_LIMIT = 64  # shape classes remembered while waiting for a cycle
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ---- the machine and its cache file --------------------------------------------------------

def machine_key() -> dict:
    """What a cached choice depends on: CPU model, usable CPUs, thread settings in the
    environment, and the installed libraries with their versions."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "?")
    except OSError:
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count()
    return {"cpu": cpu, "cpus": cpus,
            "environment": {v: os.environ[v] for v in THREAD_VARIABLES if v in os.environ},
            "libraries": libraries.installed()}


def cache_path(machine: dict | None = None) -> Path:
    """This machine key's cache file."""
    machine = machine_key() if machine is None else machine
    digest = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]
    return user_cache_dir("blas") / f"{digest}.json"


class Cache:
    """The choices on disk for one machine key: ``gemm`` {shape class: record} and
    ``vml`` {size class: record}. Any failure to read is "no cache"; writes are atomic,
    after merging what another process may have written meanwhile."""

    def __init__(self, path: Path, machine: dict):
        self.path, self.machine = Path(path), machine
        self.state = "not read"
        self._data = None

    @classmethod
    def for_this_machine(cls) -> "Cache":
        machine = machine_key()
        return cls(cache_path(machine), machine)

    def get(self, kind: str, key: str) -> dict | None:
        if self._data is None:
            self._data = self._read()
        return self._data[kind].get(key)

    def entries(self, kind: str) -> dict:
        if self._data is None:
            self._data = self._read()
        return dict(self._data[kind])

    def put(self, kind: str, records: dict) -> None:
        """Add {key: record} to ``kind`` and write the file; a failure to write is logged."""
        data = self._read()
        for k in ("gemm", "vml"):
            data[k].update((self._data or {}).get(k, {}))
        data[kind].update(records)
        self._data = data
        try:
            with atomic_writer(self.path) as f:
                f.write(json.dumps({"format": FORMAT, "machine": self.machine, **data},
                                   indent=1, sort_keys=True).encode())
            self.state = "written"
        except OSError as e:
            log.warning("gpubp: could not write the BLAS choice cache %s: %s", self.path, e)

    def _read(self) -> dict:
        empty = {"gemm": {}, "vml": {}}
        try:
            raw = read_regular(self.path, limit=CACHE_LIMIT, error=ValueError)
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("not a gpubp BLAS choice file")
            if data.get("machine") != self.machine:
                raise ValueError("written for another machine key")
            gemm, vml = data.get("gemm"), data.get("vml")
            if not (isinstance(gemm, dict) and isinstance(vml, dict)):
                raise ValueError("no gemm and vml tables")
            gemm = {k: r for k, r in gemm.items() if isinstance(r, dict)
                    and r.get("library") in libraries.LIBRARIES
                    and isinstance(r.get("workload"), list) and k in r["workload"]}
            vml = {k: r for k, r in vml.items() if isinstance(r, dict)
                   and isinstance(r.get("vml"), bool)}
        except FileNotFoundError:
            self.state = "absent"
            return empty
        except (OSError, ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            self.state = f"ignored ({type(e).__name__}: {e})"
            return empty
        self.state = "read"
        return {"gemm": gemm, "vml": vml}


def cached_choices() -> list:
    """This machine's cached GEMM choices, one record per workload, each with a one-line
    ``summary``: the library, the shapes, and the measured times relative to the incumbent."""
    cache = Cache.for_this_machine()
    workloads = {}
    for record in cache.entries("gemm").values():
        workloads.setdefault(tuple(record.get("workload", ())), record)
    out = []
    for workload, record in workloads.items():
        times = ", ".join(f"{n} {r:.2f}×" for n, r in sorted(
            record.get("relative_time", {}).items(), key=lambda x: x[1]))
        out.append({**record, "summary": (
            f"{record['library']} for {len(workload)} shapes from {workload[0] if workload else '?'}"
            f" (time relative to {record.get('incumbent', '?')}: {times}; "
            f"{record.get('measured_at', '?')})")})
    return out


# ---- timing --------------------------------------------------------------------------------

def parse_signature(shape_class: str):
    """(dtype, m, n, k, a transposed, b transposed, accumulates) from a shape class."""
    letter, dims, flags, acc = shape_class.split()
    m, n, k = (int(d) for d in dims.split("x"))
    return np.dtype(letter), m, n, k, flags[0] == "T", flags[1] == "T", acc == "+"


def scratch_operands(workload, seed: int = 0) -> list:
    """[(a, b, out, alpha, beta)] with each class's shapes and layouts, all views of three
    shared buffers (values do not change a GEMM's time, so the classes may share them)."""
    parsed = [parse_signature(s) for s in workload]
    rng = np.random.default_rng(seed)
    pools = {}
    for dtype in {p[0] for p in parsed}:
        mine = [p for p in parsed if p[0] == dtype]
        sizes = [max(p[1] * p[3] for p in mine), max(p[3] * p[2] for p in mine),
                 max(p[1] * p[2] for p in mine)]
        pools[dtype] = [(rng.random(s, dtype=np.float64) * 1e-2).astype(dtype) for s in sizes]
    operands = []
    for dtype, m, n, k, trans_a, trans_b, accumulates in parsed:
        pa, pb, pc = pools[dtype]
        a = pa[:m * k].reshape(k, m).T if trans_a else pa[:m * k].reshape(m, k)
        b = pb[:k * n].reshape(n, k).T if trans_b else pb[:k * n].reshape(k, n)
        out = pc[:m * n].reshape(m, n)
        operands.append((a, b, out, -1e-3 if accumulates else 1.0, 1.0 if accumulates else 0.0))
    return operands


def measure_gemms(names, workload, *, clock=time.perf_counter) -> dict:
    """{library: [seconds of one pass over the workload, per round]}, the libraries taking
    turns, each timed pass after a warm-up pass."""
    candidates = [libraries.library(n) for n in names]
    operands = [(libraries.plan(a, b, out), a, b, out, alpha, beta)
                for a, b, out, alpha, beta in scratch_operands(workload)]

    def one_pass(lib):
        for plan, a, b, out, alpha, beta in operands:
            lib.gemm(plan, a, b, out, alpha, beta, False)

    started = clock()
    one_pass(candidates[0])
    first = clock() - started
    repeats = max(1, math.ceil(PASS_MIN_S / max(first, 1e-9)))
    times = {n: [] for n in names}
    for round_ in range(MAX_ROUNDS):
        shift = round_ % len(candidates)
        for lib in candidates[shift:] + candidates[:shift]:
            one_pass(lib)
            t0 = clock()
            for _ in range(repeats):
                one_pass(lib)
            times[lib.name].append((clock() - t0) / repeats)
            # Let its threads go to sleep, or they would spin through the next library's
            # timing on the cores it needs (MKL's for 200 ms, longer than a small pass).
            time.sleep(lib.spin_s)
        if round_ + 1 >= MIN_ROUNDS and clock() - started > BUDGET_S:
            break
    return times


def measure_vector_math(size: int, *, clock=time.perf_counter) -> dict:
    """{"vml": [...], "numpy": [...]}: seconds of σ(z + b) on ``size`` values
    (column-major (size/256, 256), as the step's hidden layers), per round."""
    mkl = libraries.library("mkl")
    rng = np.random.default_rng(0)
    z = np.asfortranarray(rng.standard_normal((max(1, size // 256), 256), dtype=np.float32))
    bias = rng.standard_normal(256, dtype=np.float32)
    out = np.empty_like(z)
    candidates = {"vml": lambda: mkl.bias_sigmoid(z, bias, out),
                  "numpy": lambda: ops.bias_sigmoid(z, bias, out=out)}
    started = clock()
    candidates["numpy"]()
    repeats = max(1, math.ceil(PASS_MIN_S / max(clock() - started, 1e-9)))
    times = {k: [] for k in candidates}
    for round_ in range(MAX_ROUNDS):
        for name in (("vml", "numpy") if round_ % 2 == 0 else ("numpy", "vml")):
            candidates[name]()
            t0 = clock()
            for _ in range(repeats):
                candidates[name]()
            times[name].append((clock() - t0) / repeats)
    return times


def relative_times(times: dict, incumbent: str) -> dict:
    """{name: median over rounds of its time ÷ the incumbent's in the same round}."""
    base = np.asarray(times[incumbent], dtype=np.float64)
    return {name: float(np.median(np.asarray(t, dtype=np.float64) / base))
            for name, t in times.items()}


# ---- the chooser ---------------------------------------------------------------------------

class Chooser:
    """Gives each GEMM shape class a library, from the cache or by timing its workload.

    Args:
        measure_gemms: (library names, workload) -> {name: [seconds per round]}; the real
            timing by default, a stub in tests.
        measure_vector_math: size -> {"vml": [...], "numpy": [...]}.
        cache: a :class:`Cache` (this machine's by default).
        candidates: library names to consider (the installed ones by default).
        load: name -> a :class:`gpubp.blas_libraries.Library` (or raises LibraryUnavailable).
    """

    def __init__(self, measure_gemms=measure_gemms, measure_vector_math=measure_vector_math,
                 cache: Cache | None = None, candidates=None, load=None):
        self._measure_gemms, self._measure_vml = measure_gemms, measure_vector_math
        self._load = load if load is not None else libraries.library
        self.cache = cache if cache is not None else Cache.for_this_machine()
        self.candidates = list(candidates) if candidates is not None else [
            n for n in libraries.LIBRARIES if n in libraries.installed()]
        self.incumbent = "numpy"
        self.records: list[dict] = []  # the choices this process used, made or read
        self.unavailable: dict = {}  # library -> why it could not be loaded
        self._decided: dict = {}  # shape class -> library
        self._vml: dict = {}  # size class -> bool
        self._pending: list = []

    def decided(self, shape_class: str) -> bool:
        return shape_class in self._decided

    def library_for(self, shape_class: str) -> str:
        """The library for one product: decided, cached, or (until its workload has come
        round once) the incumbent, after which the workload is timed and decided."""
        name = self._decided.get(shape_class)
        if name is not None:
            return name
        if self.records:  # one library a process: two libraries' thread pools fight over
            # the cores, and a step split between them is slower than either (docs/cpu.md)
            name = self._decided[shape_class] = self._fallback(shape_class)
            return name
        record = self.cache.get("gemm", shape_class)
        if record is not None and record["library"] in self.candidates:
            self._adopt({**record, "source": "cache"})
            return record["library"]
        if shape_class in self._pending:
            start = self._pending.index(shape_class)
            workload = self._pending[start:]
            del self._pending[start:]
            return self.decide(workload)["library"]
        self._pending = self._pending[1 - PENDING_LIMIT:] + [shape_class]
        return self._fallback(shape_class)

    def decide(self, workload: list) -> dict:
        """Time the candidates on ``workload`` (shape classes), choose, cache; the record."""
        float64 = any(s.startswith("d") for s in workload)
        names = [n for n in self.candidates if self._loads(n, float64)]
        incumbent = self._fallback(workload[0])
        if incumbent not in names:
            names.insert(0, incumbent)
        times = self._measure_gemms(names, workload)
        relative = relative_times(times, incumbent)
        best = min(relative, key=relative.get)
        if relative[best] > 1.0 - MARGIN:
            best = incumbent
        others = ", ".join(f"{n} {r:.2f}×" for n, r in sorted(relative.items(), key=lambda x: x[1]))
        record = {
            "library": best, "workload": list(workload), "relative_time": relative,
            "seconds": {n: float(np.median(t)) for n, t in times.items()},
            "rounds": len(times[incumbent]), "incumbent": incumbent,
            "reason": (f"time relative to {incumbent} (median of "
                       f"{len(times[incumbent])} paired rounds): {others}; "
                       + (f"{best} is {MARGIN:.0%} or more faster" if best != incumbent
                          else f"none {MARGIN:.0%} faster, kept {incumbent}")),
            "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
        }
        log.info("gpubp: BLAS for %d GEMM shapes: %s (%s)", len(workload), best, record["reason"])
        self.cache.put("gemm", {s: record for s in workload})
        self._adopt({**record, "source": "measured"})
        return record

    def vector_math(self, size: int) -> bool:
        """Whether VML's σ beats NumPy's on ``size`` values (by size class, 2^k)."""
        size_class = f"2^{round(math.log2(max(size, 1)))}"
        if size_class not in self._vml:
            record = self.cache.get("vml", size_class)
            if record is None:
                times = self._measure_vml(2 ** int(size_class[2:]))
                ratio = relative_times(times, "numpy")["vml"]
                record = {"vml": ratio < 1.0 - MARGIN, "relative_time": ratio,
                          "reason": f"VML takes {ratio:.2f}× NumPy's time"}
                self.cache.put("vml", {size_class: record})
            self._vml[size_class] = record["vml"]
        return self._vml[size_class]

    def report(self) -> dict:
        """The cache file and its state, the choices used, and the vector-math choices."""
        return {"cache": str(self.cache.path), "cache_state": self.cache.state,
                "choices": self.records, "vector_math": dict(self._vml),
                "unavailable": dict(self.unavailable), "undecided_shapes": len(self._pending)}

    # ---- helpers ----

    def _adopt(self, record: dict) -> None:
        for s in record["workload"]:
            self._decided[s] = record["library"]
        self.incumbent = record["library"]
        if not any(r["workload"] == record["workload"] for r in self.records):
            self.records.append(record)

    def _fallback(self, shape_class: str) -> str:
        if shape_class.startswith("d") and not self._loads(self.incumbent, float64=True):
            return "numpy"
        return self.incumbent

    def _loads(self, name: str, float64: bool = False) -> bool:
        if name in self.unavailable:
            return False
        try:
            lib = self._load(name)
        except (libraries.LibraryUnavailable, OSError) as e:
            self.unavailable[name] = str(e)
            return False
        return lib.float64 or not float64

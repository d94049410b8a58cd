"""The CUDA sources of ``kernels/*.cu``: which exist, how NVRTC compiles them, the disk
cache, the architecture (cubin or PTX) and the driver's PTX version, and module loading.

Each source file is one NVRTC program, compiled with :func:`compile_options` for the
device's architecture: a cubin for ``sm_XY`` when NVRTC knows the device, else PTX for
the newest architecture it knows, lowered to the PTX ISA version the driver accepts
(:func:`fit_ptx_to_driver`). Binaries are compiled once per device and process and cached
on disk under ``$XDG_CACHE_HOME/gpubp/kernels``, keyed by the source, the options and the
NVRTC version. Everything here but :func:`load_function` needs no GPU, which is how CI
checks every kernel (tests/test_kernels_compile.py).
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import numpy as np

from gpubp.errors import GpubpError
from gpubp.fileio import atomic_writer, user_cache_dir

SOURCES = ("softmax_xent.cu", "sigmoid.cu", "gather.cu", "sgd.cu")
COMMON_HEADER = "gpubp_common.cuh"
CXX_STANDARD = "c++17"

# What the sources instantiate (their DEFINE_* lines), which the launchers choose from.
SUFFIX = {np.float32: "f32", np.float64: "f64"}
VEC = {np.float32: 4, np.float64: 2}  # elements per 16-byte access
ROW_ITEMS = {np.float32: (4, 8, 16, 32), np.float64: (4, 8)}  # xent_row values per thread
GATHER_UNIT_BYTES = (16, 8, 4)  # gather_rows_b16, _b8, _b4


class KernelCompileError(GpubpError, RuntimeError):
    """NVRTC rejected a kernel source, or the driver a compiled one; the message says which
    file, for which architecture, with which options, and NVRTC's log or the driver's error."""


# ---- sources -----------------------------------------------------------------------------

def source_dir() -> Path:
    """Where the .cu files are: inside the installed package, else the source tree."""
    package = Path(__file__).resolve().parent.parent  # gpubp/
    for candidate in (package / "_kernels", package.parent / "kernels"):
        if (candidate / SOURCES[0]).is_file():
            return candidate
    raise KernelCompileError(f"CUDA sources {SOURCES} not found in {package / '_kernels'} "
                             f"or {package.parent / 'kernels'}; the installation is incomplete")


@functools.lru_cache(maxsize=None)
def kernel_source(name: str) -> str:
    """The text NVRTC compiles for source ``name``: the file with the common header pasted in."""
    directory = source_dir()
    text = (directory / name).read_text()
    header = (directory / COMMON_HEADER).read_text()
    return text.replace(f'#include "{COMMON_HEADER}"', header, 1)


def entry_points() -> dict[str, list[str]]:
    """Every kernel name gpubp launches, per source file (each defined by that source)."""
    xent, sigmoid, sgd = [], [], []
    for dtype, suffix in SUFFIX.items():
        vecs = (1, VEC[dtype])
        xent += [f"xent_{kind}_{suffix}" for kind in ("small", "partial", "finish")]
        xent += [f"xent_row_{targets}_{suffix}_i{items}_v{vec}" for targets in ("labels", "dense")
                 for items in ROW_ITEMS[dtype] for vec in vecs]
        sigmoid += [f"{kind}_{suffix}_v{vec}" for vec in vecs
                    for kind in ("bias_sigmoid", "sigmoid_backward", "sigmoid_backward_dbias",
                                 "column_sum")]
        sgd += [f"sgd_update_{suffix}_v{vec}" for vec in vecs] + [f"multi_sgd_{suffix}"]
    gather = [f"gather_rows_b{unit}" for unit in GATHER_UNIT_BYTES]
    return {"softmax_xent.cu": xent, "sigmoid.cu": sigmoid, "gather.cu": gather, "sgd.cu": sgd}


# ---- compiling (no GPU needed) -----------------------------------------------------------

def compile_options(arch: str) -> tuple[str, ...]:
    """NVRTC options: the C++ standard and the target, e.g. arch="sm_90" or "compute_90"."""
    return (f"--std={CXX_STANDARD}", f"--gpu-architecture={arch}")


def compile_source(name: str, arch: str, extra_options: tuple[str, ...] = ()) -> bytes:
    """Compile source ``name`` for ``arch`` with NVRTC: a cubin for sm_XY, PTX for compute_XY.

    Raises KernelCompileError with the file, the options and NVRTC's log.
    """
    binary, _ = _compile(name, arch, extra_options)
    return binary


def _compile(name: str, arch: str, extra_options: tuple[str, ...]) -> tuple[bytes, str]:
    """(binary, NVRTC's log) for source ``name``."""
    nvrtc = _nvrtc()
    options = (*compile_options(arch), *extra_options)
    program = nvrtc.createProgram(kernel_source(name), name, [], [])
    try:
        try:
            nvrtc.compileProgram(program, list(options))
        except nvrtc.NVRTCError as e:
            log = nvrtc.getProgramLog(program)
            raise KernelCompileError(
                f"kernel source {name} failed to compile for {arch} with options "
                f"{' '.join(options)}: {e}\n{log}") from None
        log = nvrtc.getProgramLog(program)
        if arch.startswith("sm_"):
            return nvrtc.getCUBIN(program), log
        ptx = nvrtc.getPTX(program)
        ptx = ptx.encode() if isinstance(ptx, str) else bytes(ptx)
        return (ptx if ptx.endswith(b"\0") else ptx + b"\0"), log  # the driver reads a C string
    finally:
        nvrtc.destroyProgram(program)


def resource_usage(name: str, arch: str) -> dict[str, dict[str, int]]:
    """ptxas's report for every entry point of source ``name`` compiled for ``arch`` (sm_XY),
    with gpubp's options plus ``--ptxas-options=-v``: see :func:`parse_resource_usage`."""
    _, log = _compile(name, arch, ("--ptxas-options=-v",))
    return parse_resource_usage(log)


def parse_resource_usage(log: str) -> dict[str, dict[str, int]]:
    """``{entry: {"registers", "spill_stores", "spill_loads", "stack"}}`` from an NVRTC log
    of ``--ptxas-options=-v`` (spills and stack in bytes per thread)."""
    usage: dict[str, dict[str, int]] = {}
    entry = None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            entry = m.group(1)
            usage[entry] = {"registers": 0, "spill_stores": 0, "spill_loads": 0, "stack": 0}
        elif entry is None:
            continue
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                            r"(\d+) bytes spill loads", line):
            usage[entry].update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                                spill_loads=int(m.group(3)))
        elif m := re.search(r"Used (\d+) registers", line):
            usage[entry]["registers"] = int(m.group(1))
    return usage


def nvrtc_version() -> tuple[int, int]:
    return tuple(_nvrtc().getVersion())


def target_arch(compute_capability: str) -> str:
    """The NVRTC target for a device of this compute capability (e.g. "90" -> "sm_90"):
    a cubin where NVRTC knows the architecture, else PTX ("compute_XY") for the newest
    architecture NVRTC knows below it, for the driver to compile."""
    supported = [int(a) for a in _nvrtc().getSupportedArchs()]
    cc = int(compute_capability)
    if cc in supported:
        return f"sm_{cc}"
    older = [a for a in supported if a <= cc]
    if not older:
        raise KernelCompileError(f"NVRTC {nvrtc_version()} supports no architecture up to "
                                 f"sm_{cc} (it knows {supported})")
    return f"compute_{max(older)}"


def _nvrtc():
    """CuPy's NVRTC binding, with libnvrtc loaded (CuPy 14 loads it at the first call)."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except (ImportError, RuntimeError) as e:  # no CuPy, or CuPy without libnvrtc
        raise KernelCompileError(f"NVRTC is not available through CuPy ({e}); install "
                                 f"gpubp[cuda12] or gpubp[cuda13], or a CUDA toolkit") from None
    return nvrtc


# ---- PTX for the driver ------------------------------------------------------------------
# NVRTC writes its own PTX ISA version into the PTX (".version 9.2" from CUDA 13.2), and a
# driver refuses PTX newer than it knows (CUDA_ERROR_UNSUPPORTED_PTX_VERSION), although
# gpubp's kernels use nothing newer than PTX 7.0. So the PTX is declared at the newest
# version the driver loads, where that is older, and at least the target's own minimum.

# The first PTX ISA version of each CUDA release, as the PTX ISA's release history lists
# it (CUDA 12.6 kept 8.5; 12.7 brought 8.6).
_PTX_ISA_OF_CUDA = {
    (11, 0): (7, 0), (11, 1): (7, 1), (11, 2): (7, 2), (11, 3): (7, 3), (11, 4): (7, 4),
    (11, 5): (7, 5), (11, 6): (7, 6), (11, 7): (7, 7), (11, 8): (7, 8),
    (12, 0): (8, 0), (12, 1): (8, 1), (12, 2): (8, 2), (12, 3): (8, 3), (12, 4): (8, 4),
    (12, 5): (8, 5), (12, 6): (8, 5), (12, 7): (8, 6), (12, 8): (8, 7), (12, 9): (8, 8),
    (13, 0): (9, 0), (13, 1): (9, 1), (13, 2): (9, 2),
}

# The oldest PTX ISA version that may name each target (".target sm_XY").
_PTX_ISA_OF_TARGET = {
    50: (4, 0), 52: (4, 1), 53: (4, 2), 60: (5, 0), 61: (5, 0), 62: (5, 0), 70: (6, 0),
    72: (6, 1), 75: (6, 3), 80: (7, 0), 86: (7, 1), 87: (7, 4), 89: (7, 8), 90: (7, 8),
    100: (8, 6), 101: (8, 6), 103: (8, 8), 110: (9, 0), 120: (8, 7), 121: (8, 8),
}


def ptx_isa_for_driver(driver_version: int) -> tuple[int, int] | None:
    """The newest PTX ISA version a driver of CUDA ``driver_version`` (as
    ``cudaDriverGetVersion`` reports it: 13000 for 13.0) loads; None when the driver is
    newer than this table (it then loads whatever NVRTC wrote) or reports 0."""
    if driver_version <= 0:
        return None
    release = (driver_version // 1000, driver_version % 1000 // 10)
    if release > max(_PTX_ISA_OF_CUDA):
        return None
    known = [r for r in _PTX_ISA_OF_CUDA if r <= release]
    if not known:
        raise KernelCompileError(f"the CUDA driver ({release[0]}.{release[1]}) is older than "
                                 f"CUDA 11.0, the oldest gpubp's kernels load on; update it")
    return _PTX_ISA_OF_CUDA[max(known)]


def fit_ptx_to_driver(ptx: bytes, driver_version: int) -> bytes:
    """``ptx`` declared at a PTX ISA version the driver loads (unchanged where it already
    does). Raises KernelCompileError, naming both versions, when the PTX's target needs a
    newer ISA than the driver knows."""
    newest = ptx_isa_for_driver(driver_version)
    m = re.search(rb"^\s*\.version\s+(\d+)\.(\d+)", ptx, re.M)
    if newest is None or m is None:
        return ptx
    declared = (int(m.group(1)), int(m.group(2)))
    if declared <= newest:
        return ptx
    target = re.search(rb"^\s*\.target\s+sm_(\d+)", ptx, re.M)
    needed = _PTX_ISA_OF_TARGET.get(int(target.group(1)), declared) if target else declared
    driver = f"{driver_version // 1000}.{driver_version % 1000 // 10}"
    if needed > newest:
        raise KernelCompileError(
            f"the CUDA driver ({driver}) loads PTX up to ISA {newest[0]}.{newest[1]}, and the "
            f"kernels' target sm_{target.group(1).decode() if target else '?'} needs "
            f"{needed[0]}.{needed[1]}: update the NVIDIA driver")
    return ptx[:m.start(1)] + f"{newest[0]}.{newest[1]}".encode() + ptx[m.end(2):]


# ---- the disk cache and loading ------------------------------------------------------------

def _cache_path(name: str, arch: str) -> Path:
    key = hashlib.sha256("\0".join(
        [kernel_source(name), *compile_options(arch), repr(nvrtc_version())]).encode()).hexdigest()
    return user_cache_dir("kernels") / f"{Path(name).stem}-{arch}-{key[:16]}.bin"


def _binary(name: str, arch: str) -> bytes:
    """The compiled source, from the disk cache when present (and written there if not)."""
    path = _cache_path(name, arch)
    try:
        return path.read_bytes()
    except OSError:
        pass
    binary = compile_source(name, arch)
    try:
        with atomic_writer(path) as f:  # makes the directory too
            f.write(binary)
    except OSError:
        pass  # a read-only cache only costs a compile next time
    return binary


@functools.lru_cache(maxsize=None)
def _module(device_id: int, name: str):
    import cupy

    with cupy.cuda.Device(device_id) as device:
        arch = target_arch(device.compute_capability)
        binary = _binary(name, arch)
        driver = cupy.cuda.runtime.driverGetVersion()
        if not arch.startswith("sm_"):
            binary = fit_ptx_to_driver(binary, driver)
        module = cupy.cuda.function.Module()
        try:
            module.load(binary)
        except cupy.cuda.driver.CUDADriverError as e:
            kind = "a cubin" if arch.startswith("sm_") else "PTX"
            raise KernelCompileError(
                f"the CUDA driver ({driver // 1000}.{driver % 1000 // 10}) could not load "
                f"{name}, compiled as {kind} for {arch} (compute capability "
                f"{device.compute_capability}) by NVRTC {'.'.join(map(str, nvrtc_version()))}: "
                f"{e}. A driver older than NVRTC may refuse it: update the driver, or install "
                f"the gpubp[cuda12]/[cuda13] extra matching it") from None
    return module


@functools.lru_cache(maxsize=None)
def load_function(device_id: int, source: str, name: str):
    """Kernel ``name`` of ``source`` on device ``device_id``: a CuPy function, called as
    ``f(grid, block, args)``."""
    return _module(device_id, source).get_function(name)

"""The CUDA kernels, checked without a GPU.

NVRTC (through CuPy's low-level binding, which needs no device) compiles every source
with the options gpubp uses, for sm_80 and sm_90. The PTX then tells us each entry point's
parameters and ptxas its registers, and every launch the Python wrappers make, over all
their paths, is checked against both: the kernel exists, the arguments match its
parameters one by one, and the block fits the kernel's registers.
"""

import re
import sys

import numpy as np
import pytest

from gpubp import cuda_kernels

from cuda_emulator import DeviceArray, device, fake_cupy

nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc",
                            reason="NVRTC comes with CuPy (pip install cupy-cuda12x)")

ARCHS = ("sm_80", "sm_90")
REGISTERS_PER_SM = 65536


def compile_with_report(name, arch):
    """(PTX text, {entry point: registers}) for source ``name``, with gpubp's options."""
    program = nvrtc.createProgram(cuda_kernels.kernel_source(name), name, [], [])
    try:
        nvrtc.compileProgram(program, [*cuda_kernels.compile_options(arch), "--ptxas-options=-v"])
        log, ptx = nvrtc.getProgramLog(program), nvrtc.getPTX(program)
    finally:
        nvrtc.destroyProgram(program)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    registers, entry = {}, None
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            entry = m.group(1)
        elif m := re.search(r"Used (\d+) registers", line):
            registers[entry] = int(m.group(1))
    return ptx, registers


@pytest.fixture(scope="module", params=ARCHS)
def compiled(request):
    """{source: (PTX, registers)} for one architecture."""
    return {name: compile_with_report(name, request.param) for name in cuda_kernels.SOURCES}


def ptx_params(ptx):
    """{entry point: [PTX parameter types]}, e.g. {"k": [".u64", ".f32"]}."""
    return {name: re.findall(r"\.param\s+(\.\w+)", params)
            for name, params in re.findall(r"\.entry\s+(\w+)\s*\(([^)]*)\)", ptx)}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", cuda_kernels.SOURCES)
def test_every_source_compiles_to_a_binary(name, arch):
    binary = cuda_kernels.compile_source(name, arch)
    assert binary[:4] == b"\x7fELF"  # a cubin


def test_a_newer_device_gets_ptx_for_the_driver_to_compile():
    ptx = cuda_kernels.compile_source("sigmoid.cu", "compute_80")
    assert ptx.endswith(b"\0") and b".entry bias_sigmoid_f32_v4" in ptx


def test_every_entry_point_the_wrappers_use_is_compiled(compiled):
    for name, entry_points in cuda_kernels.entry_points().items():
        defined = ptx_params(compiled[name][0])
        assert set(entry_points) == set(defined), name


def test_a_compile_error_names_the_source_and_shows_the_log(monkeypatch):
    cuda_kernels.kernel_source.cache_clear()
    monkeypatch.setattr(cuda_kernels, "kernel_source", lambda name: "this is not C++;")
    with pytest.raises(cuda_kernels.KernelCompileError,
                       match=r"(?s)sigmoid\.cu failed to compile for sm_90 .*--std=c\+\+17.*error"):
        cuda_kernels.compile_source("sigmoid.cu", "sm_90")


def test_the_target_is_the_device_architecture_or_ptx_beyond_nvrtc():
    assert cuda_kernels.target_arch("90") == "sm_90"
    assert cuda_kernels.target_arch("80") == "sm_80"
    newest = max(int(a) for a in nvrtc.getSupportedArchs())
    assert cuda_kernels.target_arch(str(newest + 1)) == f"compute_{newest}"


def test_a_missing_libnvrtc_is_a_kernel_compile_error_with_the_fix(monkeypatch):
    def no_library():
        raise RuntimeError("CuPy failed to load libnvrtc.so.12")

    monkeypatch.setattr(nvrtc, "getVersion", no_library)
    with pytest.raises(cuda_kernels.KernelCompileError, match=r"libnvrtc.*gpubp\[cuda12\]"):
        cuda_kernels.target_arch("90")


def test_sources_are_found_next_to_the_package():
    directory = cuda_kernels.source_dir()
    for name in (*cuda_kernels.SOURCES, cuda_kernels.COMMON_HEADER):
        assert (directory / name).is_file()
    assert '#include "gpubp_common.cuh"' not in cuda_kernels.kernel_source("sigmoid.cu")


# ---- every launch the wrappers make, against the compiled kernels ------------------------

PTX_TYPE = {".u64": (8, "iu"), ".s64": (8, "iu"), ".u32": (4, "iu"), ".s32": (4, "iu"),
            ".f32": (4, "f"), ".f64": (8, "f")}


@pytest.fixture
def launches(compiled, monkeypatch):
    """Run the wrappers on host arrays; returns the list of (entry, grid, block, args) made."""
    params = {}
    registers = {}
    for ptx, regs in compiled.values():
        params.update(ptx_params(ptx))
        registers.update(regs)
    made = []

    def function(name, source):
        assert name in cuda_kernels.entry_points()[source], name

        def launch(grid, block, args):
            made.append((name, grid, block, args))
            expected = params[name]
            assert len(args) == len(expected), f"{name}: {len(args)} args for {len(expected)} params"
            for i, (arg, ptype) in enumerate(zip(args, expected)):
                size, kinds = PTX_TYPE[ptype]
                if isinstance(arg, DeviceArray):
                    assert size == 8 and kinds == "iu", f"{name} param {i}: an array for {ptype}"
                else:
                    assert isinstance(arg, np.generic), f"{name} param {i}: {arg!r} is not typed"
                    assert (arg.dtype.itemsize, arg.dtype.kind in kinds) == (size, True), \
                        f"{name} param {i}: {arg.dtype} for {ptype}"
            threads = int(np.prod(block))
            assert 1 <= threads <= 1024 and all(g >= 1 for g in grid)
            assert threads * registers[name] <= REGISTERS_PER_SM, \
                f"{name}: {threads} threads × {registers[name]} registers do not fit"
        return launch

    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    monkeypatch.setattr(cuda_kernels, "_function", function)
    flag, ticket = device(np.zeros(1, np.int32)), device(np.zeros(1, np.uint32))
    monkeypatch.setattr(cuda_kernels, "_state", lambda: (flag, ticket, 132))
    return made


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols,entry", [(1, "xent_small"), (10, "xent_small"),
                                        (256, "xent_small"), (257, "xent_row"),
                                        (1000, "xent_row"), (8192, "xent_row"),
                                        (32769, "xent_partial"), (262144, "xent_partial")])
@pytest.mark.parametrize("target_kind", ["int32", "int64", "rows"])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_softmax_xent_launches_match_the_kernels(launches, dtype, cols, entry, target_kind,
                                                 reduction):
    rows = 3
    logits = device(np.zeros((rows, cols), dtype))
    targets = device(np.zeros((rows, cols), dtype) if target_kind == "rows"
                   else np.zeros(rows, target_kind))
    loss, grad = cuda_kernels.softmax_cross_entropy(
        logits, targets, 0.5, reduction=reduction, out=logits,
        ignore_index=None if target_kind == "rows" else -100)
    assert grad is logits
    assert loss.shape == (() if reduction == "mean" else (rows,))
    names = [name for name, *_ in launches]
    if dtype == np.float64 and cols > 8192:
        entry = "xent_partial"
    assert names[0].startswith(entry)
    if entry == "xent_partial":
        assert names[1].startswith("xent_finish")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 10), (64, 1024), (5, 33)])
def test_sigmoid_launches_match_the_kernels(launches, dtype, shape):
    z, bias = device(np.zeros(shape, dtype)), device(np.zeros(shape[1], dtype))
    assert cuda_kernels.bias_sigmoid(z, bias, out=z) is z
    assert cuda_kernels.sigmoid_backward(z, z, out=z) is z
    db = device(np.zeros(shape[1], dtype))
    assert cuda_kernels.sigmoid_backward(z, z, bias_grad=db).shape == shape
    names = [name for name, *_ in launches]
    vec = cuda_kernels.VEC[dtype] if shape[1] % cuda_kernels.VEC[dtype] == 0 else 1
    assert names[0].endswith(f"_v{vec}")
    assert names[2].startswith("sigmoid_backward_dbias") and names[3].startswith("sum_partials")


def test_a_compiled_binary_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = cuda_kernels._binary("sigmoid.cu", "sm_90")
    cached = list((tmp_path / "gpubp" / "kernels").glob("sigmoid-sm_90-*.bin"))
    assert len(cached) == 1 and cached[0].read_bytes() == first

    def no_compiling(name, arch):
        raise AssertionError("compiled again")

    monkeypatch.setattr(cuda_kernels, "compile_source", no_compiling)
    assert cuda_kernels._binary("sigmoid.cu", "sm_90") == first

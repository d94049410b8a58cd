"""The CUDA kernels, checked without a GPU.

NVRTC (through CuPy's low-level binding, which needs no device) compiles every source
with the options gpubp uses, for sm_80 and sm_90, with ptxas's report: no entry point
may spill a byte. The PTX then tells us each entry point's parameters and ptxas its
registers, and every launch the Python wrappers make, over all their paths, is checked
against both: the kernel exists, the arguments match its parameters one by one, and the
block fits the kernel's registers. The PTX version chosen for the driver and the error
of a refused load are checked on stubbed versions.
"""

import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from cuda_emulator import DeviceArray, device, fake_cupy

from gpubp import optim
from gpubp.cuda import compile as cuda_compile
from gpubp.cuda import kernels as cuda_kernels

nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc",
                            reason="NVRTC comes with CuPy (pip install cupy-cuda12x)")

ARCHS = ("sm_80", "sm_90")
REGISTERS_PER_SM = 65536


def compile_with_report(name, arch):
    """(cubin, PTX text, {entry point: ptxas usage}) for source ``name``, gpubp's options."""
    program = nvrtc.createProgram(cuda_compile.kernel_source(name), name, [], [])
    try:
        nvrtc.compileProgram(program, [*cuda_compile.compile_options(arch), "--ptxas-options=-v"])
        log, ptx, cubin = (nvrtc.getProgramLog(program), nvrtc.getPTX(program),
                           nvrtc.getCUBIN(program))
    finally:
        nvrtc.destroyProgram(program)
    ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
    return cubin, ptx, cuda_compile.parse_resource_usage(log)


@pytest.fixture(scope="module", params=ARCHS)
def compiled(request):
    """{source: (cubin, PTX, usage)} for one architecture."""
    return {name: compile_with_report(name, request.param) for name in cuda_compile.SOURCES}


def ptx_params(ptx):
    """{entry point: [PTX parameter types]}, e.g. {"k": [".u64", ".f32"]}."""
    return {name: re.findall(r"\.param\s+(\.\w+)", params)
            for name, params in re.findall(r"\.entry\s+(\w+)\s*\(([^)]*)\)", ptx)}


def test_every_source_compiles_to_a_binary(compiled):
    for name, (cubin, _, _) in compiled.items():
        assert cubin[:4] == b"\x7fELF", name  # a cubin


def test_no_entry_point_spills_a_byte(compiled):
    spills = {entry: (use["spill_stores"], use["spill_loads"], use["registers"])
              for _, _, usage in compiled.values() for entry, use in usage.items()
              if use["spill_stores"] or use["spill_loads"]}
    assert spills == {}, "entry: (spill store bytes, spill load bytes, registers)"


def test_the_report_covers_every_entry_point(compiled):
    for name, entry_points in cuda_compile.entry_points().items():
        usage = compiled[name][2]
        assert set(usage) == set(entry_points), name
        assert all(u["registers"] > 0 for u in usage.values())


def test_resource_usage_reads_ptxas_report():
    usage = cuda_compile.resource_usage("sgd.cu", "sm_90")
    assert set(usage) == set(cuda_compile.entry_points()["sgd.cu"])
    assert usage["multi_sgd_f32"]["spill_stores"] == 0 < usage["multi_sgd_f32"]["registers"]


def test_a_newer_device_gets_ptx_for_the_driver_to_compile():
    ptx = cuda_compile.compile_source("sigmoid.cu", "compute_80")
    assert ptx.endswith(b"\0") and b".entry bias_sigmoid_f32_v4" in ptx


def test_every_entry_point_the_wrappers_use_is_compiled(compiled):
    for name, entry_points in cuda_compile.entry_points().items():
        defined = ptx_params(compiled[name][1])
        assert set(entry_points) == set(defined), name


def test_a_compile_error_names_the_source_and_shows_the_log(monkeypatch):
    cuda_compile.kernel_source.cache_clear()
    monkeypatch.setattr(cuda_compile, "kernel_source", lambda name: "this is not C++;")
    with pytest.raises(cuda_compile.KernelCompileError,
                       match=r"(?s)sigmoid\.cu failed to compile for sm_90 .*--std=c\+\+17.*error"):
        cuda_compile.compile_source("sigmoid.cu", "sm_90")


def test_the_target_is_the_device_architecture_or_ptx_beyond_nvrtc():
    assert cuda_compile.target_arch("90") == "sm_90"
    assert cuda_compile.target_arch("80") == "sm_80"
    newest = max(int(a) for a in nvrtc.getSupportedArchs())
    assert cuda_compile.target_arch(str(newest + 1)) == f"compute_{newest}"


def test_a_missing_libnvrtc_is_a_kernel_compile_error_with_the_fix(monkeypatch):
    def no_library():
        raise RuntimeError("CuPy failed to load libnvrtc.so.12")

    monkeypatch.setattr(nvrtc, "getVersion", no_library)
    with pytest.raises(cuda_compile.KernelCompileError, match=r"libnvrtc.*gpubp\[cuda12\]"):
        cuda_compile.target_arch("90")


def test_sources_are_found_next_to_the_package():
    directory = cuda_compile.source_dir()
    for name in (*cuda_compile.SOURCES, cuda_compile.COMMON_HEADER):
        assert (directory / name).is_file()
    assert '#include "gpubp_common.cuh"' not in cuda_compile.kernel_source("sigmoid.cu")


# ---- PTX for an older driver ---------------------------------------------------------------

@pytest.mark.parametrize("driver,isa", [(11000, (7, 0)), (11080, (7, 8)), (12000, (8, 0)),
                                        (12060, (8, 5)), (12080, (8, 7)), (12090, (8, 8)),
                                        (13000, (9, 0)), (13020, (9, 2)), (99000, None),
                                        (0, None)])
def test_the_ptx_version_a_driver_loads(driver, isa):
    assert cuda_compile.ptx_isa_for_driver(driver) == isa


def test_a_driver_older_than_cuda_11_is_refused():
    with pytest.raises(cuda_compile.KernelCompileError, match=r"\(10\.2\) is older than CUDA 11"):
        cuda_compile.ptx_isa_for_driver(10020)


PTX = b"//\n// Generated by NVIDIA NVVM Compiler\n.version 9.2\n.target sm_90\n.address_size 64\n\0"


def test_ptx_newer_than_the_driver_is_declared_at_the_drivers_version():
    # NVRTC 13.2's PTX (ISA 9.2) for the H200's driver 13.0 (9.0); the kernels use nothing newer.
    fitted = cuda_compile.fit_ptx_to_driver(PTX, 13000)
    assert fitted == PTX.replace(b".version 9.2", b".version 9.0")
    assert cuda_compile.fit_ptx_to_driver(PTX, 13020) == PTX  # the driver knows 9.2
    assert cuda_compile.fit_ptx_to_driver(PTX, 99000) == PTX  # a driver newer than the table


def test_ptx_whose_target_the_driver_cannot_know_says_so():
    ptx = PTX.replace(b"sm_90", b"sm_120")
    with pytest.raises(cuda_compile.KernelCompileError,
                       match=r"driver \(12\.6\) loads PTX up to ISA 8\.5.*sm_120 needs "
                             r"8\.7.*update"):
        cuda_compile.fit_ptx_to_driver(ptx, 12060)


def test_nvrtcs_own_ptx_is_lowered_for_an_old_driver():
    ptx = cuda_compile.compile_source("gather.cu", "compute_80")
    version = re.search(rb"\.version \d+\.\d+", ptx).group(0)
    assert cuda_compile.fit_ptx_to_driver(ptx, 11040) == ptx.replace(version, b".version 7.4")


def test_a_refused_load_is_a_kernel_compile_error_saying_why(monkeypatch):
    class CUDADriverError(RuntimeError):
        pass

    class Module:
        def load(self, binary):
            raise CUDADriverError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was "
                                  "compiled with an unsupported toolchain.")

    class Device:
        compute_capability = "130"

        def __init__(self, device_id):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    cupy = SimpleNamespace(cuda=SimpleNamespace(
        Device=Device, function=SimpleNamespace(Module=Module),
        driver=SimpleNamespace(CUDADriverError=CUDADriverError),
        runtime=SimpleNamespace(driverGetVersion=lambda: 13000)))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(cuda_compile, "_binary", lambda name, arch: PTX)
    monkeypatch.setattr(cuda_compile, "target_arch", lambda cc: "compute_120")
    cuda_compile._module.cache_clear()
    try:
        with pytest.raises(cuda_compile.KernelCompileError,
                           match=r"(?s)driver \(13\.0\) could not load sgd\.cu, compiled as PTX "
                                 r"for compute_120 .*UNSUPPORTED_PTX_VERSION.*update the driver"):
            cuda_compile._module(0, "sgd.cu")
    finally:
        cuda_compile._module.cache_clear()


# ---- every launch the wrappers make, against the compiled kernels ------------------------

PTX_TYPE = {".u64": (8, "iu"), ".s64": (8, "iu"), ".u32": (4, "iu"), ".s32": (4, "iu"),
            ".f32": (4, "f"), ".f64": (8, "f")}


@pytest.fixture
def launches(compiled, monkeypatch):
    """Run the wrappers on host arrays; returns the list of (entry, grid, block, args) made."""
    params, registers = {}, {}
    for _, ptx, usage in compiled.values():
        params.update(ptx_params(ptx))
        registers.update({entry: use["registers"] for entry, use in usage.items()})
    made = []

    def function(name, source):
        assert name in cuda_compile.entry_points()[source], name

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
    monkeypatch.setattr(cuda_kernels, "_sm_count", lambda: 132)
    monkeypatch.setattr(cuda_kernels, "_default_scratch", {})
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
    if entry == "xent_row":
        entry += "_dense" if target_kind == "rows" else "_labels"
    assert names[0].startswith(entry)
    if entry == "xent_partial":
        assert names[1].startswith("xent_finish")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cols", [3, 10, 256, 1000, 1001, 40000])
@pytest.mark.parametrize("target_kind", ["int64", "rows"])
def test_bias_softmax_xent_launches_match_the_kernels(launches, dtype, cols, target_kind):
    rows = 300
    z = device(np.zeros((rows, cols), dtype))
    targets = device(np.zeros((rows, cols), dtype) if target_kind == "rows"
                     else np.zeros(rows, target_kind))
    bias, db = device(np.zeros(cols, dtype)), device(np.zeros(cols, dtype))
    loss_sum = device(np.zeros(2))
    assert cuda_kernels.bias_softmax_cross_entropy(z, bias, targets, 0.5, out=z, bias_grad=db,
                                                   loss_sum=loss_sum) is z
    names = [name for name, *_ in launches]
    if cols <= 256:
        assert names == [f"xent_small_{cuda_compile.SUFFIX[dtype]}"]
    else:
        assert names[-1].startswith("column_sum") and len(names) in (2, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 10), (64, 1024), (5, 33), (4096, 800)])
def test_sigmoid_launches_match_the_kernels(launches, dtype, shape):
    z, bias = device(np.zeros(shape, dtype)), device(np.zeros(shape[1], dtype))
    assert cuda_kernels.bias_sigmoid(z, bias, out=z) is z
    assert cuda_kernels.sigmoid_backward(z, z.copy(), out=z) is z
    db = device(np.zeros(shape[1], dtype))
    assert cuda_kernels.sigmoid_backward(z, z.copy(), bias_grad=db).shape == shape
    names = [name for name, *_ in launches]
    vec = cuda_compile.VEC[dtype] if shape[1] % cuda_compile.VEC[dtype] == 0 else 1
    assert names[0].endswith(f"_v{vec}")
    assert names[2] == f"sigmoid_backward_dbias_{cuda_compile.SUFFIX[dtype]}_v{vec}"
    assert len(names) == 3  # the bias gradient is finished in its own launch


@pytest.mark.parametrize("dtype,cols", [(np.float32, 784), (np.float64, 3), (np.float32, 5)])
@pytest.mark.parametrize("target_kind", ["int64", "int32", "rows"])
def test_gather_launches_match_the_kernels(launches, dtype, cols, target_kind):
    X = device(np.zeros((100, cols), dtype))
    targets = device(np.zeros((100, 10), dtype) if target_kind == "rows"
                     else np.zeros(100, target_kind))
    out = device(np.zeros((64, cols), dtype))
    t_out = device(np.zeros((64, *targets.shape[1:]), targets.dtype))
    cuda_kernels.gather_rows(X, device(np.arange(100)), device(np.zeros(1, np.int64)), out,
                             targets, t_out)
    assert [name for name, *_ in launches][0].startswith("gather_rows_b")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_launches_match_the_kernels(launches, dtype, momentum):
    params = [device(np.zeros((800, 784), dtype)), device(np.zeros(800, dtype)),
              device(np.zeros((10, 800), dtype)), device(np.zeros(10, dtype))]
    grads = [device(np.zeros_like(p)) for p in params]
    velocities = [device(np.zeros_like(p)) for p in params] if momentum else None
    table = cuda_kernels.SGDTable(params, grads, velocities)
    cuda_kernels.multi_sgd(table, device(np.ones(1)), device(np.ones(1, np.int32)),
                           momentum=momentum, nesterov=bool(momentum), weight_decay=1e-4,
                           offset=device(np.zeros(1, np.int64)), batch=256)
    for p, g in zip(params, grads):
        optim.device_update(p, g, None if not momentum else np.zeros_like(p).view(DeviceArray),
                            0.1, momentum, 0.0, False, True)
    names = [name for name, *_ in launches]
    assert names[0] == f"multi_sgd_{cuda_compile.SUFFIX[dtype]}" and len(names) == 5
    assert launches[0][1] == (table.n_chunks,)


def test_record_launches_counts_each_launch_once_and_nests(launches):
    z, bias = device(np.zeros((4, 8), np.float32)), device(np.zeros(8, np.float32))
    with cuda_kernels.record_launches() as outer:
        cuda_kernels.bias_sigmoid(z, bias, out=z)
        with cuda_kernels.record_launches() as inner:
            cuda_kernels.sigmoid_backward(z, z.copy(), out=z)
    cuda_kernels.bias_sigmoid(z, bias, out=z)  # after both: not recorded
    assert [launch.name for launch in outer] == ["bias_sigmoid_f32_v4", "sigmoid_backward_f32_v4"]
    assert inner == outer[1:] and inner[0].block == (cuda_kernels.BLOCK,)


def test_a_compiled_binary_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = cuda_compile._binary("gather.cu", "sm_90")
    cached = list((tmp_path / "gpubp" / "kernels").glob("gather-sm_90-*.bin"))
    assert len(cached) == 1 and cached[0].read_bytes() == first

    def no_compiling(name, arch):
        raise AssertionError("compiled again")

    monkeypatch.setattr(cuda_compile, "compile_source", no_compiling)
    assert cuda_compile._binary("gather.cu", "sm_90") == first

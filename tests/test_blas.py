"""gpubp.blas: every library equals numpy.matmul on every layout the training step passes
it; the choice between them (gpubp.blas_choice) picks the faster one with a stubbed timer,
caches it, survives a corrupt cache, and yields to $GPUBP_BLAS."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gpubp import blas, blas_choice, blas_libraries

INSTALLED = [n for n in blas.LIBRARIES if n in blas.installed()]


@pytest.fixture(autouse=True)
def fresh_choices(tmp_path, monkeypatch):
    """Each test with its own cache directory and a process state read afresh."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(blas.ENV_VAR, raising=False)
    blas.reset()
    yield
    blas.reset()


@pytest.fixture(params=INSTALLED)
def library(request):
    """Runs a test with each installed library forced."""
    with blas.forced(request.param) as lib:
        yield lib


def layouts(rng, m, k, dtype):
    """(name, array of shape (m, k)) in each memory layout matmul may receive."""
    base = rng.normal(size=(m, k)).astype(dtype)
    padded = np.zeros((m, k + 3), dtype)
    padded[:, :k] = base
    return [("c", base), ("transposed", np.ascontiguousarray(base.T).T),
            ("row_padded", padded[:, :k]), ("strided", rng.normal(size=(m, 2 * k)).astype(dtype)[:, ::2])]


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-5), (np.float64, 1e-13)])
def test_matmul_equals_numpy_on_every_layout(rng, library, dtype, rtol):
    for name_a, a in layouts(rng, 7, 5, dtype):
        for name_b, b in layouts(rng, 5, 3, dtype):
            for order in "CF":
                out = np.full((7, 3), np.nan, dtype, order=order)
                assert blas.matmul(a, b, out=out) is out
                np.testing.assert_allclose(out, a @ b, rtol=rtol, atol=rtol,
                                           err_msg=f"{name_a} @ {name_b} into {order} order")


def step_products(rng, sizes=(96, 80, 70, 10), batch=64):
    """[(a, b, out, alpha, beta)]: the GEMMs of gpubp's fused SGD step, with its layouts
    (column-major hidden buffers, row-major batch and logits), large enough not to be
    single-threaded (m·n·k ≥ 2^18 for the hidden layers)."""
    W = [rng.normal(size=(o, i)).astype(np.float32) for i, o in zip(sizes, sizes[1:])]
    X = rng.random((batch, sizes[0]), dtype=np.float32)
    hidden = [np.asfortranarray(rng.random((batch, n), dtype=np.float32)) for n in sizes[1:-1]]
    deltas = [np.asfortranarray(rng.normal(size=(batch, n)).astype(np.float32))
              for n in sizes[1:-1]]
    logits = rng.normal(size=(batch, sizes[-1])).astype(np.float32)
    inputs = [X] + hidden
    products = [(a, W[l].T, np.empty((batch, W[l].shape[0]), np.float32,
                                     order="F" if l < len(W) - 1 else "C"), 1.0, 0.0)
                for l, a in enumerate(inputs)]
    for l in reversed(range(len(W))):
        delta = logits if l == len(W) - 1 else deltas[l]
        if l > 0:
            products.append((delta, W[l], np.empty((batch, sizes[l]), np.float32, order="F"),
                             1.0, 0.0))
        products.append((delta.T, inputs[l], W[l].copy(), -0.1, 1.0))
    return products


def test_every_library_gives_numpys_products_on_the_steps_layouts(rng, library):
    """To float32 rounding: within a few ulps of the float64 product, scaled by the sum
    of |a||b| over k (the bound any float32 GEMM meets), as NumPy's own product is."""
    for a, b, out, alpha, beta in step_products(rng):
        out[...] = np.nan if beta == 0 else out  # beta = 0 ignores what out held
        start = out.astype(np.float64) if beta else np.zeros(out.shape)
        exact = alpha * (a.astype(np.float64) @ b) + beta * start
        scale = alpha * (np.abs(a.astype(np.float64)) @ np.abs(b)) + beta * np.abs(start)
        numpy_error = np.abs(alpha * (a @ b) + beta * start - exact).max()
        assert blas.matmul(a, b, out, alpha, beta) is out
        bound = 4 * a.shape[1] * np.finfo(np.float32).eps * np.abs(scale).max()
        assert np.abs(out - exact).max() <= max(bound, 4 * numpy_error), library.name


def test_a_column_major_product_goes_to_the_library_as_its_transpose(rng, library, monkeypatch):
    """No copy and no NumPy loop over a column-major out: the library writes outᵀ = bᵀ aᵀ
    row-major (NumPy's library through numpy.matmul, which is then handed a C-order out)."""
    a, b = rng.normal(size=(60, 40)).astype(np.float32), rng.normal(size=(40, 50)).astype(np.float32)
    real_matmul, outs = np.matmul, []

    def numpy_matmul(x, y, out=None):
        outs.append(out)
        return real_matmul(x, y, out=out)

    monkeypatch.setattr(blas.np, "matmul", numpy_matmul)
    monkeypatch.setattr(blas_libraries.np, "matmul", numpy_matmul)
    for alpha, beta in ((1.0, 0.0), (-0.5, 1.0)):
        out = np.zeros((60, 50), np.float32, order="F")
        blas.matmul(a, b, out, alpha, beta)
        np.testing.assert_allclose(out, alpha * (a @ b), rtol=1e-5, atol=1e-5)
    assert all(o is not None and o.flags.c_contiguous and o.base is not None for o in outs)
    if library.name != "numpy":
        assert outs == []


def test_dimensions_beyond_32_bits_go_to_numpy(rng, monkeypatch):
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(4, 5))
    monkeypatch.setattr(blas_libraries, "MAX_INT", 5)
    assert blas_libraries.plan(a, b, np.empty((6, 5))) is None
    np.testing.assert_allclose(blas.matmul(a, b, out=np.empty((6, 5))), a @ b)
    y = np.ones(6)
    blas.axpby(2.0, np.ones(6), 1.0, y)
    np.testing.assert_array_equal(y, 3.0)


@pytest.mark.parametrize("order", "CF")
def test_matmul_accumulates_with_alpha_and_beta(rng, library, order):
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(4, 5))
    start = rng.normal(size=(6, 5))
    out = np.array(start, order=order)
    assert blas.matmul(a, b.T.copy().T, out=out, alpha=-0.25, beta=1.0) is out
    np.testing.assert_allclose(out, start - 0.25 * (a @ b), rtol=1e-13)


def test_degenerate_and_mixed_inputs_fall_back_to_numpy(rng):
    out = np.empty((4, 0), np.float32)
    assert blas.matmul(np.ones((4, 2), np.float32), np.ones((2, 0), np.float32), out=out) is out
    a, b = rng.normal(size=(3, 2)), rng.normal(size=(2, 4)).astype(np.float32)
    out = np.empty((3, 4))
    np.testing.assert_allclose(blas.matmul(a, b, out=out), a @ b)
    column = rng.normal(size=(6, 1)).astype(np.float32)
    out = np.empty((6, 6), np.float32)
    np.testing.assert_allclose(blas.matmul(column, column.T, out=out), column @ column.T, rtol=1e-6)


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-6), (np.float64, 1e-15)])
def test_axpby_updates_in_place(rng, library, dtype, rtol):
    x = rng.normal(size=(6, 5)).astype(dtype)
    for y in (rng.normal(size=(6, 5)).astype(dtype), rng.normal(size=(5, 6)).astype(dtype).T):
        want = -0.3 * x.astype(np.float64) + 0.9 * y
        blas.axpby(-0.3, x, 0.9, y)  # the transposed y takes NumPy's path
        np.testing.assert_allclose(y, want, rtol=rtol, atol=rtol)


def test_tiny_products_run_on_one_thread_and_are_never_timed(rng, monkeypatch):
    def no_chooser():
        raise AssertionError("a tiny product was sent to the chooser")

    monkeypatch.setattr(blas_choice, "Chooser", no_chooser)
    a, b = np.ones((16, 64), np.float32), np.ones((64, 128), np.float32)  # 2^17 multiply-adds
    plan = blas_libraries.plan(a, b, np.empty((16, 128), np.float32))
    lib, single_thread = blas._state.library_for(plan, False)
    assert single_thread and lib.name == "numpy"  # nothing chosen yet: NumPy's
    np.testing.assert_allclose(blas.matmul(a, b, np.empty((16, 128), np.float32)), 64.0)
    big = blas_libraries.plan(np.ones((64, 64)), np.ones((64, 64)), np.empty((64, 64)))
    with blas.forced("numpy"):
        assert blas._state.library_for(big, False) == (blas.library("numpy"), False)


@pytest.mark.skipif("mkl" not in INSTALLED, reason="MKL is not installed")
def test_mkl_is_held_to_one_thread_for_a_tiny_product_only():
    mkl = blas.library("mkl")
    calls = []
    real = mkl.lib

    class Spy:
        def __getattr__(self, name):
            if name == "MKL_Set_Num_Threads_Local":
                return lambda n: calls.append(n) or real.MKL_Set_Num_Threads_Local(n)
            return getattr(real, name)

    mkl.lib = Spy()
    try:
        with blas.forced("mkl"):
            blas.matmul(np.ones((8, 8), np.float32), np.ones((8, 8), np.float32),
                        np.empty((8, 8), np.float32))
            assert calls[0] == 1 and len(calls) == 2  # set to one, then restored
            blas.matmul(np.ones((128, 64), np.float32), np.ones((64, 64), np.float32),
                        np.empty((128, 64), np.float32))
            assert len(calls) == 2
    finally:
        mkl.lib = real


def test_the_library_in_use_is_named():
    assert blas.name().startswith(("mkl ", "numpy (", "onednn "))


def test_gpubp_blas_forces_a_library_and_refuses_unknown_ones():
    code = ("from gpubp import blas; import numpy as np; a = np.ones((300, 300), np.float32)\n"
            "blas.matmul(a, a, np.empty_like(a)); print(blas.name()); print(blas.report()['reason'])")
    env = {"PATH": "", "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]}
    for name in INSTALLED:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**env, "GPUBP_BLAS": name})
        assert done.returncode == 0, done.stderr
        assert done.stdout.split("\n")[0].startswith(name), done.stdout
        assert done.stdout.split("\n")[1] == f"GPUBP_BLAS={name}"
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "GPUBP_BLAS": "fast"})
    assert "GPUBP_BLAS: expected one of auto, numpy, mkl, onednn, got 'fast'" in bad.stderr


# ---- the choice ----------------------------------------------------------------------------

WORKLOAD = ["f 1024x256x784 NT =", "f 256x10x1024 TT =", "f 1024x1024x256 NT +"]


class FakeLibrary:
    def __init__(self, name, float64=True):
        self.name, self.float64 = name, float64


class StubTimer:
    """measure_gemms with fixed seconds per library (one per round), counting its calls."""

    def __init__(self, seconds: dict):
        self.seconds, self.calls = seconds, []

    def __call__(self, names, workload):
        self.calls.append((list(names), list(workload)))
        return {n: list(self.seconds[n]) for n in names}


def chooser(tmp_path, timer, candidates=("numpy", "mkl", "onednn"), name="key.json"):
    cache = blas_choice.Cache(tmp_path / name, {"cpu": "test CPU", "libraries": {}})
    return blas_choice.Chooser(measure_gemms=timer, cache=cache, candidates=candidates,
                               load=lambda n: FakeLibrary(n, float64=n != "onednn"))


def run_steps(chooser, workload, steps=2):
    """The libraries a workload's products get over ``steps`` steps."""
    return [[chooser.library_for(s) for s in workload] for _ in range(steps)]


def test_the_chooser_picks_the_faster_library_for_the_whole_step(tmp_path):
    timer = StubTimer({"numpy": [1.0, 1.1, 0.9], "mkl": [0.8, 0.9, 0.7],
                       "onednn": [0.6, 0.7, 0.5]})
    c = chooser(tmp_path, timer)
    first, second = run_steps(c, WORKLOAD)
    assert first == ["numpy"] * 3  # the first step runs on NumPy's, while shapes are seen
    assert second == ["onednn"] * 3  # then the step's workload is timed once, as a whole
    assert timer.calls == [(["numpy", "mkl", "onednn"], WORKLOAD)]
    (record,) = c.report()["choices"]
    assert record["library"] == "onednn" and record["source"] == "measured"
    assert record["relative_time"]["onednn"] == pytest.approx(0.6 / 1.0)
    assert "onednn" in record["reason"]


def test_a_library_within_the_margin_does_not_replace_the_incumbent(tmp_path):
    timer = StubTimer({"numpy": [1.0] * 3, "mkl": [0.98] * 3, "onednn": [1.2] * 3})
    c = chooser(tmp_path, timer)
    assert run_steps(c, WORKLOAD)[1] == ["numpy"] * 3
    assert "kept numpy" in c.report()["choices"][0]["reason"]


def test_paired_ratios_see_through_load_that_comes_and_goes(tmp_path):
    # mkl is 0.8× numpy in every round, but its rounds fell under heavier load.
    timer = StubTimer({"numpy": [1.0, 3.0, 1.0], "mkl": [0.8, 2.4, 0.8], "onednn": [1.5] * 3})
    assert run_steps(chooser(tmp_path, timer), WORKLOAD)[1] == ["mkl"] * 3


def test_float64_products_are_never_given_a_float32_library(tmp_path):
    timer = StubTimer({"numpy": [1.0] * 3, "mkl": [0.8] * 3, "onednn": [0.1] * 3})
    c = chooser(tmp_path, timer)
    assert run_steps(c, ["d 512x512x512 NN ="])[1] == ["mkl"]
    assert timer.calls[0][0] == ["numpy", "mkl"]


def test_the_choice_is_cached_and_read_back_without_timing(tmp_path):
    timer = StubTimer({"numpy": [1.0] * 3, "mkl": [0.5] * 3, "onednn": [0.9] * 3})
    run_steps(chooser(tmp_path, timer), WORKLOAD)
    data = json.loads((tmp_path / "key.json").read_text())
    assert data["format"] == blas_choice.FORMAT
    assert {data["gemm"][s]["library"] for s in WORKLOAD} == {"mkl"}

    def no_timing(names, workload):
        raise AssertionError("a cached choice was timed again")

    again = chooser(tmp_path, no_timing)
    assert [again.library_for(s) for s in WORKLOAD] == ["mkl"] * 3  # from the first step
    assert again.report()["choices"][0]["source"] == "cache"
    assert again.cache.state == "read"


def test_a_process_keeps_one_library_for_shapes_it_meets_later(tmp_path):
    """Shapes cached from another workload, or new ones (a momentum step's gradient GEMMs
    after a plain-SGD run's cache), take the library this process already uses: two
    libraries' thread pools would fight over the cores."""
    timer = StubTimer({"numpy": [1.0] * 3, "mkl": [0.5] * 3, "onednn": [0.9] * 3})
    run_steps(chooser(tmp_path, timer), WORKLOAD)  # caches mkl for WORKLOAD
    c = chooser(tmp_path, timer)
    assert c.library_for(WORKLOAD[0]) == "mkl"  # read from the cache
    later = ["f 99x98x97 NT =", "f 96x95x94 TN +"]
    assert [c.library_for(s) for s in later * 2] == ["mkl"] * 4
    assert len(timer.calls) == 1  # nothing timed again


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe", b"[1, 2]",
                                     b'{"format": "gpubp-blas-choice/1", "gemm": 3}'])
def test_a_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, content):
    (tmp_path / "key.json").write_bytes(content)
    timer = StubTimer({"numpy": [1.0] * 3, "mkl": [0.5] * 3, "onednn": [0.9] * 3})
    c = chooser(tmp_path, timer)
    assert run_steps(c, WORKLOAD)[1] == ["mkl"] * 3
    assert len(timer.calls) == 1
    assert json.loads((tmp_path / "key.json").read_text())["gemm"][WORKLOAD[0]]["library"] == "mkl"


def test_a_cache_of_another_machine_or_a_directory_is_no_cache(tmp_path):
    timer = StubTimer({"numpy": [1.0] * 3, "mkl": [0.5] * 3, "onednn": [0.9] * 3})
    run_steps(chooser(tmp_path, timer), WORKLOAD)
    other = blas_choice.Cache(tmp_path / "key.json", {"cpu": "another CPU", "libraries": {}})
    assert other.get("gemm", WORKLOAD[0]) is None and other.state.startswith("ignored")
    (tmp_path / "dir.json").mkdir()
    c = chooser(tmp_path, timer, name="dir.json")
    assert c.library_for(WORKLOAD[0]) == "numpy" and c.cache.state.startswith("ignored")


def test_a_library_that_cannot_load_is_left_out_with_its_reason(tmp_path):
    timer = StubTimer({"numpy": [1.0] * 3, "mkl": [0.5] * 3, "onednn": [0.9] * 3})

    def load(name):
        if name == "mkl":
            raise blas.LibraryUnavailable("no MKL here")
        return FakeLibrary(name)

    c = blas_choice.Chooser(measure_gemms=timer, candidates=("numpy", "mkl", "onednn"),
                            cache=blas_choice.Cache(tmp_path / "k.json", {}), load=load)
    assert run_steps(c, WORKLOAD)[1] == ["onednn"] * 3
    assert c.report()["unavailable"] == {"mkl": "no MKL here"}


def test_one_off_products_are_not_timed(tmp_path):
    timer = StubTimer({"numpy": [1.0] * 3, "mkl": [0.5] * 3, "onednn": [0.9] * 3})
    c = chooser(tmp_path, timer)
    for i in range(200):  # never repeating: no cycle, no timing, NumPy's throughout
        assert c.library_for(f"f {1000 + i}x300x300 NN =") == "numpy"
    assert timer.calls == [] and c.report()["undecided_shapes"] == blas_choice.PENDING_LIMIT


def test_matmul_runs_each_product_on_the_chosen_library(rng, monkeypatch):
    """Through gpubp.blas: the first step on NumPy's library, then the stubbed choice."""
    timer = StubTimer({"numpy": [1.0] * 3, "mkl": [0.5] * 3, "onednn": [0.2] * 3})
    stub = blas_choice.Chooser(measure_gemms=timer, cache=blas_choice.Cache.for_this_machine(),
                               candidates=["numpy", "fake"], load=lambda n: FakeLibrary(n))
    timer.seconds["fake"] = [0.1] * 3
    ran = []

    class Recording(blas_libraries.Library):
        name = "fake"

        def gemm(self, plan, a, b, out, alpha, beta, single_thread):
            ran.append("fake")
            return blas.library("numpy").gemm(plan, a, b, out, alpha, beta, single_thread)

    real_library = blas.library
    monkeypatch.setattr(blas, "library", lambda n: Recording("1") if n == "fake" else real_library(n))
    blas._state.configure()._chooser = stub
    products = step_products(rng)
    for _ in range(2):
        for a, b, out, alpha, beta in products:
            np.testing.assert_allclose(blas.matmul(a, b, out.copy(order="A")),
                                       a @ b, rtol=1e-4, atol=1e-3)
    assert len(ran) == len(products)  # the second step all on "fake", tiny products too
    assert blas.name() == "fake 1"
    assert blas.report()["choices"][0]["library"] == "fake"


def test_the_real_timing_measures_every_library_on_scratch_operands():
    workload = ["f 64x48x80 NT =", "f 48x80x64 TN +"]
    times = blas_choice.measure_gemms(INSTALLED, workload)
    assert set(times) == set(INSTALLED)
    assert all(len(t) >= blas_choice.MIN_ROUNDS and min(t) > 0 for t in times.values())
    (a, b, out, alpha, beta), (a2, b2, out2, alpha2, beta2) = blas_choice.scratch_operands(workload)
    assert a.shape == (64, 80) and b.shape == (80, 48) and b.flags.f_contiguous
    assert a2.shape == (48, 64) and a2.flags.f_contiguous and (alpha2, beta2) == (-1e-3, 1.0)
    assert blas_libraries.signature(blas_libraries.plan(a2, b2, out2), True) == workload[1]


def test_vector_math_is_chosen_by_measurement_and_cached(tmp_path):
    cache = blas_choice.Cache(tmp_path / "k.json", {})
    measured = []

    def vml_slower(size):
        measured.append(size)
        return {"vml": [2.0] * 3, "numpy": [1.0] * 3}

    c = blas_choice.Chooser(measure_gemms=None, measure_vector_math=vml_slower, cache=cache,
                            candidates=["numpy"])
    assert c.vector_math(300_000) is False and c.vector_math(260_000) is False
    assert measured == [2**18]  # one size class, timed once
    again = blas_choice.Chooser(measure_gemms=None, measure_vector_math=None, cache=cache,
                                candidates=["numpy"])
    assert again.vector_math(2**18) is False

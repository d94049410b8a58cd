"""precision="bf16": the step's GEMMs on oneDNN with bf16 inputs and fp32 accumulation,
equal to the exactly rounded product, within bf16's tolerance of fp32 through a step and
a fit, and an error saying why (never an emulation) where the CPU has no bf16 units."""

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import gpubp
from gpubp import blas, onednn
from gpubp.errors import BackendError
from gpubp.step import make_stepper

HAVE_BF16 = onednn.bf16_unavailable() is None
needs_bf16 = pytest.mark.skipif(not HAVE_BF16, reason=f"no bf16 here: {onednn.bf16_unavailable()}")
BF16_EPS = 2.0**-8  # bf16 keeps 8 significant bits: relative rounding error ≤ 2^-8 / 2 · 2


def to_bf16(x):
    """x rounded to the nearest bf16 (ties to even), as float64."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).astype(np.uint32)
    return rounded.view(np.float32).reshape(np.shape(x)).astype(np.float64)


def step_products(rng, sizes=(96, 80, 70, 10), batch=64):
    """The fused SGD step's GEMMs in gpubp's layouts: (a, b, out, alpha, beta)."""
    W = [(rng.normal(size=(o, i)) / np.sqrt(i)).astype(np.float32) for i, o in zip(sizes, sizes[1:])]
    inputs = [rng.random((batch, sizes[0]), dtype=np.float32)] + [
        np.asfortranarray(rng.random((batch, n), dtype=np.float32)) for n in sizes[1:-1]]
    deltas = [np.asfortranarray(rng.normal(size=(batch, n)).astype(np.float32))
              for n in sizes[1:-1]] + [rng.normal(size=(batch, sizes[-1])).astype(np.float32)]
    products = []
    for l in range(len(W)):
        order = "F" if l < len(W) - 1 else "C"
        products.append((inputs[l], W[l].T, np.empty((batch, W[l].shape[0]), np.float32,
                                                      order=order), 1.0, 0.0))
    for l in reversed(range(len(W))):
        if l > 0:
            products.append((deltas[l], W[l], np.empty((batch, sizes[l]), np.float32,
                                                        order="F"), 1.0, 0.0))
        products.append((deltas[l].T, inputs[l], W[l].copy(), -0.1, 1.0))
    return products


@needs_bf16
def test_every_step_product_is_the_rounded_inputs_product_accumulated_in_fp32(rng):
    with blas.gemm_precision("bf16"):
        for a, b, out, alpha, beta in step_products(rng):
            start = out.astype(np.float64) if beta else 0.0
            want = alpha * (to_bf16(a) @ to_bf16(b)) + beta * start
            scale = np.abs(alpha) * (np.abs(to_bf16(a)) @ np.abs(to_bf16(b))) + np.abs(start)
            assert blas.matmul(a, b, out, alpha, beta) is out
            # only fp32 accumulation error is left once the inputs are rounded
            tolerance = 2 * a.shape[1] * np.finfo(np.float32).eps * scale
            assert np.all(np.abs(out - want) <= tolerance + 1e-30), (a.shape, b.shape, beta)


@needs_bf16
def test_bf16_products_are_within_bf16_tolerance_of_fp32(rng):
    for a, b, out, alpha, beta in step_products(rng):
        fp32 = out.copy()
        blas.matmul(a, b, fp32, alpha, beta)
        with blas.gemm_precision("bf16"):
            blas.matmul(a, b, out, alpha, beta)
        scale = np.abs(alpha) * (np.abs(a.astype(np.float64)) @ np.abs(b)) + np.abs(beta * fp32)
        assert np.all(np.abs(out - fp32) <= 2 * BF16_EPS * scale)
        assert np.abs(out - fp32).max() > 0  # it did run in bf16


@needs_bf16
def test_the_bf16_units_run_every_layout_and_form():
    """oneDNN picks a kernel of the CPU's bf16 ISA, not a reference or fp32 one."""
    mm = blas.bf16_matmul()
    a = np.ones((64, 96), np.float32)
    for x in (a, np.asfortranarray(a)):
        for y in (np.ones((96, 80), np.float32), np.ones((80, 96), np.float32).T):
            for alpha, beta in ((1.0, 0.0), (-0.1, 1.0)):
                name = mm.implementation(x, y, alpha, beta)
                assert "bf16" in name or "amx" in name, name


@needs_bf16
def test_a_bf16_step_is_within_tolerance_of_the_fp32_step(rng):
    """One SGD step of the trainer's stepper in each precision: the weight updates (EqA1,
    fused into the GEMM) differ by bf16 rounding of their inputs only."""
    X, y = rng.random((64, 96), dtype=np.float32), rng.integers(0, 10, 64)
    nets, losses = {}, {}
    for precision in ("fp32", "bf16"):
        net = nets[precision] = gpubp.MLP((96, 80, 70, 10), backend="numpy", seed=0)
        stepper = make_stepper(net, gpubp.SGD(0.5), net.prepare_features(X),
                               net.prepare_targets(y, 64), batch_size=64, precision=precision)
        stepper.begin_epoch(np.arange(64), 0.5)
        with blas.gemm_precision(precision):
            stepper.step(0)
        losses[precision] = stepper.finish_epoch() / 64
        work = stepper._workspace(64)
        assert all(x.flags.c_contiguous == (precision == "bf16")
                   for x in work.activations + work.deltas)
    start = gpubp.MLP((96, 80, 70, 10), backend="numpy", seed=0).parameters()
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=4 * BF16_EPS)
    for p16, p32, p0 in zip(nets["bf16"].parameters(), nets["fp32"].parameters(), start):
        update16, update32 = p16 - p0, p32 - p0
        assert np.abs(update16 - update32).max() <= 0.05 * np.abs(update32).max() + 1e-7
    assert any(not np.array_equal(a, b) for a, b in
               zip(nets["bf16"].parameters(), nets["fp32"].parameters()))


@needs_bf16
@pytest.mark.parametrize("a_order", "CF")
def test_a_fused_layer_is_the_sigmoid_of_the_rounded_inputs_product_plus_bias(rng, a_order):
    """blas.linear_sigmoid: σ(bf16(a) bf16(W)ᵀ + b) with the bias and σ applied in fp32 to
    the fp32 accumulator, on the CPU's bf16 units; saturating cleanly far from 0."""
    a = np.asarray(rng.normal(size=(64, 96)).astype(np.float32), order=a_order)
    W = (rng.normal(size=(80, 96)) / 2).astype(np.float32)
    bias = rng.normal(size=80).astype(np.float32)
    bias[:4] = [-1e4, 1e4, -90.0, 90.0]  # σ → 0, 1 without overflow or NaN
    out = np.full((64, 80), np.nan, np.float32)
    assert blas.linear_sigmoid(a, W, bias, out) is None  # fp32: nothing fused, nothing written
    assert np.isnan(out).all()
    with blas.gemm_precision("bf16"):
        assert blas.linear_sigmoid(a, W, bias, out) is out
        z = to_bf16(a) @ to_bf16(W).T + bias
        scale = np.abs(to_bf16(a)) @ np.abs(to_bf16(W)).T
        # σ is 1/4-Lipschitz: fp32 accumulation error, then σ's own few ulp
        tolerance = 0.25 * 2 * a.shape[1] * np.finfo(np.float32).eps * scale + 4e-7
        assert np.all(np.abs(out - 0.5 * (1 + np.tanh(z / 2))) <= tolerance)  # σ(z), no overflow
        assert np.all(out[:, [0, 2]] < 1e-30) and np.all(out[:, [1, 3]] == 1.0)
        name = blas.bf16_matmul()._matmul(a, W.T, 64, 80, 96, False, 0.0, sigmoid=True)[2]
        assert "bf16" in name or "amx" in name, name
        column_major = np.asfortranarray(np.full((64, 80), np.nan, np.float32))
        assert blas.linear_sigmoid(a, W, bias, column_major) is None  # oneDNN: ref kernel
        assert np.isnan(column_major).all()


@needs_bf16
def test_the_bf16_step_fuses_each_hidden_layer_and_allocates_nothing_once_warm(rng,
                                                                           monkeypatch):
    calls = []
    fused = onednn.Bf16Matmul.linear_sigmoid
    monkeypatch.setattr(onednn.Bf16Matmul, "linear_sigmoid",
                        lambda self, *args: calls.append(fused(self, *args)) or calls[-1])
    X, y = rng.random((512, 96), dtype=np.float32), rng.integers(0, 10, 512)
    net = gpubp.MLP((96, 800, 700, 10), backend="numpy", seed=0)
    stepper = make_stepper(net, gpubp.SGD(0.1, momentum=0.9), net.prepare_features(X),
                           net.prepare_targets(y, 512), batch_size=128, precision="bf16")
    with blas.gemm_precision("bf16"):
        for epoch in range(2):
            if epoch == 1:
                tracemalloc.start()
            stepper.begin_epoch(np.arange(512), 0.1)
            for batch in range(4):
                stepper.step(batch)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert len(calls) == 2 * 8 and all(c is not None for c in calls)
    assert peak < 64 * 1024 < 128 * 700 * 4, peak  # not one layer's worth


def test_a_stepper_refuses_an_unknown_precision():
    net = gpubp.MLP((20, 30, 4), backend="numpy", seed=0)
    X = np.zeros((8, 20), np.float32)
    with pytest.raises(ValueError, match="precision: expected 'fp32' or 'bf16' on NumPy"):
        make_stepper(net, gpubp.SGD(0.1), X, np.zeros(8, np.int64), 4, precision="tf32")


@needs_bf16
def test_a_bf16_fit_follows_the_fp32_fit(rng):
    centers = rng.normal(size=(4, 20)) * 2
    y = rng.integers(0, 4, 512)
    X = (centers[y] + rng.normal(size=(512, 20))).astype(np.float32)
    histories = {}
    for precision in ("fp32", "bf16"):
        net = gpubp.MLP((20, 300, 4), backend="numpy", seed=1)
        trainer = gpubp.Trainer(net, gpubp.SGD(0.5), batch_size=64, epochs=5, seed=0,
                                progress=False, precision=precision)
        histories[precision] = trainer.fit(X, y)["train_loss"]
        assert trainer.precision == precision
    assert histories["bf16"][-1] < 0.5 * histories["bf16"][0]
    np.testing.assert_allclose(histories["bf16"], histories["fp32"], rtol=0.05, atol=0.01)
    assert blas._state.bf16 is None  # fp32 again after fit


def test_no_bf16_units_is_an_error_that_says_why(monkeypatch):
    monkeypatch.setattr(onednn, "cpu_flags", lambda: {"sse2", "avx2", "fma", "avx512f"})
    net = gpubp.MLP((20, 30, 4), backend="numpy", seed=0)
    with pytest.raises(BackendError, match="precision 'bf16': this CPU has no bf16 "
                                           r"dot-product units \(neither AVX512_BF16 nor AMX\)"):
        gpubp.Trainer(net, gpubp.SGD(0.1), precision="bf16")
    with pytest.raises(BackendError, match="AVX512_BF16"):
        with blas.gemm_precision("bf16"):
            pass
    a = np.ones((64, 64), np.float32)
    out = blas.matmul(a, a, np.empty_like(a))  # fp32 outside: unchanged
    assert np.all(out == 64)


def test_no_onednn_or_an_isa_below_bf16_is_an_error_too(monkeypatch):
    monkeypatch.setattr(onednn, "cpu_flags", lambda: {"avx512_bf16"})
    monkeypatch.setattr(onednn, "library", lambda: None)
    with pytest.raises(BackendError, match="oneDNN is not installed"):
        blas.check_precision("bf16")

    class OldIsa:
        def dnnl_get_effective_cpu_isa(self):
            return 0x27  # avx512_core: no bf16

    monkeypatch.setattr(onednn, "library", lambda: OldIsa())
    monkeypatch.setattr(onednn, "version", lambda: "3.2.0")
    with pytest.raises(BackendError, match="does not use this CPU's bf16 units"):
        blas.check_precision("bf16")


def test_bad_precisions_are_refused_by_name():
    net = gpubp.MLP((20, 30, 4), backend="numpy", seed=0)
    with pytest.raises(ValueError, match="precision: expected one of"):
        gpubp.Trainer(net, gpubp.SGD(0.1), precision="fp16")
    net64 = gpubp.MLP((20, 30, 4), backend="numpy", dtype="float64", seed=0)
    with pytest.raises(ValueError, match="precision: 'bf16' trains float32 networks"):
        gpubp.Trainer(net64, gpubp.SGD(0.1), precision="bf16")


def test_the_command_line_takes_precision_and_says_why_it_cannot(tmp_path):
    code = ("import sys; from gpubp import onednn, cli\n"
            "onednn.cpu_flags = lambda: set()\n"
            "sys.exit(cli.main(['train', '--precision', 'bf16', '--epochs', '1', '--quiet']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PATH": "", "XDG_CACHE_HOME": str(tmp_path)})
    assert done.returncode != 0
    assert "precision 'bf16': this CPU has no bf16 dot-product units" in done.stderr

"""bench.compare: the naive NumPy peer is a correct implementation, and the runner reports
every peer as measured or skipped with a reason, never a made-up number."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not installed

import gpubp  # noqa: E402
from bench import compare, naive_numpy  # noqa: E402
from bench.peers import gemm_only_peer  # noqa: E402
from bench.worker import run_job  # noqa: E402
from gpubp import blas  # noqa: E402
from gpubp.step import make_stepper  # noqa: E402

TINY = {"sizes": [12, 7, 5, 3], "batch_size": 16, "lr": 0.1, "seed": 0, "warmup": 1,
        "repeats": 2, "threads": 1}


@pytest.fixture
def tiny_data(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "X.npy", rng.random((64, 12), dtype=np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 64).astype(np.int64))
    return str(tmp_path)


def test_naive_peer_has_gpubps_weights_loss_and_gradients():
    sizes = (12, 7, 5, 3)
    rng = np.random.default_rng(0)
    X, y = rng.random((9, 12)), rng.integers(0, 3, 9)
    net = gpubp.MLP(sizes, backend="numpy", dtype="float64", seed=3)
    weights, biases = naive_numpy.init_params(sizes, seed=3, dtype=np.float64)
    for W, W_net in zip(weights, net.weights):
        np.testing.assert_array_equal(W, W_net)
    loss, grads = naive_numpy.loss_and_grads(weights, biases, X, y)
    loss_net, grads_net = net.loss_and_grads(X, y)
    assert loss == pytest.approx(loss_net, rel=1e-12)
    for (dW, db), (dW_net, db_net) in zip(grads, grads_net, strict=True):
        np.testing.assert_allclose(dW, dW_net, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(db, db_net, rtol=1e-10, atol=1e-14)


def test_naive_epoch_lowers_the_loss():
    rng = np.random.default_rng(0)
    X = rng.random((256, 12), dtype=np.float32)
    y = (X[:, 0] > 0.5).astype(np.int64)
    weights, biases = naive_numpy.init_params((12, 16, 2))
    first = naive_numpy.train_epoch(weights, biases, X, y, 16, 0.5, rng)
    for _ in range(20):
        last = naive_numpy.train_epoch(weights, biases, X, y, 16, 0.5, rng)
    assert weights[0].dtype == np.float32 and last < first


@pytest.mark.parametrize("peer", ["gpubp-numpy", "gpubp-numpy-openblas", "naive-numpy",
                                  "sklearn", "torch-eager-cpu", "gemm-only"])
def test_each_cpu_peer_trains_or_says_why_not(peer, tiny_data):
    result = run_job({"peer": peer, "point": TINY, "data": tiny_data})
    if result["status"] == "skipped":  # e.g. torch or scikit-learn not installed
        assert "not installed" in result["reason"]
        return
    assert result["status"] == "measured", result.get("reason")
    assert len(result["epoch_s"]) == 2 and all(s > 0 for s in result["epoch_s"])
    assert result["peak_rss_bytes"] > 0
    if peer != "gemm-only":  # the ceiling trains nothing, so it has no loss
        assert np.isfinite(result["final_loss"])


def test_gemm_only_peer_runs_exactly_the_gemms_of_gpubps_step(monkeypatch):
    """Same products, operand layouts, shapes and accumulation, in the same order, as
    gpubp's fused SGD step (the trainer's stepper): the ceiling is gpubp's own GEMM work."""
    real_matmul = blas.matmul
    calls = []

    def recording_matmul(a, b, out, alpha=1.0, beta=0.0):
        # A column-major out comes back here as outᵀ = bᵀ aᵀ: only row-major GEMMs count.
        if out.flags.c_contiguous:
            calls.append(tuple((m.shape, m.flags.c_contiguous) for m in (a, b, out))
                         + (alpha != 0, beta))
        return real_matmul(a, b, out, alpha, beta)

    monkeypatch.setattr(blas, "matmul", recording_matmul)
    monkeypatch.setattr(blas, "has_mkl", lambda: True)  # the stepper's fused update
    rng = np.random.default_rng(0)
    X, y = rng.random((16, 12), dtype=np.float32), rng.integers(0, 3, 16)
    net = gpubp.MLP(TINY["sizes"], backend="numpy", seed=0)
    stepper = make_stepper(net, gpubp.SGD(0.1), net.prepare_features(X),
                           net.prepare_targets(y, 16), batch_size=16)
    stepper.begin_epoch(np.arange(16), 0.1)
    stepper.step(0)
    gpubp_calls, calls[:] = list(calls), []
    result = gemm_only_peer.run(X, y, {**TINY, "warmup": 0, "repeats": 1}, libraries=["numpy"])
    assert len(gpubp_calls) == 3 + 3 + 2
    assert calls == gpubp_calls and result["library"] == "numpy"


def test_the_bf16_gemm_only_peer_runs_the_products_of_gpubps_bf16_step(monkeypatch):
    """Each product of the bf16 step (a fused hidden layer counted as its product) with
    the same shapes, layouts and accumulation, in the same order, on oneDNN's bf16 matmul."""
    from gpubp import onednn

    if onednn.bf16_unavailable() is not None:
        pytest.skip(f"no bf16 here: {onednn.bf16_unavailable()}")
    calls = []

    def layout(x):
        return x.shape, x.flags.c_contiguous, x.flags.f_contiguous

    call, fused = onednn.Bf16Matmul.__call__, onednn.Bf16Matmul.linear_sigmoid

    def recording_call(self, a, b, out, alpha=1.0, beta=0.0):
        calls.append((layout(a), layout(b), layout(out), alpha != 1.0, beta))
        return call(self, a, b, out, alpha, beta)

    def recording_fused(self, a, W, bias, out):
        calls.append((layout(a), layout(W.T), layout(out), False, 0.0))
        return fused(self, a, W, bias, out)

    monkeypatch.setattr(onednn.Bf16Matmul, "__call__", recording_call)
    monkeypatch.setattr(onednn.Bf16Matmul, "linear_sigmoid", recording_fused)
    rng = np.random.default_rng(0)
    X, y = rng.random((16, 12), dtype=np.float32), rng.integers(0, 3, 16)
    net = gpubp.MLP(TINY["sizes"], backend="numpy", seed=0)
    stepper = make_stepper(net, gpubp.SGD(0.1), net.prepare_features(X),
                           net.prepare_targets(y, 16), batch_size=16, precision="bf16")
    stepper.begin_epoch(np.arange(16), 0.1)
    with blas.gemm_precision("bf16"):
        stepper.step(0)
    gpubp_calls, calls[:] = list(calls), []
    result = gemm_only_peer.run(X, y, {**TINY, "warmup": 0, "repeats": 1}, precision="bf16")
    assert len(gpubp_calls) == 3 + 3 + 2
    assert calls == gpubp_calls and result["library"] == "bf16"


def test_gemm_only_peer_reports_the_fastest_library(tiny_data):
    result = run_job({"peer": "gemm-only", "point": TINY, "data": tiny_data})
    assert result["status"] == "measured"
    per_library = result["per_library_epoch_s"]
    assert set(per_library) == set(blas.installed())  # every installed library was timed
    medians = {n: np.median(t) for n, t in per_library.items()}
    assert result["library"] == min(medians, key=medians.get)
    assert result["epoch_s"] == per_library[result["library"]]


def test_gpubp_rows_say_which_gemm_library_ran_and_why(tiny_data, monkeypatch):
    result = run_job({"peer": "gpubp-numpy", "point": TINY, "data": tiny_data})
    assert result["blas"]["mode"] == "auto" and result["blas"]["precision"] == "fp32"
    monkeypatch.setenv("GPUBP_BLAS", "numpy")
    blas.reset()
    try:
        forced = run_job({"peer": "gpubp-numpy-openblas", "point": TINY, "data": tiny_data})
    finally:
        monkeypatch.undo()
        blas.reset()
    assert forced["blas"]["reason"] == "GPUBP_BLAS=numpy"
    record = compare.summarize([forced], 64)
    assert compare.gemm_choice_line(record).startswith("numpy (")


@pytest.mark.parametrize("peer", ["gpubp-numpy-mkl", "gpubp-numpy-onednn", "gpubp-numpy-bf16",
                                  "torch-eager-cpu-bf16"])
def test_the_library_and_bf16_peers_train_or_say_why_not(peer, tiny_data):
    result = run_job({"peer": peer, "point": TINY, "data": tiny_data})
    if result["status"] == "skipped":
        assert result["reason"]
        return
    assert result["status"] == "measured", result.get("reason")
    assert np.isfinite(result["final_loss"])


def test_a_missing_library_is_skipped_not_faked(monkeypatch, tiny_data):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn -> ImportError
    monkeypatch.setitem(sys.modules, "sklearn.neural_network", None)
    result = run_job({"peer": "sklearn", "point": TINY, "data": tiny_data})
    assert result["status"] == "skipped" and "not installed" in result["reason"]
    assert "epoch_s" not in result

    # Through the runner: every configuration of that peer is skipped, with the reason.
    monkeypatch.setattr(compare, "run_worker",
                        lambda peer, point, data_dir, config:
                        run_job({"peer": peer.name, "point": point, "data": data_dir}))
    config = compare.CompareConfig(batch_sizes=(8, 16), widths=(), width=5, n_in=12,
                                   n_classes=3, data="synthetic", rows=32, repeats=1,
                                   peers=("gpubp-numpy", "sklearn"), threads=1)
    report = compare.run_comparison(config, log=lambda line: None)
    sklearn_rows = [r for r in report["results"] if r["peer"] == "sklearn"]
    assert len(sklearn_rows) == 2
    assert all(r["status"] == "skipped" and "samples_per_s" not in r for r in sklearn_rows)
    assert report["peers"]["sklearn"]["status"] == "skipped"
    assert "sklearn: skipped (not installed" in compare.format_table(report)


def test_runner_end_to_end_writes_json_with_every_peer_accounted_for(tmp_path, capsys):
    argv = ["--batch-sizes", "16,32", "--widths", "", "--width", "6", "--rows", "64",
            "--data", "synthetic", "--repeats", "2", "--threads", "1", "--out", str(tmp_path),
            "--tag", "test", "--peers", "gpubp-numpy,naive-numpy,gpubp-cupy"]
    compare.main(argv)
    (written,) = tmp_path.glob("*-test-compare.json")
    report = json.loads(written.read_text())
    assert "synthetic" in report["data"]["source"] and report["data"]["rows"] == 64
    assert {r["batch_size"] for r in report["results"]} == {16, 32}
    assert len(report["results"]) == 2 * 3
    for r in report["results"]:
        if r["status"] == "measured":
            assert r["samples_per_s"] > 0 and r["peak_rss_MiB"] > 0
            assert r["gpubp_over_peer"] > 0 if r["device"] == "cpu" else True
        else:
            assert r["status"] in ("skipped", "failed") and r["reason"]
    cpu = [r for r in report["results"] if r["device"] == "cpu"]
    assert all(r["status"] == "measured" for r in cpu)
    assert all(r["gpubp_over_peer"] == 1.0 for r in cpu if r["peer"] == "gpubp-numpy")
    out = capsys.readouterr().out
    assert "naive-numpy" in out and "samples/s" in out


def test_no_matplotlib_means_a_note_not_a_failure(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    report = {"results": [], "peers": {}, "config": {}, "machine": {}, "data": {}}
    note = compare.plot(report, tmp_path / "p.png")
    assert note.startswith("no plot: matplotlib is not installed")
    assert not (tmp_path / "p.png").exists()

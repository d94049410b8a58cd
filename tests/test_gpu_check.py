"""bench/gpu_check.py without a GPU: the orchestration with --dry-run's fake sections (a
crash, a SIGSEGV, a hang killed at its timeout and one that ignores SIGTERM spoil only
themselves; the JSON is valid after each section and after the orchestrator is killed;
the budget shrinks the timeouts; the table prints last), the real sections skipping with
a reason where CuPy has no device, every section module importing without CuPy or
PyTorch, and the pure parts (planning, targets, the report's tables) on made-up results.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench/ is not installed

from bench import gpu_check, report  # noqa: E402
from bench.gpu_sections import (  # noqa: E402
    SECTIONS,
    Context,
    jsonable,
    planned_steps,
    targets,
    write_json_atomic,
)
from bench.gpu_sections import step as step_section  # noqa: E402

SCRIPT = str(REPO / "bench" / "gpu_check.py")


def orchestrate(tmp_path, *args, timeout=60):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return done, json.loads((out / "gpu-check.json").read_text()), out


def read_json(path: Path):
    return json.loads(path.read_text())


# ---- the orchestration, with fake sections --------------------------------------------------

def test_a_crash_a_fault_and_a_hang_spoil_only_their_own_sections(tmp_path):
    done, data, out = orchestrate(tmp_path, "--dry-run", "--budget-s", "30")
    assert done.returncode == 0, done.stderr
    s = data["sections"]
    assert [s[n]["status"] for n in ("ok", "crash", "segv", "hang", "skip", "last")] == \
        ["ok", "failed", "crashed", "timeout", "skipped", "ok"]
    assert s["crash"]["error"] == "RuntimeError: fake failure inside a section"
    assert "fake.py" in s["crash"]["traceback_tail"]
    assert s["crash"]["result"] == {"before_the_crash": 1.0}  # saved before it failed
    assert "SIGSEGV" in s["segv"]["error"] and s["segv"]["returncode"] == -signal.SIGSEGV
    assert s["hang"]["result"] == {"partial": "saved before hanging"}
    assert s["hang"]["seconds"] < 5 and s["hang"]["timeout_s"] == 1.0
    assert "lacks what the section needs" in s["skip"]["reason"]
    assert s["last"]["result"] == {"figure": 42.0} and data["finished"] is True
    assert "a line on stderr" in (out / "ok.log").read_text()  # stdout and stderr, raw
    assert {p.name for p in out.iterdir()} == {"gpu-check.json"} | {
        f"{n}.log" for n in ("ok", "crash", "segv", "hang", "skip", "last")}
    # The table comes last, one row per section, after every progress line.
    lines = done.stdout.rstrip().splitlines()
    assert lines[-1].startswith("elapsed") and "gpu-check.json" in lines[-1]
    header = next(i for i, ln in enumerate(lines) if ln.startswith("section"))
    assert all(not ln.startswith("[gpu-check") for ln in lines[header:])
    assert [ln.split()[0] for ln in lines[header + 1:header + 7]] == \
        ["ok", "crash", "segv", "hang", "skip", "last"]


def test_the_budget_shrinks_each_timeout_and_sigkill_ends_what_ignores_sigterm(tmp_path):
    done, data, _ = orchestrate(tmp_path, "--dry-run", "--sections", "budget,stubborn,last",
                                "--budget-s", "4", "--kill-grace-s", "0.3")
    s = data["sections"]
    # budget: 4 s less the later sections' minimums (0.5 + 0.5), not its cap of 30 s; it
    # plans within less.
    assert s["budget"]["timeout_s"] == pytest.approx(3.0, abs=0.15)
    assert s["budget"]["result"]["budget_s"] < s["budget"]["result"]["timeout_s"]
    assert s["stubborn"]["status"] == "timeout" and s["stubborn"]["returncode"] == -9
    # last: what was left when it started (the stubborn one took at least its 0.6 s).
    assert s["last"]["status"] == "ok" and s["last"]["timeout_s"] < 4 - 0.6
    assert s["last"]["timeout_s"] <= 4 - s["last"]["started_at_s"] + 0.1
    done, data, _ = orchestrate(tmp_path, "--dry-run", "--sections", "ok,last",
                                "--budget-s", "0.3")
    assert [e["status"] for e in data["sections"].values()] == ["skipped", "skipped"]
    assert data["sections"]["ok"]["reason"].startswith("budget:")


def test_run_bounded_ends_the_whole_group_at_its_timeout(tmp_path):
    from bench.gpu_sections import run_bounded

    pids = tmp_path / "pids"
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):  # a launcher and the rank it started
        run_bounded(["sh", "-c", f"sleep 30 & echo $! > {pids}; sleep 30"], timeout=0.5,
                    grace_s=1)
    assert time.monotonic() - started < 5
    assert wait_for(lambda: not alive(int(pids.read_text())), timeout=5)
    assert run_bounded([sys.executable, "-c", "print('hi')"], timeout=30).stdout == "hi\n"


def test_section_timeout_keeps_the_later_minimums_unless_its_own_needs_them():
    assert gpu_check.section_timeout(480, cap=90, minimum=10, reserve=110) == 90
    assert gpu_check.section_timeout(100, cap=90, minimum=10, reserve=50) == 50
    assert gpu_check.section_timeout(40, cap=90, minimum=30, reserve=35) == 40  # priority
    assert gpu_check.section_timeout(20, cap=90, minimum=30, reserve=0) is None


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except (OSError, ValueError, KeyError):  # the file between two writes, or absent
            pass
        time.sleep(0.05)
    return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not reaped yet by init) counts as ended
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_the_json_is_valid_after_the_orchestrator_is_killed_mid_run(tmp_path, how):
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, SCRIPT, "--out", str(out), "--dry-run",
                              "--sections", "ok,hang,last", "--budget-s", "60"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=REPO)
    path = out / "gpu-check.json"
    try:
        assert wait_for(lambda: read_json(path)["sections"]["hang"]["status"] == "running")
        running = read_json(path)  # written before the section started, and valid
        assert running["sections"]["ok"]["status"] == "ok"
        assert running["sections"]["ok"]["result"] == {"figure": 42.0}
        hang_pid = running["sections"]["hang"]["pid"]
        child.send_signal(getattr(signal, how))
        printed, _ = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    data = read_json(path)
    if how == "SIGKILL":  # nothing ran after the kill: the last write stands
        assert data["sections"]["hang"]["status"] == "running" and not data["finished"]
    else:  # the orchestrator ends the section, writes, prints the table
        assert child.returncode == 130 and data["finished"] is False
        assert data["sections"]["hang"]["status"] == "interrupted"
        assert data["sections"]["last"]["status"] == "not run"
        assert printed.rstrip().splitlines()[-1].startswith("elapsed")
    assert wait_for(lambda: not alive(hang_pid), timeout=5)  # the section died with it


# ---- the real sections, here --------------------------------------------------------------

def cupy_has_a_device() -> bool:
    try:
        from gpubp.backend import get_backend
        from gpubp.errors import BackendError
    except ImportError:
        return False
    try:
        get_backend("cupy")
    except BackendError:
        return False
    return True


@pytest.mark.skipif(cupy_has_a_device(), reason="this machine has a GPU: the sections run")
def test_the_real_sections_skip_with_the_reason_without_a_device(tmp_path):
    done, data, out = orchestrate(tmp_path, "--sections",
                                  "step,kernels,mnist,data_parallel,sklearn_fit",
                                  "--budget-s", "120")
    assert done.returncode == 0, done.stderr
    for name, entry in data["sections"].items():
        assert entry["status"] == "skipped", (name, entry)
        assert "cupy" in entry["reason"].lower(), (name, entry["reason"])
    assert "mpi" in data["sections"]["data_parallel"]["result"]  # recorded all the same
    assert all(t["pass"] is None and t["why"] for t in data["targets"])
    assert (out / "step.log").read_text().count("skipped:") == 1


def test_the_sklearn_fit_section_reads_the_cpu_figure_and_summarizes(tmp_path):
    from bench.gpu_sections import sklearn_fit

    assert sklearn_fit.cpu_reference(tmp_path) is None
    (tmp_path / "2026-01-01-cpu-sklearn-fit.json").write_text(json.dumps(
        {"cpu": "Some CPU", "config": {"epochs": 10}, "best_fit_s": {"sklearn": 42.0,
                                                                      "gpubp": 21.0}}))
    reference = sklearn_fit.cpu_reference(tmp_path)
    assert reference["best_fit_s"]["sklearn"] == 42.0 and reference["cpu"] == "Some CPU"
    runs = [{"peer": "gpubp", "fit_s": 3.0, "test_accuracy": 0.97}]
    line = sklearn_fit.summary({"result": {"runs": runs, "cpu_reference": reference}})
    assert line == "gpubp 3.0 s (97.00%); CPU elsewhere: scikit-learn 42.0 s (Some CPU)"
    runs.append({"peer": "sklearn", "fit_s": 30.0, "test_accuracy": 0.97})
    line = sklearn_fit.summary({"result": {"runs": runs, "sklearn_over_gpubp": 10.0}})
    assert line.endswith("scikit-learn ÷ gpubp 10.0×")


def test_every_section_module_imports_without_cupy_or_torch():
    modules = sorted({s.module for s in SECTIONS} | {"bench.gpu_sections.dp_worker",
                                                     "bench.gpu_sections.targets",
                                                     "bench.kernel_times",
                                                     "bench.step_profile", "bench.gpu_check"})
    code = ("import importlib, sys\n"
            "sys.modules['cupy'] = sys.modules['torch'] = None  # import cupy: ImportError\n"
            f"for name in {modules!r}:\n"
            "    module = importlib.import_module(name)\n"
            "    assert name.endswith(('dp_worker', 'targets', 'kernel_times', 'step_profile',\n"
            "                          'gpu_check')) or callable(module.summary), name\n"
            "print('imported', len(sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    for section in SECTIONS:
        source = (REPO / (section.module.replace(".", "/") + ".py")).read_text()
        compile(source, section.module, "exec")


# ---- the step section's planning, with fake ways ---------------------------------------------

class FakeTimer:
    """Device time is what the fake steps add up."""

    def __init__(self, per_step):
        self.clock, self.per_step = 0.0, per_step

    def step(self):
        self.clock += self.per_step

    def start(self):
        return self.clock

    def stop(self, start):
        return self.clock - start


def test_measure_sets_the_steps_from_the_probe():
    timer = FakeTimer(1e-4)
    m = step_section.measure(timer.step, timer, allot_s=0.5, repeats=5)
    assert m["steps_per_repeat"] == 1000 and m["ms"] == pytest.approx(0.1)
    timer = FakeTimer(0.02)  # 20 ms a step: 5 steps a repeat fill 0.5 s
    assert step_section.measure(timer.step, timer, 0.5)["steps_per_repeat"] == 5
    assert planned_steps(1.0, 0.5, 5) == 3 and planned_steps(0.0, 0.5, 5) == 1000


def test_plan_jobs_puts_the_targets_first_and_compile_last():
    jobs = step_section.plan_jobs()
    first = {(tuple(s), b) for s, b, p, w in jobs[:8]}
    assert first == {((784, 800, 10), 256), ((784, 800, 10), 4096)}
    assert all(w == "torch_compile" for *_, w in jobs[-8:])
    assert len({j for j in jobs}) == len(jobs)
    ways = {(p, w) for _, _, p, w in jobs}
    assert ("tf32", "gpubp_graph") in ways and ("tf32", "gpubp_eager") not in ways


def test_the_step_section_records_failures_skips_and_speedups(monkeypatch, tmp_path):
    calls = []

    def gpubp_way(cp, data, sizes, batch, graphs, precision, allot):
        calls.append(("gpubp", batch, graphs, precision))
        if batch == 64 and not graphs:
            raise RuntimeError("cudaErrorIllegalAddress")
        return {"ms": 0.05 if graphs else 0.2, "pool_constant_from_step_2": True,
                "graphs_active": graphs, "steps_per_repeat": 10, "repeats": 5}

    def torch_way(torch, data, sizes, batch, way, tf32, allot):
        calls.append((way, batch))
        if way == "torch_compile":
            raise RuntimeError("no C compiler")
        return {"ms": 0.3 if way == "torch_eager" else 0.1, "steps_per_repeat": 10,
                "repeats": 5}

    pool = SimpleNamespace(free_all_blocks=lambda: None)
    monkeypatch.setattr(step_section, "require_cupy",
                        lambda: SimpleNamespace(get_default_memory_pool=lambda: pool))
    monkeypatch.setattr(step_section, "optional_torch",
                        lambda: (SimpleNamespace(__version__="9.9"), None))
    monkeypatch.setattr(step_section, "Data", type("D", (), {
        "__init__": lambda self, *a: None, "rows_for": staticmethod(lambda b: b)}))
    monkeypatch.setattr(step_section, "gpubp_way", gpubp_way)
    monkeypatch.setattr(step_section, "torch_way", torch_way)
    monkeypatch.setattr(step_section, "_profile", lambda *a: None)
    monkeypatch.setattr(step_section.gc, "collect", lambda: 0)
    ctx = make_context(tmp_path, "step", timeout=600)
    step_section.run(ctx)
    rows = ctx.result["rows"]
    row = targets.step_row(ctx.result, "784-800-10", 256)
    assert row["speedup"]["gpubp_graph_vs_torch_eager"] == pytest.approx(6.0)
    bad = targets.step_row(ctx.result, "784-800-10", 64)
    assert bad["gpubp_eager"]["error"] == "RuntimeError: cudaErrorIllegalAddress"
    compiled = [r["torch_compile"] for r in rows if "torch_compile" in r]
    assert len(compiled) == 8 and all("no C compiler" in c["skipped"] for c in compiled)
    assert sum(1 for c in calls if c[0] == "torch_compile") == 1  # not tried again
    assert sum(1 for c in compiled if "error" in c) == 1
    assert read_json(ctx.partial_path)["result"]["rows"]  # saved as it went
    # A budget too small for anything: every job is skipped, saying so.
    ctx = make_context(tmp_path, "step", timeout=2)
    step_section.run(ctx)
    cells = [r[w] for r in ctx.result["rows"] for w in step_section.WAYS if w in r]
    assert cells and all(c["skipped"].startswith("budget") for c in cells)


def make_context(tmp_path, name, timeout, earlier=None) -> Context:
    return Context({"section": name, "timeout_s": timeout, "work_dir": str(tmp_path),
                    "out_dir": str(tmp_path), "partial_path": str(tmp_path / f"{name}.json"),
                    "earlier": earlier or {}, "data_dir": None})


# ---- the pytest plugin of the tests section --------------------------------------------------

def test_the_tests_section_records_each_outcome_and_failure(tmp_path):
    from bench.gpu_sections.gpu_tests import Recorder

    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_passes(): pass\n"
        "def test_fails(): assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skip(reason='no device here')\n"
        "def test_skipped(): pass\n"
        "@pytest.mark.xfail\n"
        "def test_xfails(): assert False\n")
    ctx = make_context(tmp_path, "tests", timeout=60)
    recorder = Recorder(ctx, stop_at_left_s=0)
    code = pytest.main([str(tmp_path / "test_sample.py"), "-q", "-p", "no:cacheprovider",
                        "-o", "addopts=", "--rootdir", str(tmp_path), "-c", os.devnull],
                       plugins=[recorder])
    assert int(code) == 1  # a test failed
    result = read_json(ctx.partial_path)["result"]  # as saved after the last test
    assert result["counts"] == {"passed": 1, "failed": 1, "skipped": 1, "xfailed": 1}
    assert result["collected"] == 4
    (failure,) = result["failures"]
    assert failure["nodeid"].endswith("test_fails") and "one is not two" in failure["message"]
    assert result["skip_reasons"] == {"no device here": 1}
    assert result["summary"].startswith("1 passed, 1 failed, 1 skipped, 1 xfailed")


def test_the_gpu_test_files_are_those_that_mark_tests_gpu():
    from bench.gpu_sections.gpu_tests import gpu_test_files

    files = gpu_test_files()
    assert "tests/test_gpu.py" in files and "tests/test_cuda_kernels.py" in files
    assert "tests/test_gpu_check.py" not in files and "tests/test_report.py" not in files


# ---- the MNIST section's budget, on NumPy --------------------------------------------------

def test_the_mnist_run_stops_when_its_projection_passes_the_budget(monkeypatch, tmp_path):
    from bench.gpu_sections import mnist
    from gpubp.datasets import load_digits

    monkeypatch.setattr(mnist, "SIZES", (64, 8, 10))
    monkeypatch.setitem(mnist.CONFIG, "epochs", 4)
    monkeypatch.setattr(mnist, "BACKEND", "numpy")
    data = load_digits()
    ctx = make_context(tmp_path, "mnist", timeout=60)
    ctx.result["runs"] = []
    run = mnist.train(ctx, data, "fp32", deadline=time.monotonic() - 1)
    assert not run["completed"] and run["epochs_done"] == 1 and "past the budget" in run["stopped"]
    run = mnist.train(ctx, data, "fp32", deadline=time.monotonic() + 60)
    assert run["completed"] and run["epochs_done"] == 4 and run["fit_wall_s"] > 0
    assert 0 <= run["final_test_error"] < 0.9 and len(run["epoch_s"]) == 4


# ---- targets, summaries and the report, on made-up results -----------------------------------

def made_up_report() -> dict:
    def cell(ms, **extra):
        return {"ms": ms, "steps_per_repeat": 100, "repeats": 5, **extra}

    rows = []
    for net, sizes in (("784-800-10", [784, 800, 10]), ("784-1024-1024-10", [784, 1024, 1024, 10])):
        for batch, graph, eager, torch_eager, torch_graph in (
                (256, 0.03, 0.12, 0.6, 0.05), (4096, 0.1, 0.15, 0.12, 0.11)):
            row = {"net": net, "sizes": sizes, "batch": batch, "precision": "fp32",
                   "gpubp_graph": cell(graph, pool_constant_from_step_2=True,
                                       graphs_active=True,
                                       pool_used_bytes_steps_1_to_5=[9, 8, 8, 8, 8]),
                   "gpubp_eager": cell(eager, pool_constant_from_step_2=True,
                                       kernel_launches_per_step=2 * len(sizes) - 1,
                                       expected_kernel_launches=2 * len(sizes) - 1,
                                       gemms_per_step=3 * len(sizes) - 4,
                                       expected_gemms=3 * len(sizes) - 4),
                   "torch_eager": cell(torch_eager), "torch_graph": cell(torch_graph),
                   "torch_compile": {"skipped": "torch.compile failed: no compiler"}}
            row["speedup"] = step_section.speedups(row)
            rows.append(row)
    kernels = {"copy_bandwidth_GBps": 4000.0, "copy_bandwidth_source": "environment section",
               "softmax_xent": [{"B": 4096, "C": 32768, "path": "row", "fused_s": 3e-4,
                                 "fused_GBps": 3600.0, "bias_GBps": 2500.0, "torch_s": 1e-3,
                                 "speedup_vs_torch": 3.3},
                                {"B": 1024, "C": 262144, "error": "CUDARuntimeError: boom"}],
               "sigmoid": [{"B": 4096, "N": 8192, "bias_sigmoid_GBps": 3500.0,
                            "sigmoid_backward_GBps": 3400.0,
                            "sigmoid_backward_dbias_GBps": 3000.0},
                           {"B": 65536, "N": 1024, "bias_sigmoid_GBps": 3500.0,
                            "sigmoid_backward_GBps": 3400.0,
                            "sigmoid_backward_dbias_GBps": 3300.0}]}
    from bench.kernel_times import add_fractions

    add_fractions(kernels, 4000.0)
    sections = {
        "environment": {"status": "ok", "seconds": 9.0, "timeout_s": 90, "result": {
            "device": {"name": "NVIDIA H200", "multiprocessors": 132, "cupy": "14.2.0",
                       "cuda_runtime": "13.2", "cuda_driver": "13.0", "torch": "2.11.0"},
            "copy_bandwidth_GBps": 4000.0, "copy": {"GBps": 4000.0, "best_GBps": 4100.0},
            "gemm": {"fp32": {"n": 8192, "TFLOPs": 51.0}, "tf32": {"n": 8192, "TFLOPs": 380.0}}}},
        "tests": {"status": "ok", "seconds": 80.0, "timeout_s": 150, "result": {
            "counts": {"passed": 120, "failed": 1}, "summary": "120 passed, 1 failed in 79.0s",
            "failures": [{"nodeid": "tests/test_gpu.py::test_x", "when": "call",
                          "message": "AssertionError: off by 1e-3"}]}},
        "step": {"status": "timeout", "seconds": 170.0, "timeout_s": 170,
                 "reason": "killed at its 170 s timeout",
                 "result": {"config": {"optimizer": "SGD lr=0.01 momentum=0.9", "repeats": 5},
                            "rows": rows, "profile": [{"batch": 256, "backend": "cupy",
                                                       "step_ms": 0.1, "loss_ms": 0.01}]}},
        "kernels": {"status": "ok", "seconds": 20.0, "timeout_s": 60, "result": kernels},
        "mnist": {"status": "ok", "seconds": 30.0, "timeout_s": 90, "result": {
            "config": {"epochs": 60, "batch_size": 64}, "accuracy_tolerance": 0.002,
            "numpy_reference": {"final_test_error": 0.017, "source": "x.json"},
            "runs": [{"precision": "fp32", "completed": True, "fit_wall_s": 12.5,
                      "first_epoch_s": 0.9, "median_epoch_s": 0.19, "epochs_done": 60,
                      "final_test_error": 0.0172}]}},
        "data_parallel": {"status": "skipped", "seconds": 2.0, "timeout_s": 60,
                          "reason": "mpiexec is not on PATH",
                          "result": {"mpi": {"why_not": "mpiexec is not on PATH"}}},
    }
    data = {"format": gpu_check.FORMAT, "date": "2026-12-03T10:00:00+00:00",
            "command": "PYTHONPATH=. python bench/gpu_check.py --out $OUT", "budget_s": 480,
            "elapsed_s": 311.0, "finished": True, "device": sections["environment"]["result"][
                "device"], "copy_bandwidth_GBps": 4000.0, "sections": sections}
    data["targets"] = targets.evaluate(sections)
    return data


def test_targets_pass_fail_and_not_measured_with_their_figures():
    by_name = {t["name"]: t for t in made_up_report()["targets"]}
    got = {name.split(":")[0]: t["pass"] for name, t in by_name.items()}
    assert got["784-800-10 B=256"] is True  # both B=256 targets: 20× eager, 1.67× graph
    assert by_name["784-800-10 B=4096: gpubp-graph ≥ 1.5× PyTorch eager"]["pass"] is False
    assert by_name["784-800-10 B=4096: gpubp-graph ≥ 1.5× PyTorch eager"]["value"] == \
        pytest.approx(1.2)  # made-up 0.12 / 0.1
    assert got["fused CE B=4096, C=32768"] is True  # 90%
    assert got["sigmoid backward with dbias"] is False  # 75% at 4096×8192
    assert got["MNIST 784-800-10, 60 epochs on the GPU"] is True
    assert got["MNIST 784-800-10, 60 epochs"] is True  # 1.72% vs 1.70%, within 0.2 points
    assert got["GPU tests (pytest -m gpu) pass"] is False
    assert got["data-parallel"] is None and "mpiexec" in by_name[
        "data-parallel: 2 ranks on one GPU equal 1 rank"]["why"]
    assert got["kernel launches per eager step = 2L + 1, GEMMs = 3L − 1"] is True
    assert got["CuPy pool's used bytes constant from step 2 (every gpubp run)"] is True
    assert all(isinstance(t.get("measured") or t.get("why"), str) for t in by_name.values())


def test_the_summaries_and_the_table_read_made_up_results(capsys):
    data = made_up_report()
    gpu_check.print_table(data, SECTIONS, Path("out/gpu-check.json"))
    text = capsys.readouterr().out
    assert "NVIDIA H200" in text and "copy 4,000 GB/s" in text
    assert "120 passed, 1 failed" in text and "784-800-10 B=256: gpubp graph 0.030" in text
    assert "CE 4096×32768 3,600 GB/s (90% of copy)" in text and "fp32: 12.5 s" in text
    assert "FAIL  sigmoid backward with dbias" in text and "PASS  fused CE" in text
    assert text.rstrip().splitlines()[-1].startswith("elapsed 311 s of a 480 s budget")


def test_the_report_renders_the_current_format_and_finds_its_kind(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "2026-12-03-h200-gpu-check.json").write_text(json.dumps(made_up_report()))
    found = report.load_results(results)
    r = found["2026-12-03-h200-gpu-check.json"]
    assert r.kind == "gpu-check"
    text = report.render_file(r)
    assert "NVIDIA H200 (132 SMs" in text  # the header's machine line, from "device"
    assert "| step | timeout | 170 | 170 | killed at its 170 s timeout |" in text
    assert "| 784-800-10 | 256 | 0.030 | 0.120 | 0.600 (20.00×) | 0.050 (1.67×) | skipped |" \
        in text
    assert "| sigmoid backward with dbias: ≥ 80% of copy bandwidth | target | **FAIL** |" in text
    assert "| 4,096 | 32,768 | row | 3,600 | 90.00% |" in text
    assert "CUDARuntimeError: boom" in text and "`tests/test_gpu.py::test_x`" in text
    assert "| fp32 | yes | 12.5 |" in text and "Not readable" not in text
    # A dry run's fake sections: shown by their keys.
    dry = {"format": gpu_check.FORMAT, "device": {}, "copy_bandwidth_GBps": None,
           "sections": {"ok": {"status": "ok", "result": {"figure": 42.0}}}, "targets": []}
    (results / "dry-gpu-check.json").write_text(json.dumps(dry))
    text = report.render_file(report.load_results(results)["dry-gpu-check.json"])
    assert "| `figure` | 42 |" in text


def test_json_is_strict_and_written_whole(tmp_path):
    import numpy as np

    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": np.float32(1.5), "b": float("nan"), "c": (1, np.int64(2)),
                             "d": {3: np.bool_(True)}, "e": float("inf")})
    assert json.loads(path.read_text(), parse_constant=pytest.fail) == {
        "a": 1.5, "b": "nan", "c": [1, 2], "d": {"3": True}, "e": "inf"}
    assert not list(tmp_path.glob(".*.tmp")) and jsonable(object()).startswith("<object")

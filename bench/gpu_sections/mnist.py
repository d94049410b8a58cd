"""Section mnist: 784-800-10 on MNIST for 60 epochs through ``gpubp.Trainer`` on CuPy with
CUDA graphs, bench.mnist_800's configuration (B=64, SGD lr 0.1, momentum 0.9, weight decay
2e-5, cosine, seed 0, float32): the wall time of ``fit`` (graph capture and kernel loading
included; no evaluation inside it), the final test error against the NumPy run's of the
same configuration (bench/results/*cpu-mnist-800.json), then the same in TF32 if the
budget allows. After each epoch the remaining epochs are projected from the measured
epoch times; a run that cannot finish in the budget stops there and says so."""

from __future__ import annotations

import json
import statistics
import time
import warnings
from pathlib import Path

from bench.gpu_sections import SectionSkipped, error_entry, require_cupy

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"epochs": 60, "lr": 0.1, "momentum": 0.9, "batch_size": 64, "schedule": "cosine",
          "seed": 0, "dtype": "float32", "weight_decay": 2e-5, "standardize": False}
SIZES = (784, 800, 10)
BACKEND = "cupy"  # tests run the budget logic on "numpy"
# Equal accuracy across devices, within rounding: float32 sums in another order move
# the final test error by a few images of 10,000.
ACCURACY_TOLERANCE = 0.002
FALLBACK_NUMPY_ERROR = 0.0170  # 2026-11-28-cpu-mnist-800.json, should the file be gone


class OutOfBudget(Exception):
    """The remaining epochs, at the measured pace, would not fit in the budget."""


def numpy_reference(results: Path = REPO / "bench" / "results") -> dict:
    """The final test error of a NumPy bench.mnist_800 run with CONFIG."""
    for path in sorted(results.glob("*mnist-800*.json"), reverse=True):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        runs = data if isinstance(data, list) else data.get("runs") or [data]
        for run in runs:
            if isinstance(run, dict) and run.get("backend") == "numpy" and \
                    run.get("config") == CONFIG and run.get("final_test_error") is not None:
                return {"final_test_error": run["final_test_error"], "source": path.name}
    return {"final_test_error": FALLBACK_NUMPY_ERROR,
            "source": "2026-11-28-cpu-mnist-800.json (figure kept in bench/gpu_sections/"
                      "mnist.py; the file was not found)"}


def train(ctx, data, precision: str, deadline: float) -> dict:
    """One fit; stops early (recording why) if the projected end passes ``deadline``."""
    import gpubp
    from gpubp.schedules import make_schedule

    run = {"precision": precision, "epochs": CONFIG["epochs"], "completed": False,
           "epoch_s": []}
    ctx.result["runs"].append(run)
    net = gpubp.MLP(SIZES, backend=BACKEND, dtype=CONFIG["dtype"], seed=CONFIG["seed"])
    optimizer = gpubp.SGD(CONFIG["lr"], momentum=CONFIG["momentum"],
                          weight_decay=CONFIG["weight_decay"])
    started = time.perf_counter()

    def on_epoch(record):
        run["epoch_s"].append(record["wall_time"])
        done = len(run["epoch_s"])
        run["epochs_done"] = done
        pace = statistics.median(run["epoch_s"][1:] or run["epoch_s"])
        left = CONFIG["epochs"] - done
        run["projected_wall_s"] = time.perf_counter() - started + left * pace
        ctx.save(throttle_s=2.0)
        if left and time.monotonic() + left * pace > deadline:
            raise OutOfBudget(f"{left} epochs at {pace:.2f} s would end past the budget")

    trainer = gpubp.Trainer(net, optimizer, batch_size=CONFIG["batch_size"],
                            epochs=CONFIG["epochs"], seed=CONFIG["seed"], progress=False,
                            on_epoch=on_epoch, schedule=make_schedule(CONFIG["schedule"]),
                            precision=precision, cuda_graphs=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(data.X_train, data.y_train)
            run["completed"] = True
        except OutOfBudget as why:
            run["stopped"] = str(why)
        run["fit_wall_s"] = time.perf_counter() - started
    run["warnings"] = [str(w.message)[:300] for w in caught]
    run["graphs_turned_off"] = any("CUDA graphs turned off" in w for w in run["warnings"])
    times = run["epoch_s"]
    if times:
        run["first_epoch_s"] = times[0]
        run["median_epoch_s"] = statistics.median(times[1:] or times)
        run["train_seconds_total"] = sum(times)
    evaluated = time.perf_counter()
    run["final_test_error"] = 1.0 - net.evaluate(data.X_test, data.y_test)["accuracy"]
    run["evaluate_s"] = time.perf_counter() - evaluated
    ctx.save()
    return run


def run(ctx) -> None:
    require_cupy()
    from gpubp.datasets import load_mnist
    from gpubp.errors import DataError

    data_dir = ctx.data_dir or ".mnist"
    try:
        loaded = time.perf_counter()
        data = load_mnist(data_dir, download=False)
    except DataError as e:
        raise SectionSkipped(f"MNIST not found or not usable under {data_dir!r} "
                             f"(--data-dir, $GPUBP_TEST_MNIST): {str(e)[:300]}") from None
    result = ctx.result
    result.update(config=CONFIG, sizes=list(SIZES), data_dir=str(data_dir),
                  load_s=time.perf_counter() - loaded, numpy_reference=numpy_reference(),
                  accuracy_tolerance=ACCURACY_TOLERANCE, runs=[])
    ctx.save()
    deadline = time.monotonic() + ctx.left() - 3  # the evaluation after the fit
    try:
        fp32 = train(ctx, data, "fp32", deadline)
    except Exception as e:
        if result["runs"]:  # the run's own record says where it failed
            result["runs"][-1].update(error_entry(e))
        raise
    ctx.log(f"fp32: fit {fp32['fit_wall_s']:.1f} s, test error "
            f"{100 * fp32['final_test_error']:.2f}%")
    need = fp32["fit_wall_s"] * 1.1 + 5
    if not fp32["completed"] or ctx.left() < need:
        result["tf32_skipped"] = (f"budget: {ctx.left():.0f} s left, a run needs about "
                                  f"{need:.0f} s" if fp32["completed"] else
                                  "the fp32 run did not finish")
        ctx.save()
        return
    tf32 = train(ctx, data, "tf32", time.monotonic() + ctx.left() - 3)
    ctx.log(f"tf32: fit {tf32['fit_wall_s']:.1f} s, test error "
            f"{100 * tf32['final_test_error']:.2f}%")


def summary(entry: dict) -> str:
    r = entry.get("result") or {}
    parts = []
    for run in r.get("runs") or []:
        if run.get("fit_wall_s") is None:
            continue
        done = "" if run.get("completed") else f" (stopped at epoch {run.get('epochs_done')})"
        error = run.get("final_test_error")
        parts.append(f"{run['precision']}: {run['fit_wall_s']:.1f} s{done}, test error "
                     + (f"{100 * error:.2f}%" if error is not None else "–"))
    reference = (r.get("numpy_reference") or {}).get("final_test_error")
    if reference is not None:
        parts.append(f"NumPy {100 * reference:.2f}%")
    return "; ".join(parts)

"""Section sklearn_fit: ``gpubp.MLPClassifier(backend="cupy")`` fitting MNIST with
bench.sklearn_fit's configuration (60,000 rows, hidden_layer_sizes=(800,), batch 200,
logistic, sgd, float32, 10 epochs), timed whole, with its test accuracy; then
scikit-learn's own MLPClassifier on the host's CPUs with the same parameters, side by
side, where scikit-learn is installed (the device images lent so far have none: then the
section records the newest CPU figure from bench/results/*-sklearn-fit.json, marked as
measured elsewhere). Fewer epochs when the budget is short, the same for both."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.gpu_sections import SectionSkipped, require_cupy

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 10


def cpu_reference(results: Path = REPO / "bench" / "results") -> dict | None:
    """The newest CPU bench.sklearn_fit result: scikit-learn's and gpubp's fit times."""
    for path in sorted(results.glob("*-cpu-sklearn-fit.json"), reverse=True):
        try:
            data = json.loads(path.read_text())
            return {"source": path.name, "cpu": data.get("cpu"), "config": data.get("config"),
                    "best_fit_s": data.get("best_fit_s")}
        except (OSError, ValueError):
            continue
    return None


def run(ctx) -> None:
    require_cupy()
    import numpy as np

    from bench.sklearn_fit import fit_once, fit_params
    from gpubp.datasets import load_mnist
    from gpubp.errors import DataError

    data_dir = ctx.data_dir or ".mnist"
    try:
        data = load_mnist(data_dir, download=False)
    except DataError as e:
        raise SectionSkipped(f"MNIST not found or not usable under {data_dir!r}: "
                             f"{str(e)[:300]}") from None
    X, X_test = data.X_train.astype(np.float32), data.X_test.astype(np.float32)
    result = ctx.result
    result.update(cpu_reference=cpu_reference(), runs=[])

    # One epoch first (CUDA context, kernel compilation), then the full fit if it fits.
    warm = fit_once("gpubp", X, data.y_train, X_test, data.y_test, fit_params(1), "cupy")
    result["warm_up"] = warm
    ctx.save()
    epochs = EPOCHS if warm["fit_s"] * EPOCHS * 1.5 < ctx.left() else max(
        1, int(ctx.left() / (3 * warm["fit_s"])))
    result["epochs"] = epochs
    result["runs"].append(fit_once("gpubp", X, data.y_train, X_test, data.y_test,
                                   fit_params(epochs), "cupy"))
    ctx.save()
    try:
        import sklearn  # noqa: F401
    except ImportError:
        result["sklearn"] = "not installed on this machine: see cpu_reference"
        ctx.save()
        return
    started = time.monotonic()
    one = fit_once("sklearn", X[:6000], data.y_train[:6000], X_test, data.y_test, fit_params(1),
                   "numpy")
    projected = (time.monotonic() - started) * 10 * epochs * 1.2
    if projected > ctx.left():
        result["sklearn"] = f"budget: a fit would take about {projected:.0f} s"
        result["sklearn_probe"] = one
        ctx.save()
        return
    result["runs"].append(fit_once("sklearn", X, data.y_train, X_test, data.y_test,
                                   fit_params(epochs), "numpy"))
    times = {r["peer"]: r["fit_s"] for r in result["runs"]}
    result["sklearn_over_gpubp"] = times["sklearn"] / times["gpubp"]
    ctx.save()


def summary(entry: dict) -> str:
    r = entry.get("result") or {}
    parts = [f"{run['peer']} {run['fit_s']:.1f} s ({100 * run['test_accuracy']:.2f}%)"
             for run in r.get("runs") or []]
    if r.get("sklearn_over_gpubp"):
        parts.append(f"scikit-learn ÷ gpubp {r['sklearn_over_gpubp']:.1f}×")
    elif r.get("cpu_reference"):
        best = r["cpu_reference"].get("best_fit_s") or {}
        parts.append(f"CPU elsewhere: scikit-learn {best.get('sklearn', float('nan')):.1f} s "
                     f"({r['cpu_reference'].get('cpu')})")
    return "; ".join(parts) or entry.get("reason", "")

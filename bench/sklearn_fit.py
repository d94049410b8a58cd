"""gpubp.MLPClassifier against scikit-learn's MLPClassifier, side by side: ``fit`` on
MNIST's 60,000 training rows, hidden_layer_sizes=(800,), batch_size=200, solver="sgd",
activation="logistic", 10 epochs.

Both get the same parameters and random_state, so they start from the same weights,
draw the same shuffles and train along the same path (tol=0 and n_iter_no_change=inf
make every epoch run); each fit is timed whole, one after the other in this process,
peers alternating across repeats. The data are float32, which both keep (scikit-learn
computes in the input's dtype); ``--dtype float64`` times float64 instead.

    python -m bench.sklearn_fit                      # ~3 min on 2 cores
    python -m bench.sklearn_fit --backend cupy       # on a GPU
    python -m bench.sklearn_fit --epochs 2 --rows 6000 --out /tmp/quick.json

Writes bench/results/<date>-<cpu|gpu>-sklearn-fit.json: each fit's time, test accuracy and
loss curve, the ratio scikit-learn time ÷ gpubp time, versions, the CPU and BLAS.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import gpubp
from bench.machine import cpu_model
from gpubp import blas
from gpubp.backend import cuda_versions
from gpubp.datasets import load_mnist

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def fit_params(epochs: int, hidden: int = 800, batch_size: int = 200, lr: float = 0.1) -> dict:
    """The estimators' parameters, the same for both: every epoch runs (tol=0, no
    early stop), the same random_state."""
    return dict(hidden_layer_sizes=(hidden,), activation="logistic", solver="sgd",
                batch_size=batch_size, learning_rate_init=lr, max_iter=epochs, tol=0.0,
                n_iter_no_change=np.inf, random_state=0)


def fit_once(peer: str, X, y, X_test, y_test, params: dict, backend: str) -> dict:
    """Fit one estimator; returns its time, accuracy and loss curve."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SklearnMLP

    if peer == "sklearn":
        est = SklearnMLP(**params)
    else:
        est = gpubp.MLPClassifier(**params, backend=backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        started = time.perf_counter()
        est.fit(X, y)
        seconds = time.perf_counter() - started
    return {"peer": peer, "fit_s": seconds, "epochs": est.n_iter_,
            "samples_per_s": est.n_iter_ * len(X) / seconds,
            "test_accuracy": float(est.score(X_test, y_test)),
            "loss_curve": [float(v) for v in est.loss_curve_]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(SHARED_MNIST) if SHARED_MNIST.is_dir()
                        else None, help="where MNIST's files are (default: ../shared/data/mnist)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rows", type=int, default=60000, help="training rows used")
    parser.add_argument("--hidden", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.1, help="learning_rate_init for both")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--backend", default="numpy", help="gpubp's backend")
    parser.add_argument("--repeats", type=int, default=1, help="fits per peer, alternating")
    parser.add_argument("--peers", default="sklearn,gpubp")
    parser.add_argument("--out", default=None, help="the JSON file (default under bench/results)")
    args = parser.parse_args(argv)

    data = load_mnist(args.data_dir, download=False)
    X = data.X_train[:args.rows].astype(args.dtype)
    y, X_test = data.y_train[:args.rows], data.X_test.astype(args.dtype)
    params = fit_params(args.epochs, args.hidden, args.batch_size, args.lr)
    peers = args.peers.split(",")
    runs = []
    for repeat in range(args.repeats):
        for peer in (peers if repeat % 2 == 0 else peers[::-1]):
            run = fit_once(peer, X, y, X_test, data.y_test, params, args.backend)
            runs.append(run)
            print(f"{peer:>8}: fit {run['fit_s']:.1f} s ({run['samples_per_s']:,.0f} samples/s), "
                  f"{run['epochs']} epochs, test accuracy {100 * run['test_accuracy']:.2f}%, "
                  f"final loss {run['loss_curve'][-1]:.4f}", flush=True)
    best = {p: min(r["fit_s"] for r in runs if r["peer"] == p) for p in peers}
    ratio = best["sklearn"] / best["gpubp"] if {"sklearn", "gpubp"} <= set(best) else None
    if ratio is not None:
        print(f"scikit-learn time / gpubp time: {ratio:.2f}x")

    import sklearn

    result = {
        "benchmark": "MLPClassifier.fit, MNIST, gpubp vs scikit-learn",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.sklearn_fit", *(sys.argv[1:] if argv is None
                                                               else argv)]),
        "cpu": cpu_model(), "machine": platform.node(), "python": platform.python_version(),
        "numpy": np.__version__, "sklearn": sklearn.__version__, "gpubp": gpubp.__version__,
        "gpubp_blas": blas.name(), "blas_threads": blas.threads(), **cuda_versions(),
        "config": {"rows": len(X), "epochs": args.epochs, "dtype": args.dtype,
                   "backend": args.backend, **{k: (str(v) if v == np.inf else v)
                                               for k, v in params.items()}},
        "runs": runs, "best_fit_s": best, "sklearn_over_gpubp": ratio,
    }
    device = "gpu" if args.backend == "cupy" else "cpu"
    out = Path(args.out) if args.out else RESULTS / (
        f"{datetime.date.today().isoformat()}-{device}-sklearn-fit.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The seed's equations written the obvious way in NumPy (bench.naive_numpy)."""

from __future__ import annotations

import time


def check() -> dict:
    import numpy as np

    return {"numpy": np.__version__}


def run(X, y, point) -> dict:
    import numpy as np

    from bench.naive_numpy import init_params, train_epoch

    weights, biases = init_params(point["sizes"], seed=point["seed"])
    rng = np.random.default_rng(point["seed"])
    for _ in range(point["warmup"]):
        train_epoch(weights, biases, X, y, point["batch_size"], point["lr"], rng)
    epoch_s = []
    for _ in range(point["repeats"]):
        started = time.perf_counter()
        loss = train_epoch(weights, biases, X, y, point["batch_size"], point["lr"], rng)
        epoch_s.append(time.perf_counter() - started)
    return {"epoch_s": epoch_s, "final_loss": loss, "device_peak_bytes": None}

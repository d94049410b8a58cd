"""The seed's equations written the obvious way in NumPy (bench.naive_numpy)."""

from __future__ import annotations

from bench.peers import time_epochs


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
    epoch_s, loss = time_epochs(
        lambda: train_epoch(weights, biases, X, y, point["batch_size"], point["lr"], rng),
        point["repeats"])
    return {"epoch_s": epoch_s, "final_loss": loss, "device_peak_bytes": None}

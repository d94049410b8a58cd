"""gpubp itself, timed only through its public API: MLP, SGD, Trainer.fit and its History."""

from __future__ import annotations

from bench.peers import PeerUnavailable


def check(backend: str, library: str | None = None, precision: str = "fp32") -> dict:
    import numpy as np

    import gpubp
    from gpubp import blas
    from gpubp.backend import cuda_versions, get_backend
    from gpubp.errors import BackendError

    try:
        found = get_backend(backend)
        if precision != "fp32":
            blas.check_precision(precision)
    except BackendError as e:
        raise PeerUnavailable(str(e)) from None
    if library is not None and library not in blas.installed():
        raise PeerUnavailable(f"{library} is not installed (pip install 'gpubp[{library}]')")
    versions = {"gpubp": gpubp.__version__, "numpy": np.__version__, "device": found.device_name}
    if found.is_gpu:
        versions.update(cuda_versions())
    else:
        versions["blas_installed"] = blas.installed()
    return versions


def run(X, y, point, backend: str, library: str | None = None,
        precision: str = "fp32") -> dict:
    """Warm-up fit, then one fit of ``repeats`` epochs; each epoch's time is History's
    ``wall_time`` (the epoch loop, ended by reading the loss, so the device is synchronized).

    On NumPy the result's ``blas`` says which GEMM library ran and why (gpubp.blas.report:
    forced by $GPUBP_BLAS, read from the choice cache, or measured in the warm-up)."""
    import gpubp
    from gpubp import blas

    net = gpubp.MLP(point["sizes"], backend=backend, dtype="float32", seed=point["seed"])
    pool = net.backend.xp.get_default_memory_pool() if net.backend.is_gpu else None
    pool_used_bytes = []  # after each timed epoch: constant once the pool is warm

    def fit(epochs, on_epoch=None):
        trainer = gpubp.Trainer(net, gpubp.SGD(point["lr"]), batch_size=point["batch_size"],
                                epochs=epochs, seed=point["seed"], progress=False,
                                on_epoch=on_epoch, precision=precision)
        return trainer.fit(X, y)

    def record_pool(record):
        if pool is not None:
            pool_used_bytes.append(pool.used_bytes())

    if point["warmup"]:
        fit(point["warmup"])
    history = fit(point["repeats"], on_epoch=record_pool)
    result = {"epoch_s": history["wall_time"], "final_loss": history["train_loss"][-1],
              "device_peak_bytes": None}
    if pool is not None:
        # CuPy's pool keeps the blocks it was given, so its total is its high-water mark.
        result["device_peak_bytes"] = pool.total_bytes()
        result["pool_used_bytes_per_epoch"] = pool_used_bytes
    else:
        result["blas"] = {**blas.report(), "precision": precision}
    return result

"""Benchmark: train 784-800-10 (sigmoid, softmax, cross-entropy, SGD) on real MNIST.

The reference is the MNIST table's "2-layer NN, 800 HU, Cross-Entropy Loss" row: 1.6%
test error (Simard, Steinkraus & Platt, 2003). Reports the test error after every epoch,
the first epoch at or under 1.6%, and the wall time. The defaults are the best of the
sweep in bench/results/2026-11-28-h200-mnist-800-sweep.json.

    python -m bench.mnist_800 --data-dir ../shared/data/mnist --backend numpy --out r.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time

import numpy as np

import gpubp
from gpubp.backend import cuda_versions
from gpubp.datasets import StandardScaler, load_mnist

REFERENCE_ERROR = 0.016


def run(data_dir=None, backend=None, epochs=60, lr=0.1, momentum=0.9, batch_size=64,
        schedule="cosine", seed=0, dtype="float32", weight_decay=2e-5, standardize=False,
        quiet=False) -> dict:
    data = load_mnist(data_dir)
    if standardize:  # per-pixel mean 0, std 1, fitted on the training images
        scaler = StandardScaler().fit(data.X_train)
        data.X_train, data.X_test = scaler.transform(data.X_train), scaler.transform(data.X_test)
    net = gpubp.MLP((784, 800, 10), backend=backend, dtype=dtype, seed=seed)
    test_errors = []

    def on_epoch(record):
        test_errors.append(1.0 - net.evaluate(data.X_test, data.y_test)["accuracy"])
        if not quiet:
            print(f"epoch {record['epoch']:>3}  loss {record['train_loss']:.4f}  "
                  f"test error {100 * test_errors[-1]:.2f}%  {record['wall_time']:.2f}s  "
                  f"{record['samples_per_s']:,.0f} samples/s", flush=True)

    optimizer = gpubp.SGD(lr, momentum=momentum, weight_decay=weight_decay)
    trainer = gpubp.Trainer(net, optimizer, batch_size=batch_size, epochs=epochs, seed=seed,
                            progress=False, on_epoch=on_epoch,
                            schedule=gpubp.schedules.make_schedule(schedule))
    history = trainer.fit(data.X_train, data.y_train)
    train_times = history["wall_time"]
    reached = next((i + 1 for i, e in enumerate(test_errors) if e <= REFERENCE_ERROR), None)
    return {
        "benchmark": "mnist 784-800-10 sigmoid/softmax/cross-entropy, SGD",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.node(), "processor": platform.processor() or platform.machine(),
        "backend": net.backend.name, "device": net.backend.device_name,
        "numpy": np.__version__, **cuda_versions(),
        "config": {"epochs": epochs, "lr": lr, "momentum": momentum, "batch_size": batch_size,
                   "schedule": schedule, "seed": seed, "dtype": dtype,
                   "weight_decay": weight_decay, "standardize": standardize},
        "reference_test_error": REFERENCE_ERROR,
        "final_test_error": test_errors[-1],
        "best_test_error": min(test_errors),
        "best_epoch": int(np.argmin(test_errors)) + 1,
        "first_epoch_at_reference": reached,
        "train_seconds_to_reference": sum(train_times[:reached]) if reached else None,
        "train_seconds_total": sum(train_times),
        "median_epoch_seconds": float(np.median(train_times)),
        "median_samples_per_s": float(np.median(history["samples_per_s"])),
        "test_error_per_epoch": test_errors,
        "train_loss_per_epoch": history["train_loss"],
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--backend", default=None)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--weight-decay", type=float, default=2e-5)
    p.add_argument("--standardize", action="store_true", help="per-pixel mean 0, std 1")
    p.add_argument("--out", help="write the result as JSON here")
    args = p.parse_args(argv)
    started = time.perf_counter()
    result = run(args.data_dir, args.backend, args.epochs, args.lr, args.momentum,
                 args.batch_size, args.schedule, args.seed, args.dtype, args.weight_decay,
                 args.standardize)
    result["wall_seconds_including_evaluation"] = time.perf_counter() - started
    summary = {k: v for k, v in result.items() if not k.endswith("_per_epoch")}
    print(json.dumps(summary, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

"""Data-parallel training on the CPU: samples/s of ``Trainer(distributed=True)`` with N = 1
and 2 ranks under ``mpiexec``, for 784-800-10 and 784-1024-1024-10 on MNIST rows.

Each run is a fresh ``mpiexec -n N`` job (N = 1 too, so both pay the same start-up); the
machine's cores are shared out, cores // N BLAS threads a rank. Global batch ``--batch``,
float32, plain SGD, ``--epochs`` epochs of which the first is warm-up; the figure is the
median of the others' samples/s (History's, timed on rank 0 over the global batch).

    python -m bench.dp_scaling --out bench/results/<date>-amd-dp-scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.machine import cpu_model

HERE = Path(__file__).resolve().parents[1]
SHARED_MNIST = HERE.parent / "shared" / "data" / "mnist"
NETWORKS = {"784-800-10": [800], "784-1024-1024-10": [1024, 1024]}

RANK = """
import json, sys
import gpubp
from gpubp.datasets import load_mnist
hidden, rows, batch, epochs, data_dir = json.loads(sys.argv[1])
data = load_mnist(data_dir, download=False)
net = gpubp.MLP([784, *hidden, 10], backend="numpy", seed=0)
trainer = gpubp.Trainer(net, gpubp.SGD(0.05), batch_size=batch, epochs=epochs, seed=0,
                        progress=False, distributed=True)
history = trainer.fit(data.X_train[:rows], data.y_train[:rows])
if trainer.comm.is_root:
    print(json.dumps({"size": trainer.comm.size, "samples_per_s": history["samples_per_s"],
                      "train_loss": history["train_loss"]}))
"""


def mpiexec() -> list[str]:
    found = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return [found, *root, "--oversubscribe"]


def run(n: int, hidden, rows: int, batch: int, epochs: int, data_dir: str) -> dict:
    threads = str(max(1, (os.cpu_count() or 1) // n))
    environment = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": threads,
                   "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    environment = {k: v for k, v in environment.items()
                   if not k.startswith(("OMPI_COMM", "PMI", "PMIX_"))}
    done = subprocess.run([*mpiexec(), "-n", str(n), sys.executable, "-c", RANK,
                           json.dumps([hidden, rows, batch, epochs, data_dir])],
                          capture_output=True, text=True, env=environment, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"mpiexec -n {n} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["threads_per_rank"] = int(threads)
    result["median_samples_per_s"] = statistics.median(result["samples_per_s"][1:])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(SHARED_MNIST))
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    runs = []
    for name, hidden in NETWORKS.items():
        for n in map(int, args.ranks.split(",")):
            result = run(n, hidden, args.rows, args.batch, args.epochs, args.data_dir)
            runs.append({"network": name, "ranks": n, **result})
            print(f"{name:18} N={n}: {result['median_samples_per_s']:,.0f} samples/s "
                  f"({result['threads_per_rank']} threads a rank)", flush=True)
    out = {"benchmark": "dp_scaling", "cpu": cpu_model(), "cores": os.cpu_count(),
           "python": platform.python_version(),
           "command": " ".join(["python -m bench.dp_scaling", *(argv or sys.argv[1:])]),
           "rows": args.rows, "batch": args.batch, "epochs": args.epochs, "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

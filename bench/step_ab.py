"""Two checkouts of gpubp training the same network, taking turns: before and after a
change to the step, measured side by side on one machine.

    git worktree add /tmp/old <commit>
    python -m bench.step_ab --old /tmp/old --rounds 2 --out bench/results/<date>-step-ab.json

Each run is a fresh process: 784-800-10 (``--layers``), float32, ``--rows`` random rows,
4 epochs of which the last 3 are timed, for plain SGD and momentum 0.9, in ``--precision``
fp32 or bf16. The JSON keeps every epoch's samples/s and the medians per checkout and
optimizer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from bench.machine import cpu_model

HERE = Path(__file__).resolve().parents[1]

RUN = """
import json, sys, numpy as np, gpubp
rows, batch, momentum, layers = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
precision = sys.argv[5]
rng = np.random.default_rng(0)
X = rng.random((rows, 784), dtype=np.float32)
y = rng.integers(0, 10, rows)
net = gpubp.MLP([784, *map(int, layers.split(",")), 10], backend="numpy", seed=0)
trainer = gpubp.Trainer(net, gpubp.SGD(0.1, momentum=momentum), batch_size=batch, epochs=4,
                        seed=0, progress=False, precision=precision)
print(json.dumps([r["samples_per_s"] for r in trainer.fit(X, y)][1:]))
"""


def run(checkout: Path, rows: int, batch: int, momentum: float, layers: str,
        precision: str) -> list[float]:
    environment = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, "-c", RUN, str(rows), str(batch), str(momentum),
                           layers, precision], capture_output=True, text=True, env=environment,
                          cwd=checkout, timeout=900, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, type=Path, help="the other checkout")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--layers", default="800")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    checkouts = {"old": args.old.resolve(), "new": HERE}
    samples = {(c, m): [] for c in checkouts for m in (0.0, 0.9)}
    for _ in range(args.rounds):
        for momentum in (0.0, 0.9):
            for name, path in checkouts.items():  # turns, so that load falls on both
                samples[(name, momentum)] += run(path, args.rows, args.batch, momentum,
                                                 args.layers, args.precision)
    result = {
        "benchmark": "step_ab", "cpu": cpu_model(), "cores": os.cpu_count(),
        "python": platform.python_version(), "rows": args.rows, "batch": args.batch,
        "layers": args.layers, "rounds": args.rounds, "precision": args.precision,
        "checkouts": {k: str(v) for k, v in checkouts.items()},
        "runs": [{"checkout": c, "momentum": m, "samples_per_s": v,
                  "median": statistics.median(v)} for (c, m), v in samples.items()],
    }
    for momentum in (0.0, 0.9):
        old, new = (statistics.median(samples[(c, momentum)]) for c in ("old", "new"))
        result[f"ratio_momentum_{momentum}"] = new / old
        print(f"momentum {momentum}: old {old:,.0f}  new {new:,.0f}  samples/s  "
              f"(new/old {new / old:.2f}×)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

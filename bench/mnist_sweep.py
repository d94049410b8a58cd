"""Run several bench.mnist_800 configurations in parallel processes; one JSON out.

On a GPU whose step time is bound by the host (one Python thread launching kernels),
several processes share the device well. Configurations are JSON objects of
bench.mnist_800.run keyword arguments:

    python -m bench.mnist_sweep --data-dir .mnist --backend cupy --out sweep.json \\
        '{"batch_size": 32, "lr": 0.05}' '{"batch_size": 64, "lr": 0.1, "epochs": 100}'
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time


def _run(job):
    from bench.mnist_800 import run

    data_dir, backend, config = job
    started = time.perf_counter()
    try:
        result = run(data_dir, backend, quiet=True, **config)
    except Exception as e:  # keep the other configurations' results
        return {"config": config, "error": repr(e)}
    result["process_seconds"] = time.perf_counter() - started
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", type=json.loads)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--backend", default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    jobs = [(args.data_dir, args.backend, c) for c in args.configs]
    results = []
    with multiprocessing.get_context("spawn").Pool(args.workers or len(jobs)) as pool:
        for result in pool.imap_unordered(_run, jobs):
            results.append(result)
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
            c = result["config"]
            summary = result.get("error") or (
                f"best {100 * result['best_test_error']:.2f}% final "
                f"{100 * result['final_test_error']:.2f}% reach-1.6% epoch "
                f"{result['first_epoch_at_reference']} train {result['train_seconds_total']:.0f}s")
            print(json.dumps(c), summary, flush=True)


if __name__ == "__main__":
    main()

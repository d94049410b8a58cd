"""One data-parallel training run for the data_parallel section, alone (1 rank) or under
``mpiexec -n N`` (ranks sharing the one GPU): 64-128-10 on the bundled digits, float64 on
CuPy, 3 epochs, global batch 64. Rank 0 writes the final parameters and losses to the
.npz named by the spec, and prints one JSON line of facts.

    python -m bench.gpu_sections.dp_worker '{"out": "w.npz"}'
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

SIZES = (64, 128, 10)


def main(spec: dict) -> int:
    from gpubp.distributed import get_communicator

    comm = get_communicator("auto")
    device = comm.use_local_device()  # before the backend: each rank's own device
    import gpubp
    from gpubp.datasets import load_digits

    data = load_digits()
    net = gpubp.MLP(SIZES, backend="cupy", dtype="float64", seed=0)
    trainer = gpubp.Trainer(net, gpubp.SGD(0.1, momentum=0.9, weight_decay=1e-4),
                            batch_size=spec.get("batch", 64), epochs=spec.get("epochs", 3),
                            seed=1, progress=False, distributed=True)
    started = time.perf_counter()
    history = trainer.fit(data.X_train, data.y_train)
    seconds = time.perf_counter() - started
    facts = trainer.comm.describe(device=f"cuda:{device}")  # collective: every rank
    if trainer.comm.is_root:
        np.savez(spec["out"], *[gpubp.to_numpy(p) for p in net.parameters()],
                 train_loss=np.array(history["train_loss"]))
        print(json.dumps({"size": trainer.comm.size, "seconds": seconds,
                          "epoch_s": history["wall_time"], "describe": facts}), flush=True)
    return trainer.comm.finish(0)


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))

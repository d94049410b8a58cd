"""A small data-parallel training run for tests/test_data_parallel.py, under ``mpiexec -n N``
or alone: ``python data_parallel_worker.py '{"epochs": 4, "out": "w.npz", ...}'``."""

import json
import os
import signal
import sys

import numpy as np
from helpers import after_step, blobs

import gpubp
from gpubp.errors import TrainingInterrupted


def main(spec):
    X, y = blobs(90, seed=5, spread=2.0, dtype=np.float64, noise_first=True)
    net = gpubp.MLP([5, 7, 3], backend="numpy", dtype="float64", seed=0)
    optimizer = gpubp.SGD(0.3, momentum=0.5, weight_decay=1e-3)
    trainer = gpubp.Trainer(net, optimizer, batch_size=spec.get("batch", 10),
                            epochs=spec["epochs"], seed=3, progress=False,
                            schedule=gpubp.CosineLR(), distributed=True)
    comm = trainer.comm
    stop_at = spec.get("stop_at")
    if stop_at is not None and comm.rank == spec.get("stop_rank", 0) % comm.size:
        # SIGTERM on one rank alone (rank 0 by default), after a step
        after_step(optimizer, stop_at, lambda: os.kill(os.getpid(), signal.SIGTERM))
    kill_at = spec.get("kill_at")
    if kill_at is not None and comm.rank == comm.size - 1:  # the last rank dies, no cleanup
        after_step(optimizer, kill_at, lambda: os.kill(os.getpid(), signal.SIGKILL))
    checkpointing = {}
    if spec.get("dir"):
        checkpointing = {"checkpoint_dir": spec["dir"], "checkpoint_every": "4steps",
                         "resume": spec.get("resume", False)}
    try:
        history = trainer.fit(X, y, validation=0.2, **checkpointing)
    except TrainingInterrupted as e:
        print(f"rank {comm.rank}: interrupted at step {e.path}", flush=True)
        return 0
    if comm.is_root and spec.get("out"):
        np.savez(spec["out"], *[np.asarray(p) for p in net.parameters()],
                 train_loss=np.array(history["train_loss"]),
                 val_loss=np.array(history["val_loss"]),
                 val_accuracy=np.array(history["val_accuracy"]), size=comm.size)
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))

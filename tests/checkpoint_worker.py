"""A small checkpointed training run for tests/test_checkpoint.py, in-process or as a
subprocess that kills itself at a chosen moment.

As a script: ``python checkpoint_worker.py '{"dir": ..., "kill": ..., "at": K, ...}'``,
with ``kill`` one of
    "step"    SIGKILL right after optimizer step K (before any checkpoint of that step);
    "write"   SIGKILL halfway through writing the K-th checkpoint (half the bytes on disk);
    "rename"  SIGKILL after the K-th checkpoint is written and synced, before its rename;
    "sigint", "sigterm"  send that signal to itself after step K;
    None      no self-inflicted death (the parent may kill it from outside; "pace"
              then makes each epoch last at least that many seconds).
Exit code: 0 when training completes, the TrainingInterrupted code after a signal.
"""

import contextlib
import json
import os
import signal
import sys
import time

from helpers import after_step as _after_step  # test_checkpoint.py calls worker._after_step
from helpers import blobs  # test_checkpoint.py's worker.blobs(): its defaults are this run's

import gpubp
from gpubp import checkpoint
from gpubp.errors import TrainingInterrupted

ROWS, FEATURES, CLASSES, BATCH = 60, 5, 3, 8


def make(epochs, *, patience=None, schedule="cosine", backend="numpy"):
    """(net, trainer): a 5-7-3 network and its trainer, the same every time. Early
    stopping (``patience``) trains at a lower rate, so that it stops after a few epochs."""
    net = gpubp.MLP((FEATURES, 7, CLASSES), backend=backend, seed=0)
    lr = 0.5 if patience is None else 0.05
    trainer = gpubp.Trainer(net, gpubp.SGD(lr, momentum=0.9), batch_size=BATCH,
                            epochs=epochs, seed=3, schedule=gpubp.schedules.make_schedule(schedule),
                            patience=patience, progress=False)
    return net, trainer


def fit(trainer, directory=None, *, resume=False, every="4steps", patience=None, keep_last=3):
    """Fit on the blobs: 48 training rows (6 steps an epoch) and 12 validation rows.

    With ``patience``: 60 training rows (8 steps an epoch) and 30 validation rows of
    which two are mislabeled, so that validation loss falls, then rises.
    """
    X, y = blobs(ROWS, FEATURES, CLASSES)
    validation = 0.2
    if patience is not None:
        X, y = blobs(ROWS + 30, FEATURES, CLASSES)
        y[ROWS:ROWS + 2] = (y[ROWS:ROWS + 2] + 1) % CLASSES
        X, y, validation = X[:ROWS], y[:ROWS], (X[ROWS:], y[ROWS:])
    checkpointing = {} if directory is None else {
        "checkpoint_dir": directory, "checkpoint_every": every, "resume": resume,
        "keep_last": keep_last}
    return trainer.fit(X, y, validation=validation, **checkpointing)


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_during_write(at):
    """SIGKILL halfway through the ``at``-th checkpoint's bytes, with them on disk."""
    writer, count = checkpoint.atomic_writer, [0]

    class HalfThenDie:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            _die()

    @contextlib.contextmanager
    def dying_writer(path):
        count[0] += 1
        with writer(path) as f:
            yield HalfThenDie(f) if count[0] == at else f

    checkpoint.atomic_writer = dying_writer


def _kill_before_rename(at):
    replace, count = os.replace, [0]

    def dying_replace(src, dst):
        if str(dst).endswith(".ckpt"):
            count[0] += 1
            if count[0] == at:
                _die()
        replace(src, dst)

    os.replace = dying_replace


def main(spec):
    net, trainer = make(spec["epochs"], patience=spec.get("patience"),
                        schedule=spec.get("schedule", "cosine"))
    kill, at = spec.get("kill"), spec.get("at")
    if kill == "step":
        _after_step(trainer.optimizer, at, _die)
    elif kill in ("sigint", "sigterm"):
        signum = signal.SIGINT if kill == "sigint" else signal.SIGTERM
        _after_step(trainer.optimizer, at, lambda: os.kill(os.getpid(), signum))
    elif kill == "write":
        _kill_during_write(at)
    elif kill == "rename":
        _kill_before_rename(at)
    if spec.get("pace"):  # seconds per epoch at least, so an outside kill lands mid-run
        trainer.on_epoch = lambda record: time.sleep(spec["pace"])
    print("ready", flush=True)
    try:
        fit(trainer, spec["dir"], every=spec.get("every", "4steps"), patience=spec.get("patience"))
    except TrainingInterrupted as e:
        print(e, file=sys.stderr)
        return e.exit_code
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))

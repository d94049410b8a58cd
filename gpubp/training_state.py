"""Where a :meth:`Trainer.fit` run stands, and its round trip through a checkpoint.

The state is everything needed to continue a run exactly as it would have gone:
weights and biases, the optimizer's momentum buffers, the epoch/batch/step counters,
the epoch's learning rate, the shuffle RNG's state before the epoch's permutation
(so a mid-epoch resume redraws the same order and skips the batches done), the
partial epoch's loss sum, the history, and the early-stopping state.

Tensors in a checkpoint are named ``{group}.{i}``, i over [W1, b1, ..., WL, bL]:
``param``, ``velocity`` (momentum), ``best`` (early stopping), ``epoch_start`` and
``previous_start`` (the weights divergence recovery falls back to).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re

import numpy as np

from gpubp.backend import to_numpy
from gpubp.errors import CheckpointError, CheckpointMismatchError

GROUPS = ("param", "velocity", "best", "epoch_start", "previous_start")
EVERY = re.compile(r"\s*(\d+)\s*(steps?|epochs?)?\s*")


def parse_every(checkpoint_every) -> tuple[int, str]:
    """``checkpoint_every`` as (count, "steps" or "epochs").

    An int N means N epochs; a string is "N", "Nsteps", "Nepochs" (also "1step",
    "1epoch"); None means one epoch.
    """
    if checkpoint_every is None:
        return 1, "epochs"
    if isinstance(checkpoint_every, (int, np.integer)) and not isinstance(checkpoint_every, bool):
        count, unit = int(checkpoint_every), "epochs"
    elif isinstance(checkpoint_every, str) and EVERY.fullmatch(checkpoint_every):
        number, unit = EVERY.fullmatch(checkpoint_every).groups()
        count, unit = int(number), (unit or "epochs").rstrip("s") + "s"
    else:
        raise ValueError("checkpoint_every: expected an int (epochs) or a string like "
                         f"'500steps' or '2epochs', got {checkpoint_every!r}")
    if count < 1:
        raise ValueError(f"checkpoint_every: must be >= 1, got {checkpoint_every!r}")
    return count, unit


def data_fingerprint(*arrays) -> str:
    """sha256 over the shapes, dtypes and bytes of the (host or device) arrays."""
    digest = hashlib.sha256()
    for a in arrays:
        if a is None:
            digest.update(b"none")
            continue
        a = np.ascontiguousarray(to_numpy(a))
        digest.update(f"{a.dtype.str}{a.shape}".encode())
        digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


@dataclasses.dataclass
class TrainingState:
    """The loop state of :meth:`Trainer.fit`; arrays live on the network's backend.

    ``epoch`` is the 0-based epoch in progress (= epochs completed) and ``batch`` the
    batches it has done; ``rng_state`` is the shuffle RNG's state before that epoch's
    permutation. ``loss_sum`` (Σ loss × rows), ``first_loss``, ``elapsed`` (seconds)
    and ``epoch_start`` belong to the epoch in progress.
    """

    history: object
    rng_state: dict
    epoch: int = 0
    batch: int = 0
    step: int = 0
    lr: float = 0.0
    loss_sum: object = 0.0
    first_loss: object = None
    elapsed: float = 0.0
    best_loss: float = math.inf
    best_state: list | None = None
    waited: int = 0
    epoch_start: list | None = None
    previous_start: list | None = None
    _spare: list | None = None  # buffers of a start no longer kept, reused by the next

    def keep_epoch_start(self, net) -> None:
        """Copy the weights the epoch starts from into ``epoch_start`` (reusing buffers)."""
        self.epoch_start = copy_into(self._spare, net.parameters())
        self._spare = None

    def end_epoch_starts(self) -> None:
        """At an epoch's end its start becomes the previous one; the one before is spare."""
        self._spare, self.previous_start, self.epoch_start = (
            self.previous_start, self.epoch_start, None)

    # ---- to a checkpoint -------------------------------------------------------------

    def to_checkpoint(self, net, optimizer, config: dict, epochs: int,
                      metadata: dict | None = None, losses=None) -> tuple[dict, dict]:
        """(tensors, state) for :func:`gpubp.checkpoint.write_checkpoint`; host copies.

        ``losses``: (loss_sum, first_loss) to record instead of this process's own (the
        sums over every rank, when data-parallel)."""
        loss_sum, first_loss = losses if losses is not None else (self.loss_sum,
                                                                  self.first_loss)
        groups = {"param": net.parameters(), "best": self.best_state,
                  "epoch_start": self.epoch_start if self.batch else None,
                  "previous_start": self.previous_start,
                  "velocity": _optimizer_state(optimizer).get("velocity")}
        tensors = {f"{group}.{i}": to_numpy(a)
                   for group, arrays in groups.items() if arrays is not None
                   for i, a in enumerate(arrays)}
        history = self.history
        state = {
            "config": config, "epochs": epochs, "backend": net.backend.name,
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "lr": self.lr,
            "rng_state": self.rng_state,
            "loss_sum": float(loss_sum) if self.batch else 0.0,
            "first_loss": None if first_loss is None else float(first_loss),
            "elapsed": self.elapsed if self.batch else 0.0,
            "history": {"records": history.records, "best_epoch": history.best_epoch,
                        "stopped_early": history.stopped_early},
            "best_loss": None if math.isinf(self.best_loss) else self.best_loss,
            "waited": self.waited,
        }
        if metadata is not None:
            state["metadata"] = metadata
        return tensors, state

    # ---- from a checkpoint -----------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path, tensors: dict, state: dict, net, optimizer, config: dict,
                        epochs: int, history_type) -> tuple["TrainingState", dict]:
        """Check a checkpoint's contents and turn them into (state, arrays).

        ``arrays`` maps each group present to its list of backend arrays; nothing is
        applied to ``net`` here. A sealed checkpoint is still data: every counter, rate
        and group is checked against the run (``config``, ``optimizer``) and each other.

        Raises:
            CheckpointMismatchError: a well-formed checkpoint of a different run (the
                message starts with "resume:" or "epochs:").
            CheckpointError: the contents are malformed (the file is then skipped).
        """
        reader = _Reader(path, state)
        saved = reader.dict("config")
        for key, value in config.items():
            if saved.get(key) != value:
                raise CheckpointMismatchError(
                    f"resume: {path} was written for {key}={saved.get(key)!r}, "
                    f"this run has {key}={value!r}")
        arrays = _arrays(path, tensors, net)
        run = cls(history=_history(reader, history_type), rng_state=_rng_state(reader))
        run.epoch, run.batch = reader.int("epoch"), reader.int("batch")
        run.step, run.waited = reader.int("step"), reader.int("waited")
        run.lr, run.elapsed = reader.float("lr"), reader.float("elapsed")
        run.loss_sum = net.backend.xp.asarray(reader.float("loss_sum"), dtype=np.float64)
        run.first_loss = reader.float("first_loss", optional=True)
        best_loss = reader.float("best_loss", optional=True)
        run.best_loss = math.inf if best_loss is None else best_loss
        _check_consistent(path, run, arrays, config, optimizer, epochs)
        run.best_state = arrays.get("best")
        run.epoch_start = arrays.get("epoch_start")
        run.previous_start = arrays.get("previous_start")
        return run, arrays


def copy_into(buffers: list | None, arrays: list) -> list:
    """``arrays`` copied into ``buffers`` (made on first use); returns the buffers."""
    if buffers is None:
        return [a.copy() for a in arrays]
    for buffer, a in zip(buffers, arrays, strict=True):
        buffer[...] = a
    return buffers


def _check_consistent(path, run, arrays, config, optimizer, epochs) -> None:
    """Raise CheckpointError where the state contradicts the run or itself."""
    def bad(why):
        return CheckpointError(f"{path}: {why}")

    n_batches = -(-config["n_rows"] // config["batch_size"])
    if len(run.history) != run.epoch or run.batch > n_batches:
        raise bad(f"inconsistent counters (epoch {run.epoch}, batch {run.batch}, "
                  f"{len(run.history)} history records)")
    if run.step != run.epoch * n_batches + run.batch:
        raise bad(f"step {run.step} does not match epoch {run.epoch} and batch {run.batch} "
                  f"at {n_batches} batches an epoch")
    if not run.lr > 0:
        raise bad(f"learning rate {run.lr} is not > 0")
    if run.batch and ("epoch_start" not in arrays or run.first_loss is None):
        raise bad("a mid-epoch checkpoint without its epoch's start")
    velocity = "velocity" in arrays
    if getattr(optimizer, "momentum", None) is not None:
        if bool(optimizer.momentum) and run.step > 0 and not velocity:
            raise bad("no momentum buffers, and the optimizer has momentum")
        if not optimizer.momentum and velocity:
            raise bad("momentum buffers, and the optimizer has no momentum")
    early_stopping = (config.get("patience") is not None)
    stopping_state = ("best" in arrays or not math.isinf(run.best_loss) or run.waited
                      or run.history.best_epoch is not None or run.history.stopped_early)
    if stopping_state and not early_stopping:
        raise bad("early-stopping state in a run without early stopping")
    if early_stopping and run.waited > config["patience"]:
        raise bad(f"waited {run.waited} epochs, beyond the patience {config['patience']}")
    if run.epoch + (run.batch > 0) > epochs:
        raise CheckpointMismatchError(f"epochs: {path} has already started epoch "
                                      f"{run.epoch + (run.batch > 0)}; epochs must be at "
                                      f"least that, got {epochs}")


def short_repr(value, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters; an integer too long to print (Python
    refuses beyond 4,300 digits) is described by its size."""
    try:
        text = repr(value)
    except ValueError:
        return f"an integer of {value.bit_length()} bits"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _optimizer_state(optimizer) -> dict:
    state_dict = getattr(optimizer, "state_dict", None)
    return state_dict() if callable(state_dict) else {}


def finite_number(value) -> bool:
    """A JSON number that is finite as a float (a 400-digit integer is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


class _Reader:
    """Typed access to a checkpoint's JSON state; anything malformed is a CheckpointError."""

    def __init__(self, path, state: dict):
        self.path, self.state = path, state

    def bad(self, key, expected) -> CheckpointError:
        return CheckpointError(f"{self.path}: checkpoint field {key!r} is "
                               f"{short_repr(self.state.get(key))}, expected {expected}")

    def int(self, key) -> int:
        value = self.state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise self.bad(key, "an integer in [0, 2**63)")
        return value

    def float(self, key, optional=False):
        value = self.state.get(key)
        if value is None and optional:
            return None
        if not finite_number(value):
            raise self.bad(key, "a finite number")
        return float(value)

    def dict(self, key) -> dict:
        value = self.state.get(key)
        if not isinstance(value, dict):
            raise self.bad(key, "a JSON object")
        return value


def _rng_state(reader: _Reader) -> dict:
    state = reader.dict("rng_state")
    try:
        generator = np.random.PCG64()
        generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise reader.bad("rng_state", f"a PCG64 state ({e})") from e
    return generator.state


def _history(reader: _Reader, history_type):
    saved = reader.dict("history")
    records, best_epoch, stopped = (saved.get("records"), saved.get("best_epoch"),
                                    saved.get("stopped_early"))
    history = history_type()
    if not isinstance(records, list) or not isinstance(stopped, bool) or not (
            best_epoch is None or (type(best_epoch) is int and 1 <= best_epoch <= len(records))):
        raise reader.bad("history", "{records: [...], best_epoch, stopped_early}")
    for i, record in enumerate(records):
        if not isinstance(record, dict) or set(record) != set(history_type.KEYS) \
                or record["epoch"] != i + 1 or not all(
                    value is None or finite_number(value) for value in record.values()):
            raise reader.bad("history", f"records with keys {history_type.KEYS} (record {i})")
        history.records.append(dict(record))
    history.best_epoch, history.stopped_early = best_epoch, stopped
    return history


def _arrays(path, tensors: dict, net) -> dict:
    """Group the checkpoint's tensors, each checked against the network's parameters."""
    shapes = [tuple(p.shape) for p in net.parameters()]
    known = {f"{group}.{i}": (group, i) for group in GROUPS for i in range(len(shapes))}
    groups = {}
    for name, array in tensors.items():
        if name not in known:
            raise CheckpointError(f"{path}: unexpected tensor {name!r:.80}")
        group, index = known[name]
        if array.shape != shapes[index] or array.dtype != net.dtype:
            raise CheckpointError(f"{path}: tensor {name} is {array.dtype}{list(array.shape)}, "
                                  f"the network has {net.dtype}{list(shapes[index])}")
        if not np.isfinite(array).all():
            raise CheckpointError(f"{path}: tensor {name} holds NaN or Inf")
        groups.setdefault(group, {})[index] = array
    arrays = {}
    for group, found in groups.items():
        if len(found) != len(shapes):
            raise CheckpointError(f"{path}: group {group!r} has {len(found)} of "
                                  f"{len(shapes)} tensors")
        arrays[group] = [net.backend.asarray(found[i]).copy() for i in range(len(shapes))]
    if "param" not in arrays:
        raise CheckpointError(f"{path}: no weights")
    return arrays

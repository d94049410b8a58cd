"""Minibatch training: shuffle → batch → forward → fused loss/gradient → backward → update."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from gpubp import blas, checkpoint
from gpubp.datasets.preprocessing import stratified_indices
from gpubp.distributed import Communicator, get_communicator, shard_bounds
from gpubp.errors import CheckpointError, DivergenceError, TrainingInterrupted
from gpubp.interrupts import stop_requests
from gpubp.network import MLP
from gpubp.schedules import ConstantLR
from gpubp.step import make_stepper
from gpubp.training_state import TrainingState, copy_into, data_fingerprint, parse_every
from gpubp.validation import check_float, check_int

log = logging.getLogger("gpubp")


class History:
    """Per-epoch records of a :meth:`Trainer.fit` run.

    ``history[i]`` is epoch i's record, a dict with keys ``epoch`` (1-based), ``lr``,
    ``train_loss``, ``val_loss``, ``val_accuracy`` (None without validation data),
    ``wall_time`` (seconds for the epoch) and ``samples_per_s`` (training throughput).
    ``history["train_loss"]`` is that key's list over the epochs.
    """

    KEYS = ("epoch", "lr", "train_loss", "val_loss", "val_accuracy", "wall_time", "samples_per_s")

    def __init__(self):
        self.records: list[dict] = []
        self.best_epoch: int | None = None  # 1-based, when early stopping is on
        self.stopped_early = False

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.KEYS:
                raise KeyError(f"{key!r}: history keys are {self.KEYS}")
            return [r[key] for r in self.records]
        return self.records[key]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __repr__(self) -> str:
        last = self.records[-1] if self.records else {}
        return f"History(epochs={len(self)}, last={last})"


class Trainer:
    """Trains an :class:`MLP` by minibatch gradient descent.

    Args:
        net: the network, trained in place.
        optimizer: e.g. ``SGD(lr=0.1, momentum=0.9)``; its ``lr`` is the base rate.
        batch_size: rows per step (≥ 1). The last, partial batch trains with its own size.
        epochs: passes over the training data (≥ 1).
        seed: seeds the per-epoch shuffles and the validation split.
        schedule: a learning-rate schedule (gpubp.schedules); constant by default.
        patience: stop after this many epochs without a validation-loss improvement
            greater than ``min_delta``, and restore the best weights. Needs validation data.
        progress: show a progress bar over each epoch's batches (on a terminal).
        on_epoch: called with each epoch's record (see :class:`History`) as it ends.
        distributed: data-parallel training across the processes of ``mpiexec -n N``:
            True (MPI when launched by mpiexec, else one process), or a
            :class:`gpubp.distributed.Communicator`. Each step's global batch of
            ``batch_size`` rows is split across the ranks, whose gradients are summed;
            every rank holds the same weights, and only rank 0 writes checkpoints.
        precision: "fp32", or "bf16" to run the step's GEMMs with bf16 inputs and fp32
            accumulation (weights, loss, sigmoid and update stay fp32): float32 networks
            on the NumPy backend, on CPUs with AVX512_BF16 or AMX and oneDNN installed;
            elsewhere a gpubp.BackendError says why (see gpubp.blas.gemm_precision);
            or "tf32" for cuBLAS's TF32 tensor cores (float32 networks on CuPy).
        cuda_graphs: on CuPy, replay each step as a captured CUDA graph (checked against
            an eager step on first use); None follows $GPUBP_CUDA_GRAPHS (on unless "0").
    """

    def __init__(self, net: MLP, optimizer, *, batch_size: int = 64, epochs: int = 10,
                 seed=None, schedule=None, patience=None, min_delta: float = 0.0,
                 progress: bool = True, on_epoch=None, precision: str = "fp32",
                 cuda_graphs=None, distributed=False):
        if not isinstance(net, MLP):
            raise TypeError(f"net: expected a gpubp.MLP, got {type(net).__name__}")
        if not callable(getattr(optimizer, "step", None)):
            raise TypeError(f"optimizer: expected an optimizer with .step(), got {optimizer!r}")
        self.net = net
        self.optimizer = optimizer
        self.batch_size = check_int(batch_size, "batch_size")
        self.epochs = check_int(epochs, "epochs")
        self.seed = None if seed is None else check_int(seed, "seed", minimum=0)
        self.schedule = schedule if schedule is not None else ConstantLR()
        if not callable(getattr(self.schedule, "factor", None)):
            raise TypeError(f"schedule: expected a schedule with .factor(), got {schedule!r}")
        self.patience = None if patience is None else check_int(patience, "patience")
        self.min_delta = check_float(min_delta, "min_delta", 0.0)
        self.progress = bool(progress)
        self.on_epoch = on_epoch
        if precision == "tf32":  # cuBLAS's TF32 tensor-core GEMMs
            if not net.backend.is_gpu or net.dtype != np.float32:
                raise ValueError(f"precision: 'tf32' trains float32 networks on the CuPy "
                                 f"backend, not {net}")
            self.precision = precision
        else:
            if precision == "bf16" and (net.backend.is_gpu or net.dtype != np.float32):
                raise ValueError(f"precision: 'bf16' trains float32 networks on the NumPy "
                                 f"backend, not {net}")
            self.precision = blas.check_precision(precision)
        if cuda_graphs is not None and not isinstance(cuda_graphs, bool):
            raise TypeError(f"cuda_graphs: expected a bool or None, got {cuda_graphs!r}")
        self.cuda_graphs = cuda_graphs
        self.comm = _communicator(distributed)

    def fit(self, X, y, validation=None, *, checkpoint_dir=None, checkpoint_every=None,
            resume: bool = False, keep_last: int = 3, metadata: dict | None = None,
            check_metadata=None) -> History:
        """Train on (X, y). Returns the :class:`History`.

        Args:
            X: (N, n_in) features. y: labels (N,) or target rows (N, C).
            validation: (X_val, y_val), or a fraction in (0, 1) of the training rows to
                hold out (stratified by class), or None.
            checkpoint_dir: a directory for checkpoints of the full training state
                (see gpubp.checkpoint). With it, SIGINT and SIGTERM stop training at the
                next batch boundary with a final checkpoint (TrainingInterrupted).
            checkpoint_every: an int N (every N epochs) or a string "Nsteps"/"Nepochs";
                one epoch by default. A final checkpoint is written when training ends.
            resume: continue from the newest complete checkpoint in ``checkpoint_dir``,
                exactly as the run would have gone on. The network, data, batch size,
                seed, optimizer and schedule must match the checkpoint's; ``epochs`` may
                differ: the new target applies to the epochs that start after resuming.
            keep_last: how many checkpoints to keep; older ones are deleted.
            metadata: a JSON-serializable dict stored in every checkpoint (the command
                line keeps its options there); see :func:`gpubp.checkpoint.latest_metadata`.
            check_metadata: ``check(path, metadata)``, run on a checkpoint's stored
                metadata before it is resumed from or kept as good: it raises
                CheckpointError to pass that checkpoint over like an unreadable one (the
                command line checks the options it recorded), CheckpointMismatchError to
                stop the resume.

        The checkpoint directory is checked, created and locked only after every argument
        and the data are accepted; a second run on the same directory is refused at once.

        Raises:
            ValueError/TypeError: bad data or arguments, before anything changes.
            DivergenceError: the training loss became NaN or Inf; the network keeps the
                last weights whose loss was seen finite (the start of that epoch or of the
                one before), and the optimizer's momentum is reset.
            CheckpointError: ``resume`` found no checkpoint that loads, or one of a
                different run (CheckpointMismatchError).
            TrainingInterrupted: SIGINT/SIGTERM, after writing a checkpoint.
        """
        net = self.net
        every = self._check_checkpoint_arguments(checkpoint_dir, checkpoint_every, resume,
                                                 keep_last, metadata)
        X = net.prepare_features(X)
        targets = net.prepare_targets(y, X.shape[0])
        shuffle_seed, split_seed = np.random.SeedSequence(self.seed).spawn(2)
        X, targets, X_val, t_val = self._validation_data(X, targets, validation, split_seed)
        if self.patience is not None and X_val is None:
            raise ValueError("patience: early stopping needs validation data")
        net.check_training_memory(min(self.batch_size, X.shape[0]), self.optimizer,
                                  eval_rows=0 if X_val is None else X_val.shape[0])

        rng = np.random.default_rng(shuffle_seed)
        run = TrainingState(history=History(), rng_state=rng.bit_generator.state)
        saver = None
        if checkpoint_dir is not None:
            saver = _Saver(self, checkpoint_dir, every, keep_last,
                           self._run_config(X, targets, X_val, t_val), metadata,
                           check_metadata)
        if self.comm.size > 1:  # every rank must be running the same training
            self.comm.check_same("the run", self._run_config(X, targets, X_val, t_val))
        fit = _Fit(X, targets, X_val, t_val, rng, self.optimizer.lr, saver,
                   make_stepper(net, self.optimizer, X, targets, self.batch_size,
                                comm=self.comm, **self._step_options()))
        try:
            if saver is not None:
                saver.open()
                if resume:
                    run = saver.resume()
                    rng.bit_generator.state = run.rng_state  # the permutation is redrawn
                else:
                    saver.check_fresh()
            with stop_requests(enabled=saver is not None) as fit.stop, \
                    blas.gemm_precision("bf16" if self.precision == "bf16" else "fp32"):
                while run.epoch < self.epochs and not run.history.stopped_early:
                    self._train_epoch(fit, run)
                    if saver is not None:
                        saver.after_epoch(run, fit.stop)
                if saver is not None:
                    saver.save(run)  # the final state, unless just saved
        finally:
            self.optimizer.lr = fit.base_lr
            fit.stepper.close()
            if saver is not None:
                saver.close()
        if run.best_state is not None:
            net.load_state(run.best_state)
        return run.history

    def _step_options(self) -> dict:
        if not self.net.backend.is_gpu:
            return {"precision": self.precision}
        return {"cuda_graphs": self.cuda_graphs,
                "precision": "tf32" if self.precision == "tf32" else "fp32"}

    def _train_epoch(self, fit: "_Fit", run: TrainingState) -> None:
        """Run (the rest of) epoch ``run.epoch``: its steps, then its record."""
        n, stepper = fit.X.shape[0], fit.stepper
        if run.batch == 0:
            run.lr = fit.base_lr * self.schedule.factor(run.epoch, self.epochs)
            run.keep_epoch_start(self.net)
            run.elapsed = 0.0
        self.optimizer.lr = run.lr
        resumed = run.batch > 0  # mid-epoch: the checkpoint's sums carry on
        stepper.begin_epoch(fit.rng.permutation(n), run.lr,
                            loss_sum=float(run.loss_sum) if resumed else 0.0,
                            first_loss=float(run.first_loss) if resumed else None,
                            epoch=run.epoch)
        run.loss_sum, run.first_loss = stepper.loss_sum, stepper.first_loss
        clock = time.perf_counter() - run.elapsed
        batches = range(run.batch, -(-n // self.batch_size))
        for batch in tqdm(batches, desc=f"epoch {run.epoch + 1}/{self.epochs}", unit="batch",
                          leave=False, disable=None if self.progress else True):
            stepper.step(batch)
            run.batch += 1
            run.step += 1
            if fit.saver is not None:
                run.elapsed = time.perf_counter() - clock
                fit.saver.after_step(run, fit.stop)
        train_loss = stepper.finish_epoch() / n
        wall_time = time.perf_counter() - clock  # finish_epoch synchronized
        if not math.isfinite(train_loss):
            self._recover(run, train_loss)
        self._end_epoch(fit, run, {
            "epoch": run.epoch + 1, "lr": run.lr, "train_loss": train_loss, "val_loss": None,
            "val_accuracy": None, "wall_time": wall_time, "samples_per_s": n / wall_time})

    def _end_epoch(self, fit: "_Fit", run: TrainingState, record: dict) -> None:
        """Validate, record the epoch, and update early stopping."""
        if fit.X_val is not None:
            record["val_loss"], record["val_accuracy"] = self._validate(fit.X_val, fit.t_val)
        run.history.records.append(record)
        run.epoch, run.batch, run.rng_state = run.epoch + 1, 0, fit.rng.bit_generator.state
        run.end_epoch_starts()
        if self.on_epoch is not None:
            self.on_epoch(record)
        if self.patience is not None:
            self._early_stopping(run, record)

    def _validate(self, X_val, t_val) -> tuple[float, float]:
        """(mean loss, accuracy) on the validation rows. Data-parallel, each rank
        evaluates its contiguous share and the sums are reduced, so that every rank gets
        the same figures for 1/N of the work."""
        if self.comm.size == 1:
            metrics = self.net.evaluate_prepared(X_val, t_val)
            return metrics["loss"], metrics["accuracy"]
        n = X_val.shape[0]
        start, stop = shard_bounds(n, self.comm.size, self.comm.rank)
        loss_sum = correct = 0.0
        if stop > start:
            metrics = self.net.evaluate_prepared(X_val[start:stop], t_val[start:stop])
            loss_sum, correct = metrics["loss"] * (stop - start), metrics["accuracy"] * (stop - start)
        loss_sum, correct = self.comm.allreduce_scalars([loss_sum, correct])
        return loss_sum / n, round(correct) / n

    def _early_stopping(self, run: TrainingState, record: dict) -> None:
        """Keep the best weights; stop after ``patience`` epochs without improvement."""
        if record["val_loss"] < run.best_loss - self.min_delta:
            run.best_loss, run.waited = record["val_loss"], 0
            run.best_state = copy_into(run.best_state, self.net.parameters())
            run.history.best_epoch = record["epoch"]
        else:
            run.waited += 1
            if run.waited >= self.patience:
                run.history.stopped_early = True

    def _check_checkpoint_arguments(self, checkpoint_dir, checkpoint_every, resume, keep_last,
                                    metadata):
        """(count, unit) of ``checkpoint_every``; raises for bad checkpoint arguments."""
        if not isinstance(resume, bool):
            raise TypeError(f"resume: expected a bool, got {resume!r}")
        check_int(keep_last, "keep_last")
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise TypeError(f"metadata: expected a dict, got {type(metadata).__name__}")
            try:
                json.dumps(metadata, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise TypeError(f"metadata: must be JSON-serializable ({e})") from e
        if checkpoint_dir is None:
            if resume or checkpoint_every is not None or metadata is not None:
                raise ValueError("checkpoint_dir: needed for resume, checkpoint_every and "
                                 "metadata")
            return None
        if not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise TypeError(f"checkpoint_dir: expected a path, got {checkpoint_dir!r}")
        return parse_every(checkpoint_every)

    def _run_config(self, X, targets, X_val, t_val) -> dict:
        """What a checkpoint must agree with to be resumed by this run."""
        return {
            "layer_sizes": list(self.net.layer_sizes), "dtype": self.net.dtype.name,
            "batch_size": self.batch_size, "seed": self.seed,
            "optimizer": repr(self.optimizer), "schedule": repr(self.schedule),
            "patience": self.patience, "min_delta": self.min_delta,
            "n_rows": int(X.shape[0]), "n_val_rows": None if X_val is None else int(X_val.shape[0]),
            "data_sha256": data_fingerprint(X, targets, X_val, t_val),
        }

    def _recover(self, run: TrainingState, train_loss: float) -> None:
        """Restore the last weights whose loss was seen finite, and raise DivergenceError.

        The epoch's first step evaluated the epoch's start; if that loss was finite, the
        start is good. Otherwise the previous epoch's start is (all its losses were).
        """
        epoch = run.epoch
        if math.isfinite(float(run.first_loss)):
            self.net.load_state(run.epoch_start)
            kept = f"the start of epoch {epoch + 1}, the last with a finite loss"
        elif run.previous_start is not None:
            self.net.load_state(run.previous_start)
            kept = f"the start of epoch {epoch}, the last with a finite loss"
        else:
            self.net.load_state(run.epoch_start)
            kept = "the start of training (their loss was already not finite)"
        reset = getattr(self.optimizer, "reset", None)
        if callable(reset):
            reset()  # the momentum buffers hold the non-finite steps
        raise DivergenceError(
            f"training diverged in epoch {epoch + 1}: the loss became {train_loss}. "
            f"The network keeps its weights from {kept}; "
            f"try a smaller learning rate (lr={self.optimizer.lr:g})."
        )

    def _validation_data(self, X, targets, validation, seed):
        """Split off or check the validation data: returns X, targets, X_val, t_val."""
        net = self.net
        if validation is None:
            return X, targets, None, None
        if isinstance(validation, (tuple, list)):
            if len(validation) != 2:
                raise ValueError("validation: expected (X_val, y_val) or a fraction in (0, 1)")
            X_val = net.prepare_features(validation[0], name="validation X")
            t_val = net.prepare_targets(validation[1], X_val.shape[0], name="validation y")
            return X, targets, X_val, t_val
        fraction = check_float(validation, "validation", 0.0, strict=True, below=1.0)
        labels = targets if targets.ndim == 1 else targets.argmax(axis=1)
        train, val = stratified_indices(labels, fraction, np.random.default_rng(seed),
                                        name="validation")
        train, val = net.backend.asarray(train), net.backend.asarray(val)
        return X[train], targets[train], X[val], targets[val]


def _communicator(distributed):
    if distributed is False or distributed is None:
        return get_communicator("single")
    if distributed is True:
        return get_communicator("auto")
    if isinstance(distributed, Communicator):
        return distributed
    raise TypeError(f"distributed: expected a bool or a gpubp.distributed.Communicator, "
                    f"got {distributed!r:.80}")


@dataclasses.dataclass
class _Fit:
    """What stays fixed through one :meth:`Trainer.fit` call: the data, the shuffle RNG,
    the base learning rate, the checkpoint saver, the stepper, and the stop request."""

    X: object
    targets: object
    X_val: object
    t_val: object
    rng: np.random.Generator
    base_lr: float
    saver: "_Saver | None"
    stepper: object
    stop: object = None


class _Saver:
    """One fit run's checkpoints in ``directory``: when to write them, and resuming.

    Data-parallel, every rank runs the same calls at the same steps; only the root
    touches the directory (it holds the lock and writes), and it hands every decision
    (the checkpoint to resume, an error) to the others.
    """

    def __init__(self, trainer: Trainer, directory, every, keep_last: int, config: dict,
                 metadata: dict | None, check_metadata=None):
        self.trainer, self.comm = trainer, trainer.comm
        self.files = checkpoint.CheckpointDirectory(directory, keep_last, check_metadata)
        self.directory = self.files.directory
        self.count, self.unit = every
        self.config, self.metadata = config, metadata
        self.saved_at, self.path = None, None  # (epoch, batch, step) written or loaded
        self._hint = None  # the communicator's abort_hint before open()

    def open(self) -> None:
        """Check, create and lock the directory (ValueError if it cannot be used)."""
        self._on_root(self.files.open)
        # A rank that aborts the job (a collective timed out, a rank failed) says how to
        # go on from here.
        self._hint, self.comm.abort_hint = self.comm.abort_hint, (
            f"The checkpoints are in {self.directory}; resume with any number of ranks: "
            f"mpiexec -n N gpubp train --resume {self.directory} (in a script: "
            "Trainer.fit(..., checkpoint_dir=..., resume=True))")

    def close(self) -> None:
        self.files.close()
        if self._hint is not None:
            self.comm.abort_hint, self._hint = self._hint, None

    def check_fresh(self) -> None:
        """A fresh run must not mix its checkpoints with an older run's."""
        if self._on_root(lambda: bool(self.files.list())):
            raise ValueError(f"checkpoint_dir: {self.directory} already holds checkpoints; "
                             f"continue that run with resume=True (on the command line: "
                             f"gpubp train --resume {self.directory}), or use an empty "
                             "directory")

    def resume(self) -> TrainingState:
        """Load the newest checkpoint that reads into the network and optimizer."""
        trainer = self.trainer

        def accept(path, tensors, state):
            return TrainingState.from_checkpoint(path, tensors, state, trainer.net,
                                                 trainer.optimizer, self.config,
                                                 trainer.epochs, History)

        def newest():
            found = self.files.load_latest(accept)
            return None if found is None else found[0]

        path = self._on_root(newest)
        if path is None:
            raise CheckpointError(f"resume: no complete checkpoint in {self.directory}")
        run, arrays = accept(path, *checkpoint.read_checkpoint(path))
        self.path = path
        trainer.net.load_state(arrays["param"])
        if callable(getattr(trainer.optimizer, "load_state_dict", None)):
            trainer.optimizer.load_state_dict({"velocity": arrays.get("velocity")})
        if not self.comm.is_root:  # the root carries the epoch's loss so far; sums add up
            run.loss_sum, run.first_loss = 0.0, (None if run.first_loss is None else 0.0)
        self.saved_at = (run.epoch, run.batch, run.step)
        log.info("gpubp: resuming from %s (epoch %d, batch %d, step %d)", self.path,
                 run.epoch + 1, run.batch, run.step)
        return run

    def after_step(self, run: TrainingState, stop) -> None:
        if self.unit == "steps" and run.step % self.count == 0:
            self.save(run)
        if self._stop_requested(stop):
            self.interrupt(run, stop)

    def after_epoch(self, run: TrainingState, stop) -> None:
        if self.unit == "epochs" and run.epoch % self.count == 0:
            self.save(run)
        if self._stop_requested(stop):
            self.interrupt(run, stop)

    def save(self, run: TrainingState) -> Path:
        """Write ``run`` unless it is the state last written or loaded, or not finite.

        A run that is diverging mid-epoch is not written: its checkpoint could not be
        resumed, and rotation would delete the good ones. Returns the newest path.
        """
        if self.saved_at == (run.epoch, run.batch, run.step):
            return self.path
        losses = (float(run.loss_sum), None if run.first_loss is None else float(run.first_loss))
        if self.comm.size > 1 and run.batch:  # the epoch's sums so far, over every rank
            losses = tuple(self.comm.allreduce_scalars([losses[0], losses[1] or 0.0]))
        trainer = self.trainer
        xp = trainer.net.backend.xp
        finite = all(bool(xp.isfinite(p).all()) for p in trainer.net.parameters())
        if not finite or (run.batch and not math.isfinite(losses[0])):
            log.warning("gpubp: not writing a checkpoint at step %d: the weights or the "
                        "loss are not finite", run.step)
            return self.path
        if self.comm.is_root:
            tensors, state = run.to_checkpoint(trainer.net, trainer.optimizer, self.config,
                                               trainer.epochs, self.metadata, losses)
            self.path = self.files.write(run.step, tensors, state)
        else:
            self.path = checkpoint.checkpoint_path(self.directory, run.step)
        self.saved_at = (run.epoch, run.batch, run.step)
        return self.path

    def interrupt(self, run: TrainingState, stop) -> None:
        """Checkpoint, then raise TrainingInterrupted saying how to resume."""
        path = self.save(run)
        saved = (f"checkpoint written to {path}" if self.saved_at == (run.epoch, run.batch,
                                                                       run.step)
                 else f"the newest checkpoint is {path}")
        raise TrainingInterrupted(
            f"training stopped by {stop.name} in epoch {run.epoch + (run.batch > 0)} after "
            f"step {run.step}; {saved}. Resume with "
            f"`gpubp train --resume {self.directory}`, or in Python with "
            f"Trainer.fit(..., checkpoint_dir={str(self.directory)!r}, resume=True).",
            path=path, signal_name=stop.name, exit_code=stop.exit_code, history=run.history)

    def _stop_requested(self, stop) -> bool:
        """Whether a signal asked to stop, on any rank (then every rank stops here)."""
        if self.comm.size == 1:
            return bool(stop)
        if self.comm.allreduce_scalars([float(bool(stop))])[0] and not stop:
            stop.signum = signal.SIGTERM  # another rank's request: stop as if sent here
        return bool(stop)

    def _on_root(self, work):
        """``work()`` on the root, its result (or its exception) on every rank."""
        if self.comm.size == 1:
            return work()
        outcome = None
        if self.comm.is_root:
            try:
                outcome = ("ok", work())
            except Exception as error:  # handed to every rank, then raised everywhere
                outcome = ("error", error)
        kind, value = self.comm.broadcast_object(outcome)
        if kind == "error":
            raise value
        return value

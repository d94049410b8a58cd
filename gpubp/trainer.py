"""Minibatch training: shuffle → batch → forward → fused loss/gradient → backward → update."""

from __future__ import annotations

import math
import time

import numpy as np
from tqdm.auto import tqdm

from gpubp.datasets.preprocessing import stratified_indices
from gpubp.errors import DivergenceError
from gpubp.network import MLP
from gpubp.schedules import ConstantLR
from gpubp.validation import check_float, check_int


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
    """

    def __init__(self, net: MLP, optimizer, *, batch_size: int = 64, epochs: int = 10,
                 seed=None, schedule=None, patience=None, min_delta: float = 0.0,
                 progress: bool = True, on_epoch=None):
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

    def fit(self, X, y, validation=None) -> History:
        """Train on (X, y). Returns the :class:`History`.

        Args:
            X: (N, n_in) features. y: labels (N,) or target rows (N, C).
            validation: (X_val, y_val), or a fraction in (0, 1) of the training rows to
                hold out (stratified by class), or None.

        Raises:
            ValueError/TypeError: bad data or arguments, before anything changes.
            DivergenceError: the training loss became NaN or Inf; the network keeps the
                last weights whose loss was seen finite (the start of that epoch or of the
                one before), and the optimizer's momentum is reset.
        """
        net = self.net
        X = net.prepare_features(X)
        targets = net.prepare_targets(y, X.shape[0])
        shuffle_seed, split_seed = np.random.SeedSequence(self.seed).spawn(2)
        X, targets, X_val, t_val = self._validation_data(X, targets, validation, split_seed)
        if self.patience is not None and X_val is None:
            raise ValueError("patience: early stopping needs validation data")

        rng = np.random.default_rng(shuffle_seed)
        n = X.shape[0]
        base_lr = self.optimizer.lr
        history, best_loss, best_state, waited = History(), math.inf, None, 0
        previous_start = None  # weights at the start of the previous epoch
        try:
            for epoch in range(self.epochs):
                self.optimizer.lr = base_lr * self.schedule.factor(epoch, self.epochs)
                start = net.state()
                started = time.perf_counter()
                train_loss, first_loss = self._run_epoch(X, targets, rng, epoch)
                wall_time = time.perf_counter() - started  # float() above synchronized
                if not math.isfinite(train_loss):
                    self._recover(epoch, train_loss, first_loss, start, previous_start)
                previous_start = start
                record = {"epoch": epoch + 1, "lr": self.optimizer.lr, "train_loss": train_loss,
                          "val_loss": None, "val_accuracy": None, "wall_time": wall_time,
                          "samples_per_s": n / wall_time}
                if X_val is not None:
                    metrics = net.evaluate_prepared(X_val, t_val)
                    record["val_loss"], record["val_accuracy"] = metrics["loss"], metrics["accuracy"]
                history.records.append(record)
                if self.on_epoch is not None:
                    self.on_epoch(record)
                if self.patience is None:
                    continue
                if record["val_loss"] < best_loss - self.min_delta:
                    best_loss, best_state, waited = record["val_loss"], net.state(), 0
                    history.best_epoch = epoch + 1
                else:
                    waited += 1
                    if waited >= self.patience:
                        history.stopped_early = True
                        break
        finally:
            self.optimizer.lr = base_lr
        if best_state is not None:
            net.load_state(best_state)
        return history

    def _run_epoch(self, X, targets, rng, epoch):
        """One pass over shuffled minibatches.

        Returns (mean training loss, loss of the first batch), as floats: the first batch's
        loss is the only one computed with the weights the epoch started from.
        """
        net, xp, n = self.net, self.net.backend.xp, X.shape[0]
        order = net.backend.asarray(rng.permutation(n))
        loss_sum = xp.zeros((), dtype=np.float64)  # stays on the device until the end
        first_loss = None
        params = net.parameters()
        starts = range(0, n, self.batch_size)
        bar = tqdm(starts, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False,
                   disable=None if self.progress else True)
        for i in bar:
            rows = order[i:i + self.batch_size]
            loss, grads = net.loss_and_grads_prepared(X[rows], targets[rows])
            self.optimizer.step(params, [g for pair in grads for g in pair])
            loss_sum += loss * rows.shape[0]
            if first_loss is None:
                first_loss = loss
        return float(loss_sum) / n, float(first_loss)

    def _recover(self, epoch, train_loss, first_loss, start, previous_start):
        """Restore the last weights whose loss was seen finite, and raise DivergenceError.

        The epoch's first batch evaluated ``start``; if that loss was finite, ``start`` is
        good. Otherwise the previous epoch's start is (all its losses were finite).
        """
        if math.isfinite(first_loss):
            self.net.load_state(start)
            kept = f"the start of epoch {epoch + 1}, the last with a finite loss"
        elif previous_start is not None:
            self.net.load_state(previous_start)
            kept = f"the start of epoch {epoch}, the last with a finite loss"
        else:
            self.net.load_state(start)
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

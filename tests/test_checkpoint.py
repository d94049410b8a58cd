"""Checkpoint and resume: exact continuation after SIGKILL, SIGINT and SIGTERM, early
stopping, a changed epochs target, faults while saving, corrupt files, the CLI."""

import contextlib
import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import checkpoint_worker as worker
import numpy as np
import pytest

import gpubp
from gpubp import checkpoint
from gpubp.checkpoint import CheckpointWarning
from gpubp.cli import main
from gpubp.errors import CheckpointError, CheckpointMismatchError, TrainingInterrupted

WORKER = Path(worker.__file__)
STEPS_PER_EPOCH = 6  # 48 training rows in batches of 8
EPOCHS = 8           # 2k = 48 steps; the interrupted runs stop near k = 24
COMPARED = ("epoch", "lr", "train_loss", "val_loss", "val_accuracy")


def reference(epochs=EPOCHS, **kwargs):
    """The uninterrupted run: (net, history), without checkpoints."""
    net, trainer = worker.make(epochs, **{k: v for k, v in kwargs.items() if k != "every"})
    return net, worker.fit(trainer, patience=kwargs.get("patience"))


def resumed(directory, epochs=EPOCHS, every="4steps", **kwargs):
    net, trainer = worker.make(epochs, **kwargs)
    return net, worker.fit(trainer, directory, resume=True, every=every,
                           patience=kwargs.get("patience"))


def run_worker(directory, **spec):
    spec = {"dir": str(directory), "epochs": EPOCHS, **spec}
    return subprocess.run([sys.executable, str(WORKER), json.dumps(spec)], capture_output=True,
                          text=True, timeout=120, cwd=WORKER.parent)


def assert_same_run(a, b):
    """Bit-identical weights and identical history (all but the timings)."""
    (net_a, history_a), (net_b, history_b) = a, b
    for p, q in zip(net_a.parameters(), net_b.parameters(), strict=True):
        assert p.dtype == q.dtype and np.array_equal(p, q)
    assert [[r[k] for k in COMPARED] for r in history_a] == \
        [[r[k] for k in COMPARED] for r in history_b]
    assert (history_a.best_epoch, history_a.stopped_early) == \
        (history_b.best_epoch, history_b.stopped_early)


# ---- exact continuation --------------------------------------------------------------

# Kill points drawn once from a seeded RNG: steps inside epochs 3-5 (so the checkpoint
# resumed from is mid-epoch for some and at a boundary for others).
KILL_STEPS = np.random.default_rng(5).integers(2 * STEPS_PER_EPOCH, 5 * STEPS_PER_EPOCH,
                                               size=2).tolist()


@pytest.mark.parametrize("kill,at", [("step", k) for k in KILL_STEPS]
                         + [("write", 5), ("rename", 5)])
def test_resume_after_sigkill_is_bit_identical(tmp_path, kill, at):
    """Train to 2k steps without a break; separately, SIGKILL a run near k steps (after
    a step, halfway through writing a checkpoint, between writing one and its rename)
    and resume it to 2k: the same weights, bit for bit, and the same history."""
    done = run_worker(tmp_path, kill=kill, at=at)
    assert done.returncode == -signal.SIGKILL, done.stderr
    saved = checkpoint.list_checkpoints(tmp_path)
    assert saved, "the killed run wrote no checkpoint before dying"
    if kill in ("write", "rename"):
        # every="4steps": the at-th write (step 4·at) never appeared under its name
        assert saved[-1] == checkpoint.checkpoint_path(tmp_path, 4 * (at - 1))
        assert list(tmp_path.glob(checkpoint.TEMPORARY))  # its temporary file is left over
    _, state = checkpoint.read_checkpoint(saved[-1])
    assert state["step"] < EPOCHS * STEPS_PER_EPOCH
    assert_same_run(reference(), resumed(tmp_path))
    assert not list(tmp_path.glob(checkpoint.TEMPORARY))  # cleaned by the next rotation


def test_resume_after_sigkill_at_a_random_moment(tmp_path):
    """A longer run (at least 0.9 s of training) killed from outside at a random moment."""
    epochs = 300
    process = subprocess.Popen([sys.executable, str(WORKER), json.dumps(
        {"dir": str(tmp_path), "epochs": epochs, "every": "25steps", "pace": 0.003})],
        stdout=subprocess.PIPE, text=True, cwd=WORKER.parent)
    assert process.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 30
    while not checkpoint.list_checkpoints(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(np.random.default_rng().uniform(0, 0.6))
    process.kill()
    assert process.wait(timeout=30) == -signal.SIGKILL  # killed mid-run, not after it
    assert_same_run(reference(epochs), resumed(tmp_path, epochs, every="25steps"))


@pytest.mark.parametrize("name", ["sigint", "sigterm"])
def test_signal_writes_a_final_checkpoint_and_exits_cleanly(tmp_path, name):
    at = KILL_STEPS[0]
    done = run_worker(tmp_path, kill=name, at=at, every="100steps")
    signum = signal.SIGINT if name == "sigint" else signal.SIGTERM
    assert done.returncode == 128 + signum, done.stderr
    assert f"stopped by {signum.name}" in done.stderr and "--resume" in done.stderr
    saved = checkpoint.list_checkpoints(tmp_path)
    assert [p.name for p in saved] == [checkpoint.checkpoint_path(tmp_path, at).name]
    assert_same_run(reference(), resumed(tmp_path))


def test_resume_with_early_stopping(tmp_path):
    epochs, patience, steps_per_epoch = 40, 3, 8  # 60 training rows
    net, history = reference(epochs, patience=patience)
    assert history.stopped_early and 1 < history.best_epoch < len(history)  # the case tested
    done = run_worker(tmp_path, epochs=epochs, patience=patience, kill="step",
                      at=(history.best_epoch + 1) * steps_per_epoch + 5)
    assert done.returncode == -signal.SIGKILL
    tensors, state = checkpoint.read_checkpoint(checkpoint.list_checkpoints(tmp_path)[-1])
    assert state["history"]["best_epoch"] == history.best_epoch
    assert "best.0" in tensors and state["waited"] == 1
    assert_same_run((net, history), resumed(tmp_path, epochs, patience=patience))


def test_in_process_sigint_restores_handlers_and_resumes(tmp_path):
    previous = signal.getsignal(signal.SIGINT)
    net, trainer = worker.make(EPOCHS)
    worker._after_step(trainer.optimizer, 10, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted) as info:
        worker.fit(trainer, tmp_path, every="2epochs")
    assert signal.getsignal(signal.SIGINT) is previous
    e = info.value
    assert e.exit_code == 130 and e.signal_name == "SIGINT" and len(e.history) == 1
    assert e.path == checkpoint.checkpoint_path(tmp_path, 10) and e.path.is_file()
    assert_same_run(reference(), resumed(tmp_path))


def test_without_a_checkpoint_dir_ctrl_c_is_a_keyboard_interrupt():
    # Python's own handler, whatever this process inherited (nohup and background jobs
    # start with SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    net, trainer = worker.make(EPOCHS)
    worker._after_step(trainer.optimizer, 3, lambda: os.kill(os.getpid(), signal.SIGINT))
    try:
        with pytest.raises(KeyboardInterrupt):
            worker.fit(trainer)
    finally:
        signal.signal(signal.SIGINT, previous)


# ---- a changed epochs target ---------------------------------------------------------

def interrupt_at(directory, step, epochs, schedule="cosine", every="4steps"):
    """Train with checkpoints and stop (as a crash would) right after ``step``, before
    any checkpoint of that step."""
    class Crash(Exception):
        pass

    def crash():
        raise Crash

    net, trainer = worker.make(epochs, schedule=schedule)
    worker._after_step(trainer.optimizer, step, crash)
    with pytest.raises(Crash):
        worker.fit(trainer, directory, every=every)


def test_a_new_epochs_target_applies_to_epochs_started_after_resuming(tmp_path):
    """Checkpointed mid-epoch 3 of 4 on a cosine schedule, resumed with 7 epochs: epoch
    3 keeps its rate, epochs 4-7 follow the schedule over 7 epochs."""
    interrupt_at(tmp_path, 2 * STEPS_PER_EPOCH + 4, epochs=4, every="1step")
    _, history = resumed(tmp_path, epochs=7)
    cosine = gpubp.CosineLR()
    expected = [0.5 * cosine.factor(e, 4) for e in range(3)] + \
        [0.5 * cosine.factor(e, 7) for e in range(3, 7)]
    assert history["lr"] == expected


def test_extending_a_constant_schedule_equals_the_longer_run(tmp_path):
    interrupt_at(tmp_path, 3 * STEPS_PER_EPOCH + 1, epochs=4, schedule="constant")
    assert_same_run(reference(7, schedule="constant"),
                    resumed(tmp_path, epochs=7, schedule="constant"))


def test_resuming_a_finished_run_with_more_epochs_continues_it(tmp_path):
    net, trainer = worker.make(4, schedule="constant")
    worker.fit(trainer, tmp_path, every="3epochs")  # writes epoch 3 and the final epoch 4
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        checkpoint.checkpoint_path(tmp_path, s).name for s in (18, 24)]
    assert_same_run(reference(6, schedule="constant"),
                    resumed(tmp_path, epochs=6, schedule="constant"))


def test_an_epochs_target_below_the_checkpoint_is_refused(tmp_path):
    interrupt_at(tmp_path, 3 * STEPS_PER_EPOCH + 1, epochs=6)
    with pytest.raises(CheckpointMismatchError, match="epochs: .* already started epoch 3"):
        resumed(tmp_path, epochs=2)


# ---- faults while saving, corrupt files ----------------------------------------------

def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    writer, writes = checkpoint.atomic_writer, []

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[:len(data) // 3])
            raise OSError(errno.ENOSPC, "No space left on device")

    @contextlib.contextmanager
    def filling_writer(path):
        writes.append(path)
        with writer(path) as f:
            yield FullDisk(f) if len(writes) == 3 else f

    monkeypatch.setattr(checkpoint, "atomic_writer", filling_writer)
    net, trainer = worker.make(EPOCHS)
    with pytest.raises(OSError) as info:
        worker.fit(trainer, tmp_path, every="4steps")
    assert info.value.errno == errno.ENOSPC
    assert sorted(set(os.listdir(tmp_path)) - {checkpoint.LOCK}) == [
        checkpoint.checkpoint_path(tmp_path, s).name for s in (4, 8)]  # no partial or temporary
    monkeypatch.setattr(checkpoint, "atomic_writer", writer)
    assert_same_run(reference(), resumed(tmp_path))


def test_failed_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("000012.ckpt"):
            raise OSError(errno.EIO, "I/O error")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    net, trainer = worker.make(EPOCHS)
    with pytest.raises(OSError, match="I/O error"):
        worker.fit(trainer, tmp_path, every="4steps")
    monkeypatch.setattr(os, "replace", replace)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)][-1].endswith("000008.ckpt")
    assert_same_run(reference(), resumed(tmp_path))


def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[:len(data) // 2]))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flip":
        data[len(data) * 2 // 3] ^= 0x10
        path.write_bytes(bytes(data))
    elif how == "magic":
        path.write_bytes(b"NOTGPUBP" + bytes(data[8:]))


@pytest.mark.parametrize("how", ["truncate", "empty", "flip", "magic"])
def test_corrupt_newest_checkpoint_is_skipped_for_the_previous(tmp_path, how):
    interrupt_at(tmp_path, 17, epochs=EPOCHS)
    newest, previous = checkpoint.list_checkpoints(tmp_path)[::-1][:2]
    damage(newest, how)
    with pytest.raises(CheckpointError):
        checkpoint.read_checkpoint(newest)
    _, state = checkpoint.read_checkpoint(previous)
    assert state["step"] == 12
    with pytest.warns(CheckpointWarning, match=f"skipping checkpoint {newest}"):
        net, history = resumed(tmp_path)
    assert_same_run(reference(), (net, history))


def test_resume_with_every_checkpoint_corrupt_is_an_error(tmp_path):
    interrupt_at(tmp_path, 9, epochs=EPOCHS)
    for path in checkpoint.list_checkpoints(tmp_path):
        damage(path, "flip")
    net, trainer = worker.make(EPOCHS)
    before = net.state()
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="no complete"):
        worker.fit(trainer, tmp_path, resume=True)
    assert all(np.array_equal(p, q) for p, q in zip(net.parameters(), before))


def test_rotation_keeps_the_last_n(tmp_path):
    net, trainer = worker.make(3)
    worker.fit(trainer, tmp_path, every="1step", keep_last=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        checkpoint.checkpoint_path(tmp_path, s).name for s in (17, 18)]


# ---- wrong runs and bad arguments ----------------------------------------------------

@pytest.mark.parametrize("change,message", [
    (lambda net, t: setattr(t, "batch_size", 4), "batch_size=8, this run has batch_size=4"),
    (lambda net, t: setattr(t, "seed", 9), "seed=3, this run has seed=9"),
    (lambda net, t: setattr(t.optimizer, "momentum", 0.5), "optimizer="),
    (lambda net, t: setattr(t, "net", gpubp.MLP((5, 8, 3), backend="numpy", seed=0)),
     "layer_sizes=.5, 7, 3."),
])
def test_resume_refuses_a_different_run(tmp_path, change, message):
    interrupt_at(tmp_path, 9, epochs=EPOCHS)
    net, trainer = worker.make(EPOCHS)
    change(net, trainer)
    before = trainer.net.state()
    with pytest.raises(CheckpointMismatchError, match=f"resume: .*{message}"):
        worker.fit(trainer, tmp_path, resume=True)
    assert all(np.array_equal(p, q) for p, q in zip(trainer.net.parameters(), before))


def test_resume_refuses_different_data(tmp_path):
    interrupt_at(tmp_path, 9, epochs=EPOCHS)
    net, trainer = worker.make(EPOCHS)
    X, y = worker.blobs()
    X[0, 0] += 1
    with pytest.raises(CheckpointMismatchError, match="data_sha256"):
        trainer.fit(X, y, validation=0.2, checkpoint_dir=tmp_path, resume=True,
                    checkpoint_every="4steps")


@pytest.mark.parametrize("kwargs,error,message", [
    ({"checkpoint_every": "4steps"}, ValueError, "checkpoint_dir: needed"),
    ({"resume": True}, ValueError, "checkpoint_dir: needed"),
    ({"checkpoint_dir": "D", "checkpoint_every": "often"}, ValueError, "checkpoint_every: "),
    ({"checkpoint_dir": "D", "checkpoint_every": 0}, ValueError, "checkpoint_every: must be"),
    ({"checkpoint_dir": "D", "checkpoint_every": "0steps"}, ValueError, "checkpoint_every: "),
    ({"checkpoint_dir": "D", "keep_last": 0}, ValueError, "keep_last: must be >= 1"),
    ({"checkpoint_dir": "D", "resume": "yes"}, TypeError, "resume: expected a bool"),
    ({"checkpoint_dir": 3}, TypeError, "checkpoint_dir: expected a path"),
    ({"checkpoint_dir": "D", "resume": True}, CheckpointError, "resume: no complete checkpoint"),
])
def test_bad_checkpoint_arguments_change_nothing(tmp_path, monkeypatch, kwargs, error, message):
    monkeypatch.chdir(tmp_path)
    net, trainer = worker.make(EPOCHS)
    before = net.state()
    X, y = worker.blobs()
    with pytest.raises(error, match=message):
        trainer.fit(X, y, **kwargs)
    assert all(np.array_equal(p, q) for p, q in zip(net.parameters(), before))
    assert not checkpoint.list_checkpoints(tmp_path / "D")


def test_checkpoint_every_forms():
    from gpubp.training_state import parse_every

    assert parse_every(None) == (1, "epochs") and parse_every(3) == (3, "epochs")
    assert parse_every("500steps") == (500, "steps") and parse_every("1 step") == (1, "steps")
    assert parse_every("2epochs") == (2, "epochs") and parse_every("7") == (7, "epochs")


def test_a_fresh_run_refuses_a_directory_with_checkpoints(tmp_path):
    interrupt_at(tmp_path, 9, epochs=EPOCHS)
    net, trainer = worker.make(EPOCHS)
    with pytest.raises(ValueError, match="checkpoint_dir: .* already holds checkpoints"):
        worker.fit(trainer, tmp_path)


# ---- the format across backends ------------------------------------------------------

def test_checkpoint_tensors_are_host_arrays_bit_exact(tmp_path):
    """What makes a checkpoint backend-neutral: NumPy arrays in the file, the backend only
    a note in the state, and a JSON state without backend objects."""
    interrupt_at(tmp_path, 9, epochs=EPOCHS, every="1step")
    tensors, state = checkpoint.read_checkpoint(checkpoint.list_checkpoints(tmp_path)[-1])
    assert state["backend"] == "numpy" and state["step"] == 8 and state["batch"] == 2
    assert all(type(t) is np.ndarray for t in tensors.values())
    assert {name.split(".")[0] for name in tensors} == {"param", "velocity", "epoch_start",
                                                        "previous_start"}
    json.dumps(state)  # plain JSON throughout


@pytest.mark.gpu
@pytest.mark.parametrize("first,second", [("cupy", "numpy"), ("numpy", "cupy")])
def test_checkpoint_moves_between_backends(tmp_path, first, second):
    """Written on one backend, resumed on the other: weights and momentum carried over
    bit for bit, and the continued run ends close to the uninterrupted one."""
    class Stop(Exception):
        pass

    def stop():
        raise Stop

    net, trainer = worker.make(EPOCHS, backend=first)
    worker._after_step(trainer.optimizer, 22, stop)
    with pytest.raises(Stop):
        worker.fit(trainer, tmp_path, every="4steps")
    tensors, state = checkpoint.read_checkpoint(checkpoint.list_checkpoints(tmp_path)[-1])
    assert state["backend"] == first and state["step"] == 20

    moved, trainer_b = worker.make(EPOCHS, backend=second)
    seen = []

    def look_then_stop(params, grads):
        seen.append([gpubp.to_numpy(p).copy() for p in params])
        seen.append([gpubp.to_numpy(v).copy() for v in trainer_b.optimizer.velocity])
        raise Stop

    trainer_b.optimizer.step = look_then_stop
    with pytest.raises(Stop):
        worker.fit(trainer_b, tmp_path, resume=True)
    assert type(moved.weights[0]).__module__.split(".")[0] == second
    for i, (p, v) in enumerate(zip(*seen)):
        assert p.tobytes() == tensors[f"param.{i}"].tobytes()
        assert v.tobytes() == tensors[f"velocity.{i}"].tobytes()

    continued, trainer_c = worker.make(EPOCHS, backend=second)
    worker.fit(trainer_c, tmp_path, resume=True)
    uninterrupted, _ = reference(backend=first)
    for p, q in zip(continued.parameters(), uninterrupted.parameters()):
        p, q = gpubp.to_numpy(p), gpubp.to_numpy(q)  # float32 on two backends: close only
        assert np.abs(p - q).max() <= 1e-3 * np.abs(q).max()


# ---- the command line ----------------------------------------------------------------

def test_cli_sigint_then_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    options = ["--layers", "12", "--epochs", "4", "--batch-size", "64", "--backend", "numpy",
               "--quiet"]
    assert main(["train", *options, "--save", str(tmp_path / "full.safetensors")]) == 0

    step, sent = gpubp.SGD.step, []

    def step_then_sigint(self, params, grads):
        step(self, params, grads)
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(gpubp.SGD, "step", step_then_sigint)
    run_dir = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", *options, "--checkpoint-dir", str(run_dir),
                 "--checkpoint-every", "10steps"]) == 130
    err = capsys.readouterr().err
    assert f"gpubp train --resume {run_dir}" in err
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == [
        checkpoint.checkpoint_path(run_dir, 1).name]
    monkeypatch.setattr(gpubp.SGD, "step", step)
    # Only --resume: the options come from the newest checkpoint.
    assert main(["train", "--resume", str(run_dir), "--quiet", "--json",
                 "--save", str(tmp_path / "resumed.safetensors")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 4
    full = gpubp.MLP.load(tmp_path / "full.safetensors", backend="numpy")
    again = gpubp.MLP.load(tmp_path / "resumed.safetensors", backend="numpy")
    for p, q in zip(full.parameters(), again.parameters()):
        assert np.array_equal(p, q)


def test_cli_resume_with_a_new_epochs_target_records_it(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    options = ["--layers", "8", "--batch-size", "128", "--backend", "numpy", "--quiet", "--json"]
    assert main(["train", *options, "--epochs", "2", "--checkpoint-dir", run_dir]) == 0
    assert main(["train", "--resume", run_dir, "--epochs", "3", "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 3
    assert checkpoint.latest_metadata(run_dir)["options"]["epochs"] == 3
    assert main(["train", "--resume", run_dir, "--quiet", "--json"]) == 0  # nothing left
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epochs"] == 3
    assert main(["train", *options, "--epochs", "2", "--checkpoint-dir", run_dir]) == 1
    assert f"already holds checkpoints; continue that run with resume=True (on the " \
        f"command line: gpubp train --resume {run_dir})" in capsys.readouterr().err


def reseal(path, change):
    """Rewrite the checkpoint at ``path`` with ``change(state)`` applied, under a valid
    checksum: what a bad disk cannot do, but a hand edit or a bug could."""
    tensors, state = checkpoint.read_checkpoint(path)
    change(state)
    step = int(checkpoint.NAME.fullmatch(path.name).group(1))
    checkpoint.write_checkpoint(path.parent, step, tensors, state)


def two_runs_of_options(tmp_path):
    """A CLI run of 2 epochs, resumed to 3: the newest checkpoint records epochs=3, the one
    before it epochs=2. Returns (run directory, [checkpoint paths, oldest first])."""
    run_dir = tmp_path / "run"
    options = ["--layers", "8", "--batch-size", "256", "--backend", "numpy", "--quiet"]
    assert main(["train", *options, "--epochs", "2", "--checkpoint-dir", str(run_dir)]) == 0
    assert main(["train", "--resume", str(run_dir), "--epochs", "3", "--quiet"]) == 0
    saved = checkpoint.list_checkpoints(run_dir)
    assert [checkpoint.read_checkpoint(p)[1]["metadata"]["options"]["epochs"]
            for p in saved[-2:]] == [2, 3]
    return run_dir, saved


@pytest.mark.parametrize("key,value", [("lr", 10**400), ("layers", [10**400]),
                                       ("epochs", "three"), ("options", None)],
                         ids=["lr", "layers", "epochs", "options"])
def test_cli_resume_skips_a_checkpoint_whose_options_are_invalid(tmp_path, capsys, key,
                                                                  value):
    """Invalid recorded options make a checkpoint unusable like an unreadable one: the run
    resumes from the previous checkpoint, with that checkpoint's own options."""
    run_dir, saved = two_runs_of_options(tmp_path)

    def spoil(state):
        if key == "options":
            state["metadata"]["options"] = ["not", "an", "object"]
        else:
            state["metadata"]["options"][key] = value

    reseal(saved[-1], spoil)
    capsys.readouterr()
    with pytest.warns(CheckpointWarning, match=f"skipping checkpoint {re.escape(str(saved[-1]))}"):
        assert main(["train", "--resume", str(run_dir), "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    # The previous checkpoint's options (epochs=2), and its weights: nothing left to train.
    assert json.loads(captured.out)["epochs"] == 2
    assert saved[-1].exists()  # never deleted
    # Training on writes a new checkpoint at its name: it is moved aside, not overwritten.
    with pytest.warns(CheckpointWarning) as caught:
        assert main(["train", "--resume", str(run_dir), "--epochs", "3", "--quiet"]) == 0
    assert any("moved to" in str(w.message) for w in caught)
    assert saved[-1].with_name(saved[-1].name + checkpoint.UNREADABLE).exists()
    assert checkpoint.latest_metadata(run_dir)["options"]["epochs"] == 3


def test_cli_resume_refuses_options_of_a_checkpoint_it_cannot_resume(tmp_path, capsys):
    """The options come from the newest checkpoint; when the trainer cannot resume that
    one (its state is bad under a valid checksum) and the previous one records other
    options, the error names the file to move aside, never mixes the two."""
    run_dir, saved = two_runs_of_options(tmp_path)
    reseal(saved[-1], lambda state: state.update(lr=-1.0))
    capsys.readouterr()
    with pytest.warns(CheckpointWarning, match=f"skipping checkpoint {re.escape(str(saved[-1]))}"):
        assert main(["train", "--resume", str(run_dir), "--json", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"Move {saved[-1]} aside" in err and "--epochs" in err
    assert saved[-1].exists()
    # Given on the command line, the differing option no longer matters.
    with pytest.warns(CheckpointWarning):
        assert main(["train", "--resume", str(run_dir), "--json", "--quiet",
                     "--epochs", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 3


@pytest.mark.parametrize("content,message", [
    ("[" * 100000, "unreadable run options"),
    ('{"layers": "abc"}', "option layers is 'abc', expected list"),
    ('{"epochs": true}', "option epochs is True, expected int"),
    ('{"checkpoint_every": [1]}', "option checkpoint_every is .1., expected str or int"),
])
def test_cli_bad_run_options_are_clear_errors(tmp_path, capsys, content, message):
    (tmp_path / "run.json").write_text(content)
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 1
    assert re.search(message, capsys.readouterr().err)


def test_cli_checkpoint_errors(tmp_path, capsys):
    assert main(["train", "--checkpoint-every", "5", "--quiet"]) == 1
    assert "--checkpoint-every: needs --checkpoint-dir" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "none"), "--quiet"]) == 1
    assert "--resume: " in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 1
    assert "resume: no complete checkpoint" in capsys.readouterr().err


def test_a_diverging_run_writes_no_checkpoint_it_could_not_resume(tmp_path, caplog):
    X, y = worker.blobs()
    net = gpubp.MLP((5, 7, 3), backend="numpy", seed=0)
    trainer = gpubp.Trainer(net, gpubp.SGD(1e36, momentum=0.5), batch_size=4, epochs=5,
                            seed=0, progress=False)
    with np.errstate(all="ignore"), pytest.raises(gpubp.DivergenceError):
        trainer.fit(X * 1e3, y, checkpoint_dir=tmp_path, checkpoint_every="1step", keep_last=50)
    assert "not writing a checkpoint" in caplog.text  # steps with non-finite weights came
    saved = checkpoint.list_checkpoints(tmp_path)
    assert saved
    for path in saved:
        tensors, state = checkpoint.read_checkpoint(path)
        assert all(np.isfinite(t).all() for t in tensors.values())
        assert state["batch"] == 0 or math.isfinite(state["loss_sum"])

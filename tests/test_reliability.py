"""Nothing lost, nothing hung: checkpoint directories, saves and training state under
hostile conditions. One test (or more) per item of the hostile-testing report; the
loaders' own cases (FIFOs, decompression bombs, downloads) are in test_hostile_inputs.py."""

import json
import math
import os
import stat
import subprocess
import sys
import time
import warnings

import checkpoint_worker as worker
import numpy as np
import pytest

import gpubp
from gpubp import checkpoint, fileio
from gpubp.checkpoint import CheckpointWarning
from gpubp.cli import main
from gpubp.errors import ModelFileError

STEPS_PER_EPOCH = 6
EPOCHS = 8
ROOT = os.geteuid() == 0  # permissions do not stop root


def interrupted_run(directory, at, **kwargs):
    """A run SIGINT-ed after step ``at`` (checkpoints every 4 steps), in-process."""
    net, trainer = worker.make(EPOCHS)
    worker._after_step(trainer.optimizer, at, lambda: os.kill(os.getpid(), 2))
    with pytest.raises(gpubp.TrainingInterrupted):
        worker.fit(trainer, directory, every="4steps", **kwargs)


def resume(directory, epochs=EPOCHS, **kwargs):
    net, trainer = worker.make(epochs)
    history = worker.fit(trainer, directory, resume=True, every="4steps", **kwargs)
    return net, history


def same_weights(a, b) -> bool:
    return all(np.array_equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


# ---- 1. rotation never deletes what a resumed run wrote ----------------------------------

def test_rotation_keeps_verified_checkpoints_past_an_unreadable_newer_one(tmp_path):
    interrupt = 9
    interrupted_run(tmp_path, interrupt)  # checkpoints at steps 4, 8, 9
    newest = checkpoint.list_checkpoints(tmp_path)[-1]
    bad = checkpoint.checkpoint_path(tmp_path, 40)
    bad.write_bytes(newest.read_bytes()[:1000])  # a truncated copy, far ahead
    with pytest.warns(CheckpointWarning):
        net, _ = resume(tmp_path, keep_last=1)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    final = checkpoint.checkpoint_path(tmp_path, EPOCHS * STEPS_PER_EPOCH).name
    assert final in names  # the run's own final checkpoint survived its rotation
    assert bad.exists() or bad.with_name(bad.name + checkpoint.UNREADABLE).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        again, history = resume(tmp_path)  # the next resume finds the finished run
    assert same_weights(net, again) and len(history) == EPOCHS


def test_a_file_that_does_not_verify_is_moved_aside_not_overwritten(tmp_path):
    interrupted_run(tmp_path, 9)
    target = checkpoint.checkpoint_path(tmp_path, 12)
    target.write_bytes(b"not a checkpoint, but someone's file")
    with pytest.warns(CheckpointWarning, match="moved to"):
        resume(tmp_path)
    aside = target.with_name(target.name + checkpoint.UNREADABLE)
    assert aside.read_bytes() == b"not a checkpoint, but someone's file"


def test_the_interrupt_message_names_a_file_that_exists(tmp_path):
    interrupted_run(tmp_path, 9)
    checkpoint.checkpoint_path(tmp_path, 40).write_bytes(b"junk")
    net, trainer = worker.make(EPOCHS)
    worker._after_step(trainer.optimizer, 3, lambda: os.kill(os.getpid(), 2))
    with pytest.warns(CheckpointWarning), pytest.raises(gpubp.TrainingInterrupted) as info:
        worker.fit(trainer, tmp_path, resume=True, every="4steps", keep_last=1)
    assert info.value.path.is_file() and str(info.value.path) in str(info.value)


# ---- 7. a newest "checkpoint" that is not a regular file ---------------------------------

def gpubp_cli(*args, timeout=120):
    """The gpubp command in a subprocess, so that a hang fails the test by its timeout."""
    done = subprocess.run([sys.executable, "-m", "gpubp", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def make_odd(path, kind):
    if kind == "fifo":
        os.mkfifo(path)  # no writer: a blocking open would wait forever
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(path.parent / "nowhere")


@pytest.mark.parametrize("kind", ["fifo", "device", "directory", "dangling"])
def test_a_newest_checkpoint_that_is_not_a_regular_file_is_skipped(tmp_path, kind):
    """A FIFO, a link to /dev/zero, a directory or a dangling link at a checkpoint's
    name: resume falls back to the newest good checkpoint, with a warning naming it, never
    opens it, and neither rotation nor a new checkpoint at its name deletes it."""
    run = tmp_path / "r2"
    options = ["--layers", "8", "--batch-size", "256", "--quiet", "--keep-last", "1"]
    code, _, err = gpubp_cli("train", *options, "--epochs", "2", "--checkpoint-dir", run)
    assert code == 0, err
    (done,) = checkpoint.list_checkpoints(run)
    steps = int(checkpoint.NAME.fullmatch(done.name).group(1)) // 2  # a run of 2 epochs
    odd = checkpoint.checkpoint_path(run, 99_999)  # the newest by name
    in_the_way = checkpoint.checkpoint_path(run, 3 * steps)  # the name epoch 3 writes
    make_odd(odd, kind)
    make_odd(in_the_way, kind)
    code, out, err = gpubp_cli("train", "--resume", run, "--epochs", "3", "--json", *options)
    assert code == 0, err
    assert json.loads(out)["epochs"] == 3
    assert str(odd) in err and "not a regular file" in err and "Traceback" not in err
    names = {p.name for p in run.iterdir()}
    assert odd.name in names and in_the_way.name in names  # a new checkpoint took the name
    assert in_the_way.name + checkpoint.UNREADABLE in names  # the odd one moved aside
    assert [p.name for p in checkpoint.list_checkpoints(run)] == [in_the_way.name]
    assert os.path.lexists(odd) and not odd.is_file()


@pytest.mark.parametrize("name", [".lock", ".ckpt-000000000004.ckpt.0123456789ab.tmp"])
def test_a_fifo_where_gpubp_must_write_is_still_refused(tmp_path, name):
    os.mkfifo(tmp_path / name)
    unchanged_after(tmp_path, tmp_path, ValueError, "is not a regular file")


# ---- 4. one writer per directory ------------------------------------------------------

def test_a_second_run_on_a_locked_directory_fails_at_once_naming_the_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from gpubp import checkpoint; "
         f"d = checkpoint.CheckpointDirectory({str(tmp_path)!r}).open(); "
         "print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        net, trainer = worker.make(EPOCHS)
        before = net.state()
        started = time.monotonic()
        with pytest.raises(ValueError, match=f"in use by another run \\(process {holder.pid}\\)"):
            worker.fit(trainer, tmp_path, every="4steps")
        assert time.monotonic() - started < 5
        assert all(np.array_equal(p, q) for p, q in zip(net.parameters(), before))
    finally:
        holder.kill()
        holder.wait()
    net, trainer = worker.make(EPOCHS)
    worker.fit(trainer, tmp_path, every="4steps")  # the lock went with its process


def test_the_lock_is_held_for_the_whole_run_and_released_after(tmp_path):
    net, trainer = worker.make(2)
    seen = []

    def try_second(record):
        with pytest.raises(ValueError, match=f"process {os.getpid()}"):
            checkpoint.CheckpointDirectory(tmp_path).open()
        seen.append(record["epoch"])

    trainer.on_epoch = try_second
    worker.fit(trainer, tmp_path)
    assert seen == [1, 2]
    checkpoint.CheckpointDirectory(tmp_path).open().close()


# ---- 5, 6. checked before the first step; nothing created when refused ------------------

def unchanged_after(tmp_path, checkpoint_dir, error, match, **kwargs):
    net, trainer = worker.make(EPOCHS)
    before = net.state()
    steps = []
    step = trainer.optimizer.step
    trainer.optimizer.step = lambda p, g: (steps.append(1), step(p, g))
    with pytest.raises(error, match=match):
        worker.fit(trainer, checkpoint_dir, **kwargs)
    assert not steps and all(np.array_equal(p, q) for p, q in zip(net.parameters(), before))


def test_a_checkpoint_dir_that_is_a_file_fails_before_the_first_step(tmp_path):
    (tmp_path / "file").write_text("x")
    unchanged_after(tmp_path, tmp_path / "file", ValueError, "exists and is not a directory")
    unchanged_after(tmp_path, tmp_path / "file" / "run", ValueError, "which is not a directory")


def test_a_directory_in_place_of_a_temporary_name_fails_before_the_first_step(tmp_path):
    (tmp_path / ".ckpt-000000000004.ckpt.0123456789ab.tmp").mkdir()
    unchanged_after(tmp_path, tmp_path, ValueError, "is not a regular file")
    (tmp_path / ".ckpt-000000000004.ckpt.0123456789ab.tmp").rmdir()


@pytest.mark.skipif(ROOT, reason="permissions do not stop root")
def test_an_unwritable_checkpoint_dir_fails_before_the_first_step(tmp_path):
    tmp_path.chmod(0o555)
    try:
        unchanged_after(tmp_path, tmp_path / "run", ValueError, "permission denied")
    finally:
        tmp_path.chmod(0o755)


@pytest.mark.parametrize("flags,message", [
    (["--keep-last", "0"], "keep-last: must be >= 1"),
    (["--checkpoint-every", "0steps"], "checkpoint_every: must be >= 1"),
    (["--checkpoint-every", "soon"], "checkpoint_every: expected"),
    (["--schedule", "step", "--step-size", "0"], "step_size: must be >= 1"),
    (["--lr", "-1"], "lr: must be > 0"),
])
def test_refused_options_create_nothing(tmp_path, capsys, flags, message):
    run_dir = tmp_path / "run"
    assert main(["train", "--checkpoint-dir", str(run_dir), "--log",
                 str(tmp_path / "log.csv"), "--quiet", *flags]) == 1
    assert message in capsys.readouterr().err
    assert not run_dir.exists() and not (tmp_path / "log.csv").exists()


# ---- 10. huge integers --------------------------------------------------------------------

def test_huge_integers_are_clean_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="lr: must be finite"):
        gpubp.SGD(10**400)
    with pytest.raises(ValueError, match="epochs: must be < 2\\*\\*63"):
        gpubp.Trainer(gpubp.MLP([2, 2], backend="numpy"), gpubp.SGD(0.1), epochs=10**400)
    (tmp_path / "run.json").write_text('{"lr": ' + "9" * 400 + "}")
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "option lr is" in err and "Traceback" not in err


@pytest.mark.parametrize("field,value", [
    ("lr", 10**400), ("elapsed", 10**400), ("loss_sum", -10**400), ("step", 10**400),
    ("history", "record"), ("lr", 0), ("lr", -0.1), ("step", 5), ("batch", 99),
    ("velocity", None), ("best", None),
])
def test_a_checkpoint_with_bad_state_is_skipped_for_the_previous(tmp_path, field, value):
    """A sealed checkpoint is still data: a huge integer, a rate that is not > 0, counters
    that contradict each other, a missing momentum group or early-stopping state in a run
    without early stopping are CheckpointErrors, and resume takes the previous one."""
    interrupted_run(tmp_path, 10)  # checkpoints at steps 4, 8, 10
    newest = checkpoint.list_checkpoints(tmp_path)[-1]
    tensors, state = checkpoint.read_checkpoint(newest)
    if field == "history":
        state["history"]["records"][0]["train_loss"] = 10**400
    elif field == "velocity":
        tensors = {k: v for k, v in tensors.items() if not k.startswith("velocity.")}
    elif field == "best":
        tensors.update({f"best.{i}": tensors[f"param.{i}"] for i in range(4)})
    else:
        state[field] = value
    checkpoint.write_checkpoint(tmp_path, 10, tensors, state)  # re-sealed: a valid checksum
    with pytest.warns(CheckpointWarning, match="skipping checkpoint .*000010.ckpt"):
        net, history = resume(tmp_path)
    net_ref, trainer_ref = worker.make(EPOCHS)
    worker.fit(trainer_ref)
    assert same_weights(net, net_ref)


def test_checkpoint_names_sort_past_10_to_the_12_steps(tmp_path):
    for step in (999_999_999_999, 10**12, 10**13 + 5):
        checkpoint.write_checkpoint(tmp_path, step, {"x": np.zeros(1)}, {})
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "ckpt-999999999999.ckpt", "ckpt-1000000000000.ckpt", "ckpt-10000000000005.ckpt"]


# ---- 11. networks that cannot fit -----------------------------------------------------------

def test_a_network_too_large_for_memory_is_a_one_line_error(capsys):
    assert main(["train", "--layers", "100000000", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("gpubp train: error: layer_sizes: a network of 7,500,000,010 "
                          "float32 parameters needs about")
    with pytest.raises(ValueError, match="batch_size: training .* needs about"):
        net = gpubp.MLP([2, 8, 2], backend="numpy")
        net.check_training_memory(10**13)


# ---- 13. safetensors headers ------------------------------------------------------------

def test_a_safetensors_header_naming_a_tensor_twice_is_refused(tmp_path):
    net = gpubp.MLP([3, 2], backend="numpy", seed=0)
    net.save(tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n].decode()
    entry = header[header.index('"W1"'):header.index("}", header.index('"W1"')) + 1]
    doubled = header.replace(entry, entry + "," + entry, 1).encode()
    (tmp_path / "dup.safetensors").write_bytes(
        len(doubled).to_bytes(8, "little") + doubled + data[8 + n:])
    with pytest.raises(ModelFileError, match="names 'W1' twice"):
        gpubp.MLP.load(tmp_path / "dup.safetensors")


# ---- 15, 16. temporary files and saved files ------------------------------------------------

def test_a_killed_save_leaves_a_temporary_file_the_next_save_removes(tmp_path):
    target = tmp_path / "m.safetensors"
    code = ("import os, signal, gpubp, gpubp.fileio as f\n"
            "net = gpubp.MLP([3, 2], backend='numpy')\n"
            "with f.atomic_writer(" + repr(str(target)) + ") as out:\n"
            "    out.write(b'partial')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code], timeout=60)
    stale = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(stale) == 1 and stale[0].name.startswith(".m.safetensors.")
    old = time.time() - 3600
    unrelated = tmp_path / ".other.0123456789ab.tmp"
    unrelated.write_text("not ours")
    os.utime(unrelated, (old, old))
    gpubp.MLP([3, 2], backend="numpy").save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [unrelated.name, target.name]


def test_a_killed_saves_temporary_file_is_removed_by_an_immediate_save(tmp_path):
    """No waiting period: a writer holds an flock on its temporary file for as long as it
    exists, so one that nobody holds is a dead writer's, however new."""
    target = tmp_path / "m.safetensors"
    code = ("import os, signal, gpubp.fileio as f\n"
            "with f.atomic_writer(" + repr(str(target)) + ") as out:\n"
            "    out.write(b'partial'); out.flush()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == -9
    (stale,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert time.time() - stale.stat().st_mtime < 5  # just now
    gpubp.MLP([3, 2], backend="numpy").save(target)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_another_live_processs_temporary_file_is_not_removed(tmp_path):
    target = tmp_path / "m.safetensors"
    code = ("import sys, gpubp.fileio as f\n"
            "with f.atomic_writer(" + repr(str(target)) + ") as out:\n"
            "    out.write(b'theirs'); out.flush()\n"
            "    print('writing', flush=True); sys.stdin.readline()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "writing"
        (live,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        old = time.time() - 3600
        os.utime(live, (old, old))  # however old it looks
        with fileio.atomic_writer(target) as f:
            f.write(b"ours")
        assert live.exists()
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0  # its save completed: it was not disturbed
    finally:
        holder.kill()
        holder.wait()
    assert target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_temporary_file_taken_for_stale_before_its_writer_locks_it(tmp_path, monkeypatch):
    """Between creating its temporary file and locking it, a writer's file looks
    abandoned to another save, which may remove it; the writer then starts again on a
    new name instead of losing its save."""
    target = tmp_path / "m.safetensors"
    flock, removed = fileio.fcntl.flock, []

    def another_save_first(fd, op):
        if not removed:  # the first lock the writer takes: another save removes its file
            (tmp,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            removed.append(tmp)
            fileio.remove_if_abandoned(tmp)
        return flock(fd, op)

    monkeypatch.setattr(fileio.fcntl, "flock", another_save_first)
    with fileio.atomic_writer(target) as f:
        f.write(b"saved")
    assert removed and not removed[0].exists()
    assert target.read_bytes() == b"saved"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_live_writers_temporary_file_is_not_removed(tmp_path):
    target = tmp_path / "m.safetensors"
    with fileio.atomic_writer(target) as f:
        f.write(b"in progress")
        (live,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        old = time.time() - 3600
        os.utime(live, (old, old))
        fileio.remove_stale_temporaries(target)  # another save to the same path
        assert live.exists()
    assert target.read_bytes() == b"in progress"


def test_a_250_character_name_saves(tmp_path):
    target = tmp_path / ("m" * 238 + ".safetensors")
    assert len(target.name) == 250
    net = gpubp.MLP([3, 2], backend="numpy", seed=1)
    net.save(target)
    assert same_weights(gpubp.MLP.load(target), net)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_resaving_keeps_the_files_mode(tmp_path):
    target = tmp_path / "m.safetensors"
    net = gpubp.MLP([3, 2], backend="numpy")
    net.save(target)
    target.chmod(0o600)
    net.save(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_check_writable_refuses_what_a_write_would_fail_on(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--save: .* is a directory"):
        fileio.check_writable(tmp_path, "--save")
    with pytest.raises(ValueError, match="lies under .*file, which is not a directory"):
        fileio.check_writable(tmp_path / "file" / "m.safetensors", "--save")
    assert fileio.check_writable(tmp_path / "new" / "deeper" / "m.safetensors") \
        == tmp_path / "new" / "deeper" / "m.safetensors"
    assert not (tmp_path / "new").exists()  # nothing created


def test_json_run_options_keep_their_types(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", "--layers", "4", "--epochs", "1", "--quiet",
                 "--checkpoint-dir", str(run_dir)]) == 0
    options = checkpoint.latest_metadata(run_dir)["options"]
    assert options["layers"] == [4] and options["epochs"] == 1
    assert json.loads(json.dumps(options)) == options
    assert math.isclose(options["lr"], 0.3)


def test_a_log_with_a_huge_integer_is_a_clean_error(tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    log.write_text(json.dumps({"epoch": 1, "lr": 10**400, "train_loss": 1.0, "val_loss": None,
                               "val_accuracy": None, "wall_time": 1.0,
                               "samples_per_s": 1.0}) + "\n")
    assert main(["plot", str(log), "--out", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err
    assert "not a log row" in err and "Traceback" not in err


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous(tmp_path, monkeypatch):
    interrupted_run(tmp_path, 10)
    newest = checkpoint.list_checkpoints(tmp_path)[-1]
    read = checkpoint.read_checkpoint

    def denied(path):
        if path == newest:
            raise PermissionError(13, "Permission denied", str(path))
        return read(path)

    monkeypatch.setattr(checkpoint, "read_checkpoint", denied)
    with pytest.warns(CheckpointWarning, match="Permission denied"):
        net, history = resume(tmp_path)
    assert len(history) == EPOCHS

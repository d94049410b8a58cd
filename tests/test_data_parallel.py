"""Data-parallel training under mpiexec: N ranks equal one process (to rounding), and a
checkpoint written with N ranks resumes with M. Skipped without mpi4py and mpiexec."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_distributed import _mpiexec

HERE = Path(__file__).resolve().parent
WORKER = HERE / "data_parallel_worker.py"


def run(n, spec):
    """The worker under ``mpiexec -n n`` (n > 1) or as one plain process (n == 1)."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("OMPI_", "PMI", "PMIX_"))}
    environment["PYTHONPATH"] = str(HERE.parent)
    command = [sys.executable, str(WORKER), json.dumps(spec)]
    if n > 1:
        command = _mpiexec() + ["-n", str(n)] + command
    done = subprocess.run(command, capture_output=True, text=True, timeout=180,
                          env=environment, cwd=HERE)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def result(path):
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}


def assert_same_training(a, b):
    for key in a:
        if key.startswith("arr_") or key in ("train_loss", "val_loss"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-13, err_msg=key)
    np.testing.assert_array_equal(a["val_accuracy"], b["val_accuracy"])


@pytest.mark.parametrize("n", [2, 3, 4])
def test_n_ranks_train_the_same_network_as_one_process(tmp_path, n):
    """A global batch of 10 split over n ranks (3: 4, 3 and 3 rows; the last batch of 2
    rows leaves a rank idle), gradients summed, the 18 validation rows evaluated in
    shares and reduced: the same weights and history as one process, to float64
    rounding."""
    pytest.importorskip("mpi4py")
    run(1, {"epochs": 3, "out": str(tmp_path / "one.npz")})
    run(n, {"epochs": 3, "out": str(tmp_path / "many.npz"), "batch": 10})
    one, many = result(tmp_path / "one.npz"), result(tmp_path / "many.npz")
    assert int(many["size"]) == n
    assert_same_training(one, many)


@pytest.mark.parametrize("first,second,stop_rank", [(2, 1, 0), (2, 3, 1), (1, 3, 0)])
def test_a_checkpoint_resumes_with_another_rank_count(tmp_path, first, second, stop_rank):
    """Stopped mid-epoch by SIGTERM on one rank, the root or another (every rank stops at
    the same step, rank 0 checkpoints), then resumed with a different number of ranks:
    the uninterrupted run's result."""
    pytest.importorskip("mpi4py")
    run(1, {"epochs": 4, "out": str(tmp_path / "whole.npz")})
    directory = str(tmp_path / "run")
    stopped = run(first, {"epochs": 4, "dir": directory, "stop_at": 13,
                          "stop_rank": stop_rank})
    lines = [line for line in stopped.stdout.splitlines() if "interrupted" in line]
    assert len(lines) == first and len({line.split(": ", 1)[1] for line in lines}) == 1, \
        stopped.stdout  # every rank stopped, at the one checkpoint
    run(second, {"epochs": 4, "dir": directory, "resume": True,
                 "out": str(tmp_path / "resumed.npz")})
    assert_same_training(result(tmp_path / "whole.npz"), result(tmp_path / "resumed.npz"))


def test_a_rank_killed_mid_epoch_ends_the_job_and_its_checkpoints_resume_with_other_ranks(
        tmp_path):
    """SIGKILL on the last of 2 ranks at step 21 (epoch 3 of 4, mid-epoch): the job exits
    non-zero within the timeout, never hangs; resuming from the newest checkpoint (step 20)
    with 3 ranks gives the uninterrupted run's result."""
    pytest.importorskip("mpi4py")
    run(1, {"epochs": 4, "out": str(tmp_path / "whole.npz")})
    directory = str(tmp_path / "run")
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("OMPI_", "PMI", "PMIX_"))}
    environment["PYTHONPATH"] = str(HERE.parent)
    killed = subprocess.run(_mpiexec() + ["-n", "2", sys.executable, str(WORKER),
                                          json.dumps({"epochs": 4, "dir": directory,
                                                      "kill_at": 21})],
                            capture_output=True, text=True, timeout=120, env=environment,
                            cwd=HERE)
    assert killed.returncode != 0, killed.stdout + killed.stderr
    newest = max(Path(directory).glob("ckpt-*.ckpt")).name
    assert newest == "ckpt-000000000020.ckpt"  # every 4 steps; the kill came at step 21
    run(3, {"epochs": 4, "dir": directory, "resume": True, "out": str(tmp_path / "resumed.npz")})
    assert_same_training(result(tmp_path / "whole.npz"), result(tmp_path / "resumed.npz"))


def test_mpiexec_gpubp_train_reports_once_and_matches_one_process(tmp_path):
    """`mpiexec -n 2 gpubp train`: one JSON object (rank 0's), one model file, and the
    single process's result; `gpubp info` lists both ranks."""
    pytest.importorskip("mpi4py")
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("OMPI_", "PMI", "PMIX_"))}
    environment["PYTHONPATH"] = str(HERE.parent)
    options = ["train", "--epochs", "3", "--dtype", "float64", "--json", "--quiet"]
    alone = subprocess.run([sys.executable, "-m", "gpubp", *options, "--save",
                            str(tmp_path / "one.safetensors")], capture_output=True, text=True,
                           timeout=180, env=environment)
    two = subprocess.run(_mpiexec() + ["-n", "2", sys.executable, "-m", "gpubp", *options,
                                       "--save", str(tmp_path / "two.safetensors")],
                         capture_output=True, text=True, timeout=180, env=environment)
    assert alone.returncode == 0 and two.returncode == 0, two.stderr
    one, many = json.loads(alone.stdout), json.loads(two.stdout)  # exactly one object each
    assert many["test_accuracy"] == pytest.approx(one["test_accuracy"], abs=1 / 359)
    assert many["train_loss"] == pytest.approx(one["train_loss"], rel=1e-9)
    info = subprocess.run(_mpiexec() + ["-n", "2", sys.executable, "-m", "gpubp", "info",
                                        "--json", "--backend", "numpy"],
                          capture_output=True, text=True, timeout=180, env=environment)
    facts = json.loads(info.stdout)
    assert [r["rank"] for r in facts["ranks"]["ranks"]] == [0, 1]

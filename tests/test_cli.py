"""The gpubp command line."""

import hashlib
import json
import signal
import subprocess
import sys

import numpy as np
import pytest

import gpubp
from gpubp.cli import main
from gpubp.training_log import COLUMNS, read_log


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_train_with_no_arguments_reaches_97_percent_on_digits(capsys):
    assert main(["train", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # stdout holds the JSON object and nothing else
    assert result["dataset"] == "digits" and result["layer_sizes"] == [64, 128, 10]
    assert result["epochs"] == 100 and result["test_accuracy"] >= 0.97
    assert "epoch 100/100" in captured.err and "test accuracy" in captured.err


def test_train_options_save_and_eval(tmp_path, capsys):
    model = tmp_path / "m.safetensors"
    code = main(["train", "--layers", "32,16", "--epochs", "3", "--batch-size", "50",
                 "--lr", "0.2", "--momentum", "0.5", "--nesterov", "--schedule", "step",
                 "--validation", "0.1", "--patience", "5", "--dtype", "float64", "--seed", "3",
                 "--backend", "numpy", "--save", str(model), "--quiet", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    result = last_json(out)
    assert result["layer_sizes"] == [64, 32, 16, 10] and result["dtype"] == "float64"
    assert result["epochs"] == 3 and result["val_accuracy"] is not None
    assert "epoch 1/" not in out  # quiet: only the summary and the JSON
    assert model.is_file()

    assert main(["eval", str(model), "--dataset", "digits", "--json"]) == 0
    evaluated = last_json(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(result["test_accuracy"])
    assert evaluated["rows"] == result["test_rows"] == 359


def test_train_on_a_user_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.repeat([1, 2], 30)
    X = rng.normal(size=(60, 2)) + 4 * y[:, None]
    rows = ["f1,f2,label"] + [f"{a},{b},{c}" for (a, b), c in zip(X, y)]
    (tmp_path / "d.csv").write_text("\n".join(rows))
    assert main(["train", "--dataset", str(tmp_path / "d.csv"), "--epochs", "20", "--quiet",
                 "--json"]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["layer_sizes"] == [2, 128, 2] and result["test_accuracy"] >= 0.9


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--batch-size", "0", "--quiet"]) == 1
    assert "batch_size: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["train", "--dataset", "nothing.txt"]) == 1
    assert "dataset: expected" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    assert main(["eval", str(tmp_path / "bad.safetensors")]) == 1
    assert "not a readable safetensors file" in capsys.readouterr().err
    assert main(["train", "--layers", "a,b"]) == 2  # argparse's status, without exiting
    assert "--layers: expected comma-separated integers" in capsys.readouterr().err


def test_info_json(capsys):
    assert main(["info", "--json", "--backend", "numpy"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["backend"] == "numpy" and facts["device"] == "cpu"
    assert facts["numpy"] == np.__version__
    assert {"cupy", "cuda_runtime", "cuda_driver"} <= set(facts)


def test_console_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "gpubp", "info", "--backend", "numpy"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "backend: numpy" in done.stdout


# ---- results a user can trust: classes, scaling, whole-file eval, predict ------------------

def gpubp_cli(*args, cwd=None, timeout=120, **kwargs):
    """Run the gpubp command in a subprocess: (exit code, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "gpubp", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, **kwargs)
    return done.returncode, done.stdout, done.stderr


def trained_model(tmp_path, X, y, epochs, **csv):
    """Write (X, y) to tmp_path/d.csv (``csv``: write_csv's options), train on it for
    ``epochs`` epochs and save the model: its path."""
    write_csv(tmp_path / "d.csv", X, y, **csv)
    model = tmp_path / "m.safetensors"
    assert main(["train", "--dataset", str(tmp_path / "d.csv"), "--epochs", str(epochs),
                 "--quiet", "--save", str(model)]) == 0
    return model


def write_csv(path, X, y, header=("a", "b"), label="label", sep=","):
    lines = [sep.join([*header, label])] + [
        sep.join([*(repr(float(v)) for v in row), str(lab)]) for row, lab in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def three_blobs(n=100, labels=(1, 2, 3), seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.array(labels, dtype=object), n)
    centers = {lab: 3 * np.eye(2)[i] if i < 2 else np.zeros(2) for i, lab in enumerate(labels)}
    X = rng.normal(size=(len(y), 2)) + np.array([centers[lab] for lab in y])
    return X, y


@pytest.mark.parametrize("labels,missing", [((1, 2, 3), 1), (("bird", "cat", "dog"), "bird")])
def test_eval_maps_labels_through_the_models_classes(tmp_path, labels, missing):
    """A model trained on {1,2,3} scored 0% on a file holding only 2s and 3s, its labels
    re-indexed per file. Now eval uses the model's classes, and agrees with predict."""
    X, y = three_blobs(labels=labels)
    write_csv(tmp_path / "train.csv", X, y)
    keep = y != missing
    write_csv(tmp_path / "part.csv", X[keep], y[keep])
    model = tmp_path / "m.safetensors"
    code, _, err = gpubp_cli("train", "--dataset", tmp_path / "train.csv", "--epochs", "15",
                             "--save", model, "--quiet")
    assert code == 0, err
    code, out, err = gpubp_cli("eval", model, "--dataset", tmp_path / "part.csv", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["rows"] == keep.sum() == 200 and result["accuracy"] > 0.85
    code, out, err = gpubp_cli("predict", model, tmp_path / "part.csv")
    assert code == 0, err
    predicted = out.splitlines()
    assert predicted[0] == "label" and len(predicted) == 201
    truth = [str(v) for v in y[keep]]
    assert result["accuracy"] == pytest.approx(np.mean([p == t for p, t in
                                                        zip(predicted[1:], truth)]))
    assert result["classes"] == list(labels)
    assert result["per_class"][str(missing)]["support"] == 0
    confusion = np.array(result["confusion"])
    assert confusion.shape == (3, 3) and confusion.sum() == 200
    assert np.trace(confusion) == round(result["accuracy"] * 200)


def test_eval_of_a_file_scores_every_row(tmp_path):
    """`eval PATH` scored the 20% test part of a user's file: 59 of 300 rows."""
    X, y = three_blobs()
    model = trained_model(tmp_path, X, y, 3)
    text = stdout_of(["eval", str(model), "--dataset", str(tmp_path / "d.csv")])
    assert text.startswith(f"{model} on {tmp_path / 'd.csv'}: 300 rows, accuracy ")
    assert "precision" in text and "confusion matrix" in text
    result = json.loads(stdout_of(["eval", str(model), "--dataset", str(tmp_path / "d.csv"),
                                   "--json"]))
    assert result["rows"] == 300
    assert set(result) >= {"rows", "accuracy", "loss", "per_class", "confusion"}
    held_out = json.loads(stdout_of(["eval", str(model), "--dataset", str(tmp_path / "d.csv"),
                                     "--split", "test", "--json"]))
    assert held_out["rows"] == 60  # the part training held out


def stdout_of(argv) -> str:
    """stdout of a successful ``gpubp`` command, run in a subprocess as a user runs it."""
    code, out, err = gpubp_cli(*argv)
    assert code == 0, err
    return out


def test_unscaled_features_train_as_well_as_scaled_ones(tmp_path):
    """Features around 5000 ± 1000 trained to chance; they are now standardized on the
    training rows (and the model applies the same scaling to eval and predict)."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 200)
    X = rng.normal(size=(400, 2)) * 1000 + 5000
    X[:, 0] += 4000 * y
    scaled = (X - X.mean(axis=0)) / X.std(axis=0)
    write_csv(tmp_path / "raw.csv", X, y)
    write_csv(tmp_path / "scaled.csv", scaled, y)
    accuracy = {}
    for name in ("raw", "scaled"):
        out = stdout_of(["train", "--dataset", str(tmp_path / f"{name}.csv"),
                                     "--epochs", "20", "--quiet", "--json",
                                     "--save", str(tmp_path / f"{name}.safetensors")])
        accuracy[name] = json.loads(out)["test_accuracy"]
    assert accuracy["scaled"] > 0.85
    assert abs(accuracy["raw"] - accuracy["scaled"]) <= 0.01
    net = gpubp.MLP.load(tmp_path / "raw.safetensors", backend="numpy")
    assert net.info.scaler.kind == "standard"
    result = json.loads(stdout_of(["eval", str(tmp_path / "raw.safetensors"),
                                               "--dataset", str(tmp_path / "raw.csv"),
                                               "--json"]))
    assert result["accuracy"] > 0.85  # eval scales the raw file as training did
    unscaled = stdout_of(["train", "--dataset", str(tmp_path / "raw.csv"),
                                      "--epochs", "20", "--quiet", "--json", "--scale", "none"])
    assert json.loads(unscaled)["test_accuracy"] < accuracy["raw"]


def test_a_label_column_named_twice_is_an_error(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["label,a,b,c,label"] + [f"{i % 2},{rng.normal()},{rng.normal()},{rng.normal()},"
                                    f"{rng.integers(2)}" for i in range(50)]
    (tmp_path / "dup.csv").write_text("\n".join(rows))
    assert main(["train", "--dataset", str(tmp_path / "dup.csv"), "--quiet"]) == 1
    assert "the label column 'label' appears 2 times" in capsys.readouterr().err


@pytest.mark.parametrize("index,twin", [("0", 4), ("-1", 0), ("4", 0)])
def test_a_label_column_named_twice_is_an_error_when_given_by_index(tmp_path, capsys,
                                                                      index, twin):
    rng = np.random.default_rng(0)
    rows = ["label,a,b,c,label"] + [f"{rng.integers(2)},{rng.normal()},{rng.normal()},"
                                    f"{rng.normal()},{i % 2}" for i in range(50)]
    rows = [",".join(reversed(r.split(","))) if index == "4" else r for r in rows]
    (tmp_path / "dup.csv").write_text("\n".join(rows))
    assert main(["train", "--dataset", str(tmp_path / "dup.csv"), "--label-column", index,
                 "--epochs", "2", "--quiet"]) == 1
    err = capsys.readouterr().err
    at = int(index) % 5
    assert f"dup.csv: the label column {at} is named 'label', and so is column {twin}" in err


def test_a_header_with_other_names_twice_still_trains_by_index(tmp_path, capsys):
    rows = ["y,a,a"] + [f"{i % 2},{i},{-i}" for i in range(40)]
    (tmp_path / "ok.csv").write_text("\n".join(rows))
    assert main(["train", "--dataset", str(tmp_path / "ok.csv"), "--label-column", "0",
                 "--epochs", "1", "--quiet"]) == 0


def test_json_output_pipes_into_a_json_parser(tmp_path):
    code, out, err = gpubp_cli("train", "--epochs", "2", "--json", "--quiet")
    assert code == 0 and json.loads(out)["epochs"] == 2  # the whole of stdout
    code, out, err = gpubp_cli("train", "--epochs", "2", "--json")  # progress to stderr
    assert code == 0 and json.loads(out)["epochs"] == 2 and "epoch   2/2" in err
    code, out, err = gpubp_cli("train", "--batch-size", "0", "--json")
    assert code == 1
    assert json.loads(out) == {"error": {"type": "ValueError",
                                         "message": "batch_size: must be >= 1, got 0"}}
    assert "batch_size: must be >= 1" in err


def test_early_stopping_reports_the_restored_weights(tmp_path, capsys):
    """The JSON's validation figures are the best epoch's, its test figures and the saved
    model those of the restored weights, not of the last epoch."""
    log, model = tmp_path / "run.jsonl", tmp_path / "m.safetensors"
    assert main(["train", "--epochs", "40", "--patience", "2", "--lr", "2", "--quiet",
                 "--json", "--log", str(log), "--save", str(model)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stopped_early"] and result["best_epoch"] < result["epochs"]
    epochs = read_log(log)
    best = epochs[result["best_epoch"] - 1]
    assert result["val_loss"] == best["val_loss"] == min(r["val_loss"] for r in epochs)
    assert result["val_accuracy"] == best["val_accuracy"]
    assert epochs[-1]["val_loss"] > best["val_loss"]  # the last epoch was worse
    evaluated = json.loads(stdout_of(["eval", model, "--dataset", "digits", "--split", "test",
                                      "--json"]))
    assert evaluated["accuracy"] == result["test_accuracy"]
    assert gpubp.MLP.load(model).info.scaler is None  # digits: --scale none by default


def test_save_is_recorded_and_honoured_on_resume(tmp_path, capsys):
    run_dir, model = tmp_path / "run", tmp_path / "m.safetensors"
    common = ["--layers", "8", "--batch-size", "256", "--quiet", "--json"]
    stdout_of(["train", *common, "--epochs", "2", "--checkpoint-dir", run_dir, "--save", model])
    model.unlink()
    out = stdout_of(["train", "--resume", run_dir, "--epochs", "3", "--quiet", "--json"])
    assert json.loads(out)["saved_to"] == str(model)
    assert gpubp.MLP.load(model).info.provenance["epochs"] == 3


@pytest.mark.parametrize("target", ["directory", "under-a-file", "dataset", "test"])
def test_a_bad_save_path_fails_before_training(tmp_path, capsys, target):
    X, y = three_blobs()
    data, test = write_csv(tmp_path / "d.csv", X, y), write_csv(tmp_path / "t.csv", X, y)
    before = data.read_bytes()
    (tmp_path / "file").write_text("x")
    save = {"directory": tmp_path, "under-a-file": tmp_path / "file" / "m.safetensors",
            "dataset": data, "test": test}[target]
    assert main(["train", "--dataset", str(data), "--test", str(test), "--save", str(save),
                 "--epochs", "3"]) == 1
    captured = capsys.readouterr()
    assert "--save: " in captured.err and "epoch" not in captured.out  # nothing trained
    assert data.read_bytes() == before


def test_save_over_the_npz_dataset_is_refused(tmp_path, capsys):
    X, y = three_blobs()
    np.savez(tmp_path / "d.npz", X=X, y=y.astype(np.int64))
    before = (tmp_path / "d.npz").read_bytes()
    assert main(["train", "--dataset", str(tmp_path / "d.npz"), "--save",
                 str(tmp_path / "d.npz"), "--quiet"]) == 1
    assert "would be overwritten" in capsys.readouterr().err
    assert (tmp_path / "d.npz").read_bytes() == before


def test_ctrl_c_without_a_checkpoint_dir_is_one_line_and_130(tmp_path):
    # SIGINT's default action, whatever this process inherited: a pytest-xdist worker
    # ignores SIGINT, and a child would inherit that (Python then installs no handler).
    process = subprocess.Popen([sys.executable, "-m", "gpubp", "train", "--epochs", "100000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = process.stdout.readline()  # "gpubp: training ..." once training starts
    assert line.startswith("gpubp: training")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("gpubp train: error: interrupted by SIGINT; "
                                            "nothing was saved (--checkpoint-dir makes a run "
                                            "resumable)")


def test_log_files_and_plot(tmp_path, capsys):
    for suffix in ("csv", "jsonl"):
        log = tmp_path / f"run.{suffix}"
        assert main(["train", "--epochs", "3", "--validation", "0.1", "--quiet",
                     "--log", str(log)]) == 0
        rows = read_log(log)
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        assert all(set(r) == set(COLUMNS) and r["val_accuracy"] is not None for r in rows)
    assert main(["train", "--epochs", "2", "--log", str(tmp_path / "run.txt")]) == 1
    assert "--log: expected a .csv or .jsonl" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    assert main(["plot", str(tmp_path / "run.csv"), str(tmp_path / "run.jsonl"),
                 "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_resumed_run_rewrites_the_epochs_it_repeats_in_its_log(tmp_path):
    log, run_dir = tmp_path / "run.csv", tmp_path / "run"
    args = ["train", "--layers", "8", "--quiet", "--log", str(log)]
    assert main([*args, "--epochs", "2", "--checkpoint-dir", str(run_dir)]) == 0
    assert main(["train", "--resume", str(run_dir), "--epochs", "4", "--quiet"]) == 0
    assert [r["epoch"] for r in read_log(log)] == [1, 2, 3, 4]


def test_predict_outputs(tmp_path):
    X, y = three_blobs(labels=("bird", "cat", "dog"))
    model = trained_model(tmp_path, X, y, 10, sep=";")
    # features only (no label column), CSV out with probabilities
    (tmp_path / "features.csv").write_text("\n".join(
        ["a,b"] + [f"{a},{b}" for a, b in X]))
    assert main(["predict", str(model), str(tmp_path / "features.csv"), "--proba",
                 "--out", str(tmp_path / "p.csv")]) == 0
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "label,proba_bird,proba_cat,proba_dog" and len(lines) == 301
    probabilities = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:]])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    # npz in (with labels, which are ignored), npz out
    np.savez(tmp_path / "in.npz", X=X, y=y.astype(str))
    assert main(["predict", str(model), str(tmp_path / "in.npz"), "--proba",
                 "--out", str(tmp_path / "p.npz")]) == 0
    with np.load(tmp_path / "p.npz") as out:  # no pickles inside
        assert out["labels"].tolist() == [line.split(",")[0] for line in lines[1:]]
        assert out["classes"].tolist() == ["bird", "cat", "dog"]
        np.testing.assert_allclose(out["proba"], probabilities, rtol=1e-6)
    assert main(["predict", str(model), str(tmp_path / "in.npz"), "--out", str(model)]) == 1


def test_predict_works_in_chunks(tmp_path, monkeypatch, capsys):
    from gpubp import cli

    X, y = three_blobs()
    model = trained_model(tmp_path, X, y, 5)
    capsys.readouterr()
    assert main(["predict", str(model), str(tmp_path / "d.csv")]) == 0
    whole = capsys.readouterr().out
    monkeypatch.setattr(cli, "PREDICT_CHUNK", 7)
    assert main(["predict", str(model), str(tmp_path / "d.csv")]) == 0
    assert capsys.readouterr().out == whole and len(whole.splitlines()) == 301
    np.savez_compressed(tmp_path / "X.npz", X=X)  # .npz input: read 7 rows at a time too
    assert main(["predict", str(model), str(tmp_path / "X.npz")]) == 0
    assert capsys.readouterr().out == whole
    for chunk, name in ((7, "small.npz"), (65536, "whole.npz")):  # .npz output, spooled
        monkeypatch.setattr(cli, "PREDICT_CHUNK", chunk)
        assert main(["predict", str(model), str(tmp_path / "X.npz"), "--proba",
                     "--out", str(tmp_path / name)]) == 0
    with np.load(tmp_path / "small.npz") as small, np.load(tmp_path / "whole.npz") as one:
        assert small.files == one.files and len(small["labels"]) == 300
        assert small["labels"].tolist() == one["labels"].tolist()
        assert small["classes"].tolist() == one["classes"].tolist()
        # other row counts, other GEMM blockings: float32 rounding apart
        np.testing.assert_allclose(small["proba"], one["proba"], rtol=1e-5, atol=1e-7)


def test_a_label_the_model_does_not_know_is_named_with_its_rows(tmp_path, capsys):
    X, y = three_blobs()
    model = trained_model(tmp_path, X, y, 2)
    y_new = y.copy()
    y_new[[4, 9]] = 7
    write_csv(tmp_path / "new.csv", X, y_new)
    assert main(["eval", str(model), "--dataset", str(tmp_path / "new.csv")]) == 1
    err = capsys.readouterr().err
    assert "label 7 (rows 5, 10: 2 in all) is not one of the model's 3 classes [1, 2, 3]" in err


def test_separate_test_file_and_csv_dialects(tmp_path, capsys):
    X, y = three_blobs()
    # a byte order mark, CRLF line ends, a quoted header and tabs, found automatically
    (tmp_path / "bom.csv").write_bytes(
        ("\ufeff" + "\r\n".join(['"a"\t"b"\t"label"'] + [f"{a}\t{b}\t{c}" for (a, b), c
                                                         in zip(X, y)]) + "\r\n").encode())
    assert main(["train", "--dataset", str(tmp_path / "bom.csv"), "--epochs", "10",
                 "--quiet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] > 0.8
    # header-less files separated by semicolons, the label first, and a separate test file
    for name in ("train", "test"):
        (tmp_path / f"{name}.csv").write_text(
            "\n".join(f"{c};{a};{b}" for (a, b), c in zip(X, y)))
    assert main(["train", "--dataset", str(tmp_path / "train.csv"), "--test",
                 str(tmp_path / "test.csv"), "--no-header", "--label-column", "0",
                 "--delimiter", ";", "--epochs", "10", "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_rows"] == 300 and result["layer_sizes"][0] == 2
    assert main(["train", "--dataset", str(tmp_path / "train.csv"), "--no-header",
                 "--label-column", "label", "--quiet"]) == 1
    assert "needs the label column's index" in capsys.readouterr().err
    # --delimiter tab, named, with quoted numbers and a quoted label
    (tmp_path / "tab.tsv.csv").write_text("\n".join(
        ["a\tb\tlabel"] + [f'"{a}"\t{b}\t"{c}"' for (a, b), c in zip(X, y)]))
    assert main(["train", "--dataset", str(tmp_path / "tab.tsv.csv"), "--delimiter", "tab",
                 "--epochs", "10", "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["layer_sizes"][0] == 2 and result["test_accuracy"] > 0.8


@pytest.mark.parametrize("content,message", [
    ("a,b,label\n1,2,0\n3,,1\n", "d.csv:3: missing value in column 'b'"),
    ("a,b,label\n1,2,0\n3,x7,1\n", "d.csv:3: non-numeric feature value 'x7' in column 'b'"),
    ("a,b,label\n1,nan,0\n3,4,1\n", "d.csv:2: column 'b' holds 'nan'"),
])
def test_bad_values_name_their_line_and_column(tmp_path, capsys, content, message):
    (tmp_path / "d.csv").write_text(content)
    assert main(["train", "--dataset", str(tmp_path / "d.csv"), "--quiet"]) == 1
    assert message in capsys.readouterr().err


def test_continuous_labels_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 2))
    write_csv(tmp_path / "r.csv", X, np.round(X[:, 0] * 1000 + rng.normal(size=3000), 3))
    assert main(["train", "--dataset", str(tmp_path / "r.csv"), "--quiet"]) == 1
    assert "the labels look continuous" in capsys.readouterr().err


def test_mixed_label_types_in_an_npz_are_refused(tmp_path, capsys):
    X = np.zeros((4, 2))
    np.savez(tmp_path / "m.npz", X_train=X, y_train=np.array([0, 1, 0, 1]), X_test=X,
             y_test=np.array(["0", "1", "0", "1"]))
    assert main(["train", "--dataset", str(tmp_path / "m.npz"), "--quiet"]) == 1
    assert "y_train holds integers and y_test strings" in capsys.readouterr().err


def test_mixed_label_types_across_a_training_and_a_test_file_are_refused(tmp_path, capsys):
    X = np.zeros((4, 2))
    np.savez(tmp_path / "tr.npz", X=X, y=np.array([0, 1, 0, 1]))
    np.savez(tmp_path / "te.npz", X=X, y=np.array(["0", "1", "0", "1"]))
    assert main(["train", "--dataset", str(tmp_path / "tr.npz"), "--test",
                 str(tmp_path / "te.npz"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'tr.npz'} holds integer labels and {tmp_path / 'te.npz'} " \
        "string labels" in err
    assert "is not one of the model's" not in err
    np.savez(tmp_path / "te.npz", X=X, y=np.array([0.5, 1.5, 0.5, 1.5]))
    assert main(["train", "--dataset", str(tmp_path / "tr.npz"), "--test",
                 str(tmp_path / "te.npz"), "--quiet"]) == 1
    assert "integer labels and" in capsys.readouterr().err


def test_an_old_model_file_loads_with_classes_0_to_c(tmp_path, capsys):
    from gpubp.serialization import write_model

    net = gpubp.MLP([64, 16, 10], backend="numpy", seed=0)
    write_model(tmp_path / "old.safetensors", net.layer_sizes, net.dtype,
                net.parameters())  # no ModelInfo: as gpubp 0.1 wrote them
    loaded = gpubp.MLP.load(tmp_path / "old.safetensors")
    assert loaded.info.classes is None
    assert loaded.info.class_labels(10).tolist() == list(range(10))
    assert main(["eval", str(tmp_path / "old.safetensors"), "--dataset", "digits",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 359


def test_model_file_carries_what_is_needed_to_use_it(tmp_path):
    X, y = three_blobs(labels=(0.5, 1.5, 2.5))
    write_csv(tmp_path / "d.csv", X, y, header=("width", "height"), label="kind")
    model = tmp_path / "m.safetensors"
    assert main(["train", "--dataset", str(tmp_path / "d.csv"), "--label-column", "kind",
                 "--scale", "minmax", "--epochs", "2", "--quiet", "--save", str(model)]) == 0
    info = gpubp.MLP.load(model).info
    assert info.classes.tolist() == [0.5, 1.5, 2.5] and info.classes.dtype == np.float64
    assert info.scaler.kind == "minmax" and info.feature_names == ["width", "height"]
    assert info.label_column == "kind"
    provenance = info.provenance
    assert provenance["gpubp"] == gpubp.__version__ and provenance["backend"] == "numpy"
    assert provenance["dtype"] == "float32" and provenance["blas"]
    assert provenance["data_sha256"] == hashlib.sha256((tmp_path / "d.csv").read_bytes()).hexdigest()
    assert provenance["options"]["scale"] == "minmax" and "trained_at" in provenance


def test_mnist_offline_says_where_it_looked(tmp_path, capsys):
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--no-download",
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "train-images-idx3-ubyte" in err


def test_info_lists_blas_threads_kernel_cache_and_devices(capsys):
    assert main(["info", "--json", "--backend", "numpy"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["blas"] and facts["blas_threads"] >= 1
    assert facts["kernel_cache"].endswith("kernels") and facts["cuda_devices"] == []


# ---- found by review: each a regression test -------------------------------------------

def test_a_data_file_gone_during_training_does_not_lose_the_model(tmp_path, monkeypatch):
    X, y = three_blobs()
    data = write_csv(tmp_path / "d.csv", X, y)
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    fit = gpubp.Trainer.fit

    def fit_then_delete(self, *args, **kwargs):
        data.unlink()  # the data changes while the network trains
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(gpubp.Trainer, "fit", fit_then_delete)
    model = tmp_path / "m.safetensors"
    assert main(["train", "--dataset", str(data), "--epochs", "2", "--quiet",
                 "--save", str(model)]) == 0
    assert gpubp.MLP.load(model).info.provenance["data_sha256"] == digest


def test_a_save_folder_that_refuses_files_fails_before_training(tmp_path, capsys):
    """/proc refuses new files even to root, whose permission bits say yes to anything."""
    assert main(["train", "--epochs", "3", "--save", "/proc/gpubp-model.safetensors"]) == 1
    captured = capsys.readouterr()
    assert "--save: cannot write in /proc" in captured.err and "epoch" not in captured.out


def test_training_and_eval_scale_the_same_values(tmp_path):
    """Features near 1.7e9 (float32 steps of 128 there): training scaled rounded values
    and eval exact ones, so the same rows scored 73% and 83%."""
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 120)
    X = 1.7e9 + rng.normal(scale=10, size=(240, 2))
    X[:, 0] += 60 * y
    data = write_csv(tmp_path / "big.csv", X, y)
    model = tmp_path / "m.safetensors"
    trained = json.loads(stdout_of(["train", "--dataset", str(data), "--epochs", "30",
                                    "--quiet", "--json", "--save", str(model)]))
    evaluated = json.loads(stdout_of(["eval", str(model), "--dataset", str(data), "--split",
                                      "test", "--json"]))
    assert evaluated["rows"] == trained["test_rows"]
    assert evaluated["accuracy"] == pytest.approx(trained["test_accuracy"])
    assert trained["test_accuracy"] > 0.95


def test_number_like_labels_map_onto_text_classes(tmp_path):
    """Classes "1", "2", "bird": a file holding only 1s and 2s is not unknown labels."""
    X, y = three_blobs(labels=(1, 2, "bird"))
    write_csv(tmp_path / "train.csv", X, y)
    keep = y != "bird"
    write_csv(tmp_path / "part.csv", X[keep], y[keep])
    model = tmp_path / "m.safetensors"
    assert main(["train", "--dataset", str(tmp_path / "train.csv"), "--test",
                 str(tmp_path / "part.csv"), "--epochs", "10", "--quiet", "--save",
                 str(model)]) == 0
    assert gpubp.MLP.load(model).info.classes.tolist() == ["1", "2", "bird"]
    result = json.loads(stdout_of(["eval", str(model), "--dataset", str(tmp_path / "part.csv"),
                                   "--json"]))
    assert result["rows"] == 200 and result["accuracy"] > 0.8


def test_a_missing_label_is_an_error_naming_its_line(tmp_path, capsys):
    (tmp_path / "d.csv").write_text("a,label\n1,0\n2,\n3,1\n")
    assert main(["train", "--dataset", str(tmp_path / "d.csv"), "--quiet"]) == 1
    assert "d.csv:3: missing label in column 'label'" in capsys.readouterr().err


def test_predict_a_header_less_file_of_features(tmp_path, capsys):
    X, y = three_blobs()
    model = trained_model(tmp_path, X, y, 3)
    (tmp_path / "rows.csv").write_text("\n".join(f"{a},{b}" for a, b in X[:5]))
    capsys.readouterr()
    assert main(["predict", str(model), str(tmp_path / "rows.csv")]) == 1  # row 1 is data
    captured = capsys.readouterr()
    assert "pass --no-header" in captured.err and captured.out == ""  # nothing written
    assert main(["predict", str(model), str(tmp_path / "rows.csv"), "--no-header"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 5


def test_feature_columns_are_matched_by_name(tmp_path, capsys):
    X, y = three_blobs()
    model = trained_model(tmp_path, X, y, 5, header=("width", "height"))
    capsys.readouterr()
    assert main(["predict", str(model), str(tmp_path / "d.csv")]) == 0
    in_order = capsys.readouterr().out
    swapped = ["label,height,width"] + [f"{c},{b},{a}" for (a, b), c in zip(X, y)]
    (tmp_path / "swapped.csv").write_text("\n".join(swapped))
    assert main(["predict", str(model), str(tmp_path / "swapped.csv")]) == 0
    assert capsys.readouterr().out == in_order  # reordered by name
    write_csv(tmp_path / "other.csv", X, y, header=("width", "depth"))
    assert main(["eval", str(model), "--dataset", str(tmp_path / "other.csv")]) == 1
    assert "missing ['height'], not in the model ['depth']" in capsys.readouterr().err


def test_eval_of_an_npz_split_checks_each_part(tmp_path, capsys):
    np.savez(tmp_path / "s.npz", X_train=np.zeros((4, 2)), y_train=np.arange(4) % 2,
             X_test=np.zeros((4, 3)), y_test=np.arange(4) % 2)
    net = gpubp.MLP([2, 2], backend="numpy")
    net.save(tmp_path / "m.safetensors")
    assert main(["eval", str(tmp_path / "m.safetensors"), "--dataset",
                 str(tmp_path / "s.npz")]) == 1
    assert "s.npz: X_train and X_test have different feature counts" in capsys.readouterr().err


def test_json_errors_for_bad_flags_and_internal_errors(capsys, monkeypatch):
    assert main(["train", "--json", "--epochs", "abc"]) == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "UsageError" and "--epochs" in error["message"]
    monkeypatch.setattr(gpubp.MLP, "evaluate", lambda *a, **k: {}["loss"])  # a KeyError
    assert main(["train", "--epochs", "1", "--json", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["type"] == "KeyError"
    assert "internal error (KeyError)" in captured.err and "Traceback" not in captured.err


def test_gpu_flags_reach_the_trainer(monkeypatch, capsys):
    """--no-cuda-graphs and --precision reach Trainer; tf32 on NumPy is refused by name."""
    seen = {}
    real = gpubp.Trainer

    def trainer(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(gpubp, "Trainer", trainer)
    assert main(["train", "--epochs", "1", "--quiet", "--no-cuda-graphs"]) == 0
    assert seen["cuda_graphs"] is False and seen["precision"] == "fp32"
    assert main(["train", "--epochs", "1", "--quiet"]) == 0
    assert seen["cuda_graphs"] is None  # the default: graphs where the backend has them
    capsys.readouterr()
    assert main(["train", "--epochs", "1", "--quiet", "--backend", "numpy",
                 "--precision", "tf32"]) == 1
    assert "precision: 'tf32' trains float32 networks on the CuPy" in capsys.readouterr().err

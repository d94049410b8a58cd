"""The gpubp command line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from gpubp.cli import main


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
    with pytest.raises(SystemExit):
        main(["train", "--layers", "a,b"])


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

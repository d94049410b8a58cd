"""The ``gpubp`` command: ``train``, ``eval``, ``predict``, ``export``, ``plot`` and ``info``.

Output: human-readable lines go to stdout, or to stderr with ``--json``, so that stdout
then holds exactly one JSON object (``{"error": {"type", "message"}}`` on failure, with a
non-zero exit status). Progress bars and log lines always go to stderr.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import io
import itertools
import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import gpubp
from gpubp import blas, checkpoint
from gpubp.backend import BACKEND_NAMES, cuda_versions, get_backend
from gpubp.datasets import load_dataset
from gpubp.datasets.files import CsvFormat, check_pair, csv_header, iter_csv, load_file, read_table
from gpubp.datasets.npz import SpooledNpz, iter_npz_rows, npz_names, read_npz
from gpubp.datasets.preprocessing import make_scaler, stratified_split_rows
from gpubp.distributed import get_communicator, under_mpi_launcher
from gpubp.errors import (
    BackendError,
    CheckpointError,
    CheckpointMismatchError,
    DataError,
    GpubpError,
    TrainingInterrupted,
)
from gpubp.fileio import atomic_writer, check_writable, is_same_file, open_regular, user_cache_dir
from gpubp.metrics import confusion_matrix, format_report, report
from gpubp.model_info import ModelInfo
from gpubp.schedules import make_schedule
from gpubp.training_log import TrainingLog, check_log_path, plot_logs
from gpubp.training_state import data_fingerprint, parse_every, short_repr
from gpubp.validation import DTYPES, check_int

BUILTIN = ("digits", "mnist")
# Defaults per dataset, chosen by the sweeps recorded in docs/benchmarks.md; flags
# override them. A user's file takes the digits defaults, with standardized features.
DEFAULTS = {
    "digits": {"layers": [128], "epochs": 100, "batch_size": 16, "lr": 0.3, "weight_decay": 1e-4},
    "mnist": {"layers": [800], "epochs": 60, "batch_size": 64, "lr": 0.1, "weight_decay": 2e-5},
}
PREDICT_CHUNK = 65536  # rows per forward pass in predict and eval
SCALES = ("standard", "minmax", "none")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except _UsageError as e:  # a bad flag: with --json, still one JSON object on stdout
        print(f"{e.usage}{e}", file=sys.stderr)
        if "--json" in argv:
            print(json.dumps({"error": {"type": "UsageError", "message": str(e)}}))
        return 2
    as_json = getattr(args, "json", False)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(message)s", stream=sys.stderr, force=True)
    warnings.formatwarning = _one_line_warning
    # Under mpiexec every rank runs this; rank 0 alone prints, saves and logs.
    args.comm = get_communicator("auto") if under_mpi_launcher() else None
    agreed = False  # an exit every rank takes together (an interrupted run)
    try:
        code = args.run(args)
    except TrainingInterrupted as e:
        code, agreed = _fail(args, e, e.exit_code, as_json, prefix=""), True
    except KeyboardInterrupt:
        code = _fail(args, KeyboardInterrupt(_interrupted_message(args)), 130, as_json)
    except MemoryError as e:
        error = MemoryError(f"out of memory{f' ({e})' if str(e) else ''}")
        code = _fail(args, error, 1, as_json)
    except BrokenPipeError:  # the reader went away (`gpubp predict ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    except (GpubpError, ValueError, TypeError, OSError, ImportError) as e:
        code = _fail(args, e, 1, as_json)
    except Exception as e:  # a bug of ours: still one line, and the JSON contract
        code = _fail(args, e, 1, as_json, prefix=f"internal error ({type(e).__name__}): ")
    if args.comm is not None:  # a rank that fails alone ends the job, not hangs it
        code = args.comm.finish(code, agreed=agreed)
    return code


class _UsageError(Exception):
    """A command line argparse refuses (raised instead of its exit), with the usage."""

    def __init__(self, message: str, usage: str):
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{self.prog}: error: {message}", self.format_usage())


def _interrupted_message(args) -> str:
    if args.command != "train":
        return "interrupted by SIGINT"
    if getattr(args, "checkpoint_dir", None) or getattr(args, "resume", None):
        return ("interrupted by SIGINT outside training (while loading, or after the last "
                "step); the checkpoints written so far are kept")
    return "interrupted by SIGINT; nothing was saved (--checkpoint-dir makes a run resumable)"


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"gpubp: warning: {message}\n"


def _fail(args, error: BaseException, code: int, as_json: bool, prefix: str = "error: ") -> int:
    """One line on stderr (and the JSON error object on stdout with --json)."""
    message = str(error) if not isinstance(error, OSError) or not error.filename else \
        f"{error.filename}: {error.strerror}"
    print(f"gpubp {args.command}: {prefix}{message}", file=sys.stderr)
    if as_json and _is_root(args):
        print(json.dumps({"error": {"type": type(error).__name__, "message": message}}))
    return code


def _is_root(args) -> bool:
    comm = getattr(args, "comm", None)
    return comm is None or comm.is_root


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpubp", description=gpubp.__doc__)
    parser.add_argument("--version", action="version", version=f"gpubp {gpubp.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a network and report its test accuracy")
    _add_data_arguments(train)
    train.add_argument("--test", metavar="PATH",
                       help="a separate test file (read like --dataset), instead of holding "
                            "out 20%% of a user's file")
    train.add_argument("--scale", choices=SCALES, default=None,
                       help="feature scaling fitted on the training rows and saved with the "
                            "model (default: standard for a user's file, none for digits "
                            "and mnist, whose pixels are already in [0, 1])")
    train.add_argument("--layers", type=_int_list, default=None,
                       help="hidden layer sizes, comma-separated (default per dataset: "
                            "digits 128, mnist 800; a file takes the digits defaults)")
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--lr", type=float, default=None, help="base learning rate")
    train.add_argument("--momentum", type=float, default=None, help="default 0.9")
    train.add_argument("--nesterov", action="store_true", default=None)
    train.add_argument("--weight-decay", type=float, default=None)
    train.add_argument("--schedule", choices=("constant", "step", "cosine"), default=None,
                       help="default cosine")
    train.add_argument("--step-size", type=int, default=None,
                       help="epochs between learning-rate drops, for --schedule step (10)")
    train.add_argument("--gamma", type=float, default=None,
                       help="factor of each drop, for --schedule step (0.1)")
    train.add_argument("--patience", type=int, default=None,
                       help="early stopping patience in epochs (holds out --validation, "
                            "0.1 if unset)")
    train.add_argument("--validation", type=float, default=None,
                       help="fraction of the training rows held out for validation")
    train.add_argument("--dtype", choices=DTYPES, default=None, help="default float32")
    train.add_argument("--precision", choices=("fp32", "bf16", "tf32"), default=None,
                       help="bf16: the GEMMs with bf16 inputs and fp32 accumulation, on CPUs "
                            "with AVX512_BF16 or AMX; tf32: cuBLAS's TF32 tensor cores, on "
                            "a GPU (default fp32)")
    train.add_argument("--no-cuda-graphs", action="store_true", default=None,
                       help="launch every step eagerly on a GPU (as $GPUBP_CUDA_GRAPHS=0)")
    train.add_argument("--seed", type=int, default=None, help="default 0")
    train.add_argument("--save", metavar="PATH",
                       help="write the trained model here (checked before training)")
    train.add_argument("--log", metavar="FILE",
                       help="write one row per epoch to FILE.csv or FILE.jsonl")
    train.add_argument("--checkpoint-dir", metavar="DIR",
                       help="write the full training state here; SIGINT/SIGTERM then stop "
                            "with a final checkpoint (exit code 130/143)")
    train.add_argument("--checkpoint-every", metavar="N[steps|epochs]", default=None,
                       help="how often to checkpoint: N epochs, or e.g. 500steps (default 1)")
    train.add_argument("--keep-last", type=int, default=None,
                       help="checkpoints kept in DIR, older ones deleted (default 3)")
    train.add_argument("--resume", metavar="DIR",
                       help="continue the run checkpointed in DIR with its options; flags "
                            "given now override them (--epochs may change the target)")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser(
        "eval", help="score a saved model on every row of a file (or a built-in test set)")
    evaluate.add_argument("model", help="a model file written by gpubp train --save")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--split", choices=("all", "test", "train"), default=None,
                          help="rows to score: all rows of a user's file (its default), or "
                               "the test/train part of the split training made (the "
                               "default for digits and mnist: test)")
    evaluate.set_defaults(run=_eval)

    predict = commands.add_parser(
        "predict", help="predict the labels (and probabilities) of a file's rows")
    predict.add_argument("model", help="a model file written by gpubp train --save")
    predict.add_argument("input", help="a .csv or .npz file of features, with or without labels")
    predict.add_argument("--out", metavar="FILE",
                         help="write FILE.csv or FILE.npz (default: CSV on stdout)")
    predict.add_argument("--proba", action="store_true",
                         help="add one probability column per class")
    _add_csv_arguments(predict)
    predict.add_argument("--backend", choices=BACKEND_NAMES, default=None)
    predict.set_defaults(run=_predict, json=False)

    export = commands.add_parser(
        "export", help="write a saved model as ONNX (scaler, network, softmax, labels)")
    export.add_argument("model", help="a model file written by gpubp train --save")
    export.add_argument("--format", choices=("onnx",), default="onnx",
                        help="the output format (default onnx)")
    export.add_argument("--out", required=True, metavar="FILE", help="e.g. model.onnx")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or newer")
    export.set_defaults(run=_export, json=False)

    plot = commands.add_parser("plot", help="plot training logs written by train --log")
    plot.add_argument("logs", nargs="+", metavar="LOG", help=".csv or .jsonl logs")
    plot.add_argument("--out", required=True, metavar="FILE", help="e.g. curves.png")
    plot.set_defaults(run=_plot, json=False)

    info = commands.add_parser("info", help="show the backend, devices, BLAS and versions")
    info.add_argument("--backend", choices=BACKEND_NAMES, default=None)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=_info)
    return parser


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=None,
                   help="digits (embedded), mnist, or a path to a .npz/.csv file")
    p.add_argument("--data-dir", default=None, help="where to find/download MNIST")
    p.add_argument("--no-download", action="store_true", default=None,
                   help="never download MNIST; fail if its files are not found")
    _add_csv_arguments(p)
    p.add_argument("--backend", choices=BACKEND_NAMES, default=None,
                   help="array backend (default: $GPUBP_BACKEND, else auto)")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object on stdout (human output to stderr)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines or progress bars")


def _add_csv_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label-column", metavar="NAME|INDEX", default=None,
                   help="the label column of a CSV file (default: label)")
    p.add_argument("--delimiter", default=None,
                   help="CSV field separator: ',', ';', 'tab'... (default: found from the file)")
    p.add_argument("--no-header", action="store_true", default=None,
                   help="the CSV file has no header row (give --label-column as an index)")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


# ---- train -------------------------------------------------------------------------------

def _train(args) -> int:
    root = _is_root(args)
    if not root:
        args.quiet = True  # rank 0 reports for every rank
    human = sys.stderr if args.json else sys.stdout
    checkpoint_dir = args.resume or args.checkpoint_dir
    if args.resume and args.checkpoint_dir and Path(args.checkpoint_dir) != Path(args.resume):
        raise ValueError("--checkpoint-dir: --resume DIR already names the checkpoint directory")
    if checkpoint_dir is None and (args.checkpoint_every is not None
                                   or args.keep_last is not None):
        raise ValueError("--checkpoint-every: needs --checkpoint-dir (or --resume)"
                         if args.checkpoint_every is not None
                         else "--keep-last: needs --checkpoint-dir")
    recorded = None
    if args.resume:
        recorded = _restore_run_options(args, Path(args.resume))
    _fill_defaults(args)
    # Every option is checked before anything is created or trained.
    if checkpoint_dir is not None:
        parse_every(args.checkpoint_every)
        check_int(args.keep_last, "--keep-last")
    scaler = make_scaler(args.scale)
    log_file = check_log_path(args.log) if args.log else None
    schedule = make_schedule(args.schedule, step_size=args.step_size, gamma=args.gamma)
    optimizer = gpubp.SGD(args.lr, momentum=args.momentum, nesterov=args.nesterov,
                          weight_decay=args.weight_decay)

    data = _training_data(args)
    _check_outputs(args, data)
    source = _data_source(args, data)  # hashed now: the files may change while training
    if scaler is not None:  # fitted on the float64 values, then rounded to the dtype
        data.X_train = scaler.fit_transform(data.X_train, args.dtype)
        data.X_test = scaler.transform(data.X_test, args.dtype)
    if args.comm is not None and args.backend != "numpy":
        _use_local_device(args.comm)
    net = gpubp.MLP([data.n_features, *args.layers, data.n_classes], backend=args.backend,
                    dtype=args.dtype, seed=args.seed)

    def report_epoch(r):
        val = (f"  val_loss {r['val_loss']:.4f}  val_acc {100 * r['val_accuracy']:.2f}%"
               if r["val_loss"] is not None else "")
        print(f"epoch {r['epoch']:>3}/{args.epochs}  loss {r['train_loss']:.4f}{val}  "
              f"lr {r['lr']:.4g}  {r['wall_time']:.2f}s  {r['samples_per_s']:,.0f} samples/s",
              file=human, flush=True)

    callbacks = ([] if args.quiet else [report_epoch]) + (
        [TrainingLog(log_file, resume=bool(args.resume))] if log_file and root else [])
    trainer = gpubp.Trainer(net, optimizer, batch_size=args.batch_size, epochs=args.epochs,
                            seed=args.seed, schedule=schedule, patience=args.patience,
                            progress=not args.quiet, precision=args.precision,
                            cuda_graphs=False if args.no_cuda_graphs else None,
                            distributed=args.comm if args.comm is not None else False,
                            on_epoch=(lambda r: [c(r) for c in callbacks]) if callbacks else None)
    if not args.quiet:
        print(f"gpubp: training {net} on {data}, {optimizer}, batch {args.batch_size}, "
              f"{args.epochs} epochs", file=human, flush=True)
    validation = args.validation
    if validation is None and args.patience is not None:
        validation = 0.1  # early stopping needs held-out data
    checkpointing = {}
    if checkpoint_dir is not None:
        checkpointing = {"checkpoint_dir": checkpoint_dir,
                         "checkpoint_every": args.checkpoint_every,
                         "resume": bool(args.resume), "keep_last": args.keep_last,
                         "metadata": {"options": _run_options(args)},
                         "check_metadata": recorded}  # resume where the options came from
    started = time.perf_counter()
    history = trainer.fit(data.X_train, data.y_train, validation=validation,
                          **checkpointing)
    train_time = time.perf_counter() - started
    test = net.evaluate(data.X_test, data.y_test)
    if args.save and root:
        net.info = ModelInfo(classes=data.classes, scaler=scaler,
                             feature_names=data.feature_names,
                             label_column=_csv_format(args).label_column if args.no_header
                             else data.label_name,
                             provenance=_provenance(args, net, source, history, test))
        net.save(args.save)
    if not root:
        return 0
    print(f"test accuracy {100 * test['accuracy']:.2f}% (test loss {test['loss']:.4f}, "
          f"{len(data.y_test)} rows) after {len(history)} epochs in {train_time:.1f}s on "
          f"{net.backend.name} ({net.backend.device_name})"
          + (f"; saved to {args.save}" if args.save else ""), file=human, flush=True)
    if args.json:
        best = history[history.best_epoch - 1] if history.best_epoch else history[-1]
        print(json.dumps({
            "dataset": data.name, "layer_sizes": list(net.layer_sizes), "backend": net.backend.name,
            "device": net.backend.device_name, "dtype": net.dtype.name, "seed": args.seed,
            "epochs": len(history), "batch_size": args.batch_size, "lr": args.lr,
            "train_loss": best["train_loss"], "val_loss": best["val_loss"],
            "val_accuracy": best["val_accuracy"], "best_epoch": history.best_epoch,
            "test_loss": test["loss"], "test_accuracy": test["accuracy"],
            "test_rows": len(data.y_test), "train_time_s": train_time,
            "samples_per_s": float(np.median(history["samples_per_s"])),
            "stopped_early": history.stopped_early, "saved_to": args.save,
        }))
    return 0


def _use_local_device(comm) -> None:
    """Each rank on its own GPU (by local rank), before the backend settles on one."""
    try:
        comm.use_local_device()
    except (ImportError, BackendError, RuntimeError):  # no CuPy or no device: NumPy then
        pass
    except Exception as e:  # CuPy's CUDA errors (no driver) are not RuntimeErrors
        logging.getLogger("gpubp").debug("gpubp: no local CUDA device (%s)", e)


def _training_data(args):
    """The Dataset for ``gpubp train``: built-in, or a user's file (and --test file)."""
    if args.dataset in BUILTIN:
        if args.test is not None:
            raise ValueError(f"--test: {args.dataset} has its own test set")
        return load_dataset(args.dataset, data_dir=args.data_dir,
                            download=not args.no_download)
    if Path(args.dataset).suffix.lower() not in (".npz", ".csv"):
        raise ValueError(f"dataset: expected 'digits', 'mnist' or a .npz/.csv path, "
                         f"got {args.dataset!r}")
    fmt = _csv_format(args)
    return load_file(args.dataset, label_column=fmt.label_column, delimiter=fmt.delimiter,
                     header=fmt.header, test_path=args.test)


def _csv_format(args, default_label: str | None = "label") -> CsvFormat:
    """The CSV reading options of the command line."""
    delimiter = args.delimiter
    if delimiter is not None:
        delimiter = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";"}.get(
            delimiter.lower(), delimiter)
        if len(delimiter) != 1:
            raise ValueError(f"--delimiter: expected one character (or 'tab'), "
                             f"got {args.delimiter!r}")
    label = args.label_column if args.label_column is not None else default_label
    if args.no_header and args.label_column is None and default_label is None:
        label = None  # predict: a header-less file of features only
    elif args.no_header and isinstance(label, str):
        try:
            label = int(label)
        except ValueError:
            raise ValueError("--label-column: a file without a header row needs the label "
                             f"column's index, got {label!r}") from None
    return CsvFormat(delimiter, not args.no_header, label)


def _check_outputs(args, data) -> None:
    """--save and --log must be writable files that are none of the inputs or each other."""
    inputs = [p for p in (args.dataset, args.test) if p and p not in BUILTIN]
    outputs = [(flag, path) for flag, path in (("--save", args.save), ("--log", args.log)) if path]
    for flag, path in outputs:
        check_writable(path, flag)
        for source in inputs:
            if is_same_file(path, source) or Path(path).resolve() == Path(source).resolve():
                raise ValueError(f"{flag}: {path} is the data file {source}; it would be "
                                 "overwritten")
    if len(outputs) == 2 and Path(args.save).resolve() == Path(args.log).resolve():
        raise ValueError(f"--log: {args.log} is also the --save path")


def _data_source(args, data) -> dict:
    """Which data trained the model, with its sha256: a user's file (and --test file) as
    bytes, a built-in dataset as its arrays."""
    if args.dataset in BUILTIN:
        return {"dataset": args.dataset,
                "data_sha256": data_fingerprint(data.X_train, data.y_train)}
    source = {"dataset": str(Path(args.dataset).resolve()),
              "data_sha256": _file_sha256(args.dataset)}
    if args.test:
        source.update(test=str(Path(args.test).resolve()), test_sha256=_file_sha256(args.test))
    return source


def _provenance(args, net, source, history, test) -> dict:
    """Where a saved model came from: versions, backend, data checksum, date, options."""
    return {
        "gpubp": gpubp.__version__, "python": platform.python_version(),
        "numpy": np.__version__, "backend": net.backend.name,
        "device": net.backend.device_name, "dtype": net.dtype.name,
        "blas": blas.name() if not net.backend.is_gpu else "cublas",
        **source,
        "trained_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "epochs": len(history), "test_accuracy": test["accuracy"],
        "options": _run_options(args),
    }


def _file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open_regular(path, DataError) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# Options a checkpointed run records in its checkpoints, for `gpubp train --resume DIR`,
# with the JSON types each may take. Paths are recorded absolute.
RUN_OPTIONS = {
    "dataset": (str,), "data_dir": (str,), "test": (str,), "label_column": (str, int),
    "delimiter": (str,), "no_header": (bool,), "no_download": (bool,), "scale": (str,),
    "layers": (list,), "epochs": (int,), "batch_size": (int,), "lr": (int, float),
    "momentum": (int, float), "nesterov": (bool,), "weight_decay": (int, float),
    "schedule": (str,), "step_size": (int,), "gamma": (int, float), "patience": (int,),
    "validation": (int, float), "dtype": (str,), "precision": (str,),
    "no_cuda_graphs": (bool,), "seed": (int,),
    "checkpoint_every": (str, int), "keep_last": (int,), "save": (str,), "log": (str,),
}
PATH_OPTIONS = ("data_dir", "test", "save", "log")
RUN_FILE = "run.json"  # where gpubp 0.1 recorded them; still read


def _fill_defaults(args) -> None:
    """Replace every unset training option with its (per-dataset) default."""
    if args.dataset is None:
        args.dataset = "digits"
    defaults = {**DEFAULTS.get(args.dataset, DEFAULTS["digits"]), "momentum": 0.9,
                "nesterov": False, "schedule": "cosine", "step_size": 10, "gamma": 0.1,
                "dtype": "float32", "precision": "fp32", "no_cuda_graphs": False,
                "seed": 0, "keep_last": 3,
                "no_header": False,
                "no_download": False,
                "scale": "none" if args.dataset in BUILTIN else "standard"}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _run_options(args) -> dict:
    """The resolved options, paths made absolute, as recorded for --resume."""
    options = {key: getattr(args, key) for key in RUN_OPTIONS}
    for key in PATH_OPTIONS:
        if options[key] is not None:
            options[key] = os.path.abspath(options[key])
    if options["dataset"] not in BUILTIN:
        options["dataset"] = os.path.abspath(options["dataset"])
    return options


def _restore_run_options(args, directory: Path) -> "_RecordedOptions":
    """Take the options recorded in DIR's newest usable checkpoint (or a gpubp 0.1
    DIR/run.json) for every flag not given now. A checkpoint whose recorded options are
    invalid is passed over for the one before it, as resuming does (see
    :class:`_RecordedOptions`, which is returned for the trainer to apply)."""
    if not directory.is_dir():
        raise ValueError(f"--resume: {directory} is not a directory")
    check = _RecordedOptions()
    found = checkpoint.newest_metadata(directory, check)
    saved = _recorded_options(found[0], found[1]) if found is not None else None
    if saved is not None:
        check.source = found[0]
    elif (directory / RUN_FILE).exists():
        source = directory / RUN_FILE
        try:
            saved = json.loads(open_regular(source, CheckpointError).read())
        except (ValueError, RecursionError) as e:
            raise CheckpointError(f"{source}: unreadable run options ({e})") from e
        saved = _recorded_options(source, {"options": saved})
    if saved is None:
        return check  # checkpoints written from Python: the flags given now must match them
    for key in RUN_OPTIONS:
        if getattr(args, key) is None:
            check.restored[key] = saved.get(key)
            setattr(args, key, saved.get(key))
    return check


def _recorded_options(source, metadata: dict | None) -> dict | None:
    """The run options in a checkpoint's ``metadata`` (None when it holds none), each
    checked against its JSON types. Raises CheckpointError naming ``source``."""
    saved = metadata.get("options") if metadata is not None else None
    if saved is None:
        return None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{source}: run options are not a JSON object")
    for key, types in RUN_OPTIONS.items():
        value = saved.get(key)
        if value is not None and not _option_fits(key, value, types):
            raise CheckpointError(f"{source}: option {key} is {short_repr(value)}, expected "
                                  + " or ".join(t.__name__ for t in types))
    return saved


class _RecordedOptions:
    """The check of checkpoints' recorded options that `gpubp train --resume` applies
    (``Trainer.fit(check_metadata=...)``), so that the checkpoint resumed is the
    one whose options were taken, or one that records the same.

    A checkpoint whose options are invalid is a CheckpointError: skipped, like an
    unreadable one. One older than ``source`` (the checkpoint the options came from,
    which the trainer then could not resume) that records other values for options not
    given now is a CheckpointMismatchError, naming the file to move aside.
    """

    def __init__(self):
        self.source: Path | None = None
        self.restored: dict = {}  # option -> the value taken from source (None: unset)

    def __call__(self, path, metadata) -> None:
        saved = _recorded_options(path, metadata)
        if self.source is None or saved is None or Path(path) == self.source:
            return
        differ = [key for key, value in self.restored.items() if saved.get(key) != value]
        if differ:
            flags = ", ".join("--" + key.replace("_", "-") for key in differ)
            raise CheckpointMismatchError(
                f"resume: the options were taken from {self.source}, which cannot be "
                f"resumed (see the warning above); the newest checkpoint that can, {path}, "
                f"records other values of {flags}. Move {self.source} aside and resume "
                f"again to take {Path(path).name}'s, or give {flags} yourself")


def _option_fits(key, value, types) -> bool:
    """Whether a recorded option has one of its JSON types and a value Python can use."""
    if isinstance(value, bool) != (types == (bool,)) or not isinstance(value, types):
        return False
    if key == "layers":
        return all(type(v) is int and 0 < v < 2**63 for v in value)
    if isinstance(value, int):
        return -2**63 <= value < 2**63
    if isinstance(value, float):
        return np.isfinite(value)
    return True


# ---- eval and predict --------------------------------------------------------------------

def _eval(args) -> int:
    human = sys.stderr if args.json else sys.stdout
    net = gpubp.MLP.load(args.model, backend=args.backend)
    dataset = args.dataset or "digits"
    X, labels, text, source = _evaluation_rows(args, net, dataset)
    n_classes = net.layer_sizes[-1]
    info = net.info
    if X.shape[1] != net.layer_sizes[0]:
        raise ValueError(f"--dataset: {source} has {X.shape[1]} features, the model takes "
                         f"{net.layer_sizes[0]}")
    truth = info.class_index(labels, n_classes, source, text=text)
    X = info.transform(X, net.dtype)
    metrics = net.evaluate(X, truth)
    predicted = gpubp.to_numpy(net.predict(X))
    confusion = confusion_matrix(truth, predicted, n_classes)
    class_labels = info.class_labels(n_classes)
    if not _is_root(args):
        return 0
    print(f"{args.model} on {source}: {len(truth)} rows, accuracy "
          f"{100 * metrics['accuracy']:.2f}%, mean loss {metrics['loss']:.4f}", file=human)
    print(format_report(class_labels.tolist(), confusion), file=human)
    if args.json:
        print(json.dumps({
            "model": str(args.model), "dataset": source, "rows": len(truth),
            "accuracy": metrics["accuracy"], "loss": metrics["loss"],
            "classes": class_labels.tolist(),
            "per_class": report(class_labels.tolist(), confusion),
            "confusion": confusion.tolist(),
        }))
    return 0


def _evaluation_rows(args, net, dataset):
    """(X, labels in their original values, the labels as written (a CSV's) or None, a
    description) of the rows to score."""
    if dataset in BUILTIN:
        split = args.split or "test"
        data = load_dataset(dataset, data_dir=args.data_dir, download=not args.no_download)
        parts = {"test": [(data.X_test, data.y_test)], "train": [(data.X_train, data.y_train)],
                 "all": [(data.X_train, data.y_train), (data.X_test, data.y_test)]}[split]
        X = np.concatenate([p[0] for p in parts])
        labels = data.classes[np.concatenate([p[1] for p in parts])]
        return X, labels, None, f"{dataset} ({split})"
    if Path(dataset).suffix.lower() not in (".npz", ".csv"):
        raise ValueError(f"--dataset: expected 'digits', 'mnist' or a .npz/.csv path, "
                         f"got {dataset!r}")
    path = Path(dataset)
    info_label = net.info.label_column
    fmt = _csv_format(args, default_label=info_label if info_label is not None else "label")
    split = args.split or "all"
    if path.suffix.lower() == ".npz" and {"X_train", "y_train"} <= npz_names(path):
        keys = {"test": ["test"], "train": ["train"], "all": ["train", "test"]}[split]
        arrays = read_npz(path, [f"{k}_{p}" for p in keys for k in ("X", "y")])
        pairs = [check_pair(f"{path} (X_{p}, y_{p})", arrays[f"X_{p}"], arrays[f"y_{p}"])
                 for p in keys]
        if len({X.shape[1] for X, _ in pairs}) > 1:
            raise DataError(f"{path}: X_train and X_test have different feature counts")
        X = np.concatenate([X for X, _ in pairs]).astype(np.float64)
        return X, np.concatenate([y for _, y in pairs]), None, f"{path} ({split})"
    table = read_table(path, fmt)
    X = _in_training_order(path, table, net.info.feature_names)
    labels, text = table.y, table.labels_text
    if split != "all":  # the split `gpubp train` made of this file (fraction 0.2, seed 0)
        train_rows, test_rows = stratified_split_rows(labels, 0.2, 0)
        rows = test_rows if split == "test" else train_rows
        return (X[rows], labels[rows], None if text is None else text[rows],
                f"{path} ({split} part)")
    return X, labels, text, str(path)


def _in_training_order(source, table, feature_names):
    """A table's features in the model's column order, by their header names: the same
    names in another order are reordered; different names are an error naming them."""
    if feature_names is None or table.feature_names is None:
        return table.X
    if table.feature_names == feature_names:
        return table.X
    if sorted(table.feature_names) != sorted(feature_names) or len(set(feature_names)) != len(
            feature_names):
        missing = [n for n in feature_names if n not in table.feature_names]
        extra = [n for n in table.feature_names if n not in feature_names]
        raise DataError(f"{source}: its feature columns are not the model's: missing "
                        f"{missing[:5]}, not in the model {extra[:5]} (the model was trained "
                        f"on {feature_names[:8]}{'...' if len(feature_names) > 8 else ''})")
    return table.X[:, [table.feature_names.index(n) for n in feature_names]]


def _predict(args) -> int:
    net = gpubp.MLP.load(args.model, backend=args.backend)
    info, n_classes = net.info, net.layer_sizes[-1]
    source = Path(args.input)
    if source.suffix.lower() not in (".csv", ".npz"):
        raise ValueError(f"input: expected a .csv or .npz file, got {args.input!r}")
    if args.out is not None:
        out = Path(args.out)
        if out.suffix.lower() not in (".csv", ".npz"):
            raise ValueError(f"--out: expected a .csv or .npz file name, got {args.out!r}")
        check_writable(out, "--out")
        for name, path in (("model", args.model), ("input", args.input)):
            if is_same_file(out, path) or out.resolve() == Path(path).resolve():
                raise ValueError(f"--out: {out} is the {name} file; it would be overwritten")
    class_labels = info.class_labels(n_classes)
    columns = ["label"] + ([f"proba_{c}" for c in class_labels.tolist()] if args.proba else [])
    chunks = _prediction_inputs(args, net, source)
    first = next(chunks)  # the input's errors come before any output is written
    chunks = itertools.chain([first], chunks)
    rows, digits = 0, 9 if net.dtype == np.float32 else 17  # enough to round-trip
    if not _is_root(args):
        return 0
    if args.out is None or Path(args.out).suffix.lower() == ".csv":
        with (atomic_writer(args.out) if args.out else _stdout_bytes()) as f:
            text = io.TextIOWrapper(f, encoding="utf-8", newline="", write_through=True)
            writer = csv.writer(text, lineterminator="\n")
            writer.writerow(columns)
            for X in chunks:
                labels, proba = _predict_chunk(net, info, X, args.proba)
                rows += len(labels)
                for i, label in enumerate(labels.tolist()):
                    writer.writerow([label] + ([f"{p:.{digits}g}" for p in proba[i].tolist()]
                                               if args.proba else []))
            text.flush()
            text.detach()
    else:  # chunk by chunk into temporary files, then the archive
        classes = _npz_labels(class_labels)
        with SpooledNpz() as spool:
            for X in chunks:
                labels, proba = _predict_chunk(net, info, X, args.proba)
                spool.add("labels", _npz_labels(labels).astype(classes.dtype))
                if args.proba:
                    spool.add("proba", proba)
                rows += len(labels)
            with atomic_writer(args.out) as f:
                spool.write(f, classes=classes)
    print(f"gpubp predict: {rows} rows predicted" + (f", written to {args.out}" if args.out
                                                      else ""), file=sys.stderr)
    return 0


def _prediction_inputs(args, net, source: Path):
    """Yield the input's features in chunks of rows, the label column (if any) dropped."""
    n_features = net.layer_sizes[0]
    if source.suffix.lower() == ".npz":
        names = npz_names(source)
        key = "X" if "X" in names else "X_test" if "X_test" in names else None
        if key is None:
            raise DataError(f"{source}: .npz lacks an array X (or X_test); has {sorted(names)}")
        for X in iter_npz_rows(source, key, PREDICT_CHUNK):  # read block by block
            if X.dtype.kind not in "biuf":
                raise DataError(f"{source}: {key} must be a 2-D numeric array, got {X.dtype}")
            _check_width(source, X.shape[1], n_features)
            yield X
        return
    fmt = _csv_format(args, default_label=None)
    if args.label_column is None:  # a label column is dropped when the file has one
        fmt.label_column = _input_label_column(args, net, source, fmt)
    for chunk in iter_csv(source, fmt, PREDICT_CHUNK):
        X = _in_training_order(source, chunk, net.info.feature_names)
        _check_width(source, X.shape[1], n_features)
        yield X


def _input_label_column(args, net, source, fmt):
    """The label column of a prediction input: the model's label column when the header
    has it; None (every column a feature) otherwise. A first row of numbers is refused:
    it is data, and the file needs --no-header."""
    if not fmt.header:
        return None
    header = csv_header(source, fmt.delimiter)
    if header and all(_is_number(field) for field in header):
        raise DataError(f"{source}: its first row holds numbers ({', '.join(header[:4])}"
                        f"{', ...' if len(header) > 4 else ''}), not column names; "
                        "for a file without a header row pass --no-header")
    label = net.info.label_column if isinstance(net.info.label_column, str) else "label"
    return label if label in header else None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_width(source, width: int, n_features: int) -> None:
    if width != n_features:
        raise DataError(f"{source}: {width} feature columns, the model takes {n_features} "
                        "(is a label column not named as in training? see --label-column)")


def _predict_chunk(net, info, X, with_proba: bool):
    X = info.transform(X, net.dtype)
    P = gpubp.to_numpy(net.predict_proba(X))
    return info.labels(P.argmax(axis=1), net.layer_sizes[-1]), (P if with_proba else None)


def _npz_labels(labels: np.ndarray) -> np.ndarray:
    """Labels as an array .npz stores without pickling (strings as unicode)."""
    return labels.astype(str) if labels.dtype == object else labels


class _stdout_bytes:
    """stdout's byte stream as a context manager that does not close it."""

    def __enter__(self):
        sys.stdout.flush()
        return sys.stdout.buffer

    def __exit__(self, *exc):
        sys.stdout.buffer.flush()


# ---- export, plot and info ----------------------------------------------------------------

def _export(args) -> int:
    check_writable(args.out, "--out")
    if is_same_file(args.out, args.model) or Path(args.out).resolve() == Path(args.model).resolve():
        raise ValueError(f"--out: {args.out} is the model file; it would be overwritten")
    net = gpubp.MLP.load(args.model, backend="numpy")
    net.to_onnx(args.out, opset=args.opset)  # checked by onnx.checker before it is written
    print(f"gpubp export: wrote {args.out} (ONNX opset {args.opset}; input X "
          f"(N, {net.layer_sizes[0]}) {net.dtype.name}; outputs label, probabilities)",
          file=sys.stderr)
    return 0


def _plot(args) -> int:
    check_writable(args.out, "--out")
    plot_logs(args.logs, args.out)
    print(f"gpubp plot: wrote {args.out}", file=sys.stderr)
    return 0


def _info(args) -> int:
    if args.comm is not None and args.backend != "numpy":
        _use_local_device(args.comm)
    backend = get_backend(args.backend)
    facts = {
        "gpubp": gpubp.__version__, "python": platform.python_version(),
        "backend": backend.name, "device": backend.device_name, "numpy": np.__version__,
        "blas": blas.name(), "blas_threads": blas.threads(), **blas.info(),
        "kernel_cache": str(user_cache_dir("kernels")),
        **cuda_versions(), "cuda_devices": _cuda_devices(),
    }
    if args.comm is not None:  # every rank's host, process and device
        facts["ranks"] = args.comm.describe(device=backend.device_name)
        if not args.comm.is_root:
            return 0
    if args.json:
        print(json.dumps(facts))
    else:
        for key, value in facts.items():
            if key == "cuda_devices":
                value = "; ".join(f"{d['id']}: {d['name']}, {d['free_bytes'] / 2**30:.1f} of "
                                  f"{d['total_bytes'] / 2**30:.1f} GiB free"
                                  for d in value) or None
            if key == "ranks":
                value = "; ".join(f"rank {r['rank']} on {r['host']} (pid {r['pid']}, local "
                                  f"{r['local_rank']}): {r.get('device')}"
                                  for r in value.get("ranks", []))
            if key == "blas_choices":  # what was chosen for which GEMM shapes, and why
                value = "\n".join(" " * 15 + c["summary"] for c in value).strip() or None
            print(f"{key:>13}: {value if value is not None else 'not available'}")
    return 0


def _cuda_devices() -> list[dict]:
    """Each visible CUDA device with its free memory; [] without CuPy or a device."""
    try:
        import cupy

        devices = []
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            with cupy.cuda.Device(i):
                free, total = cupy.cuda.runtime.memGetInfo()
                name = cupy.cuda.runtime.getDeviceProperties(i)["name"]
            devices.append({"id": i, "name": name.decode() if isinstance(name, bytes) else
                            str(name), "free_bytes": int(free), "total_bytes": int(total)})
        return devices
    except Exception:  # no CuPy, no driver, no device: nothing to list
        return []


if __name__ == "__main__":
    sys.exit(main())

"""The ``gpubp`` command: ``train``, ``eval`` and ``info``."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

import gpubp
from gpubp import checkpoint
from gpubp.backend import BACKEND_NAMES, cuda_versions, get_backend
from gpubp.datasets import load_dataset
from gpubp.errors import CheckpointError, GpubpError, TrainingInterrupted
from gpubp.fileio import atomic_writer
from gpubp.validation import DTYPES
from gpubp.schedules import make_schedule

# Defaults per dataset, chosen by the sweeps recorded in the README; flags override them.
# A user's file takes the digits defaults.
DEFAULTS = {
    "digits": {"layers": [128], "epochs": 100, "batch_size": 16, "lr": 0.3, "weight_decay": 1e-4},
    "mnist": {"layers": [800], "epochs": 60, "batch_size": 64, "lr": 0.1, "weight_decay": 2e-5},
}


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    try:
        return args.run(args)
    except TrainingInterrupted as e:
        print(f"gpubp {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except (GpubpError, ValueError, TypeError, OSError) as e:
        print(f"gpubp {args.command}: error: {e}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpubp", description=gpubp.__doc__)
    parser.add_argument("--version", action="version", version=f"gpubp {gpubp.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a network and report its test accuracy")
    _add_data_arguments(train)
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
    train.add_argument("--seed", type=int, default=None, help="default 0")
    train.add_argument("--save", metavar="PATH", help="write the trained model here")
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

    evaluate = commands.add_parser("eval", help="evaluate a saved model on a dataset's test set")
    evaluate.add_argument("model", help="a model file written by gpubp train --save")
    _add_data_arguments(evaluate)
    evaluate.set_defaults(run=_eval)

    info = commands.add_parser("info", help="show the backend, device and library versions")
    info.add_argument("--backend", choices=BACKEND_NAMES, default=None)
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=_info)
    return parser


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=None,
                   help="digits (embedded), mnist, or a path to a .npz/.csv file")
    p.add_argument("--data-dir", default=None, help="where to find/download MNIST")
    p.add_argument("--backend", choices=BACKEND_NAMES, default=None,
                   help="array backend (default: $GPUBP_BACKEND, else auto)")
    p.add_argument("--json", action="store_true",
                   help="print the final metrics as one JSON object on the last line")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines or progress bars")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _train(args) -> int:
    checkpoint_dir = args.resume or args.checkpoint_dir
    if args.resume and args.checkpoint_dir and Path(args.checkpoint_dir) != Path(args.resume):
        raise ValueError("--checkpoint-dir: --resume DIR already names the checkpoint directory")
    if checkpoint_dir is None and (args.checkpoint_every is not None
                                   or args.keep_last is not None):
        raise ValueError("--checkpoint-every: needs --checkpoint-dir (or --resume)"
                         if args.checkpoint_every is not None
                         else "--keep-last: needs --checkpoint-dir")
    if args.resume:
        _restore_run_options(args, Path(args.resume))
    _fill_defaults(args)

    data = load_dataset(args.dataset, data_dir=args.data_dir)
    net = gpubp.MLP([data.n_features, *args.layers, data.n_classes], backend=args.backend,
                    dtype=args.dtype, seed=args.seed)
    optimizer = gpubp.SGD(args.lr, momentum=args.momentum, nesterov=args.nesterov,
                          weight_decay=args.weight_decay)

    def report(r):
        val = (f"  val_loss {r['val_loss']:.4f}  val_acc {100 * r['val_accuracy']:.2f}%"
               if r["val_loss"] is not None else "")
        print(f"epoch {r['epoch']:>3}/{args.epochs}  loss {r['train_loss']:.4f}{val}  "
              f"lr {r['lr']:.4g}  {r['wall_time']:.2f}s  {r['samples_per_s']:,.0f} samples/s",
              flush=True)

    schedule = make_schedule(args.schedule, step_size=args.step_size, gamma=args.gamma)
    trainer = gpubp.Trainer(net, optimizer, batch_size=args.batch_size, epochs=args.epochs,
                            seed=args.seed, schedule=schedule, patience=args.patience,
                            progress=not args.quiet, on_epoch=None if args.quiet else report)
    if not args.quiet:
        print(f"gpubp: training {net} on {data}, {optimizer}, batch {args.batch_size}, "
              f"{args.epochs} epochs", flush=True)
    started = time.perf_counter()
    validation = args.validation
    if validation is None and args.patience is not None:
        validation = 0.1  # early stopping needs held-out data
    checkpointing = {}
    if checkpoint_dir is not None:
        checkpointing = {"checkpoint_dir": checkpoint_dir,
                         "checkpoint_every": args.checkpoint_every,
                         "resume": bool(args.resume), "keep_last": args.keep_last}
        if not args.resume:
            if checkpoint.list_checkpoints(checkpoint_dir):  # before run.json is written
                raise ValueError(f"--checkpoint-dir: {checkpoint_dir} already holds "
                                 f"checkpoints; continue that run with --resume "
                                 f"{checkpoint_dir}, or use an empty directory")
            _save_run_options(args, Path(checkpoint_dir))
    try:
        history = trainer.fit(data.X_train, data.y_train, validation=validation,
                              **checkpointing)
    except TrainingInterrupted:
        if args.resume:  # resumed, so the options fit the checkpoints: keep a new --epochs
            _save_run_options(args, Path(checkpoint_dir))
        raise
    if args.resume:
        _save_run_options(args, Path(checkpoint_dir))
    train_time = time.perf_counter() - started
    if args.save:
        net.save(args.save)
    test = net.evaluate(data.X_test, data.y_test)
    print(f"test accuracy {100 * test['accuracy']:.2f}% (test loss {test['loss']:.4f}) after "
          f"{len(history)} epochs in {train_time:.1f}s on {net.backend.name} "
          f"({net.backend.device_name})" + (f"; saved to {args.save}" if args.save else ""))
    if args.json:
        print(json.dumps({
            "dataset": data.name, "layer_sizes": list(net.layer_sizes), "backend": net.backend.name,
            "device": net.backend.device_name, "dtype": net.dtype.name, "seed": args.seed,
            "epochs": len(history), "batch_size": args.batch_size, "lr": args.lr,
            "train_loss": history[-1]["train_loss"], "val_loss": history[-1]["val_loss"],
            "val_accuracy": history[-1]["val_accuracy"], "test_loss": test["loss"],
            "test_accuracy": test["accuracy"], "train_time_s": train_time,
            "samples_per_s": float(np.median(history["samples_per_s"])),
            "stopped_early": history.stopped_early, "saved_to": args.save,
        }))
    return 0


# Options a checkpointed run records in DIR/run.json, for `gpubp train --resume DIR`,
# with the JSON types each may take.
RUN_OPTIONS = {
    "dataset": (str,), "data_dir": (str,), "layers": (list,), "epochs": (int,),
    "batch_size": (int,), "lr": (int, float), "momentum": (int, float), "nesterov": (bool,),
    "weight_decay": (int, float), "schedule": (str,), "step_size": (int,),
    "gamma": (int, float), "patience": (int,), "validation": (int, float), "dtype": (str,),
    "seed": (int,), "checkpoint_every": (str, int), "keep_last": (int,),
}
RUN_FILE = "run.json"


def _fill_defaults(args) -> None:
    """Replace every unset training option with its (per-dataset) default."""
    if args.dataset is None:
        args.dataset = "digits"
    defaults = {**DEFAULTS.get(args.dataset, DEFAULTS["digits"]), "momentum": 0.9,
                "nesterov": False, "schedule": "cosine", "step_size": 10, "gamma": 0.1,
                "dtype": "float32", "seed": 0, "keep_last": 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def _save_run_options(args, directory: Path) -> None:
    """Record the resolved options of a checkpointed run in DIR/run.json."""
    options = {key: getattr(args, key) for key in RUN_OPTIONS}
    with atomic_writer(directory / RUN_FILE) as f:
        f.write(json.dumps(options, indent=1).encode())


def _restore_run_options(args, directory: Path) -> None:
    """Take the options recorded in DIR/run.json for every flag not given now."""
    path = directory / RUN_FILE
    if not directory.is_dir():
        raise ValueError(f"--resume: {directory} is not a directory")
    if not path.is_file():
        return  # checkpoints written from Python: the flags given now must match them
    try:
        saved = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable run options ({e})") from e
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: run options are not a JSON object")
    for key, types in RUN_OPTIONS.items():
        value = saved.get(key)
        if value is None:
            continue
        if isinstance(value, bool) != (types == (bool,)) or not isinstance(value, types) or (
                key == "layers" and not all(type(v) is int for v in value)):
            raise CheckpointError(f"{path}: option {key} is {value!r:.80}, expected "
                                  + " or ".join(t.__name__ for t in types))
        if getattr(args, key) is None:
            setattr(args, key, value)


def _eval(args) -> int:
    net = gpubp.MLP.load(args.model, backend=args.backend)
    data = load_dataset(args.dataset or "digits", data_dir=args.data_dir)
    if data.n_features != net.layer_sizes[0] or data.n_classes > net.layer_sizes[-1]:
        raise ValueError(f"--dataset: {data} does not fit the model's layer sizes "
                         f"{net.layer_sizes}")
    test = net.evaluate(data.X_test, data.y_test)
    print(f"{args.model} on {data.name} test: accuracy {100 * test['accuracy']:.2f}%, "
          f"loss {test['loss']:.4f} ({len(data.y_test)} rows)")
    if args.json:
        print(json.dumps({"model": args.model, "dataset": data.name, "rows": len(data.y_test),
                          "test_loss": test["loss"], "test_accuracy": test["accuracy"]}))
    return 0


def _info(args) -> int:
    backend = get_backend(args.backend)
    facts = {
        "gpubp": gpubp.__version__, "python": platform.python_version(),
        "backend": backend.name, "device": backend.device_name, "numpy": np.__version__,
        **cuda_versions(),
    }
    if args.json:
        print(json.dumps(facts))
    else:
        for key, value in facts.items():
            print(f"{key:>13}: {value if value is not None else 'not available'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

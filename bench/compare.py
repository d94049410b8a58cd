"""Train the same network with gpubp and its peers, side by side, in one run.

    python -m bench.compare                       # CPU and CUDA peers; a missing one is skipped
    python -m bench.compare --device cpu --batch-sizes 64,128,256,512,1024,2048,4096,8192

The network is 784-1024-1024-10 by default (sigmoid hidden layers, softmax, cross-entropy),
float32, plain SGD, on the first N rows of MNIST's training set (synthetic rows of the same
shape when MNIST is absent, said in the output). Each (configuration, peer) runs in its own
process (bench.worker): a warm-up epoch, then timed epochs, whose median gives samples/s.
The peers of one configuration run one after the other, so their ratios are measured close
together. Writes DIR/<date>-<tag>-compare.json and a throughput plot (.png, needs
matplotlib); prints a table. The peers are in bench.peers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.machine import cpu_model
from bench.peers import PEERS, select
from bench.worker import RESULT_PREFIX
from gpubp import blas_libraries, onednn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"
MiB = 2**20


@dataclass
class CompareConfig:
    """What to compare. A hidden layer stack is ``hidden_layers`` layers of one width.

    The batch sweep uses ``width``; the width sweep uses ``width_batch``. Every peer trains
    on the same ``rows`` rows (tiled when the data has fewer, e.g. for a batch of 65,536).
    """

    batch_sizes: tuple = (64, 256, 1024, 4096, 8192)
    widths: tuple = (256, 512, 1024, 2048)
    width: int = 1024
    width_batch: int = 256
    hidden_layers: int = 2
    n_in: int = 784
    n_classes: int = 10
    peers: tuple | None = None  # names from bench.peers.PEERS; None: the default ones
    device: str = "all"  # cpu, cuda or all
    data: str = "mnist"  # mnist or synthetic
    data_dir: str | None = None
    rows: int = 8192
    warmup: int = 1
    repeats: int = 3
    rounds: int = 1  # runs of each (configuration, peer), taking turns; epochs pooled
    lr: float = 0.1
    seed: int = 0
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    budget_s: float | None = None  # start no new run after this many seconds
    timeout_s: float = 600.0  # per run


def run_comparison(config: CompareConfig, log=print) -> dict:
    """Run every (configuration, peer) and return the report (see ``main`` for its use).

    ``report["results"]`` has one record per (configuration, peer): ``status`` "measured"
    with ``samples_per_s``, ``gpubp_over_peer`` (gpubp's samples/s on the same device ÷
    this peer's; > 1 means gpubp is faster) and memory figures, or "skipped"/"failed" with
    a ``reason``. A peer found unavailable once is skipped for the rest of the run.
    """
    started = time.monotonic()
    peers = select(config.peers, config.device)
    X, y, data_note = load_data(config)
    report = {
        "benchmark": "gpubp vs peers: sigmoid/softmax/cross-entropy MLP, float32, plain SGD",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(config.threads),
        "source": source_state(),
        "config": dataclasses.asdict(config),
        "data": {"source": data_note, "rows": int(X.shape[0])},
        "method": (f"one process per (configuration, peer, round), {config.rounds} round(s), "
                   "the peers of a configuration taking turns; samples/s = rows / median "
                   f"seconds of the {config.repeats} timed epochs per round after "
                   f"{config.warmup} warm-up epoch(s); "
                   "peak RSS = the process's VmHWM, RSS growth = that minus the RSS after "
                   "imports and data load; device peak = CuPy pool total / torch "
                   "max_memory_allocated"),
        "peers": {p.name: {"device": p.device, "reference": p.reference} for p in peers},
        "results": [],
    }
    log(f"data: {data_note}, {X.shape[0]} rows; threads {config.threads}; "
        f"peers {[p.name for p in peers]}")
    unavailable = {}  # peer name -> reason
    logged_skips = set()
    with tempfile.TemporaryDirectory(prefix="gpubp-compare-") as data_dir:
        np.save(Path(data_dir) / "X.npy", X)
        np.save(Path(data_dir) / "y.npy", y)
        deadline = None if config.budget_s is None else started + config.budget_s
        for sweeps, sizes, batch in configurations(config):
            point = {"sizes": list(sizes), "batch_size": batch, "lr": config.lr,
                     "seed": config.seed, "warmup": config.warmup, "repeats": config.repeats,
                     "threads": config.threads}
            outcomes = run_rounds(peers, point, data_dir, config, unavailable, deadline)
            for peer in peers:
                record = {"peer": peer.name, "device": peer.device, "sweeps": sweeps,
                          "sizes": list(sizes), "hidden_width": sizes[1], "batch_size": batch,
                          **summarize(outcomes[peer.name], X.shape[0])}
                report["results"].append(record)
                if record["status"] == "measured" or peer.name not in logged_skips:
                    log(progress_line(record))  # a peer's skip is said once
                if record["status"] == "skipped":
                    logged_skips.add(peer.name)
    add_ratios(report["results"], {p.name: p.reference for p in peers})
    for name, info in report["peers"].items():
        mine = [r for r in report["results"] if r["peer"] == name]
        info["status"] = "measured" if any(r["status"] == "measured" for r in mine) else (
            mine[0]["status"] if mine else "skipped")
        info["reason"] = unavailable.get(name) or next(
            (r["reason"] for r in mine if r["status"] != "measured"), None)
        info["versions"] = next((r["versions"] for r in mine if r.get("versions")), None)
    report["wall_s"] = time.monotonic() - started
    return report


def run_rounds(peers, point: dict, data_dir: str, config: CompareConfig, unavailable: dict,
               deadline: float | None) -> dict:
    """{peer name: [outcome per round]} at one point, the peers taking turns each round.

    Each round starts one peer later than the one before, so that no peer is always the
    first (or last) to meet a burst of load on a shared machine. A peer in ``unavailable``
    (name -> reason) is not started; one found skipped is added.
    """
    outcomes = {peer.name: [] for peer in peers}
    for round_ in range(config.rounds):
        shift = round_ % len(peers)
        for peer in peers[shift:] + peers[:shift]:
            if peer.name in unavailable:
                outcome = {"status": "skipped", "reason": unavailable[peer.name]}
            elif deadline is not None and time.monotonic() > deadline:
                outcome = {"status": "skipped",
                           "reason": f"time budget of {config.budget_s:g} s spent"}
            else:
                outcome = run_worker(peer, point, data_dir, config)
                if outcome["status"] == "skipped":
                    unavailable[peer.name] = outcome["reason"]
            outcomes[peer.name].append(outcome)
    return outcomes


def configurations(config: CompareConfig) -> list:
    """[(sweeps, layer sizes, batch)]: the batch sweep, then the width sweep, each point once."""
    def sizes(width):
        return (config.n_in, *[width] * config.hidden_layers, config.n_classes)

    points = {}
    for batch in config.batch_sizes:
        points.setdefault((sizes(config.width), batch), []).append("batch")
    for width in config.widths:
        points.setdefault((sizes(width), config.width_batch), []).append("width")
    return [(sweeps, s, b) for (s, b), sweeps in points.items()]


def load_data(config: CompareConfig):
    """(X (rows, n_in) float32 in [0, 1], y (rows,) int64, a note on where they came from)."""
    X = y = None
    if config.data == "mnist" and config.n_in == 784 and config.n_classes == 10:
        from gpubp.datasets import load_mnist

        data_dir = config.data_dir or (DEFAULT_MNIST_DIR if DEFAULT_MNIST_DIR.is_dir() else None)
        try:
            mnist = load_mnist(data_dir, download=False)
            X, y, note = mnist.X_train, mnist.y_train, f"MNIST train ({data_dir})"
        except Exception as e:  # absent or unreadable: fall back, and say so
            note = f"synthetic (MNIST not loaded: {type(e).__name__}: {e})"
    elif config.data == "mnist":
        note = "synthetic (MNIST needs n_in 784 and 10 classes)"
    else:
        note = "synthetic (asked for)"
    if X is None:
        rng = np.random.default_rng(config.seed)
        X = rng.random((config.rows, config.n_in), dtype=np.float32)
        y = rng.integers(0, config.n_classes, config.rows)
    if X.shape[0] < config.rows:
        note += f", its {X.shape[0]} rows tiled to {config.rows}"
    rows = np.arange(config.rows) % X.shape[0]
    return X[rows], y[rows], note  # fancy indexing: fresh C-contiguous copies


def run_worker(peer, point: dict, data_dir: str, config: CompareConfig) -> dict:
    """One peer at one point, in a fresh process with the same thread settings as the rest."""
    threads = str(config.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads, **peer.env,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    job = json.dumps({"peer": peer.name, "point": point, "data": data_dir})
    try:
        done = subprocess.run([sys.executable, "-m", "bench.worker", job], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=config.timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {config.timeout_s:g} s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"status": "failed",
                "reason": f"worker exited {done.returncode} without a result: {' | '.join(tail)}"}
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def summarize(outcomes: list, rows: int) -> dict:
    """A peer's outcomes at one point (one per round) as a result record.

    Measured when any round was: samples/s from the median of all timed epochs, memory the
    largest of the rounds, in MiB. Otherwise the first round's status and reason.
    """
    measured = [o for o in outcomes if o["status"] == "measured"]
    if not measured:
        return {k: outcomes[0][k] for k in ("status", "reason", "versions", "traceback")
                if k in outcomes[0]}
    epoch_s = [s for o in measured for s in o["epoch_s"]]
    median_s = float(np.median(epoch_s))

    def largest_mib(key):
        values = [o[key] for o in measured if o.get(key) is not None]
        return max(values) / MiB if values else None

    record = {"status": "measured", "samples_per_s": rows / median_s, "median_epoch_s": median_s,
              "best_samples_per_s": rows / min(epoch_s),
              "spread": (max(epoch_s) - min(epoch_s)) / median_s, "epoch_s": epoch_s,
              "final_loss": measured[-1].get("final_loss"),
              "peak_rss_MiB": largest_mib("peak_rss_bytes"),
              "rss_growth_MiB": max(((o["peak_rss_bytes"] - o["rss_before_bytes"]) / MiB
                                     for o in measured if o.get("rss_before_bytes")), default=None),
              "device_peak_MiB": largest_mib("device_peak_bytes"),
              "versions": measured[0].get("versions")}
    if len(measured) < len(outcomes):
        record["rounds_not_measured"] = [o.get("reason") for o in outcomes
                                         if o["status"] != "measured"]
    for key in ("warmup_s", "pool_used_bytes_per_epoch", "device_peak_reserved_bytes",
                "library", "per_library_epoch_s"):
        if key in measured[-1]:
            record[key] = measured[-1][key]
    if measured[-1].get("blas") is not None:  # what gpubp ran its GEMMs on, and why
        record["blas"] = [o.get("blas") for o in measured]
    return record


def add_ratios(results: list, references: dict) -> None:
    """Set ``gpubp_over_peer`` = reference gpubp samples/s ÷ peer samples/s, per point."""
    speed = {(r["peer"], tuple(r["sizes"]), r["batch_size"]): r.get("samples_per_s")
             for r in results}
    for r in results:
        ref = speed.get((references[r["peer"]], tuple(r["sizes"]), r["batch_size"]))
        r["reference"] = references[r["peer"]]
        r["gpubp_over_peer"] = (ref / r["samples_per_s"]
                                if ref and r.get("samples_per_s") else None)


def source_state() -> str | None:
    """The commit measured, with "+changes" when gpubp/ differs from it (None outside git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                                capture_output=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "gpubp"], cwd=REPO,
                                 text=True, capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+changes" if changed else "")) or None


def machine_facts(threads: int) -> dict:
    cpu = cpu_model()
    try:  # NumPy ≥ 1.26
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception:
        blas = None
    flags = onednn.cpu_flags()
    return {"node": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "numpy": np.__version__, "numpy_blas": blas,
            "gemm_libraries": blas_libraries.installed(),
            "cpu_bf16": sorted(f for f in onednn.BF16_CPU_FLAGS if f in flags),
            "cpu_vendor_flags": sorted(f for f in ("avx2", "avx512f", "amx_tile") if f in flags),
            "platform": platform.platform()}


# ---- output -------------------------------------------------------------------------------

def hidden_label(r: dict) -> str:
    """The record's hidden widths, e.g. "1024-1024"."""
    return "-".join(map(str, r["sizes"][1:-1]))


def progress_line(r: dict) -> str:
    where = f"{r['peer']:<22} {hidden_label(r):>10} B={r['batch_size']:<6}"
    if r["status"] == "measured":
        return f"{where} {r['samples_per_s']:>10,.0f} samples/s"
    return f"{where} {r['status']}: {r['reason']}"


def format_table(report: dict) -> str:
    """The measured records as a text table, then one line per peer that was not measured.

    gpubp÷peer > 1: gpubp is faster. spread: (slowest − fastest epoch) / median epoch.
    """
    head = (f"{'peer':<22} {'hidden':>10} {'batch':>6} {'samples/s':>10} {'gpubp÷peer':>10} "
            f"{'spread':>6} {'peak RSS MiB':>12} {'RSS growth':>10} {'device MiB':>10}")
    lines = [f"{report['machine']['cpu']}, {report['machine']['threads']} threads, "
             f"{report['date']}, source {report.get('source')}; "
             f"data: {report['data']['source']}, {report['data']['rows']} rows",
             head, "-" * len(head)]

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    for r in report["results"]:
        if r["status"] != "measured":
            continue
        lines.append(f"{r['peer']:<22} {hidden_label(r):>10} "
                     f"{r['batch_size']:>6} {r['samples_per_s']:>10,.0f} "
                     f"{num(r['gpubp_over_peer'], '.2f'):>10} {r['spread']:>6.0%} "
                     f"{r['peak_rss_MiB']:>12.0f} "
                     f"{num(r['rss_growth_MiB'], '.0f'):>10} {num(r['device_peak_MiB'], '.0f'):>10}")
    for name, info in report["peers"].items():
        if info["status"] != "measured":
            lines.append(f"{name}: {info['status']} ({info['reason']})")
    for r in report["results"]:
        if r["status"] == "measured" and (r.get("blas") or r.get("library")):
            lines.append(f"{r['peer']} {hidden_label(r)} B={r['batch_size']}: "
                         f"{gemm_choice_line(r)}")
    failed = [r for r in report["results"] if r["status"] == "failed"
              and report["peers"][r["peer"]]["status"] == "measured"]
    for r in failed:
        lines.append(f"{r['peer']} at {r['sizes']} B={r['batch_size']}: failed ({r['reason']})")
    return "\n".join(lines)


def gemm_choice_line(r: dict) -> str:
    """Which GEMM library a gpubp row (or the ceiling) ran on, and why, in a few words."""
    if r.get("library"):  # gemm-only: the fastest library at this point
        medians = {n: float(np.median(t)) for n, t in r["per_library_epoch_s"].items()}
        return f"ceiling on {r['library']} (median epoch s: " + ", ".join(
            f"{n} {t:.3f}" for n, t in sorted(medians.items(), key=lambda x: x[1])) + ")"
    said = []
    for report in r["blas"]:
        if report is None:
            continue
        if report.get("precision") == "bf16":
            said.append("bf16 on oneDNN's matmul (" + ", ".join(report.get("bf16_kernels", []))
                        + ")")
        elif report.get("reason"):
            said.append(f"{report['in_use']} ({report['reason']})")
        else:
            for c in report.get("choices", []):
                said.append(f"{c['library']} ({c['source']}: {c['reason']})")
    return "; ".join(dict.fromkeys(said)) or "?"


def plot(report: dict, path: Path) -> str | None:
    """Throughput against batch size (and against width) as a PNG; a note when it cannot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError as e:
        return f"no plot: matplotlib is not installed ({e})"
    measured = [r for r in report["results"] if r["status"] == "measured"]
    panels = [(sweep, x_key, label) for sweep, x_key, label in
              (("batch", "batch_size", "batch size"), ("width", "hidden_width", "hidden width"))
              if any(sweep in r["sweeps"] for r in measured)]
    if not panels:
        return "no plot: nothing was measured"
    config = report["config"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (sweep, x_key, label) in zip(axes[0], panels):
        for name in report["peers"]:
            points = sorted((r[x_key], r["samples_per_s"]) for r in measured
                            if r["peer"] == name and sweep in r["sweeps"])
            if points:
                style = "-" if name.startswith("gpubp") else "--"
                ax.plot(*zip(*points), style, marker="o", label=name,
                        linewidth=2.5 if name.startswith("gpubp") else 1.5)
        ax.set_xscale("log", base=2)
        ticks = sorted({r[x_key] for r in measured if sweep in r["sweeps"]})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(  # label 2×, 5× of each decade only
            lambda value, _: f"{value:,.0f}" if f"{value:.0e}"[0] in "25" else ""))
        ax.set_xlabel(label)
        ax.set_ylabel("training samples/s (median epoch)")
        hidden = (f"hidden {config['hidden_layers']}×{config['width']}" if sweep == "batch"
                  else f"{config['hidden_layers']} hidden layers, batch {config['width_batch']}")
        ax.set_title(f"{hidden}, float32, plain SGD")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    m = report["machine"]
    fig.suptitle(f"{m['cpu']}, {m['threads']} threads, {report['date'][:10]}; "
                 f"{report['data']['rows']} rows of {report['data']['source'].split(' (')[0]}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def parse_ints(text: str) -> tuple:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv=None) -> dict:
    defaults = CompareConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", type=parse_ints, default=defaults.batch_sizes,
                   help="comma-separated, at the base width (default %(default)s)")
    p.add_argument("--widths", type=parse_ints, default=defaults.widths,
                   help="hidden widths for the width sweep at --width-batch; '' for none")
    p.add_argument("--width", type=int, default=defaults.width, help="base hidden width")
    p.add_argument("--width-batch", type=int, default=defaults.width_batch)
    p.add_argument("--hidden-layers", type=int, default=defaults.hidden_layers)
    p.add_argument("--peers", type=lambda s: tuple(s.split(",")), default=None,
                   help=f"comma-separated, of {', '.join(PEERS)} (default: all but the tf32 ones)")
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default=defaults.device)
    p.add_argument("--data", choices=("mnist", "synthetic"), default=defaults.data)
    p.add_argument("--data-dir", default=None,
                   help=f"MNIST .gz files (default {DEFAULT_MNIST_DIR} when present)")
    p.add_argument("--rows", type=int, default=defaults.rows, help="rows per epoch, every peer")
    p.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed epochs")
    p.add_argument("--repeats", type=int, default=defaults.repeats, help="timed epochs")
    p.add_argument("--rounds", type=int, default=defaults.rounds,
                   help="runs of each (configuration, peer), the peers taking turns")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--threads", type=int, default=defaults.threads,
                   help="BLAS/OpenMP/torch threads for every peer (default: all cores)")
    p.add_argument("--budget-s", type=float, default=None, help="start no run after this")
    p.add_argument("--timeout-s", type=float, default=defaults.timeout_s, help="per run")
    p.add_argument("--out", default=str(REPO / "bench" / "results"), help="directory")
    p.add_argument("--tag", default=None, help="file name tag (default: cpu, or gpu when a "
                                               "CUDA peer was measured)")
    p.add_argument("--json", action="store_true", help="also print the JSON report last")
    args = p.parse_args(argv)
    given = vars(args)  # the options are named as CompareConfig's fields
    config = CompareConfig(**{f.name: given[f.name] for f in dataclasses.fields(CompareConfig)
                              if f.name in given})
    report = run_comparison(config)
    gpu_measured = any(r["status"] == "measured" and r["device"] == "cuda"
                       for r in report["results"])
    tag = args.tag or ("gpu" if gpu_measured else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{report['date'][:10]}-{tag}-compare"
    note = plot(report, stem.with_suffix(".png"))
    report["plot"] = note or str(stem.with_suffix(".png"))
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print()
    print(format_table(report))
    print(f"\nwrote {stem.with_suffix('.json')}; plot: {report['plot']}")
    if args.json:
        print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()

"""Regenerate the tables of docs/benchmarks.md from the result files in bench/results.

    python -m bench.report [--results bench/results] [--out docs/benchmarks.md] [--check]

The document is hand-written prose with generated blocks between marker comments:

    <!-- generated: compare 2026-11-29-cpu-compare.json -->
    (rewritten on every run)
    <!-- /generated -->

A block names a kind and a file; each run replaces what lies between its markers with
that file's tables and leaves everything outside the markers as it was, so new results
change the tables only. Kinds: ``compare`` (bench.compare), ``gpu-check``
(bench/gpu_check.py), ``step-profile``, ``mnist-800``, ``mnist-sweep``, ``fuzz``
(bench.fuzz_loaders), ``log`` (its last line), ``generic`` and ``auto`` (detected from the
content); and two that take no file: ``files``, an index of every result file, and
``unplaced``, a section for each result file that no block names. A file whose format
this report does not know, or cannot read as the kind named, is shown by its top-level
keys instead: a new benchmark's results appear, untabulated, rather than break the report.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Markers stand alone on their lines, so that prose may quote them. A body never spans
# another opening marker: a block left unclosed must not swallow the prose after it.
BLOCK = re.compile(r"^(<!-- generated:[ \t]*(?P<spec>[^\n]*?)[ \t]*-->\n)"
                   r"(?P<body>(?:(?!^<!-- generated:).)*?)^(<!-- /generated -->)",
                   re.DOTALL | re.MULTILINE)
OPENING = re.compile(r"^<!-- generated:", re.MULTILINE)
SKELETON = """# Benchmarks

The tables between the `generated` markers are written by `python -m bench.report` from the
files in `bench/results/`; edit the prose around them, not the tables.

## Result files

<!-- generated: files -->
<!-- /generated -->

## Results

<!-- generated: unplaced -->
<!-- /generated -->
"""
GPU_SECTIONS = {"sections", "copy_bandwidth_GBps", "tests", "kernels", "step_time",
                "step_time_tf32", "compare_cuda", "mnist_800"}
PEER_LABELS = {"gemm-only": "gemm-only (the ceiling)"}
# What a renderer may meet in a file of another shape; anything else is a bug here.
SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError)


@dataclasses.dataclass
class Result:
    """One file of bench/results: its name, its parsed JSON (or text), and its kind."""

    name: str
    label: str  # the path shown in the document
    kind: str
    data: object = None
    error: str | None = None  # why it could not be read


# ---- reading ------------------------------------------------------------------------------

def load_results(results: Path) -> dict:
    """{file name: Result} for every file in ``results``, sorted by name; never raises."""
    label_dir = _display(results)
    found = {}
    for path in sorted(p for p in results.iterdir() if p.is_file()) if results.is_dir() else []:
        r = Result(path.name, f"{label_dir}/{path.name}", "unknown")
        if path.suffix == ".json":
            try:
                r.data = json.loads(path.read_text())
                r.kind = detect(r.data)
            except (OSError, UnicodeDecodeError, ValueError) as e:
                r.kind, r.error = "unreadable", f"{type(e).__name__}: {e}"
        elif path.suffix in (".log", ".txt"):
            r.kind = "log"
            try:
                r.data = path.read_text(errors="replace")
            except OSError as e:
                r.kind, r.error = "unreadable", f"{type(e).__name__}: {e}"
        elif path.suffix in (".png", ".svg", ".pdf"):
            r.kind = "plot"
        found[path.name] = r
    return found


def _display(path: Path) -> str:
    """``path`` relative to the repository when inside it: the document stays the same
    whichever directory the report runs from."""
    try:
        return path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        return path.as_posix()


def detect(data) -> str:
    """The kind of a parsed result file, from its content (names change; keys do less)."""
    if isinstance(data, list):
        rows = [d for d in data if isinstance(d, dict)]
        if rows and all("step_ms" in d for d in rows):
            return "step-profile"  # bench.step_profile --out
        if rows and any(_is_mnist(d) for d in rows):
            return "mnist-sweep"  # bench.mnist_sweep --out
        return "unknown"
    if not isinstance(data, dict):
        return "unknown"
    if isinstance(data.get("results"), list) and isinstance(data.get("peers"), dict):
        return "compare"
    if isinstance(data.get("loaders"), dict) and "total_cases" in data:
        return "fuzz"
    if isinstance(data.get("profile"), list):
        return "step-profile"
    if isinstance(data.get("runs"), list):
        return "mnist-sweep"
    if _is_mnist(data):
        return "mnist-800"
    if isinstance(data.get("device"), dict) and GPU_SECTIONS & data.keys():
        return "gpu-check"
    return "unknown"


def _is_mnist(d) -> bool:
    return isinstance(d, dict) and ("test_error_per_epoch" in d
                                    or str(d.get("benchmark", "")).startswith("mnist"))


# ---- formatting ---------------------------------------------------------------------------

def _esc(value) -> str:
    """A value as one table cell: one line, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _g(value, digits: int = 3) -> str:
    """A float to ``digits`` significant digits, with thousands separators when large."""
    if value is None:
        return "–"
    if abs(value) >= 10 ** digits:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return _g(value, 4)
    if isinstance(value, (list, tuple)) and all(not isinstance(v, (list, dict)) for v in value):
        return _esc(", ".join(map(str, value)) if len(value) <= 8 else f"list of {len(value)}")
    if isinstance(value, list):
        return f"(list of {len(value)})"
    if isinstance(value, dict):
        return f"(object with {len(value)} keys)"
    text = _esc(value)
    return text if len(text) <= 160 else text[:157] + "..."


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _table(head: list, rows: list) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _records_table(rows: list) -> str:
    """Any list of flat records as a table: one column per scalar key, in first-seen order."""
    records = [r for r in rows if isinstance(r, dict)]
    columns = []
    for r in records:
        columns += [k for k, v in r.items() if k not in columns and not isinstance(v, dict)
                    and not (isinstance(v, list) and len(v) > 8)]
    if not columns:
        return f"({len(rows)} entries, none a flat record)"
    return _table(columns, [[_cell(r.get(k, "–")) for k in columns] for r in records])


def _date(text) -> str | None:
    """An ISO date as "YYYY-MM-DD HH:MM", with UTC when the file says so."""
    if not isinstance(text, str):
        return None
    try:  # fromisoformat accepts "Z" only from Python 3.11
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    utc = when.utcoffset() == datetime.timedelta(0)
    zone = " UTC" if utc else (f" {when.strftime('%z')}" if when.tzinfo else "")
    return f"{when:%Y-%m-%d %H:%M}{zone}"


def _scalars(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()
                     if v is not None and not isinstance(v, (dict, list)))


# ---- facts: the machine, the date and the command of each kind -------------------------

def gpu_machine(device) -> str:
    """The GPU and its software, from gpu_check's ``device`` section."""
    if not isinstance(device, dict):
        return "not recorded"
    parts = [str(device.get("name", "GPU"))]
    if device.get("multiprocessors"):
        parts[0] += f" ({device['multiprocessors']} SMs, {device.get('memory_GiB', 0):.0f} GiB)"
    smi = str(device.get("nvidia_smi") or "").split(", ")
    if len(smi) > 1:
        parts.append(f"driver {smi[1]}")
    if device.get("cuda_runtime"):
        parts.append(f"CUDA runtime {device['cuda_runtime']} (driver API "
                     f"{device.get('cuda_driver')})")
    for key, name in (("cupy", "CuPy"), ("torch", "PyTorch"), ("numpy", "NumPy"),
                      ("python", "Python")):
        if device.get(key):
            parts.append(f"{name} {device[key]}")
    return "; ".join(parts) + "; host CPU not recorded"


def facts(r: Result) -> dict:
    """{"machine", "date", "source", "command"}: what a table says of where it came from.

    "command" is as recorded, or rebuilt from the recorded options where the benchmark
    does not record it (then "command_note" says so).
    """
    d = r.data if isinstance(r.data, dict) else {}
    out = {"machine": None, "date": None, "source": d.get("source"),
           "command": d.get("command"), "command_note": None}
    try:
        if r.kind == "compare":
            m = d.get("machine") or {}
            out["machine"] = (f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('threads')} "
                              f"threads; Python {m.get('python')}")
            out["date"] = _date(d.get("date"))
            if not out["command"]:
                out["command"] = compare_command(d.get("config") or {}, m)
                out["command_note"] = "rebuilt from the recorded options"
        elif r.kind in ("gpu-check", "step-profile", "mnist-sweep"):
            runs = r.data if isinstance(r.data, list) else d.get("runs") or d.get("profile") or []
            first = next((x for x in runs if isinstance(x, dict)), {})
            if isinstance(d.get("device"), dict):
                out["machine"] = gpu_machine(d["device"])
            elif first.get("device"):
                out["machine"] = f"{first['device']} (backend {first.get('backend')})"
            out["date"] = _date(d.get("date") or first.get("date"))
        elif r.kind == "mnist-800":
            out["machine"] = mnist_machine(d)
            out["date"] = _date(d.get("date"))
            if not out["command"]:
                out["command"] = mnist_command(d)
                out["command_note"] = "rebuilt from the recorded options; --data-dir not recorded"
        elif r.kind == "fuzz":
            out["machine"] = (f"not recorded; Python {d.get('python')}, "
                              f"NumPy {d.get('numpy')}")
            out["date"] = _date(d.get("started_utc"))
        elif isinstance(r.data, dict):  # generic: whatever environment it records
            for key in ("machine", "device", "cpu", "gpu", "platform"):
                if key in d:
                    value = d[key]
                    out["machine"] = _scalars(value) if isinstance(value, dict) else str(value)
                    break
            out["date"] = _date(next((d[k] for k in ("date", "started_utc", "timestamp")
                                      if k in d), None))
    except SHAPE_ERRORS:  # the header is best effort; the body says what is wrong
        pass
    return out


def mnist_machine(d: dict) -> str:
    if d.get("backend") == "cupy" or d.get("device") not in (None, "cpu"):
        return (f"{d.get('device')}, CuPy {d.get('cupy')}, CUDA runtime "
                f"{d.get('cuda_runtime')}; host CPU not recorded")
    return (f"CPU model not recorded (processor field {d.get('processor')!r}); "
            f"NumPy {d.get('numpy')}")


def source_defaults(module: str, name: str) -> dict | None:
    """{option: default} of class or function ``name`` in bench/``module``.py, read from
    its source: the defaults live there, and reading them imports nothing (gpubp, MKL),
    so a report is written even while the package does not import. None when not found;
    a default that is not a literal (a default_factory) is left out."""
    try:
        tree = ast.parse((REPO / "bench" / f"{module}.py").read_text())
    except (OSError, SyntaxError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == name:
            pairs = [(n.target.id, n.value) for n in node.body if isinstance(n, ast.AnnAssign)
                     and isinstance(n.target, ast.Name) and n.value is not None]
        elif isinstance(node, ast.FunctionDef) and node.name == name:
            args = node.args.args
            pairs = [(a.arg, v) for a, v in zip(args[len(args) - len(node.args.defaults):],
                                                node.args.defaults)]
        else:
            continue
        defaults = {}
        for key, value in pairs:
            try:
                defaults[key] = ast.literal_eval(value)
            except ValueError:
                pass
        return defaults
    return None


def compare_command(config: dict, machine: dict) -> str | None:
    """The bench.compare command line that gives ``config``: its non-default options."""
    defaults = source_defaults("compare", "CompareConfig")
    if defaults is None:
        return None
    parts = ["python -m bench.compare"]
    for key, value in config.items():
        if key == "threads":  # its default is the core count of the machine that ran it
            if value == machine.get("cores"):
                continue
        elif key not in defaults:  # an option since removed: no flag gives it now
            continue
        elif value == (list(defaults[key]) if isinstance(defaults[key], tuple)
                       else defaults[key]):  # JSON gives lists for the tuples
            continue
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(map(str, value)) or '""'
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(parts)


def mnist_command(d: dict) -> str | None:
    """The bench.mnist_800 command line that gives this result's configuration."""
    defaults = source_defaults("mnist_800", "run")
    if defaults is None:
        return None
    parts = ["python -m bench.mnist_800", f"--backend {d.get('backend')}"]
    for key, value in (d.get("config") or {}).items():
        if key in defaults and value != defaults[key]:
            flag = "--" + key.replace("_", "-")
            parts.append(flag if value is True else f"{flag} {value:g}"
                         if isinstance(value, float) else f"{flag} {value}")
    return " ".join(parts)


def header(r: Result, f: dict) -> str:
    lines = [f"- file: `{r.label}`"]
    if f["machine"]:
        lines.append(f"- machine: {f['machine']}")
    if f["date"] or f["source"]:
        when = f["date"] or "not recorded"
        lines.append(f"- date: {when}" + (f"; measured source {f['source']}" if f["source"]
                                          else ""))
    if f["command"]:
        note = f" ({f['command_note']})" if f["command_note"] else ""
        lines.append(f"- command{note}: `{f['command']}`")
    elif r.kind not in ("log", "plot"):
        lines.append("- command: not recorded")
    return "\n".join(lines)


# ---- bodies -------------------------------------------------------------------------------

def compare_body(d: dict) -> str:
    """bench.compare's report: a table per sweep, then the peers not measured and why."""
    results = [r for r in d["results"] if isinstance(r, dict)]
    peers = list(d.get("peers") or {}) or list(dict.fromkeys(r["peer"] for r in results))
    config = d.get("config") or {}
    parts = []
    versions = {}
    for name in peers:  # the versions each measured peer ran with, each said once
        for key, value in ((d["peers"].get(name) or {}).get("versions") or {}).items():
            if key != "device":
                versions.setdefault(f"{name}'s BLAS" if key == "blas" else key, value)
    machine = d.get("machine") or {}
    if machine.get("numpy_blas"):
        versions["NumPy's own BLAS"] = machine["numpy_blas"]
    if versions:
        parts.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    data = d.get("data") or {}
    source = str(data.get("source", "not recorded"))
    rounds, repeats = config.get("rounds", 1), config.get("repeats")
    if not source.startswith("synthetic"):  # the reason for synthetic rows is worth reading
        source = source.split(" (")[0]  # a real data set's folder on that machine is not
    parts.append(f"Data: {source}, {_cell(data.get('rows', '?'))} rows. Each cell: samples/s "
                 f"= rows ÷ the median of {rounds} round(s) × {repeats} timed epochs, each "
                 f"process after {config.get('warmup', '?')} warm-up epoch(s), "
                 f"{config.get('threads', '?')} threads; in brackets gpubp÷peer (above 1, "
                 "gpubp is faster).")
    for sweep, key, axis in (("batch", "batch_size", "B"), ("width", "hidden_width", "w")):
        mine = [r for r in results if sweep in (r.get("sweeps") or [])]
        if any(r.get("status") == "measured" for r in mine):
            parts.append(_sweep_table(mine, peers, sweep, key, axis, config))
    spreads = [(r["spread"], r) for r in results if r.get("spread") is not None]
    if spreads:
        spreads.sort(key=lambda s: s[0])
        worst, r = spreads[-1]
        parts.append(f"Epoch-time spread, (slowest − fastest) ÷ median epoch: median "
                     f"{spreads[len(spreads) // 2][0]:.0%} over the {len(spreads)} measured "
                     f"cells, largest {worst:.0%} ({r['peer']}, "
                     f"{'-'.join(map(str, r['sizes']))}, B={r['batch_size']}).")
    notes = []
    for name, info in (d.get("peers") or {}).items():
        if info.get("status") != "measured":
            notes.append(f"- {name}: {info.get('status')} ({_esc(info.get('reason'))})")
    for r in results:
        if r.get("status") == "failed" and (d["peers"].get(r["peer"]) or {}).get(
                "status") == "measured":
            notes.append(f"- {r['peer']} at {'-'.join(map(str, r['sizes']))}, "
                         f"B={r['batch_size']}: failed ({_esc(r.get('reason'))})")
        if r.get("rounds_not_measured"):
            notes.append(f"- {r['peer']} at B={r['batch_size']}: rounds not measured: "
                         f"{_esc(r['rounds_not_measured'])}")
    if notes:
        parts.append("Not measured:\n\n" + "\n".join(notes))
    return "\n\n".join(parts)


def _sweep_table(records, peers, sweep, key, axis, config) -> str:
    xs = sorted({r[key] for r in records})
    sizes = {tuple(r["sizes"]) for r in records}
    if sweep == "batch":
        shape = "-".join(map(str, next(iter(sizes)))) if len(sizes) == 1 else "several shapes"
        title = f"Batch sweep, {shape}, samples/s:"
    else:
        layers = config.get("hidden_layers", 2)
        shape = "-".join([str(config.get("n_in", "?"))] + ["w"] * layers
                         + [str(config.get("n_classes", "?"))])
        batch = sorted({r["batch_size"] for r in records})
        title = f"Width sweep, {shape} at B={', '.join(map(str, batch))}, samples/s:"
    memory = [("peak_rss_MiB", "peak RSS MiB")]
    if any(r.get("device_peak_MiB") for r in records):
        memory.append(("device_peak_MiB", "device peak MiB"))
    span = f" ({axis}={xs[0]} / {xs[-1]})" if len(xs) > 1 else ""
    head = ["peer"] + [f"{axis}={x}" for x in xs] + [f"{label}{span}" for _, label in memory]
    rows = []
    for name in peers:
        cells = {r[key]: r for r in records if r["peer"] == name}
        if not any(c.get("status") == "measured" for c in cells.values()):
            continue  # said once below the tables, with the reason
        row = [PEER_LABELS.get(name, name)]
        for x in xs:
            c = cells.get(x)
            if c is None:
                row.append("")
            elif c.get("status") != "measured":
                row.append(c.get("status", "?"))
            else:
                ratio = c.get("gpubp_over_peer")
                mine = c.get("reference") == name or ratio is None
                row.append(f"{c['samples_per_s']:,.0f}" + ("" if mine else f" ({ratio:.2f}×)"))
        measured = [cells[x] for x in xs if cells.get(x, {}).get("status") == "measured"]
        for field, _ in memory:
            ends = [measured[0], measured[-1]] if len(xs) > 1 else measured[:1]
            row.append(" / ".join("–" if c.get(field) is None else f"{c[field]:.0f}"
                                  for c in ends))
        rows.append(row)
    return f"{title}\n\n{_table(head, rows)}"


def gpu_check_body(d: dict) -> str:
    """gpu_check.json, section by section; a section it does not know is shown generically.
    The current format (bench/gpu_check.py, "sections": name → entry) has a renderer of
    its own; the older one (sections at the top level) is kept for the files in it."""
    if isinstance(d.get("sections"), dict):
        return _gpu_check_sections(d)
    parts = []
    known = {"date", "device", "command", "source"}
    for key, value in d.items():
        if key in known:
            continue
        if isinstance(value, dict) and "error" in value:
            parts.append(f"**{key}**: failed: {_esc(value['error'])}")
            continue
        try:
            parts.append(_gpu_section(key, value))
        except SHAPE_ERRORS as e:
            parts.append(f"**{key}** (not in the expected shape: {type(e).__name__}: {e}):\n\n"
                         + _generic_value(value))
    return "\n\n".join(parts)


def _gpu_check_sections(d: dict) -> str:
    """The current gpu_check format: a table of the sections, the targets, then each
    section's figures."""
    sections = d["sections"]
    rows = []
    for name, entry in sections.items():
        note = entry.get("reason") or entry.get("error") or ""
        rows.append([name, str(entry.get("status", "?")), _g(entry.get("seconds")),
                     _g(entry.get("timeout_s")), _esc(note.splitlines()[0][:160] if note else "")])
    finished = "" if d.get("finished", True) else " The run did not finish (interrupted)."
    parts = [f"Budget {_g(d.get('budget_s'))} s, {_g(d.get('elapsed_s'))} s used.{finished} "
             f"Each section ran in a process of its own; its log is `<section>.log`.\n\n"
             + _table(["section", "status", "seconds", "timeout s", "note"], rows)]
    targets = [t for t in d.get("targets") or [] if isinstance(t, dict)]
    if targets:
        marks = {True: "pass", False: "**FAIL**", None: "not measured"}
        parts.append("Targets (issue 12) and checks:\n\n" + _table(
            ["target", "kind", "result", "measured"],
            [[_esc(t.get("name")), str(t.get("kind", "")), marks.get(t.get("pass"), "?"),
              _esc(t.get("measured") or t.get("why") or "")] for t in targets]))
    for name, entry in sections.items():
        result = entry.get("result")
        if not result:
            continue
        try:
            body = _GPU_SECTION_BODIES.get(name, _gpu_generic_section)(result)
        except SHAPE_ERRORS as e:
            body = (f"(not in the expected shape: {type(e).__name__}: {e})\n\n"
                    + _generic_value(result))
        parts.append(f"**{name}** ({entry.get('status')}): {body}")
    return "\n\n".join(parts)


def _gpu_generic_section(result: dict) -> str:
    return "\n\n" + _generic_value(result)


def _gpu_environment(r: dict) -> str:
    text = []
    if r.get("copy_bandwidth_GBps"):
        copy = r.get("copy") or {}
        text.append(f"device-to-device copy (bytes read + written) "
                    f"{r['copy_bandwidth_GBps']:,.0f} GB/s (best {copy.get('best_GBps', 0):,.0f})")
    for precision, g in (r.get("gemm") or {}).items():
        if isinstance(g, dict) and g.get("TFLOPs"):
            text.append(f"{g.get('n')}³ GEMM {precision} {g['TFLOPs']:.1f} TFLOP/s")
    smi = (r.get("device") or {}).get("nvidia_smi")
    if isinstance(smi, dict):
        text.append("nvidia-smi: " + ", ".join(f"{k} {v}" for k, v in smi.items()
                                              if k not in ("name", "driver_version")))
    return "; ".join(text) + "." if text else "no figures."


def _gpu_tests(r: dict) -> str:
    text = f"{_esc(r.get('summary') or r.get('counts'))}"
    if r.get("stopped_early"):
        text += f" Stopped early: {_esc(r['stopped_early'])}."
    if r.get("running"):
        text += f" The process ended inside `{_esc(r['running'])}`."
    failures = r.get("failures") or []
    if failures:
        text += "\n\n" + "\n".join(f"- `{_esc(f.get('nodeid'))}` ({f.get('when')}): "
                                     f"{_esc(f.get('message'))}" for f in failures)
    return text


_STEP_WAYS = (("gpubp_graph", "gpubp graph"), ("gpubp_eager", "gpubp eager"),
              ("torch_eager", "PyTorch eager"), ("torch_graph", "PyTorch CUDA graph"),
              ("torch_compile", "torch.compile"))


def _step_cell(cell) -> str:
    if not isinstance(cell, dict):
        return "–"
    if "ms" in cell:
        return f"{cell['ms']:.3f}"
    if "skipped" in cell:
        return "skipped" if "budget" not in str(cell["skipped"]) else "budget"
    return "failed" if "error" in cell else "–"


def _gpu_step(r: dict) -> str:
    rows = [row for row in r.get("rows") or [] if isinstance(row, dict)]
    parts = [f"ms per training step (gather, forward, loss, backward, "
             f"{_esc((r.get('config') or {}).get('optimizer', 'SGD'))}), median of "
             f"{(r.get('config') or {}).get('repeats', '?')} repeats, CUDA events; "
             "in brackets PyTorch's time ÷ gpubp-graph's (above 1, gpubp is faster)."]
    for precision in dict.fromkeys(row.get("precision", "fp32") for row in rows):
        mine = [row for row in rows if row.get("precision", "fp32") == precision]
        ways = [(k, label) for k, label in _STEP_WAYS if any(k in row for row in mine)]
        head = ["net", "batch"] + [f"{label} ms" for _, label in ways] + \
            ["pool constant", "launches (eager)"]
        table = []
        for row in mine:
            speed = row.get("speedup") or {}
            cells = []
            for key, _ in ways:
                cell = _step_cell(row.get(key))
                ratio = speed.get(f"gpubp_graph_vs_{key}")
                if key.startswith("torch") and ratio:
                    cell += f" ({ratio:.2f}×)"
                cells.append(cell)
            pools = [row[k].get("pool_constant_from_step_2") for k in ("gpubp_graph", "gpubp_eager")
                     if isinstance(row.get(k), dict) and "pool_constant_from_step_2" in row[k]]
            eager = row.get("gpubp_eager") if isinstance(row.get("gpubp_eager"), dict) else {}
            launches = (f"{eager['kernel_launches_per_step']} + {eager.get('gemms_per_step')} GEMMs"
                        if "kernel_launches_per_step" in eager else "–")
            table.append([str(row.get("net")), f"{row.get('batch', 0):,}"] + cells
                         + [str(all(pools)) if pools else "–", launches])
        parts.append(f"{precision.upper()}:\n\n" + _table(head, table))
    profile = [p for p in r.get("profile") or [] if isinstance(p, dict) and "step_ms" in p]
    if profile:
        parts.append(step_profile_body(profile))
    notes = [f"- {row.get('net')} B={row.get('batch')} {row.get('precision')} {key}: "
             f"{_esc(row[key].get('error') or row[key].get('skipped'))[:200]}"
             for row in rows for key, _ in _STEP_WAYS
             if isinstance(row.get(key), dict) and ("error" in row[key] or (
                 "skipped" in row[key] and "budget" not in str(row[key]["skipped"])))]
    if notes:
        parts.append("Not measured:\n\n" + "\n".join(notes[:20]))
    return "\n\n".join(parts)


def _gpu_kernels(r: dict) -> str:
    copy = r.get("copy_bandwidth_GBps")
    parts = [f"CUDA events, median; fractions of the copy bandwidth "
             f"({_g(copy)} GB/s, {_esc(r.get('copy_bandwidth_source'))})."]
    xent = [x for x in r.get("softmax_xent") or [] if isinstance(x, dict)]
    if xent:
        parts.append(_table(
            ["B", "C", "path", "fused CE GB/s", "of copy", "with bias, db, loss sum GB/s",
             "of copy", "PyTorch fwd+bwd ms", "speedup"],
            [[f"{x['B']:,}", f"{x['C']:,}", str(x.get("path", "–")), _g(x.get("fused_GBps")),
              _pct(x.get("fraction_of_copy")), _g(x.get("bias_GBps")),
              _pct(x.get("bias_fraction_of_copy")), _ms(x.get("torch_s")),
              "–" if x.get("speedup_vs_torch") is None else f"{x['speedup_vs_torch']:.2f}×"]
             if "fused_GBps" in x else
             [f"{x['B']:,}", f"{x['C']:,}", _esc(x.get("error") or x.get("skipped"))[:80]]
             + [""] * 6 for x in xent]))
    sig = [x for x in r.get("sigmoid") or [] if isinstance(x, dict)]
    if sig:
        parts.append(_table(
            ["B", "N", "bias_sigmoid GB/s", "sigmoid_backward GB/s", "with dbias GB/s",
             "with dbias, of copy", "PyTorch σ' + column sum ms", "speedup"],
            [[f"{x['B']:,}", f"{x['N']:,}", _g(x.get("bias_sigmoid_GBps")),
              _g(x.get("sigmoid_backward_GBps")), _g(x.get("sigmoid_backward_dbias_GBps")),
              _pct(x.get("sigmoid_backward_dbias_fraction_of_copy")), _ms(x.get("torch_dbias_s")),
              "–" if x.get("dbias_speedup_vs_torch") is None
              else f"{x['dbias_speedup_vs_torch']:.2f}×"]
             if "bias_sigmoid_GBps" in x else
             [f"{x['B']:,}", f"{x['N']:,}", _esc(x.get("error") or x.get("skipped"))[:80]]
             + [""] * 5 for x in sig]))
    return "\n\n".join(parts)


def _gpu_mnist(r: dict) -> str:
    reference = r.get("numpy_reference") or {}
    rows = []
    for run in r.get("runs") or []:
        done = "yes" if run.get("completed") else f"stopped at {run.get('epochs_done')}"
        rows.append([str(run.get("precision")), done, _g(run.get("fit_wall_s")),
                     _g(run.get("first_epoch_s")), _g(run.get("median_epoch_s")),
                     _pct(run.get("final_test_error")),
                     "yes" if run.get("graphs_turned_off") else "no"])
    text = (f"784-800-10, {_esc((r.get('config') or {}).get('epochs'))} epochs, B="
            f"{_esc((r.get('config') or {}).get('batch_size'))}; NumPy's final test error "
            f"{_pct(reference.get('final_test_error'))} ({_esc(reference.get('source'))}).")
    if rows:
        text += "\n\n" + _table(["precision", "finished", "fit s", "first epoch s",
                                  "median epoch s", "final test error", "graphs off"], rows)
    if r.get("tf32_skipped"):
        text += f"\n\nTF32 not run: {_esc(r['tf32_skipped'])}."
    return text


def _gpu_data_parallel(r: dict) -> str:
    if r.get("max_relative_difference") is None:
        return _esc((r.get("mpi") or {}).get("why_not") or "no comparison")
    return (f"2 ranks against 1: max relative difference of the weights "
            f"{r['max_relative_difference']:.2e} (tolerance {r.get('tolerance')}), of the "
            f"losses {r.get('max_loss_difference', 0):.2e}; reduction "
            f"{_esc(r.get('device_reduction'))}.")


_GPU_SECTION_BODIES = {"environment": _gpu_environment, "tests": _gpu_tests, "step": _gpu_step,
                       "kernels": _gpu_kernels, "mnist": _gpu_mnist,
                       "data_parallel": _gpu_data_parallel}


def _gpu_section(key, value) -> str:
    if key == "copy_bandwidth_GBps":
        return f"Device-to-device copy bandwidth (bytes read + written): {value:,.0f} GB/s."
    if key == "tests":
        return (f"GPU tests (`pytest -m gpu`): {_esc(value['summary'])} "
                f"(exit status {value['returncode']}).")
    if key == "kernels":
        return "\n\n".join(f"Kernel times, `{name}` (seconds, GB/s):\n\n{_records_table(rows)}"
                           for name, rows in value.items())
    if key in ("step_time", "step_time_tf32"):
        return _step_time_table(key, value)
    if key == "compare_cuda":
        return "bench.compare's CUDA peers:\n\n" + compare_body(value)
    if key == "mnist_800":
        return "784-800-10 on MNIST, on this device alone:\n\n" + _mnist_table(value)
    return f"**{key}**:\n\n" + _generic_value(value)


def _step_time_table(key: str, rows: list) -> str:
    sizes = {tuple(r["sizes"]) for r in rows if r.get("sizes")}
    shape = ("-".join(map(str, next(iter(sizes)))) if len(sizes) == 1
             else "layer sizes not recorded in the file")
    precision = "TF32" if key.endswith("tf32") else "fp32"
    head = ["batch", "gpubp-cupy ms/step"]
    reference = any("gpubp_reference_ops_s" in r for r in rows)
    if reference:
        head.append("gpubp-cupy, reference ops, ms/step")
    head += ["PyTorch eager ms/step", "gpubp speed ÷ PyTorch's"]
    pool = any("pool_used_constant_after_step_2" in r for r in rows)
    if pool:
        head.append("pool use constant after step 2")
    table = []
    for r in rows:
        row = [f"{r['batch']:,}", f"{1e3 * r['gpubp_s']:.2f}"]
        if reference:
            row.append(_ms(r.get("gpubp_reference_ops_s")))
        row += [_ms(r.get("torch_s")), "–" if r.get("gpubp_over_torch_speed") is None
                else f"{r['gpubp_over_torch_speed']:.2f}×"]
        if pool:
            row.append(str(r.get("pool_used_constant_after_step_2", "–")))
        table.append(row)
    return (f"One plain-SGD step (forward, loss, backward, update), {shape}, {precision}, "
            f"median of back-to-back steps:\n\n{_table(head, table)}")


def _ms(seconds) -> str:
    return "–" if seconds is None else f"{1e3 * seconds:.2f}"


def _mnist_table(runs: list, sort: bool = False) -> str:
    """bench.mnist_800 results, one row each; skipped and failed ones with their reason."""
    head = ["batch", "lr", "momentum", "weight decay", "standardized", "epochs", "seed",
            "final test error", "best (epoch)", "first epoch ≤ reference", "training s",
            "samples/s (median epoch)"]
    done = [r for r in runs if isinstance(r, dict) and "final_test_error" in r]
    if sort:
        done.sort(key=lambda r: (r["best_test_error"], r["final_test_error"]))
    rows = []
    for r in done:
        c = r.get("config") or {}
        rows.append([str(c.get("batch_size", "–")), _cell(c.get("lr", "–")),
                     _cell(c.get("momentum", "–")), _cell(c.get("weight_decay", "–")),
                     "yes" if c.get("standardize") else "no", str(c.get("epochs", "–")),
                     str(c.get("seed", "–")), _pct(r["final_test_error"]),
                     f"{_pct(r.get('best_test_error'))} ({r.get('best_epoch')})",
                     str(r.get("first_epoch_at_reference") or "not reached"),
                     f"{r.get('train_seconds_total', 0):.0f}",
                     f"{r.get('median_samples_per_s', 0):,.0f}"])
    text = _table(head, rows) if rows else "No run finished."
    others = [r for r in runs if not (isinstance(r, dict) and "final_test_error" in r)]
    for r in others:
        r = r if isinstance(r, dict) else {"entry": r}
        why = r.get("skipped") or r.get("error") or "no result"
        text += f"\n\nNot run: configuration {_esc(r.get('config'))}: {_esc(why)}."
    reference = next((r.get("reference_test_error") for r in done), None)
    if reference is not None:
        text += (f"\n\nReference test error: {_pct(reference)}. Test errors are on MNIST's "
                 "10,000 test images after each epoch.")
    return text


def mnist_800_body(d: dict) -> str:
    return (f"Backend {d.get('backend')} on {d.get('device')}, dtype "
            f"{(d.get('config') or {}).get('dtype')}:\n\n" + _mnist_table([d]))


def mnist_sweep_body(d) -> str:
    runs = d if isinstance(d, list) else d["runs"]
    note = f"{_esc(d['note'])}.\n\n" if isinstance(d, dict) and d.get("note") else ""
    return (f"{note}{len(runs)} configurations, best test error first:\n\n"
            + _mnist_table(runs, sort=True))


def step_profile_body(d) -> str:
    rows = d if isinstance(d, list) else d["profile"]
    columns = []
    for r in rows:
        columns += [k for k in r if k.endswith("_ms") and k not in columns]
    head = ["batch", "backend"] + [c[:-3].replace("_", " ") + " ms" for c in columns]
    enqueue = "step_enqueue_ms" in columns and "step_ms" in columns
    if enqueue:
        head.append("enqueue ÷ step")
    table = []
    for r in rows:
        row = [_cell(r.get("batch", "–")), str(r.get("backend", "–"))]
        row += [f"{r[c]:.3f}" if isinstance(r.get(c), (int, float)) else "–" for c in columns]
        if enqueue:
            row.append(f"{r['step_enqueue_ms'] / r['step_ms']:.2f}")
        table.append(row)
    return ("Each phase timed alone, ms per call; \"step enqueue\" is the host time to issue "
            "a step without waiting for it (layer sizes not recorded in the file):\n\n"
            + _table(head, table))


def fuzz_body(d: dict) -> str:
    loaders = d["loaders"]
    special = any("non_regular_file_cases" in s for s in loaders.values())
    head = ["loader", "seconds", "cases", "loaded", "rejected", "findings",
            "slowest case s", "worst memory peak ÷ bound"]
    if special:
        head.insert(3, "of which FIFO/directory/device")
    rows = []
    for name, s in loaders.items():
        row = [name, _g(s.get("seconds")), f"{s['cases']:,}", f"{s.get('loaded', 0):,}",
               f"{s.get('rejected', 0):,}", f"{s.get('finding', 0):,}",
               _g(s.get("slowest_case_s")), _g(s.get("worst_peak_over_bound"))]
        if special:
            row.insert(3, f"{s.get('non_regular_file_cases', 0):,}")
        rows.append(row)
    total = ["all", _g(sum(s.get("seconds") or 0 for s in loaders.values())),
             f"{d.get('total_cases', 0):,}",
             f"{sum(s.get('loaded', 0) for s in loaders.values()):,}",
             f"{sum(s.get('rejected', 0) for s in loaders.values()):,}",
             f"{d.get('total_findings', 0):,}",
             _g(max((s.get("slowest_case_s") or 0 for s in loaders.values()), default=None)),
             _g(max((s.get("worst_peak_over_bound") or 0 for s in loaders.values()),
                    default=None))]
    if special:
        total.insert(3, f"{sum(s.get('non_regular_file_cases', 0) for s in loaders.values()):,}")
    rows.append([f"**{c}**" for c in total])
    findings = [f"- {name}: `{_esc(key).replace('`', '')}`: {_esc(f.get('error'))} "
                f"({_cell(f.get('count', '?'))} case{'s' if f.get('count') != 1 else ''})"
                for name, s in loaders.items() for key, f in (s.get("findings") or {}).items()]
    places = (f"{len(findings)} distinct place{'s' if len(findings) != 1 else ''}:\n\n"
              + "\n".join(findings)) if findings else "none."
    return f"{_table(head, rows)}\n\nFindings: {places}"


def log_body(text: str) -> str:
    last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "(empty)")
    return f"Last line: `{_esc(last).replace('`', '')}`"


def _generic_value(value) -> str:
    if isinstance(value, dict):
        rows = [[f"`{_esc(k)}`", _cell(v)] for k, v in value.items()]
        return _table(["key", "value"], rows) if rows else "(empty)"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return _records_table(value)
    return _cell(value)


def generic_body(r: Result, note: str | None = None) -> str:
    """A file of a format this report does not know: its top-level scalar values, and the
    names and sizes of the rest."""
    lead = note or "A format this report has no table for"
    if r.error:
        return f"{lead}: it could not be read ({_esc(r.error)})."
    if isinstance(r.data, dict):
        return f"{lead}; its top-level keys:\n\n{_generic_value(r.data)}"
    if isinstance(r.data, list):
        return f"{lead}: a list of {len(r.data)} entries."
    if r.data is None:
        return f"{lead}: nothing to tabulate (not JSON, or empty)."
    return f"{lead}: {_cell(r.data)}."


BODIES = {"compare": compare_body, "gpu-check": gpu_check_body, "step-profile": step_profile_body,
          "mnist-800": mnist_800_body, "mnist-sweep": mnist_sweep_body, "fuzz": fuzz_body,
          "log": log_body}


def render_file(r: Result, kind: str | None = None) -> str:
    """A file's header and tables, as ``kind``: its detected kind for None, "auto" or a
    kind this report does not know (a typo in a marker must not hide the tables)."""
    if kind not in BODIES and kind not in ("plot", "generic"):
        kind = r.kind
    shown = dataclasses.replace(r, kind=kind)
    if kind == "plot":
        return f"- file: `{r.label}`, a plot: link it from the prose, relative to the document"
    body = None
    if kind in BODIES and r.error is None:
        try:
            body = BODIES[kind](r.data)
        except SHAPE_ERRORS as e:
            body = generic_body(r, f"Not readable as {kind} ({type(e).__name__}: {e})")
            shown.kind = "generic"
    if body is None:
        shown.kind = "generic"
        body = generic_body(r)
    return f"{header(shown, facts(shown))}\n\n{body}"


def render_index(found: dict) -> str:
    rows = []
    for r in found.values():
        f = facts(r) if r.kind not in ("plot", "log", "unreadable") else {}
        kind = {"unknown": "unknown format (shown by its keys)", "plot": "plot",
                "unreadable": f"unreadable ({_esc(r.error)})"}.get(r.kind, r.kind)
        machine = (f.get("machine") or "–").split(";")[0]  # the full line is in its section
        rows.append([f"`{r.name}`", kind, _esc(machine),
                     _esc(f.get("date") or "–")])
    return _table(["file", "kind", "machine", "date"], rows) if rows else "No result files."


def render_unplaced(found: dict, named: set) -> str:
    rest = [r for r in found.values() if r.name not in named and r.kind != "plot"]
    if not rest:
        return "Every result file is shown in a section above."
    return "\n\n".join(f"### `{r.name}`\n\n{render_file(r)}" for r in rest)


# ---- the document -------------------------------------------------------------------------

def regenerate(text: str, found: dict, results_label: str = "bench/results") -> tuple:
    """(the document with every generated block rewritten, how many blocks there are).

    Only what lies between a block's markers changes.
    """
    specs = [m.group("spec").split() for m in BLOCK.finditer(text)]
    named = {spec[1] for spec in specs if len(spec) > 1}

    def body(spec: list) -> str:
        kind = spec[0] if spec else "files"
        if kind == "files":
            return render_index(found)
        if kind == "unplaced":
            return render_unplaced(found, named)
        name = " ".join(spec[1:])
        if name not in found:
            return f"`{results_label}/{name}`: no such result file."
        return render_file(found[name], kind)

    def replace(m):
        return f"{m.group(1)}\n{body(m.group('spec').split()).strip()}\n\n{m.group(4)}"

    return BLOCK.sub(replace, text), len(specs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(REPO / "bench" / "results"))
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the document's tables are out of date")
    args = p.parse_args(argv)
    results, out = Path(args.results), Path(args.out)
    found = load_results(results)
    old = out.read_text() if out.exists() else SKELETON
    new, blocks = regenerate(old, found, _display(results))
    opened = len(OPENING.findall(old))
    if opened != blocks:
        print(f"warning: {opened - blocks} generated block(s) without their "
              "'<!-- /generated -->' left as they are", file=sys.stderr)
    changed = new != old or not out.exists()
    if args.check:
        print(f"{out}: {'out of date' if changed else 'up to date'}")
        return 1 if changed else 0
    if changed:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(new)
    unknown = [r.name for r in found.values() if r.kind in ("unknown", "unreadable")]
    print(f"{out}: {blocks} generated block(s) from {len(found)} result files, "
          f"{'updated' if changed else 'unchanged'}"
          + (f"; shown by their keys only: {', '.join(unknown)}" if unknown else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

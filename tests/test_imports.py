"""The package's import graph: no cycles, every module importable alone, and `import
gpubp` without its optional dependencies."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gpubp"
OPTIONAL = ("cupy", "sklearn", "onnx", "onnxruntime", "torch", "mpi4py", "matplotlib",
            "pandas", "scipy")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported_at_top(path: Path, name: str, known) -> set[str]:
    """gpubp modules that ``path`` imports at module level (not inside functions)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_import_cycles():
    known = modules()
    graph = {name: imported_at_top(path, name, known) for name, path in known.items()}
    # A package's __init__ importing its own submodules is not a cycle through them
    # unless a submodule imports the package back at top level.
    visiting, done, cycles = set(), set(), []

    def visit(node, trail):
        if node in done:
            return
        if node in visiting:
            cycles.append(trail[trail.index(node):] + [node])
            return
        visiting.add(node)
        for nxt in graph[node]:
            if not (nxt.startswith(node + ".") and node in known):
                visit(nxt, trail + [nxt])
        visiting.discard(node)
        done.add(node)

    for name in graph:
        visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_function_level_imports_of_gpubp_modules():
    """Imports inside functions are for optional dependencies only, not to dodge cycles."""
    offenders = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith(
                            "gpubp") and not _imports_optional(inner.module):
                        offenders.append(f"{name}.{node.name}: from {inner.module} import ...")
    assert not offenders, offenders


def _imports_optional(module: str) -> bool:
    """gpubp modules that exist to wrap an optional dependency may be imported lazily."""
    lazy = ("gpubp.cuda", "gpubp.step.cuda_step", "gpubp.estimator", "gpubp.interop",
            "gpubp.distributed", "gpubp.onednn")
    return module.startswith(lazy)


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = [n for n in modules() if n != "gpubp.__main__"]
    processes = {name: subprocess.Popen([sys.executable, "-c", f"import {name}"],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True) for name in names}
    failures = {}
    for name, process in processes.items():
        _, err = process.communicate(timeout=120)
        if process.returncode:
            failures[name] = err.strip().splitlines()[-1]
    assert not failures, failures


def test_import_gpubp_needs_no_optional_dependency():
    code = ("import sys, gpubp, gpubp.datasets\n"
            f"loaded = [m for m in {OPTIONAL!r} if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["gpubp"])
def test_public_api_is_all(name):
    import gpubp

    assert set(gpubp.__all__) <= set(dir(gpubp))

"""The package's import graph: no cycles, every module importable alone, and `import
gpubp` without its optional dependencies."""

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gpubp"
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


def function_level_imports() -> set[str]:
    """Imports of gpubp modules inside functions, but for those wrapping an optional
    dependency (imported on first use so that `import gpubp` does not need it)."""
    found = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith(
                            "gpubp") and not _imports_optional(inner.module):
                        found.add(f"{name}.{node.name}: from {inner.module} import ...")
    return found


def test_no_function_level_imports_of_gpubp_modules():
    """Imports inside functions are for optional dependencies only, not to dodge cycles."""
    found = function_level_imports()
    assert not found, sorted(found)


def _imports_optional(module: str) -> bool:
    """gpubp modules that exist to wrap an optional dependency may be imported lazily:
    CuPy (cuda, cuda_step), scikit-learn (estimator), MPI (distributed), oneDNN."""
    lazy = ("gpubp.cuda", "gpubp.step.cuda_step", "gpubp.estimator", "gpubp.distributed",
            "gpubp.onednn")
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


def documented_public_names() -> set[str]:
    """The names docs/design.md's "Public surface" lists as ``gpubp.__all__``."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("\n## Public surface\n", 1)[1]
    bullet = re.match(r"- `gpubp.__all__`(.*?)(?=^- |^#|\Z)", section.lstrip(),
                      re.DOTALL | re.MULTILINE)
    assert bullet, "docs/design.md: no '- `gpubp.__all__`' bullet under Public surface"
    return set(re.findall(r"`([A-Za-z_]\w*)`", bullet.group(1)))


def test_public_api_is_all_and_documented():
    """`gpubp.__all__` is the public API: every name docs/design.md documents, and only
    those, each in dir(gpubp), the lazy ones too, with `import gpubp` not importing
    scikit-learn."""
    documented = documented_public_names()
    assert len(documented) > 10  # the parse found the list
    code = ("import sys, gpubp\n"
            "assert 'sklearn' not in sys.modules\n"
            "names = set(gpubp.__all__)\n"
            "assert len(names) == len(gpubp.__all__), 'a name twice'\n"
            "assert names <= set(dir(gpubp)), names - set(dir(gpubp))\n"
            "print(' '.join(sorted(names)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    in_all = set(done.stdout.split())
    assert documented - in_all == set(), "documented, missing from gpubp.__all__"
    assert in_all - documented == set(), "in gpubp.__all__, missing from docs/design.md"


def test_every_public_name_resolves():
    import gpubp

    needs_sklearn = {"MLPClassifier"} if importlib.util.find_spec("sklearn") is None else set()
    for name in set(gpubp.__all__) - needs_sklearn:
        getattr(gpubp, name)  # AttributeError if it does not

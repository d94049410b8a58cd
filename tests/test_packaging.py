"""The wheel carries the CUDA sources: build it, install it in a fresh venv, load them."""

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from gpubp.cuda import compile as cuda_kernels

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
sys.path.append(sys.argv[1])  # numpy and the rest from the test's environment, after the venv
import gpubp
from gpubp.cuda import compile as cuda_kernels
print(json.dumps({
    "package": gpubp.__file__,
    "source_dir": str(cuda_kernels.source_dir()),
    "sources": {name: cuda_kernels.kernel_source(name) for name in cuda_kernels.SOURCES},
}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """What a fresh venv with only the gpubp wheel (no dependencies) sees."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                            "-w", str(tmp / "dist"), "-q"], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    wheel = next((tmp / "dist").glob("gpubp-*.whl"))
    venv.create(tmp / "venv", with_pip=True)
    python = tmp / "venv" / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                              "-q", str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    probe = subprocess.run([str(python), "-c", PROBE, sysconfig.get_paths()["purelib"]],
                           capture_output=True, text=True, cwd=tmp)
    assert probe.returncode == 0, probe.stderr
    return tmp / "venv", json.loads(probe.stdout)


def test_the_installed_package_loads_its_own_kernel_sources(installed):
    venv_dir, seen = installed
    assert Path(seen["package"]).is_relative_to(venv_dir)
    assert Path(seen["source_dir"]).is_relative_to(venv_dir)
    assert Path(seen["source_dir"]).name == "_kernels"
    for name, text in seen["sources"].items():
        assert text == cuda_kernels.kernel_source(name)
        assert "__global__" in text and '#include "gpubp_common.cuh"' not in text

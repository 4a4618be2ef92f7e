"""Which build runs: the modules setup.py compiles with mypyc are extensions unless the package was
built with ``PARTNER_PROXY_COMPILE=0``. The suite then tests what ships (the image compiles them
too), and a build that silently fell back to pure Python fails here instead of showing up later
as a slower sidecar."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["partner-proxy"]["compiled"]


@pytest.mark.parametrize("path", MODULES)
def test_the_hot_modules_run_compiled_unless_the_build_said_not_to(path: str) -> None:
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    compiled = not str(module.__file__).endswith(".py")
    if os.environ.get("PARTNER_PROXY_COMPILE") == "0":
        assert not compiled, f"{path}: PARTNER_PROXY_COMPILE=0, yet an extension is loaded (a stale .so?)"
    else:
        assert compiled, f"{path} runs as Python: rebuild with `pip install -e .` (a C compiler is needed)"


def test_a_compiled_module_older_than_its_source_is_refused(tmp_path: Path) -> None:
    """An edit after the build must not run the old compiled code."""
    tree = tmp_path / "tree"
    (tree / "proxy").mkdir(parents=True)
    (tree / "setup.py").write_text("")
    (tree / "proxy" / "__init__.py").write_text((ROOT / "proxy" / "__init__.py").read_text())
    built = tree / "proxy" / "corking.cpython-311-x86_64-linux-gnu.so"
    built.write_bytes(b"")
    source = tree / "proxy" / "corking.py"
    source.write_text("")
    os.utime(built, (1_000_000, 1_000_000))  # older than the source just written
    run = subprocess.run([sys.executable, "-c", "import proxy"], cwd=tree, capture_output=True, text=True)
    assert run.returncode != 0 and "was compiled from an older corking.py" in run.stderr
    os.utime(built, None)  # rebuilt: newer than the source
    os.utime(source, (1_000_000, 1_000_000))
    assert subprocess.run([sys.executable, "-c", "import proxy"], cwd=tree, capture_output=True).returncode == 0



def _build_requires(compile_: bool) -> list[str]:
    """What setuptools' PEP 517 backend tells pip to install before building this tree (pip calls
    the same hook inside its isolated build environment)."""
    env = {k: v for k, v in os.environ.items() if k != "PARTNER_PROXY_COMPILE"}
    if not compile_:
        env["PARTNER_PROXY_COMPILE"] = "0"
    proc = subprocess.run([sys.executable, "-c", "import json, setuptools.build_meta as b; "
                           "print(json.dumps(b.get_requires_for_build_wheel()))"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_a_compiling_build_asks_pip_for_the_runtime_dependencies_first() -> None:
    """mypyc type-checks against aiohttp, redis, httptools ...: on a machine where nothing is
    installed yet, `pip install .` must put them into the build environment, or mypy stops with one
    "Cannot find implementation or library stub" per import (seen on a fresh machine). Asking
    compiles nothing, and the pure-Python build asks for none of them."""
    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    compiling = _build_requires(True)
    assert [dep for dep in runtime if dep not in compiling] == [], compiling
    assert [dep for dep in runtime if dep in _build_requires(False)] == []

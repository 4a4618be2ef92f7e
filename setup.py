"""Build hook: the data path's hottest modules compiled to C extensions with mypyc.

Why: on the benchmark the lane's request costs ~20 us of Python per request against ~3 us for a
minimal proxy on the same loop and parsers (bench/README.md); what remains is interpreter work
spread over ~40 small functions, which no single trim removes. mypyc compiles the same typed
source (nothing is written twice; ``tests/test_static.py`` already holds it to mypy) and took
~5-7 us off the ~30 us per request (README.md, Speed).

The list is ``[tool.partner-proxy] compiled`` in pyproject.toml. ``PARTNER_PROXY_COMPILE=0``
builds the pure-Python package (no C compiler needed); the code is the same either way, and
``tests/test_compiled.py`` says which one ran.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import site
import sys
import tomllib
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def compiled_modules() -> list[str]:
    return list(_pyproject()["tool"]["partner-proxy"]["compiled"])


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_dependencies() -> list[str]:
    return list(_pyproject()["project"]["dependencies"])


def missing_dependencies() -> list[str]:
    """The runtime dependencies this interpreter cannot see (as mypy looks for them)."""
    paths = [*sys.path, *site.getsitepackages(), site.getusersitepackages()]
    have = {_canonical(d.metadata["Name"] or "") for d in importlib.metadata.distributions(path=paths)}
    wanted = [re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0] for req in runtime_dependencies()]
    return [name for name in wanted if _canonical(name) not in have]


# mypyc type-checks the compiled modules, and everything they import, against the runtime
# dependencies, so the build needs them installed where mypy looks. They are declared as
# setup_requires: setuptools' PEP 517 backend hands them to pip as build requirements (from its
# get_requires_for_build_* hook, which runs this file with only `egg_info`), and pip installs them
# into the isolated build environment beside mypy. So a plain `pip install .` compiles on a machine
# that has nothing installed yet. Those metadata runs compile nothing.
COMPILE = os.environ.get("PARTNER_PROXY_COMPILE", "1") != "0"
METADATA_ONLY = {"egg_info", "dist_info"}
commands = [a for a in sys.argv[1:] if not a.startswith("-")]
metadata_only = bool(commands) and commands[0] in METADATA_ONLY

ext_modules = []
if COMPILE and not metadata_only:
    if missing := missing_dependencies():  # e.g. --no-build-isolation on a bare environment
        raise SystemExit(
            "setup.py: mypyc compiles against the runtime dependencies, and these are not installed: "
            + ", ".join(missing)
            + ". Build with pip's build isolation (the default), install them first, or build the pure-Python"
            " package with PARTNER_PROXY_COMPILE=0."
        )
    from mypyc.build import mypycify

    ext_modules = mypycify(compiled_modules(), opt_level="3", group_name="partner_proxy_native")

setup(ext_modules=ext_modules, setup_requires=runtime_dependencies() if COMPILE else [])

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

import os
import tomllib
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["tool"]["partner-proxy"]["compiled"])


ext_modules = []
if os.environ.get("PARTNER_PROXY_COMPILE", "1") != "0":
    from mypyc.build import mypycify

    ext_modules = mypycify(compiled_modules(), opt_level="3", group_name="partner_proxy_native")

setup(ext_modules=ext_modules)

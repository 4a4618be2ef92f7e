"""partner-proxy: an Envoy-style sidecar for partner APIs."""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def _refuse_stale_extensions() -> None:
    """In a source checkout, a module compiled by ``setup.py`` (mypyc) runs instead of its ``.py``:
    after an edit or a checkout it would silently run the old code. Python loads the extension
    first, so the check is here, before any submodule is imported. An installed package (no
    setup.py beside it) is never checked: pip installs the two together."""
    package = Path(__file__).resolve().parent
    if not (package.parent / "setup.py").exists():
        return
    for built in package.rglob("*.so"):
        source = built.with_name(built.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
            raise ImportError(
                f"{built} was compiled from an older {source.name}: rebuild with `pip install -e .` "
                "(PARTNER_PROXY_COMPILE=0 pip install -e . for the pure-Python package), or delete the .so files"
            )


_refuse_stale_extensions()

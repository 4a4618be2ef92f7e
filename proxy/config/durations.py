"""Durations as operators write them: ``500ms``, ``30s``, ``10m``, ``1h``; a bare number is seconds."""

from __future__ import annotations

import re
import reprlib

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = _repr.maxdict = 4
_repr.maxlevel = 2


def show(value: object) -> str:
    """A bounded repr for error messages: a YAML alias bomb must not become a 300 MB message."""
    return _repr.repr(value)


def parse_duration(value: object) -> float:
    """Seconds as a float; ValueError with a hint when the value is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"{show(value)} is not a duration; write e.g. 500ms, 30s, 10m")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{show(value)} is negative; durations are >= 0")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"{show(value)} is not a duration; write e.g. 500ms, 30s, 10m (a bare number means seconds)")

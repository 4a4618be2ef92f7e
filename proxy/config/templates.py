"""Path templates (``/v1/orders/{request_id}``): parsed and checked once, at load.

A ``{name}`` is one whole path segment. At request time (``proxy.routing``) it matches exactly one
segment of RFC 3986 unreserved characters, 1 to 128 of them, never ``.`` or ``..``; the upstream
path substitutes the same value, so no value can walk to another partner path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PARAM_RE = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
SEGMENT_VALUE_RE = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    segments: tuple[str, ...]          # literal segments, with None-like "" placeholders below
    params: tuple[str | None, ...]     # per segment: the parameter name, or None for a literal

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p for p in self.params if p is not None)

    @property
    def is_exact(self) -> bool:
        return not self.names


def parse_template(text: str) -> Template:
    """ValueError with a fix when a brace is not a whole ``{name}`` segment or a name repeats."""
    parts = text.split("/")[1:] if text.startswith("/") else text.split("/")
    params: list[str | None] = []
    for part in parts:
        m = PARAM_RE.match(part)
        if m:
            if m.group(1) in params:
                raise ValueError(f"{{{m.group(1)}}} appears twice in {text!r}; give each parameter its own name")
            params.append(m.group(1))
        elif "{" in part or "}" in part:
            raise ValueError(f"{part!r} in {text!r} is not a whole-segment parameter; write /{{name}}/ with a name of letters, digits and _")
        else:
            params.append(None)
    return Template(text, tuple(parts), tuple(params))


def valid_value(value: str) -> bool:
    return bool(SEGMENT_VALUE_RE.match(value)) and value not in (".", "..")

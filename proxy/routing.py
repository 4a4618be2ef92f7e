"""The route table: method-independent path lookup to a compiled route and its path parameters.

Exact paths are one dictionary lookup (the hot path). Templates (``/v1/orders/{request_id}``) are
tried after that, by their literal segments; a path that has a template's literal segments but a
parameter that is not one clean segment (``a/b``, ``%2F``, empty, ``..``, over 128 characters)
is refused with ``InvalidPathParameter`` here, before any filter runs, so it can never reach
another partner path. Matching is on the raw path with only unreserved characters decoded
(RFC 3986 6.2.2.2: ``%70`` is ``p``); every other escape (``%2F``, ``%00``) stays as it is and
so never matches a literal segment nor makes a valid parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from proxy.config.templates import Template, parse_template, valid_value
from proxy.errors import InvalidPathParameter
from proxy.types import CompiledRoute

Params = dict[str, str]

_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _unescape_unreserved(m: re.Match[str]) -> str:
    char = chr(int(m.group(1), 16))
    return char if char in _UNRESERVED else "%" + m.group(1).upper()


def normalize(path: str) -> str:
    return _ESCAPE.sub(_unescape_unreserved, path) if "%" in path else path


class RouteTable:
    def __init__(self, routes: Iterable[CompiledRoute]) -> None:
        self._exact: dict[str, CompiledRoute] = {}
        self._templates: list[tuple[Template, CompiledRoute]] = []
        for r in routes:
            t = parse_template(r.path)
            if t.is_exact:
                self._exact[r.path] = r
            else:
                self._templates.append((t, r))

    def match(self, path: str) -> tuple[CompiledRoute, Params | None] | None:
        # Exact match only: "/v1/products/" or "//v1/products" are other paths, not aliases.
        path = normalize(path)
        route = self._exact.get(path)
        if route is not None:
            return route, None
        if not self._templates:
            return None
        for template, route in self._templates:
            params = match_template(template, path)
            if params is not None:
                return route, params
        return None


def match_template(t: Template, path: str) -> Params | None:
    """(Also the lane's, ``proxy.lane``, on a path this table already gave that template.) The params, None when the path is not this template's, InvalidPathParameter when it is but
    a value is not acceptable. A parameter may swallow extra segments only to be refused."""
    if not path.startswith("/"):
        return None
    parts = path[1:].split("/")
    literals = [(i, seg) for i, (seg, p) in enumerate(zip(t.segments, t.params)) if p is None]
    n = len(t.segments)
    if len(parts) == n:
        if any(parts[i] != seg for i, seg in literals):
            return None
        params = {p: parts[i] for i, p in enumerate(t.params) if p is not None}
        for value in params.values():
            if not valid_value(value):
                raise InvalidPathParameter("path parameter is not one unreserved segment")
        return params
    # More segments than the template: refuse when the literal head and tail still line up (a "/"
    # inside a parameter, "../x"), otherwise it is simply another path.
    if len(parts) > n:
        head = [seg for seg, p in zip(t.segments, t.params)]
        first_param = next(i for i, p in enumerate(t.params) if p is not None)
        tail = len(t.segments) - 1 - max(i for i, p in enumerate(t.params) if p is not None)
        if parts[:first_param] == head[:first_param] and (tail == 0 or parts[-tail:] == head[-tail:]):
            raise InvalidPathParameter("path parameter holds a '/'")
    return None

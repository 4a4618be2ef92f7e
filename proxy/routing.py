"""The route table: an exact path lookup to a compiled route (its filter chain is already built)."""

from __future__ import annotations

from collections.abc import Iterable

from proxy.types import CompiledRoute


class RouteTable:
    def __init__(self, routes: Iterable[CompiledRoute]) -> None:
        self._by_path = {r.path: r for r in routes}

    def match(self, path: str) -> CompiledRoute | None:
        # Exact match only: "/v1/products/" or "//v1/products" are other paths, not aliases.
        return self._by_path.get(path)

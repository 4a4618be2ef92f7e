"""The route table: an exact path lookup to a compiled route (its filter chain is already built)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proxy.tracing import LanguagePicker
from proxy.types import Next


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    path: str
    cluster: str
    upstream_path: str
    query: tuple[str, ...]            # allow-listed query parameters forwarded upstream
    chain: Next
    language: LanguagePicker          # Accept-Language -> one of the route's error-table languages


class RouteTable:
    def __init__(self, routes: Iterable[CompiledRoute]) -> None:
        self._by_path = {r.path: r for r in routes}

    def match(self, path: str) -> CompiledRoute | None:
        # Exact match only: "/v1/products/" or "//v1/products" are other paths, not aliases.
        return self._by_path.get(path)

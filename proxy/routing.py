"""The route table: an exact path lookup to a compiled route (its filter chain is already built)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proxy.config.errors_table import ErrorTable
from proxy.exchange import Next
from proxy.tracing import LanguagePicker


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    path: str
    cluster: str
    upstream_path: str
    query: tuple[str, ...]            # allow-listed query parameters forwarded upstream
    table: ErrorTable                 # for languages of local errors on this route
    languages: frozenset[str]
    chain: Next
    language: LanguagePicker          # Accept-Language -> one of the table's languages
    log_route: str = "null"           # JSON-escaped once, for the communication log line
    log_cluster: str = "null"
    log_upstream_path: str = "null"


class RouteTable:
    def __init__(self, routes: Iterable[CompiledRoute]) -> None:
        self._by_path = {r.path: r for r in routes}

    def match(self, path: str) -> CompiledRoute | None:
        # Exact match only: "/v1/products/" or "//v1/products" are other paths, not aliases.
        return self._by_path.get(path)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_path.values())

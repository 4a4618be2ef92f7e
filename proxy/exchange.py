"""The state of one downstream request as it walks the filter chain, and the partner's answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

if TYPE_CHECKING:
    from proxy.config.errors_table import ErrorRule
    from proxy.errors import PartnerError
    from proxy.routing import CompiledRoute


@dataclass(slots=True)
class UpstreamResponse:
    """What the partner answered on the last attempt. ``error`` is set by the error-rewrite filter."""

    status: int
    content_type: str
    body: bytes
    partner_code: str | None = None
    error: PartnerError | None = None
    rule: ErrorRule | None = None
    headers: tuple[tuple[str, str], ...] = ()  # partner headers passed back besides Content-Type (checked)

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 202


@dataclass(slots=True)
class Exchange:
    """Per-request state. Filters read and annotate it; the listener logs and renders from it."""

    request: web.Request
    route: CompiledRoute
    request_id: str
    language: str
    traceparent: str                      # the one sent upstream (same trace id, new span id)
    started: float
    upstream_headers: CIMultiDict[str]    # what the partner gets; filters add to it (Authorization)
    upstream_query: dict[str, str] | None = None
    body: bytes = b""                     # downstream body, forwarded for methods that carry one
    token_source: str | None = None       # memory | redis | fetch
    attempts: int = 0
    partner_status: int | None = None
    partner_code: str | None = None
    error_type: str | None = None
    breaker_state: str | None = None
    token_retried: bool = False


Next = Callable[[Exchange], Awaitable[UpstreamResponse]]
